//! The process's allocator, mimalloc, set up so that RSS follows the memory in use while
//! history grows (ADR 013, BENCHMARKS.md "Memory while history grows").
//!
//! Two things otherwise let RSS drift up for weeks although the heap in use stays flat:
//! - Transparent huge pages. The kernel folds 4 KiB pages into 2 MiB ones; one live object
//!   then keeps a whole 2 MiB page resident. [`disable_transparent_huge_pages`] turns them off
//!   for this process, and mimalloc is built without asking for them (`no_thp`).
//! - Pages freed by checkpoints and compactions. Those decode and re-encode hours or days of
//!   rows at once and free them again; mimalloc keeps freed pages resident for a while
//!   (`purge_delay`, 1 s) so that the next allocations find them, and new allocations land
//!   among them. [`ReturnFreedPages`] makes mimalloc return the pages given back to its
//!   arenas at once, for as long as it is held.
//!
//! This is the only module with `unsafe` code: three functions of mimalloc's documented C API
//! (`mi_option_get`, `mi_option_set`, `mi_collect`) and `prctl`.
#![allow(unsafe_code)]

use std::ffi::c_long;
use std::sync::{Mutex, PoisonError};

use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set, mi_option_t};

// The ingest path allocates many small objects per span (owned OTLP structs); mimalloc's
// thread-local free lists serve them faster than glibc's malloc (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (`mimalloc.h`): how long, in
/// milliseconds, a freed page stays resident before it goes back to the system. The Rust
/// bindings have no constant for it; a test checks that this index reads its default.
const PURGE_DELAY: mi_option_t = 15;

/// Holders of [`ReturnFreedPages`], and the purge delay to restore when the last one goes
/// (`None`: left as it was, see [`ReturnFreedPages::hold`]).
static HOLDERS: Mutex<(usize, Option<c_long>)> = Mutex::new((0, None));

/// Asks the kernel not to back this process's memory with transparent huge pages
/// (`PR_SET_THP_DISABLE`). Linux only; elsewhere it does nothing.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` takes no pointers; it sets a flag
        // on the calling process and returns 0 or -1 with `errno`.
        let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if status != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// While held, pages that mimalloc gives back to its arenas (every block in them freed, on any
/// thread) go back to the system at once instead of after the purge delay. Dropping the last
/// holder restores the delay and runs `mi_collect(true)`: the calling thread's free pages and
/// every arena page whose return was still pending go back too (unless the delay was left
/// alone, below). Holders may overlap.
///
/// Held across work that frees a lot at once (a checkpoint and the compaction after it).
/// Ingest running meanwhile pays for it: with pages returned at once, HTTP ingest needed
/// about 1.75 times the CPU per span (BENCHMARKS.md), so it is not held all the time. An
/// operator's `MIMALLOC_PURGE_DELAY` of 0 (always at once) or below 0 (never) is left alone.
#[must_use = "pages are returned at once only while this is held"]
pub struct ReturnFreedPages(());

impl ReturnFreedPages {
    pub fn hold() -> Self {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.0 == 0 {
            // SAFETY: `PURGE_DELAY` is a valid option index (checked by a test). An option is
            // a plain C `long` that mimalloc reads without synchronisation, so setting it while
            // other threads allocate is a benign race: an aligned `long` is written in one
            // store on every target recmeter builds for, and a reader sees the old or the new
            // delay, either of which is valid.
            holders.1 = unsafe {
                let delay = mi_option_get(PURGE_DELAY);
                (delay > 0).then(|| {
                    mi_option_set(PURGE_DELAY, 0);
                    delay
                })
            };
        }
        holders.0 += 1;
        Self(())
    }
}

impl Drop for ReturnFreedPages {
    fn drop(&mut self) {
        let mut holders = HOLDERS.lock().unwrap_or_else(PoisonError::into_inner);
        holders.0 -= 1;
        if holders.0 == 0
            && let Some(delay) = holders.1.take()
        {
            // SAFETY: as in `hold`; `mi_collect` takes no pointers and may run on any thread.
            // The delay is restored first: with a delay of 0 mimalloc has nothing scheduled,
            // and `mi_collect` would skip the arenas' pending returns.
            unsafe {
                mi_option_set(PURGE_DELAY, delay);
                mi_collect(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge_delay() -> c_long {
        // SAFETY: as in `ReturnFreedPages::hold`.
        unsafe { mi_option_get(PURGE_DELAY) }
    }

    #[test]
    fn holding_sets_the_purge_delay_to_0_and_the_last_drop_restores_it() {
        // mimalloc 3's default purge delay: the index is the one the C header names.
        let before = purge_delay();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                before, 1000,
                "option {PURGE_DELAY} is not mimalloc's purge delay"
            );
        }
        // An operator's 0 or negative delay stays as it is.
        let held = if before > 0 { 0 } else { before };
        let outer = ReturnFreedPages::hold();
        assert_eq!(purge_delay(), held);
        let inner = ReturnFreedPages::hold();
        drop(outer);
        assert_eq!(purge_delay(), held, "restored while still held");
        drop(inner);
        assert_eq!(purge_delay(), before);
    }

    #[test]
    fn transparent_huge_pages_can_be_turned_off() {
        disable_transparent_huge_pages().unwrap();
        #[cfg(target_os = "linux")]
        {
            // SAFETY: as in `disable_transparent_huge_pages`.
            let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
            assert_eq!(disabled, 1);
        }
    }
}
