//! An S3-compatible bucket: its client, configured from the usual `AWS_*` variables, and the
//! requests both sides make of it. Keys are the storage's (`raw_data/<id>.csv`), stored under
//! the bucket's prefix. A custom endpoint (`AWS_ENDPOINT_URL`) is addressed path-style.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::signer::{Method, SignedUrlOptions, Signer};
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use crate::StorageError;

/// The variables read for the client, in order (a later one wins over an earlier synonym).
const AWS_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ALLOW_HTTP",
    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// How patient the client is with the bucket.
#[derive(Debug, Clone, Copy)]
pub struct BucketOptions {
    /// How long one request is retried while the bucket fails or cannot be reached
    /// (`STORAGE_RETRY_TIMEOUT`).
    pub retry_timeout: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
}

impl Default for BucketOptions {
    fn default() -> Self {
        BucketOptions {
            retry_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A bucket to connect to: where, and the client's `AWS_*` variables, read once.
#[derive(Clone)]
pub struct BucketSettings {
    pub name: String,
    /// The keys' prefix in the bucket.
    pub prefix: String,
    /// The `AWS_*` variables that are set, in the order they apply.
    pub aws: Vec<(String, String)>,
    pub options: BucketOptions,
}

impl BucketSettings {
    /// The bucket `name`, keys under `prefix`, its client configured by the `AWS_*`
    /// variables that `lookup` gives (credentials, region, endpoint, plain HTTP).
    pub fn read(
        name: &str,
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
        options: BucketOptions,
    ) -> BucketSettings {
        let aws = AWS_VARIABLES
            .iter()
            .filter_map(|variable| Some((variable.to_string(), lookup(variable)?)))
            .collect();
        BucketSettings {
            name: name.to_string(),
            prefix: prefix.to_string(),
            aws,
            options,
        }
    }
}

/// Names only: the values may be secrets.
impl std::fmt::Debug for BucketSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let variables: Vec<_> = self.aws.iter().map(|(name, _)| name).collect();
        f.debug_struct("BucketSettings")
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .field("aws", &variables)
            .field("options", &self.options)
            .finish()
    }
}

/// A bucket and the prefix of the storage's keys in it.
#[derive(Clone)]
pub struct Bucket {
    pub(crate) store: Arc<dyn ObjectStore>,
    /// Signs download URLs; `None` for a bucket in memory.
    signer: Option<Arc<dyn Signer>>,
    prefix: String,
    name: String,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

impl Bucket {
    /// Connects the client of the bucket `settings` name (no request is made yet).
    pub fn connect(settings: &BucketSettings) -> Result<Bucket, StorageError> {
        let BucketSettings {
            name,
            prefix,
            aws,
            options,
        } = settings;
        // Retries and time-outs first: the variables then add to the client's options
        // (`AWS_ALLOW_HTTP` is one), which `with_client_options` would replace.
        let retry = RetryConfig {
            retry_timeout: options.retry_timeout,
            ..RetryConfig::default()
        };
        let client = ClientOptions::new().with_connect_timeout(options.connect_timeout);
        let mut builder = AmazonS3Builder::new()
            .with_client_options(client)
            .with_retry(retry)
            .with_bucket_name(name);
        for (variable, value) in aws {
            if let Ok(key) = variable.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, value);
            }
        }
        let store = Arc::new(builder.build().map_err(|e| StorageError::InvalidUrl {
            url: format!("s3://{name}/{prefix}"),
            reason: e.to_string(),
        })?);
        let signer: Arc<dyn Signer> = store.clone();
        Ok(Bucket::with_store(store, Some(signer), name, prefix))
    }

    /// A bucket kept in this process's memory (tests); it cannot sign URLs.
    pub fn in_memory(prefix: &str) -> Bucket {
        Bucket::with_store(Arc::new(InMemory::new()), None, "memory", prefix)
    }

    fn with_store(
        store: Arc<dyn ObjectStore>,
        signer: Option<Arc<dyn Signer>>,
        name: &str,
        prefix: &str,
    ) -> Bucket {
        Bucket {
            store,
            signer,
            prefix: prefix.trim_matches('/').to_string(),
            name: name.to_string(),
        }
    }

    /// `s3://name/prefix`, for logs and `/health`.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.name, self.prefix)
    }

    /// The object's path of a storage key.
    pub(crate) fn path(&self, key: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        }
    }

    /// The size of the object `key`; `None` when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&self.path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::object(key, e)),
        }
    }

    /// Deletes the object `key`; a missing object is no error.
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::object(key, e)),
        }
    }

    /// A presigned URL that downloads the object `key` for `expires_in` without credentials,
    /// its answer carrying `content_type` and `content_disposition` (S3's `response-*`
    /// parameters); `None` when there is no such object.
    pub async fn download_url(
        &self,
        key: &str,
        content_type: &str,
        content_disposition: &str,
        expires_in: Duration,
    ) -> Result<Option<String>, StorageError> {
        let Some(signer) = &self.signer else {
            return Err(StorageError::Unavailable {
                key: key.to_string(),
                message: format!("{} cannot sign URLs", self.url()),
            });
        };
        if self.size(key).await?.is_none() {
            return Ok(None);
        }
        let options = SignedUrlOptions::new().with_query([
            ("response-content-type", content_type),
            ("response-content-disposition", content_disposition),
        ]);
        let url = signer
            .signed_url_opts(Method::GET, &self.path(key), expires_in, &options)
            .await
            .map_err(|e| StorageError::object(key, e))?;
        Ok(Some(url.into()))
    }

    /// Ok when the bucket answers (a missing object is an answer).
    pub async fn check(&self) -> Result<(), StorageError> {
        self.size(".health").await.map(|_| ())
    }
}
