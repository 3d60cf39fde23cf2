//! [`RestApi`]: one Google REST API rooted at a base URL, with a bearer token per request,
//! Google's error envelope parsed into [`ComputeError::Api`] and the one [`RetryPolicy`].
//! Requests are retried here and only here; an operation of several requests (following
//! a long-running Operation) runs them under one [`RetryContext`] through [`RestApi::call_in`].
//! [`crate::compute_rest::RestCompute`] is built on it, and so are the read-only checks
//! `cloudrun-launch doctor` makes of Service Usage, Resource Manager and IAM.
//!
//! Every Google REST API answers errors in the same envelope, so one error type serves
//! them all; the name [`ComputeError`] is historical. Each API's base URL follows gcloud's
//! convention, `CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>` ([`endpoint_override`]), so the same
//! binary runs against emulators. Tokens never reach a log or an error message.

use std::sync::Arc;

use reqwest::Method;
use serde::de::DeserializeOwned;

use crate::compute::ComputeError;
use crate::contract::SCOPE_CLOUD_PLATFORM;
use crate::retry::{Attempt, Budget, RetryContext, RetryPolicy};

/// Google's APIs that cloudrun calls, each with the part of gcloud's
/// `CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>` variable after the prefix and its production
/// root. The root is what gcloud's override replaces: Compute's carries its version
/// (`compute/v1/`), the others' paths start with theirs (`v1/…`, `v3/…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoogleApi {
    Compute,
    ServiceUsage,
    ResourceManager,
    Iam,
    Batch,
    Billing,
}

impl GoogleApi {
    /// The `<API>` of `CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>`.
    pub fn override_name(self) -> &'static str {
        match self {
            GoogleApi::Compute => "COMPUTE",
            GoogleApi::ServiceUsage => "SERVICEUSAGE",
            GoogleApi::ResourceManager => "CLOUDRESOURCEMANAGER",
            GoogleApi::Iam => "IAM",
            GoogleApi::Batch => "BATCH",
            GoogleApi::Billing => "CLOUDBILLING",
        }
    }

    /// The production root URL.
    pub fn default_root(self) -> &'static str {
        match self {
            GoogleApi::Compute => crate::compute::DEFAULT_COMPUTE_ENDPOINT,
            GoogleApi::ServiceUsage => "https://serviceusage.googleapis.com/",
            GoogleApi::ResourceManager => "https://cloudresourcemanager.googleapis.com/",
            GoogleApi::Iam => "https://iam.googleapis.com/",
            GoogleApi::Batch => "https://batch.googleapis.com/",
            GoogleApi::Billing => "https://cloudbilling.googleapis.com/",
        }
    }

    /// The service name Service Usage knows it by (`compute.googleapis.com`).
    pub fn service_name(self) -> &'static str {
        match self {
            GoogleApi::Compute => "compute.googleapis.com",
            GoogleApi::ServiceUsage => "serviceusage.googleapis.com",
            GoogleApi::ResourceManager => "cloudresourcemanager.googleapis.com",
            GoogleApi::Iam => "iam.googleapis.com",
            GoogleApi::Batch => "batch.googleapis.com",
            GoogleApi::Billing => "cloudbilling.googleapis.com",
        }
    }

    /// The full name of the override variable.
    pub fn override_var(self) -> String {
        format!("CLOUDSDK_API_ENDPOINT_OVERRIDES_{}", self.override_name())
    }
}

/// The root URL of `api`: its `CLOUDSDK_API_ENDPOINT_OVERRIDES_<API>` when set and
/// non-empty, else production. `lookup` is the environment (injected for tests).
pub fn endpoint_override(api: GoogleApi, lookup: impl Fn(&str) -> Option<String>) -> String {
    lookup(&api.override_var())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| api.default_root().to_string())
}

