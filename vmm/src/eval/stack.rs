//! The stack a figure measures: a base topology (built in, or the user's) and, for each
//! point, the topology text with every server's P-state and core written in.

use std::collections::BTreeMap;

use compart_acpi::{ladder, Mhz};

/// The thesis's AMD machine ran from 1900 down to 800 MHz: fmin ≈ 0.42·fmax.
pub const FMIN_FRACTION: f64 = 800.0 / 1900.0;

/// The network stack without a packet filter (the thesis's AMD runs): driver → ip →
/// tcp → posix → iperf3, placed as `topologies/iperf.toml` places it.
pub const BASE_NO_PF: &str = r#"
[host]
cores = [0, 1]

[[guest]]
name = "driver"
role = "driver"
image = "driver"
memory_mib = 16
cores = [0]

[[guest]]
name = "ip"
role = "ip"
image = "ip"
memory_mib = 16
cores = [1]

[[guest]]
name = "tcp"
role = "tcp"
image = "tcp"
memory_mib = 64
cores = [1]
cmdline = "sockets=32 buf=256"

[[guest]]
name = "posix"
role = "posix"
image = "posix"
memory_mib = 16
cores = [0]

[[guest]]
name = "iperf3"
role = "app"
image = "iperf3"
memory_mib = 32
cores = [0]
cmdline = "mode=server port=5201 interval=0"

[[channel]]
a = "driver"
b = "ip"
buf_size = 65600

[[channel]]
a = "ip"
b = "tcp"
buf_size = 65600

[[channel]]
a = "tcp"
b = "posix"
buf_size = 65600

[[channel]]
a = "posix"
b = "iperf3"
buf_size = 65600

[[nic]]
guest = "driver"
tap = "cpt-eval0"
netns = "cpt-eval"
peer_address = "198.18.0.1/24"
mac = "02:00:00:00:00:02"
queue_size = 256
address = "198.18.0.2/24"
gateway = "198.18.0.1"
"#;

/// The stack with the packet filter between ip and tcp (the thesis's Intel runs),
/// placed as `topologies/default.toml` places it.
pub const BASE_PF: &str = r#"
[host]
cores = [0, 1]

[[guest]]
name = "driver"
role = "driver"
image = "driver"
memory_mib = 16
cores = [0]

[[guest]]
name = "ip"
role = "ip"
image = "ip"
memory_mib = 16
cores = [0]

[[guest]]
name = "pf"
role = "pf"
image = "pf"
memory_mib = 16
cores = [1]
cmdline = "rules=in:tcp:5201,in:icmp default=deny"

[[guest]]
name = "tcp"
role = "tcp"
image = "tcp"
memory_mib = 64
cores = [1]
cmdline = "sockets=32 buf=256"

[[guest]]
name = "posix"
role = "posix"
image = "posix"
memory_mib = 16
cores = [1]

[[guest]]
name = "iperf3"
role = "app"
image = "iperf3"
memory_mib = 32
cores = [0]
cmdline = "mode=server port=5201 interval=0"

[[channel]]
a = "driver"
b = "ip"
buf_size = 65600

[[channel]]
a = "ip"
b = "pf"
buf_size = 65600

[[channel]]
a = "pf"
b = "tcp"
buf_size = 65600

[[channel]]
a = "tcp"
b = "posix"
buf_size = 65600

[[channel]]
a = "posix"
b = "iperf3"
buf_size = 65600

[[nic]]
guest = "driver"
tap = "cpt-eval0"
netns = "cpt-eval"
peer_address = "198.18.0.1/24"
mac = "02:00:00:00:00:02"
queue_size = 256
address = "198.18.0.2/24"
gateway = "198.18.0.1"
"#;

/// The servers in the order of the thesis's tuples (POSIX×TCP×PF×IP×DRIVER).
pub const TUPLE_ORDER: [&str; 5] = ["posix", "tcp", "pf", "ip", "driver"];

/// One point's settings: P-state per server role (absent: P0), and where each role
/// runs (`None`: where the base topology puts it). Role `app` stands for every
/// application guest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// P-state index per role.
    pub pstates: BTreeMap<String, u32>,
    /// Core groups: the roles on each host core.
    pub placement: Option<Vec<(Vec<String>, u32)>>,
}

