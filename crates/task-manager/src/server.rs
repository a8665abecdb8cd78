//! Start-up and shutdown of the whole service.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState};
use crate::ingest::UploadLimits;
use crate::queue::{AmqpPublisher, EmbeddedQueue, LeaseKeeper, LeasePolicy, TaskQueue};
use crate::retention;
use crate::settings::Settings;
use crate::store::Store;
use storage::{Bucket, Storage};

/// How long requests in flight (uploads, downloads) may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A running task manager.
pub struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    serving: JoinHandle<()>,
    /// The retention sweep (`RETENTION`), stopped with the server.
    retention: Option<JoinHandle<()>>,
    state: Arc<AppState>,
    /// RabbitMQ mode: republishes the tasks whose worker stopped reporting.
    keeper: Option<LeaseKeeper>,
}

/// Creates the storage directories, migrates the database, connects the queue (or starts
/// the embedded runners), binds the port and serves in the background.
pub async fn start(settings: Settings) -> anyhow::Result<Server> {
    settings.check_tokens()?;
    // Before anything is counted: what is recorded without a recorder is lost.
    crate::metrics::handle();
    let bucket = match &settings.bucket {
        Some(bucket) => Some(Bucket::connect(bucket)?),
        None => None,
    };
    let storage = Storage::open(&settings.storage_dir, bucket)
        .with_context(|| format!("storage directory {}", settings.storage_dir.display()))?;
    let store = Store::connect(&settings.database_url, settings.database_timeout)
        .await
        .with_context(|| format!("database {}", redact(&settings.database_url)))?;
    let bind = listen_ip(&settings);
    let listener = tokio::net::TcpListener::bind((bind, settings.port))
        .await
        .with_context(|| format!("cannot listen on {bind}:{}", settings.port))?;
    let addr = listener.local_addr()?;
    let queue = match &settings.amqp_url {
        Some(url) => TaskQueue::Amqp(Box::new(
            AmqpPublisher::connect(url, &settings.queue_name).await,
        )),
        None => TaskQueue::Embedded(Box::new(
            EmbeddedQueue::start(
                store.clone(),
                storage.clone(),
                settings.engine_config(),
                settings.embedded_workers,
            )
            .await
            .context("starting the embedded runners")?,
        )),
    };
    let state = Arc::new(AppState {
        store,
        storage,
        queue,
        public_url: settings.public_url.clone(),
        authentication: settings.authentication(),
        api_tokens: settings.api_tokens.clone(),
        worker_tokens: settings.worker_tokens.clone(),
        metrics_tokens: settings.metrics_tokens.clone(),
        uploads: UploadLimits {
            max_bytes: settings.max_upload_bytes,
            slots: Arc::new(Semaphore::new(settings.max_concurrent_uploads)),
            idle_timeout: settings.upload_idle_timeout,
            total_timeout: settings.upload_timeout,
            sync: settings.sync_uploads,
            early: settings.early_aggregation,
        },
        fallback_base_url: base_url(addr),
        retention: settings.retention,
        download_redirect: settings.download_redirect,
        lease_timeout: settings.lease_timeout,
    });
    let keeper = (!state.queue.is_embedded()).then(|| {
        let policy = LeasePolicy {
            timeout: settings.lease_timeout,
            max_leases: settings.max_leases,
        };
        let publisher = state.clone();
        LeaseKeeper::start(state.store.clone(), policy, move |id| {
            let publisher = publisher.clone();
            async move { publisher.queue.submit(id).await }
        })
    });
    let stop = CancellationToken::new();
    let retention = settings.retention.map(|keep| {
        retention::spawn(
            state.store.clone(),
            state.storage.clone(),
            keep,
            stop.clone(),
        )
    });
    let serving = tokio::spawn(serve(
        listener,
        http::router(state.clone()),
        settings.header_read_timeout,
        stop.clone(),
    ));
    tracing::info!(
        %addr,
        queue = state.queue.kind(),
        database = %redact(&settings.database_url),
        "task manager listening"
    );
    Ok(Server {
        addr,
        stop,
        serving,
        retention,
        state,
        keeper,
    })
}

