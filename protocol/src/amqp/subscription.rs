//! A consumer of one route that survives reconnects: when its channel or
//! connection fails it waits for a new session, declares its queue again,
//! re-applies its prefetch and consumes again. Messages that cannot be
//! decoded (garbage, another protocol version) are dead-lettered with the
//! reason and acknowledged; they never reach a role.
//!
//! The consuming runs in a task of its own (a [`Pump`]) that hands
//! deliveries over a channel, so that [`Subscription::next`] is
//! cancel-safe: roles wait on several subscriptions in one `select!`, and a
//! `next` dropped half-way through re-opening a channel would leave a
//! consumer behind on the broker, holding its prefetched messages unseen.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use tracing::{debug, warn};

use super::topology;
use super::AmqpTransport;
use crate::codec::decode;
use crate::route::{Fanout, Route};
use crate::transport::{Acker, Delivery, Subscription, TransportError};

/// Longest wait for a channel to open and start consuming.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Prefetch of a consumer that did not ask for one.
const DEFAULT_PREFETCH: u16 = 256;

/// The subscription a role holds: the receiving end of its pump.
pub(crate) struct AmqpSubscription {
    rx: tokio::sync::mpsc::Receiver<Result<Delivery, TransportError>>,
    /// Cancelled on drop: the pump cancels its consumer and stops.
    stop: tokio_util::sync::CancellationToken,
}

impl AmqpSubscription {
    /// Starts consuming `route` (before it returns, so that a broadcast
    /// published afterwards is seen) and the pump that keeps consuming.
    pub(crate) async fn start(
        transport: AmqpTransport,
        route: Route,
        prefetch: u16,
    ) -> Result<Self, TransportError> {
        let mut pump = Pump::new(transport, route, prefetch);
        pump.start().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(pump.run(tx, stop.clone()));
        Ok(AmqpSubscription { rx, stop })
    }
}

impl Drop for AmqpSubscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Result<Option<Delivery>, TransportError> {
        match self.rx.recv().await {
            Some(r) => r.map(Some),
            None => Ok(None),
        }
    }
}

/// The consuming task of one subscription.
struct Pump {
    transport: AmqpTransport,
    route: Route,
    /// The queue consumed: the route's own, or this subscriber's queue
    /// bound to a broadcast route.
    queue: String,
    prefetch: u16,
    live: Option<(std::sync::Arc<super::Session>, Channel, Consumer)>,
}

impl Pump {
    fn new(transport: AmqpTransport, route: Route, prefetch: u16) -> Self {
        let queue = match route.fanout() {
            Fanout::Queue => route.name(),
            Fanout::Broadcast => format!("{}.sub.{}", route.name(), uuid::Uuid::new_v4()),
        };
        Pump {
            transport,
            route,
            queue,
            prefetch: if prefetch == 0 {
                DEFAULT_PREFETCH
            } else {
                prefetch
            },
            live: None,
        }
    }

    fn broadcast(&self) -> bool {
        self.route.fanout() == Fanout::Broadcast
    }

