//! A bare virtio-net driver for tests, on raw volatile MMIO and guest memory (the
//! guest is identity-mapped, so a heap address is its guest-physical address):
//!
//! - `nic-rx=MS`: bring NIC 0 up, post receive buffers of exactly header + 14 + MTU
//!   bytes and take whatever arrives for MS milliseconds, reposting each buffer
//!   (polling: a test guest that only receives);
//! - `nic-hostile=MS`: for MS milliseconds, bring NIC 0 up again and again and feed
//!   it malformed rings (buffers outside RAM, looped chains, huge and tiny lengths,
//!   `next` outside the table, wrong direction, indirect descriptors, heads outside
//!   the table, available indices jumping, queues outside RAM at `DRIVER_OK`, writes
//!   to read-only registers, resets with chains in flight; receive chains outside
//!   RAM, read-only, looped or too small, refused when a frame arrives); then bring it
//!   up cleanly and send one valid frame, to show the device still works.

use core::sync::atomic::{fence, Ordering};
use core::time::Duration;

use compart_firmware::abi::virtio::*;
use compart_firmware::time::Instant;
use compart_firmware::{println, BootInfo};

/// Queue entries used (at most the device's `QUEUE_NUM_MAX`).
const QSIZE: u16 = 64;
/// Offsets in the driver's memory: the two queues (descriptor table, available
/// ring, used ring), then the buffers.
const QUEUE_STRIDE: u64 = 0x1000;
const AVAIL: u64 = 0x400;
const USED: u64 = 0x800;
const BUFS: u64 = 2 * QUEUE_STRIDE;
const BUF_SIZE: u64 = 0x2800;
const MEM_SIZE: usize = (BUFS + BUF_SIZE * QSIZE as u64 + BUF_SIZE) as usize;
/// `VRING_AVAIL_F_NO_INTERRUPT`: this driver polls.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

