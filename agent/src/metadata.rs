//! The GCE metadata server client, as Google's guest agent uses it: `Metadata-Flavor:
//! Google` on every request and checked on every reply, `GCE_METADATA_HOST` honoured,
//! `wait_for_change` long polls with `last_etag` and `timeout_sec` (client timeout = the
//! hang + [`METADATA_HANG_SLACK_SECS`]), and only the first failure of an outage logged.
//!
//! It reads; it never writes metadata. Tokens it fetches are handed to
//! [`crate::token::MetadataTokens`] and never logged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cloudrun::retry::{Retry, RetryPolicy, Retryable};
use cloudrun::status::InstanceRef;

/// The metadata server's host when `GCE_METADATA_HOST` is unset.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// The header (and value) every request carries and every reply must carry.
pub const METADATA_FLAVOR: (&str, &str) = ("Metadata-Flavor", "Google");
/// Timeout of a plain (not long-polling) request: the server is on the host, it answers
/// in milliseconds when it answers at all.
pub const METADATA_REQUEST_TIMEOUT_SECS: u64 = 10;
/// Added to a long poll's `timeout_sec` for the client-side timeout, as the guest agent
/// does, so the server always gets to answer first.
pub const METADATA_HANG_SLACK_SECS: u64 = 10;
/// How long one preemption long poll hangs on the server.
pub const PREEMPT_WATCH_HANG_SECS: u64 = 60;
/// Pause after a failed long poll before the next, so an outage is not a busy loop.
pub const WATCH_RETRY_PAUSE_SECS: u64 = 5;
/// Total time spent retrying one plain read at start-up before giving up.
pub const METADATA_READ_DEADLINE_SECS: u64 = 60;

/// Why a metadata read failed.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("GET {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}: {body}")]
    Http {
        url: String,
        status: u16,
        body: String,
    },
    #[error("GET {url}: the reply has no `Metadata-Flavor: Google` header; this is not a GCE metadata server (is GCE_METADATA_HOST right?)")]
    NotMetadataServer { url: String },
    #[error("metadata {path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("metadata {path} is not set on this instance")]
    Missing { path: String },
}

impl Retryable for MetadataError {
    fn retry(&self) -> Retry {
        match self {
            MetadataError::Transport { .. } => Retry::Yes,
            MetadataError::Http { status, .. } if cloudrun::retry::status_is_transient(*status) => {
                Retry::Yes
            }
            _ => Retry::No,
        }
    }
}

/// A value and the ETag the server gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: String,
    pub etag: Option<String>,
}

/// A client for `http://<host>/computeMetadata/v1/`.
#[derive(Debug)]
pub struct MetadataClient {
    base: String,
    http: reqwest::Client,
    /// Set while an outage is being reported, so it is logged once.
    in_outage: AtomicBool,
}

impl MetadataClient {
    /// A client for `host` (`host[:port]`, no scheme, as `GCE_METADATA_HOST` holds it).
    pub fn new(host: &str) -> Result<Self, MetadataError> {
        let host = host.trim().trim_end_matches('/');
        let host = host.strip_prefix("http://").unwrap_or(host).to_string();
        let base = format!("http://{host}/computeMetadata/v1/");
        // No client-wide timeout: each request sets its own (long polls hang on purpose).
        let http = cloudrun::http::client_builder()
            .timeout(Duration::from_secs(24 * 3600))
            .build()
            .map_err(|source| MetadataError::Transport {
                url: base.clone(),
                source,
            })?;
        Ok(MetadataClient {
            base,
            http,
            in_outage: AtomicBool::new(false),
        })
    }

