//! Google credentials on the laptop, tried in order: a service-account key named by
//! `GOOGLE_APPLICATION_CREDENTIALS` (its `token_uri` honoured, so tests point it at a
//! local token server), then — when `GCP_ACCOUNT` names an account — the gcloud CLI for
//! that account, then Application Default Credentials
//! (`~/.config/gcloud/application_default_credentials.json`), then the gcloud CLI's active
//! account. When none works the error lists what was tried and the one command that fixes
//! it. Tokens are never logged.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudrun::contract::SCOPE_CLOUD_PLATFORM;
use gcp_auth::{Token, TokenProvider};
use tokio::sync::Mutex;

/// Longest a `gcloud auth print-access-token` may take (it may refresh over the network).
pub const GCLOUD_TIMEOUT_SECS: u64 = 60;
/// How long a token from gcloud is reused, in seconds: gcloud's tokens live an hour;
/// reusing for 45 minutes leaves room for a long call.
pub const GCLOUD_TOKEN_REUSE_SECS: u64 = 45 * 60;
/// The key-file variable.
pub const ENV_CREDENTIALS: &str = "GOOGLE_APPLICATION_CREDENTIALS";

/// No credentials worked.
#[derive(Debug, thiserror::Error)]
#[error("no usable Google credentials. Tried:\n{}\nFix: {fix}", .tried.iter().map(|t| format!("  - {t}")).collect::<Vec<_>>().join("\n"))]
pub struct CredentialsError {
    pub tried: Vec<String>,
    pub fix: String,
}

/// Tokens from `gcloud auth print-access-token [--account A]`.
#[derive(Debug)]
pub struct GcloudTokens {
    account: Option<String>,
    cached: Mutex<Option<(Arc<Token>, std::time::Instant)>>,
}

impl GcloudTokens {
    pub fn new(account: Option<String>) -> Self {
        GcloudTokens {
            account,
            cached: Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<Arc<Token>, String> {
        let mut cmd = tokio::process::Command::new("gcloud");
        cmd.args(["auth", "print-access-token", "--quiet"]);
        if let Some(a) = &self.account {
            cmd.arg(format!("--account={a}"));
        }
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(GCLOUD_TIMEOUT_SECS), cmd.output())
            .await
            .map_err(|_| format!("gcloud did not answer within {GCLOUD_TIMEOUT_SECS} s"))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => "gcloud is not on PATH".to_string(),
                _ => format!("cannot run gcloud: {e}"),
            })?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            let how = match out.status.code() {
                Some(c) => format!("with status {c}"),
                None => format!("({})", out.status),
            };
            return Err(format!("gcloud exited {how}: {}", first.trim()));
        }
        let tok = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if tok.is_empty() {
            return Err("gcloud printed no token".into());
        }
        token_from(&tok, GCLOUD_TOKEN_REUSE_SECS).map_err(|e| e.to_string())
    }
}

/// A [`Token`] from a bearer string and a lifetime.
pub fn token_from(access_token: &str, lifetime_secs: u64) -> Result<Arc<Token>, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "access_token": access_token,
        "expires_in": lifetime_secs,
    }))
    .map(Arc::new)
}

#[async_trait]
impl TokenProvider for GcloudTokens {
    async fn token(&self, _scopes: &[&str]) -> Result<Arc<Token>, gcp_auth::Error> {
        let mut cached = self.cached.lock().await;
        if let Some((t, _)) = cached.as_ref().filter(|(t, _)| !t.has_expired()) {
            return Ok(t.clone());
        }
        let t = self.fetch().await.map_err(|e| {
            gcp_auth::Error::Other("gcloud auth print-access-token failed", e.into())
        })?;
        *cached = Some((t.clone(), std::time::Instant::now()));
        Ok(t)
    }

    async fn project_id(&self) -> Result<Arc<str>, gcp_auth::Error> {
        Err(gcp_auth::Error::Str(
            "the project comes from GCLOUD_PROJECT, not gcloud",
        ))
    }
}

async fn check(p: Arc<dyn TokenProvider>) -> Result<Arc<dyn TokenProvider>, String> {
    p.token(&[SCOPE_CLOUD_PLATFORM])
        .await
        .map(|_| p.clone())
        .map_err(|e| crate::error_chain(&e))
}

