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

/// Sends and receives messages.
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

    /// Starts consuming `route`. For a broadcast route only messages
    /// published after this call are seen.
    async fn subscribe(&self, route: &Route) -> Result<Box<dyn Subscription>, TransportError>;
}

/// A stream of deliveries from one route.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `Ok(None)` once the route is closed. Malformed
    /// messages are reported as errors and do not end the subscription.
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
