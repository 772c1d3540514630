//! The RabbitMQ transport of the distributed mode (lapin).
//!
//! One [`AmqpTransport`] is one AMQP connection, replaced whenever it
//! drops: the [`Session`] behind it is rebuilt with exponential backoff,
//! the topology re-declared ([`topology`]), a held leadership re-taken,
//! and every [`subscription`] opens a fresh channel, re-applies its
//! prefetch and consumes again. Deliveries that were unacknowledged when a
//! connection dropped are redelivered by the broker; roles handle every
//! message idempotently, so nothing is lost or done twice.
//!
//! Publishing uses publisher confirms: `publish` returns once the broker
//! has taken responsibility for a work-queue message (broadcasts, which
//! carry no state, are not waited for). A publish that fails is retried on
//! the next connection until `publish_timeout` passes.

pub mod admin;
mod subscription;
pub mod topology;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{watch, Mutex};
use tracing::{info, warn};

use crate::codec::{Envelope, PROTOCOL_VERSION};
use crate::route::{Fanout, Route};
use crate::transport::{Leadership, Subscription, Transport, TransportError};

use self::topology::QueueKind;

/// Longest wait for a connection to open (handshake, topology,
/// leadership) before it is given up and tried again.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for one publish and its confirmation before it is tried
/// again on a new connection (the roles handle duplicates).
const PUBLISH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Tries at re-taking a held leadership on a new connection, 0.5 s apart.
const LEADERSHIP_RETAKE_TRIES: u32 = 6;

/// Settings of an AMQP connection.
#[derive(Debug, Clone)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// Shown by the broker for this connection (`kiln-builder@host`).
    pub connection_name: String,
    /// How long a publish keeps retrying across reconnects before it fails.
    pub publish_timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

impl AmqpConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>, connection_name: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            connection_name: connection_name.into(),
            publish_timeout: Duration::from_secs(120),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The RabbitMQ transport; clones share one connection.
#[derive(Clone)]
pub struct AmqpTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: AmqpConfig,
    session: Mutex<Option<Arc<Session>>>,
    generation: AtomicU64,
    /// Leadership roles held, re-taken on every new connection.
    leading: StdMutex<Vec<(String, watch::Sender<bool>)>>,
    /// Set when leadership was lost: this transport consumes no more.
    fenced: StdMutex<Option<String>>,
    closed: tokio_util::sync::CancellationToken,
}

/// One live connection and its publishing channel.
pub(crate) struct Session {
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    publisher: Channel,
    /// Work queues declared on this connection (declared again after a
    /// reconnect, since the broker may have restarted without them).
    declared: StdMutex<HashSet<String>>,
    /// Channels holding leadership queues, by role.
    leaders: StdMutex<Vec<(String, Channel)>>,
}

fn broker_error(route: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Broker {
        route: route.to_string(),
        message: e.to_string(),
    }
}

impl AmqpTransport {
    /// Connects to the broker (retrying until it answers, at most
    /// `publish_timeout`) and declares the topology.
    pub async fn connect(config: AmqpConfig) -> Result<Self, TransportError> {
        let t = AmqpTransport {
            inner: Arc::new(Inner {
                config,
                session: Mutex::new(None),
                generation: AtomicU64::new(0),
                leading: StdMutex::new(Vec::new()),
                fenced: StdMutex::new(None),
                closed: tokio_util::sync::CancellationToken::new(),
            }),
        };
        let deadline = Instant::now() + t.inner.config.publish_timeout;
        t.session(Some(deadline)).await?;
        Ok(t)
    }

    /// The broker URL without its password, for messages.
    pub fn display_url(&self) -> String {
        redact(&self.inner.config.url)
    }

