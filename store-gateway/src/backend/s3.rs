//! A binary cache in an S3 bucket (`s3://BUCKET?endpoint=URL&region=R&prefix=P`).
//!
//! Checksums are calculated only when S3 requires them (Garage and other
//! servers reject or ignore the newer flexible checksums), large files go up
//! as concurrent multipart uploads, and the SDK's standard retry mode backs
//! off on `SlowDown` and 5xx answers.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream as S3Body, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Deserialize;

use super::{ByteStream, Store, Upload};
use crate::error::{Result, StoreError};
use crate::key::{Key, KeyKind};

mod upload;

/// Everything needed to reach a bucket. Built from a store URL, then
/// completed from the environment; every field can also come from a file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket name.
    pub bucket: String,
    /// A key prefix inside the bucket (no leading or trailing `/`).
    #[serde(default)]
    pub prefix: String,
    /// The endpoint URL (for Garage, MinIO…); AWS's when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The region; `us-east-1` when absent.
    #[serde(default)]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); the default whenever
    /// an endpoint is given.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Access key id; the SDK's default chain (profile…) when absent.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Shared-config profile to use when no keys are given.
    #[serde(default)]
    pub profile: Option<String>,
    /// Files of at least this many bytes use multipart upload.
    #[serde(default = "default_multipart_threshold")]
    pub multipart_threshold: u64,
    /// Size of each multipart part.
    #[serde(default = "default_part_size")]
    pub part_size: u64,
    /// A TOML file of settings (the store URL's `config=FILE`, or
    /// `KILN_S3_CONFIG`), read by [`S3Config::fill_from_file`].
    #[serde(skip)]
    pub config_file: Option<std::path::PathBuf>,
}

/// The settings an S3 configuration file may hold: every field of
/// [`S3Config`] but the bucket, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct S3File {
    prefix: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    profile: Option<String>,
    multipart_threshold: Option<u64>,
    part_size: Option<u64>,
}

fn default_multipart_threshold() -> u64 {
    64 << 20
}

fn default_part_size() -> u64 {
    16 << 20
}

/// Parts uploaded at once in a multipart upload.
const PART_CONCURRENCY: usize = 4;

impl S3Config {
    /// A configuration for `bucket` with every other field at its default.
    pub fn new(bucket: impl Into<String>) -> S3Config {
        S3Config {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            path_style: None,
            access_key_id: None,
            secret_access_key: None,
            profile: None,
            multipart_threshold: default_multipart_threshold(),
            part_size: default_part_size(),
            config_file: None,
        }
    }

    /// Fills fields still unset from the TOML file `config_file` (or, when
    /// that is unset, the file named by `KILN_S3_CONFIG` in `env`). Keys are
    /// the field names in kebab case (`endpoint`, `region`, `prefix`,
    /// `path-style`, `access-key-id`, `secret-access-key`, `profile`,
    /// `multipart-threshold`, `part-size`). What the store URL says wins
    /// over the file; the file wins over the environment, so call this
    /// before [`S3Config::fill_from_env`].
    pub fn fill_from_file(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<()> {
        let Some(path) = self.config_file.clone().or_else(|| {
            env("KILN_S3_CONFIG")
                .filter(|v| !v.is_empty())
                .map(Into::into)
        }) else {
            return Ok(());
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| StoreError::io("reading S3 settings", &path, e))?;
        let file: S3File = toml::from_str(&text).map_err(|e| StoreError::Format {
            context: format!("S3 settings file '{}'", path.display()),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        if self.prefix.is_empty() {
            self.prefix = file
                .prefix
                .unwrap_or_default()
                .trim_matches('/')
                .to_string();
        }
        self.endpoint = self.endpoint.take().or(file.endpoint);
        self.region = self.region.take().or(file.region);
        self.path_style = self.path_style.or(file.path_style);
        if self.access_key_id.is_none() && self.secret_access_key.is_none() {
            self.access_key_id = file.access_key_id;
            self.secret_access_key = file.secret_access_key;
        }
        self.profile = self.profile.take().or(file.profile);
        if let Some(t) = file.multipart_threshold {
            self.multipart_threshold = t;
        }
        if let Some(p) = file.part_size {
            self.part_size = p;
        }
        Ok(())
    }

    /// Fills fields still unset from environment variables, read through
    /// `env` (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_PROFILE`).
    pub fn fill_from_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        let first = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
        if self.endpoint.is_none() {
            self.endpoint = first(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]);
        }
        if self.region.is_none() {
            self.region = first(&["AWS_REGION", "AWS_DEFAULT_REGION"]);
        }
        if self.access_key_id.is_none() && self.secret_access_key.is_none() {
            self.access_key_id = first(&["AWS_ACCESS_KEY_ID"]);
            self.secret_access_key = first(&["AWS_SECRET_ACCESS_KEY"]);
        }
        if self.profile.is_none() {
            self.profile = first(&["AWS_PROFILE"]);
        }
    }

    /// The full object key of a cache key.
    pub fn object_key(&self, key: &Key) -> String {
        if self.prefix.is_empty() {
            key.as_str().to_string()
        } else {
            format!("{}/{}", self.prefix.trim_matches('/'), key)
        }
    }
}

/// A binary cache in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    config: S3Config,
}

