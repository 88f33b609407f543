//! Channels between guests: one shared region per `[[channel]]` pair, mapped into both
//! guests, and one doorbell per direction with no VMM thread in its path.
//!
//! ```text
//!   guest A                                   guest B
//!   write DOORBELLS_GPA + i·4K ─ioeventfd─► eventfd A→B ─irqfd (MSI)─► vCPU 0, vector
//!                                                                 DOORBELL_VECTOR + j
//!   (and the same from B to A)
//!   region at CHANNELS_GPA + i·STRIDE  ═══ one memfd ═══  region at CHANNELS_GPA + j·STRIDE
//! ```
//!
//! `i` and `j` are the channel's positions in each guest's boot info. The kernel turns
//! a sender's doorbell write into an interrupt in the receiver; the receiver's firmware
//! only halts when it has announced that it sleeps, so the sender rings only then.

use std::sync::Arc;

use compart_abi::{
    ChannelInfo, CHANNELS_GPA, CHANNEL_STRIDE, DOORBELLS_GPA, DOORBELL_VECTOR, MAX_CHANNELS,
    PAGE_SIZE,
};
use compart_channel::host::SharedMemory;
use compart_channel::{initialize, PairLayout, Side};
use vmm_sys_util::eventfd::EventFd;

use crate::topology::{Role, Topology};

/// Why channels could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelSetupError {
    /// Creating a region or an eventfd failed.
    #[error("channel {a}-{b}: {what}")]
    Host {
        /// Side A's guest.
        a: String,
        /// Side B's guest.
        b: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The region could not be initialised.
    #[error("channel {a}-{b}: cannot initialise its region: {reason}")]
    Init {
        /// Side A's guest.
        a: String,
        /// Side B's guest.
        b: String,
        /// The cause.
        reason: String,
    },
}

/// One channel pair on the host side.
#[derive(Debug)]
pub struct Channel {
    /// The shared region.
    pub memory: Arc<SharedMemory>,
    /// Its layout.
    pub layout: PairLayout,
    /// Guest on side A and on side B.
    pub guests: [usize; 2],
    /// Doorbells: `kicks[0]` is rung by A to wake B, `kicks[1]` by B to wake A.
    pub kicks: [Arc<EventFd>; 2],
}

/// Every channel of a topology.
#[derive(Debug, Default)]
pub struct Channels {
    /// In topology order.
    pub list: Vec<Channel>,
}

/// One channel as one guest's VM is wired to it.
#[derive(Debug, Clone)]
pub struct GuestChannel {
    /// Position in the guest's boot info.
    pub slot: usize,
    /// The channel's index in the topology (and in [`Channels::list`]).
    pub index: usize,
    /// The shared region.
    pub memory: Arc<SharedMemory>,
    /// This guest's side.
    pub side: Side,
    /// The peer's name.
    pub peer: String,
    /// The peer's role.
    pub peer_role: Role,
    /// Rung by this guest (registered as ioeventfd at its doorbell page).
    pub kick_peer: Arc<EventFd>,
    /// Rung by the peer (registered as irqfd into this guest).
    pub wake_me: Arc<EventFd>,
}

impl GuestChannel {
    /// Guest-physical address of the region.
    pub fn region_gpa(&self) -> u64 {
        CHANNELS_GPA + self.slot as u64 * CHANNEL_STRIDE
    }

    /// Guest-physical address of the doorbell page.
    pub fn doorbell_gpa(&self) -> u64 {
        DOORBELLS_GPA + self.slot as u64 * PAGE_SIZE
    }

    /// Interrupt vector.
    pub fn vector(&self) -> u8 {
        DOORBELL_VECTOR + self.slot as u8
    }

    /// The boot-info entry.
    pub fn info(&self) -> ChannelInfo {
        let mut c = ChannelInfo::EMPTY;
        c.region_gpa = self.region_gpa();
        c.region_size = self.memory.len() as u64;
        c.doorbell_gpa = self.doorbell_gpa();
        c.side = match self.side {
            Side::A => ChannelInfo::SIDE_A,
            Side::B => ChannelInfo::SIDE_B,
        };
        c.vector = u32::from(self.vector());
        c.peer_len = compart_abi::fill_str_field(&mut c.peer, &self.peer).unwrap_or(0);
        c.peer_role = self.peer_role.abi() as u32;
        c
    }
}

impl Channels {
    /// Creates and initialises every channel's region and doorbells.
    pub fn create(topology: &Topology) -> Result<Channels, ChannelSetupError> {
        let mut list = Vec::new();
        for c in &topology.channels {
            let (a, b) = (
                topology.guests[c.a].name.clone(),
                topology.guests[c.b].name.clone(),
            );
            let host_err = |what| {
                let (a, b) = (a.clone(), b.clone());
                move |source| ChannelSetupError::Host { a, b, what, source }
            };
            let layout = PairLayout::new(&c.pair).map_err(|e| ChannelSetupError::Init {
                a: a.clone(),
                b: b.clone(),
                reason: e.to_string(),
            })?;
            // KVM maps whole pages.
            let len = (layout.size() as u64).next_multiple_of(PAGE_SIZE) as usize;
            let memory = SharedMemory::create(&format!("compart-{a}-{b}"), len)
                .map_err(host_err("creating its shared memory"))?;
            initialize(&memory.region(), &c.pair).map_err(|e| ChannelSetupError::Init {
                a: a.clone(),
                b: b.clone(),
                reason: e.to_string(),
            })?;
            let kick = || EventFd::new(libc::EFD_NONBLOCK).map(Arc::new);
            list.push(Channel {
                memory: Arc::new(memory),
                layout,
                guests: [c.a, c.b],
                kicks: [
                    kick().map_err(host_err("creating a doorbell eventfd"))?,
                    kick().map_err(host_err("creating a doorbell eventfd"))?,
                ],
            });
        }
        Ok(Channels { list })
    }

    /// The channels of guest `guest`, in boot-info order.
    pub fn of_guest(&self, topology: &Topology, guest: usize) -> Vec<GuestChannel> {
        topology
            .channels_of(guest)
            .into_iter()
            .take(MAX_CHANNELS)
            .enumerate()
            .map(|(slot, (index, side))| {
                let c = &self.list[index];
                let (me, peer) = match side {
                    Side::A => (0, 1),
                    Side::B => (1, 0),
                };
                GuestChannel {
                    slot,
                    index,
                    memory: c.memory.clone(),
                    side,
                    peer: topology.guests[c.guests[peer]].name.clone(),
                    peer_role: topology.guests[c.guests[peer]].role,
                    kick_peer: c.kicks[me].clone(),
                    wake_me: c.kicks[peer].clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_boot_info_role_is_a_topology_role_of_the_same_name() {
        use serde::de::{value, Deserialize, IntoDeserializer};
        for r in compart_abi::Role::ALL {
            let de: value::StrDeserializer<value::Error> = r.name().into_deserializer();
            let role = Role::deserialize(de).unwrap();
            assert_eq!(role.abi(), r);
        }
    }
}
