//! A fault-injecting TCP proxy on 127.0.0.1 in front of a real server.
//!
//! Faults wait in a queue and are taken in order:
//! - [`Fault::Busy`]: the next request (on any connection) gets `503 Service Unavailable`
//!   with `Retry-After: 0` from the proxy itself, and its connection is closed;
//! - [`Fault::CutAfter`]: the answer to the next request (on any connection) is forwarded
//!   for N bytes, then its connection is closed on both sides (a small N cuts in the middle of
//!   the headers);
//! - [`Fault::ResetAfter`]: as `CutAfter`, but the client gets a TCP reset (RST);
//! - [`Fault::StallAfter`]: the answer to the next request is forwarded for N bytes, then
//!   nothing more while the connection stays open, until the client gives up;
//! - [`Fault::CutUploadAfter`]: the next PUT (on any connection) is forwarded for N bytes
//!   (head and body), then its connection is closed on both sides.
//!
//! [`FaultProxy::freeze`] makes the server look frozen (a hung process, a dead backend behind
//! a proxy): connections are still accepted, but nothing is forwarded either way until
//! [`FaultProxy::thaw`].

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Busy,
    CutAfter(usize),
    ResetAfter(usize),
    StallAfter(usize),
    CutUploadAfter(usize),
}

impl Fault {
    /// Faults that act on the answer to a request.
    fn on_answer(&self) -> bool {
        matches!(
            self,
            Fault::CutAfter(_) | Fault::ResetAfter(_) | Fault::StallAfter(_)
        )
    }
}

pub struct FaultProxy {
    pub port: u16,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    connections: Arc<Mutex<usize>>,
    /// Bytes per second forwarded from clients to the server, on every connection (0: no
    /// limit).
    upload_rate: Arc<AtomicUsize>,
    /// Size of the pieces answers are forwarded in, each sent at once (0: as received).
    packet_size: Arc<AtomicUsize>,
    /// Connections the client closed while the server's side was still open.
    client_closes: Arc<AtomicUsize>,
    /// While set, nothing is forwarded in either direction (requests are swallowed).
    gate: Arc<Gate>,
}

/// Whether the server seems frozen (see [`FaultProxy::freeze`]), whether requests are held
/// back (see [`FaultProxy::hold`]), and their wake-up.
#[derive(Default)]
struct Gate {
    frozen: std::sync::atomic::AtomicBool,
    on: Mutex<bool>,
    released: std::sync::Condvar,
}

impl Gate {
    fn wait(&self) {
        let Ok(mut on) = self.on.lock() else { return };
        while *on {
            match self.released.wait(on) {
                Ok(g) => on = g,
                Err(_) => return,
            }
        }
    }

    fn set(&self, value: bool) {
        if let Ok(mut on) = self.on.lock() {
            *on = value;
        }
        self.released.notify_all();
    }
}

