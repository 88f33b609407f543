//! The guest's fast-path channels (`compart-channel` pairs the VMM mapped at
//! `CHANNELS_GPA`, listed in the boot info), with:
//!
//! - [`Doorbell`]: a sender's kick is a store to the channel's doorbell page, which
//!   the kernel turns into an interrupt in the peer (no exit to the VMM's user space);
//! - [`Halt`]: a receiver with no work sleeps in `hlt` until that interrupt;
//! - [`wait_for_any`]: the receive loop's idle step over all of a guest's channels,
//!   until work or a deadline: poll for as long as the placement page allows (long on
//!   a dedicated core, not at all on a shared one), then announce sleep, re-check, and
//!   halt (until the deadline, on the APIC timer).
//!
//! A guest finds its channels by who is on the other side: [`open_to`] a peer by name,
//! [`open_by_role`] by its role, or [`open_all`], which also reports the channels that
//! cannot be opened (a peer may have wrecked its region before we attach). Each channel
//! opens at most once, so two endpoints never drive the same side.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::time::Duration;

use compart_abi::{ChannelInfo, ChannelSide, Role};
use compart_channel::{
    initialize, ChannelError, Endpoint, NoKick, Notifier, PairConfig, PairLayout, Region, Side,
    Waiter,
};
use compart_kit::server::Peer;

use crate::time::{self, Instant};
use crate::{boot_info, placement, ring0};

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
    /// No channel of this guest leads to a peer of that name.
    NoSuchPeer,
    /// No channel of this guest leads to a peer with that role.
    NoSuchRole(Role),
    /// The channel is open already.
    AlreadyOpen(usize),
    /// The region is not a valid channel pair.
    Channel(ChannelError),
    /// The boot info's side is neither A nor B (its raw value).
    BadSide(u32),
}

/// Bit `i`: channel `i` is open.
static OPENED: AtomicU32 = AtomicU32::new(0);

const _: () = assert!(compart_abi::MAX_CHANNELS <= 32);

/// Number of channels this guest has.
pub fn count() -> usize {
    boot_info().channels().len()
}

/// The name of channel `index`'s peer.
pub fn peer(index: usize) -> &'static str {
    boot_info().channels().get(index).map_or("?", |c| c.peer())
}

/// Who is on the other side of channel `index`.
pub fn peer_of(index: usize) -> Option<Peer> {
    boot_info()
        .channels()
        .get(index)
        .map(|c| describe(index, c))
}

fn describe(index: usize, c: &ChannelInfo) -> Peer {
    Peer {
        index,
        name: String::from(c.peer()),
        role: c.peer_role(),
    }
}

/// Opens the first channel whose peer is named `name`.
pub fn open_to(name: &str) -> Result<(Peer, Channel), OpenError> {
    let index = boot_info()
        .channels()
        .iter()
        .position(|c| c.peer() == name)
        .ok_or(OpenError::NoSuchPeer)?;
    Ok((
        describe(index, &boot_info().channels()[index]),
        open(index)?,
    ))
}

/// Opens the first channel whose peer has role `role`.
pub fn open_by_role(role: Role) -> Result<(Peer, Channel), OpenError> {
    let index = boot_info()
        .channels()
        .iter()
        .position(|c| c.peer_role() == role)
        .ok_or(OpenError::NoSuchRole(role))?;
    Ok((
        describe(index, &boot_info().channels()[index]),
        open(index)?,
    ))
}

/// Opens every channel not open yet: those that opened, and those that could not, with
/// the reason, each with its peer, in boot-info order.
#[allow(clippy::type_complexity)]
pub fn open_all() -> (Vec<(Peer, Channel)>, Vec<(Peer, OpenError)>) {
    let (mut open, mut unusable) = (Vec::new(), Vec::new());
    for (index, c) in boot_info().channels().iter().enumerate() {
        if OPENED.load(Ordering::Relaxed) & (1 << index) != 0 {
            continue;
        }
        match self::open(index) {
            Ok(ch) => open.push((describe(index, c), ch)),
            Err(e) => unusable.push((describe(index, c), e)),
        }
    }
    (open, unusable)
}

