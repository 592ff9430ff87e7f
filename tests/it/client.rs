//! Every WebDAV method of the protocol client against real servers: Apache mod_dav, the
//! in-process dav-server, and Orthanc (with its quirks asserted, so a change in them shows).

use std::time::Duration;

use bytes::Bytes;
use davdrive::dav::{
    ByteRange, ClientConfig, Credentials, DavClient, DavPath, Depth, ErrorKind, Preconditions,
    PutBody, Secret,
};
use url::Url;

use crate::support::apache::{self, apache};
use crate::support::dav_server::DavServer;
use crate::support::orthanc::{manifest, orthanc};
use crate::support::{pattern, rt};

fn client(url: &str) -> DavClient {
    DavClient::new(ClientConfig::new(Url::parse(url).expect("url"))).expect("client")
}

fn p(s: &str) -> DavPath {
    DavPath::parse(s).expect("path")
}

/// The full method set on a server that implements RFC 4918 and Range (Apache, dav-server).
async fn exercise_every_method(c: &DavClient) {
    let caps = c.options().await.expect("OPTIONS");
    assert!(caps.is_webdav(), "{caps:?}");
    assert!(caps.dav_classes.iter().any(|k| k == "1"), "{caps:?}");
    assert!(caps.allows("PROPFIND"));

    // PUT (bytes), GET, HEAD.
    let data = Bytes::from(pattern(300_000, 7));
    let f = p("/a file + 100%.bin");
    c.put(&f, PutBody::Bytes(data.clone()), &Preconditions::default())
        .await
        .expect("PUT");
    assert_eq!(c.get_bytes(&f).await.expect("GET"), data);
    let head = c.head(&f).await.expect("HEAD");
    assert_eq!(head.content_length, Some(300_000));

    // PROPFIND Depth 0 and 1, with our explicit properties.
    let ms = c
        .propfind(&DavPath::root(), Depth::One, true)
        .await
        .expect("PROPFIND 1");
    let me = ms.get(&DavPath::root()).expect("self entry");
    assert!(me.is_collection);
    let entry = ms.get(&f).expect("file listed");
    assert_eq!(entry.content_length, Some(300_000));
    assert!(entry.last_modified.is_some());
    let etag = entry.etag.clone().expect("etag");
    let ms0 = c
        .propfind(&f, Depth::Zero, false)
        .await
        .expect("PROPFIND 0");
    assert_eq!(
        ms0.get(&f).expect("self").etag.as_deref(),
        Some(etag.as_str())
    );

    // Range, and If-Range with the current and with a stale tag.
    let mut g = c
        .get(
            &f,
            Some(ByteRange {
                start: 1000,
                end: Some(1999),
            }),
            Some(&etag),
        )
        .await
        .expect("ranged GET");
    let cr = g.range.expect("206");
    assert_eq!((cr.start, cr.end, cr.total), (1000, 1999, Some(300_000)));
    let mut got = Vec::new();
    while let Some(chunk) = g.chunk().await.expect("chunk") {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(&got[..], &data[1000..2000]);
    let g = c
        .get(
            &f,
            Some(ByteRange {
                start: 10,
                end: Some(19),
            }),
            Some("\"stale\""),
        )
        .await
        .expect("GET with stale If-Range");
    assert!(
        g.range.is_none(),
        "a stale If-Range must give the whole entity"
    );

    // PUT from a stream, with and without a length.
    let streamed = p("/streamed.bin");
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(65536)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    c.put(
        &streamed,
        PutBody::Stream {
            stream: Box::new(futures_util::stream::iter(chunks)),
            len: Some(data.len() as u64),
        },
        &Preconditions::default(),
    )
    .await
    .expect("streamed PUT with length");
    assert_eq!(c.get_bytes(&streamed).await.expect("GET"), data);

    // Preconditions: create-only on an existing file fails, If-Match with the right tag works.
    let e = c
        .put(
            &f,
            PutBody::Bytes(Bytes::from_static(b"x")),
            &Preconditions {
                if_none_match_any: true,
                ..Default::default()
            },
        )
        .await
        .expect_err("If-None-Match: * on an existing file");
    assert_eq!(e.status(), Some(412), "{e}");
    let e = c
        .put(
            &f,
            PutBody::Bytes(Bytes::from_static(b"x")),
            &Preconditions {
                if_match: Some("\"not-the-tag\"".into()),
                ..Default::default()
            },
        )
        .await
        .expect_err("If-Match with a wrong tag");
    assert_eq!(e.kind(), ErrorKind::Stale, "{e}");

    // MKCOL, COPY, MOVE, DELETE.
    let d = p("/dir with space");
    c.mkcol(&d).await.expect("MKCOL");
    let e = c.mkcol(&d).await.expect_err("MKCOL on existing");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    let e = c
        .mkcol(&p("/missing/child"))
        .await
        .expect_err("MKCOL without parent");
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let copy = d.join("copy.bin").expect("p");
    c.copy_to(&f, &copy, false, false).await.expect("COPY");
    assert_eq!(c.get_bytes(&copy).await.expect("GET copy"), data);
    let moved = d.join("moved.bin").expect("p");
    c.move_to(&streamed, &moved, false, false)
        .await
        .expect("MOVE");
    let e = c.head(&streamed).await.expect_err("moved away");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = c
        .move_to(&copy, &moved, false, false)
        .await
        .expect_err("MOVE onto an existing file without Overwrite");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    c.move_to(&copy, &moved, false, true)
        .await
        .expect("MOVE with Overwrite");

    // LOCK, refresh, UNLOCK; a locked file refuses a PUT without the token.
    let lock = c.lock(&f, Duration::from_secs(60)).await.expect("LOCK");
    assert!(!lock.token.is_empty());
    c.refresh_lock(&f, &lock.token, Duration::from_secs(120))
        .await
        .expect("refresh");
    c.unlock(&f, &lock.token).await.expect("UNLOCK");

    c.delete(&d, true, &Preconditions::default())
        .await
        .expect("DELETE dir");
    c.delete(&f, false, &Preconditions::default())
        .await
        .expect("DELETE file");
    let e = c.get_bytes(&f).await.expect_err("deleted");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = c
        .delete(&DavPath::root(), true, &Preconditions::default())
        .await
        .expect_err("root");
    assert_eq!(e.kind(), ErrorKind::InvalidName);
    assert!(c.stats().total() > 20);
}

#[test]
fn every_method_against_apache() {
    let Some(a) = apache() else { return };
    a.fresh_dir("client-methods");
    rt().block_on(exercise_every_method(&client(&a.url("client-methods"))));
}

#[test]
fn every_method_against_dav_server() {
    let s = DavServer::start();
    rt().block_on(exercise_every_method(&client(&s.url())));
}

#[test]
fn lock_tokens_are_enforced_by_apache() {
    let Some(a) = apache() else { return };
    a.fresh_dir("client-locks");
    rt().block_on(async {
        let c = client(&a.url("client-locks"));
        let f = p("/locked.txt");
        c.put(
            &f,
            PutBody::Bytes(Bytes::from_static(b"v1")),
            &Preconditions::default(),
        )
        .await
        .expect("PUT");
        let lock = c.lock(&f, Duration::from_secs(60)).await.expect("LOCK");
        let e = c
            .put(
                &f,
                PutBody::Bytes(Bytes::from_static(b"v2")),
                &Preconditions::default(),
            )
            .await
            .expect_err("PUT without the token");
        assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
        let with_token = Preconditions {
            lock_token: Some(lock.token.clone()),
            ..Default::default()
        };
        c.put(&f, PutBody::Bytes(Bytes::from_static(b"v2")), &with_token)
            .await
            .expect("PUT with the token");
        c.unlock(&f, &lock.token).await.expect("UNLOCK");
        assert_eq!(&c.get_bytes(&f).await.expect("GET")[..], b"v2");
    });
}

#[test]
fn basic_auth_against_apache() {
    let Some(a) = apache() else { return };
    let dir = a.authroot.join("client-auth");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("hello.txt"), b"hello").expect("write");
    apache::give_to_server(&dir);
    rt().block_on(async {
        let url = Url::parse(&a.auth_url("client-auth")).expect("url");
        let anonymous = DavClient::new(ClientConfig::new(url.clone())).expect("client");
        let e = anonymous.options().await.expect_err("no credentials");
        assert_eq!(e.kind(), ErrorKind::AuthRequired);
        assert!(e.to_string().contains("basic"), "{e}");

        let mut cfg = ClientConfig::new(url.clone());
        cfg.credentials = Some(Credentials {
            user: apache::USER.into(),
            password: Secret::new("wrong"),
        });
        let wrong = DavClient::new(cfg).expect("client");
        let e = wrong.options().await.expect_err("wrong password");
        assert_eq!(e.kind(), ErrorKind::AuthRequired);
        assert!(!e.to_string().contains("wrong\""), "{e}");

        let mut cfg = ClientConfig::new(url);
        cfg.credentials = Some(Credentials {
            user: apache::USER.into(),
            password: Secret::new(apache::PASSWORD),
        });
        let good = DavClient::new(cfg).expect("client");
        good.options().await.expect("OPTIONS with credentials");
        let body = good.get_bytes(&p("/hello.txt")).await.expect("GET");
        assert_eq!(&body[..], b"hello");
        // After the first challenge credentials go out preemptively: 1 extra request only.
        let n = good.stats().total();
        good.get_bytes(&p("/hello.txt")).await.expect("GET");
        assert_eq!(good.stats().total(), n + 1);
    });
}