impl FaultProxy {
    /// Starts a proxy to `127.0.0.1:upstream`; it lives as long as the test binary.
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let connections: Arc<Mutex<usize>> = Arc::default();
        let upload_rate: Arc<AtomicUsize> = Arc::default();
        let packet_size: Arc<AtomicUsize> = Arc::default();
        let client_closes: Arc<AtomicUsize> = Arc::default();
        let gate: Arc<Gate> = Arc::default();
        let (f, c, u) = (faults.clone(), connections.clone(), upload_rate.clone());
        let (ps, cc, gt) = (packet_size.clone(), client_closes.clone(), gate.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Ok(mut n) = c.lock() {
                    *n += 1;
                }
                let faults = f.clone();
                let rate = u.clone();
                let packets = ps.clone();
                let closes = cc.clone();
                let gate = gt.clone();
                std::thread::spawn(move || {
                    serve(client, upstream, faults, rate, packets, closes, gate)
                });
            }
        });
        FaultProxy {
            port,
            faults,
            connections,
            upload_rate,
            packet_size,
            client_closes,
            gate,
        }
    }

    /// From now on no request reaches the server until [`FaultProxy::release`]: each waits
    /// in the proxy (connections are accepted), then goes on as if the network were slow.
    pub fn hold(&self) {
        self.gate.set(true);
    }

    /// Ends [`FaultProxy::hold`]: the held requests go to the server, in order.
    pub fn release(&self) {
        self.gate.set(false);
    }

    /// From now on the server seems frozen: connections open, requests vanish, no answer.
    pub fn freeze(&self) {
        self.gate.frozen.store(true, Ordering::SeqCst);
    }

    /// Ends [`FaultProxy::freeze`]: new requests reach the server again (the ones swallowed
    /// meanwhile stay unanswered).
    pub fn thaw(&self) {
        self.gate.frozen.store(false, Ordering::SeqCst);
    }

    /// Connections the client closed while the server's side was still open (an answer
    /// abandoned, or a kept-alive connection let go before the server's keep-alive timeout).
    pub fn client_closes(&self) -> usize {
        self.client_closes.load(Ordering::SeqCst)
    }

    /// Forwards answers in pieces of `bytes` (0: as they come), each sent on its own, like
    /// the small packets of a real network (on loopback they would be up to 64 KiB).
    pub fn small_packets(&self, bytes: usize) {
        self.packet_size.store(bytes, Ordering::Relaxed);
    }

    /// Limits what clients send to `bytes_per_sec` (0: no limit), like a slow uplink.
    pub fn limit_uploads(&self, bytes_per_sec: usize) {
        self.upload_rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Queues faults for the next connections, in order.
    pub fn inject(&self, faults: &[Fault]) {
        if let Ok(mut q) = self.faults.lock() {
            q.extend(faults.iter().copied());
        }
    }

    /// Drops the faults not yet used.
    pub fn clear(&self) {
        if let Ok(mut q) = self.faults.lock() {
            q.clear();
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

/// A connection to a listener of its own whose far end reads and drops everything, to send
/// spacer bytes on. It closes when the proxy's end does.
fn spacer_socket() -> Option<TcpStream> {
    let l = TcpListener::bind("127.0.0.1:0").ok()?;
    let s = TcpStream::connect(l.local_addr().ok()?).ok()?;
    let (mut peer, _) = l.accept().ok()?;
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while matches!(peer.read(&mut sink), Ok(n) if n > 0) {}
    });
    Some(s)
}

/// Closes `s` with a TCP reset instead of an orderly FIN.
fn reset(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn serve(
    client: TcpStream,
    upstream: u16,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    upload_rate: Arc<AtomicUsize>,
    packet_size: Arc<AtomicUsize>,
    client_closes: Arc<AtomicUsize>,
    gate: Arc<Gate>,
) {
    // The fault for the next answer (or none), armed when its request goes out, taken when
    // the answer starts: a fault that an answer did not reach (an answer shorter than its
    // limit) ends with that answer instead of cutting the next one on the connection.
    let armed: Arc<Mutex<Option<Option<Fault>>>> = Arc::default();
    // Set when the server's side ended (or the proxy ended it), before the client's is shut.
    let server_ended: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let ended = server_ended.clone();
    let arm = armed.clone();
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
    let (frozen_up, frozen_down) = (gate.clone(), gate);
    // A connection that saw the freeze stays swallowed: the answer to a request it forwarded
    // before must not arrive after a thaw as if it answered a later request.
    let swallowed: Arc<std::sync::atomic::AtomicBool> = Arc::default();
    let swallowed_down = swallowed.clone();
    let upstream_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut forwarded = 0usize;
        let mut up_limit = usize::MAX;
        loop {
            let n = match c_read.read(&mut buf) {
                Ok(0) | Err(_) => {
                    if !ended.load(Ordering::SeqCst) {
                        client_closes.fetch_add(1, Ordering::SeqCst);
                    }
                    break;
                }
                Ok(n) => n,
            };
            if frozen_up.frozen.load(Ordering::SeqCst) || swallowed.load(Ordering::SeqCst) {
                swallowed.store(true, Ordering::SeqCst);
                continue;
            }
            frozen_up.wait();
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
            if head && let Ok(mut a) = arm.lock() {
                *a = Some(take_if(&faults, Fault::on_answer));
            }
            if buf[..n].starts_with(b"PUT ")
                && up_limit == usize::MAX
                && let Some(Fault::CutUploadAfter(limit)) =
                    take_if(&faults, |f| matches!(f, Fault::CutUploadAfter(_)))
            {
                up_limit = forwarded + limit;
            }
            let n = n.min(up_limit - forwarded);
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
            let rate = upload_rate.load(Ordering::Relaxed);
            if rate > 0 {
                std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
            }
            forwarded += n;
            if forwarded >= up_limit {
                let _ = c_busy.shutdown(Shutdown::Both);
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Write);
    });
    // Server -> client, cut, reset or stalled after `down_limit` bytes.
    let (mut server, mut client) = (server, client);
    let mut sent = 0usize;
    let mut down_limit = usize::MAX;
    let mut fault = None;
    let mut spacer: Option<TcpStream> = None;
    let mut client_gone = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if frozen_down.frozen.load(Ordering::SeqCst) || swallowed_down.load(Ordering::SeqCst) {
            swallowed_down.store(true, Ordering::SeqCst);
            continue;
        }
        // The client sends a request only after the previous answer was read from the
        // server: a fault armed now is for the answer these bytes begin.
        if let Some(next) = armed.lock().ok().and_then(|mut a| a.take()) {
            down_limit = match next {
                Some(Fault::CutAfter(k) | Fault::ResetAfter(k) | Fault::StallAfter(k)) => sent + k,
                _ => usize::MAX,
            };
            fault = next;
        }
        if sent >= down_limit {
            // Stalled: swallow the rest until one side gives up.
            continue;
        }
        let n = n.min(down_limit - sent);
        let piece = match packet_size.load(Ordering::Relaxed) {
            0 => n,
            p => p,
        };
        if piece < n && spacer.is_none() {
            let _ = client.set_nodelay(true);
            spacer = spacer_socket();
        }
        let mut failed = false;
        for c in buf[..n].chunks(piece) {
            if client.write_all(c).is_err() {
                failed = true;
                break;
            }
            // A byte sent elsewhere by this thread between two pieces: the kernel copies
            // what a thread sends into one running buffer, and pieces that lie side by side
            // in it would be merged again into one large fragment.
            if let Some(s) = spacer.as_mut() {
                let _ = s.write_all(b".");
            }
        }
        if failed {
            // The client is gone: its side ended first.
            client_gone = true;
            break;
        }
        sent += n;
        if sent >= down_limit && !matches!(fault, Some(Fault::StallAfter(_))) {
            break;
        }
    }
    if !client_gone {
        server_ended.store(true, Ordering::SeqCst);
    }
    if swallowed_down.load(Ordering::SeqCst) {
        // A frozen server does not close its connections either: hold the client's side
        // open until the client gives up.
        let _ = upstream_thread.join();
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    }
    if matches!(fault, Some(Fault::ResetAfter(_))) {
        // The socket closes (with RST, thanks to linger 0) only when its last descriptor
        // does: stop the other direction's thread, which holds clones, first.
        reset(&client);
        let _ = client.shutdown(Shutdown::Read);
        let _ = upstream_thread.join();
        drop(client);
    } else {
        let _ = client.shutdown(Shutdown::Both);
    }
    let _ = server.shutdown(Shutdown::Both);
}