impl S3Store {
    /// Builds the S3 client for `config`. No request is made yet.
    pub async fn connect(config: S3Config) -> Result<S3Store> {
        let region = config.region.clone().unwrap_or_else(|| "us-east-1".into());
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region));
        match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader =
                    loader.credentials_provider(Credentials::new(id, secret, None, None, "kiln"));
            }
            (None, None) => {
                if let Some(p) = &config.profile {
                    loader = loader.profile_name(p);
                }
            }
            _ => {
                return Err(StoreError::BadUrl {
                    url: format!("s3://{}", config.bucket),
                    reason: "an access key id needs its secret access key and vice versa".into(),
                })
            }
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(6)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(10)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(ep) = &config.endpoint {
            builder = builder.endpoint_url(ep);
        }
        builder = builder.force_path_style(config.path_style.unwrap_or(config.endpoint.is_some()));
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            config,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The underlying SDK client (used by benchmarks for raw requests).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn err<E>(&self, op: &'static str, key: &str, e: E) -> StoreError
    where
        E: std::error::Error,
    {
        StoreError::S3 {
            op,
            bucket: self.config.bucket.clone(),
            key: key.to_string(),
            message: DisplayErrorContext(e).to_string(),
        }
    }

    async fn put_multipart(&self, okey: &str, file: &Path, size: u64) -> Result<()> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.config.bucket)
            .key(okey)
            .send()
            .await
            .map_err(|e| self.err("CreateMultipartUpload", okey, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = self.upload_parts(okey, &upload_id, file, size).await;
        match result {
            Ok(parts) => {
                let done = CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build();
                let completed = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.config.bucket)
                    .key(okey)
                    .upload_id(&upload_id)
                    .multipart_upload(done)
                    .send()
                    .await
                    .map_err(|e| self.err("CompleteMultipartUpload", okey, e));
                if completed.is_err() {
                    self.abort(okey, &upload_id).await;
                }
                completed.map(|_| ())
            }
            Err(e) => {
                self.abort(okey, &upload_id).await;
                Err(e)
            }
        }
    }

    async fn abort(&self, okey: &str, upload_id: &str) {
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.config.bucket)
            .key(okey)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = aborted {
            tracing::warn!(
                "aborting multipart upload of {okey}: {}",
                DisplayErrorContext(e)
            );
        }
    }

    async fn upload_parts(
        &self,
        okey: &str,
        upload_id: &str,
        file: &Path,
        size: u64,
    ) -> Result<Vec<CompletedPart>> {
        let part_size = self.config.part_size.max(5 << 20);
        let count = size.div_ceil(part_size);
        let mut parts: Vec<CompletedPart> = stream::iter(0..count)
            .map(|i| async move {
                let offset = i * part_size;
                let len = part_size.min(size - offset);
                let body = S3Body::read_from()
                    .path(file)
                    .offset(offset)
                    .length(Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| StoreError::io("reading", file, std::io::Error::other(e)))?;
                let number = i32::try_from(i + 1).map_err(|_| StoreError::S3 {
                    op: "UploadPart",
                    bucket: self.config.bucket.clone(),
                    key: okey.to_string(),
                    message: "too many parts".into(),
                })?;
                let out = self
                    .client
                    .upload_part()
                    .bucket(&self.config.bucket)
                    .key(okey)
                    .upload_id(upload_id)
                    .part_number(number)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| self.err("UploadPart", okey, e))?;
                Ok::<_, StoreError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .build(),
                )
            })
            .buffer_unordered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }
}

#[async_trait]
impl Store for S3Store {
    fn url(&self) -> String {
        let mut url = format!("s3://{}", self.config.bucket);
        let mut sep = '?';
        for (k, v) in [
            ("endpoint", self.config.endpoint.as_deref()),
            ("region", self.config.region.as_deref()),
            (
                "prefix",
                Some(self.config.prefix.as_str()).filter(|p| !p.is_empty()),
            ),
        ] {
            if let Some(v) = v {
                url.push_str(&format!("{sep}{k}={v}"));
                sep = '&';
            }
        }
        url
    }

