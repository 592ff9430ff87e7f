//! An in-process `dav-server` (LocalFs) on 127.0.0.1, with every request recorded.
//!
//! Each call to [`DavServer::start`] serves its own temp dir on its own port, on its own
//! runtime thread, so tests do not share state.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dav_server::{DavHandler, fakels::FakeLs, localfs::LocalFs};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// What a server demands of every request.
#[derive(Clone)]
enum Check {
    /// `Authorization: Bearer <the token now in the cell>`.
    Bearer(Arc<Mutex<String>>),
    /// This exact `Authorization: Basic ...` value.
    Basic(String),
}

pub struct DavServer {
    pub port: u16,
    pub root: PathBuf,
    log: Arc<Mutex<Vec<(String, String)>>>,
    auth_log: Arc<Mutex<Vec<String>>>,
    _tmp: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DavServer {
    pub fn start() -> DavServer {
        Self::start_on(0, None)
    }

    /// Serves `root` (a fresh temp dir when `None`) on `port` (any free one when 0): a server
    /// can be stopped and started again on the same port over the same files.
    pub fn start_on(port: u16, root: Option<PathBuf>) -> DavServer {
        Self::start_inner(port, root, None)
    }

    /// A server that demands `Authorization: Bearer <token>` with the token currently in
    /// `token` (a test can change it: the server then refuses the old one with 401), and
    /// records in [`DavServer::authorizations`] the Authorization header of every request.
    pub fn start_bearer(token: Arc<Mutex<String>>) -> DavServer {
        Self::start_inner(0, None, Some(token))
    }

    /// The Authorization header of every request so far ("" when absent; several headers
    /// of one request joined by " | ").
    pub fn authorizations(&self) -> Vec<String> {
        self.auth_log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// A server that demands `Authorization: Basic` for `user` and `password` (401 with a
    /// Basic challenge otherwise) and records every request's Authorization headers.
    pub fn start_basic(user: &str, password: &str) -> DavServer {
        use base64::Engine;
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        Self::start_with(0, None, Some(Check::Basic(want)))
    }

    fn start_inner(
        port: u16,
        root: Option<PathBuf>,
        token: Option<Arc<Mutex<String>>>,
    ) -> DavServer {
        Self::start_with(port, root, token.map(Check::Bearer))
    }

    fn start_with(port: u16, root: Option<PathBuf>, check: Option<Check>) -> DavServer {
        let tmp = tempfile::Builder::new()
            .prefix("davdrive-davserver")
            .tempdir()
            .expect("tempdir");
        let root = root.unwrap_or_else(|| tmp.path().to_path_buf());
        let log: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let handler = DavHandler::builder()
            .filesystem(LocalFs::new(&root, true, false, false))
            .locksystem(FakeLs::new())
            .build_handler();
        let log2 = log.clone();
        let auth_log: Arc<Mutex<Vec<String>>> = Arc::default();
        let auth_log2 = auth_log.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = &mut rx => break,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let handler = handler.clone();
                    let log = log2.clone();
                    let auth_log = auth_log2.clone();
                    let check = check.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let handler = handler.clone();
                            if let Ok(mut l) = log.lock() {
                                l.push((req.method().to_string(), req.uri().path().to_owned()));
                            }
                            let auth = req
                                .headers()
                                .get_all("authorization")
                                .iter()
                                .map(|v| v.to_str().unwrap_or("?"))
                                .collect::<Vec<_>>()
                                .join(" | ");
                            if let Ok(mut l) = auth_log.lock() {
                                l.push(auth.clone());
                            }
                            let (refused, scheme) = match &check {
                                None => (false, ""),
                                Some(Check::Bearer(t)) => (
                                    t.lock()
                                        .map(|t| auth != format!("Bearer {t}"))
                                        .unwrap_or(true),
                                    "Bearer realm=\"dav\"",
                                ),
                                Some(Check::Basic(want)) => (auth != *want, "Basic realm=\"dav\""),
                            };
                            async move {
                                if refused {
                                    let resp = hyper::Response::builder()
                                        .status(401)
                                        .header("www-authenticate", scheme)
                                        .body(dav_server::body::Body::from("credentials required"))
                                        .expect("401 response");
                                    return Ok::<_, Infallible>(resp);
                                }
                                Ok::<_, Infallible>(handler.handle(req).await)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        DavServer {
            port,
            root,
            log,
            auth_log,
            _tmp: tmp,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// (method, raw path) of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn clear(&self) {
        if let Ok(mut l) = self.log.lock() {
            l.clear();
        }
    }
}

impl Drop for DavServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
