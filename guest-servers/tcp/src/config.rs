//! The tcp layer's first exchange with ip: the interface's configuration (address,
//! MTU, offloads), asked again every [`RETRY_MS`] while ip answers anything else (the
//! link is not up yet). One step at a time, so that a loop that also runs ip and the
//! driver (the `mono` image) keeps running them while it waits; the tcp image waits on
//! its channel between steps.
use compart_channel::{ChannelError, Endpoint, Notifier};
use compart_proto::packet::{self, DropReason};

/// How long to wait before asking again after an answer other than a configuration.
pub const RETRY_MS: u64 = 100;

/// The state of the exchange.
#[derive(Debug, Default)]
pub struct ConfigQuery {
    asked: bool,
    retry_at_ms: u64,
    /// The first answer that was neither a configuration nor "link down".
    pub odd_answer: Option<Result<packet::Reply, compart_proto::DecodeError>>,
}

impl ConfigQuery {
    /// A query not sent yet.
    pub fn new() -> ConfigQuery {
        ConfigQuery::default()
    }

    /// When the next question is due, while there is none outstanding (`None`: an
    /// answer is awaited, which the channel's doorbell announces).
    pub fn retry_at_ms(&self) -> Option<u64> {
        (!self.asked).then_some(self.retry_at_ms)
    }

    /// One step at `now_ms`: refuse what ip delivers (there is no socket yet), ask if it
    /// is time, and take the answer if there is one.
    pub fn poll<N: Notifier>(
        &mut self,
        ep: &mut Endpoint<N>,
        now_ms: u64,
    ) -> Result<Option<packet::Config>, ChannelError> {
        while ep.can_reply()? {
            let Some(req) = ep.poll_request()? else {
                break;
            };
            if !req.is_oneway() {
                let (s, w) = packet::Reply::Dropped(DropReason::Refused).encode();
                ep.reply(req, s, w, &[])?;
            }
        }
        if !self.asked && now_ms >= self.retry_at_ms {
            let (op, w) = packet::Request::Config.encode();
            ep.send_request(op, w, &[])?;
            ep.flush()?;
            self.asked = true;
        }
        if !self.asked {
            return Ok(None);
        }
        let Some(r) = ep.poll_reply()? else {
            return Ok(None);
        };
        let answer = packet::Reply::decode(r.status(), r.inline());
        ep.free(r)?;
        self.asked = false;
        match answer {
            Ok(packet::Reply::Config(c)) => return Ok(Some(c)),
            Ok(packet::Reply::Dropped(DropReason::LinkDown)) => {}
            other => {
                self.odd_answer.get_or_insert(other);
            }
        }
        self.retry_at_ms = now_ms.saturating_add(RETRY_MS);
        Ok(None)
    }
}
