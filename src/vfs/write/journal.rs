//! Journals: every byte of a streaming or segmented session goes to a local file before it
//! is sent, written by one thread for the whole process (around the page cache where the
//! platform can), so that a failed upload can be retried or recovered.

use super::*;

/// Items queued for the journal thread, all uploads together.
pub(super) const JOURNAL_DEPTH: usize = 8;

pub(super) enum JournalItem {
    Data(Arc<JournalFile>, u64, Bytes),
    /// Work off the uploads' path (creating spare journals, see `CacheDir::spare_maker`).
    Run(Box<dyn FnOnce() + Send>),
    Barrier(
        Arc<JournalFile>,
        tokio::sync::oneshot::Sender<Result<(), String>>,
    ),
}

/// One journal file and the first error writing it (only the journal thread writes).
pub(super) struct JournalFile {
    pub(super) file: std::fs::File,
    /// A segmented upload's last segments, for the follower (see [`Ring`]).
    pub(super) ring: Option<Arc<Ring>>,
    /// Writes around the page cache; `None` once they failed (then through it).
    pub(super) direct: Ranked<Option<Direct>>,
    pub(super) error: Ranked<Option<String>>,
    /// How far the file is written (appends only: a streaming journal grows in order).
    pub(super) written: tokio::sync::watch::Sender<u64>,
    /// The failure in `error` is a full disk.
    pub(super) no_space: std::sync::atomic::AtomicBool,
}

