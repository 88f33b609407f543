//! Model check of the sleep/kick protocol (`compart_channel::notify`) with loom: over every
//! interleaving (and every allowed weak-memory outcome) of a sender and a receiver, no
//! message is lost and the receiver is never left asleep with work pending.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/work/target-channel-loom cargo test -p compart-channel --release --test loom`
//!
//! The ring slots and the state word are modelled with loom's atomics; the protocol steps
//! are the crate's own generic functions. As in `ring`, a slot is published by its tag word,
//! stored last with release ordering after the message's other words, and the receiver
//! looks at the tag of its next slot (acquire) both to take messages and to re-check before
//! it sleeps. The doorbell is a sticky counter (an eventfd):
//! a lost wake-up shows up as a deadlock, which loom reports as a failure.
#![cfg(loom)]

use compart_channel::notify::{self, StateWord};
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// The receiver's state word, on loom's atomics.
struct State(AtomicU32);

impl StateWord for State {
    fn load(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
    fn store(&self, v: u32) {
        self.0.store(v, Ordering::Relaxed)
    }
    fn cas(&self, current: u32, new: u32) -> bool {
        self.0
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
    fn fence() {
        fence(Ordering::SeqCst);
    }
}

/// A sticky doorbell, like an eventfd: kicks accumulate until a wait consumes them.
struct Doorbell {
    count: Mutex<u32>,
    cv: Condvar,
    kicks: AtomicU32,
}

impl Doorbell {
    fn kick(&self) {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        *self.count.lock().unwrap() += 1;
        self.cv.notify_one();
    }
    fn wait(&self) {
        let mut c = self.count.lock().unwrap();
        while *c == 0 {
            c = self.cv.wait(c).unwrap();
        }
        *c = 0;
    }
}

/// One slot: a message word and the tag word that publishes it (0: empty).
struct Slot {
    body: AtomicU64,
    tag: AtomicU64,
}

/// One ring of three slots (no wrap-around needed for the model).
struct Ring {
    slots: [Slot; 3],
}

impl Ring {
    fn new() -> Ring {
        let slot = || Slot {
            body: AtomicU64::new(0),
            tag: AtomicU64::new(0),
        };
        Ring {
            slots: [slot(), slot(), slot()],
        }
    }

    /// Whether slot `i` holds its message.
    fn written(&self, i: u32, order: Ordering) -> bool {
        self.slots
            .get(i as usize)
            .is_some_and(|s| s.tag.load(order) != 0)
    }
}

struct Shared<S> {
    rings: Vec<Ring>,
    state: S,
    bell: Doorbell,
}

/// A deliberately broken state word whose "fence" does nothing, to show that the model
/// catches a lost wake-up.
struct NoFence(AtomicU32);

impl StateWord for NoFence {
    fn load(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
    fn store(&self, v: u32) {
        self.0.store(v, Ordering::Relaxed)
    }
    fn cas(&self, current: u32, new: u32) -> bool {
        self.0
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
    fn fence() {}
}

/// `plan[r]` lists the batches of messages sent on ring `r`, in the order rings are listed
/// (round-robin across rings); each message is published by its tag, and the sender runs its
/// half of the protocol once per batch (the endpoint defers it over several messages).
fn model(plan: &'static [&'static [u32]]) {
    model_with(plan, || State(AtomicU32::new(notify::POLLING)));
}

fn model_with<S, F>(plan: &'static [&'static [u32]], state: F)
where
    S: StateWord + Send + Sync + 'static,
    F: Fn() -> S + Send + Sync + 'static,
{
    let mut builder = loom::model::Builder::new();
    // Bounded preemptions (the loom documentation's advice: most bugs need two or three)
    // keep the exhaustive search to seconds; LOOM_MAX_PREEMPTIONS overrides it.
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(4);
    }
    builder.check(move || {
        let shared = Arc::new(Shared {
            rings: plan.iter().map(|_| Ring::new()).collect(),
            state: state(),
            bell: Doorbell {
                count: Mutex::new(0),
                cv: Condvar::new(),
                kicks: AtomicU32::new(0),
            },
        });
        let total: Vec<u32> = plan.iter().map(|b| b.iter().sum()).collect();

        let sender = {
            let shared = shared.clone();
            thread::spawn(move || {
                let mut tails = vec![0u32; plan.len()];
                let rounds = plan.iter().map(|b| b.len()).max().unwrap_or(0);
                for round in 0..rounds {
                    for (r, batches) in plan.iter().enumerate() {
                        let Some(&n) = batches.get(round) else {
                            continue;
                        };
                        let ring = &shared.rings[r];
                        for _ in 0..n {
                            let i = tails[r];
                            let slot = &ring.slots[i as usize];
                            slot.body
                                .store(1000 * r as u64 + u64::from(i), Ordering::Relaxed);
                            // Publish: the tag last, with release ordering.
                            slot.tag.store(1, Ordering::Release);
                            tails[r] += 1;
                        }
                        // The sender half of the protocol, deferred to the end of the batch.
                        if notify::sender_must_kick(&shared.state) {
                            shared.bell.kick();
                        }
                    }
                }
            })
        };

        // Receiver: drain, then sleep by the protocol until everything has arrived.
        let mut heads = vec![0u32; plan.len()];
        let mut sleeps = 0;
        loop {
            for (r, ring) in shared.rings.iter().enumerate() {
                while ring.written(heads[r], Ordering::Acquire) {
                    let v = ring.slots[heads[r] as usize].body.load(Ordering::Relaxed);
                    assert_eq!(
                        v,
                        1000 * r as u64 + u64::from(heads[r]),
                        "message lost or torn"
                    );
                    heads[r] += 1;
                }
            }
            if heads == total {
                break;
            }
            sleeps += 1; // announcements: a sender kicks at most once for each
            notify::receiver_prepare_sleep(&shared.state);
            let pending = shared
                .rings
                .iter()
                .zip(&heads)
                .any(|(ring, h)| ring.written(*h, Ordering::Relaxed));
            if pending {
                notify::receiver_cancel_sleep(&shared.state);
                continue;
            }
            shared.bell.wait(); // a lost wake-up deadlocks here
            notify::receiver_woke(&shared.state);
        }
        sender.join().unwrap();
        assert!(
            shared.bell.kicks.load(Ordering::Relaxed) <= sleeps,
            "more kicks than sleeps"
        );
    });
}

#[test]
fn one_ring_one_message_at_a_time() {
    model(&[&[1, 1, 1]]);
}

#[test]
fn one_ring_deferred_kick_check() {
    model(&[&[2, 1]]);
}

#[test]
fn requests_and_replies_rings_share_one_state_word() {
    model(&[&[1, 1], &[1]]);
}

#[test]
#[should_panic(expected = "deadlock")]
fn the_model_catches_a_missing_fence() {
    model_with(&[&[1]], || NoFence(AtomicU32::new(notify::POLLING)));
}