    /// The client for `GCE_METADATA_HOST`, or the real server.
    pub fn from_env() -> Result<Self, MetadataError> {
        let host = std::env::var(cloudrun::contract::ENV_GCE_METADATA_HOST)
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_METADATA_HOST.to_string());
        Self::new(&host)
    }

    /// `http://host/computeMetadata/v1/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn request(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Option<Versioned>, MetadataError> {
        let mut url = format!("{}{}", self.base, path.trim_start_matches('/'));
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&query_escape(v));
        }
        let resp = self
            .http
            .get(&url)
            .header(METADATA_FLAVOR.0, METADATA_FLAVOR.1)
            .timeout(timeout)
            .send()
            .await
            .map_err(|source| MetadataError::Transport {
                url: url.clone(),
                source,
            })?;
        let flavor_ok = resp
            .headers()
            .get(METADATA_FLAVOR.0)
            .and_then(|v| v.to_str().ok())
            == Some(METADATA_FLAVOR.1);
        if !flavor_ok {
            return Err(MetadataError::NotMetadataServer { url });
        }
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|source| MetadataError::Transport {
                url: url.clone(),
                source,
            })?;
        match status {
            200 => Ok(Some(Versioned {
                value: String::from_utf8_lossy(&body).into_owned(),
                etag,
            })),
            404 => Ok(None),
            _ => Err(MetadataError::Http {
                url,
                status,
                body: cloudrun::http::short_body(&body),
            }),
        }
    }

    /// One value; `None` if the server says 404 (e.g. an attribute that is not set).
    /// Transient failures are retried by the shared policy for up to
    /// [`METADATA_READ_DEADLINE_SECS`].
    pub async fn get(&self, path: &str) -> Result<Option<String>, MetadataError> {
        let policy =
            RetryPolicy::default().with_deadline(Duration::from_secs(METADATA_READ_DEADLINE_SECS));
        let timeout = Duration::from_secs(METADATA_REQUEST_TIMEOUT_SECS);
        let v = policy
            .run(&format!("metadata {path}"), |_| {
                self.request(path, &[], timeout)
            })
            .await?;
        Ok(v.map(|v| v.value))
    }

    /// One value that must be set.
    pub async fn get_required(&self, path: &str) -> Result<String, MetadataError> {
        self.get(path)
            .await?
            .ok_or_else(|| MetadataError::Missing { path: path.into() })
    }

    /// A long poll: returns when the value differs from the one `last_etag` names (at
    /// once if it already does), or after about `hang_secs` with the unchanged value.
    pub async fn wait_for_change(
        &self,
        path: &str,
        last_etag: Option<&str>,
        hang_secs: u64,
    ) -> Result<Option<Versioned>, MetadataError> {
        let mut q = vec![
            ("wait_for_change", "true".to_string()),
            ("timeout_sec", hang_secs.to_string()),
        ];
        if let Some(e) = last_etag {
            q.push(("last_etag", e.to_string()));
        }
        let timeout = Duration::from_secs(hang_secs + METADATA_HANG_SLACK_SECS);
        self.request(path, &q, timeout).await
    }

    /// Record the outcome of a watch request: log the first failure of an outage at
    /// warn level, later ones at debug, and the recovery once.
    fn note_outcome<T>(&self, what: &str, r: &Result<T, MetadataError>) {
        match r {
            Ok(_) => {
                if self.in_outage.swap(false, Ordering::Relaxed) {
                    tracing::info!("metadata server reachable again ({what})");
                }
            }
            Err(e) => {
                if !self.in_outage.swap(true, Ordering::Relaxed) {
                    tracing::warn!("metadata server unreachable ({what}): {e}; retrying quietly");
                } else {
                    tracing::debug!("metadata still unreachable ({what}): {e}");
                }
            }
        }
    }

    /// Watch `instance/preempted` until it reads `TRUE`, then return. Never returns
    /// otherwise (cancel by dropping the future).
    pub async fn wait_for_preemption(&self) {
        let mut etag: Option<String> = None;
        loop {
            let r = self
                .wait_for_change(
                    "instance/preempted",
                    etag.as_deref(),
                    PREEMPT_WATCH_HANG_SECS,
                )
                .await;
            self.note_outcome("instance/preempted", &r);
            match r {
                Ok(Some(v)) => {
                    if v.value.trim().eq_ignore_ascii_case("TRUE") {
                        return;
                    }
                    etag = v.etag;
                }
                Ok(None) => {
                    // Not a Spot/preemptible VM's key here: nothing to watch. Check rarely.
                    tokio::time::sleep(Duration::from_secs(PREEMPT_WATCH_HANG_SECS)).await;
                }
                Err(_) => {
                    etag = None;
                    tokio::time::sleep(Duration::from_secs(WATCH_RETRY_PAUSE_SECS)).await;
                }
            }
        }
    }

    /// Name, zone and project of this instance.
    pub async fn instance(&self) -> Result<InstanceRef, MetadataError> {
        let name = self.get_required("instance/name").await?.trim().to_string();
        let zone_path = self.get_required("instance/zone").await?;
        let zone = parse_zone(&zone_path).ok_or_else(|| MetadataError::Invalid {
            path: "instance/zone".into(),
            detail: format!("{zone_path:?} is not projects/N/zones/ZONE"),
        })?;
        let project = self
            .get_required("project/project-id")
            .await?
            .trim()
            .to_string();
        Ok(InstanceRef {
            project,
            zone,
            name,
        })
    }

    /// The run spec JSON from the `cloudrun-spec` attribute.
    pub async fn spec_json(&self) -> Result<String, MetadataError> {
        let path = format!("instance/attributes/{}", cloudrun::contract::META_SPEC);
        self.get_required(&path).await
    }
}

