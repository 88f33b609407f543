//! The iperf3 control protocol (esnet/iperf `iperf_api.h`, `iperf_api.c`; NETSTACK.md
//! §E.1): the cookie, the one-byte states, and the two JSON messages — the client's
//! parameters and each side's results — with their validation.
//!
//! A test: the client connects the control connection and sends its 37-byte cookie;
//! the server answers [`PARAM_EXCHANGE`], the client sends its parameters (a 4-byte
//! big-endian length, then JSON), the server answers [`CREATE_STREAMS`], the client
//! connects `parallel` data connections to the same port, each first sending the same
//! cookie; the server sends [`TEST_START`] and [`TEST_RUNNING`], the sender sends, the
//! client ends the test with [`TEST_END`]; the server answers [`EXCHANGE_RESULTS`], the
//! client sends its results and the server its own, the server sends
//! [`DISPLAY_RESULTS`], the client [`IPERF_DONE`].

use alloc::string::String;
use alloc::vec::Vec;

use crate::json::{self, obj, Value};

/// The cookie's length: 36 characters and a NUL (`COOKIE_SIZE`).
pub const COOKIE_SIZE: usize = 37;
/// The cookie's alphabet (`make_cookie`).
const COOKIE_CHARS: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The largest parameter message a server accepts (`MAX_PARAMS_JSON_STRING`).
pub const MAX_PARAMS_JSON: usize = 8 * 1024;
/// The largest results message accepted (128 streams take about 25 KiB).
pub const MAX_RESULTS_JSON: usize = 64 * 1024;
/// The largest block (`MAX_BLOCKSIZE`).
pub const MAX_BLOCK: u32 = 1 << 20;
/// The default TCP block (`DEFAULT_TCP_BLKSIZE`).
pub const DEFAULT_BLOCK: u32 = 128 * 1024;
/// The longest test (`MAX_TIME`, seconds).
pub const MAX_TIME: u32 = 86_400;
/// The most streams (`MAX_STREAMS`).
pub const MAX_STREAMS: u32 = 128;
/// The longest omitted start (`MAX_OMIT_TIME`, seconds).
pub const MAX_OMIT: u32 = 600;

// The states (`iperf_api.h`), each sent as one signed byte.
/// The test starts (the server has all streams).
pub const TEST_START: i8 = 1;
/// Data flows.
pub const TEST_RUNNING: i8 = 2;
/// The client ends the test.
pub const TEST_END: i8 = 4;
/// The server asks for the parameters.
pub const PARAM_EXCHANGE: i8 = 9;
/// The server asks for the data connections.
pub const CREATE_STREAMS: i8 = 10;
/// The server stops the test.
pub const SERVER_TERMINATE: i8 = 11;
/// The client stops the test.
pub const CLIENT_TERMINATE: i8 = 12;
/// The server asks for the results.
pub const EXCHANGE_RESULTS: i8 = 13;
/// The server says results may be shown.
pub const DISPLAY_RESULTS: i8 = 14;
/// The client is done.
pub const IPERF_DONE: i8 = 16;
/// The server is busy with another client (or the cookie is wrong).
pub const ACCESS_DENIED: i8 = -1;
/// The server failed; two 4-byte big-endian integers follow: iperf's error, errno.
pub const SERVER_ERROR: i8 = -2;

// iperf3's error numbers (`i_errno`) the server sends with SERVER_ERROR.
/// Too many parallel streams.
pub const IENUMSTREAMS: i32 = 6;
/// Block size too large.
pub const IEBLOCKSIZE: i32 = 7;
/// Test too long.
pub const IEDURATION: i32 = 5;
/// Bad omit.
pub const IEOMIT: i32 = 12;
/// Not implemented (UDP, SCTP, bidirectional here).
pub const IEUNIMP: i32 = 13;
/// The parameters did not arrive or did not parse.
pub const IERECVPARAMS: i32 = 114;
/// The results did not arrive or did not parse.
pub const IERECVRESULTS: i32 = 117;
/// An unexpected state byte.
pub const IEMESSAGE: i32 = 110;
/// A stream closed unexpectedly.
pub const IESTREAMCLOSE: i32 = 207;
/// Reading a stream failed.
pub const IESTREAMREAD: i32 = 206;
/// Writing a stream failed.
pub const IESTREAMWRITE: i32 = 205;
/// The MSS (`-M`) cannot be set.
pub const IESETMSS: i32 = 123;
/// The IP TOS (`-S`) cannot be set.
pub const IESETTOS: i32 = 125;
/// The socket buffer (`-w`) cannot be had.
pub const IESETWINDOWSIZE: i32 = 130;
/// Nothing arrived for too long.
pub const IENOMSG: i32 = 144;

