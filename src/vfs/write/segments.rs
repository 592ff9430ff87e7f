//! Resumable uploads of large files.
//!
//! Where the server stores a PUT with `Content-Range` as a partial update (probed once per
//! mount, see [`SegmentPolicy::usable`]), a file larger than one segment goes to a hidden
//! temporary name next to its target, segment by segment, each segment a request of its own
//! sent from the local copy (the journal or the spool) and retried on its own. A broken
//! connection costs at most one segment, not the whole file. When all of it is there, a
//! MOVE puts the file in place in one step, under the same lost-update preconditions as a
//! PUT (see [`DavClient::move_onto`]): readers never see a half file under the real name.
//!
//! A streaming session switches to this once its file outgrows the first segment; the
//! [`Follower`] then uploads behind the writer, from the journal, as the journal fills
//! (from a small copy of the last segments in the page cache where the journal itself goes
//! around it, see [`Ring`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dav::{DavClient, DavPath, ErrorKind, Preconditions, PutBody, ResponseMeta};
use crate::vfs::error::{VfsError, VfsResult};

/// Names of temporary uploads start with this; listings of the mount hide them.
pub const PART_PREFIX: &str = ".davdrive-part-";

/// Retries of one segment after a transient failure, and the first pause between them
/// (doubled each time: 0.25 + 0.5 + 1 + 2 + 4 s). Retrying also stops once the client's
/// retry time (`--retry-time`, 30 s by default) is spent since the first failure.
pub const SEGMENT_RETRIES: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// How long a stopping segmented upload waits for the answer to the segment in flight
/// before cutting it (see `Follower::stop_after_segment`): a 16 MiB segment at 100 Mbit/s
/// takes 1.3 s.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// How a segmented upload is doing, for the writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes `[0, acked)` are on the server.
    pub acked: u64,
    /// The last request failed; the upload is pausing before it tries again.
    pub failing: bool,
}

/// Opens a file for writes around the page cache (`O_DIRECT`): the platform layer knows how.
pub type OpenDirect = fn(&std::path::Path) -> std::io::Result<std::fs::File>;

/// Whether and how large files are uploaded in segments; one per mount.
#[derive(Debug)]
pub struct SegmentPolicy {
    size: u64,
    open_direct: Option<OpenDirect>,
    /// The probe's verdict and how many probes were tried.
    verdict: tokio::sync::Mutex<(Option<bool>, u32)>,
    /// A probe was started ahead of need (see [`SegmentPolicy::probe_ahead`]).
    probed_ahead: std::sync::atomic::AtomicBool,
}

impl SegmentPolicy {
    /// Segments of `size` bytes; 0 turns segmented uploads off.
    pub fn new(size: u64) -> Self {
        SegmentPolicy {
            size,
            open_direct: None,
            verdict: tokio::sync::Mutex::new((None, 0)),
            probed_ahead: false.into(),
        }
    }

    /// Whether a streaming upload should start the probe ahead of the switch (once a mount).
    pub fn wants_probe_ahead(&self) -> bool {
        self.size > 0 && !self.probed_ahead.load(Ordering::Relaxed)
    }

