//! `Mailbox`: the park/wake primitive behind every long poll.
//!
//! A device holds at most one parked poll. The command queue itself lives in the registry; the
//! mailbox carries no data, only the signal "look at the queue again". That keeps it small
//! enough to model-check and means a lost or dropped wake-up can never lose a command.
//!
//! Invariants:
//! - At most one [`Parked`] is registered in a mailbox at a time; parking again completes the
//!   previous one with [`Wake::Superseded`] (a phone whose old socket went half-open simply polls
//!   again, and the old request is answered at once instead of hanging).
//! - [`Mailbox::notify`] never blocks and never polls: it completes the registered poll, or, when
//!   none is registered, leaves a permit that the next [`Mailbox::park`] consumes at once. So a
//!   notification that races with a poll about to park is never lost.
//! - A [`Parked`] that is dropped before completing deregisters itself, so the mailbox never
//!   points at a poll whose client has gone away.
//! - A notification is never spent on a poll that does not see it: one that lands on a poll
//!   being dropped (timed out, or its client went away, in the same instant) is passed on to
//!   the poll parked now, or left as a permit. Without this, a device's newer poll that read
//!   the queue just before the command landed would wait out its whole timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::sync::{Arc, Mutex, lock};

/// Why a parked poll was woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Something was queued for the device: read the queue again.
    Notified,
    /// A newer poll from the same device took this one's place.
    Superseded,
}

/// The per-device rendezvous between queued commands and the device's parked poll.
#[derive(Debug, Default)]
pub struct Mailbox {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Set by `notify` when no poll was parked; consumed by the next `park`.
    permit: bool,
    /// The poll currently parked, if any.
    parked: Option<Arc<Slot>>,
}

/// One parked poll's completion cell, shared by the waiting future and the mailbox.
#[derive(Debug, Default)]
struct Slot {
    inner: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    outcome: Option<Wake>,
    waker: Option<Waker>,
    /// The poll returned `outcome` to its owner.
    seen: bool,
    /// The poll was dropped: completing it now would deliver to no one.
    abandoned: bool,
}

/// A parked poll: a future that resolves when the mailbox is notified or the poll superseded.
///
/// Cancel safety: dropping it (the client went away, the wait timed out, the server is
/// shutting down) removes it from the mailbox if it is still the registered poll. Nothing is
/// lost either way, because the commands stay queued until the device acknowledges them.
#[derive(Debug)]
pub struct Parked<'a> {
    mailbox: &'a Mailbox,
    slot: Arc<Slot>,
}

// === Mailbox ===

impl Mailbox {
    /// Wakes the parked poll, or leaves a permit for the next one.
    ///
    /// Returns `true` when a parked poll was woken.
    pub fn notify(&self) -> bool {
        loop {
            let slot = {
                let mut state = lock(&self.state);
                match state.parked.take() {
                    Some(slot) => slot,
                    None => {
                        state.permit = true;
                        return false;
                    }
                }
            };
            // Completed outside the mailbox lock: the waker may run the poll's task inline.
            if slot.complete(Wake::Notified) {
                return true;
            }
            // Its poll was dropped after we took it: look again (a newer poll, or a permit).
        }
    }

    /// Registers a new parked poll, superseding any earlier one.
    ///
    /// If a notification arrived since the last park, the returned future is ready at once.
    pub fn park(&self) -> Parked<'_> {
        let slot = Arc::new(Slot::default());
        let superseded = {
            let mut state = lock(&self.state);
            if state.permit {
                state.permit = false;
                lock(&slot.inner).outcome = Some(Wake::Notified);
                return Parked {
                    mailbox: self,
                    slot,
                };
            }
            state.parked.replace(slot.clone())
        };
        if let Some(old) = superseded {
            old.complete(Wake::Superseded);
        }
        Parked {
            mailbox: self,
            slot,
        }
    }

    /// Whether a poll is parked here right now.
    pub fn is_parked(&self) -> bool {
        lock(&self.state).parked.is_some()
    }

    /// Releases the parked poll (if any) as superseded: used when the device is forgotten.
    pub fn release(&self) {
        let parked = lock(&self.state).parked.take();
        if let Some(slot) = parked {
            slot.complete(Wake::Superseded);
        }
    }
}

// === Slot ===

