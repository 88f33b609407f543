//! The static rules and the default policy, from the command line.
//!
//! ```text
//!  rules=RULE,RULE,…   default=deny|allow   (default: deny)
//!  RULE    = [allow:|deny:]DIR:PROTO[:PORTS][:ADDR[/LEN]]
//!  DIR     = in | out        in: packets from ip to tcp; out: from tcp to ip
//!  PROTO   = tcp | udp | icmp | any
//!  PORTS   = N | N-M | *     the destination port (tcp and udp only): for `in` the
//!                            stack's port, for `out` the other end's
//!  ADDR    = a.b.c.d[/len]   the other end's address (the source of a packet coming
//!                            in, the destination of one going out)
//! ```
//!
//! e.g. `rules=in:tcp:5201,in:tcp:8080,in:icmp,deny:out:udp:53,out:any default=deny`. The
//! first rule that matches a packet decides; without one, the default does. Rules decide
//! only for packets of no tracked connection: a packet a rule allows that opens a
//! connection (a TCP SYN, a UDP datagram, an echo request) creates a table entry, and the
//! rest of that connection then passes both ways whatever the rules say.
use alloc::vec::Vec;
use core::fmt;

use crate::flow::{Flow, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

/// Most rules a rule set holds.
pub const MAX_RULES: usize = 64;

/// Which way a packet goes through pf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// From ip up to tcp (a `Deliver`).
    In,
    /// From tcp down to ip (a `Send`).
    Out,
}

impl Dir {
    /// The other way.
    pub fn reverse(self) -> Dir {
        match self {
            Dir::In => Dir::Out,
            Dir::Out => Dir::In,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }
}

/// What a rule does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let them through.
    Allow,
    /// Refuse them.
    Deny,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// The protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Every protocol.
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP.
    Icmp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    fn matches(self, proto: u8) -> bool {
        match self {
            Proto::Any => true,
            Proto::Tcp => proto == PROTO_TCP,
            Proto::Udp => proto == PROTO_UDP,
            Proto::Icmp => proto == PROTO_ICMP,
        }
    }
}

/// One static rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// What it does.
    pub action: Action,
    /// Which way the packets it matches go.
    pub dir: Dir,
    /// Their protocol.
    pub proto: Proto,
    /// Their destination port, an inclusive range (TCP and UDP only).
    pub ports: Option<(u16, u16)>,
    /// The other end's network: address and prefix length.
    pub net: Option<([u8; 4], u8)>,
}

impl Rule {
    /// Whether the rule matches `flow` going `dir`.
    pub fn matches(&self, dir: Dir, flow: &Flow) -> bool {
        if self.dir != dir || !self.proto.matches(flow.proto) {
            return false;
        }
        if let Some((lo, hi)) = self.ports {
            if !(lo..=hi).contains(&flow.dport) {
                return false;
            }
        }
        if let Some((net, len)) = self.net {
            let mask = prefix_mask(len);
            if u32::from_be_bytes(flow.remote(dir)) & mask != u32::from_be_bytes(net) & mask {
                return false;
            }
        }
        true
    }
}

fn prefix_mask(len: u8) -> u32 {
    match len {
        0 => 0,
        l => u32::MAX << (32 - u32::from(l.min(32))),
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.action.name(),
            self.dir.name(),
            self.proto.name()
        )?;
        match self.ports {
            Some((lo, hi)) if lo == hi => write!(f, ":{lo}")?,
            Some((lo, hi)) => write!(f, ":{lo}-{hi}")?,
            None => {}
        }
        if let Some((a, len)) = self.net {
            write!(f, ":{}.{}.{}.{}/{len}", a[0], a[1], a[2], a[3])?;
        }
        Ok(())
    }
}

/// A rule set that did not parse: which rule (counting from 0) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleError {
    /// The rule's position in the list (`usize::MAX`: the default policy).
    pub index: usize,
    /// What is wrong with it.
    pub why: &'static str,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == usize::MAX {
            write!(f, "default: {}", self.why)
        } else {
            write!(f, "rule {}: {}", self.index, self.why)
        }
    }
}

/// The static rules and the default policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Action,
}

