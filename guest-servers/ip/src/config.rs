//! The interface's IPv4 configuration and the route table.
//!
//! The configuration comes from the boot info (`BootInfo.ipv4`, which the VMM fills in
//! from the topology's `[[nic]]`), or from the command line (`addr=198.18.0.2/24
//! gw=198.18.0.1`, for tests). Routing is a longest-prefix match over the connected
//! network (delivered directly), the static routes, and the default gateway (prefix 0).
use alloc::vec::Vec;
use core::fmt;

use compart_abi::Ipv4Config;
use smoltcp::wire::{Ipv4Address, Ipv4Cidr};

/// A static route: packets for `dest` go to the router `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination network (its address is the network's: host bits cleared).
    pub dest: Ipv4Cidr,
    /// The next hop, on the connected network.
    pub via: Ipv4Address,
}

/// The interface's address, its connected network, and how to reach the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The stack's address and the connected network's prefix.
    pub cidr: Ipv4Cidr,
    /// The default router, on the connected network.
    pub gateway: Option<Ipv4Address>,
    /// Static routes, each via a router on the connected network.
    pub routes: Vec<Route>,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// No address was given.
    Missing,
    /// `addr=` is not `a.b.c.d/len` with a unicast address and a length of 1–32.
    BadAddress,
    /// The gateway is not a unicast address on the connected network.
    BadGateway,
    /// A route's router is not on the connected network, or its prefix is over 32.
    BadRoute(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing => f.write_str("no IPv4 address (boot info or addr=)"),
            ConfigError::BadAddress => {
                f.write_str("the address is not a unicast a.b.c.d/len with len 1-32")
            }
            ConfigError::BadGateway => {
                f.write_str("the gateway is not a unicast address on the connected network")
            }
            ConfigError::BadRoute(i) => {
                write!(f, "route {i}: its router is not on the connected network")
            }
        }
    }
}

/// Whether `a` can be a host's address (not unspecified, broadcast, multicast,
/// loopback or class E).
pub fn is_unicast(a: Ipv4Address) -> bool {
    let o = a.octets();
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || o[0] == 127 || o[0] >= 240)
}

/// `a.b.c.d`.
pub fn parse_address(s: &str) -> Option<Ipv4Address> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts
        .next()
        .is_none()
        .then(|| Ipv4Address::from_octets(octets))
}

/// `a.b.c.d/len`, len 0–32.
pub fn parse_cidr(s: &str) -> Option<Ipv4Cidr> {
    let (addr, len) = s.split_once('/')?;
    if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let addr = parse_address(addr)?;
    (len <= 32).then(|| Ipv4Cidr::new(addr, len))
}

impl Settings {
    /// Settings with `cidr` as the address and connected network, checked.
    pub fn new(
        cidr: Ipv4Cidr,
        gateway: Option<Ipv4Address>,
        routes: Vec<Route>,
    ) -> Result<Settings, ConfigError> {
        if !is_unicast(cidr.address()) || cidr.prefix_len() == 0 {
            return Err(ConfigError::BadAddress);
        }
        let on_link = |a: Ipv4Address| is_unicast(a) && cidr.contains_addr(&a);
        if gateway.is_some_and(|g| !on_link(g) || g == cidr.address()) {
            return Err(ConfigError::BadGateway);
        }
        let mut checked = Vec::with_capacity(routes.len());
        for (i, r) in routes.into_iter().enumerate() {
            if !on_link(r.via) || r.via == cidr.address() {
                return Err(ConfigError::BadRoute(i));
            }
            checked.push(Route {
                dest: r.dest.network(),
                via: r.via,
            });
        }
        Ok(Settings {
            cidr,
            gateway,
            routes: checked,
        })
    }

    /// The configuration the VMM put in the boot info.
    pub fn from_boot_info(c: &Ipv4Config) -> Result<Settings, ConfigError> {
        if !c.is_set() {
            return Err(ConfigError::Missing);
        }
        if c.prefix_len > 32 {
            return Err(ConfigError::BadAddress);
        }
        let cidr = Ipv4Cidr::new(Ipv4Address::from_octets(c.address), c.prefix_len);
        let gateway = (c.has_gateway != 0).then(|| Ipv4Address::from_octets(c.gateway));
        let mut routes = Vec::new();
        for (i, r) in c.routes().iter().enumerate() {
            if r.prefix_len > 32 {
                return Err(ConfigError::BadRoute(i));
            }
            routes.push(Route {
                dest: Ipv4Cidr::new(Ipv4Address::from_octets(r.dest), r.prefix_len),
                via: Ipv4Address::from_octets(r.via),
            });
        }
        Settings::new(cidr, gateway, routes)
    }

    /// `base` with the command line's `addr=` and `gw=` (either may be `None`) in place
    /// of its address and gateway; `base` may be missing when `addr` is given.
    pub fn with_override(
        base: Result<Settings, ConfigError>,
        addr: Option<&str>,
        gw: Option<&str>,
    ) -> Result<Settings, ConfigError> {
        if addr.is_none() && gw.is_none() {
            return base;
        }
        let base = base.ok();
        let cidr = match addr {
            Some(a) => parse_cidr(a).ok_or(ConfigError::BadAddress)?,
            None => base.as_ref().ok_or(ConfigError::Missing)?.cidr,
        };
        let gateway = match gw {
            Some(g) => Some(parse_address(g).ok_or(ConfigError::BadGateway)?),
            None => base.as_ref().and_then(|b| b.gateway),
        };
        let routes = base.map(|b| b.routes).unwrap_or_default();
        Settings::new(cidr, gateway, routes)
    }

    /// The stack's address.
    pub fn address(&self) -> Ipv4Address {
        self.cidr.address()
    }

