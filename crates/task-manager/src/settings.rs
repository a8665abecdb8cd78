//! Configuration of the task manager, read from environment variables.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use storage::layout::TEMP_DIR;
use storage::{BucketOptions, BucketSettings, Location};

use crate::tokens::Tokens;

/// Everything the task manager needs to run. Build it with [`Settings::from_env`] or
/// [`Settings::new`] and adjust the fields.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to listen on (`BIND`, default `0.0.0.0`). Without any token configured the
    /// server listens on 127.0.0.1 instead, unless `allow_insecure_bind`.
    pub bind: IpAddr,
    /// Listen on `bind` even without tokens (`ALLOW_INSECURE_BIND=1`, only together with an
    /// explicit `BIND`).
    pub allow_insecure_bind: bool,
    /// Tokens of the `/v1` API (`API_TOKEN`, comma-separated); none: no authentication.
    pub api_tokens: Tokens,
    /// Tokens of the workers' callbacks (`WORKER_TOKEN`, comma-separated); clients' API
    /// tokens are not accepted there.
    pub worker_tokens: Tokens,
    /// Tokens of `GET /metrics` (`METRICS_TOKEN`, comma-separated); none: open, like `/health`.
    pub metrics_tokens: Tokens,
    /// Largest upload accepted, in bytes (`MAX_UPLOAD_BYTES`, e.g. `50G`; default 50 GiB).
    pub max_upload_bytes: u64,
    /// Uploads received at the same time, at most (`MAX_CONCURRENT_UPLOADS`, default 16); more
    /// are answered 503 with `Retry-After`.
    pub max_concurrent_uploads: usize,
    /// Longest wait for a request's headers once a connection is open (`HEADER_READ_TIMEOUT`,
    /// e.g. `30s`; default 30 s); then the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of an upload's body (`UPLOAD_IDLE_TIMEOUT`, default
    /// 60 s); then the upload is answered 408 and dropped.
    pub upload_idle_timeout: Duration,
    /// Longest time to receive a whole upload (`UPLOAD_TIMEOUT`, default 6 h); then 408.
    pub upload_timeout: Duration,
    /// Whether an upload is on the disk (fsync) before it is accepted (`SYNC_UPLOADS`, 1 or 0;
    /// default 1). With 0 an accepted upload survives a crash of the task manager but not of
    /// the machine, and the service answers sooner: the disk need not keep up with the network.
    pub sync_uploads: bool,
    /// Longest wait for a database connection (`DATABASE_TIMEOUT`, default 5 s); then the
    /// request is answered 503.
    pub database_timeout: Duration,
    /// Port to listen on (`PORT`, default 5000; 0 picks a free port).
    pub port: u16,
    /// Root of `raw_data/` and `processed_data/` (`STORAGE_DIR`, or `STORAGE_URL` naming a
    /// directory; default `local_storage`). With a bucket, it holds only the files being
    /// written and the engine's spills.
    pub storage_dir: PathBuf,
    /// The bucket that holds the uploads and results (`STORAGE_URL=s3://bucket/prefix`, its
    /// client configured by the `AWS_*` variables; `STORAGE_RETRY_TIMEOUT`, default 30 s, how
    /// long a request is retried); `None`: the directory holds them.
    pub bucket: Option<BucketSettings>,
    /// How long a finished task keeps its upload and result (`RETENTION`, e.g. `7d`); then
    /// they are deleted and the task marked expired. `None` (the default): kept forever.
    pub retention: Option<Duration>,
    /// With a bucket, how long the presigned URL a download is redirected to stays valid
    /// (`DOWNLOAD_REDIRECT=1`, for `DOWNLOAD_URL_EXPIRY`, default 15 min); `None` (the
    /// default): downloads stream through the task manager.
    pub download_redirect: Option<Duration>,
    /// `sqlite://...`, `mysql://...` or `postgres://...` (`DATABASE_URL`, default the SQLite
    /// file `<storage_dir>/tasks.db`).
    pub database_url: String,
    /// RabbitMQ URL (`AMQP_URL`); `None` runs the engine in-process (embedded mode).
    pub amqp_url: Option<String>,
    /// Durable queue the tasks are published on (`QUEUE_NAME`).
    pub queue_name: String,
    /// Base of the absolute `download_link` (`PUBLIC_URL`); `None` derives it from the
    /// request's `Host` header.
    pub public_url: Option<String>,
    /// Tasks run at the same time in embedded mode (`EMBEDDED_WORKERS`, default 1).
    pub embedded_workers: usize,
    /// Engine memory budget in bytes in embedded mode (`ENGINE_MEMORY_LIMIT`, e.g. `1G`).
    pub engine_memory_limit: u64,
    /// Engine threads in embedded mode (`ENGINE_THREADS`, 0 = one per core).
    pub engine_threads: usize,
    /// Whether an idle embedded runner aggregates an upload while it arrives
    /// (`EARLY_AGGREGATION`, 1 or 0; default 1).
    pub early_aggregation: bool,
    /// How long a worker's lease on a task lasts without a report (`TASK_LEASE_TIMEOUT`,
    /// default 2 min); then the task is republished (RabbitMQ mode).
    pub lease_timeout: Duration,
    /// Expired leases after which a task is abandoned as FAILED instead of republished
    /// (`TASK_MAX_LEASES`, default 5).
    pub max_leases: u32,
}