/// Percent-encode a query value (ETags are opaque strings).
fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The zone name from `instance/zone` (`projects/123/zones/us-central1-a`, perhaps with a
/// trailing `/`).
pub fn parse_zone(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('/');
    let (head, zone) = s.rsplit_once("/zones/")?;
    if zone.is_empty() || zone.contains('/') || !head.starts_with("projects/") {
        return None;
    }
    Some(zone.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};

    /// An in-process metadata server: values by path, an ETag per value, 403 without
    /// the flavor header, long polls that wait for a change.
    #[derive(Debug, Default)]
    pub(crate) struct FakeMetadata {
        pub values: Mutex<HashMap<String, String>>,
        pub version: tokio::sync::watch::Sender<u64>,
        pub requests: AtomicUsize,
        pub bad_flavor: AtomicUsize,
        pub last_query: Mutex<HashMap<String, String>>,
        pub omit_flavor: AtomicBool,
    }

    impl FakeMetadata {
        pub fn set(&self, path: &str, value: &str) {
            self.values
                .lock()
                .unwrap()
                .insert(path.to_string(), value.to_string());
            self.version.send_modify(|v| *v += 1);
        }
    }

    async fn handle(
        State(st): State<Arc<FakeMetadata>>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        st.requests.fetch_add(1, Ordering::SeqCst);
        *st.last_query.lock().unwrap() = q.clone();
        let flavor = [("Metadata-Flavor", "Google")];
        if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
            st.bad_flavor.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::FORBIDDEN, flavor, "missing flavor").into_response();
        }
        let path = uri
            .path()
            .trim_start_matches("/computeMetadata/v1/")
            .to_string();
        let etag_of = |v: &str| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            v.hash(&mut h);
            format!("{:x}", h.finish())
        };
        let current = || st.values.lock().unwrap().get(&path).cloned();
        if q.get("wait_for_change").map(String::as_str) == Some("true") {
            let mut rx = st.version.subscribe();
            let hang: u64 = q
                .get("timeout_sec")
                .and_then(|s| s.parse().ok())
                .unwrap_or(60);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(hang);
            loop {
                let cur = current();
                let changed = match (&cur, q.get("last_etag")) {
                    (Some(v), Some(e)) => &etag_of(v) != e,
                    _ => true,
                };
                if changed {
                    break;
                }
                if tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        if st.omit_flavor.load(Ordering::SeqCst) {
            return (StatusCode::OK, "x").into_response();
        }
        match current() {
            Some(v) => (
                StatusCode::OK,
                [
                    ("Metadata-Flavor", "Google".to_string()),
                    ("ETag", etag_of(&v)),
                ],
                v,
            )
                .into_response(),
            None => (StatusCode::NOT_FOUND, flavor, "not found").into_response(),
        }
    }

    /// Start a fake on 127.0.0.1:0; returns it and `host:port`.
    pub(crate) async fn serve() -> (Arc<FakeMetadata>, String) {
        let st = Arc::new(FakeMetadata::default());
        let app = axum::Router::new().fallback(handle).with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (st, addr.to_string())
    }

    #[test]
    fn zones_are_parsed_from_the_project_path() {
        assert_eq!(
            parse_zone("projects/1234/zones/us-central1-a").as_deref(),
            Some("us-central1-a")
        );
        assert_eq!(
            parse_zone("projects/1234/zones/europe-west4-b/\n").as_deref(),
            Some("europe-west4-b")
        );
        assert_eq!(parse_zone("us-central1-a"), None);
        assert_eq!(parse_zone("projects/1/zones/"), None);
    }

    #[tokio::test]
    async fn reads_values_with_the_flavor_header_and_404_as_absent() {
        let (fake, host) = serve().await;
        fake.set("instance/name", "trainer-1");
        fake.set("instance/zone", "projects/42/zones/us-central1-a");
        fake.set("project/project-id", "my-proj");
        let md = MetadataClient::new(&host).unwrap();
        assert_eq!(
            md.instance().await.unwrap(),
            InstanceRef {
                project: "my-proj".into(),
                zone: "us-central1-a".into(),
                name: "trainer-1".into()
            }
        );
        assert_eq!(md.get("instance/attributes/nope").await.unwrap(), None);
        let err = md.spec_json().await.unwrap_err().to_string();
        assert!(err.contains("cloudrun-spec"), "{err}");
        assert_eq!(fake.bad_flavor.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_reply_without_the_flavor_header_is_refused() {
        let (fake, host) = serve().await;
        fake.set("instance/name", "x");
        fake.omit_flavor.store(true, Ordering::SeqCst);
        let md = MetadataClient::new(&host).unwrap();
        let err = md.get("instance/name").await.unwrap_err();
        assert!(
            matches!(err, MetadataError::NotMetadataServer { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn long_polls_send_etag_and_timeout_and_return_on_change() {
        let (fake, host) = serve().await;
        fake.set("instance/preempted", "FALSE");
        let md = Arc::new(MetadataClient::new(&host).unwrap());
        let first = md
            .wait_for_change("instance/preempted", None, 5)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.value, "FALSE");
        let etag = first.etag.clone().unwrap();
        let md2 = md.clone();
        let waiter = tokio::spawn(async move {
            md2.wait_for_change("instance/preempted", Some(&etag), 30)
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "hangs while unchanged");
        fake.set("instance/preempted", "TRUE");
        let v = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(v.value, "TRUE");
        let q = fake.last_query.lock().unwrap().clone();
        assert_eq!(q.get("timeout_sec").map(String::as_str), Some("30"));
        assert!(q.contains_key("last_etag"));
    }

    #[tokio::test]
    async fn preemption_watch_returns_when_preempted_turns_true() {
        let (fake, host) = serve().await;
        fake.set("instance/preempted", "FALSE");
        let md = Arc::new(MetadataClient::new(&host).unwrap());
        let md2 = md.clone();
        let w = tokio::spawn(async move { md2.wait_for_preemption().await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!w.is_finished());
        fake.set("instance/preempted", "TRUE");
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap()
            .unwrap();
    }
}