impl Server {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT`, with 127.0.0.1 (or ::1) when listening on all addresses.
    pub fn base_url(&self) -> String {
        base_url(self.addr)
    }

    /// Stops accepting requests, finishes those in flight, stops the queue and closes the
    /// database.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.serving).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("the HTTP server failed: {e}"),
            Err(_) => {
                tracing::warn!(
                    "requests still running after {SHUTDOWN_GRACE:?}; closing their connections"
                );
                self.serving.abort();
            }
        }
        if let Some(retention) = self.retention.take()
            && let Err(e) = retention.await
        {
            tracing::error!("the retention sweep failed: {e}");
        }
        if let Some(keeper) = self.keeper.take() {
            keeper.shutdown().await;
        }
        self.state.queue.shutdown().await;
        self.state.store.close().await;
        tracing::info!("task manager stopped");
    }
}

/// Accepts connections until `stop`, then closes the listener and lets the connections
/// finish their requests in flight. A connection that does not send a request's headers
/// within `header_read_timeout` is closed.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    header_read_timeout: Duration,
    stop: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let connections = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection closed: {e}");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// Pause after a failed `accept`.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The address to listen on: `BIND`, but without any token only 127.0.0.1 (or `BIND` when it
/// is a loopback address), unless `ALLOW_INSECURE_BIND` allows it. Warns when no token is set.
fn listen_ip(settings: &Settings) -> IpAddr {
    let bind = settings.bind;
    if settings.authentication() {
        return bind;
    }
    if bind.is_loopback() {
        tracing::warn!(
            "no API_TOKEN or WORKER_TOKEN set: authentication is off; listening on {bind} only"
        );
        bind
    } else if settings.allow_insecure_bind {
        tracing::warn!(
            "no API_TOKEN or WORKER_TOKEN set: authentication is off, and ALLOW_INSECURE_BIND=1 \
             opens {bind} to anyone who can reach it"
        );
        bind
    } else {
        tracing::warn!(
            "no API_TOKEN or WORKER_TOKEN set: authentication is off, so listening on 127.0.0.1 \
             only instead of {bind}; set the tokens (or BIND with ALLOW_INSECURE_BIND=1)"
        );
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

fn base_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// The URL without its password, for logs and errors.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://user:secret@db:5432/tasks"),
            "postgres://user:***@db:5432/tasks"
        );
        assert_eq!(redact("mysql://root@db/test"), "mysql://root@db/test");
        assert_eq!(
            redact("sqlite://local_storage/tasks.db"),
            "sqlite://local_storage/tasks.db"
        );
    }

    #[test]
    fn without_tokens_only_loopback_unless_allowed() {
        let mut settings = Settings::new("unused");
        assert_eq!(listen_ip(&settings), IpAddr::V4(Ipv4Addr::LOCALHOST));
        settings.bind = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(listen_ip(&settings), IpAddr::V6(Ipv6Addr::LOCALHOST));
        settings.bind = "10.1.2.3".parse().unwrap();
        assert_eq!(listen_ip(&settings), IpAddr::V4(Ipv4Addr::LOCALHOST));
        settings.allow_insecure_bind = true;
        assert_eq!(listen_ip(&settings), settings.bind);
        settings.allow_insecure_bind = false;
        settings.api_tokens = crate::Tokens::parse("token");
        assert_eq!(listen_ip(&settings), settings.bind);
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("0.0.0.0:5000".parse().unwrap()),
            "http://127.0.0.1:5000"
        );
        assert_eq!(base_url("[::]:80".parse().unwrap()), "http://[::1]:80");
        assert_eq!(base_url("10.1.2.3:8".parse().unwrap()), "http://10.1.2.3:8");
    }
}