    /// Closes the connection; subscriptions end and publishes fail.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        if let Some(s) = self.inner.session.lock().await.take() {
            let _ = s.connection.close(200, "shutting down".into()).await;
        }
    }

    /// The current session, connecting (with backoff) when there is none.
    /// Waits until `deadline` (for ever without one, until closed).
    pub(crate) async fn session(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, TransportError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.inner.closed.is_cancelled() {
                return Err(TransportError::Closed {
                    route: "amqp".into(),
                });
            }
            if let Some(role) = self.inner.fenced.lock().unwrap().clone() {
                return Err(broker_error(
                    "amqp",
                    format!("the leadership of '{role}' was lost to another process"),
                ));
            }
            {
                let mut guard = self.inner.session.lock().await;
                if let Some(s) = guard.as_ref() {
                    if s.connection.status().connected() {
                        return Ok(s.clone());
                    }
                    *guard = None;
                }
                match self.open().await {
                    Ok(s) => {
                        let s = Arc::new(s);
                        *guard = Some(s.clone());
                        return Ok(s);
                    }
                    Err(e) => {
                        warn!(url = %self.display_url(), error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach the broker");
                        if deadline.is_some_and(|d| Instant::now() + backoff > d) {
                            return Err(e);
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.inner.closed.cancelled() => {}
            }
            backoff = (backoff * 2).min(self.inner.config.max_backoff);
        }
    }

    /// Forgets `session` if it is still the current one (it failed), and
    /// closes its connection: a connection merely forgotten would keep
    /// its exclusive queues, and with them a leadership the next
    /// connection could then not take again.
    pub(crate) async fn invalidate(&self, session: &Session) {
        let mut guard = self.inner.session.lock().await;
        if guard
            .as_ref()
            .is_some_and(|s| s.generation == session.generation)
        {
            if let Some(old) = guard.take() {
                if old.connection.status().connected() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        old.connection.close(200, "replacing the connection".into()),
                    )
                    .await;
                }
            }
        }
    }

    /// Opens a connection and sets it up; a connection that fails or
    /// stalls half-way (a broker still starting can accept the socket and
    /// never answer) is closed, so it holds nothing on the broker.
    async fn open(&self) -> Result<Session, TransportError> {
        let stalled = |what: &str| {
            broker_error(
                "amqp",
                format!(
                    "{what} {}: no answer in {}s",
                    self.display_url(),
                    OPEN_TIMEOUT.as_secs()
                ),
            )
        };
        let props = ConnectionProperties::default()
            .with_connection_name(self.inner.config.connection_name.as_str().into());
        let connection = tokio::time::timeout(
            OPEN_TIMEOUT,
            Connection::connect(&self.inner.config.url, props),
        )
        .await
        .map_err(|_| stalled("connecting to"))?
        .map_err(|e| broker_error("amqp", format!("connecting to {}: {e}", self.display_url())))?;
        let set_up = match tokio::time::timeout(OPEN_TIMEOUT, self.set_up(&connection)).await {
            Ok(r) => r,
            Err(_) => Err(stalled("setting up the connection to")),
        };
        match set_up {
            Ok((publisher, leaders)) => {
                let generation = self.inner.generation.fetch_add(1, Ordering::SeqCst) + 1;
                if generation > 1 {
                    info!(url = %self.display_url(), generation, "reconnected to the broker");
                }
                Ok(Session {
                    generation,
                    connection,
                    publisher,
                    declared: StdMutex::new(HashSet::new()),
                    leaders: StdMutex::new(leaders),
                })
            }
            Err(e) => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    connection.close(200, "set-up failed".into()),
                )
                .await;
                Err(e)
            }
        }
    }

    /// The publishing channel, the topology, and every leadership held
    /// before (taken again, or given up for good when another process took
    /// it meanwhile).
    async fn set_up(
        &self,
        connection: &Connection,
    ) -> Result<(Channel, Vec<(String, Channel)>), TransportError> {
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| broker_error("amqp", e))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| broker_error("amqp", e))?;
        topology::declare_fixed(&publisher)
            .await
            .map_err(|e| broker_error("amqp", format!("declaring the topology: {e}")))?;
        let mut leaders = Vec::new();
        let roles: Vec<String> = self
            .inner
            .leading
            .lock()
            .unwrap()
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        for role in roles {
            match take_leadership_again(connection, &role).await {
                Ok(Some(ch)) => leaders.push((role.clone(), ch)),
                Ok(None) => {
                    warn!(role, "leadership was taken over by another process");
                    *self.inner.fenced.lock().unwrap() = Some(role.clone());
                    for (r, tx) in self.inner.leading.lock().unwrap().iter() {
                        if *r == role {
                            let _ = tx.send(true);
                        }
                    }
                    return Err(broker_error(
                        "amqp",
                        format!("the leadership of '{role}' was lost to another process"),
                    ));
                }
                Err(e) => return Err(broker_error("amqp", e)),
            }
        }
        Ok((publisher, leaders))
    }

    /// Publishes raw bytes to the dead-letter exchange with why they were
    /// refused and where they came from.
    pub(crate) async fn dead_letter(
        &self,
        origin: &str,
        bytes: &[u8],
        reason: &str,
    ) -> Result<(), TransportError> {
        let mut headers = FieldTable::default();
        headers.insert(
            topology::REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        headers.insert(
            topology::ORIGIN_HEADER.into(),
            AMQPValue::LongString(LongString::from(origin)),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        headers.insert(topology::DEAD_AT_HEADER.into(), AMQPValue::LongLongInt(now));
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        metrics::counter!("kiln_dead_letters_total", "queue" => origin.to_string()).increment(1);
        self.publish_bytes(
            topology::DEAD_LETTER_EXCHANGE,
            "",
            bytes,
            props,
            true,
            origin,
        )
        .await
    }

    /// Publishes `bytes`, retrying across reconnects until the publish
    /// timeout; waits for the broker's confirmation when `confirm`.
    pub(crate) async fn publish_bytes(
        &self,
        exchange: &str,
        key: &str,
        bytes: &[u8],
        props: BasicProperties,
        confirm: bool,
        what: &str,
    ) -> Result<(), TransportError> {
        self.publish_with(exchange, key, bytes, props, confirm, what, None)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn publish_with(
        &self,
        exchange: &str,
        key: &str,
        bytes: &[u8],
        props: BasicProperties,
        confirm: bool,
        what: &str,
        declare: Option<(&str, QueueKind)>,
    ) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let mut backoff = Duration::from_millis(50);
        loop {
            let session = self.session(Some(deadline)).await?;
            let attempt = async {
                if let Some((queue, kind)) = declare {
                    session.ensure_queue(queue, kind).await?;
                }
                let pending = session
                    .publisher
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions::default(),
                        bytes,
                        props.clone(),
                    )
                    .await?;
                if confirm {
                    if let Confirmation::Nack(_) = pending.await? {
                        return Ok(Err("the broker refused the message (nack)".to_string()));
                    }
                }
                Ok::<_, lapin::Error>(Ok(()))
            };
            let outcome = match tokio::time::timeout(PUBLISH_ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no confirmation in {}s",
                    PUBLISH_ATTEMPT_TIMEOUT.as_secs()
                )),
            };
            match outcome {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(refused)) => return Err(broker_error(what, refused)),
                Err(e) => {
                    warn!(route = what, error = %e, "publish failed; retrying on a new connection");
                    self.invalidate(&session).await;
                    if Instant::now() + backoff > deadline {
                        return Err(broker_error(what, e));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.inner.config.max_backoff);
                }
            }
        }
    }

    /// Whether consuming must stop (closed, or leadership lost).
    pub(crate) fn stopped(&self) -> bool {
        self.inner.closed.is_cancelled() || self.inner.fenced.lock().unwrap().is_some()
    }

    pub(crate) fn closed_token(&self) -> &tokio_util::sync::CancellationToken {
        &self.inner.closed
    }
}

