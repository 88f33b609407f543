//! The guest's fast-path channels (`compart-channel` pairs the VMM mapped at
//! `CHANNELS_GPA`, listed in the boot info), with:
//!
//! - [`Doorbell`]: a sender's kick is a store to the channel's doorbell page, which
//!   the kernel turns into an interrupt in the peer (no exit to the VMM's user space);
//! - [`Halt`]: a receiver with no work sleeps in `hlt` until that interrupt;
//! - [`wait_for_work`]: the receive loop's idle step: poll for as long as the
//!   placement page allows (long on a dedicated core, not at all on a shared one),
//!   then announce sleep, re-check, and halt.

use compart_abi::ChannelSide;
use compart_channel::{ChannelError, Endpoint, Notifier, Region, Side, Waiter};

use crate::{boot_info, placement, pstate::rdtsc, ring0};

/// Rings the peer of one channel.
#[derive(Debug, Clone, Copy)]
pub struct Doorbell {
    gpa: u64,
}

impl Notifier for Doorbell {
    fn kick(&self) {
        // SAFETY: the doorbell page is an MMIO address the VMM registered as an
        // ioeventfd for this guest; a 32-bit store there only signals the eventfd.
        unsafe { core::ptr::write_volatile(self.gpa as *mut u32, 1) };
    }
}

/// Sleeps until an interrupt (a doorbell or the VMM's placement kick).
#[derive(Debug, Clone, Copy, Default)]
pub struct Halt;

impl Waiter for Halt {
    fn wait(&self) {
        ring0::halt();
    }
}

/// A channel endpoint of this guest.
pub type Channel = Endpoint<Doorbell>;

/// Why a channel could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// The boot info lists no channel with that index.
    NoSuchChannel(usize),
    /// The region is not a valid channel pair.
    Channel(ChannelError),
    /// The boot info's side is neither A nor B (its raw value).
    BadSide(u32),
}

/// Number of channels this guest has.
pub fn count() -> usize {
    boot_info().channels().len()
}

/// The name of channel `index`'s peer.
pub fn peer(index: usize) -> &'static str {
    boot_info().channels().get(index).map_or("?", |c| c.peer())
}

/// Opens channel `index` (in boot-info order) on this guest's side.
pub fn open(index: usize) -> Result<Channel, OpenError> {
    let c = boot_info()
        .channels()
        .get(index)
        .ok_or(OpenError::NoSuchChannel(index))?;
    let side = match c.side() {
        Some(ChannelSide::A) => Side::A,
        Some(ChannelSide::B) => Side::B,
        None => return Err(OpenError::BadSide(c.side)),
    };
    // SAFETY: the VMM mapped region_size bytes of shared memory at region_gpa for the
    // guest's whole life (identity-mapped); we only access it through the Region.
    let region = unsafe { Region::from_raw(c.region_gpa as *mut u8, c.region_size as usize) }
        .map_err(OpenError::Channel)?;
    Endpoint::attach(
        region,
        side,
        Doorbell {
            gpa: c.doorbell_gpa,
        },
    )
    .map_err(OpenError::Channel)
}

/// Waits for work on `channel` as vCPU 0's placement says: poll for up to its
/// `poll_us`, then sleep until kicked (no wake-up is lost: see `compart-channel`).
pub fn wait_for_work(channel: &mut Channel) -> Result<(), ChannelError> {
    wait_for_any(core::slice::from_mut(channel), placement::poll_us(0))
}

/// [`wait_for_work`] with an explicit poll budget instead of the placement's.
pub fn wait_for_work_polling(channel: &mut Channel, poll_us: u32) -> Result<(), ChannelError> {
    wait_for_any(core::slice::from_mut(channel), poll_us)
}

/// The receive loop's idle step over all of a guest's channels: poll them all for up
/// to `poll_us`, then announce sleep on each, re-check, and halt until any peer (or the
/// VMM) kicks. Returns when work may be waiting on some channel.
pub fn wait_for_any(channels: &mut [Channel], poll_us: u32) -> Result<(), ChannelError> {
    for c in channels.iter_mut() {
        c.flush()?;
    }
    let ticks = u64::from(poll_us) * boot_info().tsc_khz.max(1) / 1000;
    let start = rdtsc();
    loop {
        for c in channels.iter_mut() {
            if c.has_incoming()? {
                return Ok(());
            }
        }
        if rdtsc().wrapping_sub(start) >= ticks {
            break;
        }
        core::hint::spin_loop();
    }
    for i in 0..channels.len() {
        if channels[i].begin_sleep()? {
            for c in &mut channels[..i] {
                c.end_sleep()?;
            }
            return Ok(());
        }
    }
    ring0::halt();
    for c in channels.iter_mut() {
        c.end_sleep()?;
    }
    Ok(())
}