/// What iperf3 says for an error number (`iperf_strerror`), for the ones a peer is
/// likely to send; `None` for the others.
pub fn strerror(code: i32) -> Option<&'static str> {
    Some(match code {
        IEDURATION => "test duration too long",
        IENUMSTREAMS => "number of parallel streams too large",
        IEBLOCKSIZE => "block size too large",
        IEOMIT => "bogus value for --omit",
        IEUNIMP => "an option you are trying to set is not implemented yet",
        101 => "test initialization failed",
        104 => "unable to accept connection from client",
        106 => "unable to receive cookie at server",
        109 => "control socket has closed unexpectedly",
        IEMESSAGE => "received an unknown control message",
        IERECVPARAMS => "unable to receive parameters from client",
        IERECVRESULTS => "unable to receive results",
        120 => "the server has terminated",
        121 => "the server is busy running a test. try again later",
        IESETMSS => "unable to set TCP/SCTP MSS",
        IESETTOS => "unable to set IP TOS",
        IESETWINDOWSIZE => "unable to set socket window size",
        IENOMSG => "idle timeout for receiving data",
        160 => "server test duration expired",
        IESTREAMWRITE => "unable to write to stream socket",
        IESTREAMREAD => "unable to read from stream socket",
        IESTREAMCLOSE => "stream socket has closed unexpectedly",
        208 => "stream has an invalid id",
        _ => return None,
    })
}

/// A fresh cookie: 36 characters of iperf3's alphabet from `seed`, then NUL.
pub fn make_cookie(seed: u64) -> [u8; COOKIE_SIZE] {
    // splitmix64: any seed (even 0) gives well-mixed characters.
    let mut x = seed;
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut c = [0u8; COOKIE_SIZE];
    for b in &mut c[..COOKIE_SIZE - 1] {
        *b = COOKIE_CHARS[usize::try_from(next() % 32).unwrap_or(0)];
    }
    c
}

/// The test a client asks for (`send_parameters` / `get_parameters`). Absent keys take
/// iperf3's defaults; unknown keys are ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Seconds of test (`-t`); 0 when it ends by bytes.
    pub time: u32,
    /// Seconds at the start not counted (`-O`).
    pub omit: u32,
    /// Bytes to send in all (`-n`); 0: by time.
    pub bytes: u64,
    /// Blocks to send in all (`-k`); 0: by time or bytes.
    pub blocks: u64,
    /// Data connections (`-P`).
    pub parallel: u32,
    /// Bytes per write (`-l`).
    pub len: u32,
    /// The server sends (`-R`).
    pub reverse: bool,
    /// Socket buffer size (`-w`), 0 for the default.
    pub window: u32,
    /// `TCP_NODELAY` on the data connections (`-N`).
    pub nodelay: bool,
    /// Sending rate limit in bits/s (`-b`), 0 for none.
    pub bandwidth: u64,
    /// The client wants the server's output in the results (`--get-server-output`).
    pub get_server_output: bool,
    /// The client's version string.
    pub client_version: Option<String>,
    /// UDP asked for (not supported).
    pub udp: bool,
    /// SCTP asked for (not supported).
    pub sctp: bool,
    /// Both directions at once asked for (not supported).
    pub bidirectional: bool,
    /// Multipath TCP asked for (not supported).
    pub mptcp: bool,
    /// A maximum segment size asked for (`-M`; the stack's socket API cannot set it).
    pub mss: u32,
    /// An IP TOS asked for (`-S`; the stack's socket API cannot set it).
    pub tos: u32,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            time: 10,
            omit: 0,
            bytes: 0,
            blocks: 0,
            parallel: 1,
            len: DEFAULT_BLOCK,
            reverse: false,
            window: 0,
            nodelay: false,
            bandwidth: 0,
            get_server_output: false,
            client_version: None,
            udp: false,
            sctp: false,
            bidirectional: false,
            mptcp: false,
            mss: 0,
            tos: 0,
        }
    }
}

