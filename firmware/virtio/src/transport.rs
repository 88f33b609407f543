//! virtio-mmio (version 2) initialisation (virtio 1.2 §3.1.1, §4.2.3): check the
//! window, reset, `ACKNOWLEDGE | DRIVER`, negotiate features, `FEATURES_OK` (and check
//! that the device kept it), set up each queue, `DRIVER_OK`. Every access is a register
//! of [`Mmio`]; in a guest each is an exit to the VMM, which is fine at initialisation.
//! On the data path the driver touches one register only, `QUEUE_NOTIFY` (an
//! ioeventfd), and never `INTERRUPT_STATUS` / `INTERRUPT_ACK` (compart's interrupts are
//! MSIs, see `compart_abi::virtio`).

use compart_abi::virtio::*;

use crate::queue::QueueLayout;
use crate::Mmio;

/// Why the device cannot be driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// `MAGIC_VALUE` is not "virt": nothing (or no virtio device) is there.
    BadMagic(u32),
    /// Not virtio-mmio version 2.
    BadVersion(u32),
    /// Not the device type asked for.
    WrongDevice(u32),
    /// The device does not offer `VERSION_1`.
    NoVersion1,
    /// The device cleared `FEATURES_OK`: it refuses the features the driver took.
    FeaturesRefused,
    /// The queue does not exist (`QUEUE_NUM_MAX` is 0).
    NoQueue(u16),
    /// The queue is already live (`QUEUE_READY` set after reset).
    QueueBusy(u16),
    /// The size asked for is zero, not a power of two, or above `QUEUE_NUM_MAX`.
    BadQueueSize(u16),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::BadMagic(v) => write!(f, "no virtio device (magic {v:#x})"),
            InitError::BadVersion(v) => write!(f, "virtio-mmio version {v}, not 2"),
            InitError::WrongDevice(v) => write!(f, "device id {v}, not the one expected"),
            InitError::NoVersion1 => f.write_str("the device does not offer VERSION_1"),
            InitError::FeaturesRefused => f.write_str("the device refused the features"),
            InitError::NoQueue(q) => write!(f, "queue {q} does not exist"),
            InitError::QueueBusy(q) => write!(f, "queue {q} is live after reset"),
            InitError::BadQueueSize(s) => write!(f, "queue size {s} is not usable"),
        }
    }
}

/// A virtio-mmio device after feature negotiation (status `FEATURES_OK`).
#[derive(Debug)]
pub struct Transport<M: Mmio> {
    mmio: M,
    features: u64,
}