    /// Starts the probe in the background, once a mount, when a streaming upload is a quarter
    /// of the way to the switch: its round trips (about eight) are then over when the switch
    /// comes, instead of stalling the writer there. Must run on the runtime.
    pub fn probe_ahead(self: &Arc<Self>, client: &DavClient, dir: &DavPath) {
        if !self.wants_probe_ahead() || self.probed_ahead.swap(true, Ordering::SeqCst) {
            return;
        }
        let (policy, client, dir) = (self.clone(), client.clone(), dir.clone());
        tokio::spawn(async move {
            policy.usable(&client, &dir).await;
        });
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Journals of segmented uploads are written with `open` (see `vfs::write`).
    pub fn with_open_direct(mut self, open: Option<OpenDirect>) -> Self {
        self.open_direct = open;
        self
    }

    pub fn open_direct(&self) -> Option<OpenDirect> {
        self.open_direct
    }

    /// Whether this server takes segmented uploads, decided once by a probe in `dir`: a PUT,
    /// a PUT with `Content-Range` after its end, a GET that must return both pieces in place
    /// (a server that ignores `Content-Range` replaces the file with the piece), and a MOVE.
    /// The probe's files are deleted again.
    pub async fn usable(&self, client: &DavClient, dir: &DavPath) -> bool {
        if self.size == 0 {
            return false;
        }
        let mut g = self.verdict.lock().await;
        if let Some(v) = g.0 {
            return v;
        }
        if g.1 >= 3 {
            return false;
        }
        g.1 += 1;
        let verdict = probe(client, dir).await;
        match verdict {
            Some(v) => {
                tracing::info!(
                    "large files are uploaded {}",
                    if v {
                        "in resumable segments"
                    } else {
                        "in one request (the server does not take partial PUTs)"
                    }
                );
                g.0 = Some(v);
                v
            }
            None => false,
        }
    }
}

/// `Some(verdict)`, or `None` when the probe could not decide (try again later).
async fn probe(client: &DavClient, dir: &DavPath) -> Option<bool> {
    crate::dav::probe::partial_put(client, dir, &temp_name(), &temp_name())
        .await
        .usable()
}

fn temp_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{PART_PREFIX}{}-{nanos:08x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The temporary names this process uses now: uploads in segments and deleted files still
/// read (`Vfs::hide_from_readers`). Any other `.davdrive-part-*` file is someone else's
/// upload in progress, or abandoned (see [`abandoned`]).
static IN_USE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<DavPath>>> =
    std::sync::LazyLock::new(Default::default);

fn in_use() -> std::sync::MutexGuard<'static, std::collections::HashSet<DavPath>> {
    IN_USE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A hidden temporary name in `target`'s directory, in use until [`temp_done`].
pub fn temp_for(target: &DavPath) -> VfsResult<DavPath> {
    let dir = target
        .parent()
        .ok_or_else(|| VfsError::new(ErrorKind::Io, "no directory to upload into"))?;
    let temp = dir.join(&temp_name())?;
    in_use().insert(temp.clone());
    Ok(temp)
}

/// `temp` (from [`temp_for`]) is no longer used: moved in place or deleted.
pub fn temp_done(temp: &DavPath) {
    in_use().remove(temp);
}

/// How long a temporary file nobody here uses must have stood unchanged before it is taken
/// for abandoned (a davdrive that died mid-upload): an upload in progress rewrites its
/// temporary file with every segment, and a 16 MiB segment takes under an hour above 40
/// kbit/s.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Whether the temporary file `temp`, last modified at `modified`, is abandoned: not used by
/// this process, and unchanged for [`ABANDONED_AFTER`].
pub fn abandoned(temp: &DavPath, modified: Option<std::time::SystemTime>) -> bool {
    !in_use().contains(temp)
        && modified
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= ABANDONED_AFTER)
}

/// The last segments of a segmented upload, kept in a small file of their own for the
/// [`Follower`] to send from, while the journal (the whole file, for retries and recovery) is
/// written around the page cache (`O_DIRECT`, see `vfs::write`).
///
/// Each segment sits in a slot (a region one segment long), and the slot of a segment the
/// server acknowledged goes to a later one. The ring is rewritten in place, in pages the OS
/// already holds: on the 2-core machine we measure on, filling newly allocated page-cache
/// pages with a journal of the whole file cost as much CPU as the rest of the upload
/// (docs/PERFORMANCE.md). A segment without a slot (the ring is full because the server is
/// slow or failing, or it was written before the ring began) is sent from the journal.
#[derive(Debug)]
pub struct Ring {
    pub file: Arc<std::fs::File>,
    seg: u64,
    slots: std::sync::Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    /// Segment index -> slot index.
    map: HashMap<u64, u64>,
    free: Vec<u64>,
    next: u64,
    /// Segments below this never get a slot (they were written before the ring began).
    from: u64,
    /// Segments below this were acknowledged and gave up their slots.
    released: u64,
    /// A write into the ring failed: it holds no segment.
    broken: bool,
}

impl Ring {
    /// Slots in a ring: the segment being sent, the two the writer may be ahead, and the one
    /// being written.
    pub const SLOTS: u64 = 4;