/// Why a server refuses parameters: iperf3's error number, sent with SERVER_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub i32);

fn num<T: TryFrom<u64>>(v: &Value, key: &str, default: T) -> Result<T, Refusal> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .and_then(|n| T::try_from(n).ok())
            .ok_or(Refusal(IERECVPARAMS)),
    }
}

fn flag(v: &Value, key: &str) -> Result<bool, Refusal> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(x) => x.as_bool().ok_or(Refusal(IERECVPARAMS)),
    }
}

impl Params {
    /// The parameters in `v`, refused when a value has the wrong type or is out of
    /// iperf3's ranges, or asks for what this server does not do (UDP, SCTP,
    /// bidirectional, MPTCP, an MSS or a TOS), or for more than `max_streams` streams.
    pub fn from_json(v: &Value, max_streams: u32) -> Result<Params, Refusal> {
        if !matches!(v, Value::Object(_)) {
            return Err(Refusal(IERECVPARAMS));
        }
        let d = Params::default();
        let p = Params {
            time: num(v, "time", d.time)?,
            omit: num(v, "omit", d.omit)?,
            bytes: num(v, "num", d.bytes)?,
            blocks: num(v, "blockcount", d.blocks)?,
            parallel: num(v, "parallel", d.parallel)?,
            len: num(v, "len", d.len)?,
            reverse: flag(v, "reverse")?,
            window: num(v, "window", d.window)?,
            nodelay: flag(v, "nodelay")?,
            bandwidth: num(v, "bandwidth", d.bandwidth)?,
            get_server_output: flag(v, "get_server_output")?,
            client_version: v
                .get("client_version")
                .and_then(Value::as_str)
                .map(String::from),
            udp: flag(v, "udp")?,
            sctp: flag(v, "sctp")?,
            bidirectional: flag(v, "bidirectional")?,
            mptcp: flag(v, "mptcp")?,
            mss: num(v, "MSS", 0)?,
            tos: num(v, "TOS", 0)?,
        };
        if p.udp || p.sctp || p.bidirectional || p.mptcp {
            return Err(Refusal(IEUNIMP));
        }
        // What this server cannot do is refused, not silently left out.
        if p.mss != 0 {
            return Err(Refusal(IESETMSS));
        }
        if p.tos != 0 {
            return Err(Refusal(IESETTOS));
        }
        if p.parallel == 0 || p.parallel > max_streams.min(MAX_STREAMS) {
            return Err(Refusal(IENUMSTREAMS));
        }
        if p.len == 0 || p.len > MAX_BLOCK {
            return Err(Refusal(IEBLOCKSIZE));
        }
        if p.time > MAX_TIME {
            return Err(Refusal(IEDURATION));
        }
        if p.omit > MAX_OMIT {
            return Err(Refusal(IEOMIT));
        }
        Ok(p)
    }

    /// The parameters as the stock client sends them.
    pub fn to_json(&self) -> Value {
        let mut o = obj()
            .bool("tcp", true)
            .uint("omit", u64::from(self.omit))
            .uint("time", u64::from(self.time))
            .uint("num", self.bytes)
            .uint("blockcount", self.blocks)
            .uint("parallel", u64::from(self.parallel))
            .uint("len", u64::from(self.len))
            .int("pacing_timer", 1000);
        if self.reverse {
            o = o.bool("reverse", true);
        }
        if self.window != 0 {
            o = o.uint("window", u64::from(self.window));
        }
        if self.nodelay {
            o = o.bool("nodelay", true);
        }
        if self.bandwidth != 0 {
            o = o.uint("bandwidth", self.bandwidth);
        }
        o.str(
            "client_version",
            self.client_version.as_deref().unwrap_or(crate::VERSION),
        )
        .build()
    }

