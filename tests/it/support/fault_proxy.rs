//! A fault-injecting TCP proxy on 127.0.0.1 in front of a real server.
//!
//! Faults wait in a queue and are taken in order:
//! - [`Fault::Busy`]: the next request (on any connection) gets `503 Service Unavailable`
//!   with `Retry-After: 0` from the proxy itself, and its connection is closed;
//! - [`Fault::CutAfter`]: the next new connection is forwarded, but closed on both sides after
//!   N bytes of the server's answer.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Busy,
    CutAfter(usize),
}

pub struct FaultProxy {
    pub port: u16,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    connections: Arc<Mutex<usize>>,
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream`; it lives as long as the test binary.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let connections: Arc<Mutex<usize>> = Arc::default();
        let (f, c) = (faults.clone(), connections.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Ok(mut n) = c.lock() {
                    *n += 1;
                }
                let faults = f.clone();
                std::thread::spawn(move || serve(client, upstream, faults));
            }
        });
        FaultProxy {
            port,
            faults,
            connections,
        }
    }

    /// Queues faults for the next connections, in order.
    pub fn inject(&self, faults: &[Fault]) {
        if let Ok(mut q) = self.faults.lock() {
            q.extend(faults.iter().copied());
        }
    }

    /// Faults not yet used.
    pub fn pending(&self) -> usize {
        self.faults.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn connections(&self) -> usize {
        self.connections.lock().map(|n| *n).unwrap_or(0)
    }
}

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"PUT ",
    b"PROPFIND ",
    b"OPTIONS ",
    b"DELETE ",
    b"MKCOL ",
    b"MOVE ",
    b"COPY ",
];

fn take_if(faults: &Mutex<VecDeque<Fault>>, want: impl Fn(&Fault) -> bool) -> Option<Fault> {
    let mut q = faults.lock().ok()?;
    if q.front().is_some_and(want) {
        q.pop_front()
    } else {
        None
    }
}

fn serve(client: TcpStream, upstream: u16, faults: Arc<Mutex<VecDeque<Fault>>>) {
    let limit = match take_if(&faults, |f| matches!(f, Fault::CutAfter(_))) {
        Some(Fault::CutAfter(n)) => n,
        _ => usize::MAX,
    };
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write), Ok(mut c_busy)) =
        (client.try_clone(), server.try_clone(), client.try_clone())
    else {
        return;
    };
    // Client -> server; a queued Busy fault answers the next request head itself.
    let s_busy = server.try_clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let head = METHODS.iter().any(|m| buf[..n].starts_with(m));
            if head && take_if(&faults, |f| *f == Fault::Busy).is_some() {
                let _ = c_busy.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = c_busy.shutdown(Shutdown::Both);
                if let Ok(s) = &s_busy {
                    let _ = s.shutdown(Shutdown::Both);
                }
                return;
            }
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    // Server -> client, cut after `limit` bytes.
    let (mut server, mut client) = (server, client);
    let mut sent = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let n = n.min(limit - sent);
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
        if sent >= limit {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}
