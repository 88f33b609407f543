//! The versioned layout of a channel pair's shared region, and its one-time initialisation.
//!
//! Everything is placed at offsets computed from a [`PairConfig`]; the header records the
//! configuration so that each endpoint recomputes (never reads) the offsets and checks that
//! they fit the region it was given. After [`attach`](crate::Endpoint::attach) the header is
//! not read again.

use core::sync::atomic::Ordering;

use crate::error::{ChannelError, Corruption};
use crate::region::Region;
use crate::wire::MESSAGE_SIZE;
use crate::Side;

/// Magic number at offset 0 of an initialised region (`"CMPCHAN\0"` little-endian).
pub const MAGIC: u64 = u64::from_le_bytes(*b"CMPCHAN\0");
/// Version of the layout described in this module.
pub const VERSION: u32 = 2;

/// Distance between data written by different sides: two cache lines, so that the adjacent-
/// line prefetcher does not make them share.
pub(crate) const LINE: usize = 128;
/// Size reserved for the header.
pub const HEADER_LEN: usize = 256;
/// Size of one request-database entry.
pub(crate) const DB_ENTRY_LEN: usize = 64;
/// Alignment of each pool (a page, so that an embedder may map pools separately).
const POOL_ALIGN: usize = 4096;

/// Largest queue depth and number of outstanding requests.
pub const MAX_DEPTH: u32 = 1 << 16;
/// Largest pool buffer.
pub const MAX_BUF_SIZE: u32 = 1 << 24;

// Header field offsets.
pub(crate) const H_MAGIC: usize = 0;
pub(crate) const H_VERSION: usize = 8;
pub(crate) const H_HEADER_LEN: usize = 12;
pub(crate) const H_TOTAL_LEN: usize = 16;
pub(crate) const H_QUEUE_DEPTH: usize = 24;
pub(crate) const H_MAX_OUTSTANDING: usize = 28;
pub(crate) const H_BUF_SIZE: usize = 32;

// Notification-area field offsets (relative to the area).
/// Receiver state: [`POLLING`](crate::notify::POLLING), `SLEEPING` or `WAKING`.
pub(crate) const N_STATE: usize = 0;
/// Times the receiver went to sleep (written by the receiver).
pub(crate) const N_SLEEPS: usize = 8;
/// Times the receiver was kicked (written by the sender).
pub(crate) const N_KICKS: usize = 16;

/// The sizes that define a channel pair. Both directions use the same configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairConfig {
    /// Slots in each request queue (a power of two, 2..=65536).
    pub queue_depth: u32,
    /// Requests a side may have outstanding at once: entries of its request database, pool
    /// buffers and slots of the reply queue it receives on (a power of two, 2..=65536).
    pub max_outstanding: u32,
    /// Bytes in each pool buffer (a multiple of 64, at most 16 MiB; 0 for no payloads).
    pub buf_size: u32,
}

impl PairConfig {
    /// A configuration with the given sizes (validated by [`PairLayout::new`]).
    pub const fn new(queue_depth: u32, max_outstanding: u32, buf_size: u32) -> PairConfig {
        PairConfig {
            queue_depth,
            max_outstanding,
            buf_size,
        }
    }
}

/// Where one ring lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Offset of the producer's index (written by the producer only).
    pub tail: usize,
    /// Offset of the consumer's index (written by the consumer only).
    pub head: usize,
    /// Offset of the first slot.
    pub slots: usize,
    /// Number of slots (a power of two).
    pub depth: u32,
}

impl RingLayout {
    fn place(at: &mut usize, depth: u32) -> Option<RingLayout> {
        let tail = *at;
        let head = tail + LINE;
        let slots = head + LINE;
        *at = slots.checked_add((depth as usize).checked_mul(MESSAGE_SIZE)?)?;
        Some(RingLayout {
            tail,
            head,
            slots,
            depth,
        })
    }
}