    /// Bytes to send in all, when the test ends by an amount (`-n`, or `-k` blocks).
    pub fn amount(&self) -> Option<u64> {
        match (self.bytes, self.blocks) {
            (0, 0) => None,
            (0, k) => Some(k.saturating_mul(u64::from(self.len))),
            (n, _) => Some(n),
        }
    }
}

/// One stream's line of the results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamResult {
    /// The stream's id (1, 3, 4, 5, … in connection order).
    pub id: i32,
    /// Bytes this side sent (as sender) or received (as receiver), omitted start excluded.
    pub bytes: u64,
    /// Retransmits; -1 when unknown.
    pub retransmits: i64,
    /// UDP jitter (0 for TCP).
    pub jitter: f64,
    /// UDP lost packets (0 for TCP).
    pub errors: i64,
    /// UDP packets (0 for TCP).
    pub packets: i64,
    /// Seconds from the stream's start to its first counted byte.
    pub start_time: f64,
    /// Seconds from the stream's start to its end.
    pub end_time: f64,
}

/// One side's results (`send_results` / `get_results`).
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// CPU use of the test, percent: total, user, system.
    pub cpu_util: [f64; 3],
    /// 1 if the sender reports retransmits, 0 if it cannot, -1 from a receiver.
    pub sender_has_retransmits: i64,
    /// The congestion control used, if known.
    pub congestion_used: Option<String>,
    /// The server's own report, when the client asked for it.
    pub server_output_text: Option<String>,
    /// Per stream.
    pub streams: Vec<StreamResult>,
}

impl Results {
    /// This side's results: `(stream id, bytes)` of each stream over `secs` seconds,
    /// awake `busy` percent of the test. This side cannot see retransmits: as iperf3, a
    /// sender says 0, a receiver -1; per stream they are -1.
    pub fn measured(
        streams: impl Iterator<Item = (i32, u64)>,
        secs: f64,
        busy: f64,
        sending: bool,
        server_output_text: Option<String>,
    ) -> Results {
        Results {
            cpu_util: [busy, busy, 0.0],
            sender_has_retransmits: if sending { 0 } else { -1 },
            congestion_used: None,
            server_output_text,
            streams: streams
                .map(|(id, bytes)| StreamResult {
                    id,
                    bytes,
                    retransmits: -1,
                    jitter: 0.0,
                    errors: 0,
                    packets: 0,
                    start_time: 0.0,
                    end_time: secs,
                })
                .collect(),
        }
    }

    /// The results as JSON, with every key stock `iperf3` needs for its summary and
    /// its `-J` report.
    pub fn to_json(&self) -> Value {
        let streams = self
            .streams
            .iter()
            .map(|s| {
                obj()
                    .int("id", i64::from(s.id))
                    .uint("bytes", s.bytes)
                    .int("retransmits", s.retransmits)
                    .float("jitter", s.jitter)
                    .int("errors", s.errors)
                    .int("omitted_errors", 0)
                    .int("packets", s.packets)
                    .int("omitted_packets", 0)
                    .float("start_time", s.start_time)
                    .float("end_time", s.end_time)
                    .build()
            })
            .collect();
        let mut o = obj()
            .float("cpu_util_total", self.cpu_util[0])
            .float("cpu_util_user", self.cpu_util[1])
            .float("cpu_util_system", self.cpu_util[2])
            .int("sender_has_retransmits", self.sender_has_retransmits);
        if let Some(c) = &self.congestion_used {
            o = o.str("congestion_used", c);
        }
        if let Some(t) = &self.server_output_text {
            o = o.str("server_output_text", t);
        }
        o.with("streams", Value::Array(streams)).build()
    }