impl Config {
    /// Every server at P0, placed as the base topology says.
    pub fn base() -> Config {
        Config::default()
    }

    /// This config with `role` at P-state `p`.
    pub fn at(mut self, role: &str, p: u32) -> Config {
        if p == 0 {
            self.pstates.remove(role);
        } else {
            self.pstates.insert(role.to_string(), p);
        }
        self
    }

    /// This config with each group of roles on its core.
    pub fn placed(mut self, groups: &[(&[&str], u32)]) -> Config {
        self.placement = Some(
            groups
                .iter()
                .map(|(g, c)| (g.iter().map(|s| s.to_string()).collect(), *c))
                .collect(),
        );
        self
    }

    /// The P-state of `role`.
    pub fn pstate(&self, role: &str) -> u32 {
        self.pstates.get(role).copied().unwrap_or(0)
    }
}

/// A base topology and what the figures need to know of it.
#[derive(Debug, Clone)]
pub struct Stack {
    base: toml::Table,
    /// (name, role) of every guest, in file order.
    pub guests: Vec<(String, String)>,
    /// The network namespace of the NIC, where iperf3 runs.
    pub netns: String,
    /// The stack's address.
    pub addr: String,
    /// The iperf3 server's port.
    pub port: u16,
    /// The ladder, MHz, P0 first.
    pub ladder: Vec<u32>,
}

/// The ladder eval writes when the base topology has none: `steps` P-states evenly
/// from `fmax` down to [`FMIN_FRACTION`] of it.
pub fn default_ladder(fmax: u32, steps: u32) -> Vec<u32> {
    let fmin = (f64::from(fmax) * FMIN_FRACTION).round() as u32;
    ladder::spread(Mhz(fmax), Mhz(fmin), steps.max(2))
        .into_iter()
        .map(|m| m.0)
        .collect()
}

fn str_of<'a>(t: &'a toml::Table, key: &str) -> Option<&'a str> {
    t.get(key).and_then(|v| v.as_str())
}

