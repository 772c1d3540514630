//! The external services Kiln relies on are reachable and behave: RabbitMQ
//! completes an AMQP handshake and round-trips a message, and the Garage S3
//! bucket accepts a put, get and delete of an object.
//!
//! When a service (or its settings) is missing, the test fails under
//! `CI=true` and is skipped with a note otherwise (see
//! [`kiln_tests::require_service`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::primitives::ByteStream;
use kiln_tests::{amqp_url, require_service, s3_config, tcp_port_open};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// A name no other run (or concurrent test process) uses.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// `host:port` of an AMQP URI such as `amqp://user:pass@host:port/vhost`.
fn amqp_authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

#[test]
fn amqp_authority_strips_credentials_and_vhost() {
    assert_eq!(
        amqp_authority("amqp://guest:guest@127.0.0.1:5672/%2f"),
        "127.0.0.1:5672"
    );
    assert_eq!(amqp_authority("amqp://broker/vhost"), "broker:5672");
}

#[tokio::test]
async fn rabbitmq_handshake_and_message_round_trip() {
    let url = amqp_url();
    let authority = amqp_authority(&url);
    if !require_service(
        &format!("RabbitMQ at {authority}"),
        tcp_port_open(&authority),
    ) {
        return;
    }

    let connection = tokio::time::timeout(
        Duration::from_secs(20),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .unwrap_or_else(|_| panic!("AMQP handshake with {authority} timed out"))
    .unwrap_or_else(|e| panic!("AMQP handshake with {authority} failed: {e}"));
    assert!(
        connection.status().connected(),
        "connection to {authority} not open"
    );

    let channel = connection
        .create_channel()
        .await
        .expect("opening an AMQP channel");
    let queue_name = format!("kiln-tests.services.{}", unique_suffix());
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(queue_name.as_str().into(), options, FieldTable::default())
        .await
        .unwrap_or_else(|e| panic!("declaring queue {queue_name}: {e}"));
    assert_eq!(queue.message_count(), 0);

    let payload = format!("kiln services check {queue_name}").into_bytes();
    channel
        .basic_publish(
            "".into(),
            queue_name.as_str().into(),
            BasicPublishOptions::default(),
            &payload,
            BasicProperties::default(),
        )
        .await
        .expect("publishing to the default exchange")
        .await
        .expect("publisher confirmation");

    // The broker routes asynchronously; poll briefly for the message.
    let mut received = None;
    for _ in 0..50 {
        received = channel
            .basic_get(queue_name.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap_or_else(|e| panic!("basic.get on {queue_name}: {e}"));
        if received.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let message = received.unwrap_or_else(|| panic!("message never arrived on {queue_name}"));
    assert_eq!(message.delivery.data, payload);

    channel
        .close(200, "done".into())
        .await
        .expect("closing channel");
    connection
        .close(200, "done".into())
        .await
        .expect("closing connection");
}

#[tokio::test]
async fn garage_s3_put_get_delete() {
    let Some(env) = s3_config() else {
        return;
    };
    let reachable = env.endpoint_authority().is_none_or(tcp_port_open);
    if !require_service(&format!("S3 endpoint {}", env.endpoint), reachable) {
        return;
    }
    let client = env.client().await;
    let key = format!("kiln-tests/services/{}", unique_suffix());
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();

    client
        .put_object()
        .bucket(&env.bucket)
        .key(&key)
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT s3://{}/{key}: {e:?}", env.bucket));

    let got = client
        .get_object()
        .bucket(&env.bucket)
        .key(&key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET s3://{}/{key}: {e:?}", env.bucket));
    assert_eq!(got.content_length(), Some(body.len() as i64));
    let data = got
        .body
        .collect()
        .await
        .unwrap_or_else(|e| panic!("reading body of s3://{}/{key}: {e}", env.bucket))
        .into_bytes();
    assert!(
        data == body,
        "s3://{}/{key} came back different",
        env.bucket
    );

    client
        .delete_object()
        .bucket(&env.bucket)
        .key(&key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DELETE s3://{}/{key}: {e:?}", env.bucket));

    let after = client
        .get_object()
        .bucket(&env.bucket)
        .key(&key)
        .send()
        .await;
    match after {
        Err(e) => assert!(
            e.as_service_error().is_some_and(|s| s.is_no_such_key()),
            "GET after DELETE of s3://{}/{key} failed oddly: {e:?}",
            env.bucket
        ),
        Ok(_) => panic!("s3://{}/{key} still readable after DELETE", env.bucket),
    }
}