    /// The results in `v`, refused (with `IERECVRESULTS`) as stock iperf3 refuses
    /// them: a required key missing, or a value of the wrong type; at most
    /// [`MAX_STREAMS`] streams.
    pub fn from_json(v: &Value) -> Result<Results, Refusal> {
        let bad = Refusal(IERECVRESULTS);
        let f = |k: &str| v.get(k).and_then(Value::as_f64).ok_or(bad);
        let cpu_util = [
            f("cpu_util_total")?,
            f("cpu_util_user")?,
            f("cpu_util_system")?,
        ];
        let sender_has_retransmits = v
            .get("sender_has_retransmits")
            .and_then(Value::as_i64)
            .ok_or(bad)?;
        let list = v.get("streams").and_then(Value::as_array).ok_or(bad)?;
        if list.len() > usize::try_from(MAX_STREAMS).unwrap_or(usize::MAX) {
            return Err(bad);
        }
        let mut streams = Vec::with_capacity(list.len());
        for s in list {
            let i = |k: &str| s.get(k).and_then(Value::as_i64).ok_or(bad);
            let opt = |k: &str| s.get(k).and_then(Value::as_f64);
            streams.push(StreamResult {
                id: i32::try_from(i("id")?).map_err(|_| bad)?,
                bytes: s.get("bytes").and_then(Value::as_u64).ok_or(bad)?,
                retransmits: i("retransmits")?,
                jitter: s.get("jitter").and_then(Value::as_f64).ok_or(bad)?,
                errors: i("errors")?,
                packets: i("packets")?,
                start_time: opt("start_time").unwrap_or(0.0),
                end_time: opt("end_time").unwrap_or(0.0),
            });
        }
        Ok(Results {
            cpu_util,
            sender_has_retransmits,
            congestion_used: v
                .get("congestion_used")
                .and_then(Value::as_str)
                .map(String::from),
            server_output_text: v
                .get("server_output_text")
                .and_then(Value::as_str)
                .map(String::from),
            streams,
        })
    }
}

/// The stream ids iperf3 gives its `n`-th stream (from 0): 1, 3, 4, 5, … (id 2 is
/// skipped, `iperf_add_stream`).
pub fn stream_id(n: usize) -> i32 {
    let n = i32::try_from(n).unwrap_or(i32::MAX - 2);
    if n == 0 {
        1
    } else {
        n + 2
    }
}

