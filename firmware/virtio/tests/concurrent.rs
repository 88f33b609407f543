//! Driver and device on two threads, each sleeping when it has nothing to do and
//! woken only when the other side's suppression test says so: the driver kicks only
//! when `publish` asks, the device interrupts only when `needs_notification` asks.
//! A lost wake-up leaves one side asleep with work waiting, which the timeouts turn
//! into a failure. Runs past the 16-bit index wrap.

use std::sync::{Condvar, Mutex};
use std::thread;
use std::time::Duration;

use compart_virtio::host::MmapRam;
use compart_virtio::queue::{Buffer, QueueLayout, SplitQueue};
use compart_virtio::Ram;
use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

/// A sticky wake-up line (like an eventfd or a pending interrupt).
#[derive(Default)]
struct Line {
    set: Mutex<bool>,
    cv: Condvar,
    raised: Mutex<u64>,
}

impl Line {
    fn raise(&self) {
        *self.raised.lock().unwrap() += 1;
        *self.set.lock().unwrap() = true;
        self.cv.notify_one();
    }

    /// Wait until raised; `false` on timeout.
    fn wait(&self) -> bool {
        let g = self.set.lock().unwrap();
        let (mut g, t) = self
            .cv
            .wait_timeout_while(g, Duration::from_secs(5), |s| !*s)
            .unwrap();
        *g = false;
        !t.timed_out()
    }

    fn count(&self) -> u64 {
        *self.raised.lock().unwrap()
    }
}

const CHAINS: u64 = 150_000;
const SIZE: u16 = 16;
const DATA: u64 = 0x20_0000;

#[test]
fn neither_side_loses_a_wake_up_with_event_idx_across_the_wrap() {
    let ram = MmapRam::new(0, 4 << 20);
    let (layout, _) = QueueLayout::at(0x10_0000, SIZE);
    let mut drv = SplitQueue::new(&ram, layout, SIZE, true);
    let mut dev = Queue::new(SIZE).unwrap();
    dev.set_desc_table_address(Some(layout.desc as u32), Some(0));
    dev.set_avail_ring_address(Some(layout.avail as u32), Some(0));
    dev.set_used_ring_address(Some(layout.used as u32), Some(0));
    dev.set_event_idx(true);
    dev.set_ready(true);
    let (kick, irq) = (Line::default(), Line::default());
    let mem = &ram.mem;

    thread::scope(|s| {
        let device = s.spawn(|| {
            let mut served = 0u64;
            let mut sleeps = 0u64;
            let mut enables = 0u64;
            while served < CHAINS {
                let mut busy = false;
                while let Some(ch) = dev.pop_descriptor_chain(mem) {
                    let head = ch.head_index();
                    let d = ch.into_iter().next().unwrap();
                    let seq: u64 = mem.read_obj(d.addr()).unwrap();
                    assert_eq!(seq, served, "chains arrive in order");
                    dev.add_used(mem, head, 0).unwrap();
                    served += 1;
                    busy = true;
                }
                if busy {
                    if dev.needs_notification(mem).unwrap() {
                        irq.raise();
                    }
                    continue;
                }
                enables += 1;
                if dev.enable_notification(mem).unwrap() {
                    continue;
                }
                sleeps += 1;
                assert!(
                    kick.wait(),
                    "device slept with chains waiting: lost kick at {served}"
                );
            }
            (sleeps, enables)
        });

        let mut sent = 0u64;
        let mut done = 0u64;
        let mut sleeps = 0u64;
        let mut arms = 0u64;
        while done < CHAINS {
            let mut busy = false;
            while sent < CHAINS && drv.free_descriptors() > 0 {
                let addr = DATA + 8 * (sent % u64::from(SIZE));
                ram.write(addr, &sent.to_le_bytes());
                drv.add(&[Buffer {
                    addr,
                    len: 8,
                    device_writes: false,
                }])
                .unwrap();
                sent += 1;
                busy = true;
            }
            if drv.publish() {
                kick.raise();
            }
            while let Some(u) = drv.pop_used() {
                u.expect("a good used entry");
                done += 1;
                busy = true;
            }
            if busy {
                continue;
            }
            arms += 1;
            if drv.arm() {
                continue;
            }
            sleeps += 1;
            assert!(
                irq.wait(),
                "driver slept with used entries waiting: lost interrupt at {done}"
            );
        }
        let (device_sleeps, enables) = device.join().unwrap();
        // Both sides slept (the test exercised the protocol), and every wake-up was
        // asked for: at most one per time the other side armed (the driver's arm, the
        // device's enable_notification), plus the one spurious kick or interrupt per
        // index wrap the spec allows.
        assert!(
            sleeps > 0 && device_sleeps > 0,
            "{sleeps} / {device_sleeps} sleeps"
        );
        let wraps = CHAINS / 65_536 + 1;
        assert!(
            irq.count() <= arms + wraps,
            "{} interrupts for {arms} arms",
            irq.count()
        );
        assert!(
            kick.count() <= enables + wraps,
            "{} kicks for {enables} enables",
            kick.count()
        );
        assert_eq!(drv.stats().bad_used, 0);
    });
}
