//! One tail of the event stream for the whole server: read from Redis
//! once, broadcast to every Server-Sent Events client and to the history
//! sampler. A client that falls too far behind skips ahead (it is told
//! with a `lagged` comment) rather than hold the others back.

use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::Broker;
use celeriac_broker::retry::Reconnect;
use celeriac_client::events::Tail;
use celeriac_protocol::{Event, EventFilter};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Events held for slow clients before they lag.
const CHANNEL: usize = 8192;

#[derive(Clone)]
pub struct Live {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Live {
    /// Start tailing; the tail ends with `shutdown`.
    pub fn start(broker: Arc<dyn Broker>, shutdown: CancellationToken) -> Self {
        let (tx, _) = broadcast::channel(CHANNEL);
        let live = Live { tx: tx.clone() };
        tokio::spawn(async move {
            let all = EventFilter::default();
            let mut reconnect = Reconnect::new();
            let mut tail: Option<Tail> = None;
            while !shutdown.is_cancelled() {
                let step = async {
                    let t = match tail.as_mut() {
                        Some(t) => t,
                        None => tail.insert(Tail::start(broker.as_ref(), 0, &all).await?.1),
                    };
                    t.next(broker.as_ref(), &all, Duration::from_secs(1)).await
                };
                let read = tokio::select! {
                    r = step => r,
                    _ = shutdown.cancelled() => break,
                };
                match read {
                    Ok(events) => {
                        reconnect.succeeded();
                        for e in events {
                            // No receivers is fine: nobody is watching.
                            let _ = tx.send(Arc::new(e));
                        }
                    }
                    Err(e) => {
                        let wait = reconnect.failed();
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot read events");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = shutdown.cancelled() => break,
                        }
                    }
                }
            }
        });
        live
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}
