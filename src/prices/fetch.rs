//! [`CatalogClient`]: reads every Compute Engine SKU from the Cloud Billing Catalog API
//! (`GET {base}v1/services/6F81-5844-456A/skus`, paged), with the user's credentials (the
//! same token source as Compute). The endpoint follows gcloud's convention,
//! `CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDBILLING`, so tests point it at the testkit's
//! emulator. Requests go through the one [`RetryPolicy`]; a 403 because the API is not
//! enabled says how to enable it.

use std::sync::Arc;

use crate::contract::SCOPE_CLOUD_PLATFORM;
use crate::retry::{Retry, RetryPolicy, Retryable};

use super::catalog::{ListSkusPage, Sku};

/// The production endpoint.
pub const DEFAULT_BILLING_ENDPOINT: &str = "https://cloudbilling.googleapis.com/";
/// gcloud's endpoint override for the Billing API.
pub const ENV_BILLING_ENDPOINT: &str = "CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDBILLING";
/// Compute Engine's service id in the catalog.
pub const COMPUTE_SERVICE_ID: &str = "6F81-5844-456A";
/// SKUs per page (the API's default and maximum).
pub const PAGE_SIZE: u32 = 5000;
/// Most pages one listing follows, so that a server that keeps sending a token cannot
/// loop us forever (100 × 5000 SKUs; Compute has a few tens of thousands).
pub const MAX_PAGES: usize = 100;
/// Attempts per page: a price refresh that fails is a warning, not worth minutes.
pub const FETCH_MAX_ATTEMPTS: u32 = 3;
/// Longest one page may take with its retries, in seconds.
pub const FETCH_DEADLINE_SECS: u64 = 30;

/// Why the catalog could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the Cloud Billing API is not enabled for the project of your credentials ({message}): enable it with `gcloud services enable cloudbilling.googleapis.com`, or pass --prices FILE")]
    NotEnabled { message: String },
    #[error("GET {url}: HTTP {status}: {message}")]
    Api {
        url: String,
        status: u16,
        message: String,
    },
    #[error("GET {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: page {page} is not a SKU list ({detail})")]
    Protocol {
        url: String,
        page: usize,
        detail: String,
    },
    #[error("credentials for the Billing API: {0}")]
    Auth(String),
    #[error("the SKU list did not end after {MAX_PAGES} pages")]
    TooManyPages,
}

impl Retryable for CatalogError {
    fn retry(&self) -> Retry {
        match self {
            CatalogError::Api { status, .. } if crate::retry::status_is_transient(*status) => {
                Retry::Yes
            }
            CatalogError::Transport { source, .. }
                if crate::retry::transport_is_transient(source) =>
            {
                Retry::Yes
            }
            _ => Retry::No,
        }
    }
}

/// The Billing Catalog over REST.
#[derive(Clone)]
pub struct CatalogClient {
    client: reqwest::Client,
    /// Ends with `/`.
    base: String,
    tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for CatalogClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatalogClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The Billing endpoint: the override when set and non-empty, else production.
pub fn endpoint_from(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    lookup(ENV_BILLING_ENDPOINT)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl CatalogClient {
    /// A client rooted at `base` (`https://cloudbilling.googleapis.com/`). Without
    /// `tokens` no `Authorization` header is sent (an emulator).
    pub fn new(
        base: &str,
        tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
    ) -> Result<Self, crate::http::ClientError> {
        let mut base = base.trim().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(CatalogClient {
            client: crate::http::client()?,
            base,
            tokens,
            retry: RetryPolicy {
                max_attempts: FETCH_MAX_ATTEMPTS,
                total_deadline: std::time::Duration::from_secs(FETCH_DEADLINE_SECS),
                ..RetryPolicy::default()
            },
        })
    }

    /// The same client with another retry policy (tests).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Every Compute Engine SKU, all pages.
    pub async fn fetch_compute_skus(&self) -> Result<Vec<Sku>, CatalogError> {
        let url = format!("{}v1/services/{COMPUTE_SERVICE_ID}/skus", self.base);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for page in 1..=MAX_PAGES {
            let got: ListSkusPage = self
                .retry
                .run(&format!("GET {url} (page {page})"), |_| {
                    self.page(&url, page, token.as_deref())
                })
                .await?;
            out.extend(got.skus);
            match got.next_page_token.filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
        Err(CatalogError::TooManyPages)
    }

    async fn page(
        &self,
        url: &str,
        page: usize,
        token: Option<&str>,
    ) -> Result<ListSkusPage, CatalogError> {
        let mut query: Vec<(&str, String)> = vec![
            ("currencyCode", "USD".into()),
            ("pageSize", PAGE_SIZE.to_string()),
        ];
        if let Some(t) = token {
            query.push(("pageToken", t.to_string()));
        }
        let mut full = reqwest::Url::parse(url).map_err(|e| CatalogError::Protocol {
            url: url.to_string(),
            page,
            detail: format!("not a URL: {e}"),
        })?;
        full.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let mut req = self.client.get(full);
        if let Some(tokens) = &self.tokens {
            let t = tokens
                .token(&[SCOPE_CLOUD_PLATFORM])
                .await
                .map_err(|e| CatalogError::Auth(format!("{e:#}")))?;
            req = req.bearer_auth(t.as_str());
        }
        let transport = |source| CatalogError::Transport {
            url: url.to_string(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(transport)?;
        if !(200..300).contains(&status) {
            return Err(api_error(url, status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| CatalogError::Protocol {
            url: url.to_string(),
            page,
            detail: format!("{e}: {}", crate::http::short_body(&body)),
        })
    }
}

/// Google's error envelope, with the "API not enabled" case named.
fn api_error(url: &str, status: u16, body: &[u8]) -> CatalogError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = v["error"]["message"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| crate::http::short_body(body));
    let text = String::from_utf8_lossy(body);
    if status == 403
        && (text.contains("SERVICE_DISABLED")
            || text.contains("accessNotConfigured")
            || message.contains("has not been used")
            || message.contains("is disabled"))
    {
        return CatalogError::NotEnabled { message };
    }
    CatalogError::Api {
        url: url.to_string(),
        status,
        message,
    }
}
