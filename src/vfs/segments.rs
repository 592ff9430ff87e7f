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
//! [`Follower`] then uploads behind the writer, from the journal, as the journal fills.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::{VfsError, VfsResult};
use crate::dav::{DavClient, DavPath, ErrorKind, Preconditions, PutBody, ResponseMeta};

/// Names of temporary uploads start with this; listings of the mount hide them.
pub const PART_PREFIX: &str = ".davdrive-part-";

/// Retries of one segment after a transient failure, and the first pause between them
/// (doubled each time: 0.25 + 0.5 + 1 + 2 + 4 s). Retrying also stops once the client's
/// retry time (`--retry-time`, 30 s by default) is spent since the first failure.
pub const SEGMENT_RETRIES: u32 = 5;
const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// How a segmented upload is doing, for the writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes `[0, acked)` are on the server.
    pub acked: u64,
    /// The last request failed; the upload is pausing before it tries again.
    pub failing: bool,
}

/// Whether and how large files are uploaded in segments; one per mount.
#[derive(Debug)]
pub struct SegmentPolicy {
    size: u64,
    /// The probe's verdict and how many probes were tried.
    verdict: tokio::sync::Mutex<(Option<bool>, u32)>,
}

impl SegmentPolicy {
    /// Segments of `size` bytes; 0 turns segmented uploads off.
    pub fn new(size: u64) -> Self {
        SegmentPolicy {
            size,
            verdict: tokio::sync::Mutex::new((None, 0)),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
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
    let first = dir.join(&temp_name()).ok()?;
    let moved = dir.join(&temp_name()).ok()?;
    const A: &[u8] = b"davdrive segment probe, first piece\n";
    const B: &[u8] = b"davdrive segment probe, second piece\n";
    let none = Preconditions::default();
    client
        .put(&first, PutBody::Bytes(Bytes::from_static(A)), &none)
        .await
        .ok()?;
    let piece: Vec<Result<Bytes, std::io::Error>> = vec![Ok(Bytes::from_static(B))];
    let verdict = match client
        .put_range(
            &first,
            A.len() as u64,
            B.len() as u64,
            Box::new(futures_util::stream::iter(piece)),
        )
        .await
    {
        Err(e) if e.status().is_some() => Some(false),
        Err(_) => None,
        Ok(_) => match client.get_bytes(&first).await {
            Ok(got) if got.len() == A.len() + B.len() && got.starts_with(A) && got.ends_with(B) => {
                let create_only = Preconditions {
                    if_none_match_any: true,
                    ..Default::default()
                };
                match client.move_onto(&first, &moved, &create_only).await {
                    Ok(()) => Some(true),
                    Err(e) if e.status().is_some() => Some(false),
                    Err(_) => None,
                }
            }
            Ok(_) => Some(false),
            // Gone at once (a drop box that ingests files) or refused: not for segments.
            Err(e) if e.status().is_some() => Some(false),
            Err(_) => None,
        },
    };
    for p in [&first, &moved] {
        let _ = client.delete(p, false, &none).await;
    }
    verdict
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

/// A hidden temporary name in `target`'s directory.
pub fn temp_for(target: &DavPath) -> VfsResult<DavPath> {
    let dir = target
        .parent()
        .ok_or_else(|| VfsError::new(ErrorKind::Io, "no directory to upload into"))?;
    Ok(dir.join(&temp_name())?)
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
}

impl Resume {
    pub fn new(temp: DavPath) -> Self {
        Resume {
            temp,
            acked: 0,
            extent: 0,
            moving: false,
        }
    }

    /// Bytes from `offset` on changed: they must be sent again.
    pub fn changed_from(&mut self, offset: u64) {
        self.acked = self.acked.min(offset);
        // A MOVE whose answer was lost carried other bytes: it proves nothing any more.
        self.moving = false;
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
    local: &Path,
    temp: &DavPath,
    start: u64,
    end: u64,
) -> VfsResult<()> {
    use tokio::io::AsyncSeekExt;
    let local_err = |e: std::io::Error| {
        VfsError::new(ErrorKind::Io, format!("cannot read the local copy: {e}"))
    };
    let mut file = tokio::fs::File::open(local).await.map_err(local_err)?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(local_err)?;
    let len = end - start;
    // A server that stops taking the body, or does not answer after it, is given up after
    // the client's progress timeout (`--timeout`); a slow one that keeps going is not.
    let body = Box::new(read_stream(tokio::io::AsyncReadExt::take(file, len)));
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
    local: &Path,
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
        && e.status() == Some(412)
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
        Ok(()) => {}
        Err(e) if e.status() == Some(412) => {
            let _ = client
                .delete(&resume.temp, false, &Default::default())
                .await;
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
    /// (the journal's watermark) allows.
    pub fn start(
        client: DavClient,
        local: PathBuf,
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
            let report = move |p: Progress| {
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
        }
    }

    /// Stops the follower where it is. Returns how far it got (what the server holds).
    pub fn stop(mut self) -> Resume {
        if let Some(t) = self.task.take() {
            t.abort();
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

/// Reads an AsyncRead as a stream of chunks (256 KiB), for PUT bodies from disk.
pub fn read_stream<R>(
    reader: R,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    futures_util::stream::unfold(reader, |mut r| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), r))
            }
            Err(e) => Some((Err(e), r)),
        }
    })
}
