//! An NTLM-authenticating reverse proxy (`ntlm_server.py`, Python's `ntlm_auth` verifying
//! the NTLMv2 answers) in front of the shared Apache: what IIS with Windows authentication
//! looks like on the wire. Needs `/usr/bin/python3` with `python3-ntlm-auth`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, in_ci, project_dir, spawn_owned};

pub const DOMAIN: &str = "CORP";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "Winter2026!";

pub struct NtlmServer {
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Drop for NtlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NtlmServer {
    /// Starts one in front of `127.0.0.1:upstream`; `None` (or a panic in CI) when Python or
    /// ntlm_auth is missing.
    pub fn start(upstream: u16) -> Option<NtlmServer> {
        Self::start_with(upstream, None, false)
    }

    /// As `start`, but OPTIONS without credentials is answered (forwarded) anonymously.
    pub fn start_anonymous_options(upstream: u16) -> Option<NtlmServer> {
        Self::start_with(upstream, None, true)
    }

    /// As `start`, speaking HTTPS with this certificate and key (PEM).
    pub fn start_tls(upstream: u16, cert: &Path, key: &Path) -> Option<NtlmServer> {
        Self::start_with(upstream, Some((cert, key)), false)
    }

    fn start_with(
        upstream: u16,
        tls: Option<(&Path, &Path)>,
        anonymous_options: bool,
    ) -> Option<NtlmServer> {
        let probe = Command::new("/usr/bin/python3")
            .args(["-c", "import ntlm_auth"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !probe.is_ok_and(|s| s.success()) {
            assert!(!in_ci(), "python3-ntlm-auth is missing");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // ntlm_auth needs MD4, which OpenSSL 3 keeps in its legacy provider.
        let conf = dir.path().join("openssl.cnf");
        std::fs::write(
            &conf,
            "openssl_conf = init\n[init]\nproviders = p\n[p]\ndefault = d\nlegacy = l\n\
             [d]\nactivate = 1\n[l]\nactivate = 1\n",
        )
        .expect("openssl.cnf");
        let log = dir.path().join("ntlm.log");
        let port = free_port();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(project_dir().join("tests/it/support/ntlm_server.py"))
            .arg(port.to_string())
            .arg(upstream.to_string())
            .args([DOMAIN, USER, PASSWORD])
            .arg(&log)
            .env("OPENSSL_CONF", &conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if anonymous_options {
            cmd.env("NTLM_ANONYMOUS_OPTIONS", "1");
        }
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = spawn_owned(cmd).expect("start ntlm_server.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next().and_then(Result::ok));
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(l)) if l == "ready" => Some(NtlmServer {
                port,
                log,
                _dir: dir,
                child,
            }),
            other => {
                let _ = child.kill();
                panic!("ntlm_server.py did not start: {other:?}");
            }
        }
    }

    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}
