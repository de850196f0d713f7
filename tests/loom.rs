//! Model checks of the park/wake mailbox under every interleaving loom explores.
//!
//! ```text
//! RUSTFLAGS="--cfg wheresmyfox_loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom
//! ```
//!
//! Under `--cfg wheresmyfox_loom` the mailbox's locks and reference counts come from loom (see
//! `src/sync.rs`), so these models check the mailbox itself, not a copy of it. Each model drives a small stand-in
//! for a device: a queue of commands (the registry's outbox) and its mailbox, with the same
//! loop as a device's long poll (`Exchange::respond`): take what is queued, else park, and on a
//! notification look at the queue again. A delivery queues a command, then notifies.
//!
//! What the models prove, within the preemption bound:
//! - **No lost wake-up**: a poll that waits with no timeout blocks in `loom::future::block_on`
//!   until its waker fires; a notification that never reaches it leaves the model with every
//!   thread blocked, which loom reports as a deadlock.
//! - **No command handed to two polls**, and none lost: the commands the polls answered with
//!   and the ones still queued are exactly the ones delivered, each once.
//! - **Nothing left parked forever**: once every poll has answered or gone, the mailbox holds no
//!   parked poll, and a command still queued is found by the device's next poll at once.
//!
//! The preemption bound defaults to 6 (`LOOM_MAX_PREEMPTIONS` overrides it): every model has at
//! most three threads, and the races that matter take one or two preemptions to set up. With it
//! the whole file takes about 80 seconds on two busy cores; with 3, under a second.

#![cfg(wheresmyfox_loom)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use loom::sync::{Arc, Mutex};
use loom::thread;
use wheresmyfox::mailbox::{Mailbox, Parked, Wake};

/// A device as the models see it: its queued commands and its mailbox.
#[derive(Default)]
struct Device {
    queue: Mutex<VecDeque<u32>>,
    mailbox: Mailbox,
}

/// How long a poll waits once parked.
#[derive(Clone, Copy)]
enum Wait {
    /// Until something wakes it: no timeout.
    Forever,
    /// Its timeout fires (or its client goes away) right after its first `Pending`.
    Briefly,
}

impl Device {
    /// What an owner's command does: queue (durably, in the real server), then notify.
    fn deliver(&self, command: u32) -> bool {
        self.queue.lock().unwrap().push_back(command);
        self.mailbox.notify()
    }

    fn take(&self) -> Option<u32> {
        self.queue.lock().unwrap().pop_front()
    }

    fn queued(&self) -> Vec<u32> {
        self.queue.lock().unwrap().iter().copied().collect()
    }

    /// One long poll: the command it answers with, or `None` for an empty answer (superseded
    /// or timed out).
    fn exchange(&self, wait: Wait) -> Option<u32> {
        loop {
            if let Some(command) = self.take() {
                return Some(command);
            }
            let mut parked = self.mailbox.park();
            let wake = match wait {
                Wait::Forever => loom::future::block_on(&mut parked),
                Wait::Briefly => match poll_once(&mut parked) {
                    Poll::Ready(wake) => wake,
                    // The timeout fired: the parked poll is dropped unanswered.
                    Poll::Pending => return None,
                },
            };
            match wake {
                Wake::Notified => continue,
                Wake::Superseded => return None,
            }
        }
    }
}

fn poll_once(parked: &mut Parked<'_>) -> Poll<Wake> {
    Pin::new(parked).poll(&mut Context::from_waker(Waker::noop()))
}

fn check(model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(6);
    }
    builder.check(model);
}

/// Checks that the answered and still-queued commands are exactly `delivered`, each once.
fn assert_each_once(answered: &[Option<u32>], queued: &[u32], delivered: &[u32]) {
    let mut seen: Vec<u32> = answered.iter().flatten().copied().collect();
    seen.extend_from_slice(queued);
    seen.sort_unstable();
    assert_eq!(
        seen, delivered,
        "answered {answered:?}, still queued {queued:?}"
    );
}