fn w16(a: u64, v: u16) {
    // SAFETY: `a` is inside this driver's own heap block (identity-mapped RAM).
    unsafe { core::ptr::write_volatile(a as *mut u16, v) }
}
fn w32(a: u64, v: u32) {
    // SAFETY: as for `w16`.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}
fn w64(a: u64, v: u64) {
    // SAFETY: as for `w16`.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}
fn r16(a: u64) -> u16 {
    // SAFETY: as for `w16`.
    unsafe { core::ptr::read_volatile(a as *const u16) }
}
fn r32(a: u64) -> u32 {
    // SAFETY: as for `w16`.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}

/// NIC 0 and this driver's memory.
struct Nic {
    base: u64,
    mem: u64,
    qsize: u16,
    /// Our next available index, per queue.
    avail: [u16; 2],
    mtu: u32,
}

impl Nic {
    fn new(info: &BootInfo) -> Option<Nic> {
        let n = info.nics().first()?;
        let layout = core::alloc::Layout::from_size_align(MEM_SIZE, 4096).ok()?;
        // SAFETY: a non-zero-sized layout; the block is never freed (the device may
        // write into it until the guest ends).
        let mem = unsafe { alloc::alloc::alloc_zeroed(layout) } as u64;
        (mem != 0).then_some(Nic {
            base: n.mmio_gpa,
            mem,
            qsize: n.queue_size.clamp(2, u32::from(QSIZE)) as u16,
            avail: [0; 2],
            mtu: n.mtu,
        })
    }

    fn reg(&self, off: u64, v: u32) {
        // SAFETY: a 32-bit store inside the register window the boot info names (an
        // MMIO exit the VMM serves, or the notify ioeventfd).
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u32, v) }
    }

    fn read(&self, off: u64) -> u32 {
        // SAFETY: a 32-bit load inside the register window (an MMIO exit).
        unsafe { core::ptr::read_volatile((self.base + off) as *const u32) }
    }

    fn queue(&self, q: u16) -> u64 {
        self.mem + QUEUE_STRIDE * u64::from(q)
    }

    fn buf(&self, i: u16) -> u64 {
        self.mem + BUFS + BUF_SIZE * u64::from(i)
    }

    /// Resets the device and brings it up with `features`; `desc_at` overrides the
    /// transmit queue's descriptor table address. Returns the final status.
    fn up(&mut self, features: u64, desc_at: Option<u64>) -> u32 {
        self.reg(MMIO_STATUS, 0);
        // Fresh rings: zero both queues' pages.
        for off in (0..2 * QUEUE_STRIDE).step_by(8) {
            w64(self.mem + off, 0);
        }
        self.avail = [0; 2];
        self.reg(MMIO_STATUS, STATUS_ACKNOWLEDGE);
        self.reg(MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.reg(MMIO_DRIVER_FEATURES_SEL, 0);
        self.reg(MMIO_DRIVER_FEATURES, features as u32);
        self.reg(MMIO_DRIVER_FEATURES_SEL, 1);
        self.reg(MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        let s = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.reg(MMIO_STATUS, s);
        for q in [RX_QUEUE, TX_QUEUE] {
            let base = self.queue(q);
            let desc = match (q, desc_at) {
                (TX_QUEUE, Some(a)) => a,
                _ => base,
            };
            w16(base + AVAIL, AVAIL_F_NO_INTERRUPT);
            self.reg(MMIO_QUEUE_SEL, u32::from(q));
            self.reg(MMIO_QUEUE_NUM, u32::from(self.qsize));
            self.reg(MMIO_QUEUE_DESC_LOW, desc as u32);
            self.reg(MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
            self.reg(MMIO_QUEUE_DRIVER_LOW, (base + AVAIL) as u32);
            self.reg(MMIO_QUEUE_DRIVER_HIGH, 0);
            self.reg(MMIO_QUEUE_DEVICE_LOW, (base + USED) as u32);
            self.reg(MMIO_QUEUE_DEVICE_HIGH, 0);
            self.reg(MMIO_QUEUE_READY, 1);
        }
        self.reg(MMIO_STATUS, s | STATUS_DRIVER_OK);
        self.read(MMIO_STATUS)
    }

    fn desc(&self, q: u16, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.queue(q) + 16 * u64::from(i % self.qsize);
        w64(d, addr);
        w32(d + 8, len);
        w16(d + 12, flags);
        w16(d + 14, next);
    }

    /// Puts `head` in the available ring of `q` and publishes it (no notify).
    fn offer(&mut self, q: u16, head: u16) {
        let a = self.queue(q) + AVAIL;
        let idx = self.avail[q as usize];
        w16(a + 4 + 2 * u64::from(idx % self.qsize), head);
        fence(Ordering::SeqCst);
        self.avail[q as usize] = idx.wrapping_add(1);
        w16(a + 2, idx.wrapping_add(1));
    }

    fn kick(&self, q: u16) {
        fence(Ordering::SeqCst);
        self.reg(MMIO_QUEUE_NOTIFY, u32::from(q));
    }

    fn used_idx(&self, q: u16) -> u16 {
        r16(self.queue(q) + USED + 2)
    }

    /// (id, len) of used element `i` of `q`.
    fn used(&self, q: u16, i: u16) -> (u32, u32) {
        let e = self.queue(q) + USED + 4 + 8 * u64::from(i % self.qsize);
        (r32(e), r32(e + 4))
    }

    /// Waits (bounded) until the used index of `q` reaches `want`.
    fn wait_used(&self, q: u16, want: u16, limit: Duration) -> bool {
        let t = Instant::now();
        while self.used_idx(q) != want {
            if t.elapsed() > limit {
                return false;
            }
            core::hint::spin_loop();
        }
        true
    }

    /// Waits (bounded) until the status shows `DEVICE_NEEDS_RESET`.
    fn wait_needs_reset(&self, limit: Duration) -> bool {
        let t = Instant::now();
        while self.read(MMIO_STATUS) & STATUS_DEVICE_NEEDS_RESET == 0 {
            if t.elapsed() > limit {
                return false;
            }
        }
        true
    }
}

const FEATURES: u64 = 1 << F_VERSION_1 | 1 << F_MAC;

/// `nic-rx=MS`.
pub fn rx(info: &BootInfo, ms: u64) {
    let Some(mut nic) = Nic::new(info) else {
        println!("nic-rx: no NIC");
        return;
    };
    let status = nic.up(FEATURES, None);
    if status & STATUS_DRIVER_OK == 0 || status & STATUS_DEVICE_NEEDS_RESET != 0 {
        println!("nic-rx: the device did not come up: status {status:#x}");
        return;
    }
    // Exactly a header and a frame of the MTU: anything longer must be dropped.
    let len = (NET_HDR_SIZE as u32) + 14 + nic.mtu;
    for i in 0..nic.qsize {
        nic.desc(RX_QUEUE, i, nic.buf(i), len, DESC_F_WRITE, 0);
        nic.offer(RX_QUEUE, i);
    }
    nic.kick(RX_QUEUE);
    println!(
        "nic-rx: ready, {} buffers of {len} bytes, for {ms} ms",
        nic.qsize
    );
    let end = Instant::now() + Duration::from_millis(ms);
    let (mut seen, mut frames, mut bytes, mut bad) = (0u16, 0u64, 0u64, 0u64);
    while Instant::now() < end {
        let idx = nic.used_idx(RX_QUEUE);
        if idx == seen {
            core::hint::spin_loop();
            continue;
        }
        while seen != idx {
            let (id, n) = nic.used(RX_QUEUE, seen);
            seen = seen.wrapping_add(1);
            if id >= u32::from(nic.qsize) || n < NET_HDR_SIZE as u32 + 14 || n > len {
                bad += 1;
            }
            frames += 1;
            bytes += u64::from(n.saturating_sub(NET_HDR_SIZE as u32));
            nic.offer(RX_QUEUE, (id % u32::from(nic.qsize)) as u16);
        }
        nic.kick(RX_QUEUE);
    }
    println!("nic-rx: {frames} frames, {bytes} bytes, {bad} malformed used entries");
}

/// What the hostile driver did, to print.
#[derive(Default)]
struct Tally {
    rounds: u64,
    /// Bad chains the device handed back used with length 0.
    refused_seen: u64,
    /// Bad chains not handed back in time (a reset came first, or the ring broke).
    refused_unseen: u64,
    /// Bad receive chains handed back refused (when a frame arrived for them).
    rx_refused_seen: u64,
    /// Rings broken on purpose (head outside the table, index jump, queue outside
    /// RAM) that the device answered with `DEVICE_NEEDS_RESET`.
    broken: u64,
    /// Writes to read-only or closed registers.
    refused_writes: u64,
    /// Resets with chains in flight.
    resets: u64,
}

/// `nic-hostile=MS`; false if the device misbehaved (a valid frame did not go out
/// at the end, or the device came up with a queue outside RAM).
pub fn hostile(info: &BootInfo, ms: u64) -> bool {
    let Some(mut nic) = Nic::new(info) else {
        println!("nic-hostile: no NIC");
        return false;
    };
    let limit = Duration::from_millis(50);
    let mut t = Tally::default();
    let end = Instant::now() + Duration::from_millis(ms);
    let outside = (info.mem_size + 0x1000_0000) & !0xfff;
    while Instant::now() < end {
        t.rounds += 1;
        if nic.up(FEATURES, None) & STATUS_DRIVER_OK == 0 {
            println!("nic-hostile: the device did not come up");
            return false;
        }
        let buf = nic.buf(0);
        // Chains the device must refuse and hand back with length 0, each as the
        // only chain of its own notify.
        let bad: [&[(u64, u32, u16, u16)]; 8] = [
            &[(outside, 64, 0, 0)],                                  // outside RAM
            &[(buf, 0xffff_fff0, 0, 0)],                             // huge length
            &[(u64::MAX - 8, 64, 0, 0)],                             // wraps around
            &[(buf, 64, DESC_F_NEXT, 1), (buf, 64, DESC_F_NEXT, 0)], // a loop
            &[(buf, 64, DESC_F_NEXT, 999)],                          // next outside the table
            &[(buf, 64, DESC_F_WRITE, 0)],                           // wrong direction
            &[(buf, 64, DESC_F_INDIRECT, 0)],                        // indirect
            &[(buf, 4, 0, 0)],                                       // smaller than a header
        ];
        for chain in bad {
            for (i, &(addr, len, flags, next)) in chain.iter().enumerate() {
                nic.desc(TX_QUEUE, i as u16, addr, len, flags, next);
            }
            nic.offer(TX_QUEUE, 0);
            nic.kick(TX_QUEUE);
            let want = nic.avail[TX_QUEUE as usize];
            if nic.wait_used(TX_QUEUE, want, limit)
                && nic.used(TX_QUEUE, want.wrapping_sub(1)).1 == 0
            {
                t.refused_seen += 1;
            } else {
                t.refused_unseen += 1;
            }
        }
        // Receive chains the device must refuse when a frame arrives (the test sends
        // some to the TAP meanwhile): counted at the end of the round.
        let rx_bad: [(u64, u32, u16, u16); 4] = [
            (outside, 2048, DESC_F_WRITE, 0),           // outside RAM
            (buf, 2048, 0, 0),                          // read-only: wrong direction
            (buf, 2048, DESC_F_WRITE | DESC_F_NEXT, 2), // a loop onto itself
            (buf, 4, DESC_F_WRITE, 0),                  // smaller than a header
        ];
        for (i, &(addr, len, flags, next)) in rx_bad.iter().enumerate() {
            nic.desc(RX_QUEUE, i as u16, addr, len, flags, next);
            nic.offer(RX_QUEUE, i as u16);
        }
        nic.kick(RX_QUEUE);
        // Writes the device must refuse: read-only registers, and queue registers
        // after DRIVER_OK.
        for off in [
            MMIO_MAGIC_VALUE,
            MMIO_VERSION,
            MMIO_DEVICE_ID,
            MMIO_VENDOR_ID,
            MMIO_DEVICE_FEATURES,
            MMIO_QUEUE_NUM_MAX,
            MMIO_INTERRUPT_STATUS,
            MMIO_CONFIG_GENERATION,
            MMIO_QUEUE_NUM,
            MMIO_QUEUE_DESC_LOW,
        ] {
            nic.reg(off, 0xdead_beef);
            t.refused_writes += 1;
        }
        let rx_used = nic.used_idx(RX_QUEUE);
        for i in 0..rx_used {
            if nic.used(RX_QUEUE, i).1 == 0 {
                t.rx_refused_seen += 1;
            }
        }
        // A reset with chains in flight: many offered, one kick, reset at once.
        for i in 0..nic.qsize {
            nic.desc(TX_QUEUE, i, outside, 64, 0, 0);
            nic.offer(TX_QUEUE, i);
        }
        nic.kick(TX_QUEUE);
        nic.reg(MMIO_STATUS, 0);
        t.resets += 1;
        // Rings the device must stop on, until a reset: a head outside the table;
        // the available index jumping past the queue size; the descriptor table
        // outside RAM at DRIVER_OK.
        match t.rounds % 3 {
            0 => {
                nic.up(FEATURES, None);
                nic.offer(TX_QUEUE, 999);
                nic.kick(TX_QUEUE);
            }
            1 => {
                nic.up(FEATURES, None);
                let a = nic.queue(TX_QUEUE) + AVAIL;
                w16(a + 2, nic.avail[1].wrapping_add(nic.qsize * 4 + 1));
                nic.kick(TX_QUEUE);
            }
            _ => {
                let status = nic.up(FEATURES, Some(outside));
                if status & STATUS_DEVICE_NEEDS_RESET == 0 {
                    println!("nic-hostile: a queue outside RAM was accepted: {status:#x}");
                    return false;
                }
            }
        }
        if nic.wait_needs_reset(limit) {
            t.broken += 1;
        }
    }
    // And the device still works: a clean bring-up, one valid broadcast frame.
    if nic.up(FEATURES, None) & (STATUS_DRIVER_OK | STATUS_DEVICE_NEEDS_RESET) != STATUS_DRIVER_OK {
        println!("nic-hostile: the device does not come up after the attack");
        return false;
    }
    let buf = nic.buf(0);
    let frame_len = NET_HDR_SIZE as u64 + 60;
    for off in (0..frame_len).step_by(4) {
        w32(buf + off, 0);
    }
    for k in 0..6 {
        // SAFETY: bytes of the driver's own buffer.
        unsafe { core::ptr::write_volatile((buf + NET_HDR_SIZE as u64 + k) as *mut u8, 0xff) };
    }
    w16(buf + NET_HDR_SIZE as u64 + 12, 0xb588); // ethertype 0x88b5: local experimental
    nic.desc(TX_QUEUE, 0, buf, frame_len as u32, 0, 0);
    nic.offer(TX_QUEUE, 0);
    nic.kick(TX_QUEUE);
    let sent = nic.wait_used(TX_QUEUE, 1, Duration::from_secs(2));
    println!(
        "nic-hostile: {} rounds in {ms} ms: {} bad chains handed back refused, {} not seen back, {} bad receive chains refused, {} rings broken and reset, {} refused register writes, {} resets in flight; a valid frame after: {}",
        t.rounds,
        t.refused_seen,
        t.refused_unseen,
        t.rx_refused_seen,
        t.broken,
        t.refused_writes,
        t.resets,
        if sent { "sent" } else { "NOT sent" }
    );
    nic.reg(MMIO_STATUS, 0);
    sent
}
