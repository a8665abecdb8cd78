//! `processor worker`: consumes tasks from RabbitMQ, aggregates them with the engine and
//! reports to the task manager, and with `--metrics-addr` serves its Prometheus metrics
//! (`metrics`). A thin shell around [`engine::aggregate`].

mod arriving;
mod callbacks;
mod consumer;
mod error_chain;
mod identity;
mod metrics;
mod running;
mod task;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use engine::Config;
use lapin::uri::AMQPUri;
use runner::settings::{parse_duration, parse_size};
use storage::{Bucket, BucketOptions, BucketSettings, Location, Storage};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use callbacks::Callbacks;
use consumer::{Consumer, QueueSettings};
use task::TaskContext;

#[derive(Args)]
pub struct WorkerArgs {
    /// RabbitMQ URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long, env = "AMQP_URL", hide_env_values = true, value_parser = parse_amqp_uri)]
    amqp_url: AMQPUri,
    /// Durable queue to consume (declared if missing).
    #[arg(long, env = "QUEUE_NAME", default_value = task_protocol::DEFAULT_QUEUE_NAME)]
    queue: String,
    /// Base URL of the task manager, for the callbacks.
    #[arg(
        long,
        env = "TASK_MANAGER_URL",
        default_value = task_protocol::DEFAULT_TASK_MANAGER_URL
    )]
    task_manager_url: String,
    /// Token for the callbacks: the task manager's WORKER_TOKEN (of a comma-separated list,
    /// the first). Prefer the environment variable: arguments show in process lists.
    #[arg(long, env = "WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// Shared storage root; the task messages' paths are relative to it. With a bucket
    /// (STORAGE_URL), a directory of this worker's own for the results being written.
    #[arg(long, env = "STORAGE_DIR", default_value = task_protocol::DEFAULT_STORAGE_DIR)]
    storage_dir: PathBuf,
    /// Where the uploads and results live when it is not STORAGE_DIR: s3://bucket/prefix, the
    /// client configured by the AWS_* variables (see the README).
    #[arg(long, env = "STORAGE_URL", value_parser = parse_location)]
    storage_url: Option<Location>,
    /// How long a request to the bucket is retried while it fails, e.g. 30s.
    #[arg(long, env = "STORAGE_RETRY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    storage_retry_timeout: Duration,
    /// Tasks processed at once (also the RabbitMQ prefetch count).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Memory budget of each running task, e.g. 512M or 2G; above it sorted runs spill to disk.
    #[arg(long, env = "ENGINE_MEMORY_LIMIT", value_parser = parse_size, default_value = "1G")]
    memory_limit: u64,
    /// Engine threads per task (0: all cores).
    #[arg(long, env = "ENGINE_THREADS", default_value_t = 0)]
    threads: usize,
    /// Directory for spilled runs (default: the system temp dir).
    #[arg(long, env = "ENGINE_TEMP_DIR")]
    temp_dir: Option<PathBuf>,
    /// How long the running tasks may finish after SIGTERM/Ctrl-C before they are
    /// cancelled and returned to the queue, e.g. 25s (a bare number is seconds).
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Deliveries of a task after which it is abandoned: reported FAILED and dead-lettered
    /// (a task whose processing is interrupted each time, e.g. a worker killed by the OOM killer).
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(task_protocol::QUEUE_DELIVERY_LIMIT)))]
    max_attempts: u32,
    /// Time between two progress reports of a running task, e.g. 2s or 500ms.
    #[arg(long, env = "WORKER_PROGRESS_INTERVAL", value_parser = positive_duration)]
    progress_interval: Option<Duration>,
    /// The same in milliseconds, as older configurations give it.
    #[arg(long, env = "WORKER_PROGRESS_INTERVAL_MS", hide = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    progress_interval_ms: Option<u64>,
    /// How long an upload that a task message announces while it arrives may stop growing
    /// before the message goes back to the queue, e.g. 10m (a bare number is seconds; longer
    /// than the task manager's UPLOAD_IDLE_TIMEOUT, which refuses such an upload first).
    #[arg(long, env = "WORKER_ARRIVAL_TIMEOUT", default_value = "10m", value_parser = positive_duration)]
    arrival_timeout: Duration,
    /// Serve the worker's Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100
    /// (port 0: any free port, logged). Off by default.
    #[arg(long, env = "METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

/// The time between two progress reports when none is configured.
const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

fn parse_location(text: &str) -> Result<Location, String> {
    Location::parse(text).map_err(|e| e.to_string())
}

fn parse_amqp_uri(text: &str) -> Result<AMQPUri, String> {
    text.parse()
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than 0".into()),
        duration => Ok(duration),
    }
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    super::init_tracing("info")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: WorkerArgs) -> anyhow::Result<()> {
    // First, so that a taken address stops the worker before it consumes anything.
    if let Some(addr) = args.metrics_addr {
        let bound = metrics::serve(addr).await?;
        info!(url = %format_args!("http://{bound}/metrics"), "serving the metrics");
    }
    let (root, bucket) = match args.storage_url {
        None => (args.storage_dir, None),
        Some(Location::Dir(dir)) => (dir, None),
        Some(Location::Bucket { name, prefix }) => {
            let options = BucketOptions {
                retry_timeout: args.storage_retry_timeout,
                ..BucketOptions::default()
            };
            let settings =
                BucketSettings::read(&name, &prefix, |name| std::env::var(name).ok(), options);
            (args.storage_dir, Some(Bucket::connect(&settings)?))
        }
    };
    let storage = Storage::open(&root, bucket)?;
    info!(storage = %storage.describe(), "storage");
    let worker = identity::worker_id();
    info!(%worker, "worker id");
    let shutdown = CancellationToken::new();
    let abort = CancellationToken::new();
    tokio::spawn(stop_on_signals(shutdown.clone(), abort.clone()));

    let ctx = TaskContext {
        storage,
        engine: Config {
            memory_limit: args.memory_limit,
            threads: args.threads,
            temp_dir: args.temp_dir,
            ..Config::default()
        },
        callbacks: Callbacks::new(&args.task_manager_url, args.worker_token.as_deref(), worker)?,
        progress_every: args
            .progress_interval
            .or(args.progress_interval_ms.map(Duration::from_millis))
            .unwrap_or(DEFAULT_PROGRESS_INTERVAL),
        abort,
        max_attempts: args.max_attempts,
        running: Default::default(),
        arrival_timeout: args.arrival_timeout,
    };
    let settings = QueueSettings {
        amqp_uri: args.amqp_url,
        queue: args.queue,
        concurrency: args.concurrency,
        drain_timeout: args.drain_timeout,
    };
    Consumer::new(settings, ctx, shutdown).run().await?;
    info!("worker stopped");
    Ok(())
}

/// First SIGTERM/Ctrl-C: stop consuming and let the running tasks finish.
/// Second one: cancel them (their messages return to the queue).
async fn stop_on_signals(shutdown: CancellationToken, abort: CancellationToken) {
    stop_signal().await;
    info!("stop requested: no new tasks");
    shutdown.cancel();
    stop_signal().await;
    warn!("second stop request: cancelling the running tasks");
    abort.cancel();
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                return;
            }
            Err(err) => warn!(error = %err, "cannot listen for SIGTERM"),
        }
    }
    if let Err(err) = tokio::signal::ctrl_c().await {
        warn!(error = %err, "cannot listen for Ctrl-C");
        std::future::pending::<()>().await;
    }
}