/// Journals are written by one thread for the whole process, in order, so that disk writes
/// overlap the network instead of sitting on the writer's critical path, and a copy of many
/// small files does not start a thread per file. Items of one journal keep their order; a
/// barrier waits until everything sent before it is on disk (or says why it is not). The
/// channel is bounded: a writer faster than the disk waits.
pub(super) fn journal_thread() -> Result<mpsc::Sender<JournalItem>, String> {
    static THREAD: std::sync::OnceLock<mpsc::Sender<JournalItem>> = std::sync::OnceLock::new();
    if let Some(tx) = THREAD.get() {
        return Ok(tx.clone());
    }
    // Not cached on failure: a later upload tries again. Two first uploads at once may
    // start two threads; the one whose sender is not kept ends at once.
    let (tx, mut rx) = mpsc::channel::<JournalItem>(JOURNAL_DEPTH);
    std::thread::Builder::new()
        .name("davdrive-journal".into())
        .spawn(move || {
            while let Some(item) = rx.blocking_recv() {
                match item {
                    JournalItem::Data(j, off, data) => {
                        let mut error = j.error.lock();
                        if error.is_none() {
                            match j.write(&data, off) {
                                Ok(()) => {
                                    let end = off + data.len() as u64;
                                    j.written.send_if_modified(|w| {
                                        let grew = end > *w;
                                        *w = (*w).max(end);
                                        grew
                                    });
                                }
                                Err(e) => {
                                    let full = e.raw_os_error() == Some(28)
                                        || e.kind() == io::ErrorKind::StorageFull;
                                    j.no_space.store(full, std::sync::atomic::Ordering::Relaxed);
                                    *error = Some(e.to_string());
                                    drop(error);
                                    // Whoever waits for the journal to grow learns it never
                                    // will (a write held back for a segmented upload).
                                    j.written.send_modify(|_| {});
                                }
                            }
                        }
                    }
                    JournalItem::Run(work) => work(),
                    JournalItem::Barrier(j, done) => {
                        let error = j.error.lock();
                        let _ = done.send(match &*error {
                            None => Ok(()),
                            Some(e) => Err(e.clone()),
                        });
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the journal thread: {e}"))?;
    Ok(THREAD.get_or_init(|| tx).clone())
}

impl JournalFile {
    /// Writes `data` at `off`: into the ring where it has a slot, and into the journal.
    pub(super) fn write(&self, data: &[u8], off: u64) -> io::Result<()> {
        if let Some(r) = &self.ring {
            let (mut at, mut rest) = (off, data);
            while !rest.is_empty() {
                let n = r.room(at).min(rest.len() as u64) as usize;
                if let Some((slot_at, _)) = r.place(at)
                    && let Err(e) = write_at(&r.file, &rest[..n], slot_at)
                {
                    tracing::debug!("the ring failed ({e}); segments go from the journal");
                    r.break_down();
                }
                rest = &rest[n..];
                at += n as u64;
            }
        }
        let mut direct = self.direct.lock();
        if let Some(d) = direct.as_mut() {
            match d.append(&self.file, data, off) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Whatever part went out is in the file; the whole write goes again.
                    tracing::debug!("direct journal writes failed ({e}); through the page cache");
                    *direct = None;
                }
            }
        }
        write_at(&self.file, data, off)
    }
}

/// A segmented upload's journal written around the page cache (`O_DIRECT` on Linux: the
/// platform layer opens it, see [`segments::OpenDirect`]). A journal of the whole file must
/// be kept (it is what a failed upload is retried and recovered from), but nothing reads it
/// while the upload goes well: the follower sends from the [`Ring`]. Filling newly allocated
/// page-cache pages with it was the largest cost of a fast upload (docs/PERFORMANCE.md); a
/// direct write costs the disk's bandwidth instead.
///
/// Each write is in the file when it returns: its whole 4 KiB blocks (with the bytes of the
/// last block before it, kept here) go direct through an aligned buffer, the bytes of an
/// unfinished last block through the page cache; the next direct write covers that block
/// again (the kernel writes back and drops cached pages a direct write covers). Bytes must
/// come in order.
pub(super) struct Direct {
    pub(super) file: std::fs::File,
    pub(super) buf: Vec<u8>,
    /// Where the aligned part of `buf` starts.
    pub(super) base: usize,
    /// The file offset of the unfinished last block (aligned), and its bytes so far (at the
    /// start of the aligned part of `buf`).
    pub(super) start: u64,
    pub(super) len: usize,
    /// Whether those bytes were read in (they came through the page cache before).
    pub(super) primed: bool,
}

impl Direct {
    const ALIGN: usize = 4096;
    const CHUNK: usize = 1 << 20;

    /// Direct writes to the journal at `path`, whose first `written` bytes are there.
    pub(super) fn open(
        open: segments::OpenDirect,
        path: &std::path::Path,
        written: u64,
    ) -> io::Result<Self> {
        let file = open(path)?;
        let buf = vec![0u8; Self::CHUNK + Self::ALIGN];
        let base = buf.as_ptr().align_offset(Self::ALIGN);
        if base >= Self::ALIGN {
            return Err(io::Error::other("cannot align a buffer"));
        }
        let start = written - written % Self::ALIGN as u64;
        Ok(Direct {
            file,
            buf,
            base,
            start,
            len: (written - start) as usize,
            primed: false,
        })
    }

    /// Writes `data` at `off` (where the journal ends); `plain` is the journal through the
    /// page cache.
    pub(super) fn append(
        &mut self,
        plain: &std::fs::File,
        mut data: &[u8],
        off: u64,
    ) -> io::Result<()> {
        if !self.primed {
            let head = self.base..self.base + self.len;
            if read_at(plain, &mut self.buf[head], self.start)? < self.len {
                return Err(io::Error::other("the journal is shorter than written"));
            }
            self.primed = true;
        }
        if off != self.start + self.len as u64 {
            return Err(io::Error::other("a journal write out of order"));
        }
        while !data.is_empty() {
            let n = (Self::CHUNK - self.len).min(data.len());
            let at = self.base + self.len;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            let whole = self.len - self.len % Self::ALIGN;
            if whole > 0 {
                write_at(
                    &self.file,
                    &self.buf[self.base..self.base + whole],
                    self.start,
                )?;
            }
            let rest = self.len - whole;
            if rest > 0 {
                let tail = self.base + whole..self.base + self.len;
                write_at(plain, &self.buf[tail.clone()], self.start + whole as u64)?;
                self.buf.copy_within(tail, self.base);
            }
            self.start += whole as u64;
            self.len = rest;
        }
        Ok(())
    }
}

/// For a segmented upload of the journal at `path` (`written` bytes so far): direct writes to
/// the journal and a ring of segments to send from, both or neither.
pub(super) fn around_page_cache(
    policy: &SegmentPolicy,
    path: &std::path::Path,
    written: u64,
) -> (Option<Arc<Ring>>, Option<Direct>) {
    let Some(open) = policy.open_direct() else {
        return (None, None);
    };
    let direct = match Direct::open(open, path, written) {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!("the journal goes through the page cache ({e})");
            return (None, None);
        }
    };
    // The ring needs no name: unlinked at once (where the OS allows), it goes with its last
    // descriptor.
    let ring_path = path.with_extension("ring");
    let ring = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&ring_path);
    let _ = std::fs::remove_file(&ring_path);
    match ring {
        Ok(f) => {
            tracing::debug!(journal = %path.display(), "segments go from a ring; the journal is written around the page cache");
            (
                Some(Arc::new(Ring::new(f, policy.size(), written))),
                Some(direct),
            )
        }
        Err(e) => {
            tracing::debug!("no ring for the upload ({e})");
            (None, None)
        }
    }
}

/// The journal of one streaming upload.
pub(super) struct JournalWriter {
    pub(super) tx: mpsc::Sender<JournalItem>,
    pub(super) file: Arc<JournalFile>,
}

impl JournalWriter {
    /// A journal for `file`, whose first `written` bytes are already in place; with a ring
    /// and direct writes for a segmented upload (see [`around_page_cache`]).
    pub(super) fn start(
        file: std::fs::File,
        written: u64,
        ring: Option<Arc<Ring>>,
        direct: Option<Direct>,
    ) -> io::Result<Self> {
        let tx = journal_thread().map_err(io::Error::other)?;
        let file = Arc::new(JournalFile {
            file,
            ring,
            direct: Ranked::new(Rank::Journal, direct),
            error: Ranked::new(Rank::JournalError, None),
            written: tokio::sync::watch::Sender::new(written),
            no_space: false.into(),
        });
        Ok(JournalWriter { tx, file })
    }

    /// How far the journal is written, as it grows.
    pub(super) fn watermark(&self) -> tokio::sync::watch::Receiver<u64> {
        self.file.written.subscribe()
    }

    pub(super) fn item(&self, off: u64, data: Bytes) -> JournalItem {
        JournalItem::Data(self.file.clone(), off, data)
    }

    /// The journal's failure, once it failed: a full disk is `StorageFull`, so that the
    /// writer is told `ENOSPC`.
    pub(super) fn failure(&self) -> Option<io::Error> {
        let error = self.file.error.lock();
        let msg = error.as_ref()?;
        let kind = if self
            .file
            .no_space
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            io::ErrorKind::StorageFull
        } else {
            io::ErrorKind::Other
        };
        Some(io::Error::new(kind, msg.clone()))
    }

    /// Queues `data` for the journal; fails at once once the journal has failed, so that no
    /// write after a failure is taken (its bytes would exist nowhere).
    pub(super) async fn push(&self, off: u64, data: Bytes) -> io::Result<()> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        self.tx
            .send(self.item(off, data))
            .await
            .map_err(|_| io::Error::other("the journal writer stopped"))
    }

    pub(super) async fn barrier(&self) -> Result<(), String> {
        // Every queued item holds a reference to the file, and the journal thread drops it
        // once the item is done: when ours is the only one left, everything sent is written
        // and no round trip to the thread is needed (a small file's close saves a wake-up).
        if Arc::strong_count(&self.file) == 1 {
            let error = self.file.error.lock();
            return match &*error {
                None => Ok(()),
                Some(e) => Err(e.clone()),
            };
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(JournalItem::Barrier(self.file.clone(), done))
            .await
            .map_err(|_| "the journal writer stopped".to_owned())?;
        wait.await
            .map_err(|_| "the journal writer stopped".to_owned())?
    }
}
