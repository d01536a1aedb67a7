//! Following the event stream (`celeriac events`, the HTTP API's
//! Server-Sent Events): replay the latest, then tail from where the last
//! read stopped, so that nothing is skipped between reads.

use std::time::Duration;

use celeriac_broker::Broker;
use celeriac_protocol::{Event, EventFilter, event};

use crate::ClientError;

/// Events read at most per round trip.
const READ_BATCH: usize = 500;

/// A position in the event stream.
#[derive(Debug, Clone)]
pub struct Tail {
    after: String,
    /// Events up to here were seen (resuming inside a stored batch).
    seen: (u64, u64, u64),
}

impl Tail {
    /// From the newest event now (what comes next), after replaying the
    /// latest `replay` events that match `filter` (oldest first).
    pub async fn start(
        broker: &dyn Broker,
        replay: usize,
        filter: &EventFilter,
    ) -> Result<(Vec<Event>, Tail), ClientError> {
        // Looking further back when filtering, within reason.
        let look = if replay == 0 {
            1
        } else {
            replay.saturating_mul(20).clamp(replay, 20_000)
        };
        let recent = broker.recent_events(look).await?;
        let after = recent
            .last()
            .map_or_else(|| "0-0".to_string(), |(id, _)| id.clone());
        let mut events = decode(recent, filter);
        if events.len() > replay {
            events.drain(..events.len() - replay);
        }
        Ok((
            events,
            Tail {
                after,
                seen: (0, 0, 0),
            },
        ))
    }

    /// From just after the event `id` (a client resuming with
    /// `Last-Event-ID`), even part way through a stored batch.
    pub fn after(id: &str) -> Self {
        Tail {
            after: event::entry_before(id),
            seen: event::position(id),
        }
    }

    /// The next events that match `filter`, waiting up to `block` for any
    /// event at all (so the result may be empty).
    pub async fn next(
        &mut self,
        broker: &dyn Broker,
        filter: &EventFilter,
        block: Duration,
    ) -> Result<Vec<Event>, ClientError> {
        let read = broker
            .read_events(Some(&self.after), READ_BATCH, block)
            .await?;
        if let Some((id, _)) = read.last() {
            self.after = id.clone();
        }
        let mut events = decode(read, filter);
        if self.seen != (0, 0, 0) {
            let seen = self.seen;
            events.retain(|e| e.id.as_deref().map(event::position) > Some(seen));
        }
        Ok(events)
    }
}

/// Stored events that read and match; unreadable ones are skipped.
fn decode(read: Vec<(String, String)>, filter: &EventFilter) -> Vec<Event> {
    read.into_iter()
        .flat_map(|(id, json)| Event::decode_stored(&id, &json))
        .filter(|e| filter.matches(e))
        .collect()
}
