//! This guest's command line as typed `key=value` arguments (the parser is
//! `compart_kit::cmdline`, host-tested there).

pub use compart_kit::cmdline::*;

use crate::boot_info;

/// The arguments the VMM handed over in the boot info.
pub fn args() -> Args<'static> {
    Args::new(boot_info().cmdline())
}