impl Stack {
    /// Reads a base topology's text. Its `[pstates]` ladder is used if it has one,
    /// else `ladder` is written in; the backend is set to soft scaling unless named.
    pub fn new(text: &str, ladder: &[u32]) -> Result<Stack, String> {
        let mut base: toml::Table = text
            .parse()
            .map_err(|e| format!("the base topology is not TOML: {e}"))?;
        let guests: Vec<(String, String)> = base
            .get("guest")
            .and_then(|g| g.as_array())
            .ok_or("the base topology has no [[guest]]")?
            .iter()
            .filter_map(|g| g.as_table())
            .map(|g| {
                (
                    str_of(g, "name").unwrap_or("").to_string(),
                    str_of(g, "role").unwrap_or("").to_string(),
                )
            })
            .collect();
        let app = base["guest"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_table())
            .find(|g| str_of(g, "role") == Some("app") && str_of(g, "image") == Some("iperf3"))
            .ok_or(
                "the base topology has no iperf3 application (role \"app\", image \"iperf3\")",
            )?;
        let cmdline = str_of(app, "cmdline").unwrap_or("");
        if cmdline.split_whitespace().any(|w| w == "mode=client") {
            return Err(
                "the base topology's iperf3 application is a client; eval needs mode=server".into(),
            );
        }
        let port = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("port="))
            .map_or(Ok(5201), |p| p.parse::<u16>())
            .map_err(|_| "the iperf3 application's port= is not a port")?;
        let nic = base
            .get("nic")
            .and_then(|n| n.as_array())
            .and_then(|n| n.first())
            .and_then(|n| n.as_table())
            .ok_or("the base topology has no [[nic]]")?;
        let netns = str_of(nic, "netns")
            .ok_or("the base topology's NIC has no netns (eval runs iperf3 in it)")?
            .to_string();
        let addr = str_of(nic, "address")
            .and_then(|a| a.split('/').next())
            .ok_or("the base topology's NIC has no address")?
            .to_string();
        for (_, role) in &guests {
            if role.is_empty() {
                return Err("a guest of the base topology has no role".into());
            }
        }
        let pstates = base
            .entry("pstates")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or("[pstates] is not a table")?;
        pstates
            .entry("backend")
            .or_insert_with(|| toml::Value::String("soft".into()));
        let ladder: Vec<u32> = match pstates.get("ladder").and_then(|l| l.as_array()) {
            Some(l) => l
                .iter()
                .map(|e| {
                    e.get("mhz")
                        .and_then(|m| m.as_integer())
                        .and_then(|m| u32::try_from(m).ok())
                        .ok_or("a [pstates] ladder entry has no mhz")
                })
                .collect::<Result<_, _>>()?,
            None => {
                let fmax = f64::from(*ladder.first().ok_or("empty ladder")?);
                let entries = ladder
                    .iter()
                    .map(|&mhz| {
                        let r = f64::from(mhz) / fmax;
                        let mut e = toml::Table::new();
                        e.insert("mhz".into(), toml::Value::Integer(i64::from(mhz)));
                        e.insert(
                            "power_mw".into(),
                            toml::Value::Integer((10_000.0 * r * r * r).round().max(1.0) as i64),
                        );
                        toml::Value::Table(e)
                    })
                    .collect();
                pstates.insert("ladder".into(), toml::Value::Array(entries));
                ladder.to_vec()
            }
        };
        if ladder.len() < 2 {
            return Err("the ladder needs at least two P-states".into());
        }
        Ok(Stack {
            base,
            guests,
            netns,
            addr,
            port,
            ladder,
        })
    }

    /// Whether a guest of `role` is in the stack.
    pub fn has(&self, role: &str) -> bool {
        self.guests.iter().any(|(_, r)| r == role)
    }

    /// The servers present, in tuple order.
    pub fn servers(&self) -> Vec<&'static str> {
        TUPLE_ORDER.into_iter().filter(|r| self.has(r)).collect()
    }

    /// The lowest P-state's index.
    pub fn pmin(&self) -> u32 {
        self.ladder.len() as u32 - 1
    }

    /// MHz of P-state `p`.
    pub fn mhz(&self, p: u32) -> u32 {
        self.ladder[(p as usize).min(self.ladder.len() - 1)]
    }

    /// The thesis's tuple: each server's MHz in POSIX×TCP×[PF×]IP×DRIVER order.
    pub fn tuple(&self, c: &Config) -> String {
        let v: Vec<String> = self
            .servers()
            .iter()
            .map(|r| self.mhz(c.pstate(r)).to_string())
            .collect();
        format!("{} MHz", v.join("×"))
    }

    /// The name of the tuple's order, `POSIX×TCP×IP×DRIVER`.
    pub fn tuple_order(&self) -> String {
        let v: Vec<String> = self.servers().iter().map(|r| r.to_uppercase()).collect();
        v.join("×")
    }

    /// The topology text for `c`.
    pub fn topology(&self, c: &Config) -> Result<String, String> {
        let mut t = self.base.clone();
        let guests = t
            .get_mut("guest")
            .and_then(|g| g.as_array_mut())
            .ok_or("no [[guest]]")?;
        for g in guests.iter_mut().filter_map(|g| g.as_table_mut()) {
            let role = str_of(g, "role").unwrap_or("").to_string();
            let p = c.pstate(&role);
            g.insert("ppc".into(), toml::Value::Integer(i64::from(p)));
            g.insert("pstate".into(), toml::Value::Integer(i64::from(p)));
            if let Some(groups) = &c.placement {
                let core = groups
                    .iter()
                    .find(|(roles, _)| roles.contains(&role))
                    .map(|(_, core)| *core)
                    .ok_or_else(|| format!("the placement puts no core under role {role}"))?;
                g.remove("vcpu_cores");
                g.insert(
                    "cores".into(),
                    toml::Value::Array(vec![toml::Value::Integer(i64::from(core))]),
                );
            }
        }
        if c.placement.is_some() {
            // The cores named must be the stack's.
            let mut cores: Vec<u32> = c
                .placement
                .iter()
                .flatten()
                .map(|(_, core)| *core)
                .collect();
            cores.sort_unstable();
            cores.dedup();
            let host = t
                .entry("host")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or("[host] is not a table")?;
            let mut all: Vec<u32> = host
                .get("cores")
                .and_then(|c| c.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_integer())
                        .filter_map(|v| u32::try_from(v).ok())
                        .collect()
                })
                .unwrap_or_default();
            if !all.is_empty() {
                all.extend(cores);
                all.sort_unstable();
                all.dedup();
                host.insert(
                    "cores".into(),
                    toml::Value::Array(
                        all.into_iter()
                            .map(|c| toml::Value::Integer(i64::from(c)))
                            .collect(),
                    ),
                );
            }
        }
        toml::to_string(&t).map_err(|e| format!("writing the topology: {e}"))
    }

    /// Where `c` puts the guests, in the notation of the plots: the guests of one core
    /// joined by `+`, cores apart by ` | `.
    pub fn placement_label(&self, c: &Config) -> String {
        let text = match self.topology(c) {
            Ok(t) => t,
            Err(e) => return e,
        };
        let t: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(_) => return String::new(),
        };
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for g in t["guest"].as_array().into_iter().flatten() {
            let name = g.get("name").and_then(|n| n.as_str()).unwrap_or("?");
            let cores = g.get("cores").map_or("all".to_string(), |c| c.to_string());
            match groups.iter_mut().find(|(c, _)| *c == cores) {
                Some((_, names)) => names.push(name.to_string()),
                None => groups.push((cores, vec![name.to_string()])),
            }
        }
        let v: Vec<String> = groups.into_iter().map(|(_, n)| n.join("+")).collect();
        v.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ladder_spans_fmax_to_the_thesis_fraction() {
        assert_eq!(default_ladder(1900, 5), vec![1900, 1625, 1350, 1075, 800]);
        assert_eq!(default_ladder(2000, 2), vec![2000, 842]);
    }

    #[test]
    fn a_point_writes_pstates_and_cores_into_the_topology() {
        let s = Stack::new(BASE_PF, &[2000, 1500, 840]).unwrap();
        assert_eq!(s.servers(), vec!["posix", "tcp", "pf", "ip", "driver"]);
        assert_eq!(
            (s.netns.as_str(), s.addr.as_str(), s.port),
            ("cpt-eval", "198.18.0.2", 5201)
        );
        let c = Config::base().at("ip", 2).at("tcp", 1);
        assert_eq!(s.tuple(&c), "2000×1500×2000×840×2000 MHz");
        assert_eq!(s.tuple_order(), "POSIX×TCP×PF×IP×DRIVER");
        let text = s.topology(&c).unwrap();
        let t: toml::Table = text.parse().unwrap();
        let ip = t["guest"].as_array().unwrap()[1].as_table().unwrap();
        assert_eq!(ip["ppc"].as_integer(), Some(2));
        assert_eq!(t["pstates"]["backend"].as_str(), Some("soft"));
        assert_eq!(t["pstates"]["ladder"].as_array().unwrap().len(), 3);
        assert_eq!(s.placement_label(&c), "driver+ip+iperf3 | pf+tcp+posix");
        let c = c.placed(&[(&["ip", "tcp"], 1), (&["driver", "pf", "posix", "app"], 0)]);
        assert_eq!(s.placement_label(&c), "driver+pf+posix+iperf3 | ip+tcp");
        let bad = Config::base().placed(&[(&["ip"], 1)]);
        assert!(s.topology(&bad).unwrap_err().contains("role driver"));
    }

    #[test]
    fn a_base_without_iperf3_server_or_netns_is_refused() {
        let no_app = BASE_NO_PF.replace("image = \"iperf3\"", "image = \"echo\"");
        assert!(Stack::new(&no_app, &[2, 1])
            .unwrap_err()
            .contains("no iperf3"));
        let no_ns = BASE_NO_PF.replace("netns = \"cpt-eval\"\n", "");
        assert!(Stack::new(&no_ns, &[2, 1]).unwrap_err().contains("netns"));
        assert!(Stack::new(BASE_NO_PF, &[2]).unwrap_err().contains("two"));
    }
}
