//! A WebDAV server for trying davdrive out: serves a directory on 127.0.0.1.
//!
//! ```sh
//! cargo run --example dev-server -- /tmp/share 8080
//! davdrive mount http://127.0.0.1:8080/ ~/mnt/share
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use dav_server::{DavHandler, fakels::FakeLs, localfs::LocalFs};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".into());
    let port: u16 = match args.next().map(|p| p.parse()) {
        None => 8080,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            eprintln!("dev-server: bad port: {e}");
            std::process::exit(2);
        }
    };
    let handler = DavHandler::builder()
        .filesystem(LocalFs::new(&dir, true, false, false))
        .locksystem(FakeLs::new())
        .build_handler();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dev-server: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("dev-server: serving {dir} at http://{addr}/");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler.handle(req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                eprintln!("dev-server: connection: {e}");
            }
        });
    }
}
