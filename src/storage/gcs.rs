//! Cloud Storage through the JSON API on reqwest: simple (multipart) uploads for small
//! objects, resumable uploads in 256 KiB-multiple chunks for large ones (resuming from
//! the server's committed offset after a dropped connection, never restarting), streaming
//! downloads that resume mid-body from the byte they reached, paged listings, and a CRC32C
//! check on every upload and every whole-object download.
//!
//! Every request goes through one seam ([`GcsStorage::send_once`]: authorise, build, send
//! with the attempt's time limit, map a failure to [`StorageError`]) and is retried here
//! and only here, under one [`RetryContext`] per operation: a resumable upload's session,
//! chunks and status queries share one budget, as do a download's resumes and a
//! listing's pages. Callers limit a write through [`PutOptions::budget`], never by
//! retrying it again.
//!
//! `STORAGE_EMULATOR_HOST` (`host:port` or a URL) points it at an emulator and turns off
//! auth, as Google's own clients do. Not `object_store`: its GCS backend speaks the XML
//! API, which neither emulator accepts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{
    crc32c_from_base64, crc32c_to_base64, verify_stream, ByteStream, ObjectMeta, PutOptions,
    Storage, StorageError,
};
use crate::retry::{Attempt, Budget, Retry, RetryContext, RetryPolicy, Retryable};

/// Objects up to this size go up in one multipart request; larger ones use a resumable
/// session, so a dropped connection costs at most one chunk.
pub const SIMPLE_UPLOAD_MAX_BYTES: u64 = 8 << 20;
/// Resumable chunk size: a multiple of 256 KiB (the protocol's quantum). File chunks are
/// streamed from disk, never held in memory, so the size only trades requests against
/// what a dropped connection costs to resend.
pub const RESUMABLE_CHUNK_BYTES: usize = 64 << 20;
/// Read size when streaming a file chunk or re-reading part of one.
const FILE_READ_BYTES: usize = 256 << 10;
/// The protocol's chunk quantum.
pub const RESUMABLE_QUANTUM_BYTES: usize = 256 << 10;
/// Objects per listing page (the API's maximum).
pub const LIST_PAGE_SIZE: u32 = 1000;

/// Characters percent-encoded in object names inside URL paths: everything but the
/// unreserved set (so `/` becomes `%2F`, as the API requires).
const OBJECT_NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where the JSON API lives, and whether to send credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// e.g. `https://storage.googleapis.com/storage/v1`
    pub json_base: String,
    /// e.g. `https://storage.googleapis.com/upload/storage/v1`
    pub upload_base: String,
    /// No `Authorization` header (emulators).
    pub anonymous: bool,
}

impl Endpoint {
    /// Google's production endpoint.
    pub fn google() -> Self {
        Endpoint::at("https://storage.googleapis.com", false)
    }

    /// An emulator at `host` (`host:port` or a URL; `http://` is assumed without a
    /// scheme), without auth.
    pub fn emulator(host: &str) -> Self {
        let host = host.trim().trim_end_matches('/');
        let base = if host.contains("://") {
            host.to_string()
        } else {
            format!("http://{host}")
        };
        Endpoint::at(&base, true)
    }

    fn at(base: &str, anonymous: bool) -> Self {
        Endpoint {
            json_base: format!("{base}/storage/v1"),
            upload_base: format!("{base}/upload/storage/v1"),
            anonymous,
        }
    }

    /// [`Endpoint::emulator`] when `STORAGE_EMULATOR_HOST` is set in the process
    /// environment, else Google's.
    pub fn from_env() -> Self {
        Endpoint::from_lookup(|k| std::env::var(k).ok())
    }

    /// The same, reading `STORAGE_EMULATOR_HOST` through `lookup` (a caller that carries
    /// its own environment, as the launcher does).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        match lookup(crate::contract::ENV_STORAGE_EMULATOR_HOST) {
            Some(h) if !h.trim().is_empty() => Endpoint::emulator(&h),
            _ => Endpoint::google(),
        }
    }
}

/// The Bucket resource fields cloudrun reads (`buckets.get`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct BucketInfo {
    #[serde(default)]
    pub name: String,
    /// Upper case, as the API answers: `US-CENTRAL1`, a multi-region (`US`, `EU`, `ASIA`)
    /// or a dual-region (`NAM4`).
    #[serde(default)]
    pub location: String,
    /// `region`, `dual-region` or `multi-region`.
    #[serde(default)]
    pub location_type: String,
    /// The two regions of a configurable dual-region.
    #[serde(default)]
    pub custom_placement_config: Option<PlacementInfo>,
}

