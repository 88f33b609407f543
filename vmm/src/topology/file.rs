//! The topology file as serde reads it: every section and key, with defaults left
//! as `None` for validation (`validate.rs`) to fill in. Unknown keys are rejected.

use serde::Deserialize;

use compart_acpi::Coordination;

use super::{BackendChoice, FailurePolicy, Role};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRepr {
    #[serde(default)]
    pub(super) host: HostRepr,
    #[serde(default, rename = "guest")]
    pub(super) guests: Vec<GuestRepr>,
    #[serde(default, rename = "channel")]
    pub(super) channels: Vec<ChannelRepr>,
    #[serde(default)]
    pub(super) pstates: Option<PStatesRepr>,
    #[serde(default, rename = "nic")]
    pub(super) nics: Vec<NicRepr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NicRepr {
    pub(super) guest: String,
    pub(super) tap: Option<String>,
    pub(super) host_interface: Option<String>,
    pub(super) netns: Option<String>,
    pub(super) peer_address: Option<String>,
    pub(super) mac: Option<String>,
    pub(super) mtu: Option<u32>,
    pub(super) offloads: Option<Vec<String>>,
    pub(super) queue_size: Option<u32>,
    pub(super) address: Option<String>,
    pub(super) gateway: Option<String>,
    #[serde(default)]
    pub(super) routes: Vec<RouteRepr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteRepr {
    pub(super) dest: String,
    pub(super) via: String,
}

/// A `_PSD` coordination type, spelled as [`super::coordination_name`] spells it.
fn coordination<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Coordination>, D::Error> {
    let name = String::deserialize(d)?;
    match super::coordination_from_name(&name) {
        Some(c) => Ok(Some(c)),
        None => {
            let names = super::COORDINATION_NAMES.map(|(_, n)| format!("`{n}`"));
            Err(serde::de::Error::custom(format!(
                "unknown variant `{name}`, expected one of {}",
                names.join(", ")
            )))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PStatesRepr {
    #[serde(default, deserialize_with = "coordination")]
    pub(super) coordination: Option<Coordination>,
    #[serde(default)]
    pub(super) backend: BackendChoice,
    pub(super) soft_period_us: Option<u64>,
    pub(super) ladder: Option<Vec<PStateRepr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PStateRepr {
    pub(super) mhz: u32,
    pub(super) power_mw: u32,
    pub(super) latency_us: Option<u32>,
    pub(super) bus_master_latency_us: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChannelRepr {
    pub(super) a: String,
    pub(super) b: String,
    pub(super) queue_depth: Option<u32>,
    pub(super) max_outstanding: Option<u32>,
    pub(super) buf_size: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostRepr {
    pub(super) cores: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GuestRepr {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) image: Option<String>,
    pub(super) memory_mib: Option<u32>,
    pub(super) vcpus: Option<u32>,
    pub(super) cores: Option<Vec<u32>>,
    pub(super) vcpu_cores: Option<Vec<Vec<u32>>>,
    #[serde(default)]
    pub(super) on_failure: FailurePolicy,
    #[serde(default)]
    pub(super) cmdline: String,
    #[serde(default)]
    pub(super) ppc: u32,
    pub(super) pstate: Option<u32>,
    #[serde(default, deserialize_with = "coordination")]
    pub(super) coordination: Option<Coordination>,
}
