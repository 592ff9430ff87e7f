//! Open directories: the entries of a listing, handed out while it downloads.
//!
//! A cold `opendir` starts the directory's PROPFIND and returns as soon as the server has
//! answered with the first resource (so 404, 403 and "not a directory" still fail the open).
//! Each entry is appended here the moment its `<response>` element is parsed; `readdir`
//! waits only for entries beyond the caller's offset. `ls -l` of 10,000 files thus formats
//! and stats the first entries while the rest of the listing is still on the wire, instead
//! of waiting for all of it.
//!
//! Readers are woken in batches (`BATCH` entries, or whatever has arrived after
//! `BATCH_PATIENCE`), so a fast listing costs a few large replies rather than one per
//! entry, and a slow server still shows its first entries at once.
//!
//! A handle is a snapshot in the POSIX sense: entries created or removed while it is open
//! may or may not appear. A listing that fails part-way hands out what it had, then the
//! error.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::DirEntry;
use super::error::VfsResult;

/// Entries a waiting reader wants before it is woken.
const BATCH: usize = 256;
/// How long a reader that already has some entries waits for a full batch.
const BATCH_PATIENCE: Duration = Duration::from_millis(5);

#[derive(Default)]
struct State {
    entries: Vec<DirEntry>,
    /// Names handed out by an earlier attempt of the listing: not repeated.
    seen: Option<HashSet<String>>,
    /// The server answered (first resource) or the listing ended.
    started: bool,
    done: Option<VfsResult<()>>,
    /// The entry count a waiting reader needs; `usize::MAX` when nobody waits.
    want: usize,
}

