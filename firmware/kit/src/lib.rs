//! The parts of the compart server kit that need no hardware: the firmware
//! (`compart-firmware`) re-exports them with the guest's boot info and idle wait plugged
//! in, and they are unit-tested here, on the host, against host-side channel regions.
//!
//! - [`server`]: the receive loop with per-channel [`Handler`](server::Handler)s
//!   (`firmware::server`);
//! - [`cmdline`]: typed `key=value` arguments (`firmware::cmdline`);
//! - [`counters`]: per-reason counters declared once, printed as `name=value`;
//! - [`clock`]: the millisecond [`clock::Instant`] that server logic takes its time as.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod clock;
pub mod cmdline;
pub mod counters;
pub mod server;