impl<M: Mmio> Transport<M> {
    /// Reset the device in `mmio` (which must be a `device_id` device) and negotiate:
    /// the driver takes what the device offers of `wanted`, which must include
    /// `VERSION_1`. On an error after the reset the device is left `FAILED`.
    pub fn init(mmio: M, device_id: u32, wanted: u64) -> Result<Transport<M>, InitError> {
        let magic = mmio.read32(MMIO_MAGIC_VALUE);
        if magic != MAGIC {
            return Err(InitError::BadMagic(magic));
        }
        let version = mmio.read32(MMIO_VERSION);
        if version != VERSION {
            return Err(InitError::BadVersion(version));
        }
        let id = mmio.read32(MMIO_DEVICE_ID);
        if id != device_id {
            return Err(InitError::WrongDevice(id));
        }
        mmio.write32(MMIO_STATUS, 0);
        let mut status = STATUS_ACKNOWLEDGE;
        mmio.write32(MMIO_STATUS, status);
        status |= STATUS_DRIVER;
        mmio.write32(MMIO_STATUS, status);
        let t = Transport { mmio, features: 0 };
        let offered = t.device_features();
        let features = offered & wanted;
        if features & feature(F_VERSION_1) == 0 {
            t.fail();
            return Err(InitError::NoVersion1);
        }
        t.mmio.write32(MMIO_DRIVER_FEATURES_SEL, 0);
        t.mmio.write32(MMIO_DRIVER_FEATURES, features as u32);
        t.mmio.write32(MMIO_DRIVER_FEATURES_SEL, 1);
        t.mmio
            .write32(MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        status |= STATUS_FEATURES_OK;
        t.mmio.write32(MMIO_STATUS, status);
        if t.mmio.read32(MMIO_STATUS) & STATUS_FEATURES_OK == 0 {
            t.fail();
            return Err(InitError::FeaturesRefused);
        }
        Ok(Transport { features, ..t })
    }

    fn device_features(&self) -> u64 {
        self.mmio.write32(MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = self.mmio.read32(MMIO_DEVICE_FEATURES);
        self.mmio.write32(MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = self.mmio.read32(MMIO_DEVICE_FEATURES);
        u64::from(hi) << 32 | u64::from(lo)
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether feature `bit` was negotiated.
    pub fn has(&self, bit: u32) -> bool {
        self.features & feature(bit) != 0
    }

    /// The largest size queue `q` may have (0: no such queue).
    pub fn queue_max(&self, q: u16) -> u16 {
        self.mmio.write32(MMIO_QUEUE_SEL, u32::from(q));
        let max = self.mmio.read32(MMIO_QUEUE_NUM_MAX);
        u16::try_from(max).unwrap_or(u16::MAX)
    }

    /// Give queue `q` its size and rings, and make it ready.
    pub fn setup_queue(&self, q: u16, size: u16, layout: &QueueLayout) -> Result<(), InitError> {
        let max = self.queue_max(q);
        if max == 0 {
            return Err(InitError::NoQueue(q));
        }
        if size == 0 || !size.is_power_of_two() || size > max {
            return Err(InitError::BadQueueSize(size));
        }
        if self.mmio.read32(MMIO_QUEUE_READY) != 0 {
            return Err(InitError::QueueBusy(q));
        }
        let m = &self.mmio;
        m.write32(MMIO_QUEUE_NUM, u32::from(size));
        for (lo, addr) in [
            (MMIO_QUEUE_DESC_LOW, layout.desc),
            (MMIO_QUEUE_DRIVER_LOW, layout.avail),
            (MMIO_QUEUE_DEVICE_LOW, layout.used),
        ] {
            m.write32(lo, addr as u32);
            m.write32(lo + 4, (addr >> 32) as u32);
        }
        m.write32(MMIO_QUEUE_READY, 1);
        Ok(())
    }

    /// Tell the device the driver is ready (after every queue is set up).
    pub fn driver_ok(&self) {
        let s = self.mmio.read32(MMIO_STATUS);
        self.mmio.write32(MMIO_STATUS, s | STATUS_DRIVER_OK);
    }

    /// Give up on the device (status `FAILED`).
    pub fn fail(&self) {
        let s = self.mmio.read32(MMIO_STATUS);
        self.mmio.write32(MMIO_STATUS, s | STATUS_FAILED);
    }

    /// Reset the device (it stops using the queues).
    pub fn reset(&self) {
        self.mmio.write32(MMIO_STATUS, 0);
    }

    /// Tell the device that queue `q` has new buffers.
    pub fn notify(&self, q: u16) {
        self.mmio.write32(MMIO_QUEUE_NOTIFY, u32::from(q));
    }

    /// Read configuration space consistently: `f` again while `CONFIG_GENERATION`
    /// changed during it (at most a few times; then the last reading is kept).
    pub fn read_config<T>(&self, f: impl Fn(&M) -> T) -> T {
        let mut v;
        for _ in 0..4 {
            let before = self.mmio.read32(MMIO_CONFIG_GENERATION);
            v = f(&self.mmio);
            if self.mmio.read32(MMIO_CONFIG_GENERATION) == before {
                return v;
            }
        }
        v = f(&self.mmio);
        v
    }

    /// The network device's MAC address, if it offers one (`MAC`).
    pub fn net_mac(&self) -> Option<[u8; 6]> {
        self.has(F_MAC).then(|| {
            self.read_config(|m| {
                let mut mac = [0; 6];
                for (i, b) in mac.iter_mut().enumerate() {
                    *b = m.read8(MMIO_CONFIG + NET_CONFIG_MAC + i as u64);
                }
                mac
            })
        })
    }

    /// The network device's MTU, if it offers one (`MTU`).
    pub fn net_mtu(&self) -> Option<u16> {
        self.has(F_MTU)
            .then(|| self.read_config(|m| m.read16(MMIO_CONFIG + NET_CONFIG_MTU)))
    }
}
