//! Who writes through a session: callers as the kernel names them, so that a child closing
//! an inherited descriptor does not end its parent's upload.

/// Who calls, as far as the kernel says: the lock owner (Linux: one per file-descriptor
/// table, so the same for every thread of a process and different in a forked child) where
/// the request carries one, and the calling thread's id (0: unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caller {
    pub owner: Option<u64>,
    pub pid: u32,
}

/// The process (thread group) a thread id belongs to, `None` when it cannot tell; the
/// platform layer knows how (Linux: `/proc`).
pub type ProcessOf = fn(u32) -> Option<u32>;

/// The callers that wrote through a handle since its data was last uploaded. Kept under the
/// session lock's order: recorded once a write holds the session, cleared by a flush that
/// holds it, so that a write waiting behind a flush is never forgotten.
#[derive(Debug, Default)]
pub(super) struct Writers {
    /// Lock owners of writes that carried one (writes bypassing the page cache).
    pub(super) owners: Vec<u64>,
    /// Processes of writes through the page cache (no lock owner), resolved when they wrote.
    pub(super) procs: Vec<u32>,
    /// The last thread resolved, and its process.
    pub(super) last: Option<(u32, u32)>,
    /// A change from a caller that cannot be told apart (a write with no lock owner whose
    /// process is unknown, a truncation, too many writers): every close uploads.
    pub(super) unknown: bool,
}

impl Writers {
    /// Enough to tell a program from the children it starts; more means a crowd.
    pub(super) const MAX: usize = 8;

    pub(super) fn note(&mut self, c: Caller, process_of: Option<ProcessOf>) {
        match c.owner {
            Some(o) => {
                if !self.owners.contains(&o) {
                    self.owners.push(o);
                }
            }
            None => {
                let proc = match self.last {
                    Some((tid, p)) if tid == c.pid && c.pid != 0 => Some(p),
                    _ if c.pid == 0 => None,
                    _ => process_of.and_then(|f| f(c.pid)),
                };
                match proc {
                    Some(p) => {
                        self.last = Some((c.pid, p));
                        if !self.procs.contains(&p) {
                            self.procs.push(p);
                        }
                    }
                    None => self.unknown = true,
                }
            }
        }
        if self.owners.len() > Self::MAX || self.procs.len() > Self::MAX {
            self.unknown = true;
        }
    }

    /// Whether `c` is provably none of the writers (and so its close need not upload).
    pub(super) fn foreign(&self, c: Caller, process_of: Option<ProcessOf>) -> bool {
        if self.unknown || (self.owners.is_empty() && self.procs.is_empty()) || c.pid == 0 {
            return false;
        }
        if c.owner.is_some_and(|o| self.owners.contains(&o)) {
            return false;
        }
        if !self.procs.is_empty() {
            match process_of.and_then(|f| f(c.pid)) {
                Some(p) if !self.procs.contains(&p) => {}
                _ => return false,
            }
        }
        true
    }
}