#[test]
fn unreachable_server_is_a_transport_error() {
    let port = crate::support::free_port();
    rt().block_on(async {
        let c = client(&format!("http://127.0.0.1:{port}/dav/"));
        let e = c.options().await.expect_err("nothing listens");
        assert_eq!(e.kind(), ErrorKind::Unreachable, "{e}");
    });
}

#[test]
fn orthanc_methods_and_quirks() {
    let Some(o) = orthanc() else { return };
    assert_eq!(o.instances, 130, "the sample set loads 130 instances");
    let s = manifest()
        .into_iter()
        .find(|s| s.path.ends_with("CT_small.dcm"))
        .expect("CT_small in manifest");
    let oracle = o.instance_file(&s.orthanc_id);
    rt().block_on(async {
        let c = client(&o.webdav_url());
        let caps = c.options().await.expect("OPTIONS");
        assert!(caps.is_webdav());
        assert!(!caps.allows("MOVE"), "{caps:?}");

        let ms = c
            .propfind(&DavPath::root(), Depth::One, true)
            .await
            .expect("PROPFIND");
        let names: Vec<&str> = ms.resources.iter().filter_map(|r| r.path.name()).collect();
        assert_eq!(
            names,
            [
                "by-dates",
                "by-patients",
                "by-studies",
                "by-uids",
                "uploads"
            ]
        );

        // A file by its UIDs; PROPFIND Depth 0 answers parent first, we match by path.
        let file = p(&format!(
            "/by-uids/{}/{}/{}.dcm",
            s.study_uid, s.series_uid, s.sop_uid
        ));
        let ms0 = c
            .propfind(&file, Depth::Zero, false)
            .await
            .expect("PROPFIND 0");
        assert_eq!(ms0.resources.len(), 2, "Orthanc answers parent + file");
        let r = ms0.get(&file).expect("file entry");
        assert!(!r.is_collection);
        assert_eq!(r.etag, None, "Orthanc sends no ETag");
        assert_eq!(r.content_length, Some(oracle.len() as u64));
        assert_eq!(c.get_bytes(&file).await.expect("GET"), oracle);

        // Range is ignored: 200 with the whole body.
        let g = c
            .get(
                &file,
                Some(ByteRange {
                    start: 100,
                    end: Some(199),
                }),
                None,
            )
            .await
            .expect("GET range");
        assert!(g.range.is_none());
        assert_eq!(g.meta.content_length, Some(oracle.len() as u64));
        // HEAD says 0 bytes.
        assert_eq!(c.head(&file).await.expect("HEAD").content_length, Some(0));

        // uploads/: MKCOL, PUT, DELETE; MOVE is refused with 400 -> CrossDevice.
        let sub = p("/uploads/client-test");
        c.mkcol(&sub).await.expect("MKCOL");
        let dropped = sub.join("empty.bin").expect("p");
        c.put(
            &dropped,
            PutBody::Bytes(Bytes::new()),
            &Preconditions::default(),
        )
        .await
        .expect("PUT");
        let e = c
            .move_to(&dropped, &sub.join("renamed.bin").expect("p"), false, false)
            .await
            .expect_err("MOVE");
        assert_eq!(e.kind(), ErrorKind::CrossDevice, "{e}");
        let e = c
            .put(
                &p("/by-patients/x.dcm"),
                PutBody::Bytes(Bytes::new()),
                &Preconditions::default(),
            )
            .await
            .expect_err("PUT outside uploads");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        let lock = c
            .lock(&dropped, Duration::from_secs(60))
            .await
            .expect("fake LOCK");
        assert!(lock.token.starts_with("opaquelocktoken:"), "{lock:?}");
        c.unlock(&dropped, &lock.token).await.expect("fake UNLOCK");
        c.delete(&sub, true, &Preconditions::default())
            .await
            .expect("DELETE");

        // Depth: infinity is never sent; Orthanc would answer 400 (checked by the server).
        // Connections idle longer than Orthanc's 1 s keep-alive are retried transparently.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        c.propfind(&DavPath::root(), Depth::Zero, true)
            .await
            .expect("PROPFIND after the keep-alive expired");
    });
}