/// Find working credentials (each candidate fetches one token to prove it works).
pub async fn resolve(
    account: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn TokenProvider>, CredentialsError> {
    let mut tried = Vec::new();
    if let Some(path) = env(ENV_CREDENTIALS).filter(|p| !p.is_empty()) {
        let text = std::fs::read_to_string(&path);
        let kind = text
            .as_ref()
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| v["type"].as_str().map(str::to_string));
        let outcome = match (text, kind.as_deref()) {
            (Err(e), _) => Err(format!("cannot read it: {e}")),
            (Ok(_), Some(k)) if k != "service_account" => Err(format!(
                "it is a {k:?} file; only service-account keys are read from {ENV_CREDENTIALS} (unset it to use `gcloud auth application-default login` credentials)"
            )),
            (Ok(t), _) => match gcp_auth::CustomServiceAccount::from_json(&t) {
                Ok(sa) => check(Arc::new(sa)).await,
                Err(e) => Err(crate::error_chain(&e)),
            },
        };
        match outcome {
            Ok(p) => return Ok(p),
            // An explicitly named key file that fails is the answer: falling through to
            // other credentials would act as someone else.
            Err(e) => {
                return Err(CredentialsError {
                    tried: vec![format!("{ENV_CREDENTIALS}={path}: {e}")],
                    fix: format!(
                        "point {ENV_CREDENTIALS} at a valid service-account key, or unset it"
                    ),
                })
            }
        }
    }
    tried.push(format!("{ENV_CREDENTIALS}: not set"));

    if let Some(a) = account {
        match check(Arc::new(GcloudTokens::new(Some(a.to_string())))).await {
            Ok(p) => return Ok(p),
            Err(e) => tried.push(format!("gcloud auth print-access-token --account={a}: {e}")),
        }
    }
    match gcp_auth::ConfigDefaultCredentials::new().await {
        Ok(c) => match check(Arc::new(c)).await {
            Ok(p) => return Ok(p),
            Err(e) => tried.push(format!("application default credentials: {e}")),
        },
        Err(e) => tried.push(format!(
            "application default credentials (~/.config/gcloud/application_default_credentials.json): {}",
            crate::error_chain(&e)
        )),
    }
    if account.is_none() {
        match check(Arc::new(GcloudTokens::new(None))).await {
            Ok(p) => return Ok(p),
            Err(e) => tried.push(format!("gcloud auth print-access-token: {e}")),
        }
    }
    let fix = match account {
        Some(a) => format!("gcloud auth login {a}"),
        None => "gcloud auth application-default login".to_string(),
    };
    Err(CredentialsError { tried, fix })
}

/// Whose credentials [`resolve`] picks, as far as can be told without a network call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account's e-mail, when the credentials name it.
    pub email: Option<String>,
    /// Where the credentials come from.
    pub how: String,
}

impl Identity {
    /// The IAM member for the account (`serviceAccount:E` or `user:E`), if known.
    pub fn member(&self) -> Option<String> {
        self.email.as_ref().map(|e| {
            if e.ends_with(".gserviceaccount.com") {
                format!("serviceAccount:{e}")
            } else {
                format!("user:{e}")
            }
        })
    }
}

/// The identity [`resolve`] would use, in its order: the key file's `client_email`, the
/// `GCP_ACCOUNT` handed to gcloud, then the application-default credentials file.
pub fn identity(account: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Identity {
    let email_of = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["client_email"].as_str().map(str::to_string))
    };
    if let Some(path) = env(ENV_CREDENTIALS).filter(|p| !p.is_empty()) {
        return Identity {
            email: email_of(&path),
            how: format!("the service-account key in {ENV_CREDENTIALS}={path}"),
        };
    }
    if let Some(a) = account {
        return Identity {
            email: Some(a.to_string()),
            how: "gcloud, for GCP_ACCOUNT".into(),
        };
    }
    let config = env("CLOUDSDK_CONFIG")
        .filter(|c| !c.is_empty())
        .or_else(|| env("HOME").map(|h| format!("{h}/.config/gcloud")));
    if let Some(adc) = config.map(|c| format!("{c}/application_default_credentials.json")) {
        if std::path::Path::new(&adc).is_file() {
            return Identity {
                email: email_of(&adc),
                how: format!("application default credentials ({adc})"),
            };
        }
    }
    Identity {
        email: None,
        how: GCLOUD_ACTIVE.into(),
    }
}

/// [`Identity::how`] for gcloud's active account.
const GCLOUD_ACTIVE: &str = "gcloud's active account (set GCP_ACCOUNT to name it)";

/// [`identity`], with gcloud asked for its active account's e-mail when that is what
/// [`resolve`] falls back to (`gcloud config get-value account`).
pub async fn identity_with_gcloud(
    account: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Identity {
    let mut who = identity(account, env);
    if who.email.is_none() && who.how == GCLOUD_ACTIVE {
        let mut cmd = tokio::process::Command::new("gcloud");
        cmd.args(["config", "get-value", "account", "--quiet"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Ok(Ok(out)) =
            tokio::time::timeout(Duration::from_secs(GCLOUD_TIMEOUT_SECS), cmd.output()).await
        {
            let email = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && email.contains('@') {
                who.email = Some(email);
            }
        }
    }
    who
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broken_key_file_is_the_answer_not_a_fallthrough() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.json");
        std::fs::write(&key, r#"{"type":"authorized_user","client_id":"x"}"#).unwrap();
        let k = key.display().to_string();
        let err = resolve(None, &|v| (v == ENV_CREDENTIALS).then(|| k.clone()))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("authorized_user") && err.contains("Fix:"),
            "{err}"
        );
    }

    #[test]
    fn the_error_lists_what_was_tried_and_one_fix() {
        let e = CredentialsError {
            tried: vec!["a: no".into(), "b: no".into()],
            fix: "gcloud auth login me@x.org".into(),
        };
        assert_eq!(e.to_string(), "no usable Google credentials. Tried:\n  - a: no\n  - b: no\nFix: gcloud auth login me@x.org");
    }
}
