//! Streamed uploads to S3 whose key is known only at the end.
//!
//! An object smaller than one part is sent with a single PutObject straight
//! to its key at commit. A larger one goes up as a multipart upload to a
//! staging key while it is still being produced (parts sent concurrently,
//! at most [`PART_CONCURRENCY`] in flight, so memory stays bounded); at
//! commit the upload is completed and server-side copied to its key (a
//! metadata-only operation on Garage), and the staging object is removed.
//! Until then nothing is visible under any cache key.

use async_trait::async_trait;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::task::JoinSet;

use super::{S3Store, PART_CONCURRENCY};
use crate::backend::{Store, Upload};
use crate::error::{Result, StoreError};
use crate::key::{Key, KeyKind};

/// Most parts S3 accepts in one multipart upload.
const MAX_PARTS: i32 = 10_000;
/// Parts sent at the base part size before the size grows by one base.
const PARTS_PER_STEP: i32 = 1_000;
/// Largest object a single CopyObject may copy.
const MAX_COPY_SIZE: u64 = 5 << 30;
/// Range copied by each UploadPartCopy beyond [`MAX_COPY_SIZE`].
const COPY_PART_SIZE: u64 = 1 << 30;

fn failure(bucket: &str, op: &'static str, key: &str, message: String) -> StoreError {
    StoreError::S3 {
        op,
        bucket: bucket.to_string(),
        key: key.to_string(),
        message,
    }
}

