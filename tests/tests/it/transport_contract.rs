//! The contract of the [`Transport`] trait, checked against both
//! transports: every case runs once on the in-memory transport and once on
//! RabbitMQ (each in a vhost of its own). The roles are written against
//! this contract only, so that the embedded and the distributed mode run
//! the same code.
//!
//! A few cases are the broker's alone (reconnection); they are at the end.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use kiln_protocol::amqp::{AmqpConfig, AmqpTransport};
use kiln_protocol::memory::MemoryTransport;
use kiln_protocol::{Delivery, Envelope, Message, Route, Subscription, Transport};

/// How long a case waits for a message it expects.
const PATIENCE: Duration = Duration::from_secs(20);

/// A transport under test; an AMQP one owns its vhost.
struct Under {
    transport: Arc<dyn Transport>,
    amqp: Option<(String, String)>,
}

impl Under {
    fn memory() -> Under {
        Under {
            transport: Arc::new(MemoryTransport::new()),
            amqp: None,
        }
    }

    /// A transport on a fresh vhost, or `None` (skipped) without RabbitMQ
    /// outside CI.
    async fn amqp(case: &str) -> Option<Under> {
        if !kiln_tests::require_service(
            "RabbitMQ at 127.0.0.1:5672",
            kiln_tests::tcp_port_open("127.0.0.1:5672"),
        ) {
            return None;
        }
        let vhost = format!(
            "kiln-test-contract-{case}-{}",
            uuid::Uuid::new_v4().simple()
        );
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        let transport = connect(&url).await;
        Some(Under {
            transport,
            amqp: Some((vhost, url)),
        })
    }

    /// A second client of the same transport (another connection to the
    /// same vhost; the same in-process hub).
    async fn another(&self) -> Arc<dyn Transport> {
        match &self.amqp {
            Some((_, url)) => connect(url).await,
            None => self.transport.clone(),
        }
    }
}

impl Drop for Under {
    fn drop(&mut self) {
        if let Some((vhost, _)) = &self.amqp {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_vhost", vhost])
                .output();
        }
    }
}

async fn connect(url: &str) -> Arc<dyn Transport> {
    let mut config = AmqpConfig::new(url, "kiln contract test");
    config.publish_timeout = Duration::from_secs(30);
    Arc::new(
        AmqpTransport::connect(config)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}")),
    )
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("running rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A message told apart by `tag`.
fn msg(tag: &str) -> Envelope {
    Envelope::new(Message::CancelBuild {
        build_id: uuid::Uuid::nil(),
        drv_path: tag.to_string(),
    })
}

fn tag(d: &Delivery) -> String {
    match &d.envelope.body {
        Message::CancelBuild { drv_path, .. } => drv_path.clone(),
        other => panic!("unexpected message {other:?}"),
    }
}

async fn publish(t: &Arc<dyn Transport>, route: &Route, tags: impl IntoIterator<Item = String>) {
    for tag in tags {
        t.publish(route, &msg(&tag), 0)
            .await
            .unwrap_or_else(|e| panic!("publishing {tag} on {}: {e}", route.name()));
    }
}

/// The next delivery of `sub`, failing after [`PATIENCE`].
async fn next(sub: &mut Box<dyn Subscription>, what: &str) -> Delivery {
    match tokio::time::timeout(PATIENCE, sub.next()).await {
        Ok(Ok(Some(d))) => d,
        Ok(Ok(None)) => panic!("{what}: the subscription ended"),
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: nothing within {PATIENCE:?}"),
    }
}

/// Whether `sub` stays silent for `quiet`.
async fn silent(sub: &mut Box<dyn Subscription>, quiet: Duration) -> bool {
    !matches!(
        tokio::time::timeout(quiet, sub.next()).await,
        Ok(Ok(Some(_)))
    )
}

fn tags(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Runs `$case` against the memory and the AMQP transport.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$case(super::Under::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn amqp() {
                if let Some(under) = super::Under::amqp(stringify!($case)).await {
                    super::$case(under).await;
                }
            }
        }
    )*};
}

contract!(
    queue_messages_reach_exactly_one_consumer,
    a_nacked_message_comes_back,
    broadcasts_reach_every_subscriber_from_when_it_subscribed,
    next_is_cancel_safe,
    records_are_replaced_and_read_back,
    leadership_is_held_by_one_at_a_time,
);

async fn queue_messages_reach_exactly_one_consumer(under: Under) {
    let t = under.transport.clone();
    let other = under.another().await;
    let mut a = t.subscribe(&Route::Jobs).await.unwrap();
    let mut b = other.subscribe(&Route::Jobs).await.unwrap();
    let sent = tags("q", 40);
    publish(&t, &Route::Jobs, sent.clone()).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while seen.values().sum::<usize>() < sent.len() {
        let d = tokio::select! {
            d = a.next() => d,
            d = b.next() => d,
            _ = tokio::time::sleep(PATIENCE) => panic!("only {} of {} arrived", seen.len(), sent.len()),
        };
        let d = d.unwrap().expect("subscription open");
        *seen.entry(tag(&d)).or_default() += 1;
        d.ack().await.unwrap();
    }
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), {
        let mut s = sent.clone();
        s.sort();
        s
    });
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(silent(&mut a, Duration::from_millis(500)).await);
    assert!(silent(&mut b, Duration::from_millis(10)).await);
}

