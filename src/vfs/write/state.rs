//! The state of a write session, owned by its lock (`WriteHandle::state`).
//!
//! # Modes
//!
//! How the session's bytes get to the server is one [`Mode`] at a time, each owning what
//! it needs; every change of mode is one of the transitions below, in this file only:
//!
//! ```text
//!                 start_streaming                 start_segments
//!   Spooling ─────────────────────▶ Streaming ─────────────────────▶ Segmented
//!      ▲  ▲                            │                                │
//!      │  └──────── take_stream ───────┘                                │
//!      └──────────────────────────── take_segmented ───────────────────┘
//!   Local (OS litter): never changes mode; nothing is uploaded.
//! ```
//!
//! - `Spooling` is where every session starts and returns: the local file (`State::file`)
//!   holds the data written, and a flush uploads it (a PUT with a length, or the rest of a
//!   segmented upload, `State::resume`).
//! - `Streaming`: a PUT is running; writes go to its body and to the journal (which is the
//!   local file).
//! - `Segmented`: a streaming session that outgrew one segment; a follower uploads it in
//!   segments from the journal, behind the writer.
//! - `Local`: a local-only file (`.DS_Store` and friends), never uploaded.
//!
//! A stream or segmented upload leaves its mode through `take_stream` / `take_segmented`
//! only, and the caller then ends it (completes it, abandons it, or stops it to resume at
//! flush): the mode never says "streaming" for an upload that no longer runs.
//!
//! Facts that hold in every mode stay fields of [`State`]: the size, whether the local file
//! is complete (the server's version fetched), whether there is data the server lacks
//! (`dirty`), the preconditions of the next upload, and a failure. A failure is not a mode:
//! the session keeps its data and its mode's cleanup duties after one (a later close reports
//! it, the data goes to the recovery folder), so `failed` sits beside the mode.

use super::*;

/// How the session's bytes get to the server (see the module doc for the transitions).
pub(super) enum Mode {
    /// The local file holds the data; a flush uploads it.
    Spooling,
    /// A PUT whose body is fed as the application writes.
    Streaming(Streaming),
    /// Segments uploaded behind the writer.
    Segmented(Segmented),
    /// A local-only file: the local file is its permanent home; nothing is uploaded.
    Local,
}

pub(super) struct State {
    pub(super) file: std::fs::File,
    pub(super) file_path: PathBuf,
    /// How bytes get to the server now; changed only by the transitions below.
    mode: Mode,
    /// Logical size of the file as written so far.
    pub(super) size: u64,
    /// Whether `file` holds all of the file's bytes (false until the original is fetched).
    pub(super) complete: bool,
    /// Size of the server's version, fetched into the spool when needed.
    pub(super) original_size: u64,
    pub(super) dirty: bool,
    pub(super) pre: Preconditions,
    /// The server's version this session replaces, as `pre` said when it began (kept with
    /// the data should it go to recovery; see `vfs::recovery`).
    pub(super) base: crate::vfs::recovery::Base,
    /// A failure that makes further writes pointless (403, 507, 413, 412, disk full).
    pub(super) failed: Option<VfsError>,
    /// Where a copy of the data was kept after a failed flush, and whether the data changed
    /// since that copy was made.
    pub(super) recovered: Option<PathBuf>,
    pub(super) changed_since_recovery: bool,
    /// A flush with nothing written ended the streaming upload (see `flush`): the next write
    /// from offset 0 starts a new one.
    pub(super) restream: bool,
    /// An upload to a temporary name that has not finished: the next attempt resumes it.
    pub(super) resume: Option<Resume>,
    /// Whether a streaming session may still switch to segments.
    pub(super) may_segment: bool,
    /// When the last round of segment retries failed.
    pub(super) failed_round: Option<std::time::Instant>,
    /// `pre` names a part of our own upload the server kept (see `adopt_partial`).
    pub(super) adopted: bool,
    /// How far the running upload got (for `davdrive status`).
    pub(super) progress: super::Progress,
    /// The session ended with everything uploaded: its journal is reused when it goes.
    pub(super) recycle: Option<crate::vfs::cache_dir::Recycler>,
}

impl Drop for State {
    /// A journal is emptied by the journal thread, after whatever was queued for it before
    /// (writes of this session, which must not land in the journal's next use). When that
    /// cannot be queued (the queue is full: the kept copies all go at once when the mount
    /// stops), it is emptied here: nothing of this session is queued any more, its last
    /// flush having waited for the journal. Deleting it instead made each mount create its
    /// journals again, two new files per uploaded file for the first hundred or so; the next
    /// mount takes the emptied ones as spares.
    fn drop(&mut self) {
        let Some(r) = self.recycle.take() else {
            return;
        };
        let path = self.file_path.clone();
        let (Ok(file), Ok(tx)) = (self.file.try_clone(), journal::journal_thread()) else {
            return;
        };
        let work: Box<dyn FnOnce() + Send> = Box::new(move || r.recycle(&file, &path));
        if let Err(e) = tx.try_send(journal::JournalItem::Run(work))
            && let journal::JournalItem::Run(work) = e.into_inner()
        {
            work();
        }
    }
}

