//! The connection table: one entry per connection a rule let through, keyed by
//! (protocol, the stack's address and port, the other end's), so that both directions of
//! a connection find it. Bounded by [`Limits::conntrack_entries`]: a new connection that
//! finds the table full (after expired entries are taken out) is refused, never an old
//! one pushed out. Every entry times out after a protocol- and state-dependent idleness.
use alloc::collections::BTreeMap;

use crate::flow::{Flow, Key, Kind, TcpFlags, TcpSeg};
use crate::rules::Dir;
use crate::{Instant, Limits};

/// Where a TCP connection is, as its flags tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// A SYN seen, the handshake not completed.
    Opening,
    /// The handshake completed.
    Established,
    /// One side sent a FIN.
    Closing,
    /// Both sides sent a FIN, or either a RST.
    Closed,
}

/// What an entry tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A TCP connection.
    Tcp(TcpState),
    /// A UDP flow.
    Udp,
    /// An ICMP echo, or a flow of another protocol.
    Datagram,
}

/// What the table knows of one direction of a TCP connection: enough to tell a RST or
/// FIN that lies in the window from one forged blind (RFC 5961's check, as loosely as
/// Linux's conntrack: within one window either side of the sender's highest sequence
/// number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpSide {
    /// The sequence number after the highest segment this direction sent (`None`: none
    /// seen yet).
    pub end: Option<u32>,
    /// The largest window it advertised, scaled.
    pub max_win: u32,
    /// The window scale of its SYN, if it sent one with the option.
    pub wscale: Option<u8>,
}

/// One tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Where it is.
    pub state: State,
    /// The direction of the packet that created it.
    pub origin: Dir,
    /// Whether a packet went the other way since.
    pub reply_seen: bool,
    /// Whether each direction (origin's, then the reply's) sent a FIN.
    pub fin: [bool; 2],
    /// TCP: each direction's sequence space and window (origin's, then the reply's).
    pub tcp: [TcpSide; 2],
    /// TCP RSTs and FINs outside the window, which changed nothing.
    pub out_of_window: u32,
    /// When it goes, unless a packet comes first.
    pub expires: Instant,
}

/// The table was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The connection table.
#[derive(Debug, Clone)]
pub struct Conntrack {
    map: BTreeMap<Key, Entry>,
    limits: Limits,
    /// No entry expires before this (a lower bound: entries only ever expire later than
    /// what was recorded when this was computed).
    earliest: Option<Instant>,
    last_scan: Option<Instant>,
    expired: u64,
    peak: usize,
}

impl Conntrack {
    /// An empty table bounded and timed by `limits`.
    pub fn new(limits: Limits) -> Conntrack {
        Conntrack {
            map: BTreeMap::new(),
            limits,
            earliest: None,
            last_scan: None,
            expired: 0,
            peak: 0,
        }
    }

    /// Entries held (expired ones not yet taken out included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Most entries it holds.
    pub fn capacity(&self) -> usize {
        self.limits.conntrack_entries
    }

    /// The most entries it ever held at once (never above [`capacity`](Self::capacity)).
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Entries taken out because they expired, so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// The live entry of `key`, if any.
    pub fn get(&self, key: &Key, now: Instant) -> Option<&Entry> {
        self.map.get(key).filter(|e| e.expires > now)
    }

    /// Iterates over the live entries.
    pub fn iter(&self, now: Instant) -> impl Iterator<Item = (&Key, &Entry)> {
        self.map.iter().filter(move |(_, e)| e.expires > now)
    }

    /// If `key` is a live connection, advance it with `flow` going `dir` and return true.
    /// A TCP SYN (without ACK) on a closed connection's key starts a new connection: the old
    /// entry goes and false is returned, for the rules to decide.
    pub fn track(&mut self, key: &Key, dir: Dir, flow: &Flow, now: Instant) -> bool {
        let Some(e) = self.map.get_mut(key) else {
            return false;
        };
        if e.expires <= now {
            self.map.remove(key);
            self.expired += 1;
            return false;
        }
        if let (State::Tcp(TcpState::Closed), Kind::Tcp(f)) = (e.state, flow.kind) {
            if f.syn && !f.ack && !f.rst {
                self.map.remove(key);
                return false;
            }
        }
        let reply = dir != e.origin;
        if let Kind::Tcp(f) = flow.kind {
            if !advance_seq(e, reply, f, &flow.seg) {
                // A forged RST or FIN (or one too stale to matter): it passes, for the
                // end to answer as RFC 5961 says, but closes nothing here and keeps the
                // entry no longer.
                e.out_of_window = e.out_of_window.saturating_add(1);
                e.reply_seen |= reply;
                return true;
            }
            e.reply_seen |= reply;
            e.state = State::Tcp(next_tcp(e, reply, f));
        } else {
            e.reply_seen |= reply;
        }
        e.expires = now.after(timeout(&self.limits, e));
        // A connection closing may expire sooner than anything recorded so far.
        self.earliest = Some(self.earliest.map_or(e.expires, |t| t.min(e.expires)));
        true
    }

