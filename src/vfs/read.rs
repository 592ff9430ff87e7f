//! Read streams: ranged GETs with an adaptive read-ahead window.
//!
//! A handle never downloads a whole file on open. Reads are served from one open GET whose
//! body is consumed as the application reads:
//!
//! - Sequential reads (each starting where the previous ended, or slightly ahead, as the
//!   kernel's asynchronous read-ahead delivers them out of order) continue the same response.
//!   When a ranged response is used up, the next range is requested with a window twice as
//!   large, up to `max_window`.
//! - A seek outside the retained bytes drops the response and starts a new range with the
//!   window reset to `min_window`, so random reads fetch small ranges.
//! - A few MiB behind the read position are retained so that reads arriving slightly out of
//!   order cost no request. Memory per handle is bounded by `keep_behind` plus one chunk.
//! - Versions are never mixed: every range after the first carries `If-Range` with the
//!   entity tag of the first response (and the size is checked against `Content-Range`);
//!   a server answering 200 to it means the file changed, and the read fails with `Stale`.
//!   The first response is checked against the version the listing described.
//! - Servers that ignore Range (Orthanc answers 200 with the whole body) are detected on the
//!   first response; sequential reads then use that one body for the whole pass, skipping
//!   forward as needed, and only a backward seek starts a new GET.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, Semaphore, mpsc};

use super::error::{VfsError, VfsResult};
use super::inode::Ino;
use crate::dav::multistatus::etags_match;
use crate::dav::{ByteRange, DavClient, DavError, DavPath, ErrorKind, GetStream};

/// Read-ahead settings.
#[derive(Debug, Clone)]
pub struct ReadTuning {
    /// First window, and the window after a seek. Default 1 MiB.
    pub min_window: u64,
    /// Largest window. Default 64 MiB.
    pub max_window: u64,
    /// Bytes retained behind the read position. Default 4 MiB.
    pub keep_behind: u64,
    /// A forward gap up to this size is read through rather than a new request. Default 1 MiB.
    pub max_skip: u64,
    /// Bytes of a response received ahead of the reader, within the requested window.
    /// Default 2 MiB (8 MiB was no faster and took the daemon's peak RSS during a 1 GiB read
    /// from about 32 to 45 MiB).
    pub ahead: u32,
}

impl Default for ReadTuning {
    fn default() -> Self {
        ReadTuning {
            min_window: 1 << 20,
            max_window: 64 << 20,
            keep_behind: 4 << 20,
            max_skip: 1 << 20,
            ahead: 2 << 20,
        }
    }
}

/// A response body received by a task of its own, up to `ahead` bytes before the reader, so
/// that receiving from the network overlaps with handing bytes to the application. Dropping
/// it stops the task (and so the response).
struct Prefetch {
    rx: mpsc::UnboundedReceiver<Result<Bytes, DavError>>,
    budget: Arc<Semaphore>,
    ahead: u32,
    task: tokio::task::JoinHandle<()>,
}

impl Prefetch {
    fn spawn(mut get: GetStream, ahead: u32) -> Self {
        let ahead = ahead.max(1);
        let budget = Arc::new(Semaphore::new(ahead as usize));
        let (tx, rx) = mpsc::unbounded_channel();
        let room = budget.clone();
        let task = tokio::spawn(async move {
            loop {
                let chunk = match get.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                match room.acquire_many(cost(&chunk, ahead)).await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
                if tx.send(Ok(chunk)).is_err() {
                    return;
                }
            }
        });
        Prefetch {
            rx,
            budget,
            ahead,
            task,
        }
    }