impl Session {
    /// Declares a work queue once per connection.
    pub(crate) async fn ensure_queue(&self, name: &str, kind: QueueKind) -> lapin::Result<()> {
        if self.declared.lock().unwrap().contains(name) {
            return Ok(());
        }
        topology::declare_queue(&self.publisher, name, kind).await?;
        self.declared.lock().unwrap().insert(name.to_string());
        Ok(())
    }
}

/// Declares the exclusive leadership queue of `role` on a channel of its
/// own: `Some(channel)` when this connection now holds it, `None` when
/// another connection does (the broker answers RESOURCE_LOCKED).
async fn take_leadership(connection: &Connection, role: &str) -> lapin::Result<Option<Channel>> {
    let ch = connection.create_channel().await?;
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(
            topology::leader_queue(role).as_str().into(),
            opts,
            FieldTable::default(),
        )
        .await
    {
        Ok(_) => Ok(Some(ch)),
        Err(e) if e.to_string().contains("RESOURCE_LOCKED") || e.to_string().contains("405") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A leadership taken with [`Transport::lead`]. Its channel is kept with
/// the session ([`Session::leaders`]), like those of leaderships taken
/// again after a reconnect; dropping the hold gives the role up: it is no
/// longer taken again, and its queue is deleted (it is the connection's,
/// not the channel's, so closing the channel alone would keep it).
struct LeaderHold {
    transport: AmqpTransport,
    role: String,
}

impl Drop for LeaderHold {
    fn drop(&mut self) {
        self.transport
            .inner
            .leading
            .lock()
            .unwrap()
            .retain(|(r, _)| *r != self.role);
        let transport = self.transport.clone();
        let role = self.role.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let held: Vec<Channel> = match transport.inner.session.lock().await.as_ref() {
                    Some(session) => {
                        let mut leaders = session.leaders.lock().unwrap();
                        let (gone, kept) = leaders.drain(..).partition(|(r, _)| *r == role);
                        *leaders = kept;
                        gone.into_iter().map(|(_, ch)| ch).collect::<Vec<_>>()
                    }
                    None => Vec::new(),
                };
                for ch in held {
                    give_up(&ch, &role).await;
                }
            });
        }
    }
}