    /// Start tracking the connection `key`, opened by `flow` going `dir`. Refused when the
    /// table is full of live entries.
    pub fn insert(&mut self, key: Key, dir: Dir, flow: &Flow, now: Instant) -> Result<(), Full> {
        if self.map.len() >= self.limits.conntrack_entries && !self.map.contains_key(&key) {
            // Make room from what expired, but scan at most once per millisecond however
            // many new connections a full table refuses.
            if self.last_scan.is_some_and(|t| t >= now) {
                return Err(Full);
            }
            self.scan(now);
            if self.map.len() >= self.limits.conntrack_entries {
                return Err(Full);
            }
        }
        let state = match flow.kind {
            Kind::Tcp(_) => State::Tcp(TcpState::Opening),
            Kind::Udp => State::Udp,
            _ => State::Datagram,
        };
        let mut e = Entry {
            state,
            origin: dir,
            reply_seen: false,
            fin: [false; 2],
            tcp: [TcpSide::default(); 2],
            out_of_window: 0,
            expires: now,
        };
        if let Kind::Tcp(f) = flow.kind {
            advance_seq(&mut e, false, f, &flow.seg);
        }
        e.expires = now.after(timeout(&self.limits, &e));
        self.earliest = Some(self.earliest.map_or(e.expires, |t| t.min(e.expires)));
        self.map.insert(key, e);
        self.peak = self.peak.max(self.map.len());
        Ok(())
    }

    /// Take out the entries that expired, if one may have and the last scan is at least
    /// [`Limits::scan_interval_ms`] old. Returns how many went.
    pub fn expire(&mut self, now: Instant) -> usize {
        match self.next_deadline() {
            Some(t) if t <= now => self.scan(now),
            _ => 0,
        }
    }

    /// When [`expire`](Self::expire) next has work: the earliest an entry may expire, but
    /// not sooner than a scan interval after the last scan. `None` for an empty table.
    pub fn next_deadline(&self) -> Option<Instant> {
        let earliest = self.earliest?;
        let next_scan = self
            .last_scan
            .map_or(Instant::ZERO, |t| t.after(self.limits.scan_interval_ms));
        Some(earliest.max(next_scan))
    }

    fn scan(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        self.map.retain(|_, e| e.expires > now);
        let gone = before - self.map.len();
        self.expired += gone as u64;
        self.earliest = self.map.values().map(|e| e.expires).min();
        self.last_scan = Some(now);
        gone
    }
}

/// Whether `x` lies within `w` either side of `end` (modulo 2³²).
fn near(x: u32, end: u32, w: u32) -> bool {
    x.wrapping_sub(end).wrapping_add(w) <= w.saturating_mul(2)
}

/// Follows segment `seg` (flags `f`) of direction `reply` in the entry's sequence spaces.
/// Returns false for a RST or FIN outside the window, which must change nothing; other
/// segments always count (the end judges their data), but only those in the window move
/// the sender's highest sequence number, so forged data cannot drag the window along.
fn advance_seq(e: &mut Entry, reply: bool, f: TcpFlags, seg: &TcpSeg) -> bool {
    let (i, j) = (usize::from(reply), usize::from(!reply));
    // The receiver's window bounds where the sender may be; unknown yet, 64 KiB.
    let w = match e.tcp[j].max_win {
        0 => 65535,
        w => w,
    };
    let in_window = match e.tcp[i].end {
        None => true,
        Some(end) => near(seg.seq, end, w),
    };
    if !in_window && (f.rst || f.fin) {
        return false;
    }
    let side = &mut e.tcp[i];
    if f.syn && side.end.is_none() {
        // Its first SYN only: a later (retransmitted or forged) one changes nothing.
        side.wscale = seg.wscale;
    }
    if in_window {
        let seg_end = seg.seq.wrapping_add(seg.len);
        side.end = Some(match side.end {
            Some(end) if (seg_end.wrapping_sub(end) as i32) < 0 => end,
            _ => seg_end,
        });
    }
    // Windows scale only once both SYNs carried the option, and never on a SYN itself.
    let scale = match (e.tcp[0].wscale, e.tcp[1].wscale) {
        (Some(_), Some(_)) if !f.syn => u32::from(e.tcp[i].wscale.unwrap_or(0)),
        _ => 0,
    };
    let win = u32::from(seg.window) << scale;
    e.tcp[i].max_win = e.tcp[i].max_win.max(win);
    true
}

fn next_tcp(e: &mut Entry, reply: bool, f: TcpFlags) -> TcpState {
    let State::Tcp(s) = e.state else {
        return TcpState::Closed;
    };
    if f.rst {
        return TcpState::Closed;
    }
    if f.fin {
        e.fin[usize::from(reply)] = true;
    }
    if e.fin == [true, true] {
        return TcpState::Closed;
    }
    if e.fin != [false, false] {
        return if s == TcpState::Closed {
            TcpState::Closed
        } else {
            TcpState::Closing
        };
    }
    match s {
        // SYN, SYN+ACK, then the opener's ACK completes the handshake.
        TcpState::Opening if e.reply_seen && !reply && f.ack && !f.syn => TcpState::Established,
        s => s,
    }
}

fn timeout(l: &Limits, e: &Entry) -> u64 {
    match e.state {
        State::Tcp(TcpState::Opening) => l.tcp_opening_ms,
        State::Tcp(TcpState::Established) => l.tcp_established_ms,
        State::Tcp(TcpState::Closing) => l.tcp_closing_ms,
        State::Tcp(TcpState::Closed) => l.tcp_closed_ms,
        State::Udp if e.reply_seen => l.udp_ms,
        State::Udp => l.udp_first_ms,
        State::Datagram => l.icmp_ms,
    }
}
