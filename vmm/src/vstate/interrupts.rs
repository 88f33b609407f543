//! Interrupt plumbing of one VM, all in the kernel: MSI routes from GSIs to a vCPU's
//! local APIC, irqfds (an eventfd write raises a GSI) and ioeventfds (a guest store
//! to an address signals an eventfd, with no exit to the VMM). Channels' doorbells,
//! the placement kick and, next, the NIC's queue notifies and interrupts use these.
//!
//! ```text
//!   eventfd ─irqfd─► GSI ─MSI route─► LAPIC of vCPU `dest`, vector
//!   guest store to addr ─ioeventfd (any value, or one value)─► eventfd
//! ```
//!
//! KVM replaces the whole routing table on every `KVM_SET_GSI_ROUTING` (and waits for
//! an RCU grace period each time), so routes are collected by [`MsiRoutes::add`] and
//! set in one call by [`MsiRoutes::apply`].
//!
//! The eventfds are `vmm_sys_util`'s, because `kvm-ioctls` takes that type. The
//! channel crate's `compart_channel::host::EventFd` is a different thing: a host
//! thread's `Notifier`/`Waiter` for the channel protocol (benchmarks, host tests),
//! which the VMM itself never waits on.

use kvm_bindings::{kvm_irq_routing_msi, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// First GSI the VMM routes; below are the I/O APIC's pins.
pub const FIRST_GSI: u32 = 24;

/// GSIs the VMM may route (KVM's default table size is 1024 entries; this is plenty
/// for a guest's channels, its placement kick and a NIC).
pub const MAX_ROUTED_GSIS: u32 = 64;

/// The MSI address window: fixed delivery, physical destination mode.
const MSI_ADDRESS_BASE: u32 = compart_abi::lapic::BASE_GPA as u32;

/// Why an interrupt could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// Every GSI the VMM may route is taken.
    #[error("no free GSI (the VMM routes at most {MAX_ROUTED_GSIS})")]
    NoGsi,
    /// A KVM call failed.
    #[error("{what} failed")]
    Kvm {
        /// The call.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> InterruptError {
    move |source| InterruptError::Kvm { what, source }
}

/// One MSI route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiRoute {
    /// The GSI an irqfd raises.
    pub gsi: u32,
    /// Destination local APIC id.
    pub dest_apic: u8,
    /// Interrupt vector.
    pub vector: u8,
}

impl MsiRoute {
    /// The message address and data KVM delivers: fixed delivery mode, physical
    /// destination, edge-triggered.
    fn message(&self) -> kvm_irq_routing_msi {
        kvm_irq_routing_msi {
            address_lo: MSI_ADDRESS_BASE | (u32::from(self.dest_apic) << 12),
            address_hi: 0,
            data: u32::from(self.vector),
            ..Default::default()
        }
    }
}

/// The MSI routes of one VM and the allocator of their GSIs.
#[derive(Debug, Default)]
pub struct MsiRoutes {
    routes: Vec<MsiRoute>,
}

impl MsiRoutes {
    /// Allocates a GSI routed to `vector` on local APIC `dest_apic` (set by
    /// [`MsiRoutes::apply`]).
    pub fn add(&mut self, dest_apic: u8, vector: u8) -> Result<u32, InterruptError> {
        let n = self.routes.len() as u32;
        if n >= MAX_ROUTED_GSIS {
            return Err(InterruptError::NoGsi);
        }
        let gsi = FIRST_GSI + n;
        self.routes.push(MsiRoute {
            gsi,
            dest_apic,
            vector,
        });
        Ok(gsi)
    }

    /// Every route so far.
    pub fn routes(&self) -> &[MsiRoute] {
        &self.routes
    }

    /// Sets every route in the VM's routing table, in one call.
    pub fn apply(&self, vm: &VmFd) -> Result<(), InterruptError> {
        let mut table = KvmIrqRouting::new(self.routes.len())
            .map_err(|_| kvm("KVM_SET_GSI_ROUTING")(kvm_ioctls::Error::new(libc::EINVAL)))?;
        for (entry, route) in table.as_mut_slice().iter_mut().zip(&self.routes) {
            entry.gsi = route.gsi;
            entry.type_ = KVM_IRQ_ROUTING_MSI;
            entry.u.msi = route.message();
        }
        vm.set_gsi_routing(&table)
            .map_err(kvm("KVM_SET_GSI_ROUTING"))
    }
}

