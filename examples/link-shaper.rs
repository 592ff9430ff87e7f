//! A shaped network link on 127.0.0.1 for benchmarks: a TCP proxy that gives every
//! connection through it the behaviour of a real link between a client and a server.
//!
//! ```sh
//! cargo run --release --example link-shaper -- 18300 127.0.0.1:18182 30 100
//! #                                        listen  upstream     RTT ms  Mbit/s
//! ```
//!
//! This kernel has no `netem`, so the link is made in user space. What it models, per
//! direction:
//! - a one-way delay of half the round trip: every byte arrives that long after it left;
//! - a bandwidth shared by every connection going that way (one serialisation queue, like
//!   one link): a byte leaves when the bytes queued before it, on any connection, have left;
//! - TCP's windows on each connection: a sender has at most `cwnd` bytes unacknowledged, an
//!   acknowledgement comes back one delay after its bytes arrived, and `cwnd` starts at ten
//!   segments and grows by the bytes acknowledged (slow start) up to the receive window (4 MiB,
//!   Linux's default `tcp_rmem` maximum is 6 MiB); after an idle period it is halved once per
//!   retransmission timeout (the round trip plus 200 ms), down to ten segments, as Linux's
//!   `tcp_slow_start_after_idle` does;
//! - the connection handshake: a client's first bytes leave one round trip after it connected
//!   (SYN, SYN-ACK), as its request would.
//!
//! Not modelled: losses, congestion avoidance (no loss, so slow start until the window), Nagle.
//! Its timers tick by the millisecond: a round trip takes about 2.5 ms more than asked (a tiny
//! GET on a kept-alive connection: 32.9 ms at 30 ms, 4.7 ms at 2 ms, Apache's answer included).
//! Each connection it accepts is counted on standard error (`link-shaper: connection N`), so
//! a benchmark can tell how many connections a client opened.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, sleep_until};

const SEGMENT: usize = 1448;
const INITIAL_WINDOW: usize = 10 * SEGMENT;
const RECEIVE_WINDOW: usize = 4 << 20;
const CHUNK: usize = 16 * 1024;
/// Linux's `tcp_rto_min`: the retransmission timeout is the smoothed round trip plus this.
const MIN_RTO: Duration = Duration::from_millis(200);

/// One direction of the link, shared by every connection: when it is free again.
struct Link {
    free_at: Mutex<Instant>,
    /// Nanoseconds per byte.
    ns_per_byte: f64,
    delay: Duration,
}

impl Link {
    /// Queues `len` bytes behind what is queued already (no earlier than now); returns when
    /// their last byte arrives at the other end.
    fn send(&self, len: usize) -> Instant {
        let now = Instant::now();
        let mut free = match self.free_at.lock() {
            Ok(f) => f,
            Err(p) => p.into_inner(),
        };
        let start = (*free).max(now);
        let done = start + Duration::from_nanos((len as f64 * self.ns_per_byte) as u64);
        *free = done;
        done + self.delay
    }
}

/// TCP's congestion window of one connection in one direction.
struct Window {
    state: Mutex<WindowState>,
    acked: Notify,
}

struct WindowState {
    cwnd: usize,
    in_flight: usize,
    last_send: Option<Instant>,
    /// The receiving end is gone: nothing more is sent.
    closed: bool,
}