    /// Whether `a` is a broadcast address for the connected network (the limited
    /// broadcast, or the network's directed one).
    pub fn is_broadcast(&self, a: Ipv4Address) -> bool {
        a.is_broadcast() || self.cidr.broadcast() == Some(a)
    }

    /// The neighbour a packet for `dst` goes to: `dst` itself on the connected
    /// network, else the router of the longest matching route (the gateway matches
    /// everything, with prefix 0). `None`: no route.
    pub fn next_hop(&self, dst: Ipv4Address) -> Option<Ipv4Address> {
        let mut best: Option<(u8, Ipv4Address)> = None;
        let mut consider = |len: u8, via: Ipv4Address| {
            if best.is_none_or(|(l, _)| len > l) {
                best = Some((len, via));
            }
        };
        if self.cidr.contains_addr(&dst) {
            consider(self.cidr.prefix_len(), dst);
        }
        for r in &self.routes {
            if r.dest.contains_addr(&dst) {
                consider(r.dest.prefix_len(), r.via);
            }
        }
        if let Some(g) = self.gateway {
            consider(0, g);
        }
        best.map(|(_, via)| via)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use compart_abi::Ipv4Route;

    fn a(s: &str) -> Ipv4Address {
        parse_address(s).unwrap()
    }

    #[test]
    fn addresses_and_prefixes_parse_strictly() {
        assert_eq!(
            parse_address("198.18.0.2"),
            Some(Ipv4Address::new(198, 18, 0, 2))
        );
        for bad in [
            "198.18.0",
            "198.18.0.2.1",
            "198.18.0.256",
            "1..2.3",
            "+1.2.3.4",
            "01234.1.1.1",
        ] {
            assert_eq!(parse_address(bad), None, "{bad}");
        }
        assert_eq!(
            parse_cidr("198.18.0.2/24").map(|c| c.prefix_len()),
            Some(24)
        );
        for bad in [
            "198.18.0.2",
            "198.18.0.2/33",
            "198.18.0.2/",
            "198.18.0.2/-1",
            "x/24",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_the_gateway_catches_the_rest() {
        let s = Settings::new(
            parse_cidr("198.18.0.2/24").unwrap(),
            Some(a("198.18.0.1")),
            vec![
                Route {
                    dest: parse_cidr("10.0.0.0/8").unwrap(),
                    via: a("198.18.0.10"),
                },
                Route {
                    dest: parse_cidr("10.1.2.99/24").unwrap(),
                    via: a("198.18.0.11"),
                },
            ],
        )
        .unwrap();
        assert_eq!(s.next_hop(a("198.18.0.77")), Some(a("198.18.0.77")));
        assert_eq!(s.next_hop(a("10.9.9.9")), Some(a("198.18.0.10")));
        assert_eq!(s.next_hop(a("10.1.2.3")), Some(a("198.18.0.11")));
        assert_eq!(s.next_hop(a("8.8.8.8")), Some(a("198.18.0.1")));
        let no_gw = Settings::new(s.cidr, None, vec![]).unwrap();
        assert_eq!(no_gw.next_hop(a("8.8.8.8")), None);
        assert!(s.is_broadcast(a("198.18.0.255")) && s.is_broadcast(a("255.255.255.255")));
        assert!(!s.is_broadcast(a("198.18.0.254")));
    }

    #[test]
    fn routers_off_the_connected_network_and_odd_addresses_are_refused() {
        let cidr = parse_cidr("198.18.0.2/24").unwrap();
        assert_eq!(
            Settings::new(cidr, Some(a("198.19.0.1")), vec![]),
            Err(ConfigError::BadGateway)
        );
        let route = Route {
            dest: parse_cidr("10.0.0.0/8").unwrap(),
            via: a("10.0.0.1"),
        };
        assert_eq!(
            Settings::new(cidr, None, vec![route]),
            Err(ConfigError::BadRoute(0))
        );
        for bad in ["224.0.0.1/24", "0.0.0.0/8", "127.0.0.1/8", "198.18.0.2/0"] {
            assert_eq!(
                Settings::new(parse_cidr(bad).unwrap(), None, vec![]),
                Err(ConfigError::BadAddress),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_boot_info_is_read_and_the_command_line_overrides_it() {
        let mut c = Ipv4Config::EMPTY;
        assert_eq!(Settings::from_boot_info(&c), Err(ConfigError::Missing));
        c.address = [198, 18, 0, 2];
        c.prefix_len = 24;
        c.has_gateway = 1;
        c.gateway = [198, 18, 0, 1];
        c.route_count = 1;
        c.routes[0] = Ipv4Route {
            dest: [10, 0, 0, 0],
            prefix_len: 8,
            _reserved: [0; 3],
            via: [198, 18, 0, 9],
        };
        let s = Settings::from_boot_info(&c).unwrap();
        assert_eq!(s.address(), a("198.18.0.2"));
        assert_eq!(s.next_hop(a("10.2.3.4")), Some(a("198.18.0.9")));
        let o = Settings::with_override(Ok(s.clone()), Some("198.18.0.5/24"), None).unwrap();
        assert_eq!((o.address(), o.gateway), (a("198.18.0.5"), s.gateway));
        let o = Settings::with_override(
            Err(ConfigError::Missing),
            Some("10.0.0.2/8"),
            Some("10.0.0.1"),
        )
        .unwrap();
        assert_eq!(o.gateway, Some(a("10.0.0.1")));
        assert_eq!(
            Settings::with_override(Err(ConfigError::Missing), None, Some("10.0.0.1")),
            Err(ConfigError::Missing)
        );
        c.prefix_len = 40;
        assert_eq!(Settings::from_boot_info(&c), Err(ConfigError::BadAddress));
    }
}