    /// The next chunk; `None` at the end of the body (or if the task died: the caller checks
    /// the length it got).
    async fn chunk(&mut self) -> Result<Option<Bytes>, DavError> {
        match self.rx.recv().await {
            Some(Ok(c)) => {
                self.budget.add_permits(cost(&c, self.ahead) as usize);
                Ok(Some(c))
            }
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

/// A chunk's share of the read-ahead budget (a chunk larger than the budget takes all of it).
fn cost(chunk: &Bytes, ahead: u32) -> u32 {
    u32::try_from(chunk.len()).unwrap_or(u32::MAX).min(ahead)
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Active {
    get: Prefetch,
    /// Offset of the next byte the response will yield.
    pos: u64,
    /// Exclusive end of what this response covers.
    end: u64,
}

struct State {
    active: Option<Active>,
    /// Retained bytes, contiguous, ending at `active.pos` (or at `buf_end` after it closed).
    buf: VecDeque<Bytes>,
    buf_start: u64,
    buf_end: u64,
    window: u64,
    /// The entity tag of the version this handle reads.
    etag: Option<String>,
    /// Learned from the first ranged response: does the server honour Range?
    ranges: Option<bool>,
    /// `Last-Modified` of the first response: the validator when there is no strong ETag.
    modified: Option<std::time::SystemTime>,
    /// Transfers resumed after a broken connection, for this handle.
    resumes: u32,
}

/// How often one open file may resume a broken transfer before reads fail.
const MAX_RESUMES: u32 = 8;

pub(super) struct ReadHandle {
    ino: Ino,
    path: DavPath,
    size: u64,
    tuning: ReadTuning,
    state: Mutex<State>,
}

impl ReadHandle {
    pub(super) fn new(
        ino: Ino,
        path: DavPath,
        size: u64,
        etag: Option<String>,
        tuning: ReadTuning,
    ) -> Self {
        ReadHandle {
            ino,
            path,
            size,
            state: Mutex::new(State {
                active: None,
                buf: VecDeque::new(),
                buf_start: 0,
                buf_end: 0,
                window: tuning.min_window,
                etag,
                ranges: None,
                modified: None,
                resumes: 0,
            }),
            tuning,
        }
    }

    pub(super) fn ino(&self) -> Ino {
        self.ino
    }

    fn stale(&self, why: &str) -> VfsError {
        VfsError::new(
            ErrorKind::Stale,
            format!("{}: changed on the server while reading ({why})", self.path),
        )
    }

    pub(super) async fn read(
        &self,
        client: &DavClient,
        offset: u64,
        size: u32,
    ) -> VfsResult<Bytes> {
        if offset >= self.size || size == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(size)).min(self.size);
        let mut st = self.state.lock().await;

        // Served entirely from retained bytes?
        if offset >= st.buf_start && end <= st.buf_end {
            return Ok(copy_range(&st, offset, end));
        }

        let sequential = offset >= st.buf_start && offset <= st.buf_end + self.tuning.max_skip;
        let can_continue = match &st.active {
            Some(a) => {
                a.pos <= st.buf_end
                    && offset >= st.buf_start
                    && (offset <= a.pos + self.tuning.max_skip || st.ranges == Some(false))
                    && offset < a.end
            }
            None => false,
        };
        if !can_continue {
            let (start, window) = if sequential && st.active.is_none() && st.buf_end > 0 {
                // The previous range was used up: continue at its end with a larger window.
                let grown = (st.window * 2).min(self.tuning.max_window);
                (st.buf_end, grown)
            } else if sequential && st.buf_end > 0 {
                (st.buf_end, st.window)
            } else {
                // A seek: start afresh with a small window.
                st.buf.clear();
                st.buf_start = offset;
                st.buf_end = offset;
                (offset, self.tuning.min_window)
            };
            st.window = window.max(end - start);
            let win = st.window;
            self.start_get(client, &mut st, start, win).await?;
        }

        // Pull from the response until `end` is retained.
        while st.buf_end < end {
            let need_new = match &st.active {
                Some(a) => a.pos >= a.end,
                None => true,
            };
            if need_new {
                let grown = (st.window * 2).min(self.tuning.max_window);
                st.window = grown.max(end - st.buf_end);
                let (from, win) = (st.buf_end, st.window);
                self.start_get(client, &mut st, from, win).await?;
            }
            let Some(active) = st.active.as_mut() else {
                return Err(VfsError::new(ErrorKind::Io, "no response to read from"));
            };
            let chunk = match active.get.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) if active.pos >= active.end => {
                    st.active = None;
                    continue;
                }
                // The connection broke or the body ended early: resume from the byte where it
                // stopped (the next request carries the version checks), a few times.
                broken => {
                    let why = match broken {
                        Err(e) => e.to_string(),
                        _ => "the server ended the body early".to_owned(),
                    };
                    st.active = None;
                    if st.resumes >= MAX_RESUMES {
                        return Err(VfsError::new(
                            ErrorKind::Io,
                            format!(
                                "{}: {why} (after {MAX_RESUMES} resumed transfers)",
                                self.path
                            ),
                        ));
                    }
                    st.resumes += 1;
                    tracing::debug!(path = %self.path, at = st.buf_end, "{why}; resuming");
                    let (from, win) = (st.buf_end, st.window);
                    self.start_get(client, &mut st, from, win).await?;
                    continue;
                }
            };
            let chunk = if active.pos + chunk.len() as u64 > active.end {
                chunk.slice(..(active.end - active.pos) as usize)
            } else {
                chunk
            };
            let chunk_start = active.pos;
            active.pos += chunk.len() as u64;
            let chunk_end = active.pos;
            // Bytes before `buf_end` (skipping forward on a 200 response) are dropped.
            let keep_from = st.buf_end.max(chunk_start);
            if keep_from < chunk_end {
                let piece = chunk.slice((keep_from - chunk_start) as usize..);
                if st.buf_end < keep_from {
                    st.buf.clear();
                    st.buf_start = keep_from;
                }
                st.buf_end = chunk_end;
                st.buf.push_back(piece);
            }
            trim(&mut st, self.tuning.keep_behind, offset);
        }
        if st.active.as_ref().is_some_and(|a| a.pos >= a.end) {
            st.active = None;
        }
        Ok(copy_range(&st, offset, end))
    }

    async fn start_get(
        &self,
        client: &DavClient,
        st: &mut State,
        start: u64,
        window: u64,
    ) -> VfsResult<()> {
        st.active = None;
        let want_end = (start + window).min(self.size);
        let first = st.ranges.is_none();
        let range = ByteRange {
            start,
            end: Some(want_end - 1),
        };
        // A range that covers the whole file asks nothing of Range support.
        let range = if start == 0 && want_end == self.size && first {
            None
        } else {
            Some(range)
        };
        // If-Range needs a strong validator: the entity tag, else a modification date old
        // enough for the server to trust it. Without one (Apache gives files changed in the
        // last second a weak tag), no If-Range is sent and every response is checked below
        // instead: entity tag, total size and date must all still agree.
        let old_enough = |m: std::time::SystemTime| {
            std::time::SystemTime::now()
                .duration_since(m)
                .is_ok_and(|d| d > std::time::Duration::from_secs(2))
        };
        let if_range = match (&st.etag, st.modified) {
            (Some(t), _) if !t.starts_with("W/") => Some(t.clone()),
            (_, Some(m)) if old_enough(m) => Some(httpdate::fmt_http_date(m)),
            _ => None,
        };
        tracing::trace!(path = %self.path, ?range, ?if_range, "ranged GET");
        let get = client
            .get(&self.path, range, if_range.as_deref())
            .await
            .map_err(VfsError::from)?;
        // Version checks against what we believe.
        if let (Some(ours), Some(theirs)) = (&st.etag, &get.meta.etag)
            && !etags_match(ours, theirs)
        {
            return Err(self.stale("entity tag differs"));
        }
        let (pos, end) = match get.range {
            Some(cr) => {
                if cr.total.is_some_and(|t| t != self.size) {
                    return Err(self.stale("size differs"));
                }
                let end = cr.end.checked_add(1).filter(|e| *e <= self.size);
                let Some(end) = end.filter(|_| cr.start == start) else {
                    return Err(VfsError::new(
                        ErrorKind::Protocol,
                        format!(
                            "{}: asked for bytes {start}-{}, got {}-{}",
                            self.path,
                            want_end - 1,
                            cr.start,
                            cr.end
                        ),
                    ));
                };
                st.ranges = Some(true);
                (cr.start, end)
            }
            None => {
                // Apache marks the ETag of a file modified in the last second as weak, and a
                // weak tag cannot satisfy If-Range: the answer is the whole entity. If tag
                // (weakly), size and date all agree, it is the same version: use it.
                let same_entity = matches!(
                    (&st.etag, &get.meta.etag),
                    (Some(a), Some(b)) if etags_match(a, b)
                ) && get.meta.content_length == Some(self.size)
                    && (st.modified.is_none() || st.modified == get.meta.last_modified);
                if range.is_some() && st.ranges == Some(true) && !same_entity {
                    // 200 to a request with If-Range: the entity changed.
                    return Err(self.stale("If-Range failed"));
                }
                if get.meta.content_length.is_some_and(|l| l != self.size) {
                    return Err(self.stale("size differs"));
                }
                if range.is_some() {
                    st.ranges = Some(false);
                }
                (0, self.size)
            }
        };
        match (st.modified, get.meta.last_modified) {
            (Some(ours), Some(theirs)) if ours != theirs => {
                return Err(self.stale("modification date differs"));
            }
            (None, Some(theirs)) => st.modified = Some(theirs),
            _ => {}
        }
        if st.etag.is_none() {
            st.etag = get.meta.etag.clone();
        }
        if pos > st.buf_end || pos < st.buf_start {
            st.buf.clear();
            st.buf_start = start;
            st.buf_end = start;
        }
        st.active = Some(Active {
            get: Prefetch::spawn(get, self.tuning.ahead),
            pos,
            end,
        });
        Ok(())
    }
}

/// Drops retained bytes more than `keep` behind `offset`.
fn trim(st: &mut State, keep: u64, offset: u64) {
    let floor = offset.saturating_sub(keep);
    while let Some(front) = st.buf.front() {
        let len = front.len() as u64;
        if st.buf_start + len <= floor {
            st.buf_start += len;
            st.buf.pop_front();
        } else {
            break;
        }
    }
}

fn copy_range(st: &State, start: u64, end: u64) -> Bytes {
    // Most reads fall inside one received chunk: hand out a slice of it, no copy.
    let mut pos = st.buf_start;
    for chunk in &st.buf {
        let c_end = pos + chunk.len() as u64;
        if pos <= start && end <= c_end {
            return chunk.slice((start - pos) as usize..(end - pos) as usize);
        }
        if c_end > start {
            break;
        }
        pos = c_end;
    }
    let mut out = BytesMut::with_capacity((end - start) as usize);
    let mut pos = st.buf_start;
    for chunk in &st.buf {
        let len = chunk.len() as u64;
        let (c_start, c_end) = (pos, pos + len);
        pos = c_end;
        if c_end <= start {
            continue;
        }
        if c_start >= end {
            break;
        }
        let from = start.max(c_start) - c_start;
        let to = end.min(c_end) - c_start;
        out.extend_from_slice(&chunk[from as usize..to as usize]);
    }
    out.freeze()
}