/// Once every poll is over: nothing parked, and the next poll finds what is still queued at
/// once (through the queue or a permit, never by waiting).
fn assert_settled(device: &Device) {
    assert!(!device.mailbox.is_parked(), "a poll was left parked");
    let queued = device.queued();
    if let Some(&first) = queued.first() {
        assert_eq!(device.exchange(Wait::Briefly), Some(first));
    }
}

/// A command delivered before the poll parks, while it waits, as its timeout fires, or after.
#[test]
fn a_delivery_at_any_point_of_a_timed_poll_is_not_lost() {
    check(|| {
        let device = Arc::new(Device::default());
        let poll = {
            let device = device.clone();
            thread::spawn(move || device.exchange(Wait::Briefly))
        };
        device.deliver(1);
        let answered = poll.join().unwrap();
        assert_each_once(&[answered], &device.queued(), &[1]);
        assert_settled(&device);
    });
}

/// A poll that waits without a timeout is always woken by a delivery (loom reports a deadlock
/// otherwise) and answers with the command.
#[test]
fn a_waiting_poll_is_always_woken() {
    check(|| {
        let device = Arc::new(Device::default());
        let poll = {
            let device = device.clone();
            thread::spawn(move || device.exchange(Wait::Forever))
        };
        device.deliver(1);
        assert_eq!(poll.join().unwrap(), Some(1));
        assert_settled(&device);
    });
}

/// Two polls from the same device (its old socket went half-open and it polled again) while
/// two commands are delivered: whichever parks last supersedes the other, and every command
/// goes to exactly one poll or stays queued for the next one.
///
/// The polls time out after their first wait here: with two polls and a queue that both read,
/// one of them may rightly find nothing left and wait for its timeout, which a poll without one
/// would turn into a deadlock. The models above and below check that waits end.
#[test]
fn a_newer_poll_supersedes_a_parked_one_during_a_delivery() {
    check(|| {
        let device = Arc::new(Device::default());
        let polls: Vec<_> = (0..2)
            .map(|_| {
                let device = device.clone();
                thread::spawn(move || device.exchange(Wait::Briefly))
            })
            .collect();
        device.deliver(1);
        device.deliver(2);
        let answered: Vec<Option<u32>> = polls.into_iter().map(|p| p.join().unwrap()).collect();
        assert_each_once(&answered, &device.queued(), &[1, 2]);
        assert_settled(&device);
    });
}

/// The parked poll's client goes away while a delivery wakes it, and the device's next poll
/// is already on its way: the wake the dropped poll never saw must reach the next one.
#[test]
fn a_poll_dropped_in_the_middle_of_a_wake_passes_the_wake_on() {
    check(|| {
        let device = Arc::new(Device::default());
        let gone = {
            let device = device.clone();
            thread::spawn(move || {
                let parked = device.mailbox.park();
                // Parked before the next poll starts: it is the older of the two.
                let next = {
                    let device = device.clone();
                    thread::spawn(move || device.exchange(Wait::Forever))
                };
                // Its client went away: the future is dropped whether or not it was woken.
                drop(parked);
                next.join().unwrap()
            })
        };
        device.deliver(1);
        let answered = gone.join().unwrap();
        assert_eq!(answered, Some(1));
        assert_settled(&device);
    });
}

/// Two deliveries race each other and a waiting poll: the poll is woken and answers with one
/// command; the other is answered by the next poll, never twice and never lost.
#[test]
fn two_racing_deliveries_wake_the_poll_once_and_lose_nothing() {
    check(|| {
        let device = Arc::new(Device::default());
        let deliveries: Vec<_> = (1..=2)
            .map(|command| {
                let device = device.clone();
                thread::spawn(move || device.deliver(command))
            })
            .collect();
        let first = device.exchange(Wait::Forever);
        let woke: Vec<bool> = deliveries.into_iter().map(|d| d.join().unwrap()).collect();
        assert!(first.is_some());
        assert!(
            woke.iter().filter(|&&w| w).count() <= 1,
            "one parked poll was woken twice: {woke:?}"
        );
        let second = device.exchange(Wait::Briefly);
        assert_each_once(&[first, second], &device.queued(), &[1, 2]);
        assert_settled(&device);
    });
}
