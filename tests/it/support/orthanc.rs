//! Orthanc (Debian package `orthanc`) with its built-in WebDAV, loaded with the DICOM samples
//! of `tests/data/dicom` (pydicom's MIT test files plus generated edge-name files; see the
//! README there) through REST `POST /instances`, in `LC_ALL=C` path order as the manifest
//! assumes. After loading it holds 30 patients, 43 studies, 50 series, 130 instances.
//!
//! Wire behaviour worth knowing (docs/servers/orthanc.md): no Range, no ETag, ISO dates,
//! PROPFIND on a file answers parent-first, phantom folders answer 207, MOVE answers 400,
//! keep-alive of 1 s, and only source address 127.0.0.1 is served.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{START_TIMEOUT, free_port, have, project_dir, rt, spawn_server, wait_for_port};

pub struct Orthanc {
    pub port: u16,
    pub storage: PathBuf,
    pub instances: usize,
    _child: Mutex<Child>,
}

/// One loaded sample: its manifest row.
#[derive(Debug, Clone)]
pub struct Sample {
    pub path: PathBuf,
    pub status: String,
    pub orthanc_id: String,
    pub sop_uid: String,
    pub study_uid: String,
    pub series_uid: String,
}

/// The manifest of `tests/data/dicom`.
pub fn manifest() -> Vec<Sample> {
    let dir = project_dir().join("tests/data/dicom");
    let text = std::fs::read_to_string(dir.join("manifest.tsv")).expect("manifest.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            if f.len() < 9 {
                return None;
            }
            Some(Sample {
                path: dir.join(f[0]),
                status: f[3].to_owned(),
                orthanc_id: f[4].to_owned(),
                sop_uid: f[5].to_owned(),
                study_uid: f[7].to_owned(),
                series_uid: f[8].to_owned(),
            })
        })
        .collect()
}

/// The shared Orthanc of this test binary, or `None` when it is not installed (outside CI).
pub fn orthanc() -> Option<&'static Orthanc> {
    static ORTHANC: OnceLock<Option<Orthanc>> = OnceLock::new();
    ORTHANC
        .get_or_init(|| {
            if !have("Orthanc") {
                return None;
            }
            Some(Orthanc::start())
        })
        .as_ref()
}

impl Orthanc {
    fn start() -> Orthanc {
        let tmp = tempfile::Builder::new()
            .prefix("davdrive-orthanc")
            .tempdir()
            .expect("tempdir");
        let storage = tmp.keep();
        let db = storage.join("db");
        std::fs::create_dir_all(&db).expect("mkdir");
        let port = free_port();
        let config = format!(
            r#"{{
  "Name" : "davdrive-test-{port}",
  "StorageDirectory" : "{db}",
  "IndexDirectory" : "{db}",
  "Plugins" : [],
  "HttpServerEnabled" : true,
  "HttpPort" : {port},
  "RemoteAccessAllowed" : false,
  "AuthenticationEnabled" : false,
  "DicomServerEnabled" : false,
  "WebDavEnabled" : true,
  "WebDavDeleteAllowed" : true,
  "WebDavUploadAllowed" : true,
  "HttpCompressionEnabled" : true,
  "StableAge" : 60,
  "HttpDescribeErrors" : true,
  "KeepAlive" : true
}}"#,
            db = db.display()
        );
        let conf_path = storage.join("orthanc.json");
        std::fs::write(&conf_path, config).expect("write config");
        let logdir = format!("--logdir={}", storage.display());
        let mut child = spawn_server(
            "Orthanc",
            &[logdir.as_ref(), conf_path.as_os_str()],
            &storage,
            &[],
            Stdio::null(),
        );
        wait_for_port(port, &mut child, START_TIMEOUT);
        let instances = load_samples(port);
        Orthanc {
            port,
            storage,
            instances,
            _child: Mutex::new(child),
        }
    }

    pub fn webdav_url(&self) -> String {
        format!("http://127.0.0.1:{}/webdav/", self.port)
    }

    pub fn rest_url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// REST `GET /instances/{id}/file`: the oracle for WebDAV reads.
    pub fn instance_file(&self, id: &str) -> Vec<u8> {
        let url = self.rest_url(&format!("instances/{id}/file"));
        rt().block_on(async {
            let r = reqwest::get(&url).await.expect("GET instance");
            assert!(r.status().is_success(), "{url}: {}", r.status());
            r.bytes().await.expect("body").to_vec()
        })
    }
}

/// Waits for WebDAV to answer, then posts every loadable sample. Returns the instance count.
fn load_samples(port: u16) -> usize {
    let base = format!("http://127.0.0.1:{port}");
    rt().block_on(async {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let r = http
                .request(
                    reqwest::Method::from_bytes(b"PROPFIND").expect("method"),
                    format!("{base}/webdav/"),
                )
                .header("Depth", "0")
                .send()
                .await;
            if r.is_ok_and(|r| r.status().as_u16() == 207) {
                break;
            }
            assert!(Instant::now() < deadline, "Orthanc WebDAV did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut samples: Vec<Sample> = manifest()
            .into_iter()
            .filter(|s| !s.status.starts_with("not-loaded"))
            .collect();
        samples.sort_by(|a, b| a.path.as_os_str().cmp(b.path.as_os_str()));
        for s in &samples {
            let body = std::fs::read(&s.path).expect("sample");
            let r = http
                .post(format!("{base}/instances"))
                .body(body)
                .send()
                .await
                .expect("POST /instances");
            assert!(
                r.status().is_success(),
                "{}: {}",
                s.path.display(),
                r.status()
            );
        }
        let r = http
            .get(format!("{base}/instances"))
            .send()
            .await
            .expect("GET /instances");
        let text = r.text().await.expect("text");
        text.matches('"').count() / 2
    })
}
