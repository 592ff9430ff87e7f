//! A minimal forward HTTP proxy on 127.0.0.1: absolute-form requests are piped to their
//! origin, `CONNECT host:port` opens a tunnel. It records the first request line of every
//! connection, and the `Proxy-Authorization` it carried (or `-`), so a test can see that
//! traffic went through it and with which login. It asks for no login itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub struct HttpProxy {
    pub port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    auths: Arc<Mutex<Vec<String>>>,
}

impl HttpProxy {
    pub fn start() -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let auths: Arc<Mutex<Vec<String>>> = Arc::default();
        let (l, a) = (lines.clone(), auths.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (l, a) = (l.clone(), a.clone());
                std::thread::spawn(move || serve(client, l, a));
            }
        });
        HttpProxy { port, lines, auths }
    }

    /// Each connection's first request line with the `Proxy-Authorization` it carried.
    pub fn lines_with_login(&self) -> Vec<(String, String)> {
        let lines = self.first_lines();
        let auths = self.auths.lock().map(|a| a.clone()).unwrap_or_default();
        lines.into_iter().zip(auths).collect()
    }

    /// The first request line of every connection so far.
    pub fn first_lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn serve(client: TcpStream, lines: Arc<Mutex<Vec<String>>>, auths: Arc<Mutex<Vec<String>>>) {
    let Ok(read_half) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let end = line == "\r\n";
        head.push(line);
        if end {
            break;
        }
    }
    let first = head[0].trim_end().to_owned();
    let auth = head
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("proxy-authorization")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| "-".into());
    if let Ok(mut l) = lines.lock() {
        l.push(first.clone());
    }
    if let Ok(mut a) = auths.lock() {
        a.push(auth);
    }
    let mut parts = first.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return;
    };
    let authority = if method == "CONNECT" {
        target.to_owned()
    } else {
        let Some(rest) = target.strip_prefix("http://") else {
            return;
        };
        rest.split('/').next().unwrap_or("").to_owned()
    };
    let Ok(mut server) = TcpStream::connect(authority.as_str()) else {
        let _ = (&client).write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let mut client_w = match client.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    if method == "CONNECT" {
        if client_w
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return;
        }
    } else {
        // Origin servers accept absolute-form request targets: forward the head unchanged.
        for l in &head {
            if server.write_all(l.as_bytes()).is_err() {
                return;
            }
        }
    }
    // Whatever the reader buffered beyond the head goes first.
    let buffered = reader.buffer().to_vec();
    if !buffered.is_empty() && server.write_all(&buffered).is_err() {
        return;
    }
    let (Ok(s2), Ok(c2)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || pipe(c2, s2));
    pipe(server, client_w);
}
