//! The core's lock order, written once and checked in debug builds.
//!
//! # Concurrency
//!
//! Two kinds of locks live in the core:
//!
//! - **Async locks** (`tokio::sync::Mutex`), held across requests to the server:
//!   1. a directory's listing lock (`Vfs::listing_lock`: one PROPFIND per directory at a time),
//!   2. a write session's state (`WriteHandle::state`: one upload step at a time),
//!   3. a read handle's state (`ReadHandle::state`: one read at a time),
//!   4. the probes' verdicts (`Vfs::stream_ok`, `SegmentPolicy::verdict`).
//!
//!   A task holds at most one of them at a time, except a listing lock and then (in a
//!   nested call) nothing but ranked locks below. No ranked lock is ever held while one of
//!   them is awaited: [`before_await`] checks that in debug builds.
//! - **Ranked locks** ([`Ranked`], a `std::sync::Mutex` with a [`Rank`]), held for a few
//!   instructions and never across an await. A thread takes them in increasing rank only:
//!   holding the inode table it may take the open handles, never the other way round.
//!   In debug builds (every test), taking one out of order panics with both ranks, so a
//!   test that reaches the wrong order fails where it happens, not in a rare deadlock.
//!
//! The order, lowest first, is the order of [`Rank`]'s variants.
//!
//! A poisoned lock (a panic while it was held) is taken anyway: every structure behind
//! these locks is updated in single steps that a panic cannot leave half-done in a way
//! that matters more than stopping every later operation would.

// Clippy 1.96 (the Windows cross-check's) asks for `const` on a thread-local that has it.
#![allow(clippy::missing_const_for_thread_local)]

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

/// Where a ranked lock stands in the order: a thread holding a lock of some rank takes only
/// locks of a higher rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// The map of per-directory listing locks (`Vfs::listing_locks`).
    ListingLocks,
    /// The inode table (`Vfs::table`): paths, metadata, listings, kernel references.
    Table,
    /// Open files (`Vfs::handles`).
    Handles,
    /// Open directories (`Vfs::dir_handles`).
    DirHandles,
    /// Handles opened by path and the nodes they hold (`Vfs::path_refs`).
    PathRefs,
    /// Deleted files still read, at their hidden names (`Vfs::hidden`).
    Hidden,
    /// Directories known to refuse or accept writes (`Vfs::forbidden`, `Vfs::writable`).
    WriteVerdicts,
    /// The server's last quota (`Vfs::quota`).
    Quota,
    /// Uploads going on after their close (`Vfs::transfers`, see `activity`).
    Transfers,
    /// Server locks held for write sessions (`Vfs::held_locks`, see `locks`).
    ServerLocks,
    /// Local copies of files just written (`Vfs::copies`, see `copies`).
    Copies,
    /// Bytes of files read, kept on disk (`Vfs::stored_reads`, see `data_cache`).
    StoredReads,
    /// Inside one handle: where it points (`ReadHandle::path`, `WriteHandle::target`) and who
    /// wrote through it (`WriteHandle::writers`).
    HandleInner,
    /// A journal's first failure (`JournalFile::error`): the journal's thread holds it while
    /// it writes, so that a failure and the write that found it are one step.
    JournalError,
    /// A journal's direct-I/O writer (`JournalFile::direct`).
    Journal,
}

#[cfg(debug_assertions)]
thread_local! {
    static HELD: std::cell::RefCell<Vec<Rank>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A `std::sync::Mutex` taken in [`Rank`] order.
#[derive(Debug)]
pub struct Ranked<T> {
    rank: Rank,
    inner: Mutex<T>,
}

impl<T> Ranked<T> {
    pub const fn new(rank: Rank, value: T) -> Self {
        Ranked {
            rank,
            inner: Mutex::new(value),
        }
    }

    /// Takes the lock; in debug builds, panics if this thread holds a lock of the same or a
    /// higher rank.
    pub fn lock(&self) -> RankedGuard<'_, T> {
        let rank = self.rank;
        #[cfg(debug_assertions)]
        HELD.with(|h| {
            let h = h.borrow();
            if let Some(worst) = h.iter().max()
                && *worst >= rank
            {
                panic!(
                    "lock order broken: taking {rank:?} while holding {:?} (see vfs::lock)",
                    *h
                );
            }
        });
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        #[cfg(debug_assertions)]
        HELD.with(|h| h.borrow_mut().push(rank));
        RankedGuard { guard, rank }
    }
}

/// The guard of a [`Ranked`] lock.
pub struct RankedGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    rank: Rank,
}

impl<T> Drop for RankedGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|r| *r == self.rank) {
                h.remove(i);
            }
        });
    }
}

impl<T> Deref for RankedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for RankedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// Called before awaiting an async lock (or anything else): in debug builds, panics if this
/// thread holds a ranked lock, which must never be held across an await.
#[track_caller]
pub fn before_await() {
    #[cfg(debug_assertions)]
    HELD.with(|h| {
        let h = h.borrow();
        assert!(
            h.is_empty(),
            "an await while holding {:?} (see vfs::lock)",
            *h
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increasing_ranks_are_fine_and_released_ranks_forgotten() {
        let t = Ranked::new(Rank::Table, 1);
        let h = Ranked::new(Rank::Handles, 2);
        {
            let a = t.lock();
            let b = h.lock();
            assert_eq!(*a + *b, 3);
        }
        // Released: the handles alone, then the table alone, are fine.
        drop(h.lock());
        drop(t.lock());
        before_await();
    }

    #[cfg(debug_assertions)]
    #[test]
    fn a_lock_taken_out_of_order_panics_in_debug_builds() {
        let t = std::sync::Arc::new(Ranked::new(Rank::Table, ()));
        let h = std::sync::Arc::new(Ranked::new(Rank::Handles, ()));
        let r = std::thread::spawn(move || {
            let _h = h.lock();
            let _t = t.lock();
        })
        .join();
        let msg = r.expect_err("must panic");
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("taking Table while holding [Handles]"),
            "{msg}"
        );
    }

    #[cfg(debug_assertions)]
    #[test]
    fn an_await_while_holding_a_ranked_lock_panics_in_debug_builds() {
        let r = std::thread::spawn(|| {
            let t = Ranked::new(Rank::Table, ());
            let _g = t.lock();
            before_await();
        })
        .join();
        assert!(r.is_err());
    }
}