async fn a_nacked_message_comes_back(under: Under) {
    let t = under.transport.clone();
    let mut sub = t.subscribe(&Route::Eval).await.unwrap();
    publish(&t, &Route::Eval, ["n-0".to_string()]).await;
    let first = next(&mut sub, "the message").await;
    assert_eq!(tag(&first), "n-0");
    first.nack(true).await.unwrap();
    let again = next(&mut sub, "the message given back").await;
    assert_eq!(tag(&again), "n-0");
    again.ack().await.unwrap();
    assert!(silent(&mut sub, Duration::from_millis(500)).await);
}

async fn broadcasts_reach_every_subscriber_from_when_it_subscribed(under: Under) {
    let t = under.transport.clone();
    let other = under.another().await;
    let mut a = t.subscribe(&Route::BuildControl).await.unwrap();
    publish(&t, &Route::BuildControl, ["early".to_string()]).await;
    let mut b = other.subscribe(&Route::BuildControl).await.unwrap();
    let sent = tags("b", 5);
    publish(&other, &Route::BuildControl, sent.clone()).await;
    let mut got_a = Vec::new();
    for _ in 0..=sent.len() {
        got_a.push(tag(&next(&mut a, "a broadcast to a").await));
    }
    let mut got_b = Vec::new();
    for _ in 0..sent.len() {
        got_b.push(tag(&next(&mut b, "a broadcast to b").await));
    }
    let mut want_a = vec!["early".to_string()];
    want_a.extend(sent.iter().cloned());
    assert_eq!(got_a, want_a);
    assert_eq!(got_b, sent, "b subscribed after 'early' went out");
}

/// Roles wait on several subscriptions in one `select!`: a `next` dropped
/// before it finished must lose nothing and leave nothing held.
async fn next_is_cancel_safe(under: Under) {
    let t = under.transport.clone();
    let mut sub = t.subscribe(&Route::Derivations).await.unwrap();
    let sent = tags("c", 30);
    let publisher = {
        let t = t.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            for tag in sent {
                publish(&t, &Route::Derivations, [tag]).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let got = drain_impatiently(&mut sub, sent.len()).await;
    publisher.await.unwrap();
    assert_eq!(got, sent);
}

/// Receives `n` messages with a `next` that is mostly cancelled.
async fn drain_impatiently(sub: &mut Box<dyn Subscription>, n: usize) -> Vec<String> {
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            start.elapsed() < PATIENCE * 2,
            "only {got:?} of {n} arrived"
        );
        if let Ok(d) = tokio::time::timeout(Duration::from_micros(300), sub.next()).await {
            let d = d.unwrap().expect("subscription open");
            got.push(tag(&d));
            d.ack().await.unwrap();
        }
    }
    got
}

async fn records_are_replaced_and_read_back(under: Under) {
    let t = under.transport.clone();
    assert_eq!(t.load_state("contract").await.unwrap(), None);
    t.save_state("contract", b"one".to_vec()).await.unwrap();
    t.save_state("contract", b"two".to_vec()).await.unwrap();
    let other = under.another().await;
    assert_eq!(
        other.load_state("contract").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
    // Reading does not take the record away.
    assert_eq!(
        t.load_state("contract").await.unwrap().as_deref(),
        Some(&b"two"[..])
    );
}

async fn leadership_is_held_by_one_at_a_time(under: Under) {
    let t = under.transport.clone();
    let other = under.another().await;
    let first = t.lead("contract").await.unwrap();
    let second = tokio::spawn(async move { other.lead("contract").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!second.is_finished(), "two held the leadership at once");
    drop(first);
    tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the leadership passed on once given up")
        .unwrap()
        .unwrap();
}

/// The broker's own: connections closed under a subscriber whose `next` is
/// being cancelled all the while. Every message still arrives once, and
/// the queue ends with exactly one consumer (a consumer left behind by a
/// cancelled re-subscription would hold messages that nobody reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_resubscribing_is_cancel_safe_across_dropped_connections() {
    let Some(under) = Under::amqp("reconnect").await else {
        return;
    };
    let (vhost, _) = under.amqp.clone().unwrap();
    let t = under.transport.clone();
    let mut sub = t.subscribe(&Route::BuildEvents).await.unwrap();
    for round in 0..3 {
        rabbitmqctl(&["close_all_connections", "-p", &vhost, "contract test"]);
        // Cancelled `next`s while the subscription reconnects.
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_micros(200), sub.next()).await;
        }
        let sent = tags(&format!("r{round}"), 10);
        publish(&t, &Route::BuildEvents, sent.clone()).await;
        let got = drain_impatiently(&mut sub, sent.len()).await;
        assert_eq!(got, sent);
    }
    let listing = rabbitmqctl(&["list_queues", "-p", &vhost, "-q", "name", "consumers"]);
    let consumers: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("kiln.build-events\t"))
        .collect();
    assert_eq!(consumers, ["kiln.build-events\t1"], "{listing}");
}
