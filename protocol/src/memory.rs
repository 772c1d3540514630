//! The in-process transport of the embedded default. Messages are encoded
//! to bytes on publish and decoded on delivery, exactly as on a broker, so
//! no role ever holds a reference into another.

use async_trait::async_trait;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

use crate::codec::{decode, Envelope};
use crate::route::{Fanout, Route};
use crate::transport::{Acker, Delivery, Leadership, Subscription, Transport, TransportError};
use tracing::warn;

/// An in-memory transport; clones share the same queues.
#[derive(Clone, Default)]
pub struct MemoryTransport {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Arc<Queue>>,
    topics: HashMap<String, Vec<mpsc::UnboundedSender<Vec<u8>>>>,
    /// Refused messages: route, bytes and why.
    dead_letters: Vec<(String, Vec<u8>, String)>,
    /// Records of [`Transport::save_state`].
    records: HashMap<String, Vec<u8>>,
    /// One lock per leadership role.
    leaders: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Messages ever published, per route name.
    published: HashMap<String, u64>,
}

#[derive(Default)]
struct Queue {
    items: Mutex<(BinaryHeap<Item>, u64)>,
    notify: Notify,
}

#[derive(PartialEq, Eq)]
struct Item {
    priority: u8,
    seq: std::cmp::Reverse<u64>,
    bytes: Vec<u8>,
}

impl Ord for Item {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.priority, &self.seq).cmp(&(other.priority, &other.seq))
    }
}

impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Queue {
    fn push(&self, bytes: Vec<u8>, priority: u8) {
        let mut g = self.items.lock().unwrap();
        g.1 += 1;
        let seq = std::cmp::Reverse(g.1);
        g.0.push(Item {
            priority,
            seq,
            bytes,
        });
        drop(g);
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Item> {
        self.items.lock().unwrap().0.pop()
    }
}

impl MemoryTransport {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, name: &str) -> Arc<Queue> {
        let mut st = self.inner.lock().unwrap();
        st.queues.entry(name.to_string()).or_default().clone()
    }

    /// Messages waiting on a work queue (for operators and tests).
    pub fn queue_len(&self, route: &Route) -> usize {
        self.queue(&route.name()).items.lock().unwrap().0.len()
    }

    /// Messages ever published on `route` (like a broker's publish counter).
    pub fn published(&self, route: &Route) -> u64 {
        let st = self.inner.lock().unwrap();
        st.published.get(&route.name()).copied().unwrap_or(0)
    }

    /// Messages that were refused without requeue, with their route.
    pub fn dead_letters(&self) -> Vec<(String, Envelope)> {
        let st = self.inner.lock().unwrap();
        st.dead_letters
            .iter()
            .filter_map(|(r, b, _)| decode(b).ok().map(|e| (r.clone(), e)))
            .collect()
    }

    /// Why each dead letter was refused, with its route.
    pub fn dead_letter_reasons(&self) -> Vec<(String, String)> {
        let st = self.inner.lock().unwrap();
        st.dead_letters
            .iter()
            .map(|(r, _, why)| (r.clone(), why.clone()))
            .collect()
    }

    fn dead_letter(&self, route: &str, bytes: Vec<u8>, reason: String) {
        let mut st = self.inner.lock().unwrap();
        st.dead_letters.push((route.to_string(), bytes, reason));
    }

    /// Puts raw bytes on a queue, bypassing encoding (to test how consumers
    /// treat malformed messages).
    pub fn publish_raw(&self, route: &Route, bytes: Vec<u8>) {
        self.queue(&route.name()).push(bytes, 0);
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn publish(
        &self,
        route: &Route,
        env: &Envelope,
        priority: u8,
    ) -> Result<(), TransportError> {
        let (name, bytes) = crate::transport::encode_for(route, env)?;
        if !route.is_per_job() {
            *self
                .inner
                .lock()
                .unwrap()
                .published
                .entry(name.clone())
                .or_default() += 1;
        }
        match route.fanout() {
            Fanout::Queue => self.queue(&name).push(bytes, priority),
            Fanout::Broadcast => {
                let mut st = self.inner.lock().unwrap();
                if let Some(subs) = st.topics.get_mut(&name) {
                    subs.retain(|tx| tx.send(bytes.clone()).is_ok());
                    if subs.is_empty() {
                        st.topics.remove(&name);
                    }
                }
            }
        }
        Ok(())
    }

    async fn subscribe_with(
        &self,
        route: &Route,
        _prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let name = route.name();
        match route.fanout() {
            Fanout::Queue => Ok(Box::new(QueueSub {
                name: name.clone(),
                queue: self.queue(&name),
                transport: self.clone(),
                per_job: route.is_per_job(),
            })),
            Fanout::Broadcast => {
                let (tx, rx) = mpsc::unbounded_channel();
                self.inner
                    .lock()
                    .unwrap()
                    .topics
                    .entry(name.clone())
                    .or_default()
                    .push(tx);
                Ok(Box::new(TopicSub { name, rx }))
            }
        }
    }

    async fn lead(&self, role: &str) -> Result<Leadership, TransportError> {
        let lock = {
            let mut st = self.inner.lock().unwrap();
            st.leaders.entry(role.to_string()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        let (tx, rx) = tokio::sync::watch::channel(false);
        Ok(Leadership::new(rx, Box::new((guard, tx))))
    }

    async fn save_state(&self, name: &str, bytes: Vec<u8>) -> Result<(), TransportError> {
        let mut st = self.inner.lock().unwrap();
        st.records.insert(name.to_string(), bytes);
        Ok(())
    }

    async fn dead_letter(
        &self,
        route: &Route,
        env: &Envelope,
        reason: &str,
    ) -> Result<(), TransportError> {
        let (name, bytes) = crate::transport::encode_for(route, env)?;
        MemoryTransport::dead_letter(self, &name, bytes, reason.to_string());
        Ok(())
    }

    async fn load_state(&self, name: &str) -> Result<Option<Vec<u8>>, TransportError> {
        Ok(self.inner.lock().unwrap().records.get(name).cloned())
    }
}

struct QueueSub {
    name: String,
    queue: Arc<Queue>,
    transport: MemoryTransport,
    per_job: bool,
}

impl Drop for QueueSub {
    /// A per-job queue is deleted with its consumer, so a long-lived process
    /// serving many jobs does not accumulate them.
    fn drop(&mut self) {
        if self.per_job {
            let mut st = self.transport.inner.lock().unwrap();
            if st
                .queues
                .get(&self.name)
                .is_some_and(|q| Arc::ptr_eq(q, &self.queue))
            {
                st.queues.remove(&self.name);
            }
        }
    }
}

#[async_trait]
impl Subscription for QueueSub {
    async fn next(&mut self) -> Result<Option<Delivery>, TransportError> {
        loop {
            let notified = self.queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(item) = self.queue.pop() {
                // Let another waiting consumer look at what is left.
                self.queue.notify.notify_one();
                match decode(&item.bytes) {
                    Ok(envelope) => {
                        return Ok(Some(Delivery::new(
                            envelope,
                            Some(Box::new(MemAcker {
                                route: self.name.clone(),
                                item: Some(item),
                                queue: self.queue.clone(),
                                transport: self.transport.clone(),
                            })),
                        )))
                    }
                    Err(source) => {
                        warn!(route = %self.name, error = %source, "dead-lettered a malformed message");
                        self.transport
                            .dead_letter(&self.name, item.bytes, source.to_string());
                        continue;
                    }
                }
            }
            notified.await;
        }
    }
}

struct MemAcker {
    route: String,
    item: Option<Item>,
    queue: Arc<Queue>,
    transport: MemoryTransport,
}

#[async_trait]
impl Acker for MemAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        Ok(())
    }

    async fn nack(mut self: Box<Self>, requeue: bool) -> Result<(), TransportError> {
        if let Some(item) = self.item.take() {
            if requeue {
                self.queue.push(item.bytes, item.priority);
            } else {
                self.transport.dead_letter(
                    &self.route,
                    item.bytes,
                    "refused by its consumer".into(),
                );
            }
        }
        Ok(())
    }
}

struct TopicSub {
    name: String,
    rx: mpsc::UnboundedReceiver<Vec<u8>>,
}

#[async_trait]
impl Subscription for TopicSub {
    async fn next(&mut self) -> Result<Option<Delivery>, TransportError> {
        loop {
            let Some(bytes) = self.rx.recv().await else {
                return Ok(None);
            };
            match decode(&bytes) {
                Ok(e) => return Ok(Some(Delivery::new(e, None))),
                Err(source) => {
                    warn!(route = %self.name, error = %source, "dropped a malformed broadcast");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn cancel() -> Envelope {
        Envelope::new(Message::CancelJob {
            job_id: uuid::Uuid::new_v4(),
        })
    }

    #[tokio::test]
    async fn queue_delivers_once_by_priority() {
        let t = MemoryTransport::new();
        let (low, high) = (cancel(), cancel());
        t.publish(&Route::Jobs, &low, 0).await.unwrap();
        t.publish(&Route::Jobs, &high, 5).await.unwrap();
        let mut a = t.subscribe(&Route::Jobs).await.unwrap();
        let mut b = t.subscribe(&Route::Jobs).await.unwrap();
        let first = a.next().await.unwrap().unwrap();
        assert_eq!(first.envelope, high);
        first.ack().await.unwrap();
        let second = b.next().await.unwrap().unwrap();
        assert_eq!(second.envelope, low);
        // A requeued message comes back.
        second.nack(true).await.unwrap();
        let again = a.next().await.unwrap().unwrap();
        assert_eq!(again.envelope, low);
        again.nack(false).await.unwrap();
        assert_eq!(t.dead_letters().len(), 1);
        assert_eq!(t.queue_len(&Route::Jobs), 0);
    }

    #[tokio::test]
    async fn consumer_waits_for_later_publish() {
        let t = MemoryTransport::new();
        let mut sub = t.subscribe(&Route::Eval).await.unwrap();
        let env = cancel();
        let t2 = t.clone();
        let e2 = env.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            t2.publish(&Route::Eval, &e2, 0).await.unwrap();
        });
        assert_eq!(sub.next().await.unwrap().unwrap().envelope, env);
    }

    #[tokio::test]
    async fn broadcast_reaches_every_subscriber() {
        let t = MemoryTransport::new();
        let job = uuid::Uuid::new_v4();
        let mut a = t.subscribe(&Route::JobEvents(job)).await.unwrap();
        let mut b = t.subscribe(&Route::JobEvents(job)).await.unwrap();
        let env = cancel();
        t.publish(&Route::JobEvents(job), &env, 0).await.unwrap();
        assert_eq!(a.next().await.unwrap().unwrap().envelope, env);
        assert_eq!(b.next().await.unwrap().unwrap().envelope, env);
    }

    #[tokio::test]
    async fn malformed_message_is_dead_lettered_not_fatal() {
        let t = MemoryTransport::new();
        t.publish_raw(&Route::Derivations, b"\x93garbage".to_vec());
        let good = cancel();
        t.publish(&Route::Derivations, &good, 0).await.unwrap();
        let mut sub = t.subscribe(&Route::Derivations).await.unwrap();
        assert_eq!(sub.next().await.unwrap().unwrap().envelope, good);
        let reasons = t.dead_letter_reasons();
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].0, "kiln.drvs");
        assert!(reasons[0].1.contains("malformed"), "{reasons:?}");
    }
}