    async fn get(&self, key: &Key) -> Result<Option<ByteStream>> {
        let chunks = self.get_chunks(key).await?;
        Ok(chunks.map(|c| Box::pin(tokio_util::io::StreamReader::new(c)) as ByteStream))
    }

    async fn get_chunks(&self, key: &Key) -> Result<Option<super::ChunkStream>> {
        let okey = self.config.object_key(key);
        let res = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&okey)
            .send()
            .await;
        match res {
            // The body's chunks as the HTTP client receives them.
            Ok(out) => Ok(Some(Box::pin(stream::unfold(out.body, |mut body| async {
                let chunk = body.next().await?;
                Some((chunk.map_err(std::io::Error::other), body))
            })))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(self.err("GetObject", &okey, e)),
        }
    }

    async fn exists(&self, key: &Key) -> Result<bool> {
        let okey = self.config.object_key(key);
        let res = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(&okey)
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(self.err("HeadObject", &okey, e)),
        }
    }

    async fn put_file(&self, key: &Key, file: &Path) -> Result<()> {
        let okey = self.config.object_key(key);
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|e| StoreError::io("reading", file, e))?
            .len();
        if size >= self.config.multipart_threshold {
            return self.put_multipart(&okey, file, size).await;
        }
        let body = S3Body::from_path(file)
            .await
            .map_err(|e| StoreError::io("reading", file, std::io::Error::other(e)))?;
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&okey)
            .content_type(key.content_type())
            .body(body)
            .send()
            .await
            .map_err(|e| self.err("PutObject", &okey, e))?;
        Ok(())
    }

    async fn put_bytes(&self, key: &Key, data: Bytes) -> Result<()> {
        let okey = self.config.object_key(key);
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&okey)
            .content_type(key.content_type())
            .body(S3Body::from(data))
            .send()
            .await
            .map_err(|e| self.err("PutObject", &okey, e))?;
        Ok(())
    }

    async fn put_bytes_if_absent(&self, key: &Key, data: Bytes) -> Result<bool> {
        // Servers that ignore `If-None-Match` on PUT (Garage 2.5 does) are
        // covered by asking first; where the server honours it (AWS S3),
        // the conditional PUT closes the race between the two.
        if self.exists(key).await? {
            return Ok(false);
        }
        let okey = self.config.object_key(key);
        let res = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(&okey)
            .content_type(key.content_type())
            .if_none_match("*")
            .body(S3Body::from(data))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            // 412: the key is taken. 409: a concurrent conditional write
            // to it is in progress; it wins.
            Err(e)
                if e.raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err("PutObject", &okey, e)),
        }
    }

    async fn begin_upload<'a>(
        &'a self,
        kind: KeyKind,
        _temp_dir: &Path,
    ) -> Result<Box<dyn Upload + 'a>> {
        Ok(Box::new(upload::S3Upload::new(self.clone(), kind)))
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let okey = self.config.object_key(key);
        self.client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(&okey)
            .send()
            .await
            .map_err(|e| self.err("DeleteObject", &okey, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_fills_only_missing_fields() {
        let mut c = S3Config::new("b");
        c.region = Some("garage".into());
        let env = |k: &str| match k {
            "AWS_ENDPOINT_URL" => Some("http://127.0.0.1:3900".to_string()),
            "AWS_REGION" => Some("other".to_string()),
            "AWS_ACCESS_KEY_ID" => Some("id".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("secret".to_string()),
            _ => None,
        };
        c.fill_from_env(env);
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(c.region.as_deref(), Some("garage"));
        assert_eq!(c.access_key_id.as_deref(), Some("id"));
        assert_eq!(c.secret_access_key.as_deref(), Some("secret"));
    }

    #[test]
    fn prefix_is_joined_once() {
        let mut c = S3Config::new("b");
        let k = Key::cache_info();
        assert_eq!(c.object_key(&k), "nix-cache-info");
        c.prefix = "/team/cache/".into();
        assert_eq!(c.object_key(&k), "team/cache/nix-cache-info");
    }

    #[test]
    fn config_reads_from_json_with_defaults() {
        let c: S3Config =
            serde_json::from_str(r#"{"bucket":"b","endpoint":"http://h:1","path_style":true}"#)
                .unwrap();
        assert_eq!(c.part_size, 16 << 20);
        assert_eq!(c.path_style, Some(true));
        assert!(serde_json::from_str::<S3Config>(r#"{"bucket":"b","nope":1}"#).is_err());
    }
}
