//! The broker topology: which exchanges and queues exist, with which
//! arguments. Every component declares what it uses, idempotently, when it
//! connects and again after every reconnect; the arguments here are the
//! only ones ever used, so two components never disagree on a declaration
//! (RabbitMQ refuses a re-declaration with other arguments).
//!
//! See `docs/protocol.md` ("On RabbitMQ") for the same table in prose.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::route::{Fanout, Route};

/// Topic exchange carrying every broadcast route; the routing key is the
/// route's name.
pub const BROADCAST_EXCHANGE: &str = "kiln.broadcast";
/// Fanout exchange of refused messages.
pub const DEAD_LETTER_EXCHANGE: &str = "kiln.dead-letter";
/// The queue holding every refused message.
pub const DEAD_LETTER_QUEUE: &str = "kiln.dead-letter";
/// Redeliveries after which a quorum queue dead-letters a message (a
/// message that crashes every consumer must not loop for ever).
pub const DELIVERY_LIMIT: i64 = 10;
/// Highest priority of the build queues (IFD builds use it).
pub const MAX_PRIORITY: u8 = 9;
/// How long an unused subscriber or reply queue survives its consumer
/// (long enough to reconnect across a broker restart).
pub const SUBSCRIBER_QUEUE_EXPIRES_MS: i64 = 10 * 60 * 1000;
/// Headers Kiln sets on a dead letter it refuses itself.
pub const REASON_HEADER: &str = "x-kiln-reason";
pub const ORIGIN_HEADER: &str = "x-kiln-origin";
pub const DEAD_AT_HEADER: &str = "x-kiln-dead-at";

/// The fixed queues every component may declare at start-up.
pub fn fixed_queues() -> Vec<Route> {
    vec![
        Route::Jobs,
        Route::Eval,
        Route::Derivations,
        Route::Ifd,
        Route::BuildEvents,
    ]
}

/// What kind of queue a work route lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// Durable quorum queue with a delivery limit; no priorities.
    Quorum,
    /// Durable classic queue with priorities (build queues: quorum queues
    /// of RabbitMQ 3.10 have no priorities, and IFD builds must overtake).
    Priority,
    /// Durable classic queue that expires when unused (per-job replies and
    /// broadcast subscriptions).
    Expiring,
}

/// The queue kind of a work route (broadcast subscribers are `Expiring`).
pub fn queue_kind(route: &Route) -> QueueKind {
    match route {
        Route::Build { .. } => QueueKind::Priority,
        Route::IfdReply(_) => QueueKind::Expiring,
        _ if route.fanout() == Fanout::Broadcast => QueueKind::Expiring,
        _ => QueueKind::Quorum,
    }
}

fn dead_lettering(args: &mut FieldTable) {
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(DEAD_LETTER_EXCHANGE)),
    );
}

/// The declaration arguments of a queue of `kind`.
pub fn queue_args(kind: QueueKind) -> FieldTable {
    let mut args = FieldTable::default();
    match kind {
        QueueKind::Quorum => {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            dead_lettering(&mut args);
        }
        QueueKind::Priority => {
            args.insert(
                "x-max-priority".into(),
                AMQPValue::LongLongInt(i64::from(MAX_PRIORITY)),
            );
            dead_lettering(&mut args);
        }
        QueueKind::Expiring => {
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(SUBSCRIBER_QUEUE_EXPIRES_MS),
            );
        }
    }
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares a queue named `name` of `kind`.
pub async fn declare_queue(ch: &Channel, name: &str, kind: QueueKind) -> lapin::Result<()> {
    ch.queue_declare(name.into(), durable(), queue_args(kind))
        .await
        .map(|_| ())
}

/// Declares the exchanges, the dead-letter queue and the fixed work queues.
pub async fn declare_fixed(ch: &Channel) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        BROADCAST_EXCHANGE.into(),
        ExchangeKind::Topic,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        DEAD_LETTER_EXCHANGE.into(),
        ExchangeKind::Fanout,
        durable_exchange,
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(DEAD_LETTER_QUEUE.into(), durable(), FieldTable::default())
        .await?;
    ch.queue_bind(
        DEAD_LETTER_QUEUE.into(),
        DEAD_LETTER_EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for route in fixed_queues() {
        declare_queue(ch, &route.name(), queue_kind(&route)).await?;
    }
    Ok(())
}

/// Declares a broadcast subscriber's own queue and binds it to `route`.
pub async fn declare_subscriber(ch: &Channel, queue: &str, route: &Route) -> lapin::Result<()> {
    declare_queue(ch, queue, QueueKind::Expiring).await?;
    ch.queue_bind(
        queue.into(),
        BROADCAST_EXCHANGE.into(),
        route.name().as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// The name of the durable record queue behind [`crate::Transport::save_state`].
pub fn state_queue(name: &str) -> String {
    format!("kiln.state.{name}")
}

/// Declares a record queue: it keeps only the newest message.
pub async fn declare_state(ch: &Channel, name: &str) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    ch.queue_declare(state_queue(name).as_str().into(), durable(), args)
        .await
        .map(|_| ())
}

/// The record ([`crate::Transport::save_state`]) listing every build
/// queue the coordinator has published to, for `kiln queues`.
pub const BUILD_QUEUES_RECORD: &str = "build-queues";

/// The exclusive queue whose holder leads `role`.
pub fn leader_queue(role: &str) -> String {
    format!("kiln.leader.{role}")
}