/// What one side receives and owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideLayout {
    /// The side's notification area (its receiver state and counters).
    pub notify: usize,
    /// The queue of requests this side receives.
    pub requests: RingLayout,
    /// The queue of replies this side receives (to its own requests).
    pub replies: RingLayout,
    /// This side's request database.
    pub db: usize,
    /// This side's payload pool (`max_outstanding` buffers of `buf_size` bytes).
    pub pool: usize,
}

/// The complete layout of a channel pair's region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PairLayout {
    config: PairConfig,
    sides: [SideLayout; 2],
    total_len: usize,
}

fn is_depth(n: u32) -> bool {
    n.is_power_of_two() && (2..=MAX_DEPTH).contains(&n)
}

impl PairLayout {
    /// Compute the layout for `config`, or say why the configuration is invalid.
    pub fn new(config: &PairConfig) -> Result<PairLayout, ChannelError> {
        if !is_depth(config.queue_depth) {
            return Err(ChannelError::InvalidConfig(
                "queue_depth must be a power of two in 2..=65536",
            ));
        }
        if !is_depth(config.max_outstanding) {
            return Err(ChannelError::InvalidConfig(
                "max_outstanding must be a power of two in 2..=65536",
            ));
        }
        if config.buf_size % 64 != 0 || config.buf_size > MAX_BUF_SIZE {
            return Err(ChannelError::InvalidConfig(
                "buf_size must be a multiple of 64 and at most 16 MiB",
            ));
        }
        Self::compute(config).ok_or(ChannelError::InvalidConfig("layout overflows"))
    }

    fn compute(config: &PairConfig) -> Option<PairLayout> {
        let mut at = HEADER_LEN;
        let mut side = || -> Option<SideLayout> {
            let notify = at;
            at += LINE;
            let requests = RingLayout::place(&mut at, config.queue_depth)?;
            let replies = RingLayout::place(&mut at, config.max_outstanding)?;
            let db = at;
            at = at.checked_add((config.max_outstanding as usize).checked_mul(DB_ENTRY_LEN)?)?;
            let pool = at.checked_next_multiple_of(POOL_ALIGN)?;
            let pool_len =
                (config.max_outstanding as usize).checked_mul(config.buf_size as usize)?;
            at = pool
                .checked_add(pool_len)?
                .checked_next_multiple_of(POOL_ALIGN)?;
            Some(SideLayout {
                notify,
                requests,
                replies,
                db,
                pool,
            })
        };
        let a = side()?;
        let b = side()?;
        Some(PairLayout {
            config: *config,
            sides: [a, b],
            total_len: at,
        })
    }

    /// Bytes the region must have.
    pub fn size(&self) -> usize {
        self.total_len
    }

    /// The configuration this layout was computed from.
    pub fn config(&self) -> &PairConfig {
        &self.config
    }

    /// Where `side`'s queues, database and pool are.
    pub fn side(&self, side: Side) -> &SideLayout {
        &self.sides[side.index()]
    }

    /// Bytes in one side's pool.
    pub fn pool_len(&self) -> usize {
        self.config.max_outstanding as usize * self.config.buf_size as usize
    }

    /// Read the configuration from an initialised region and check it against the region.
    pub fn from_region(region: &Region) -> Result<PairLayout, ChannelError> {
        let bad = ChannelError::Corrupt(Corruption::BadHeader);
        if region.len() < HEADER_LEN {
            return Err(bad);
        }
        let u32_at = |off| {
            region
                .u32_at(off)
                .map(|a| a.load(Ordering::Relaxed))
                .ok_or(bad)
        };
        let u64_at = |off| {
            region
                .u64_at(off)
                .map(|a| a.load(Ordering::Relaxed))
                .ok_or(bad)
        };
        // Acquire pairs with the release store of the magic at the end of `initialize`.
        let magic = region
            .u64_at(H_MAGIC)
            .map(|a| a.load(Ordering::Acquire))
            .ok_or(bad)?;
        if magic != MAGIC {
            return Err(ChannelError::Corrupt(Corruption::BadMagic));
        }
        if u32_at(H_VERSION)? != VERSION {
            return Err(ChannelError::Corrupt(Corruption::BadVersion));
        }
        let config = PairConfig {
            queue_depth: u32_at(H_QUEUE_DEPTH)?,
            max_outstanding: u32_at(H_MAX_OUTSTANDING)?,
            buf_size: u32_at(H_BUF_SIZE)?,
        };
        let layout = PairLayout::new(&config).map_err(|_| bad)?;
        let total = u64_at(H_TOTAL_LEN)?;
        if u32_at(H_HEADER_LEN)? as usize != HEADER_LEN
            || total != layout.total_len as u64
            || layout.total_len > region.len()
        {
            return Err(bad);
        }
        Ok(layout)
    }
}