#[test]
fn digest_auth_against_apache() {
    let Some(a) = apache() else { return };
    let dir = a.digestroot.join("client-digest");
    std::fs::create_dir_all(&dir).expect("mkdir");
    apache::give_to_server(&dir);
    rt().block_on(async {
        let url = Url::parse(&a.digest_url("client-digest")).expect("url");
        let anonymous = DavClient::new(ClientConfig::new(url.clone())).expect("client");
        let e = anonymous.options().await.expect_err("no credentials");
        assert!(e.to_string().contains("digest"), "{e}");
        let mut cfg = ClientConfig::new(url);
        cfg.credentials = Some(Credentials {
            user: apache::USER.into(),
            password: Secret::new(apache::PASSWORD),
        });
        let c = DavClient::new(cfg).expect("client");
        c.options().await.expect("OPTIONS with Digest");
        let f = p("/d.txt");
        c.put(
            &f,
            PutBody::Bytes(Bytes::from_static(b"digest")),
            &Preconditions::default(),
        )
        .await
        .expect("PUT");
        // A streamed body goes out with the Digest header preemptively (nonce count 2, 3, …).
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"str")),
            Ok(Bytes::from_static(b"eamed")),
        ];
        c.put(
            &p("/s.txt"),
            PutBody::Stream {
                stream: Box::new(futures_util::stream::iter(chunks)),
                len: None,
            },
            &Preconditions::default(),
        )
        .await
        .expect("streamed PUT");
        assert_eq!(&c.get_bytes(&f).await.expect("GET")[..], b"digest");
        assert_eq!(
            &c.get_bytes(&p("/s.txt")).await.expect("GET")[..],
            b"streamed"
        );
        let ms = c
            .propfind(&DavPath::root(), Depth::One, true)
            .await
            .expect("PROPFIND");
        assert_eq!(ms.resources.len(), 3);
    });
}