/// Opens channel `index` (in boot-info order) on this guest's side.
pub fn open(index: usize) -> Result<Channel, OpenError> {
    let c = boot_info()
        .channels()
        .get(index)
        .ok_or(OpenError::NoSuchChannel(index))?;
    if OPENED.fetch_or(1 << index, Ordering::Relaxed) & (1 << index) != 0 {
        return Err(OpenError::AlreadyOpen(index));
    }
    let side = match c.side() {
        Some(ChannelSide::A) => Side::A,
        Some(ChannelSide::B) => Side::B,
        None => return Err(OpenError::BadSide(c.side)),
    };
    let region = region_of(c).map_err(OpenError::Channel)?;
    Endpoint::attach(
        region,
        side,
        Doorbell {
            gpa: c.doorbell_gpa,
        },
    )
    .map_err(OpenError::Channel)
}

fn region_of(c: &ChannelInfo) -> Result<Region, ChannelError> {
    // SAFETY: the VMM mapped region_size bytes of shared memory at region_gpa for the
    // guest's whole life (identity-mapped); it is only accessed through the Region, with
    // atomic accesses, as memory a peer may change at any time.
    unsafe { Region::from_raw(c.region_gpa as *mut u8, c.region_size as usize) }
}

/// Bit `i`: channel `i` is hung up when the guest ends ([`hang_up_on_exit`]).
static HANG_UP: AtomicU32 = AtomicU32::new(0);

/// When this guest ends (it returns from main, calls [`exit`](crate::exit), or
/// panics), hang channel `index` up: its peer finds the channel broken at its next look
/// and can clean up what it holds for this guest (the posix server closes an
/// application's sockets). A hung-up channel is written as no endpoint writes it: the
/// peer's consumer indices of both queues this guest fills, and this guest's own
/// notification state, get values the peer's endpoint refuses
/// ([`ChannelError::Corrupt`]); then the peer is kicked.
pub fn hang_up_on_exit(index: usize) {
    if index < compart_abi::MAX_CHANNELS {
        HANG_UP.fetch_or(1 << index, Ordering::Relaxed);
    }
}

/// Hang up the channels [`hang_up_on_exit`] named (the guest is ending).
pub(crate) fn hang_up() {
    let mask = HANG_UP.swap(0, Ordering::Relaxed);
    if mask == 0 {
        return;
    }
    for (index, c) in boot_info().channels().iter().enumerate() {
        if mask & (1 << index) == 0 {
            continue;
        }
        let side = match c.side() {
            Some(ChannelSide::A) => Side::A,
            Some(ChannelSide::B) => Side::B,
            None => continue,
        };
        let Ok(region) = region_of(c) else { continue };
        let Ok(layout) = compart_channel::PairLayout::from_region(&region) else {
            continue;
        };
        let peer = layout.side(side.peer());
        for ring in [peer.requests, peer.replies] {
            if let Some(head) = region.u32_at(ring.head) {
                // Beyond anything the producer (this guest) wrote: refused as a ring
                // index.
                head.fetch_add(0x8000_0000, Ordering::Relaxed);
            }
        }
        if let Some(state) = region.u32_at(layout.side(side).notify) {
            state.store(u32::MAX, Ordering::Relaxed);
        }
        core::sync::atomic::fence(Ordering::SeqCst);
        Doorbell {
            gpa: c.doorbell_gpa,
        }
        .kick();
    }
}

/// This guest's view of channel `index`'s shared region, bypassing the endpoint: for a
/// peer that tests the other side's defences by writing what no endpoint would.
pub fn raw_region(index: usize) -> Option<Region> {
    region_of(boot_info().channels().get(index)?).ok()
}