/// `customPlacementConfig` of a configurable dual-region bucket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlacementInfo {
    #[serde(default)]
    pub data_locations: Vec<String>,
}

/// One bucket through the GCS JSON API. Cheap to clone (the HTTP client and token
/// source are shared).
#[derive(Clone)]
pub struct GcsStorage {
    bucket: String,
    endpoint: Endpoint,
    client: reqwest::Client,
    tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
    retry: RetryPolicy,
    chunk_bytes: usize,
}

impl std::fmt::Debug for GcsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsStorage")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The Object resource fields we read. int64s arrive as strings.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectJson {
    name: String,
    #[serde(default)]
    size: Option<serde_json::Value>,
    #[serde(default)]
    generation: Option<serde_json::Value>,
    #[serde(default)]
    crc32c: Option<String>,
    #[serde(default)]
    md5_hash: Option<String>,
    #[serde(default)]
    updated: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListJson {
    #[serde(default)]
    items: Vec<ObjectJson>,
    #[serde(default)]
    next_page_token: Option<String>,
}

fn int_field(v: &Option<serde_json::Value>) -> Option<i64> {
    match v {
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        _ => None,
    }
}

impl ObjectJson {
    fn into_meta(self) -> ObjectMeta {
        ObjectMeta {
            size: int_field(&self.size).unwrap_or(0).max(0) as u64,
            generation: int_field(&self.generation).unwrap_or(0),
            crc32c: self.crc32c.as_deref().and_then(crc32c_from_base64),
            md5_base64: self.md5_hash,
            updated: self
                .updated
                .as_deref()
                .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
                .map(|d| d.with_timezone(&Utc)),
            metadata: self.metadata.unwrap_or_default(),
            key: self.name,
        }
    }
}

/// What a resumable upload reads its bytes from.
enum Source<'a> {
    /// Bytes in memory: chunks are zero-copy slices.
    Bytes(&'a Bytes),
    /// A file: each chunk is streamed from disk through its own handle.
    File(&'a Path),
}

/// What a streamed chunk saw go by: the running CRC32C (starting from the committed
/// prefix's) and the number of bytes.
#[derive(Debug, Default)]
struct ChunkTally {
    crc: u32,
    bytes: u64,
}

impl Source<'_> {
    /// The request body for bytes `offset..offset+len`, and a tally that holds their
    /// CRC32C (appended to `crc_before`) once the body has been sent.
    async fn chunk(
        &self,
        offset: u64,
        len: u64,
        crc_before: u32,
    ) -> Result<(reqwest::Body, Arc<std::sync::Mutex<ChunkTally>>), StorageError> {
        let tally = Arc::new(std::sync::Mutex::new(ChunkTally {
            crc: crc_before,
            bytes: 0,
        }));
        match self {
            Source::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = (start + len as usize).min(b.len());
                let slice = b.slice(start..end);
                if let Ok(mut t) = tally.lock() {
                    t.crc = crc32c::crc32c_append(crc_before, &slice);
                    t.bytes = slice.len() as u64;
                }
                Ok((reqwest::Body::from(slice), tally))
            }
            Source::File(path) => {
                let mut f = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| StorageError::io(*path, e))?;
                f.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(|e| StorageError::io(*path, e))?;
                let t2 = tally.clone();
                let reader =
                    tokio_util::io::ReaderStream::with_capacity(f.take(len), FILE_READ_BYTES);
                let counted = futures::StreamExt::map(reader, move |r| {
                    if let (Ok(b), Ok(mut t)) = (&r, t2.lock()) {
                        t.crc = crc32c::crc32c_append(t.crc, b);
                        t.bytes += b.len() as u64;
                    }
                    r
                });
                Ok((reqwest::Body::wrap_stream(counted), tally))
            }
        }
    }

    /// CRC32C of bytes `offset..offset+len` appended to `crc`, read again from the source
    /// (after a chunk the server kept only part of).
    async fn crc_of(&self, offset: u64, len: u64, crc: u32) -> Result<u32, StorageError> {
        match self {
            Source::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = (start + len as usize).min(b.len());
                Ok(crc32c::crc32c_append(crc, &b[start..end]))
            }
            Source::File(path) => {
                let mut f = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| StorageError::io(*path, e))?;
                f.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(|e| StorageError::io(*path, e))?;
                let mut f = f.take(len);
                let mut buf = vec![0u8; FILE_READ_BYTES];
                let mut crc = crc;
                loop {
                    let n = f
                        .read(&mut buf)
                        .await
                        .map_err(|e| StorageError::io(*path, e))?;
                    if n == 0 {
                        return Ok(crc);
                    }
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                }
            }
        }
    }
}

