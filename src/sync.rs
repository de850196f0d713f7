//! The concurrency facade used by the park/wake primitive.
//!
//! Under `--cfg wheresmyfox_loom` the locks and reference counts come from `loom`, so the model
//! checker can explore every interleaving of [`crate::mailbox`] (see `tests/loom.rs`); otherwise
//! they are the standard library's. The cfg is not loom's customary `loom`, because tokio reacts
//! to that one too and leaves out `tokio::net`, without which this crate does not build.

#[cfg(wheresmyfox_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(wheresmyfox_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning.
///
/// Why: every critical section in the mailbox is a handful of field assignments that cannot
/// leave the state half-updated, so a panic elsewhere while the lock was held is no reason to
/// take the whole gateway down.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