/// A channel pair inside this guest's own memory, both ends here: for layers linked
/// into one guest (the `mono` image) that talk through the same channel protocol as
/// servers in separate guests, without doorbells (one loop polls both ends, so
/// [`NoKick`]). The region is allocated from the heap, page-aligned and zeroed, and
/// lives for the rest of the guest's life. Returns (side A, side B).
pub fn local_pair(
    config: &PairConfig,
) -> Result<(Endpoint<NoKick>, Endpoint<NoKick>), ChannelError> {
    let size = PairLayout::new(config)?.size().next_multiple_of(4096);
    let layout = core::alloc::Layout::from_size_align(size, 4096)
        .map_err(|_| ChannelError::InvalidConfig("region too large"))?;
    // SAFETY: `layout` has a non-zero size (a pair layout is never empty).
    let mem = unsafe { alloc::alloc::alloc_zeroed(layout) };
    if mem.is_null() {
        return Err(ChannelError::InvalidConfig(
            "no heap left for a local channel",
        ));
    }
    // SAFETY: `mem` is `size` bytes of heap, never freed (leaked for the guest's life)
    // and never reached through a Rust reference: only through the Region.
    let region = unsafe { Region::from_raw(mem, size) }?;
    initialize(&region, config)?;
    Ok((
        Endpoint::attach(region, Side::A, NoKick)?,
        Endpoint::attach(region, Side::B, NoKick)?,
    ))
}

/// Why [`wait_for_any`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Work may be waiting on some channel (or the VMM kicked: placement changed).
    Work,
    /// The deadline passed with no work found.
    Deadline,
}

/// Whether the last wait ended at its deadline with no work: the guest is idle, and
/// the next wait sleeps at once instead of polling (a periodic timer on a dedicated
/// core would otherwise poll for the whole budget after every tick). vCPU 0's: it is
/// the only vCPU that runs guest code.
static IDLE: AtomicBool = AtomicBool::new(false);

/// The receive loop's idle step over all of a guest's channels: poll them for as
/// long as vCPU 0's placement says (`poll_us`), then announce sleep on each, re-check,
/// and halt until any peer (or the VMM) kicks or `deadline` passes. No wake-up is
/// lost (see `compart-channel`). Returns [`Wake::Work`] when work may be waiting (a
/// wake-up may be spurious: poll and call again), [`Wake::Deadline`] when the
/// deadline passed without any.
pub fn wait_for_any(
    channels: &mut [Channel],
    deadline: Option<Instant>,
) -> Result<Wake, ChannelError> {
    wait_for_any_polling(channels, placement::poll_us(0), deadline)
}

/// [`wait_for_any`] with an explicit poll budget instead of the placement's.
pub fn wait_for_any_polling(
    channels: &mut [Channel],
    poll_us: u32,
    deadline: Option<Instant>,
) -> Result<Wake, ChannelError> {
    let wake = wait(channels, poll_us, deadline)?;
    IDLE.store(wake == Wake::Deadline, Ordering::Relaxed);
    Ok(wake)
}

fn wait(
    channels: &mut [Channel],
    poll_us: u32,
    deadline: Option<Instant>,
) -> Result<Wake, ChannelError> {
    for c in channels.iter_mut() {
        c.flush()?;
    }
    let passed = |now: Instant| deadline.is_some_and(|d| now >= d);
    let start = Instant::now();
    let budget = if IDLE.load(Ordering::Relaxed) {
        Duration::ZERO
    } else {
        Duration::from_micros(u64::from(poll_us))
    };
    loop {
        for c in channels.iter_mut() {
            if c.has_incoming()? {
                return Ok(Wake::Work);
            }
        }
        let now = Instant::now();
        if passed(now) {
            return Ok(Wake::Deadline);
        }
        if now.duration_since(start) >= budget {
            break;
        }
        core::hint::spin_loop();
    }
    for i in 0..channels.len() {
        if channels[i].begin_sleep()? {
            for c in &mut channels[..i] {
                c.end_sleep()?;
            }
            return Ok(Wake::Work);
        }
    }
    match deadline {
        Some(d) => time::halt_until(d),
        None => ring0::halt(),
    }
    for c in channels.iter_mut() {
        c.end_sleep()?;
    }
    if !passed(Instant::now()) {
        return Ok(Wake::Work);
    }
    for c in channels.iter_mut() {
        if c.has_incoming()? {
            return Ok(Wake::Work);
        }
    }
    Ok(Wake::Deadline)
}
