//! What every distributed command shares: the broker connection
//! (`--amqp`), the store (`--store`), a service's logging, its
//! `/metrics` and `/healthz` port, its configuration file, and the signals
//! that shut it down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_protocol::amqp::{AmqpConfig, AmqpTransport};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// The broker every distributed command talks to.
#[derive(clap::Args, Debug, Clone)]
pub struct AmqpOpts {
    /// AMQP URL of the broker; its vhost separates farms sharing a broker.
    #[arg(
        long = "amqp",
        env = "KILN_AMQP_URL",
        value_name = "URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,
}

impl AmqpOpts {
    /// Connects a service (waiting up to two minutes for the broker).
    pub async fn connect(&self, role: &str) -> Result<AmqpTransport> {
        self.connect_within(role, Duration::from_secs(120)).await
    }

    /// Connects a client command (`kiln submit`, `kiln status`, …): a
    /// broker that does not answer within [`CLIENT_CONNECT_TIMEOUT`] is
    /// reported as unreachable (exit code 69).
    pub async fn connect_client(&self) -> Result<AmqpTransport> {
        self.connect_within("client", CLIENT_CONNECT_TIMEOUT).await
    }

    async fn connect_within(&self, role: &str, wait: Duration) -> Result<AmqpTransport> {
        let name = format!("kiln-{role}@{}", kiln_builder::worker::host_name());
        let mut config = AmqpConfig::new(&self.amqp, name);
        config.publish_timeout = wait;
        AmqpTransport::connect(config).await.map_err(|e| {
            anyhow::Error::new(crate::exit::Unreachable(format!(
                "cannot reach the broker at {}: {e}",
                kiln_protocol::amqp::redact(&self.amqp)
            )))
        })
    }
}

/// How long a client command waits for the broker (or for the coordinator
/// to answer a query) before it calls the farm unreachable.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of every long-running service.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceOpts {
    /// A TOML file with the role's settings; flags and environment
    /// variables override it.
    #[arg(long, value_name = "FILE", env = "KILN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where `/metrics` (Prometheus text) and `/healthz` are served.
    #[arg(
        long,
        value_name = "ADDR",
        env = "KILN_METRICS_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_addr: SocketAddr,
    /// Log format on standard error.
    #[arg(long, value_enum, env = "KILN_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// How a service writes its log.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl ServiceOpts {
    /// Reads the configuration file, or the defaults without one.
    pub fn load<T: DeserializeOwned + Default>(&self) -> Result<T> {
        let Some(path) = &self.config else {
            return Ok(T::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration '{}'", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in the configuration '{}'", path.display()))
    }

    /// Logs at `KILN_LOG`'s level (info by default) in the chosen format.
    pub fn init_logging(&self) {
        let spec = std::env::var("KILN_LOG").unwrap_or_else(|_| "info".into());
        let filter = tracing_subscriber::EnvFilter::try_new(&spec)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Json => builder.json().try_init(),
            LogFormat::Text => builder.try_init(),
        };
    }
}

/// Liveness as `/healthz` reports it.
#[derive(Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn set(&self, ok: bool) {
        self.0.store(ok, Ordering::Relaxed);
    }
}

/// Installs the Prometheus recorder and serves `/metrics` and `/healthz`
/// on `addr` until `shutdown`.
pub async fn serve_metrics(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
            3600.0,
        ])
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // Counters an operator alerts on are shown from the start, at zero,
    // rather than appearing with their first event.
    for name in ["kiln_redeliveries_total", "kiln_dead_letters_total"] {
        metrics::counter!(name).absolute(0);
    }
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let h = handle.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], h.render()) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ok = health.0.load(Ordering::Relaxed);
                async move {
                    if ok {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for /metrics on {addr}"))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(())
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}