impl Rules {
    /// Every packet allowed (and tracked).
    pub fn allow_all() -> Rules {
        Rules {
            rules: Vec::new(),
            default: Action::Allow,
        }
    }

    /// Every packet denied.
    pub fn deny_all() -> Rules {
        Rules {
            rules: Vec::new(),
            default: Action::Deny,
        }
    }

    /// The rules of `rules` (comma-separated, see the module documentation; empty: none)
    /// and the policy `default` (`allow` or `deny`; `None`: deny).
    pub fn parse(rules: &str, default: Option<&str>) -> Result<Rules, RuleError> {
        let default = match default {
            None | Some("deny") => Action::Deny,
            Some("allow") => Action::Allow,
            Some(_) => {
                return Err(RuleError {
                    index: usize::MAX,
                    why: "expected allow or deny",
                })
            }
        };
        let mut out = Vec::new();
        for (index, text) in rules.split(',').filter(|r| !r.is_empty()).enumerate() {
            if index >= MAX_RULES {
                return Err(RuleError {
                    index,
                    why: "too many rules",
                });
            }
            out.push(parse_rule(text).map_err(|why| RuleError { index, why })?);
        }
        Ok(Rules {
            rules: out,
            default,
        })
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The default policy.
    pub fn default_action(&self) -> Action {
        self.default
    }

    /// What the rules say about `flow` going `dir`.
    pub fn decide(&self, dir: Dir, flow: &Flow) -> Action {
        self.rules
            .iter()
            .find(|r| r.matches(dir, flow))
            .map_or(self.default, |r| r.action)
    }
}

impl fmt::Display for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rules=")?;
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        write!(f, " default={}", self.default.name())
    }
}

fn parse_rule(text: &str) -> Result<Rule, &'static str> {
    let mut parts = text.split(':').peekable();
    let action = match parts.peek() {
        Some(&"allow") => {
            parts.next();
            Action::Allow
        }
        Some(&"deny") => {
            parts.next();
            Action::Deny
        }
        _ => Action::Allow,
    };
    let dir = match parts.next() {
        Some("in") => Dir::In,
        Some("out") => Dir::Out,
        _ => return Err("expected in or out"),
    };
    let proto = match parts.next() {
        Some("tcp") => Proto::Tcp,
        Some("udp") => Proto::Udp,
        Some("icmp") => Proto::Icmp,
        Some("any") => Proto::Any,
        _ => return Err("expected tcp, udp, icmp or any"),
    };
    let mut rule = Rule {
        action,
        dir,
        proto,
        ports: None,
        net: None,
    };
    let mut ports_seen = false;
    for part in parts {
        if part.contains('.') {
            if rule.net.is_some() {
                return Err("more than one address");
            }
            rule.net = Some(parse_net(part)?);
        } else {
            if ports_seen || rule.net.is_some() {
                return Err("ports after an address, or twice");
            }
            ports_seen = true;
            if !matches!(proto, Proto::Tcp | Proto::Udp) {
                return Err("ports need tcp or udp");
            }
            rule.ports = parse_ports(part)?;
        }
    }
    Ok(rule)
}

fn parse_ports(text: &str) -> Result<Option<(u16, u16)>, &'static str> {
    if text == "*" {
        return Ok(None);
    }
    let port = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse::<u16>().ok())
            .flatten()
            .ok_or("expected a port 0-65535")
    };
    let (lo, hi) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err("port range runs backwards");
    }
    Ok(Some((lo, hi)))
}

fn parse_net(text: &str) -> Result<([u8; 4], u8), &'static str> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (
            a,
            l.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| l.parse::<u8>().ok())
                .flatten()
                .filter(|&l| l <= 32)
                .ok_or("expected a prefix length 0-32")?,
        ),
        None => (text, 32),
    };
    let mut out = [0u8; 4];
    let mut n = 0;
    for (i, octet) in addr.split('.').enumerate() {
        if i >= 4
            || octet.is_empty()
            || octet.len() > 3
            || !octet.bytes().all(|b| b.is_ascii_digit())
        {
            return Err("expected an address a.b.c.d");
        }
        out[i] = octet.parse().map_err(|_| "expected an address a.b.c.d")?;
        n = i + 1;
    }
    if n != 4 {
        return Err("expected an address a.b.c.d");
    }
    Ok((out, len))
}
