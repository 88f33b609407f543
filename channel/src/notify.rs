//! The notification protocol: kick the receiver only when it sleeps, and never lose a wake-up.
//!
//! Each side has a state word in its notification area, written by the receiver and read by
//! the sender. The protocol is the classic store-buffer (Dekker) pattern, with a full fence
//! on both sides:
//!
//! ```text
//!   receiver (going to sleep)              sender (after writing a message)
//!   state = SLEEPING                       slot tag = t        (release store)
//!   fence(SeqCst)                          fence(SeqCst)
//!   if any next slot is written:           if state == SLEEPING and
//!       state = POLLING; continue             CAS(state, SLEEPING -> WAKING):
//!   wait()        (blocks until kicked)        kick()
//!   state = POLLING
//! ```
//!
//! Either the receiver's re-check sees the new tag, or the sender's check sees
//! `SLEEPING` (the two fences forbid both loads missing both stores), so a message is never
//! left behind a sleeping receiver. The CAS makes exactly one sender kick per sleep. The
//! doorbell must be *sticky* (an eventfd counter, a pending interrupt): a kick that arrives
//! between the re-check and `wait()` makes `wait()` return at once.
//!
//! The sender half need not run right after the publication, only after it and eventually:
//! [`Endpoint`](crate::Endpoint) runs it in its idle time, off the critical path.
//!
//! The protocol is written once, generic over [`StateWord`], so that the loom model in
//! `tests/loom.rs` checks this very code.

use core::sync::atomic::{fence, AtomicU32, Ordering};

/// The receiver is running and polls its queues: no kick needed.
pub const POLLING: u32 = 0;
/// The receiver is (about to be) blocked in its wait hook: the next sender must kick.
pub const SLEEPING: u32 = 1;
/// A sender has claimed the kick for the current sleep; the receiver is waking up.
pub const WAKING: u32 = 2;

/// Whether `v` is one of the states above (anything else is a corrupt state word).
#[inline]
pub fn is_state(v: u32) -> bool {
    v <= WAKING
}

/// How a sender wakes the peer: ring its doorbell (an eventfd write, a doorbell-page store
/// that the VMM turns into an interrupt in the peer...). Must be sticky: a kick delivered
/// before the peer blocks makes its next wait return immediately.
pub trait Notifier {
    /// Wake the peer.
    fn kick(&self);
}

/// How a receiver sleeps until kicked (an eventfd read, `sti; hlt` in a guest...). May return
/// early (spuriously, or on a timeout); the caller polls again either way.
pub trait Waiter {
    /// Block until kicked (or until the implementation decides to return).
    fn wait(&self);
}

/// A notifier that never kicks: for a receiver that always polls, and for tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKick;

impl Notifier for NoKick {
    fn kick(&self) {}
}

/// A waiter that returns at once: waiting becomes polling.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpinWait;

impl Waiter for SpinWait {
    fn wait(&self) {
        core::hint::spin_loop();
    }
}

impl<N: Notifier + ?Sized> Notifier for &N {
    fn kick(&self) {
        (**self).kick();
    }
}

impl<W: Waiter + ?Sized> Waiter for &W {
    fn wait(&self) {
        (**self).wait();
    }
}

/// The shared state word, abstracted so that the model checker can substitute its atomics.
pub trait StateWord {
    /// Relaxed load.
    fn load(&self) -> u32;
    /// Relaxed store.
    fn store(&self, v: u32);
    /// Compare-and-swap (acquire-release); `true` if it swapped.
    fn cas(&self, current: u32, new: u32) -> bool;
    /// A sequentially consistent fence of the same memory model as the word.
    fn fence();
}

impl StateWord for AtomicU32 {
    #[inline(always)]
    fn load(&self) -> u32 {
        AtomicU32::load(self, Ordering::Relaxed)
    }
    #[inline(always)]
    fn store(&self, v: u32) {
        AtomicU32::store(self, v, Ordering::Relaxed)
    }
    #[inline(always)]
    fn cas(&self, current: u32, new: u32) -> bool {
        self.compare_exchange(current, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
    #[inline(always)]
    fn fence() {
        fence(Ordering::SeqCst);
    }
}

/// Sender side, called after a release store of a ring's `tail`: whether this sender must
/// kick the receiver. At most one caller per sleep gets `true`.
#[inline]
pub fn sender_must_kick<W: StateWord>(state: &W) -> bool {
    W::fence();
    state.load() == SLEEPING && state.cas(SLEEPING, WAKING)
}

/// Receiver side, step 1: announce the intention to sleep. The caller must then re-check
/// every ring it receives on (with loads that cannot be satisfied before the fence) and call
/// [`receiver_cancel_sleep`] if any has work, or its wait hook followed by
/// [`receiver_woke`] otherwise.
#[inline]
pub fn receiver_prepare_sleep<W: StateWord>(state: &W) {
    state.store(SLEEPING);
    W::fence();
}

/// Receiver side: the re-check found work; back to polling without sleeping.
#[inline]
pub fn receiver_cancel_sleep<W: StateWord>(state: &W) {
    state.store(POLLING);
}

/// Receiver side: the wait hook returned; back to polling.
#[inline]
pub fn receiver_woke<W: StateWord>(state: &W) {
    state.store(POLLING);
}