/// Lay out a fresh channel pair in `region`: zero it, build both request databases, and write
/// the header (magic last). Done once, by the trusted party that creates the region (the
/// VMM, or a host test), before either endpoint attaches.
pub fn initialize(region: &Region, config: &PairConfig) -> Result<PairLayout, ChannelError> {
    let layout = PairLayout::new(config)?;
    if region.len() < layout.total_len {
        return Err(ChannelError::InvalidConfig(
            "region smaller than the layout",
        ));
    }
    let small = ChannelError::InvalidConfig("region smaller than the layout");
    // The magic goes first so that a concurrent attach fails rather than seeing half a header.
    region
        .u64_at(H_MAGIC)
        .ok_or(small)?
        .store(0, Ordering::Relaxed);
    region.fill(0, layout.total_len, 0).ok_or(small)?;
    for side in [Side::A, Side::B] {
        crate::db::format(region, layout.side(side).db, config.max_outstanding).ok_or(small)?;
    }
    let put32 = |off, v| region.u32_at(off).map(|a| a.store(v, Ordering::Relaxed));
    put32(H_VERSION, VERSION).ok_or(small)?;
    put32(H_HEADER_LEN, HEADER_LEN as u32).ok_or(small)?;
    put32(H_QUEUE_DEPTH, config.queue_depth).ok_or(small)?;
    put32(H_MAX_OUTSTANDING, config.max_outstanding).ok_or(small)?;
    put32(H_BUF_SIZE, config.buf_size).ok_or(small)?;
    region
        .u64_at(H_TOTAL_LEN)
        .ok_or(small)?
        .store(layout.total_len as u64, Ordering::Relaxed);
    region
        .u64_at(H_MAGIC)
        .ok_or(small)?
        .store(MAGIC, Ordering::Release);
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_do_not_overlap_and_fit() {
        let l = PairLayout::new(&PairConfig::new(256, 64, 2048)).unwrap();
        let mut spans = [(0usize, HEADER_LEN); 1 + 2 * 5];
        let mut n = 1;
        for side in [Side::A, Side::B] {
            let s = l.side(side);
            spans[n] = (s.notify, LINE);
            spans[n + 1] = (s.requests.tail, 2 * LINE + 256 * 64);
            spans[n + 2] = (s.replies.tail, 2 * LINE + 64 * 64);
            spans[n + 3] = (s.db, 64 * DB_ENTRY_LEN);
            spans[n + 4] = (s.pool, l.pool_len());
            n += 5;
        }
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{:?} overlaps {:?}", w[0], w[1]);
        }
        let last = spans[spans.len() - 1];
        assert!(last.0 + last.1 <= l.size());
        assert_eq!(l.side(Side::A).pool % 4096, 0);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(PairLayout::new(&PairConfig::new(3, 64, 2048)).is_err());
        assert!(PairLayout::new(&PairConfig::new(1 << 17, 64, 2048)).is_err());
        assert!(PairLayout::new(&PairConfig::new(64, 0, 2048)).is_err());
        assert!(PairLayout::new(&PairConfig::new(64, 64, 100)).is_err());
        assert!(PairLayout::new(&PairConfig::new(64, 64, 0)).is_ok());
    }
}