    /// Hands deliveries to `tx` until the subscription is dropped (`stop`)
    /// or the transport closes; then cancels its consumer, so that what it
    /// holds goes back to the queue at once.
    async fn run(
        mut self,
        tx: tokio::sync::mpsc::Sender<Result<Delivery, TransportError>>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                n = self.next() => n,
                _ = stop.cancelled() => break,
            };
            // An error ends the pump once it is handed over.
            let (item, last) = match next {
                Ok(Some(d)) => (Ok(d), false),
                Ok(None) => break,
                Err(e) => (Err(e), true),
            };
            tokio::select! {
                sent = tx.send(item) => if sent.is_err() || last { break },
                _ = stop.cancelled() => break,
            }
        }
        self.unsubscribe().await;
    }

    /// Opens a channel and starts consuming, waiting for the broker as
    /// long as it takes.
    async fn start(&mut self) -> Result<(), TransportError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let session = self.transport.session(None).await?;
            // A stalled channel may still start consuming later and sit on
            // messages: only closing its connection frees them for sure.
            let (opened, stalled) =
                match tokio::time::timeout(OPEN_TIMEOUT, self.open(&session)).await {
                    Ok(r) => (r.map_err(|e| e.to_string()), false),
                    Err(_) => (
                        Err(format!("no answer in {}s", OPEN_TIMEOUT.as_secs())),
                        true,
                    ),
                };
            match opened {
                Ok((ch, consumer)) => {
                    self.live = Some((session, ch, consumer));
                    return Ok(());
                }
                Err(e) => {
                    warn!(queue = %self.queue, error = %e, "cannot consume; retrying");
                    // A channel-level refusal (a queue still starting) is
                    // retried on a new channel; only a connection that
                    // failed is replaced.
                    if stalled || !session.connection.status().connected() {
                        self.transport.invalidate(&session).await;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn open(&self, session: &super::Session) -> lapin::Result<(Channel, Consumer)> {
        let ch = session.connection.create_channel().await?;
        ch.basic_qos(self.prefetch, BasicQosOptions { global: false })
            .await?;
        if self.broadcast() {
            topology::declare_subscriber(&ch, &self.queue, &self.route).await?;
        } else {
            topology::declare_queue(&ch, &self.queue, topology::queue_kind(&self.route)).await?;
        }
        let consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: self.broadcast(),
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok((ch, consumer))
    }
}

impl Pump {
    /// The next delivery, re-opening the consumer as often as needed.
    /// Cancelling it half-way may leave a consumer behind: only the pump's
    /// own loop calls it, and stops for good when it cancels it.
    async fn next(&mut self) -> Result<Option<Delivery>, TransportError> {
        loop {
            if self.transport.stopped() {
                return Ok(None);
            }
            if self.live.is_none() {
                match self.start().await {
                    Ok(()) => {}
                    Err(TransportError::Closed { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            let (_session, _ch, consumer) = self.live.as_mut().expect("consuming");
            let next = tokio::select! {
                n = consumer.next() => n,
                _ = self.transport.closed_token().cancelled() => return Ok(None),
            };
            let delivery = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    warn!(queue = %self.queue, error = %e, "consumer failed; reconnecting");
                    self.abandon(true).await;
                    continue;
                }
                None => {
                    // The broker cancelled the consumer (a quorum queue
                    // moved, the queue was deleted): consume again on a
                    // fresh channel.
                    debug!(queue = %self.queue, "consumer ended; consuming again");
                    self.abandon(false).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if delivery.redelivered {
                metrics::counter!("kiln_redeliveries_total", "queue" => self.queue.clone())
                    .increment(1);
            }
            match decode(&delivery.data) {
                Ok(envelope) => {
                    let acker: Option<Box<dyn Acker>> = if self.broadcast() {
                        None
                    } else {
                        Some(Box::new(AmqpAcker {
                            acker: delivery.acker,
                            queue: self.queue.clone(),
                        }))
                    };
                    return Ok(Some(Delivery::new(envelope, acker)));
                }
                Err(e) => {
                    let reason = format!("{e} (on {})", self.route.name());
                    warn!(queue = %self.queue, error = %e, "dead-lettering a message that cannot be decoded");
                    match self
                        .transport
                        .dead_letter(&self.route.name(), &delivery.data, &reason)
                        .await
                    {
                        Ok(()) => {
                            if !self.broadcast() {
                                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                            }
                        }
                        Err(err) => {
                            // Could not keep it: let the broker dead-letter
                            // it (reason "rejected").
                            warn!(error = %err, "cannot publish the dead letter; rejecting");
                            if !self.broadcast() {
                                let _ = delivery
                                    .acker
                                    .nack(BasicNackOptions {
                                        requeue: false,
                                        multiple: false,
                                    })
                                    .await;
                            }
                        }
                    }
                }
            }
        }
    }
}

impl Pump {
    /// Gives up the current channel. It is closed, so that the broker
    /// returns the deliveries it still holds unacknowledged to the queue
    /// (a channel merely dropped would keep them for ever); with
    /// `connection_failed`, the session is forgotten too.
    async fn abandon(&mut self, connection_failed: bool) {
        let Some((session, ch, _consumer)) = self.live.take() else {
            return;
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            ch.close(200, "consuming again".into()),
        )
        .await;
        if connection_failed {
            self.transport.invalidate(&session).await;
        }
    }
}

impl Pump {
    /// A broadcast subscriber's queue goes with it (it would expire anyway);
    /// a work queue's consumer is cancelled so its prefetched messages go
    /// back to the queue at once.
    async fn unsubscribe(&mut self) {
        let Some((_session, ch, consumer)) = self.live.take() else {
            return;
        };
        let delete = self.broadcast() || matches!(self.route, Route::IfdReply(_));
        let queue = self.queue.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), async move {
            let _ = ch
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await;
            if delete {
                let _ = ch
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = ch.close(200, "unsubscribed".into()).await;
        })
        .await;
    }
}

struct AmqpAcker {
    acker: lapin::Acker,
    queue: String,
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| TransportError::Broker {
                route: self.queue.clone(),
                message: format!("ack: {e} (the message will be delivered again)"),
            })
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), TransportError> {
        self.acker
            .nack(BasicNackOptions {
                requeue,
                multiple: false,
            })
            .await
            .map(|_| ())
            .map_err(|e| TransportError::Broker {
                route: self.queue.clone(),
                message: format!("nack: {e}"),
            })
    }
}
