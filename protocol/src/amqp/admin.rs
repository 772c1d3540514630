//! What operators ask of the broker: queue depths (by passive
//! declaration, so no management plugin is needed) and the dead letters,
//! which can be listed, replayed onto the queue they came from, or purged.

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;

use super::{broker_error, topology, AmqpTransport};
use crate::codec::decode;
use crate::transport::TransportError;

/// A queue's depth as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueStat {
    pub name: String,
    /// Messages ready for delivery.
    pub ready: u32,
    pub consumers: u32,
}

/// One dead letter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Position in the dead-letter queue (0 is the oldest).
    pub index: usize,
    /// The message's id (its envelope id when it could be decoded).
    pub id: String,
    /// The queue it was refused on.
    pub origin: String,
    /// Why it was refused.
    pub reason: String,
    /// Seconds since it was refused, when known.
    pub age_secs: Option<u64>,
    pub size: usize,
    /// The message, as far as it can be decoded (its type, or why not).
    pub summary: String,
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|h| {
        h.inner()
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    })
}

/// Origin and reason of a letter the broker dead-lettered (its `x-death`
/// header: the queue, and "rejected", "expired", "delivery_limit"…).
fn x_death(props: &BasicProperties) -> Option<(String, String)> {
    let AMQPValue::FieldArray(deaths) = header(props, "x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else {
        return None;
    };
    let get = |k: &str| {
        first
            .inner()
            .iter()
            .find(|(key, _)| key.as_str() == k)
            .and_then(|(_, v)| text(v))
    };
    Some((get("queue")?, get("reason").unwrap_or_default()))
}

impl AmqpTransport {
    /// Depths of the named queues; a queue that does not exist is left out.
    pub async fn queue_stats(&self, names: &[String]) -> Result<Vec<QueueStat>, TransportError> {
        let session = self.session(None).await?;
        let mut out = Vec::new();
        for name in names {
            // A failed passive declaration closes its channel: one each.
            let ch = session
                .connection
                .create_channel()
                .await
                .map_err(|e| broker_error(name, e))?;
            let opts = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            if let Ok(q) = ch
                .queue_declare(name.as_str().into(), opts, FieldTable::default())
                .await
            {
                out.push(QueueStat {
                    name: name.clone(),
                    ready: q.message_count(),
                    consumers: q.consumer_count(),
                });
                let _ = ch.close(200, "done".into()).await;
            }
        }
        Ok(out)
    }

    /// Takes up to `limit` dead letters without removing them; `act` may
    /// choose some to remove (after replaying them, say), by returning
    /// their indices. The rest go back to the queue in order.
    async fn with_dead_letters<F>(
        &self,
        limit: usize,
        act: F,
    ) -> Result<Vec<DeadLetter>, TransportError>
    where
        F: FnOnce(&[DeadLetter]) -> Vec<usize>,
    {
        let q = topology::DEAD_LETTER_QUEUE;
        let session = self.session(None).await?;
        let ch = session
            .connection
            .create_channel()
            .await
            .map_err(|e| broker_error(q, e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut letters = Vec::new();
        let mut ackers = Vec::new();
        while letters.len() < limit {
            let Some(m) = ch
                .basic_get(q.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| broker_error(q, e))?
            else {
                break;
            };
            let d = &m.delivery;
            let props = &d.properties;
            let (mut origin, mut reason) = (
                header(props, topology::ORIGIN_HEADER).and_then(text),
                header(props, topology::REASON_HEADER).and_then(text),
            );
            if origin.is_none() {
                if let Some((o, r)) = x_death(props) {
                    origin = Some(o);
                    reason = Some(format!("refused by the broker: {r}"));
                }
            }
            let age_secs = match header(props, topology::DEAD_AT_HEADER) {
                Some(AMQPValue::LongLongInt(at)) => Some(((now - at).max(0) / 1000) as u64),
                _ => None,
            };
            let (id, summary) = match decode(&d.data) {
                Ok(env) => {
                    let kind = serde_json::to_value(&env.body)
                        .ok()
                        .and_then(|v| v["type"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    (env.id.to_string(), kind)
                }
                Err(e) => (
                    props
                        .message_id()
                        .as_ref()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    format!("undecodable: {e}"),
                ),
            };
            letters.push(DeadLetter {
                index: letters.len(),
                id,
                origin: origin.unwrap_or_default(),
                reason: reason.unwrap_or_default(),
                age_secs,
                size: d.data.len(),
                summary,
                bytes: d.data.clone(),
            });
            ackers.push(d.acker.clone());
        }
        let remove = act(&letters);
        for i in remove {
            if let Some(a) = ackers.get(i) {
                a.ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| broker_error(q, e))?;
            }
        }
        // Closing the channel returns every letter not acknowledged.
        let _ = ch.close(200, "done".into()).await;
        Ok(letters)
    }

    /// Up to `limit` dead letters, oldest first; they stay where they are.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, TransportError> {
        self.with_dead_letters(limit, |_| Vec::new()).await
    }

    /// Puts the dead letters whose id or index is in `which` back on the
    /// queue they came from (all of them when `which` is empty); returns
    /// those replayed.
    pub async fn replay_dead_letters(
        &self,
        which: &[String],
    ) -> Result<Vec<DeadLetter>, TransportError> {
        let letters = self.dead_letters(usize::MAX).await?;
        let chosen: Vec<DeadLetter> = letters
            .into_iter()
            .filter(|l| {
                which.is_empty()
                    || which
                        .iter()
                        .any(|w| *w == l.id || *w == l.index.to_string())
            })
            .collect();
        let mut replayed = Vec::new();
        for l in &chosen {
            if l.origin.is_empty() {
                continue;
            }
            self.publish_bytes(
                "",
                &l.origin,
                &l.bytes,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(l.id.as_str().into()),
                true,
                &l.origin,
            )
            .await?;
            replayed.push(l.index);
        }
        // Remove exactly the replayed letters (indices are stable: nobody
        // else consumes the dead letters).
        self.with_dead_letters(usize::MAX, |all| {
            all.iter()
                .filter(|l| replayed.contains(&l.index))
                .map(|l| l.index)
                .collect()
        })
        .await?;
        Ok(chosen
            .into_iter()
            .filter(|l| replayed.contains(&l.index))
            .collect())
    }

    /// Drops every dead letter; returns how many there were.
    pub async fn purge_dead_letters(&self) -> Result<u32, TransportError> {
        let q = topology::DEAD_LETTER_QUEUE;
        let session = self.session(None).await?;
        let ch = session
            .connection
            .create_channel()
            .await
            .map_err(|e| broker_error(q, e))?;
        let n = ch
            .queue_purge(q.into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| broker_error(q, e))?;
        let _ = ch.close(200, "done".into()).await;
        Ok(n)
    }
}
