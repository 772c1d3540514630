//! The transport abstraction. A transport moves encoded [`Envelope`]s along
//! [`Route`]s; the in-memory transport is the embedded default and a queue
//! broker (RabbitMQ) implements the same trait.

use async_trait::async_trait;
use thiserror::Error;

use crate::codec::{CodecError, Envelope};
use crate::route::Route;

/// Why a transport operation failed.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("route {route}: {source}")]
    Codec {
        route: String,
        #[source]
        source: CodecError,
    },
    #[error("route {route}: transport closed")]
    Closed { route: String },
    #[error("route {route}: {message}")]
    Broker { route: String, message: String },
}

/// Encodes `env` for `route`: its queue or key name and the bytes, or the
/// codec error naming the route.
pub(crate) fn encode_for(
    route: &Route,
    env: &Envelope,
) -> Result<(String, Vec<u8>), TransportError> {
    let name = route.name();
    match crate::codec::encode(env) {
        Ok(bytes) => Ok((name, bytes)),
        Err(source) => Err(TransportError::Codec {
            route: name,
            source,
        }),
    }
}

/// Sends and receives messages.
///
/// Both transports give the same guarantees, which the roles rely on:
/// a `publish` that returns `Ok` is durable (a broker confirmed it); a
/// work-queue delivery that is not acknowledged (its consumer died, or
/// the connection dropped) is delivered again, so every handler must be
/// idempotent under redelivery; a message that cannot be decoded is
/// dead-lettered with its reason by the subscription and never reaches a
/// role.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Publishes `env` on `route`. Higher `priority` is delivered first on
    /// work queues (0 is normal).
    async fn publish(
        &self,
        route: &Route,
        env: &Envelope,
        priority: u8,
    ) -> Result<(), TransportError>;

    /// Starts consuming `route` with at most `prefetch` unacknowledged
    /// deliveries held by this consumer (0: the transport's default). For a
    /// broadcast route only messages published after this call are seen.
    async fn subscribe_with(
        &self,
        route: &Route,
        prefetch: u16,
    ) -> Result<Box<dyn Subscription>, TransportError>;

    /// [`Transport::subscribe_with`] with the default prefetch.
    async fn subscribe(&self, route: &Route) -> Result<Box<dyn Subscription>, TransportError> {
        self.subscribe_with(route, 0).await
    }

    /// Waits until this process holds the leadership named `role` (one
    /// holder at a time across every process sharing the transport). The
    /// returned [`Leadership`] reports when it is lost (the broker
    /// connection dropped and another process took over meanwhile).
    async fn lead(&self, role: &str) -> Result<Leadership, TransportError>;

    /// Stores a small durable record under `name`, replacing the previous
    /// one (the coordinator's list of active jobs, read back by whichever
    /// coordinator leads next).
    async fn save_state(&self, name: &str, bytes: Vec<u8>) -> Result<(), TransportError>;

    /// The record last stored under `name`, if any.
    async fn load_state(&self, name: &str) -> Result<Option<Vec<u8>>, TransportError>;

    /// The state of the link to the other roles: `None` while it is down,
    /// else a number that changes whenever it was re-established (so a
    /// role can tell that it may have missed broadcasts meanwhile). An
    /// in-process transport is always up.
    fn link(&self) -> Option<u64> {
        Some(0)
    }

    /// Sets `env`, taken from `route`, aside among the dead letters with
    /// `reason`, for an operator to inspect and replay onto `route` once
    /// the cause is fixed (a build whose inputs the store could not give).
    async fn dead_letter(
        &self,
        route: &Route,
        env: &Envelope,
        reason: &str,
    ) -> Result<(), TransportError>;
}

/// Held leadership; see [`Transport::lead`]. Dropping it gives it up.
pub struct Leadership {
    lost: tokio::sync::watch::Receiver<bool>,
    _hold: Box<dyn std::any::Any + Send + Sync>,
}

impl Leadership {
    /// Leadership that `lost` reports the loss of; `hold` is kept alive as
    /// long as the leadership is (a lock guard, a channel).
    pub fn new(
        lost: tokio::sync::watch::Receiver<bool>,
        hold: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        Leadership { lost, _hold: hold }
    }

    /// Resolves when the leadership is lost; never, while it is held.
    pub async fn lost(&mut self) {
        loop {
            if *self.lost.borrow_and_update() {
                return;
            }
            if self.lost.changed().await.is_err() {
                // The sender is gone with the transport: never lost here.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A stream of deliveries from one route.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `Ok(None)` once the route is closed. Malformed
    /// messages are reported as errors and do not end the subscription.
    ///
    /// Cancel-safe: a role may wait on several subscriptions in one
    /// `select!`; a `next` dropped unfinished loses no delivery.
    async fn next(&mut self) -> Result<Option<Delivery>, TransportError>;
}

/// Settles a delivery with its transport.
#[async_trait]
pub trait Acker: Send {
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), TransportError>;
}

/// One received message. Work-queue deliveries must be acknowledged once
/// handled; a delivery dropped unsettled counts as settled in memory, and is
/// redelivered by a broker when the connection closes.
pub struct Delivery {
    pub envelope: Envelope,
    acker: Option<Box<dyn Acker>>,
}

impl Delivery {
    /// A delivery settled through `acker` (None for broadcast deliveries).
    pub fn new(envelope: Envelope, acker: Option<Box<dyn Acker>>) -> Self {
        Delivery { envelope, acker }
    }

    /// Confirms the message was handled.
    pub async fn ack(mut self) -> Result<(), TransportError> {
        match self.acker.take() {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }

    /// Gives the message back (`requeue`) or drops it to the dead letters.
    pub async fn nack(mut self, requeue: bool) -> Result<(), TransportError> {
        match self.acker.take() {
            Some(a) => a.nack(requeue).await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .finish()
    }
}
