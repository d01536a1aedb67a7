//! One pub/sub connection per broker, shared by everything waiting for a
//! result. Waiting used to open a connection per task: a TCP connect and
//! handshake before the SUBSCRIBE, over half of a submit→result round
//! trip on a local Redis (bench/compare, latency workload). Now a wait
//! costs one SUBSCRIBE on a connection that is already up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::{Client, RedisResult};
use tokio::sync::{mpsc, oneshot};

type Routes = HashMap<String, Vec<(u64, mpsc::UnboundedSender<String>)>>;

pub(super) struct ResultChannels {
    /// Subscribe/unsubscribe decisions and the commands that carry them
    /// out happen under this lock, so a channel is subscribed exactly while
    /// someone waits on it.
    sink: tokio::sync::Mutex<PubSubSink>,
    routes: Arc<Mutex<Routes>>,
    alive: Arc<AtomicBool>,
    next_id: AtomicU64,
    /// Dropped with the last handle: ends the reader task and closes the
    /// connection (a dropped sink alone would not).
    _stop: oneshot::Sender<()>,
}

/// A live subscription; messages on its channel arrive on `rx`. `rx`
/// yielding `None` means the connection was lost: wait on a new one.
pub(super) struct Subscription {
    pub rx: mpsc::UnboundedReceiver<String>,
    channels: Arc<ResultChannels>,
    channel: String,
    id: u64,
}

impl ResultChannels {
    pub async fn connect(client: &Client) -> RedisResult<Arc<Self>> {
        let (sink, mut stream) = client.get_async_pubsub().await?.split();
        let routes: Arc<Mutex<Routes>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (r, a) = (routes.clone(), alive.clone());
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    _ = &mut stopped => None,
                };
                let Some(msg) = msg else { break };
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                let routes = lock(&r);
                if let Some(waiters) = routes.get(msg.get_channel_name()) {
                    for (_, tx) in waiters {
                        let _ = tx.send(payload.clone());
                    }
                }
            }
            // Connection gone (or nobody holds this any more): waiters see
            // their channel close and resubscribe on a fresh connection.
            a.store(false, Ordering::Release);
            lock(&r).clear();
        });
        Ok(Arc::new(Self {
            sink: tokio::sync::Mutex::new(sink),
            routes,
            alive,
            next_id: AtomicU64::new(0),
            _stop: stop,
        }))
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Subscribe to `channel`; returns once Redis has confirmed, so any
    /// message published after this returns is delivered.
    pub async fn subscribe(self: &Arc<Self>, channel: &str) -> RedisResult<Subscription> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sink = self.sink.lock().await;
        let first = {
            let mut routes = lock(&self.routes);
            let waiters = routes.entry(channel.to_string()).or_default();
            waiters.push((id, tx));
            waiters.len() == 1
        };
        let sub = Subscription {
            rx,
            channels: self.clone(),
            channel: channel.to_string(),
            id,
        };
        if first {
            // On failure `sub` drops and takes its route with it.
            sink.subscribe(channel).await?;
        }
        Ok(sub)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let (channels, channel, id) = (
            self.channels.clone(),
            std::mem::take(&mut self.channel),
            self.id,
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Unsubscribing is a round trip nobody needs to wait for.
        rt.spawn(async move {
            let mut sink = channels.sink.lock().await;
            let last = {
                let mut routes = lock(&channels.routes);
                match routes.get_mut(&channel) {
                    Some(waiters) => {
                        waiters.retain(|(w, _)| *w != id);
                        let empty = waiters.is_empty();
                        if empty {
                            routes.remove(&channel);
                        }
                        empty
                    }
                    None => false,
                }
            };
            if last && channels.is_alive() {
                let _ = sink.unsubscribe(&channel).await;
            }
        });
    }
}

fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    // Routes hold no invariant a panic could break halfway.
    routes.lock().unwrap_or_else(|p| p.into_inner())
}
