//! The control socket: a Unix stream socket on which `compart ctl` (or anything that
//! writes a line) asks a running VMM to move a guest, report its status, or stop.
//!
//! One request per connection, one line: `move GUEST CORES` (CORES as `0,1` or `0-1`),
//! `status`, or `stop`. The answer is `ok` or `error: …` on the first line, then the
//! body. Connections are served one at a time with a read timeout, so a stuck client
//! cannot hold the VMM.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::runtime::{ControlRequest, VmmHandle};
use crate::topology::parse_core_list;

/// How long a client may take to send its request, and the VMM to answer it.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Parses one request line.
pub fn parse(line: &str) -> Result<Option<ControlRequest>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["move", guest, cores] => {
            let cores = parse_core_list(cores)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| format!("`{cores}` is not a core list (like 0,1 or 0-1)"))?;
            Ok(Some(ControlRequest::Move {
                guest: guest.to_string(),
                cores,
            }))
        }
        ["status"] => Ok(Some(ControlRequest::Status)),
        ["stop"] => Ok(None),
        _ => Err(format!(
            "unknown request `{}` (move GUEST CORES | status | stop)",
            line.trim()
        )),
    }
}

/// Serves the control socket at `path` until the VMM stops; removes it afterwards.
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket) and serves it on a thread.
    pub fn start(path: &Path, vmm: VmmHandle) -> std::io::Result<ControlServer> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    if let Err(e) = serve(conn, &vmm) {
                        log::warn!("control socket: {e}");
                    }
                }
            })?;
        Ok(ControlServer {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, vmm: &VmmHandle) -> std::io::Result<()> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&conn).take(4096).read_line(&mut line)?;
    let answer = match parse(&line) {
        Ok(Some(request)) => vmm.request(request, TIMEOUT),
        Ok(None) => {
            vmm.stop();
            Ok("stopping".to_string())
        }
        Err(e) => Err(e),
    };
    let mut conn = conn;
    match answer {
        Ok(body) => write!(conn, "ok\n{body}\n"),
        Err(e) => writeln!(conn, "error: {e}"),
    }
}

/// Sends one request to the socket at `path`; returns the answer's body, or its error.
pub fn send(path: &Path, request: &str) -> Result<String, String> {
    let mut conn = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is `compart run --control` running?)",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(TIMEOUT * 2))
        .map_err(|e| e.to_string())?;
    writeln!(conn, "{request}").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    match answer.split_once('\n') {
        Some(("ok", body)) => Ok(body.trim_end().to_string()),
        _ => Err(answer
            .trim_end()
            .strip_prefix("error: ")
            .unwrap_or(answer.trim_end())
            .to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::HostCore;

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse("move tcp 0-1\n"),
            Ok(Some(ControlRequest::Move {
                guest: "tcp".into(),
                cores: vec![HostCore(0), HostCore(1)]
            }))
        );
        assert_eq!(parse("status"), Ok(Some(ControlRequest::Status)));
        assert_eq!(parse("stop"), Ok(None));
        assert!(parse("move tcp x").unwrap_err().contains("not a core list"));
        assert!(parse("reboot")
            .unwrap_err()
            .starts_with("unknown request `reboot`"));
    }
}