/// Deletes the leadership queue of `role` held on `channel`, and closes it.
async fn give_up(channel: &Channel, role: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = channel
            .queue_delete(
                topology::leader_queue(role).as_str().into(),
                lapin::options::QueueDeleteOptions::default(),
            )
            .await;
        let _ = channel.close(200, "leadership given up".into()).await;
    })
    .await;
}

/// Takes `role` again on a new connection. The broker deletes the
/// exclusive queue of a connection that closed a moment ago only shortly
/// after, so a refusal is believed after a few tries only.
async fn take_leadership_again(
    connection: &Connection,
    role: &str,
) -> lapin::Result<Option<Channel>> {
    for _ in 0..LEADERSHIP_RETAKE_TRIES {
        if let Some(ch) = take_leadership(connection, role).await? {
            return Ok(Some(ch));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(None)
}

/// `amqp://user:secret@host/` → `amqp://user:***@host/`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((cred, host)) => match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn message_props(env: &Envelope, priority: u8) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-kiln-protocol".into(),
        AMQPValue::LongLongInt(i64::from(PROTOCOL_VERSION)),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_priority(priority.min(topology::MAX_PRIORITY))
        .with_message_id(env.id.to_string().as_str().into())
        .with_content_type("application/msgpack".into())
        .with_headers(headers)
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn publish(
        &self,
        route: &Route,
        env: &Envelope,
        priority: u8,
    ) -> Result<(), TransportError> {
        let (name, bytes) = crate::transport::encode_for(route, env)?;
        let props = message_props(env, priority);
        match route.fanout() {
            Fanout::Queue => {
                let kind = topology::queue_kind(route);
                self.publish_with("", &name, &bytes, props, true, &name, Some((&name, kind)))
                    .await
            }
            Fanout::Broadcast => {
                self.publish_with(
                    topology::BROADCAST_EXCHANGE,
                    &name,
                    &bytes,
                    props,
                    false,
                    &name,
                    None,
                )
                .await
            }
        }
    }

    async fn dead_letter(
        &self,
        route: &Route,
        env: &Envelope,
        reason: &str,
    ) -> Result<(), TransportError> {
        let (name, bytes) = crate::transport::encode_for(route, env)?;
        AmqpTransport::dead_letter(self, &name, &bytes, reason).await
    }

    async fn subscribe_with(
        &self,
        route: &Route,
        prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError> {
        let sub =
            subscription::AmqpSubscription::start(self.clone(), route.clone(), prefetch).await?;
        Ok(Box::new(sub))
    }

    async fn lead(&self, role: &str) -> Result<Leadership, TransportError> {
        let (tx, rx) = watch::channel(false);
        loop {
            let session = self.session(None).await?;
            match take_leadership(&session.connection, role).await {
                Ok(Some(ch)) => {
                    self.inner
                        .leading
                        .lock()
                        .unwrap()
                        .push((role.to_string(), tx));
                    info!(role, "leading");
                    session.leaders.lock().unwrap().push((role.to_string(), ch));
                    let hold = LeaderHold {
                        transport: self.clone(),
                        role: role.to_string(),
                    };
                    return Ok(Leadership::new(rx, Box::new(hold)));
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(role, error = %e, "cannot try for the leadership");
                    self.invalidate(&session).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.inner.closed.cancelled() => return Err(TransportError::Closed { route: role.to_string() }),
            }
        }
    }

    fn link(&self) -> Option<u64> {
        // The session lock is held while connecting: that is "down" too.
        let guard = self.inner.session.try_lock().ok()?;
        guard
            .as_ref()
            .filter(|s| s.connection.status().connected())
            .map(|s| s.generation)
    }

    async fn save_state(&self, name: &str, bytes: Vec<u8>) -> Result<(), TransportError> {
        let queue = topology::state_queue(name);
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        loop {
            let session = self.session(Some(deadline)).await?;
            let declared = topology::declare_state(&session.publisher, name).await;
            if let Err(e) = declared {
                self.invalidate(&session).await;
                if Instant::now() > deadline {
                    return Err(broker_error(&queue, e));
                }
                continue;
            }
            let props = BasicProperties::default().with_delivery_mode(2);
            return self
                .publish_bytes("", &queue, &bytes, props, true, &queue)
                .await;
        }
    }

    async fn load_state(&self, name: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let queue = topology::state_queue(name);
        let session = self.session(None).await?;
        let ch = session
            .connection
            .create_channel()
            .await
            .map_err(|e| broker_error(&queue, e))?;
        topology::declare_state(&ch, name)
            .await
            .map_err(|e| broker_error(&queue, e))?;
        let got = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| broker_error(&queue, e))?;
        let data = match got {
            Some(m) => {
                let data = m.delivery.data.clone();
                // Peek only: the record stays for the next reader.
                m.delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
                    .map_err(|e| broker_error(&queue, e))?;
                Some(data)
            }
            None => None,
        };
        let _ = ch.close(200, "done".into()).await;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://host/vh"), "amqp://host/vh");
    }

    #[test]
    fn build_queues_have_priorities_and_others_are_quorum() {
        let b = Route::build("x86_64-linux", &[]);
        assert_eq!(topology::queue_kind(&b), QueueKind::Priority);
        assert_eq!(topology::queue_kind(&Route::Jobs), QueueKind::Quorum);
        assert_eq!(
            topology::queue_kind(&Route::IfdReply(uuid::Uuid::nil())),
            QueueKind::Expiring
        );
        assert_eq!(
            topology::queue_kind(&Route::Heartbeats),
            QueueKind::Expiring
        );
    }
}