/// The entries of one open directory, complete or still arriving.
pub(super) struct DirStream {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

impl DirStream {
    /// A listing still to come.
    pub(super) fn new() -> Self {
        DirStream {
            state: Mutex::new(State {
                want: usize::MAX,
                ..State::default()
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// A listing known in full (from the cache).
    pub(super) fn complete(entries: Vec<DirEntry>) -> Self {
        DirStream {
            state: Mutex::new(State {
                entries,
                started: true,
                done: Some(Ok(())),
                want: usize::MAX,
                seen: None,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server is answering: `opendir` can return.
    pub(super) fn start(&self) {
        let mut st = self.state();
        if !st.started {
            st.started = true;
            drop(st);
            self.changed.notify_waiters();
        }
    }

    pub(super) fn push(&self, e: DirEntry) {
        let mut st = self.state();
        if st.seen.as_ref().is_some_and(|s| s.contains(&e.name)) {
            return;
        }
        st.entries.push(e);
        let wake = !st.started || st.entries.len() >= st.want;
        st.started = true;
        if wake {
            st.want = usize::MAX;
            drop(st);
            self.changed.notify_waiters();
        }
    }

    /// The listing is fetched again (the directory changed meanwhile): names already handed
    /// out are not repeated.
    pub(super) fn fetching_again(&self) {
        let mut st = self.state();
        let names = st.entries.iter().map(|e| e.name.clone()).collect();
        st.seen = Some(names);
    }

    pub(super) fn finish(&self, result: VfsResult<()>) {
        let mut st = self.state();
        if st.done.is_none() {
            st.done = Some(result);
        }
        st.started = true;
        drop(st);
        self.changed.notify_waiters();
    }

    /// Waits until the server answered; the listing's error if it failed before that.
    pub(super) async fn started(&self) -> VfsResult<()> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.state();
                match &st.done {
                    Some(Err(e)) if st.entries.is_empty() => return Err(e.clone()),
                    Some(_) => return Ok(()),
                    None if st.started => return Ok(()),
                    None => {}
                }
            }
            notified.await;
        }
    }

    /// Up to `max` entries from index `from`, waiting for them while the listing downloads.
    /// Empty at the end of the directory; the listing's error once the entries before it
    /// were handed out.
    pub(super) async fn entries(&self, from: usize, max: usize) -> VfsResult<Vec<DirEntry>> {
        let mut patient = true;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let waiting_for_batch = {
                let mut st = self.state();
                let avail = st.entries.len().saturating_sub(from);
                let ready = st.done.is_some() || avail >= BATCH || (avail > 0 && !patient);
                if ready {
                    if avail == 0
                        && let Some(Err(e)) = &st.done
                    {
                        return Err(e.clone());
                    }
                    let end = from + avail.min(max);
                    return Ok(st.entries.get(from..end).unwrap_or_default().to_vec());
                }
                let want = if avail > 0 { from + BATCH } else { from + 1 };
                st.want = st.want.min(want);
                avail > 0
            };
            if waiting_for_batch {
                if tokio::time::timeout(BATCH_PATIENCE, notified)
                    .await
                    .is_err()
                {
                    patient = false;
                }
            } else {
                notified.await;
            }
        }
    }
}

/// Ends a listing with an error when dropped, unless it ended before (a listing task that
/// panicked or was cancelled must not leave `opendir`/`readdir` waiting forever).
pub(super) struct EndGuard(pub(super) std::sync::Arc<DirStream>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.finish(Err(super::error::VfsError::new(
            super::ErrorKind::Io,
            "the directory listing stopped",
        )));
    }
}

impl std::fmt::Debug for DirStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state();
        f.debug_struct("DirStream")
            .field("entries", &st.entries.len())
            .field("done", &st.done.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::{Attr, FileKind, VfsError};
    use std::sync::Arc;
    use std::time::SystemTime;

    fn entry(i: usize) -> DirEntry {
        DirEntry {
            name: format!("f{i}"),
            attr: Attr {
                ino: i as u64 + 2,
                kind: FileKind::File,
                size: 0,
                mtime: SystemTime::UNIX_EPOCH,
                ctime: SystemTime::UNIX_EPOCH,
                crtime: SystemTime::UNIX_EPOCH,
                perm: 0o644,
                uid: 0,
                gid: 0,
            },
        }
    }

    #[tokio::test]
    async fn readers_get_entries_while_the_listing_arrives_then_the_end() {
        let s = Arc::new(DirStream::new());
        let reader = {
            let s = s.clone();
            tokio::spawn(async move {
                s.started().await?;
                let mut got = Vec::new();
                loop {
                    let batch = s.entries(got.len(), 1000).await?;
                    if batch.is_empty() {
                        return Ok::<_, VfsError>(got);
                    }
                    got.extend(batch.into_iter().map(|e| e.name));
                }
            })
        };
        for i in 0..600 {
            s.push(entry(i));
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        // A partial batch is handed out after the patience, not held back.
        tokio::time::sleep(BATCH_PATIENCE * 2).await;
        s.push(entry(600));
        s.finish(Ok(()));
        let got = reader.await.expect("join").expect("entries");
        let want: Vec<String> = (0..=600).map(|i| format!("f{i}")).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn an_error_comes_after_the_entries_already_listed() {
        let s = DirStream::new();
        s.push(entry(0));
        s.finish(Err(VfsError::new(crate::vfs::ErrorKind::Io, "cut")));
        assert!(s.started().await.is_ok());
        assert_eq!(s.entries(0, 10).await.expect("first").len(), 1);
        let e = s.entries(1, 10).await.expect_err("then the error");
        assert_eq!(e.kind, crate::vfs::ErrorKind::Io);
        let failed = DirStream::new();
        failed.finish(Err(VfsError::not_found("d")));
        assert!(
            failed.started().await.is_err(),
            "nothing listed: open fails"
        );
    }

    #[tokio::test]
    async fn a_second_attempt_does_not_repeat_names() {
        let s = DirStream::new();
        s.push(entry(0));
        s.push(entry(1));
        s.fetching_again();
        s.push(entry(1));
        s.push(entry(2));
        s.finish(Ok(()));
        let names: Vec<String> = s
            .entries(0, 10)
            .await
            .expect("entries")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["f0", "f1", "f2"]);
    }
}
