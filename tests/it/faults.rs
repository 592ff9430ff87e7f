//! Faults between the mount and a real server (Apache behind a fault-injecting proxy):
//! busy answers are retried, broken transfers resume, and nothing returns wrong bytes.

use std::os::unix::fs::FileExt;

use crate::support::apache::{self, apache};
use crate::support::fault_proxy::{Fault, FaultProxy};
use crate::support::{Mount, have_fuse, pattern};

#[test]
fn busy_answers_are_retried_with_backoff() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("fault-busy");
    std::fs::write(dir.join("f.txt"), b"hello").expect("write");
    apache::give_to_server(&dir);
    let proxy = FaultProxy::start(a.port);
    let url = format!("http://127.0.0.1:{}/dav/fault-busy/", proxy.port);
    let m = Mount::new(&url, &["--dir-cache-ttl", "0"]);
    // The next three connections answer 503: the listing still succeeds.
    proxy.inject(&[Fault::Busy, Fault::Busy, Fault::Busy]);
    let names: Vec<String> = std::fs::read_dir(m.path())
        .expect("listing through 503s")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["f.txt"]);
    assert_eq!(proxy.pending(), 0, "the 503s were not all met");
    assert_eq!(
        std::fs::read(m.path().join("f.txt")).expect("read"),
        b"hello"
    );
    assert!(m.unmount().success());
}

#[test]
fn busy_answers_fail_cleanly_when_the_retry_time_is_spent() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    a.fresh_dir("fault-busy-long");
    let proxy = FaultProxy::start(a.port);
    let url = format!("http://127.0.0.1:{}/dav/fault-busy-long/", proxy.port);
    let m = Mount::new(&url, &["--dir-cache-ttl", "0", "--retry-time", "1"]);
    proxy.inject(&[Fault::Busy; 200]);
    let start = std::time::Instant::now();
    let e = std::fs::read_dir(m.path()).expect_err("server stays busy");
    assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "{e}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    drop(m);
}

#[test]
fn cut_connections_during_ranged_reads_give_correct_bytes_or_a_clean_error() {
    let Some(a) = apache() else { return };
    if !have_fuse() {
        return;
    }
    let dir = a.fresh_dir("fault-cut");
    let data = pattern(16 << 20, 11);
    std::fs::write(dir.join("big.bin"), &data).expect("write");
    apache::give_to_server(&dir);
    let proxy = FaultProxy::start(a.port);
    let url = format!("http://127.0.0.1:{}/dav/fault-cut/", proxy.port);
    let m = Mount::new(&url, &[]);
    // A sequential read whose connections break every few hundred KiB resumes each time.
    proxy.inject(&[
        Fault::CutAfter(300_000),
        Fault::CutAfter(700_000),
        Fault::CutAfter(1_500_000),
        Fault::CutAfter(2_000_000),
    ]);
    let got = std::fs::read(m.path().join("big.bin")).expect("read through cuts");
    assert!(
        got == data,
        "sequential read through cut connections differs"
    );
    // 100 ranged reads at random offsets, each with its connection cut at a random point.
    let f = std::fs::File::open(m.path().join("big.bin")).expect("open");
    let mut x: u64 = 0xdead_beef;
    let mut errors = 0;
    for _ in 0..100 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        proxy.inject(&[Fault::CutAfter(1 + (x % 400_000) as usize)]);
        let off = (x >> 24) % (data.len() as u64 - 1);
        let mut buf = vec![0u8; 200_000];
        match f.read_at(&mut buf, off) {
            Ok(n) => {
                let end = off as usize + n;
                assert!(
                    buf[..n] == data[off as usize..end],
                    "wrong bytes at {off}+{n}"
                );
            }
            Err(e) => {
                errors += 1;
                assert!(
                    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::ESTALE)),
                    "{e}"
                );
            }
        }
    }
    assert!(errors < 100, "every read failed");
    drop(f);
    assert!(m.unmount().success());
}