impl Window {
    fn new() -> Self {
        Window {
            state: Mutex::new(WindowState {
                cwnd: INITIAL_WINDOW,
                in_flight: 0,
                last_send: None,
                closed: false,
            }),
            acked: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Waits until at least one segment (or `want`) fits; returns how many bytes may go, or
    /// 0 once the receiving end is gone.
    async fn acquire(&self, want: usize, rto: Duration) -> usize {
        loop {
            let notified = self.acked.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return 0;
                }
                let now = Instant::now();
                if s.in_flight == 0
                    && let Some(last) = s.last_send
                {
                    let idle = now.duration_since(last).as_nanos() / rto.as_nanos().max(1);
                    for _ in 0..idle.min(32) {
                        s.cwnd = (s.cwnd / 2).max(INITIAL_WINDOW);
                    }
                }
                let room = s.cwnd.saturating_sub(s.in_flight);
                if room >= want.min(SEGMENT) {
                    let n = room.min(want);
                    s.in_flight += n;
                    s.last_send = Some(now);
                    return n;
                }
            }
            notified.await;
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.acked.notify_waiters();
    }

    fn ack(&self, n: usize) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(n);
        s.cwnd = (s.cwnd + n).min(RECEIVE_WINDOW);
        drop(s);
        self.acked.notify_waiters();
    }
}

struct Shaper {
    up: Link,
    down: Link,
    rtt: Duration,
}

/// Forwards one direction of one connection through `link`.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    link: Arc<Shaper>,
    upward: bool,
    not_before: Instant,
) {
    let window = Arc::new(Window::new());
    let rto = link.rtt + MIN_RTO;
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let delay = if upward {
        link.up.delay
    } else {
        link.down.delay
    };
    let acker = Arc::clone(&window);
    let writer = tokio::spawn(async move {
        while let Some((arrive, data)) = rx.recv().await {
            sleep_until(arrive).await;
            if to.write_all(&data).await.is_err() {
                // The receiver is gone: the sender stops too (and its socket closes), as a
                // reset would tell it.
                acker.close();
                break;
            }
            // The acknowledgement travels back for one delay.
            let w = Arc::clone(&acker);
            let n = data.len();
            tokio::spawn(async move {
                sleep_until(arrive + delay).await;
                w.ack(n);
            });
        }
        let _ = to.shutdown().await;
    });
    sleep_until(not_before).await;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut off = 0;
        while off < n {
            let len = window.acquire(n - off, rto).await;
            if len == 0 {
                let _ = writer.await;
                return;
            }
            let l = if upward { &link.up } else { &link.down };
            let arrive = l.send(len);
            if tx.send((arrive, buf[off..off + len].to_vec())).is_err() {
                return;
            }
            off += len;
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: link-shaper LISTEN_PORT UPSTREAM_HOST:PORT RTT_MS MBIT_PER_S");
        std::process::exit(2);
    }
    let parse = |s: &str, what: &str| -> f64 {
        match s.parse::<f64>() {
            Ok(v) if v >= 0.0 => v,
            _ => {
                eprintln!("link-shaper: bad {what}: {s}");
                std::process::exit(2);
            }
        }
    };
    let port = parse(&args[0], "port") as u16;
    let upstream = args[1].clone();
    let rtt = Duration::from_secs_f64(parse(&args[2], "RTT") / 1000.0);
    let mbit = parse(&args[3], "bandwidth");
    let ns_per_byte = if mbit > 0.0 { 8000.0 / mbit } else { 0.0 };
    let link = || Link {
        free_at: Mutex::new(Instant::now()),
        ns_per_byte,
        delay: rtt / 2,
    };
    let shaper = Arc::new(Shaper {
        up: link(),
        down: link(),
        rtt,
    });
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("link-shaper: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "link-shaper: 127.0.0.1:{port} -> {upstream}, RTT {} ms, {mbit} Mbit/s",
        rtt.as_millis()
    );
    let connections = AtomicUsize::new(0);
    loop {
        let (client, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("link-shaper: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let accepted = Instant::now();
        let n = connections.fetch_add(1, Ordering::Relaxed) + 1;
        eprintln!("link-shaper: connection {n}");
        let shaper = Arc::clone(&shaper);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let server = match TcpStream::connect(&upstream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("link-shaper: cannot reach {upstream}: {e}");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            // The client's first bytes leave after the handshake's round trip.
            let up = pump(cr, sw, Arc::clone(&shaper), true, accepted + shaper.rtt);
            let down = pump(sr, cw, Arc::clone(&shaper), false, accepted);
            tokio::join!(up, down);
        });
    }
}