/// The journal of a segmented streaming session and the task uploading behind it.
pub(super) struct Segmented {
    pub(super) journal: JournalWriter,
    pub(super) follower: Follower,
}

impl State {
    /// The local copy now holds the whole file (the parts not written were fetched, or
    /// need not be); its `.info` says so, for a recovery after a crash.
    pub(super) fn now_whole(&mut self) {
        if !self.complete {
            self.complete = true;
            super::super::cache_dir::CacheDir::mark_whole(&self.file_path, true);
        }
    }

    /// Replaces the preconditions of our next upload, keeping our lock token.
    pub(super) fn expect(&mut self, pre: Preconditions) {
        self.pre = Preconditions {
            lock_token: self.pre.lock_token.take(),
            ..pre
        };
    }

    /// A session of `size` bytes in `file`, nothing streaming, nothing written yet, the
    /// server's version not fetched (unless the caller says otherwise).
    pub(super) fn new(
        file: std::fs::File,
        file_path: PathBuf,
        size: u64,
        pre: Preconditions,
    ) -> Self {
        let base = crate::vfs::recovery::Base::of(&pre);
        State {
            base,
            file,
            file_path,
            mode: Mode::Spooling,
            size,
            complete: false,
            original_size: size,
            dirty: false,
            pre,
            failed: None,
            recovered: None,
            changed_since_recovery: false,
            restream: false,
            resume: None,
            may_segment: true,
            failed_round: None,
            adopted: false,
            progress: super::Progress::default(),
            recycle: None,
        }
    }
}

/// The transitions between modes, and what each mode lets others see.
impl State {
    /// A local-only session (see [`Mode::Local`]).
    pub(super) fn local(mut self) -> Self {
        self.mode = Mode::Local;
        self
    }

    pub(super) fn is_local(&self) -> bool {
        matches!(self.mode, Mode::Local)
    }

    /// Spooling → Streaming: a PUT now takes the writes.
    pub(super) fn start_streaming(&mut self, s: Streaming) {
        debug_assert!(
            matches!(self.mode, Mode::Spooling),
            "start_streaming from another mode"
        );
        if matches!(self.mode, Mode::Spooling) {
            self.mode = Mode::Streaming(s);
        }
    }

    /// Streaming → Segmented: the caller took the stream and completed it as the first
    /// segment; a follower uploads the rest.
    pub(super) fn start_segments(&mut self, g: Segmented) {
        debug_assert!(
            matches!(self.mode, Mode::Spooling),
            "start_segments without taking the stream"
        );
        if matches!(self.mode, Mode::Spooling) {
            self.mode = Mode::Segmented(g);
        }
    }

    /// Streaming → Spooling: hands the running PUT to the caller, who ends it.
    pub(super) fn take_stream(&mut self) -> Option<Streaming> {
        match std::mem::replace(&mut self.mode, Mode::Spooling) {
            Mode::Streaming(s) => Some(s),
            other => {
                self.mode = other;
                None
            }
        }
    }

    /// Segmented → Spooling: hands the follower to the caller, who completes or stops it.
    pub(super) fn take_segmented(&mut self) -> Option<Segmented> {
        match std::mem::replace(&mut self.mode, Mode::Spooling) {
            Mode::Segmented(g) => Some(g),
            other => {
                self.mode = other;
                None
            }
        }
    }

    /// The running PUT, in `Streaming`.
    pub(super) fn stream(&self) -> Option<&Streaming> {
        match &self.mode {
            Mode::Streaming(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn streaming(&self) -> bool {
        matches!(self.mode, Mode::Streaming(_))
    }

    /// The follower and its journal, in `Segmented`.
    pub(super) fn segmented(&self) -> Option<&Segmented> {
        match &self.mode {
            Mode::Segmented(g) => Some(g),
            _ => None,
        }
    }

    pub(super) fn segmented_mut(&mut self) -> Option<&mut Segmented> {
        match &mut self.mode {
            Mode::Segmented(g) => Some(g),
            _ => None,
        }
    }

    pub(super) fn is_segmented(&self) -> bool {
        matches!(self.mode, Mode::Segmented(_))
    }

    /// An upload is running (streaming or segmented).
    pub(super) fn uploading(&self) -> bool {
        matches!(self.mode, Mode::Streaming(_) | Mode::Segmented(_))
    }

    /// The journal of the running upload, if any.
    pub(super) fn journal(&self) -> Option<&JournalWriter> {
        match &self.mode {
            Mode::Streaming(s) => Some(&s.journal),
            Mode::Segmented(g) => Some(&g.journal),
            Mode::Spooling | Mode::Local => None,
        }
    }
}