impl GcsStorage {
    /// A client for `bucket` at `endpoint`. `tokens` is required unless the endpoint is
    /// anonymous (an emulator).
    pub fn new(
        bucket: &str,
        endpoint: Endpoint,
        tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
    ) -> Result<Self, StorageError> {
        if !endpoint.anonymous && tokens.is_none() {
            return Err(StorageError::Auth(
                "no credentials were given for Cloud Storage".into(),
            ));
        }
        let client = crate::http::client().map_err(|e| StorageError::Other(e.to_string()))?;
        Ok(GcsStorage {
            bucket: bucket.to_string(),
            endpoint,
            client,
            tokens,
            retry: RetryPolicy::default(),
            chunk_bytes: RESUMABLE_CHUNK_BYTES,
        })
    }

    /// The same client with another retry policy (tests shorten it).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same client with another resumable chunk size, rounded up to a multiple of
    /// 256 KiB.
    pub fn with_chunk_bytes(mut self, n: usize) -> Self {
        let q = RESUMABLE_QUANTUM_BYTES;
        self.chunk_bytes = n.div_ceil(q).max(1) * q;
        self
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `buckets.get`: the bucket's location, or `None` when it does not exist.
    pub async fn get_bucket(&self) -> Result<Option<BucketInfo>, StorageError> {
        let url = format!(
            "{}/b/{}?fields=name,location,locationType,customPlacementConfig",
            self.endpoint.json_base, self.bucket
        );
        let what = format!("gs://{}", self.bucket);
        let mut ctx = self.context(Budget::default(), format!("get bucket {what}"));
        match self
            .execute_json::<BucketInfo>(&mut ctx, &what, Method::GET, &url, "bucket", |rb| rb)
            .await
        {
            Ok(b) => Ok(Some(b)),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The retry context of one operation named `what`, under this client's policy
    /// narrowed by `budget`.
    fn context(&self, budget: Budget, what: String) -> RetryContext {
        RetryContext::new(&self.retry, budget, what)
    }

    fn object_url(&self, key: &str) -> String {
        format!(
            "{}/b/{}/o/{}",
            self.endpoint.json_base,
            self.bucket,
            utf8_percent_encode(key, OBJECT_NAME)
        )
    }

    async fn request(
        &self,
        method: Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, StorageError> {
        let rb = self.client.request(method, url);
        if self.endpoint.anonymous {
            return Ok(rb);
        }
        let Some(tokens) = &self.tokens else {
            return Err(StorageError::Auth("no credentials".into()));
        };
        let token = tokens
            .token(&[crate::contract::SCOPE_CLOUD_PLATFORM])
            .await
            .map_err(|e| StorageError::Auth(e.to_string()))?;
        Ok(rb.bearer_auth(token.as_str()))
    }

    /// The one request seam: authorise, let `build` add headers and body, send with the
    /// attempt's time limit (the usual request timeout, or less when the budget's
    /// deadline is nearer), and turn a failure into a [`StorageError`] naming `key`. A 2xx
    /// reply, or one whose status is in `pass` (a resumable session's 308, a range's
    /// 416), is handed back. One attempt: retrying is the caller's [`RetryContext`]'s.
    async fn send_once(
        &self,
        attempt: Attempt,
        key: &str,
        method: &Method,
        url: &str,
        pass: &[StatusCode],
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, StorageError> {
        let timeout = attempt.timeout(Duration::from_secs(crate::http::REQUEST_TIMEOUT_SECS));
        let rb = build(self.request(method.clone(), url).await?).timeout(timeout);
        let resp = rb.send().await.map_err(|source| StorageError::Transport {
            method: method.to_string(),
            url: crate::http::redact_url(url),
            source,
        })?;
        let status = resp.status();
        if status.is_success() || pass.contains(&status) {
            return Ok(resp);
        }
        Err(Self::error_of(key, method, url, resp).await)
    }

    /// One request under `ctx`, retried as it says; `build` makes each attempt's request.
    async fn execute(
        &self,
        ctx: &mut RetryContext,
        key: &str,
        method: Method,
        url: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, StorageError> {
        let (method, build) = (&method, &build);
        ctx.run(|a| self.send_once(a, key, method, url, &[], build))
            .await
    }

    /// [`Self::execute`] for a JSON reply, read as part of the attempt (a body cut off
    /// is retried like a failed send). `label` names the document in errors.
    async fn execute_json<T: DeserializeOwned>(
        &self,
        ctx: &mut RetryContext,
        key: &str,
        method: Method,
        url: &str,
        label: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<T, StorageError> {
        let (method, build) = (&method, &build);
        ctx.run(|a| async move {
            let resp = self.send_once(a, key, method, url, &[], build).await?;
            Self::json_of(key, url, label, resp).await
        })
        .await
    }

    /// The JSON body of a reply.
    async fn json_of<T: DeserializeOwned>(
        key: &str,
        url: &str,
        label: &str,
        resp: Response,
    ) -> Result<T, StorageError> {
        let body = resp
            .bytes()
            .await
            .map_err(|source| StorageError::Transport {
                method: "read".into(),
                url: crate::http::redact_url(url),
                source,
            })?;
        serde_json::from_slice(&body).map_err(|e| StorageError::Protocol {
            url: crate::http::redact_url(url),
            detail: format!("{label} JSON for {key}: {e}"),
        })
    }

    /// Turn a non-success response into the right error.
    async fn error_of(
        key: &str,
        method: &Method,
        url: &str,
        resp: reqwest::Response,
    ) -> StorageError {
        let status = resp.status();
        let retry_after = crate::retry::retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        match status {
            StatusCode::NOT_FOUND => StorageError::NotFound { key: key.into() },
            StatusCode::PRECONDITION_FAILED => StorageError::PreconditionFailed { key: key.into() },
            _ => StorageError::Http {
                method: method.to_string(),
                url: crate::http::redact_url(url),
                status: status.as_u16(),
                body: crate::http::short_body(&body),
                retry_after,
            },
        }
    }

    async fn object_of(key: &str, url: &str, resp: Response) -> Result<ObjectMeta, StorageError> {
        Ok(Self::json_of::<ObjectJson>(key, url, "object", resp)
            .await?
            .into_meta())
    }

    fn check_written(
        key: &str,
        meta: &ObjectMeta,
        crc: u32,
        size: u64,
    ) -> Result<(), StorageError> {
        if meta.size != size {
            return Err(StorageError::Integrity {
                key: key.into(),
                detail: format!("sent {size} bytes, the store holds {}", meta.size),
            });
        }
        match meta.crc32c {
            Some(got) if got == crc => Ok(()),
            Some(got) => Err(StorageError::Integrity {
                key: key.into(),
                detail: format!(
                    "crc32c sent {}, the store computed {}",
                    crc32c_to_base64(crc),
                    crc32c_to_base64(got)
                ),
            }),
            None => Err(StorageError::Integrity {
                key: key.into(),
                detail: "the store reported no crc32c for the upload".into(),
            }),
        }
    }

    fn object_resource(key: &str, opts: &PutOptions, crc: Option<u32>) -> serde_json::Value {
        let crc = crc.or(opts.crc32c);
        let mut m = serde_json::json!({ "name": key });
        if let Some(ct) = &opts.content_type {
            m["contentType"] = ct.clone().into();
        }
        if !opts.metadata.is_empty() {
            m["metadata"] = serde_json::to_value(&opts.metadata).unwrap_or_default();
        }
        if let Some(c) = crc {
            m["crc32c"] = crc32c_to_base64(c).into();
        }
        m
    }

    fn upload_query(&self, upload_type: &str, key: &str, opts: &PutOptions) -> String {
        let mut url = format!(
            "{}/b/{}/o?uploadType={upload_type}&name={}",
            self.endpoint.upload_base,
            self.bucket,
            utf8_percent_encode(key, OBJECT_NAME)
        );
        if let Some(g) = opts.if_generation_match {
            url.push_str(&format!("&ifGenerationMatch={g}"));
        }
        url
    }

    /// One multipart upload attempt.
    async fn put_multipart(
        &self,
        attempt: Attempt,
        key: &str,
        data: &Bytes,
        opts: &PutOptions,
        crc: u32,
    ) -> Result<ObjectMeta, StorageError> {
        let url = self.upload_query("multipart", key, opts);
        let boundary = format!("cloudrun-{:016x}", fastrand::u64(..));
        let meta = Self::object_resource(key, opts, Some(crc)).to_string();
        let ct = opts
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let mut body = Vec::with_capacity(data.len() + meta.len() + 256);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n--{boundary}\r\nContent-Type: {ct}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let resp = self
            .send_once(attempt, key, &Method::POST, &url, &[], |rb| {
                rb.header(
                    reqwest::header::CONTENT_TYPE,
                    format!("multipart/related; boundary={boundary}"),
                )
                .body(body)
            })
            .await?;
        let m = Self::object_of(key, &url, resp).await?;
        if let Err(e) = Self::check_written(key, &m, crc, data.len() as u64) {
            return Err(self.discard_bad_upload(key, &m, e).await);
        }
        Ok(m)
    }

    /// An upload landed but does not hold what was sent (a server that finalised a
    /// partial upload, or bytes damaged on the way): delete that generation, and only it,
    /// so no half or wrong object stays visible, then report the mismatch.
    async fn discard_bad_upload(
        &self,
        key: &str,
        meta: &ObjectMeta,
        err: StorageError,
    ) -> StorageError {
        let url = format!(
            "{}?ifGenerationMatch={}",
            self.object_url(key),
            meta.generation
        );
        let mut once = self.context(Budget::once(), format!("remove bad upload {key}"));
        let outcome = match self
            .execute(&mut once, key, Method::DELETE, &url, |rb| rb)
            .await
        {
            Ok(_) => "removed".to_string(),
            Err(e) => format!("could not be removed ({e})"),
        };
        tracing::warn!(
            "upload of {key} did not verify; generation {} {outcome}",
            meta.generation
        );
        err
    }

    /// Open a resumable session under the upload's `ctx`; returns the session URI.
    async fn start_session(
        &self,
        ctx: &mut RetryContext,
        key: &str,
        opts: &PutOptions,
        total: u64,
    ) -> Result<String, StorageError> {
        let url = self.upload_query("resumable", key, opts);
        let resource = Self::object_resource(key, opts, None).to_string();
        let content_type = opts
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let resp = self
            .execute(ctx, key, Method::POST, &url, |rb| {
                rb.header(
                    reqwest::header::CONTENT_TYPE,
                    "application/json; charset=UTF-8",
                )
                .header("X-Upload-Content-Length", total.to_string())
                .header("X-Upload-Content-Type", content_type)
                .body(resource.clone())
            })
            .await?;
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| StorageError::Protocol {
                url: crate::http::redact_url(&url),
                detail: "resumable session started without a Location header".into(),
            })?;
        Ok(self.rebase_session_uri(loc))
    }

    /// Emulators may hand out session URIs naming their own idea of their host; keep the
    /// path and query but talk to the endpoint we were given.
    fn rebase_session_uri(&self, loc: &str) -> String {
        if !self.endpoint.anonymous {
            return loc.to_string();
        }
        let Some(i) = loc.find("/upload/") else {
            return loc.to_string();
        };
        let base = self
            .endpoint
            .upload_base
            .trim_end_matches("/upload/storage/v1");
        format!("{base}{}", &loc[i..])
    }

    /// One attempt to GET the object's bytes from `offset` (to `end`, exclusive); `None`
    /// when the range is empty.
    async fn open_media(
        &self,
        attempt: Attempt,
        key: &str,
        offset: u64,
        end: Option<u64>,
        generation: Option<i64>,
    ) -> Result<Option<Response>, StorageError> {
        let mut url = format!("{}?alt=media", self.object_url(key));
        if let Some(g) = generation {
            url.push_str(&format!("&generation={g}"));
        }
        let range = match end {
            Some(e) if e > offset => Some(format!("bytes={offset}-{}", e - 1)),
            Some(_) => return Ok(None),
            None if offset > 0 => Some(format!("bytes={offset}-")),
            None => None,
        };
        let resp = self
            .send_once(
                attempt,
                key,
                &Method::GET,
                &url,
                &[StatusCode::RANGE_NOT_SATISFIABLE],
                |rb| match range {
                    Some(r) => rb.header(reqwest::header::RANGE, r),
                    None => rb,
                },
            )
            .await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(None);
        }
        Ok(Some(resp))
    }

    /// One attempt to ask a session how many bytes it holds: `Ok(Err(offset))` to
    /// continue from, `Ok(Ok(meta))` when the upload is already complete.
    async fn session_status(
        &self,
        attempt: Attempt,
        key: &str,
        session: &str,
        total: u64,
    ) -> Result<Result<ObjectMeta, u64>, StorageError> {
        let resp = self
            .send_once(attempt, key, &Method::PUT, session, SESSION_PASS, |rb| {
                rb.header(reqwest::header::CONTENT_RANGE, format!("bytes */{total}"))
                    .header(reqwest::header::CONTENT_LENGTH, "0")
            })
            .await?;
        Self::chunk_reply(key, session, resp).await
    }

    async fn chunk_reply(
        key: &str,
        session: &str,
        resp: reqwest::Response,
    ) -> Result<Result<ObjectMeta, u64>, StorageError> {
        match resp.status().as_u16() {
            200 | 201 => Ok(Ok(Self::object_of(key, session, resp).await?)),
            308 => {
                // `Range: bytes=0-N` (inclusive) means N+1 bytes are stored; no header, none.
                let next = resp
                    .headers()
                    .get(reqwest::header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|r| r.rsplit('-').next())
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .map(|n| n + 1)
                    .unwrap_or(0);
                Ok(Err(next))
            }
            _ => Err(Self::error_of(key, &Method::PUT, session, resp).await),
        }
    }

    /// A resumable upload of `total` bytes from `src`. Chunks go up in order, file chunks
    /// streamed from disk; after a failed chunk the session is asked what it holds and the
    /// upload continues from there. The running CRC32C covers exactly the committed bytes;
    /// when the whole content's CRC32C is known up front (`opts.crc32c`, or bytes in
    /// memory) the server is told it at the start and with the last chunk, so it refuses a
    /// mismatch; either way the stored object is compared with what was sent, and removed
    /// if they differ.
    async fn put_resumable(
        &self,
        key: &str,
        src: Source<'_>,
        total: u64,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        let mut opts = opts.clone();
        if let (Source::Bytes(b), None) = (&src, opts.crc32c) {
            opts.crc32c = Some(crc32c::crc32c(b));
        }
        let opts = &opts;
        let mut ctx = self.context(opts.budget, format!("upload of {key}"));
        let session = self.start_session(&mut ctx, key, opts, total).await?;
        let mut committed = 0u64;
        let mut crc = 0u32;
        loop {
            let len = (self.chunk_bytes as u64).min(total - committed);
            let end = committed + len;
            let last = end == total;
            let range = if total == 0 {
                "bytes */0".to_string()
            } else {
                format!("bytes {committed}-{}/{total}", end - 1)
            };
            let (body, tally) = src.chunk(committed, len, crc).await?;
            let hash = match (last, opts.crc32c) {
                (true, Some(c)) => Some(format!("crc32c={}", crc32c_to_base64(c))),
                _ => None,
            };
            let sent = self
                .send_once(
                    ctx.attempt(),
                    key,
                    &Method::PUT,
                    &session,
                    SESSION_PASS,
                    |rb| {
                        let rb = rb
                            .header(reqwest::header::CONTENT_RANGE, range)
                            .header(reqwest::header::CONTENT_LENGTH, len.to_string());
                        match hash {
                            Some(h) => rb.header("X-Goog-Hash", h),
                            None => rb,
                        }
                        .body(body)
                    },
                )
                .await;
            let attempt = match sent {
                Ok(resp) => Self::chunk_reply(key, &session, resp).await,
                Err(e) => Err(e),
            };
            let reply = match attempt {
                Ok(r) => r,
                Err(e) => {
                    // One budget for the whole upload: this gives up when it is spent.
                    ctx.backoff(e).await?;
                    // Where did the server get to?
                    match self
                        .session_status(ctx.attempt(), key, &session, total)
                        .await
                    {
                        Ok(r) => r,
                        Err(e2) if e2.retry() != Retry::No => continue_from(committed),
                        Err(e2) => return Err(e2),
                    }
                }
            };
            let (sent_crc, sent_bytes) = tally.lock().map(|t| (t.crc, t.bytes)).unwrap_or((crc, 0));
            match reply {
                Ok(meta) => {
                    let whole = if sent_bytes == len {
                        sent_crc
                    } else {
                        src.crc_of(committed, total - committed, crc).await?
                    };
                    let check = match opts.crc32c {
                        Some(want) if want != whole => Err(StorageError::Integrity {
                            key: key.into(),
                            detail: "the source changed while it was being uploaded".into(),
                        }),
                        _ => Self::check_written(key, &meta, whole, total),
                    };
                    if let Err(e) = check {
                        return Err(self.discard_bad_upload(key, &meta, e).await);
                    }
                    return Ok(meta);
                }
                Err(next) => {
                    if next < committed || next > end {
                        return Err(StorageError::Protocol {
                            url: crate::http::redact_url(&session),
                            detail: format!("session reports {next} bytes stored; {committed}..{end} were in flight"),
                        });
                    }
                    // Extend the CRC over the part of this chunk the server kept.
                    crc = if next == end && sent_bytes == len {
                        sent_crc
                    } else {
                        src.crc_of(committed, next - committed, crc).await?
                    };
                    committed = next;
                }
            }
        }
    }
}

/// Replies a resumable session's requests hand back rather than fail on: 308 Resume
/// Incomplete, with the committed range.
const SESSION_PASS: &[StatusCode] = &[StatusCode::PERMANENT_REDIRECT];

/// A download whose body broke after the request was accepted: any failure reading it
/// (reset, EOF, a decode error wrapping either) is worth resuming from the byte reached.
struct BodyBroke {
    at: u64,
    err: StorageError,
}

impl std::fmt::Display for BodyBroke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "broke at byte {}: {}", self.at, self.err)
    }
}

impl Retryable for BodyBroke {
    fn retry(&self) -> Retry {
        Retry::Yes
    }
}

/// A status query that itself failed transiently: carry on from what we know.
fn continue_from(committed: u64) -> Result<ObjectMeta, u64> {
    Err(committed)
}

#[async_trait]
impl Storage for GcsStorage {
    fn describe(&self) -> String {
        format!("gs://{}", self.bucket)
    }

    async fn put_bytes(
        &self,
        key: &str,
        data: Bytes,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        if data.len() as u64 > SIMPLE_UPLOAD_MAX_BYTES {
            let total = data.len() as u64;
            return self
                .put_resumable(key, Source::Bytes(&data), total, opts)
                .await;
        }
        let crc = crc32c::crc32c(&data);
        if opts.crc32c.is_some_and(|want| want != crc) {
            return Err(StorageError::Integrity {
                key: key.into(),
                detail: "the content changed after its checksum was taken".into(),
            });
        }
        // Every cloudrun write is content-addressed, create-only or a whole-object rewrite
        // whose repetition is harmless, so a retried upload is safe.
        self.context(opts.budget, format!("upload {key}"))
            .run(|a| self.put_multipart(a, key, &data, opts, crc))
            .await
    }

    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, StorageError> {
        let total = tokio::fs::metadata(path)
            .await
            .map_err(|e| StorageError::io(path, e))?
            .len();
        if total <= SIMPLE_UPLOAD_MAX_BYTES {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| StorageError::io(path, e))?;
            if data.len() as u64 != total {
                return Err(StorageError::Integrity {
                    key: key.into(),
                    detail: format!("{} changed size while being read", path.display()),
                });
            }
            return self.put_bytes(key, Bytes::from(data), opts).await;
        }
        self.put_resumable(key, Source::File(path), total, opts)
            .await
    }

    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<ByteStream, StorageError> {
        let (start, end) = range.unwrap_or((0, None));
        // One context for the download: the first request and every resume share it.
        let mut ctx = self.context(Budget::default(), format!("download of {key}"));
        let first = ctx
            .run(|a| self.open_media(a, key, start, end, None))
            .await?;
        let Some(first) = first else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let h = first.headers();
        let header = |name: &str| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let generation = header("x-goog-generation").and_then(|v| v.parse::<i64>().ok());
        let stored_len = header("x-goog-stored-content-length").and_then(|v| v.parse::<u64>().ok());
        let mut crc = header("x-goog-hash").and_then(|hs| {
            hs.split(',')
                .filter_map(|p| p.trim().strip_prefix("crc32c="))
                .find_map(crc32c_from_base64)
        });

        // The body, resumed from the byte it reached if the connection drops (pinned to
        // the generation first read, so a concurrent rewrite cannot splice two versions).
        struct Body {
            store: GcsStorage,
            key: String,
            resp: Option<Response>,
            offset: u64,
            end: Option<u64>,
            generation: Option<i64>,
            ctx: RetryContext,
        }
        let body = Body {
            store: self.clone(),
            key: key.to_string(),
            resp: Some(first),
            offset: start,
            end,
            generation,
            ctx,
        };
        let stream: ByteStream = Box::pin(futures::stream::unfold(body, |mut st| async move {
            loop {
                let resp = st.resp.as_mut()?;
                let err = match resp.chunk().await {
                    Ok(Some(b)) => {
                        st.offset += b.len() as u64;
                        return Some((Ok(b), st));
                    }
                    Ok(None) => return None,
                    Err(source) => StorageError::Transport {
                        method: "GET".into(),
                        url: format!("{} (body)", st.key),
                        source,
                    },
                };
                let broke = BodyBroke { at: st.offset, err };
                if let Err(b) = st.ctx.backoff(broke).await {
                    st.resp = None;
                    return Some((Err(b.err), st));
                }
                let (store, key, offset, end, generation) =
                    (&st.store, &st.key, st.offset, st.end, st.generation);
                match st
                    .ctx
                    .run(|a| store.open_media(a, key, offset, end, generation))
                    .await
                {
                    Ok(Some(r)) => st.resp = Some(r),
                    Ok(None) => return None,
                    Err(e) => {
                        st.resp = None;
                        return Some((Err(e), st));
                    }
                }
            }
        }));
        if range.is_some() {
            return Ok(stream);
        }
        if crc.is_none() {
            crc = self.head(key).await?.and_then(|m| m.crc32c);
        }
        if crc.is_none() {
            // GCS records a CRC32C for every object; a download that cannot be checked
            // against it is refused rather than trusted.
            return Err(StorageError::Integrity {
                key: key.into(),
                detail: format!(
                    "{} reports no CRC32C for this object, so the download cannot be checked",
                    self.describe()
                ),
            });
        }
        Ok(verify_stream(key.to_string(), stream, crc, stored_len))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let url = self.object_url(key);
        let mut ctx = self.context(Budget::default(), format!("stat {key}"));
        match self
            .execute_json::<ObjectJson>(&mut ctx, key, Method::GET, &url, "object", |rb| rb)
            .await
        {
            Ok(m) => Ok(Some(m.into_meta())),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // One context for the listing: its pages share it.
        let mut ctx = self.context(Budget::default(), format!("list {prefix}"));
        loop {
            let mut url = format!(
                "{}/b/{}/o?prefix={}&maxResults={LIST_PAGE_SIZE}",
                self.endpoint.json_base,
                self.bucket,
                utf8_percent_encode(prefix, OBJECT_NAME)
            );
            if let Some(t) = &token {
                url.push_str(&format!(
                    "&pageToken={}",
                    utf8_percent_encode(t, OBJECT_NAME)
                ));
            }
            let page: ListJson = self
                .execute_json(&mut ctx, prefix, Method::GET, &url, "listing", |rb| rb)
                .await?;
            out.extend(page.items.into_iter().map(ObjectJson::into_meta));
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<bool, StorageError> {
        let url = self.object_url(key);
        let mut ctx = self.context(Budget::default(), format!("delete {key}"));
        match self
            .execute(&mut ctx, key, Method::DELETE, &url, |rb| rb)
            .await
        {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The bucket's place, from the same `buckets.get` as [`GcsStorage::get_bucket`]; a
    /// bucket that does not exist is an error naming it.
    async fn bucket_location(&self) -> Result<Option<crate::prices::BucketPlace>, StorageError> {
        let b = self
            .get_bucket()
            .await?
            .ok_or_else(|| StorageError::NotFound {
                key: format!("gs://{}", self.bucket),
            })?;
        Ok(Some(crate::prices::BucketPlace {
            location: b.location.to_ascii_uppercase(),
            location_type: b.location_type,
            data_locations: b
                .custom_placement_config
                .map(|c| c.data_locations)
                .unwrap_or_default(),
        }))
    }
}