/// Whether a base URL points at this machine (an emulator): then the "VMs" it creates
/// run here, with this machine's libraries.
pub fn is_loopback(base: &str) -> bool {
    reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .is_some_and(|h| {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

/// One Google REST API over reqwest.
#[derive(Clone)]
pub struct RestApi {
    client: reqwest::Client,
    /// Always ends with `/`.
    base: String,
    tokens: Arc<dyn gcp_auth::TokenProvider>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for RestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestApi")
            .field("base", &self.base)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl RestApi {
    /// A client for the API rooted at `base`.
    pub fn new(base: &str, tokens: Arc<dyn gcp_auth::TokenProvider>) -> Result<Self, ComputeError> {
        let client =
            crate::http::client_builder()
                .build()
                .map_err(|source| ComputeError::Transport {
                    method: "BUILD".into(),
                    url: base.to_string(),
                    source,
                })?;
        let mut base = base.trim().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(RestApi {
            client,
            base,
            tokens,
            retry: RetryPolicy::default(),
        })
    }

    /// A client for `api` at the endpoint the environment names.
    pub fn for_api(
        api: GoogleApi,
        lookup: impl Fn(&str) -> Option<String>,
        tokens: Arc<dyn gcp_auth::TokenProvider>,
    ) -> Result<Self, ComputeError> {
        Self::new(&endpoint_override(api, lookup), tokens)
    }

    /// The same client with another retry policy (tests use a fast one).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The base URL, with its trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    /// `GET path`; `Ok(None)` on 404.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Option<T>, ComputeError> {
        self.call(Method::GET, path, query, None, true).await
    }

    /// `POST path` with a JSON body; `Ok(None)` on 404.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Option<T>, ComputeError> {
        self.call(Method::POST, path, &[], Some(body), true).await
    }

    /// One call with retries. `Ok(None)` is a 404 when `absent_ok`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        absent_ok: bool,
    ) -> Result<Option<T>, ComputeError> {
        let what = format!("{method} {}", self.url(path));
        let mut ctx = self.context(Budget::default(), what);
        self.call_in(&mut ctx, method, path, query, body, absent_ok)
            .await
    }

    /// The retry context of one operation named `what`, under this client's policy
    /// narrowed by `budget`.
    pub fn context(&self, budget: Budget, what: String) -> RetryContext {
        RetryContext::new(&self.retry, budget, what)
    }

    /// One call as one request of the operation `ctx` belongs to: retried under it, so
    /// the operation's requests share one budget.
    pub async fn call_in<T: DeserializeOwned>(
        &self,
        ctx: &mut RetryContext,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        absent_ok: bool,
    ) -> Result<Option<T>, ComputeError> {
        let url = self.url(path);
        ctx.run(|a| self.attempt::<T>(a, method.clone(), &url, query, body, absent_ok))
            .await
    }

    async fn attempt<T: DeserializeOwned>(
        &self,
        attempt: Attempt,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
        absent_ok: bool,
    ) -> Result<Option<T>, ComputeError> {
        let token = self
            .tokens
            .token(&[SCOPE_CLOUD_PLATFORM])
            .await
            .map_err(|e| ComputeError::Auth(format!("{e:#}")))?;
        let mut full = reqwest::Url::parse(url).map_err(|e| ComputeError::Protocol {
            url: url.to_string(),
            detail: format!("not a URL: {e}"),
        })?;
        if !query.is_empty() {
            full.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let timeout = std::time::Duration::from_secs(crate::http::REQUEST_TIMEOUT_SECS);
        let mut req = self
            .client
            .request(method.clone(), full)
            .bearer_auth(token.as_str())
            .timeout(attempt.timeout(timeout));
        req = match body {
            Some(b) => req.json(b),
            // Google front ends want a length on body-less POSTs (411 otherwise).
            None if method == Method::POST => req.header(reqwest::header::CONTENT_LENGTH, "0"),
            None => req,
        };
        let transport = |source| ComputeError::Transport {
            method: method.to_string(),
            url: url.to_string(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = crate::retry::retry_after(resp.headers());
        let bytes = resp.bytes().await.map_err(transport)?;
        if (200..300).contains(&status) {
            return serde_json::from_slice::<T>(&bytes).map(Some).map_err(|e| {
                ComputeError::Protocol {
                    url: url.to_string(),
                    detail: format!("{e}: {}", crate::http::short_body(&bytes)),
                }
            });
        }
        if status == 404 && absent_ok {
            return Ok(None);
        }
        Err(crate::compute_rest::api_error(
            method.as_str(),
            url,
            status,
            &bytes,
            retry_after,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_follows_gclouds_override_variable() {
        let env = |k: &str| {
            (k == "CLOUDSDK_API_ENDPOINT_OVERRIDES_SERVICEUSAGE")
                .then(|| " http://127.0.0.1:9/ ".to_string())
        };
        assert_eq!(
            endpoint_override(GoogleApi::ServiceUsage, env),
            "http://127.0.0.1:9/"
        );
        assert_eq!(
            endpoint_override(GoogleApi::ResourceManager, env),
            "https://cloudresourcemanager.googleapis.com/"
        );
        assert_eq!(
            GoogleApi::Billing.override_var(),
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_CLOUDBILLING"
        );
        assert_eq!(
            GoogleApi::Compute.override_var(),
            crate::contract::ENV_COMPUTE_ENDPOINT
        );
    }

    #[test]
    fn loopback_endpoints_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:8080/compute/v1/"));
        assert!(is_loopback("http://localhost:1/"));
        assert!(is_loopback("http://[::1]:1/"));
        assert!(!is_loopback("https://compute.googleapis.com/compute/v1/"));
        assert!(!is_loopback("http://10.0.0.1/"));
        assert!(!is_loopback("not a url"));
    }
}