    /// A ring in `file` for the segments of `seg` bytes after the first `written` bytes.
    pub fn new(file: std::fs::File, seg: u64, written: u64) -> Self {
        let seg = seg.max(1);
        Ring {
            file: Arc::new(file),
            seg,
            slots: std::sync::Mutex::new(Slots {
                from: written.div_ceil(seg),
                ..Slots::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes from `off` to the end of its segment.
    pub fn room(&self, off: u64) -> u64 {
        self.seg - off % self.seg
    }

    /// After a failed write into the ring: nothing is sent from it any more.
    pub fn break_down(&self) {
        let mut s = self.lock();
        s.broken = true;
        s.map.clear();
    }

    /// Where in the ring to write the byte at `off`, and how many bytes fit from there to the
    /// end of its segment. A segment gets its slot at its first byte (a free one, or a new
    /// one while there are fewer than [`Ring::SLOTS`]); `None`: the segment has no slot.
    pub fn place(&self, off: u64) -> Option<(u64, u64)> {
        let k = off / self.seg;
        let within = off % self.seg;
        let mut s = self.lock();
        let slot = match s.map.get(&k) {
            Some(&slot) => slot,
            // Only from a segment's first byte: a slot holds whole segments.
            None if s.broken || k < s.from || k < s.released || within != 0 => return None,
            None => {
                let slot = match s.free.pop() {
                    Some(slot) => slot,
                    None if s.next < Self::SLOTS => {
                        s.next += 1;
                        s.next - 1
                    }
                    None => return None,
                };
                s.map.insert(k, slot);
                slot
            }
        };
        Some((slot * self.seg + within, self.seg - within))
    }

    /// Where the ring holds `[start, end)` in one piece, if it does.
    pub fn locate(&self, start: u64, end: u64) -> Option<u64> {
        let within = start % self.seg;
        if end - start > self.seg - within {
            return None;
        }
        let slot = *self.lock().map.get(&(start / self.seg))?;
        Some(slot * self.seg + within)
    }

    /// Frees the slots of the whole segments below `acked`: the server holds them.
    pub fn release_below(&self, acked: u64) {
        let upto = acked / self.seg;
        let mut s = self.lock();
        while s.released < upto {
            let k = s.released;
            if let Some(slot) = s.map.remove(&k) {
                s.free.push(slot);
            }
            s.released += 1;
        }
    }
}

/// The local copy an upload is sent from: the journal or spool file, and the ring of a
/// segmented upload's last segments, if it has one.
#[derive(Debug, Clone)]
pub struct Local {
    pub path: PathBuf,
    pub ring: Option<Arc<Ring>>,
    /// Counts what the requests take (`davdrive status`).
    pub progress: super::Progress,
}

impl Local {
    pub fn file(path: PathBuf) -> Self {
        Local {
            path,
            ring: None,
            progress: super::Progress::default(),
        }
    }

    /// This file, its uploads counted in `progress`.
    pub fn counted(mut self, progress: &super::Progress) -> Self {
        self.progress = progress.clone();
        self
    }

    /// `[start, end)` as the chunks of a request body.
    fn stream(
        &self,
        start: u64,
        end: u64,
    ) -> std::io::Result<
        impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    > {
        if let Some(r) = &self.ring
            && let Some(at) = r.locate(start, end)
        {
            return Ok(futures_util::future::Either::Left(
                self.progress
                    .counted(file_stream(r.file.clone(), at, end - start), start),
            ));
        }
        let file = std::fs::File::open(&self.path)?;
        Ok(futures_util::future::Either::Right(self.progress.counted(
            file_stream(Arc::new(file), start, end - start),
            start,
        )))
    }
}

/// How far an upload to a temporary name got; kept across failed attempts so that the next
/// one resumes.
#[derive(Debug, Clone)]
pub struct Resume {
    pub temp: DavPath,
    /// Bytes `[0, acked)` are on the server.
    pub acked: u64,
    /// The end of the furthest segment ever sent (a failed one may have left bytes up to
    /// there): a file that became shorter must start again from 0.
    pub extent: u64,
    /// A MOVE into place was sent: if its answer was lost, it may have happened.
    pub moving: bool,
    /// The follower had every byte up to `acked` acknowledged, in order, just now, and
    /// nothing changed since: the MOVE may follow without looking at the temporary file
    /// first (two round trips less at every close of a large file).
    pub verified: bool,
}

impl Resume {
    pub fn new(temp: DavPath) -> Self {
        Resume {
            temp,
            acked: 0,
            extent: 0,
            moving: false,
            verified: false,
        }
    }

    /// Bytes from `offset` on changed: they must be sent again.
    pub fn changed_from(&mut self, offset: u64) {
        self.acked = self.acked.min(offset);
        // A MOVE whose answer was lost carried other bytes: it proves nothing any more.
        self.moving = false;
        self.verified = false;
    }
}

/// Whether a failure may be retried.
pub fn transient(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Io | ErrorKind::Unreachable | ErrorKind::TimedOut | ErrorKind::Busy
    )
}

/// Sends `[start, end)` of the file at `local` as one request: a plain PUT (which also
/// empties the temporary file) from 0, a partial PUT after that.
async fn send_segment(
    client: &DavClient,
    local: &Local,
    temp: &DavPath,
    start: u64,
    end: u64,
) -> VfsResult<()> {
    let len = end - start;
    // A server that stops taking the body, or does not answer after it, is given up after
    // the client's progress timeout (`--timeout`); a slow one that keeps going is not.
    let body = local
        .stream(start, end)
        .map_err(|e| VfsError::new(ErrorKind::Io, format!("cannot read the local copy: {e}")))?;
    let body = Box::new(body);
    if start == 0 {
        let pre = Preconditions::default();
        let body = PutBody::Stream {
            stream: body,
            len: Some(len),
        };
        client.put(temp, body, &pre).await?;
    } else {
        client.put_range(temp, start, len, body).await?;
    }
    Ok(())
}

/// Sends `[resume.acked, end)` in segments of `seg` bytes, each retried on its own after a
/// transient failure. Before a retry, a temporary file that lost bytes (the server was
/// restarted without them, or someone deleted it) makes the upload start again from 0.
pub async fn send_range(
    client: &DavClient,
    local: &Local,
    resume: &mut Resume,
    end: u64,
    seg: u64,
    retries: u32,
    report: &(dyn Fn(Progress) + Send + Sync),
) -> VfsResult<()> {
    let seg = seg.max(1);
    let mut failures = 0u32;
    let mut failing_since = None;
    while resume.acked < end {
        let start = resume.acked;
        let stop = end.min(start + seg);
        resume.extent = resume.extent.max(stop);
        match send_segment(client, local, &resume.temp, start, stop).await {
            Ok(()) => {
                tracing::debug!(temp = %resume.temp, start, stop, "segment stored");
                failures = 0;
                failing_since = None;
                resume.acked = stop;
                report(Progress {
                    acked: stop,
                    failing: false,
                });
            }
            Err(e)
                if transient(e.kind)
                    && failures < retries
                    && failing_since
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed()
                        < client.retry_budget() =>
            {
                report(Progress {
                    acked: start,
                    failing: true,
                });
                let pause = FIRST_PAUSE * 2u32.pow(failures);
                failures += 1;
                tracing::info!(
                    temp = %resume.temp, start, "segment failed ({e}); again in {pause:?}"
                );
                tokio::time::sleep(pause).await;
                if start > 0 && lost_start(client, &resume.temp, start).await {
                    tracing::info!(temp = %resume.temp, "the server lost the upload's start; sending all of it again");
                    resume.acked = 0;
                    report(Progress {
                        acked: 0,
                        failing: true,
                    });
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether the server answers that the temporary file is gone or shorter than `start`
/// (an unreachable server says nothing: the upload resumes where it was).
pub async fn lost_start(client: &DavClient, temp: &DavPath, start: u64) -> bool {
    match client.head(temp).await {
        Ok(m) => m.content_length.is_some_and(|n| n < start),
        Err(e) => e.kind() == ErrorKind::NotFound,
    }
}

/// Puts the complete temporary file in place of `target` under `pre`, and
/// returns the new file's metadata. A 412 is a conflict, except when the target is still the
/// version we expected (some servers misread a tagged `If` on the destination): then the
/// MOVE is repeated without it.
pub async fn finish(
    client: &DavClient,
    resume: &mut Resume,
    target: &DavPath,
    pre: &Preconditions,
) -> VfsResult<ResponseMeta> {
    resume.moving = true;
    let mut moved = client.move_onto(&resume.temp, target, pre).await;
    if let Err(e) = &moved
        && e.precondition_failed()
        && let Some(want) = &pre.if_match
    {
        let now = client.head(target).await.ok().and_then(|m| m.etag);
        let strong = |t: &str| t.trim_start_matches("W/").to_owned();
        if now.as_deref().map(strong) == Some(strong(want)) {
            let plain = Preconditions {
                lock_token: pre.lock_token.clone(),
                ..Default::default()
            };
            moved = client.move_onto(&resume.temp, target, &plain).await;
        }
    }
    match moved {
        Ok(()) => temp_done(&resume.temp),
        Err(e) if e.precondition_failed() => {
            let _ = client
                .delete(&resume.temp, false, &Default::default())
                .await;
            temp_done(&resume.temp);
            return Err(VfsError::new(
                ErrorKind::Stale,
                format!("{target}: changed on the server meanwhile; not replaced ({e})"),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    // In place: whatever the HEAD says, the upload is done (without an entity tag, the next
    // overwrite goes without If-Match).
    Ok(client.head(target).await.unwrap_or_default())
}

/// Deletes a temporary upload that will not be finished (best effort, bounded).
pub async fn discard(client: &DavClient, resume: &Resume) {
    let none = Preconditions::default();
    let gone = tokio::time::timeout(
        Duration::from_secs(10),
        client.delete(&resume.temp, false, &none),
    )
    .await;
    if !matches!(gone, Ok(Ok(()))) {
        tracing::debug!(temp = %resume.temp, "could not delete a temporary upload");
    }
    temp_done(&resume.temp);
}

/// Uploads a streaming session's journal behind the writer: each segment once the journal
/// holds all of it, the last once the session says how long the file is.
pub struct Follower {
    /// Aborted when the follower is dropped without `complete` or `stop`.
    task: Option<JoinHandle<(Resume, VfsResult<()>)>>,
    seg: u64,
    /// The file's final size, once known (flush).
    end: watch::Sender<Option<u64>>,
    /// How the upload is doing.
    pub progress: watch::Receiver<Progress>,
    pub temp: DavPath,
}

impl Follower {
    /// Starts uploading `local` to `resume.temp` from `resume.acked`, as far as `written`
    /// (the journal's watermark) allows. Acknowledged segments give up their ring slots.
    pub fn start(
        client: DavClient,
        local: Local,
        resume: Resume,
        mut written: watch::Receiver<u64>,
        seg: u64,
    ) -> Self {
        let (end_tx, mut end_rx) = watch::channel(None::<u64>);
        let (ack_tx, ack_rx) = watch::channel(Progress {
            acked: resume.acked,
            failing: false,
        });
        let temp = resume.temp.clone();
        let task = tokio::spawn(async move {
            let mut resume = resume;
            let ring = local.ring.clone();
            let report = move |p: Progress| {
                if let (Some(r), false) = (&ring, p.failing) {
                    r.release_below(p.acked);
                }
                ack_tx.send_replace(p);
            };
            loop {
                let start = resume.acked;
                // Wait for a whole segment, or for the end of the file.
                let stop = loop {
                    let have = *written.borrow_and_update();
                    let end = *end_rx.borrow_and_update();
                    match end {
                        Some(e) if have >= e => break e,
                        _ if have >= start + seg => break start + seg,
                        _ => {}
                    }
                    tokio::select! {
                        r = written.changed() => if r.is_err() {
                            // The journal is gone: nothing more will arrive.
                            let e = VfsError::new(ErrorKind::Io, "the journal closed");
                            return (resume, Err(e));
                        },
                        r = end_rx.changed() => if r.is_err() {
                            let e = VfsError::new(ErrorKind::Io, "the session ended");
                            return (resume, Err(e));
                        },
                    }
                };
                if stop <= start {
                    return (resume, Ok(()));
                }
                if let Err(e) = send_range(
                    &client,
                    &local,
                    &mut resume,
                    stop,
                    seg,
                    SEGMENT_RETRIES,
                    &report,
                )
                .await
                {
                    tracing::debug!(temp = %resume.temp, acked = resume.acked, "segmented upload stops: {e}");
                    return (resume, Err(e));
                }
            }
        });
        Follower {
            task: Some(task),
            seg,
            end: end_tx,
            progress: ack_rx,
            temp,
        }
    }

    /// Whether the follower stopped (it failed: a follower ends on its own only then).
    pub fn stopped(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Tells the follower the file is `size` bytes and waits until all of it is sent (or the
    /// upload failed). Returns how far it got.
    pub async fn complete(mut self, size: u64) -> (Resume, VfsResult<()>) {
        self.end.send_replace(Some(size));
        let fallback = self.here();
        let Some(task) = self.task.take() else {
            return (
                fallback,
                Err(VfsError::new(ErrorKind::Io, "the upload task is gone")),
            );
        };
        match task.await {
            Ok(done) => done,
            Err(e) => (
                fallback,
                Err(VfsError::new(
                    ErrorKind::Io,
                    format!("the upload task ended: {e}"),
                )),
            ),
        }
    }

    /// Where the upload is, as far as the server acknowledged it. The segment in flight
    /// started at `acked`: it may have left bytes up to one segment past it, never further.
    fn here(&self) -> Resume {
        let acked = self.progress.borrow().acked;
        Resume {
            temp: self.temp.clone(),
            acked,
            extent: acked.saturating_add(self.seg),
            moving: false,
            verified: false,
        }
    }

    /// Stops the follower once the segment in flight is answered (waiting at most
    /// `STOP_WAIT`, then where it is). A segment request cut midway may still be written by
    /// the server after the temporary file's DELETE and leave it behind (found by the
    /// reference model: a write out of sequence, then the session's end). Returns how far it
    /// got (what the server holds).
    pub async fn stop_after_segment(mut self) -> Resume {
        // An end at 0 is below any segment: the follower stops before starting another.
        self.end.send_replace(Some(0));
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            match tokio::time::timeout(STOP_WAIT, task).await {
                Ok(Ok((resume, _))) => return resume,
                Ok(Err(_)) => {}
                Err(_) => abort.abort(),
            }
        }
        self.here()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Reads `len` bytes of `file` from `at` on, as the chunks of a request body: positioned
/// reads of 1 MiB on the blocking pool, each into the buffer that is sent (no intermediate
/// buffer). A file shorter than that is an error.
pub fn file_stream(
    file: Arc<std::fs::File>,
    at: u64,
    len: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    const CHUNK: u64 = 1 << 20;
    futures_util::stream::unfold(0u64, move |done| {
        let file = file.clone();
        async move {
            if done >= len {
                return None;
            }
            let n = (len - done).min(CHUNK) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                read_exact_at(&file, &mut buf, at + done)?;
                Ok(buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            Some(match read {
                Ok(buf) => (Ok(Bytes::from(buf)), done + n as u64),
                Err(e) => (Err(e), len),
            })
        }
    })
}

/// Fills `buf` from `off` on; a file that ends before is an error.
fn read_exact_at(f: &std::fs::File, buf: &mut [u8], off: u64) -> std::io::Result<()> {
    if crate::vfs::fileio::read_at(f, buf, off)? < buf.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the local copy is shorter than the upload",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(seg: u64, written: u64) -> Ring {
        Ring::new(tempfile::tempfile().expect("file"), seg, written)
    }

    #[test]
    fn ring_slots_hold_whole_segments_and_are_reused_once_acknowledged() {
        // Segments of 4 bytes; the first 3 bytes were written before the ring began.
        let r = ring(4, 3);
        assert_eq!(r.place(3), None, "segment 0 began before the ring");
        assert_eq!(r.place(4), Some((0, 4)));
        assert_eq!(r.place(5), Some((1, 3)), "the rest of a placed segment");
        assert_eq!(r.place(8), Some((4, 4)));
        assert_eq!(r.place(12), Some((8, 4)));
        assert_eq!(r.place(16), Some((12, 4)));
        assert_eq!(r.place(20), None, "all {} slots are taken", Ring::SLOTS);
        assert_eq!(r.place(21), None, "a segment never starts mid-way");
        assert_eq!(r.locate(4, 8), Some(0));
        assert_eq!(r.locate(5, 8), Some(1));
        assert_eq!(r.locate(4, 9), None, "a range across two segments");
        assert_eq!(r.locate(20, 24), None, "a segment without a slot");
        // Bytes [0, 9) acknowledged: segment 1 gives its slot up (segment 2 is not whole).
        r.release_below(9);
        assert_eq!(r.locate(4, 8), None);
        assert_eq!(r.locate(8, 12), Some(4));
        assert_eq!(r.place(4), None, "an acknowledged segment comes back");
        assert_eq!(r.place(24), Some((0, 4)), "the freed slot is reused");
        r.break_down();
        assert_eq!(r.locate(8, 12), None);
        assert_eq!(r.place(28), None);
    }

    #[tokio::test]
    async fn file_streams_read_exactly_the_range_or_fail() {
        use futures_util::StreamExt;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::tempfile().expect("file");
        std::io::Write::write_all(&mut f, &data).expect("write");
        let f = Arc::new(f);
        let mut got = Vec::new();
        let mut s = Box::pin(file_stream(f.clone(), 1000, 2_500_000));
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.expect("chunk"));
        }
        assert!(got == data[1000..2_501_000]);
        let mut short = Box::pin(file_stream(f, 2_999_000, 5000));
        let e = short
            .next()
            .await
            .expect("an item")
            .expect_err("past the end");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(
            short.next().await.is_none(),
            "the stream ends after an error"
        );
    }
}