#[test]
fn redirects_keep_method_and_body() {
    let Some(a) = apache() else { return };
    let dir = a.fresh_dir("redir-client");
    std::fs::write(dir.join("a.txt"), b"aaa").expect("write");
    apache::give_to_server(&dir);
    rt().block_on(async {
        // Every request to this port is answered 308 to the same path over HTTPS.
        let url = Url::parse(&format!(
            "http://127.0.0.1:{}/dav/redir-client/",
            a.upgrade_port
        ))
        .expect("url");
        let mut cfg = ClientConfig::new(url);
        cfg.extra_ca_pem = Some(std::fs::read(&a.ca).expect("ca"));
        let c = DavClient::new(cfg).expect("client");
        let ms = c
            .propfind(&DavPath::root(), Depth::One, true)
            .await
            .expect("PROPFIND through a 308");
        assert!(ms.get(&p("/a.txt")).is_some(), "{:?}", ms.resources);
        let data = Bytes::from(pattern(100_000, 4));
        c.put(
            &p("/b.bin"),
            PutBody::Bytes(data.clone()),
            &Preconditions::default(),
        )
        .await
        .expect("PUT through a 308");
        c.mkcol(&p("/sub")).await.expect("MKCOL through a 308");
        assert_eq!(
            std::fs::read(dir.join("b.bin")).expect("stored"),
            data.to_vec()
        );
        assert!(dir.join("sub").is_dir());
        // Apache logged each method twice: the 308 and the real answer, same method. The two
        // vhosts log from different workers, so wait (bounded) for both lines of each.
        let want = [("PROPFIND", 207), ("PUT", 201), ("MKCOL", 201)];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = a.settled_requests("redir-client");
            let statuses = |method: &str| -> Vec<u16> {
                let mut v: Vec<u16> = log
                    .iter()
                    .filter(|l| l.method == method)
                    .map(|l| l.status)
                    .collect();
                v.sort_unstable();
                v
            };
            if want.iter().all(|(m, _)| statuses(m).len() >= 2)
                || std::time::Instant::now() > deadline
            {
                for (method, done) in want {
                    let mut expected = vec![308, done];
                    expected.sort_unstable();
                    assert_eq!(statuses(method), expected, "{method}");
                }
                break;
            }
        }
    });
}

/// Listings are parsed while they download; the size limit still holds (Apache sends them
/// chunked, so only the bytes counted on the way can enforce it).
#[test]
fn listing_larger_than_the_limit_is_refused() {
    let Some(a) = apache() else { return };
    let dir = a.fresh_dir("biglist");
    for i in 0..200 {
        std::fs::write(dir.join(format!("file-with-a-long-name-{i:04}.txt")), b"x").expect("w");
    }
    apache::give_to_server(&dir);
    let url = Url::parse(&a.url("biglist")).expect("url");
    let rt = crate::support::rt();
    let mut small = ClientConfig::new(url.clone());
    small.max_listing_bytes = 16 * 1024;
    let c = DavClient::new(small).expect("client");
    let e = rt
        .block_on(c.propfind(&p(""), Depth::One, true))
        .expect_err("a listing over the limit");
    assert!(e.to_string().contains("larger than 16384 bytes"), "{e}");
    let full = rt
        .block_on(client(url.as_str()).propfind(&p(""), Depth::One, true))
        .expect("the same listing with the default limit");
    assert_eq!(full.resources.len(), 201);
}