/// Default storage root, shared with the workers.
pub use task_protocol::DEFAULT_STORAGE_DIR;
/// Default HTTP port.
pub const DEFAULT_PORT: u16 = 5000;
/// Default largest upload: 50 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 50 << 30;
/// Default number of uploads received at the same time.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: usize = 16;
const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
const DEFAULT_DATABASE_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_LEASES: u32 = 5;
const DEFAULT_DOWNLOAD_URL_EXPIRY: Duration = Duration::from_secs(15 * 60);

impl Settings {
    /// Defaults for everything, with the given storage root and its SQLite database.
    pub fn new(storage_dir: impl Into<PathBuf>) -> Settings {
        let storage_dir = storage_dir.into();
        let engine = engine::Config::default();
        Settings {
            bind: IpAddr::from([0, 0, 0, 0]),
            allow_insecure_bind: false,
            api_tokens: Tokens::default(),
            worker_tokens: Tokens::default(),
            metrics_tokens: Tokens::default(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_concurrent_uploads: DEFAULT_MAX_CONCURRENT_UPLOADS,
            sync_uploads: true,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            upload_idle_timeout: DEFAULT_UPLOAD_IDLE_TIMEOUT,
            upload_timeout: DEFAULT_UPLOAD_TIMEOUT,
            database_timeout: DEFAULT_DATABASE_TIMEOUT,
            port: DEFAULT_PORT,
            database_url: default_database_url(&storage_dir),
            storage_dir,
            bucket: None,
            retention: None,
            download_redirect: None,
            amqp_url: None,
            queue_name: task_protocol::DEFAULT_QUEUE_NAME.to_string(),
            public_url: None,
            embedded_workers: 1,
            early_aggregation: true,
            engine_memory_limit: engine.memory_limit,
            engine_threads: engine.threads,
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            max_leases: DEFAULT_MAX_LEASES,
        }
    }

    /// Reads the settings from the environment (see the field docs for the variable names).
    /// Empty variables count as unset.
    pub fn from_env() -> anyhow::Result<Settings> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (a variable name to its value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Settings> {
        let var = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let location = match var("STORAGE_URL") {
            Some(url) => Location::parse(&url)?,
            None => Location::Dir(
                var("STORAGE_DIR")
                    .unwrap_or_else(|| DEFAULT_STORAGE_DIR.to_string())
                    .into(),
            ),
        };
        let mut settings = match location {
            Location::Dir(dir) => Settings::new(dir),
            Location::Bucket { name, prefix } => {
                let mut options = BucketOptions::default();
                if let Some(value) = var("STORAGE_RETRY_TIMEOUT") {
                    options.retry_timeout = parse_duration("STORAGE_RETRY_TIMEOUT", &value)?;
                }
                let dir = var("STORAGE_DIR").unwrap_or_else(|| DEFAULT_STORAGE_DIR.to_string());
                Settings {
                    bucket: Some(BucketSettings::read(&name, &prefix, var, options)),
                    ..Settings::new(dir)
                }
            }
        };
        if let Some(bind) = var("BIND") {
            settings.bind = parse_var("BIND", &bind)?;
            if let Some(flag) = var("ALLOW_INSECURE_BIND") {
                settings.allow_insecure_bind = parse_flag("ALLOW_INSECURE_BIND", &flag)?;
            }
        }
        if let Some(flag) = var("SYNC_UPLOADS") {
            settings.sync_uploads = parse_flag("SYNC_UPLOADS", &flag)?;
        }
        settings.api_tokens = Tokens::parse(&var("API_TOKEN").unwrap_or_default());
        settings.worker_tokens = Tokens::parse(&var("WORKER_TOKEN").unwrap_or_default());
        settings.metrics_tokens = Tokens::parse(&var("METRICS_TOKEN").unwrap_or_default());
        if let Some(limit) = var("MAX_UPLOAD_BYTES") {
            settings.max_upload_bytes = runner::settings::parse_size(&limit)
                .map_err(|e| anyhow::anyhow!("MAX_UPLOAD_BYTES: {e}"))?;
        }
        if let Some(uploads) = var("MAX_CONCURRENT_UPLOADS") {
            settings.max_concurrent_uploads = parse_var("MAX_CONCURRENT_UPLOADS", &uploads)?;
            if settings.max_concurrent_uploads == 0 {
                bail!("MAX_CONCURRENT_UPLOADS must be at least 1");
            }
        }
        for (name, field) in [
            ("HEADER_READ_TIMEOUT", &mut settings.header_read_timeout),
            ("UPLOAD_IDLE_TIMEOUT", &mut settings.upload_idle_timeout),
            ("UPLOAD_TIMEOUT", &mut settings.upload_timeout),
            ("DATABASE_TIMEOUT", &mut settings.database_timeout),
            ("TASK_LEASE_TIMEOUT", &mut settings.lease_timeout),
        ] {
            if let Some(value) = var(name) {
                *field = parse_duration(name, &value)?;
            }
        }
        if let Some(keep) = var("RETENTION") {
            settings.retention = Some(parse_duration("RETENTION", &keep)?);
        }
        let redirect = match var("DOWNLOAD_REDIRECT") {
            Some(flag) => parse_flag("DOWNLOAD_REDIRECT", &flag)?,
            None => false,
        };
        if redirect {
            if settings.bucket.is_none() {
                bail!(
                    "DOWNLOAD_REDIRECT=1 redirects downloads to the bucket: it needs \
                     STORAGE_URL=s3://bucket/prefix"
                );
            }
            settings.download_redirect = Some(match var("DOWNLOAD_URL_EXPIRY") {
                Some(value) => parse_duration("DOWNLOAD_URL_EXPIRY", &value)?,
                None => DEFAULT_DOWNLOAD_URL_EXPIRY,
            });
        }
        if let Some(leases) = var("TASK_MAX_LEASES") {
            settings.max_leases = parse_var("TASK_MAX_LEASES", &leases)?;
            if settings.max_leases == 0 {
                bail!("TASK_MAX_LEASES must be at least 1");
            }
        }
        if let Some(port) = var("PORT") {
            settings.port = parse_var("PORT", &port)?;
        }
        if let Some(url) = var("DATABASE_URL") {
            settings.database_url = url;
        }
        settings.amqp_url = var("AMQP_URL");
        if let Some(name) = var("QUEUE_NAME") {
            settings.queue_name = name;
        }
        settings.public_url = var("PUBLIC_URL").map(|url| url.trim_end_matches('/').to_string());
        if let Some(workers) = var("EMBEDDED_WORKERS") {
            settings.embedded_workers = parse_var("EMBEDDED_WORKERS", &workers)?;
            if settings.embedded_workers == 0 {
                bail!("EMBEDDED_WORKERS must be at least 1");
            }
        }
        if let Some(limit) = var("ENGINE_MEMORY_LIMIT") {
            settings.engine_memory_limit = runner::settings::parse_size(&limit)
                .map_err(|e| anyhow::anyhow!("ENGINE_MEMORY_LIMIT: {e}"))?;
        }
        if let Some(threads) = var("ENGINE_THREADS") {
            settings.engine_threads = parse_var("ENGINE_THREADS", &threads)?;
        }
        if let Some(flag) = var("EARLY_AGGREGATION") {
            settings.early_aggregation = parse_flag("EARLY_AGGREGATION", &flag)?;
        }
        Ok(settings)
    }

    /// Whether any token is configured, which turns authentication on.
    pub fn authentication(&self) -> bool {
        !self.api_tokens.is_empty() || !self.worker_tokens.is_empty()
    }

    /// Refuses token settings that would lock out the clients or the workers.
    pub fn check_tokens(&self) -> anyhow::Result<()> {
        if self.api_tokens.is_empty() && !self.worker_tokens.is_empty() {
            bail!("WORKER_TOKEN is set without API_TOKEN: every /v1 request would be refused");
        }
        if self.worker_tokens.is_empty() && !self.api_tokens.is_empty() && self.amqp_url.is_some() {
            bail!(
                "API_TOKEN is set without WORKER_TOKEN: the workers' callbacks would be refused; \
                 set WORKER_TOKEN here and on the workers"
            );
        }
        Ok(())
    }

    /// The engine configuration of embedded mode.
    pub fn engine_config(&self) -> engine::Config {
        engine::Config {
            memory_limit: self.engine_memory_limit,
            threads: self.engine_threads,
            temp_dir: Some(self.storage_dir.join(TEMP_DIR)),
            ..engine::Config::default()
        }
    }
}

/// `sqlite://<storage_dir>/tasks.db`.
pub fn default_database_url(storage_dir: &Path) -> String {
    format!("sqlite://{}", storage_dir.join("tasks.db").display())
}

/// `1` or `0`.
fn parse_flag(name: &str, value: &str) -> anyhow::Result<bool> {
    match value.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        other => bail!("invalid {name}={other:?}: expected 1 or 0"),
    }
}

/// A positive duration such as `30s`, `5m` or `1h 30m` (see [`runner::settings`]).
fn parse_duration(name: &str, value: &str) -> anyhow::Result<Duration> {
    let duration =
        runner::settings::parse_duration(value).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    if duration.is_zero() {
        bail!("{name} must be longer than 0");
    }
    Ok(duration)
}

fn parse_var<T>(name: &str, value: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    value
        .trim()
        .parse()
        .with_context(|| format!("invalid {name}={value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> anyhow::Result<Settings> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let settings = from(&[]).unwrap();
        assert_eq!(settings.port, 5000);
        assert_eq!(settings.bind.to_string(), "0.0.0.0");
        assert_eq!(settings.storage_dir, PathBuf::from("local_storage"));
        assert_eq!(settings.database_url, "sqlite://local_storage/tasks.db");
        assert_eq!(settings.amqp_url, None);
        assert_eq!(settings.queue_name, task_protocol::DEFAULT_QUEUE_NAME);
        assert_eq!(settings.embedded_workers, 1);
        assert!(!settings.authentication());
        assert!(!settings.allow_insecure_bind);
        assert_eq!(settings.max_upload_bytes, 50 << 30);
        assert_eq!(settings.max_concurrent_uploads, 16);
        assert_eq!(settings.header_read_timeout, Duration::from_secs(30));
        assert_eq!(settings.upload_idle_timeout, Duration::from_secs(60));
        assert_eq!(settings.database_timeout, Duration::from_secs(5));
        assert_eq!(settings.lease_timeout, Duration::from_secs(30));
        assert_eq!(settings.max_leases, 5);
    }

    #[test]
    fn limits_are_read() {
        let settings = from(&[
            ("MAX_CONCURRENT_UPLOADS", "3"),
            ("HEADER_READ_TIMEOUT", "2s"),
            ("UPLOAD_IDLE_TIMEOUT", "500ms"),
            ("UPLOAD_TIMEOUT", "1h 30m"),
            ("DATABASE_TIMEOUT", "1s"),
            ("TASK_LEASE_TIMEOUT", "1m 30s"),
            ("TASK_MAX_LEASES", "3"),
        ])
        .unwrap();
        assert_eq!(settings.lease_timeout, Duration::from_secs(90));
        assert_eq!(settings.max_leases, 3);
        assert_eq!(settings.max_concurrent_uploads, 3);
        assert_eq!(settings.header_read_timeout, Duration::from_secs(2));
        assert_eq!(settings.upload_idle_timeout, Duration::from_millis(500));
        assert_eq!(settings.upload_timeout, Duration::from_secs(5400));
        assert_eq!(settings.database_timeout, Duration::from_secs(1));
        for bad in [
            ("MAX_CONCURRENT_UPLOADS", "0"),
            ("UPLOAD_TIMEOUT", "soon"),
            ("DATABASE_TIMEOUT", "0s"),
            ("TASK_LEASE_TIMEOUT", "0"),
            ("TASK_MAX_LEASES", "0"),
        ] {
            let err = from(&[bad]).unwrap_err();
            assert!(format!("{err:#}").contains(bad.0), "{err:#}");
        }
    }

    #[test]
    fn security_values_are_read() {
        let settings = from(&[
            ("API_TOKEN", "a, b"),
            ("WORKER_TOKEN", "w"),
            ("MAX_UPLOAD_BYTES", "10M"),
            ("BIND", "0.0.0.0"),
            ("ALLOW_INSECURE_BIND", "1"),
        ])
        .unwrap();
        assert!(settings.api_tokens.accepts(b"a") && settings.api_tokens.accepts(b"b"));
        assert!(settings.worker_tokens.accepts(b"w") && !settings.worker_tokens.accepts(b"a"));
        assert_eq!(settings.max_upload_bytes, 10 << 20);
        assert!(settings.allow_insecure_bind);
        assert!(settings.authentication());
        settings.check_tokens().unwrap();
        // Only together with an explicit BIND.
        assert!(
            !from(&[("ALLOW_INSECURE_BIND", "1")])
                .unwrap()
                .allow_insecure_bind
        );
        assert!(from(&[("BIND", "0.0.0.0"), ("ALLOW_INSECURE_BIND", "yes please")]).is_err());
        assert!(from(&[("MAX_UPLOAD_BYTES", "huge")]).is_err());
        assert!(from(&[]).unwrap().sync_uploads);
        assert!(!from(&[("SYNC_UPLOADS", "0")]).unwrap().sync_uploads);
        assert!(from(&[("SYNC_UPLOADS", "no")]).is_err());
        assert!(from(&[]).unwrap().early_aggregation);
        assert!(
            !from(&[("EARLY_AGGREGATION", "0")])
                .unwrap()
                .early_aggregation
        );
    }

    #[test]
    fn download_redirect_is_read() {
        let bucket = ("STORAGE_URL", "s3://plays/tasks");
        assert_eq!(from(&[bucket]).unwrap().download_redirect, None);
        assert_eq!(
            from(&[bucket, ("DOWNLOAD_REDIRECT", "1")])
                .unwrap()
                .download_redirect,
            Some(Duration::from_secs(15 * 60))
        );
        let settings = from(&[
            bucket,
            ("DOWNLOAD_REDIRECT", "1"),
            ("DOWNLOAD_URL_EXPIRY", "2m"),
        ])
        .unwrap();
        assert_eq!(settings.download_redirect, Some(Duration::from_secs(120)));
        let off = from(&[
            bucket,
            ("DOWNLOAD_REDIRECT", "0"),
            ("DOWNLOAD_URL_EXPIRY", "2m"),
        ]);
        assert_eq!(off.unwrap().download_redirect, None);
        // A directory has nothing to redirect to.
        let err = from(&[("DOWNLOAD_REDIRECT", "1")]).unwrap_err();
        assert!(err.to_string().contains("STORAGE_URL=s3://"), "{err}");
        assert!(from(&[bucket, ("DOWNLOAD_REDIRECT", "yes")]).is_err());
    }

    #[test]
    fn token_settings_that_lock_someone_out_are_refused() {
        let worker_only = from(&[("WORKER_TOKEN", "w")]).unwrap();
        assert!(worker_only.check_tokens().is_err());
        let queue_without_worker_token =
            from(&[("API_TOKEN", "a"), ("AMQP_URL", "amqp://localhost")]).unwrap();
        let err = queue_without_worker_token.check_tokens().unwrap_err();
        assert!(err.to_string().contains("WORKER_TOKEN"), "{err}");
        // Embedded mode has no workers.
        from(&[("API_TOKEN", "a")]).unwrap().check_tokens().unwrap();
    }

    #[test]
    fn values_are_read() {
        let settings = from(&[
            ("PORT", "8080"),
            ("BIND", "127.0.0.1"),
            ("STORAGE_DIR", "/data"),
            ("AMQP_URL", "amqp://localhost"),
            ("PUBLIC_URL", "https://example.org/"),
            ("ENGINE_MEMORY_LIMIT", "256M"),
            ("ENGINE_THREADS", "3"),
            ("EMBEDDED_WORKERS", "2"),
        ])
        .unwrap();
        assert_eq!(settings.port, 8080);
        assert_eq!(settings.database_url, "sqlite:///data/tasks.db");
        assert_eq!(settings.amqp_url.as_deref(), Some("amqp://localhost"));
        assert_eq!(settings.public_url.as_deref(), Some("https://example.org"));
        assert_eq!(settings.engine_memory_limit, 256 << 20);
        assert_eq!(settings.engine_config().threads, 3);
        assert_eq!(settings.embedded_workers, 2);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = from(&[("PORT", "http")]).unwrap_err();
        assert!(format!("{err:#}").contains("PORT"), "{err:#}");
        let err = from(&[("ENGINE_MEMORY_LIMIT", "lots")]).unwrap_err();
        assert!(
            format!("{err:#}").contains("ENGINE_MEMORY_LIMIT"),
            "{err:#}"
        );
        assert!(from(&[("EMBEDDED_WORKERS", "0")]).is_err());
    }
}
