//! The status report behind `ctl status`: per guest its state, vCPUs (thread, cores,
//! placement, P-state, exits), channels (queue depths, totals), NICs (device and
//! thread counters) and the events it caused.

use std::sync::atomic::Ordering;

use super::{GuestState, RunningNic, RunningVmm};
use crate::control::{
    ChannelStatus, ChannelTotals, EventTotals, GuestStatus, NicStatus, QueueDepth, StateReport,
    StatusReport, VcpuStatus,
};
use crate::guest_events::EventKind;

impl RunningVmm {
    /// Per guest its state, per vCPU its thread, cores, placement, P-state and exits,
    /// per channel the current queue depths and the totals, and the events it caused.
    pub(super) fn status(&self) -> StatusReport {
        let pstates = self.pstates.status();
        let assignment = self.assignment.read().unwrap();
        let guests = self
            .guests
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let vcpus = g
                    .threads
                    .iter()
                    .map(|t| {
                        let v = t.index as usize;
                        let p = pstates
                            .iter()
                            .find(|p| p.guest == g.config.name && p.vcpu == v);
                        VcpuStatus {
                            index: t.index,
                            tid: t.tid.load(Ordering::Acquire),
                            cores: assignment.vcpu(i, v).to_vec(),
                            dedicated: self.placement[i][v].dedicated == 1,
                            pstate: p.map_or(0, |p| p.effective),
                            requested: p.map_or(0, |p| p.requested),
                            ppc: p.map_or(0, |p| p.ppc),
                            mhz: p.map_or(0, |p| p.mhz),
                            backend: p.map_or("?", |p| p.backend).to_string(),
                            exits: t.exits.load(Ordering::Relaxed),
                        }
                    })
                    .collect();
                let channels = g
                    .wiring
                    .channels
                    .iter()
                    .map(|c| {
                        let layout = &self.channels.list[c.index].layout;
                        let region = c.memory.region();
                        let o = compart_channel::occupancy(&region, layout, c.side);
                        let n = compart_channel::counters(&region, layout, c.side);
                        let t = compart_channel::totals(&region, layout, c.side);
                        ChannelStatus {
                            peer: c.peer.clone(),
                            side: match c.side {
                                compart_channel::Side::A => "a",
                                compart_channel::Side::B => "b",
                            }
                            .to_string(),
                            depth: QueueDepth {
                                requests_in: o.requests_in,
                                requests_out: o.requests_out,
                                replies_in: o.replies_in,
                                replies_out: o.replies_out,
                            },
                            totals: ChannelTotals {
                                requests_sent: t.requests_sent,
                                requests_received: t.requests_received,
                                replies_sent: t.replies_sent,
                                replies_received: t.replies_received,
                                sleeps: n.sleeps,
                                kicks: n.kicks,
                            },
                        }
                    })
                    .collect();
                let nics = self
                    .nics
                    .iter()
                    .filter(|n| n.guest == i)
                    .map(|n| self.nic_status(n))
                    .collect();
                let events = &g.shared.events;
                GuestStatus {
                    name: g.config.name.clone(),
                    role: g.config.role.to_string(),
                    state: match &g.state {
                        GuestState::Running => StateReport::Running,
                        GuestState::Exited(status) => StateReport::Exited { status: *status },
                        GuestState::Failed(f) => StateReport::Failed {
                            failure: f.to_string(),
                        },
                        GuestState::Stopped => StateReport::Stopped,
                    },
                    vcpus,
                    channels,
                    nics,
                    events: EventTotals {
                        refused_msr_writes: events.total(EventKind::RefusedMsrWrite),
                        pstate_changes: events.total(EventKind::PStateChange),
                        refused_descriptor_chains: events.total(EventKind::RefusedDescriptorChain),
                        refused_device_accesses: events.total(EventKind::RefusedDeviceAccess),
                    },
                }
            })
            .collect();
        StatusReport { guests }
    }

    fn nic_status(&self, n: &RunningNic) -> NicStatus {
        let config = &self.topology.nics[n.index];
        let d = n.device.lock().unwrap_or_else(|p| p.into_inner());
        let net = d.device();
        let c = net.counters();
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        NicStatus {
            name: config.host_name().to_string(),
            netns: config.netns.clone(),
            active: d.is_active(),
            features: net.acked_features().unwrap_or(0),
            thread_tid: n.thread.tid(),
            running: n.thread.is_running(),
            tx_packets: get(&c.tx_packets),
            tx_bytes: get(&c.tx_bytes),
            tx_drops: get(&c.tx_drops),
            rx_packets: get(&c.rx_packets),
            rx_bytes: get(&c.rx_bytes),
            rx_drops: get(&c.rx_drops),
            bad_chains: get(&c.bad_chains),
            refused_accesses: get(&d.refused()),
            notifications: get(&c.notifications),
            interrupts: get(&c.interrupts),
            wakeups: get(&c.wakeups),
            busy_us: get(&c.busy_ns) / 1000,
        }
    }
}
