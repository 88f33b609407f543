//! Rules and connection table together: one verdict per packet.
//!
//! ```text
//!  packet ─► parse (malformed, fragment: refused)
//!         ─► an ICMP error quoting a packet of a tracked connection: pass (related)
//!         ─► its connection tracked: pass, the entry advanced (TCP flags, timeout)
//!         ─► the rules (first match, else the default): deny ─► refused
//!            allow ─► opens a connection? a new entry (table full: refused) ─► pass
//! ```
use compart_proto::packet::DropReason;

use crate::conntrack::Conntrack;
use crate::counters::Counters;
use crate::flow::{self, Key, Kind, ParseError};
use crate::rules::{Action, Dir, Rules};
use crate::{Instant, Limits};

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not valid IPv4, or its transport header does not fit.
    Malformed,
    /// A fragment.
    Fragment,
    /// A rule or the default policy.
    Rule,
    /// It would open a connection and the table is full.
    TableFull,
}

impl Refusal {
    /// The reason given to the peer that sent the packet.
    pub fn drop_reason(self) -> DropReason {
        match self {
            Refusal::Malformed | Refusal::Fragment => DropReason::Malformed,
            Refusal::Rule => DropReason::Refused,
            Refusal::TableFull => DropReason::NoRoom,
        }
    }
}

/// The filter's decision about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Pass,
    /// Refuse it.
    Refuse(Refusal),
}

/// The stateful filter.
#[derive(Debug, Clone)]
pub struct Filter {
    rules: Rules,
    table: Conntrack,
    counters: Counters,
}

impl Filter {
    /// A filter of `rules`, its table bounded by `limits`.
    pub fn new(rules: Rules, limits: Limits) -> Filter {
        Filter {
            rules,
            table: Conntrack::new(limits),
            counters: Counters::default(),
        }
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The connection table.
    pub fn table(&self) -> &Conntrack {
        &self.table
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The counters, to count what the relay sees.
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    /// Take expired connections out (see [`Conntrack::expire`]).
    pub fn poll(&mut self, now: Instant) {
        self.table.expire(now);
        self.counters.conn_expired = self.table.expired();
    }

    /// When [`poll`](Self::poll) next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.table.next_deadline()
    }

    /// The verdict on `packet` (an IPv4 packet, the whole payload of its message) going
    /// `dir`; counted.
    pub fn check(&mut self, dir: Dir, packet: &[u8], now: Instant) -> Verdict {
        let v = self.decide(dir, packet, now);
        let c = &mut self.counters;
        c.conn_expired = self.table.expired();
        let n = match (v, dir) {
            (Verdict::Pass, Dir::In) => &mut c.in_passed,
            (Verdict::Pass, Dir::Out) => &mut c.out_passed,
            (Verdict::Refuse(Refusal::Malformed), Dir::In) => &mut c.in_malformed,
            (Verdict::Refuse(Refusal::Malformed), Dir::Out) => &mut c.out_malformed,
            (Verdict::Refuse(Refusal::Fragment), Dir::In) => &mut c.in_fragment,
            (Verdict::Refuse(Refusal::Fragment), Dir::Out) => &mut c.out_fragment,
            (Verdict::Refuse(Refusal::Rule), Dir::In) => &mut c.in_denied_rule,
            (Verdict::Refuse(Refusal::Rule), Dir::Out) => &mut c.out_denied_rule,
            (Verdict::Refuse(Refusal::TableFull), Dir::In) => &mut c.in_table_full,
            (Verdict::Refuse(Refusal::TableFull), Dir::Out) => &mut c.out_table_full,
        };
        *n += 1;
        v
    }

    fn decide(&mut self, dir: Dir, packet: &[u8], now: Instant) -> Verdict {
        let flow = match flow::parse(packet) {
            Ok(f) => f,
            Err(ParseError::Malformed) => return Verdict::Refuse(Refusal::Malformed),
            Err(ParseError::Fragment) => return Verdict::Refuse(Refusal::Fragment),
        };
        if let Kind::IcmpError(Some(q)) = flow.kind {
            // The quoted packet went the other way.
            let key = Key::new(dir.reverse(), q.proto, q.src, q.sport, q.dst, q.dport);
            if self.table.get(&key, now).is_some() {
                self.counters.related += 1;
                return Verdict::Pass;
            }
        }
        let key = flow.key(dir);
        if self.table.track(&key, dir, &flow, now) {
            match dir {
                Dir::In => self.counters.in_tracked += 1,
                Dir::Out => self.counters.out_tracked += 1,
            }
            return Verdict::Pass;
        }
        if self.rules.decide(dir, &flow) == Action::Deny {
            return Verdict::Refuse(Refusal::Rule);
        }
        if flow.opens() {
            if self.table.insert(key, dir, &flow, now).is_err() {
                return Verdict::Refuse(Refusal::TableFull);
            }
            self.counters.conn_created += 1;
        }
        Verdict::Pass
    }
}