/// Which guest stores an ioeventfd signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datamatch {
    /// A store of any width and value.
    Any,
    /// A 4-byte store of exactly this value (a virtio queue index, say).
    U32(u32),
    /// An 8-byte store of exactly this value.
    U64(u64),
}

/// Makes a write to `fd` raise `gsi`.
pub fn register_irqfd(vm: &VmFd, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
    vm.register_irqfd(fd, gsi).map_err(kvm("KVM_IRQFD"))
}

/// Stops `fd` raising `gsi`.
pub fn unregister_irqfd(vm: &VmFd, fd: &EventFd, gsi: u32) -> Result<(), InterruptError> {
    vm.unregister_irqfd(fd, gsi)
        .map_err(kvm("KVM_IRQFD (deassign)"))
}

/// Makes a guest store to guest-physical `gpa` (that `datamatch` selects) signal
/// `fd` in the kernel; the store does not exit to the VMM.
pub fn register_mmio_ioeventfd(
    vm: &VmFd,
    fd: &EventFd,
    gpa: u64,
    datamatch: Datamatch,
) -> Result<(), InterruptError> {
    let addr = IoEventAddress::Mmio(gpa);
    match datamatch {
        Datamatch::Any => vm.register_ioevent(fd, &addr, NoDatamatch),
        Datamatch::U32(v) => vm.register_ioevent(fd, &addr, v),
        Datamatch::U64(v) => vm.register_ioevent(fd, &addr, v),
    }
    .map_err(kvm("KVM_IOEVENTFD"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn gsis_are_handed_out_in_order_from_the_first_routed_one_until_none_is_left() {
        let mut r = MsiRoutes::default();
        assert_eq!(r.add(0, 0x40).unwrap(), FIRST_GSI);
        assert_eq!(r.add(0, 0x41).unwrap(), FIRST_GSI + 1);
        for _ in 2..MAX_ROUTED_GSIS {
            r.add(0, 0x50).unwrap();
        }
        assert!(matches!(r.add(0, 0x50), Err(InterruptError::NoGsi)));
        assert_eq!(r.routes()[1].vector, 0x41);
    }

    #[test]
    fn an_msi_message_names_the_destination_apic_and_the_vector() {
        let m = MsiRoute {
            gsi: 24,
            dest_apic: 3,
            vector: 0x41,
        }
        .message();
        assert_eq!((m.address_lo, m.address_hi, m.data), (0xfee0_3000, 0, 0x41));
    }

    /// `/dev/kvm`, or `None` when it is unusable and `COMPART_SKIP_KVM_TESTS=1` (the
    /// project's convention for tests that need KVM, as in `tests/src/lib.rs`).
    pub(crate) fn kvm_for_test() -> Option<kvm_ioctls::Kvm> {
        match kvm_ioctls::Kvm::new() {
            Ok(k) => Some(k),
            Err(e) if std::env::var("COMPART_SKIP_KVM_TESTS").as_deref() == Ok("1") => {
                eprintln!("skipping: /dev/kvm is not usable ({e})");
                None
            }
            Err(e) => panic!("/dev/kvm is not usable ({e}); set COMPART_SKIP_KVM_TESTS=1 to skip"),
        }
    }

    #[test]
    fn routes_irqfds_and_ioeventfds_with_and_without_datamatch_register_in_kvm() {
        let Some(kvm) = kvm_for_test() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let mut r = MsiRoutes::default();
        let gsi = r.add(0, 0x40).unwrap();
        r.apply(&vm).unwrap();
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        register_irqfd(&vm, &fd, gsi).unwrap();
        unregister_irqfd(&vm, &fd, gsi).unwrap();
        let bell = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        register_mmio_ioeventfd(&vm, &bell, 0xd000_0000, Datamatch::Any).unwrap();
        register_mmio_ioeventfd(&vm, &bell, 0xd000_1000, Datamatch::U32(1)).unwrap();
        register_mmio_ioeventfd(&vm, &bell, 0xd000_2000, Datamatch::U64(2)).unwrap();
        assert!(
            register_mmio_ioeventfd(&vm, &bell, 0xd000_0000, Datamatch::Any).is_err(),
            "KVM refuses the same registration twice"
        );
    }
}