/// Percent-encodes an object key for `x-amz-copy-source`, keeping `/`.
fn encode_source(bucket: &str, key: &str) -> String {
    let mut out = format!("{bucket}/");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The size of part `number` (from 1): `base` for the first thousand
/// parts, then one more `base` every thousand, so that 10,000 parts reach
/// 55,000 times `base`.
fn part_size(base: usize, number: i32) -> usize {
    base * (1 + ((number.max(1) - 1) / PARTS_PER_STEP) as usize)
}

/// An upload in progress; see the module documentation.
pub(in crate::backend) struct S3Upload {
    store: S3Store,
    content_type: &'static str,
    staging: String,
    base_part: usize,
    buf: BytesMut,
    size: u64,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
    settled: bool,
}

impl S3Upload {
    pub(in crate::backend) fn new(store: S3Store, kind: KeyKind) -> S3Upload {
        let name = format!(".kiln-tmp/upload-{}", uuid::Uuid::new_v4().simple());
        let prefix = store.config.prefix.trim_matches('/');
        let staging = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let base_part = usize::try_from(store.config.part_size.max(5 << 20)).unwrap_or(5 << 20);
        S3Upload {
            store,
            content_type: kind.content_type(),
            staging,
            base_part,
            buf: BytesMut::new(),
            size: 0,
            upload_id: None,
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            settled: false,
        }
    }

    fn bucket(&self) -> &str {
        &self.store.config.bucket
    }

    async fn upload_id(&mut self) -> Result<String> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let created = self
            .store
            .client
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(&self.staging)
            .content_type(self.content_type)
            .send()
            .await
            .map_err(|e| self.store.err("CreateMultipartUpload", &self.staging, e))?;
        let id = created.upload_id().unwrap_or_default().to_string();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Waits for one part in flight to finish.
    async fn reap_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            None => Ok(()),
            Some(Ok(Ok(part))) => {
                self.done.push(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(failure(
                self.bucket(),
                "UploadPart",
                &self.staging,
                e.to_string(),
            )),
        }
    }

    async fn send_part(&mut self, body: Bytes) -> Result<()> {
        if self.next_part > MAX_PARTS {
            return Err(failure(
                self.bucket(),
                "UploadPart",
                &self.staging,
                format!("object needs more than {MAX_PARTS} parts"),
            ));
        }
        let upload_id = self.upload_id().await?;
        while self.in_flight.len() >= PART_CONCURRENCY {
            self.reap_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let client = self.store.client.clone();
        let bucket = self.bucket().to_string();
        let key = self.staging.clone();
        self.in_flight.spawn(async move {
            let len = body.len() as i64;
            // The body is in memory; leaving it unsigned (as the SDK does
            // for file bodies) spares hashing every byte once more.
            let out = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len)
                .body(S3Body::from(body))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| {
                    failure(
                        &bucket,
                        "UploadPart",
                        &key,
                        DisplayErrorContext(e).to_string(),
                    )
                })?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    /// Sends the remaining bytes, waits for every part and completes the
    /// multipart upload of the staging object.
    async fn complete(&mut self, upload_id: &str) -> Result<()> {
        if !self.buf.is_empty() || self.next_part == 1 {
            let last = self.buf.split().freeze();
            self.send_part(last).await?;
        }
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let mut parts = std::mem::take(&mut self.done);
        parts.sort_by_key(|p| p.part_number());
        self.store
            .client
            .complete_multipart_upload()
            .bucket(self.bucket())
            .key(&self.staging)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.store.err("CompleteMultipartUpload", &self.staging, e))?;
        Ok(())
    }

    /// Copies the completed staging object to `okey`.
    async fn copy_to(&self, okey: &str) -> Result<()> {
        let source = encode_source(self.bucket(), &self.staging);
        if self.size <= MAX_COPY_SIZE {
            self.store
                .client
                .copy_object()
                .bucket(self.bucket())
                .key(okey)
                .copy_source(&source)
                .send()
                .await
                .map_err(|e| self.store.err("CopyObject", okey, e))?;
            return Ok(());
        }
        let created = self
            .store
            .client
            .create_multipart_upload()
            .bucket(self.bucket())
            .key(okey)
            .content_type(self.content_type)
            .send()
            .await
            .map_err(|e| self.store.err("CreateMultipartUpload", okey, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let copied = self.copy_parts(okey, &source, &upload_id).await;
        let result = match copied {
            Ok(parts) => self
                .store
                .client
                .complete_multipart_upload()
                .bucket(self.bucket())
                .key(okey)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.store.err("CompleteMultipartUpload", okey, e)),
            Err(e) => Err(e),
        };
        if result.is_err() {
            self.store.abort(okey, &upload_id).await;
        }
        result
    }

    async fn copy_parts(
        &self,
        okey: &str,
        source: &str,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let count = self.size.div_ceil(COPY_PART_SIZE);
        let mut parts: Vec<CompletedPart> = stream::iter(0..count)
            .map(|i| async move {
                let start = i * COPY_PART_SIZE;
                let end = (start + COPY_PART_SIZE).min(self.size) - 1;
                // At most size / 1 GiB parts, far below i32::MAX.
                let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
                let out = self
                    .store
                    .client
                    .upload_part_copy()
                    .bucket(self.bucket())
                    .key(okey)
                    .upload_id(upload_id)
                    .part_number(number)
                    .copy_source(source)
                    .copy_source_range(format!("bytes={start}-{end}"))
                    .send()
                    .await
                    .map_err(|e| self.store.err("UploadPartCopy", okey, e))?;
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .map(str::to_string);
                Ok::<_, StoreError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(etag)
                        .build(),
                )
            })
            .buffer_unordered(PART_CONCURRENCY)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    async fn commit_large(&mut self, key: &Key, upload_id: String) -> Result<()> {
        if let Err(e) = self.complete(&upload_id).await {
            self.in_flight.abort_all();
            self.store.abort(&self.staging, &upload_id).await;
            return Err(e);
        }
        let okey = self.store.config.object_key(key);
        let copied = match self.store.exists(key).await {
            Ok(true) => Ok(()),
            Ok(false) => self.copy_to(&okey).await,
            Err(e) => Err(e),
        };
        let removed = self
            .store
            .client
            .delete_object()
            .bucket(self.bucket())
            .key(&self.staging)
            .send()
            .await;
        if let Err(e) = removed {
            tracing::warn!(
                "removing staging object {}: {}",
                self.staging,
                DisplayErrorContext(e)
            );
        }
        copied
    }
}

#[async_trait]
impl Upload for S3Upload {
    fn preferred_chunk(&self) -> usize {
        part_size(self.base_part, self.next_part)
    }

    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        self.size += data.len() as u64;
        // Whole parts of a chunk handed over at a part boundary are sent
        // as they are, without copying.
        while self.buf.is_empty() {
            let want = part_size(self.base_part, self.next_part);
            if data.len() < want {
                break;
            }
            let part = data.split_to(want);
            self.send_part(part).await?;
        }
        self.buf.extend_from_slice(&data);
        loop {
            let want = part_size(self.base_part, self.next_part);
            if self.buf.len() < want {
                return Ok(());
            }
            let part = self.buf.split_to(want).freeze();
            self.send_part(part).await?;
        }
    }

    async fn commit(mut self: Box<Self>, key: &Key) -> Result<()> {
        self.settled = true;
        match self.upload_id.clone() {
            None => {
                let data = self.buf.split().freeze();
                self.store.put_bytes(key, data).await
            }
            Some(id) => self.commit_large(key, id).await,
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.settled = true;
        self.in_flight.abort_all();
        if let Some(id) = self.upload_id.take() {
            self.store.abort(&self.staging, &id).await;
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped mid-way (the caller's future was cancelled): parts still
        // in flight are cancelled by the JoinSet; abort the upload too.
        if self.settled {
            return;
        }
        if let (Some(id), Ok(rt)) = (self.upload_id.take(), tokio::runtime::Handle::try_current()) {
            let store = self.store.clone();
            let staging = self.staging.clone();
            rt.spawn(async move { store.abort(&staging, &id).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_every_thousand() {
        let base = 16 << 20;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 1000), base);
        assert_eq!(part_size(base, 1001), 2 * base);
        assert_eq!(part_size(base, 10_000), 10 * base);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(base, n) as u64).sum();
        assert_eq!(total, 55_000 * base as u64);
    }

    #[test]
    fn copy_source_is_percent_encoded() {
        assert_eq!(
            encode_source("b", "team cache/.kiln-tmp/upload-ab+c"),
            "b/team%20cache/.kiln-tmp/upload-ab%2Bc"
        );
    }
}