impl Slot {
    /// Completes the poll; `false` if it was dropped, so nobody will see `wake`.
    fn complete(&self, wake: Wake) -> bool {
        let waker = {
            let mut inner = lock(&self.inner);
            if inner.abandoned {
                return false;
            }
            if inner.outcome.is_some() {
                return true;
            }
            inner.outcome = Some(wake);
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

// === Parked ===

impl Future for Parked<'_> {
    type Output = Wake;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake> {
        let mut inner = lock(&self.slot.inner);
        match inner.outcome {
            Some(wake) => {
                inner.seen = true;
                Poll::Ready(wake)
            }
            None => {
                match &inner.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => inner.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        // Marked under the slot's lock, which `complete` also takes: a notification either
        // completed this poll before (and is passed on below) or sees it abandoned and looks
        // for another poll itself.
        let unseen = {
            let mut inner = lock(&self.slot.inner);
            inner.abandoned = true;
            inner.outcome == Some(Wake::Notified) && !inner.seen
        };
        {
            let mut state = lock(&self.mailbox.state);
            if state
                .parked
                .as_ref()
                .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot))
            {
                state.parked = None;
            }
        }
        if unseen {
            self.mailbox.notify();
        }
    }
}

#[cfg(all(test, not(wheresmyfox_loom)))]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll_once(parked: &mut Parked<'_>) -> Poll<Wake> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(parked).poll(&mut cx)
    }

    #[test]
    fn notify_before_park_leaves_a_permit() {
        let mailbox = Mailbox::default();
        assert!(!mailbox.notify());
        let mut parked = mailbox.park();
        assert_eq!(poll_once(&mut parked), Poll::Ready(Wake::Notified));
        drop(parked);
        // The permit was consumed: the next park waits.
        let mut parked = mailbox.park();
        assert_eq!(poll_once(&mut parked), Poll::Pending);
    }

    #[test]
    fn notify_wakes_the_parked_poll() {
        let mailbox = Mailbox::default();
        let mut parked = mailbox.park();
        assert_eq!(poll_once(&mut parked), Poll::Pending);
        assert!(mailbox.is_parked());
        assert!(mailbox.notify());
        assert_eq!(poll_once(&mut parked), Poll::Ready(Wake::Notified));
        assert!(!mailbox.is_parked());
    }

    #[test]
    fn a_newer_poll_supersedes_the_older() {
        let mailbox = Mailbox::default();
        let mut first = mailbox.park();
        let mut second = mailbox.park();
        assert_eq!(poll_once(&mut first), Poll::Ready(Wake::Superseded));
        assert_eq!(poll_once(&mut second), Poll::Pending);
        // Dropping the superseded poll must not deregister the newer one.
        drop(first);
        assert!(mailbox.is_parked());
        assert!(mailbox.notify());
        assert_eq!(poll_once(&mut second), Poll::Ready(Wake::Notified));
    }

    #[test]
    fn a_wake_a_dropped_poll_never_saw_is_passed_on() {
        let mailbox = Mailbox::default();
        // The old poll is woken, but its client goes away before it looks.
        let old = mailbox.park();
        assert!(mailbox.notify());
        // The device's next poll read the queue before the command landed, and parks now.
        let mut next = mailbox.park();
        assert_eq!(poll_once(&mut next), Poll::Pending);
        drop(old);
        assert_eq!(poll_once(&mut next), Poll::Ready(Wake::Notified));
        drop(next);
        // A wake that was seen is not passed on again.
        let mut after = mailbox.park();
        assert_eq!(poll_once(&mut after), Poll::Pending);
        drop(after);
        // With nobody parked, an unseen wake becomes a permit, as a permit unseen stays one.
        let old = mailbox.park();
        assert!(mailbox.notify());
        drop(old);
        let mut next = mailbox.park();
        assert_eq!(poll_once(&mut next), Poll::Ready(Wake::Notified));
        drop(next);
        // A permit taken by a poll dropped before it looked stays a permit.
        assert!(!mailbox.notify());
        drop(mailbox.park());
        assert!(!mailbox.is_parked());
        let mut next = mailbox.park();
        assert_eq!(poll_once(&mut next), Poll::Ready(Wake::Notified));
    }

    #[test]
    fn a_dropped_poll_deregisters() {
        let mailbox = Mailbox::default();
        let parked = mailbox.park();
        drop(parked);
        assert!(!mailbox.is_parked());
        // With nobody parked the notification becomes a permit, not a lost wake-up.
        assert!(!mailbox.notify());
        let mut parked = mailbox.park();
        assert_eq!(poll_once(&mut parked), Poll::Ready(Wake::Notified));
    }
}