/// Parse a JSON message's text (after its length prefix).
pub fn parse(text: &[u8]) -> Result<Value, json::JsonError> {
    json::parse(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const STOCK: &[u8] = br#"{"tcp":true,"omit":0,"time":10,"num":0,"blockcount":0,"parallel":1,"len":131072,"pacing_timer":1000,"client_version":"3.12"}"#;

    #[test]
    fn the_stock_parameters_are_a_ten_second_single_stream_test() {
        let p = Params::from_json(&json::parse(STOCK).unwrap(), 128).unwrap();
        assert_eq!(p.time, 10);
        assert_eq!(
            (p.parallel, p.len, p.reverse, p.amount()),
            (1, 131_072, false, None)
        );
        assert_eq!(p.client_version.as_deref(), Some("3.12"));
        let back = Params::from_json(&p.to_json(), 128).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn parameters_out_of_range_or_unsupported_are_refused_with_iperfs_error() {
        let refuse = |t: &str, max| Params::from_json(&json::parse(t.as_bytes()).unwrap(), max);
        assert_eq!(refuse(r#"{"udp":true}"#, 8), Err(Refusal(IEUNIMP)));
        assert_eq!(
            refuse(r#"{"bidirectional":true}"#, 8),
            Err(Refusal(IEUNIMP))
        );
        assert_eq!(refuse(r#"{"parallel":9}"#, 8), Err(Refusal(IENUMSTREAMS)));
        assert_eq!(refuse(r#"{"parallel":0}"#, 8), Err(Refusal(IENUMSTREAMS)));
        assert_eq!(refuse(r#"{"len":2000000}"#, 8), Err(Refusal(IEBLOCKSIZE)));
        assert_eq!(refuse(r#"{"time":100000}"#, 8), Err(Refusal(IEDURATION)));
        assert_eq!(refuse(r#"{"time":-1}"#, 8), Err(Refusal(IERECVPARAMS)));
        assert_eq!(refuse(r#"{"time":"10"}"#, 8), Err(Refusal(IERECVPARAMS)));
        assert_eq!(
            refuse(r#"{"parallel":99999999999}"#, 8),
            Err(Refusal(IERECVPARAMS))
        );
        assert_eq!(refuse(r#"[1]"#, 8), Err(Refusal(IERECVPARAMS)));
        let p = refuse(
            r#"{"num":1000,"reverse":true,"nodelay":1,"get_server_output":1}"#,
            8,
        );
        let p = p.unwrap();
        assert_eq!(
            (p.amount(), p.reverse, p.nodelay, p.get_server_output),
            (Some(1000), true, true, true)
        );
        assert_eq!(
            refuse(r#"{"blockcount":3,"len":10}"#, 8).unwrap().amount(),
            Some(30)
        );
    }

    #[test]
    fn results_carry_what_stock_iperf3_requires() {
        let r = Results {
            cpu_util: [1.5, 1.5, 0.0],
            sender_has_retransmits: 0,
            congestion_used: None,
            server_output_text: Some("x\ny".into()),
            streams: vec![StreamResult {
                id: 1,
                bytes: 10,
                retransmits: -1,
                jitter: 0.0,
                errors: 0,
                packets: 0,
                start_time: 0.0,
                end_time: 2.0,
            }],
        };
        let v = r.to_json();
        for k in [
            "cpu_util_total",
            "cpu_util_user",
            "cpu_util_system",
            "sender_has_retransmits",
            "streams",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        let s = &v.get("streams").unwrap().as_array().unwrap()[0];
        for k in [
            "id",
            "bytes",
            "retransmits",
            "jitter",
            "errors",
            "packets",
            "omitted_errors",
            "omitted_packets",
            "start_time",
            "end_time",
        ] {
            assert!(s.get(k).is_some(), "{k}");
        }
        let text = json::to_string(&v);
        assert_eq!(
            Results::from_json(&json::parse(text.as_bytes()).unwrap()),
            Ok(r)
        );
    }

    #[test]
    fn results_missing_a_key_are_refused() {
        let ok = r#"{"cpu_util_total":1,"cpu_util_user":1,"cpu_util_system":0,"sender_has_retransmits":1,"streams":[{"id":1,"bytes":5,"retransmits":0,"jitter":0,"errors":0,"packets":0}]}"#;
        assert!(Results::from_json(&json::parse(ok.as_bytes()).unwrap()).is_ok());
        for key in [
            "cpu_util_total",
            "sender_has_retransmits",
            "streams",
            "bytes",
            "jitter",
        ] {
            let broken = ok.replacen(&alloc::format!("\"{key}\""), "\"other\"", 1);
            let v = json::parse(broken.as_bytes()).unwrap();
            assert_eq!(Results::from_json(&v), Err(Refusal(IERECVRESULTS)), "{key}");
        }
        let many = alloc::format!(
            r#"{{"cpu_util_total":1,"cpu_util_user":1,"cpu_util_system":0,"sender_has_retransmits":1,"streams":[{}]}}"#,
            vec!["{}"; 129].join(",")
        );
        assert!(Results::from_json(&json::parse(many.as_bytes()).unwrap()).is_err());
    }

    #[test]
    fn cookies_are_36_characters_of_the_alphabet_and_a_nul() {
        let a = make_cookie(0);
        let b = make_cookie(1);
        assert_ne!(a, b);
        assert_eq!(a[36], 0);
        assert!(a[..36].iter().all(|c| COOKIE_CHARS.contains(c)));
    }

    #[test]
    fn stream_ids_skip_two() {
        assert_eq!([0, 1, 2, 3].map(stream_id), [1, 3, 4, 5]);
    }
}
