//! Access tokens from the metadata server (`instance/service-accounts/default/token`) as
//! a [`gcp_auth::TokenProvider`], for the GCS and Compute clients. gcp_auth's own metadata
//! provider cannot be pointed at `GCE_METADATA_HOST`, so this one goes through
//! [`MetadataClient`].
//!
//! A token is cached until [`TOKEN_REFRESH_MARGIN_SECS`] before its `expires_in`. Tokens
//! are never logged: errors name the path, never the body of a 200.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use gcp_auth::{Error as AuthError, Token, TokenProvider};
use tokio::sync::Mutex;

use crate::metadata::{MetadataClient, MetadataError};

/// Metadata path of the default service account's token.
pub const TOKEN_PATH: &str = "instance/service-accounts/default/token";
/// Refresh a cached token this long before it expires: the metadata server hands out
/// tokens it caches itself, and a call that starts with 60 s left will finish in time.
pub const TOKEN_REFRESH_MARGIN_SECS: i64 = 60;

/// Tokens for the VM's service account.
#[derive(Debug)]
pub struct MetadataTokens {
    md: Arc<MetadataClient>,
    cached: Mutex<Option<Arc<Token>>>,
    project: Mutex<Option<Arc<str>>>,
}

impl MetadataTokens {
    pub fn new(md: Arc<MetadataClient>) -> Self {
        MetadataTokens {
            md,
            cached: Mutex::new(None),
            project: Mutex::new(None),
        }
    }
}

fn auth_err(what: &'static str, e: MetadataError) -> AuthError {
    AuthError::Other(what, Box::new(e))
}

#[async_trait]
impl TokenProvider for MetadataTokens {
    async fn token(&self, _scopes: &[&str]) -> Result<Arc<Token>, AuthError> {
        // The VM's scopes are fixed at creation (cloud-platform); asking for narrower ones
        // buys nothing here, so one cached token serves every caller.
        let mut cached = self.cached.lock().await;
        if let Some(t) = cached.as_ref() {
            let left = t.expires_at() - Utc::now();
            if left.num_seconds() > TOKEN_REFRESH_MARGIN_SECS {
                return Ok(t.clone());
            }
        }
        let body = self
            .md
            .get_required(TOKEN_PATH)
            .await
            .map_err(|e| auth_err("metadata server token request failed", e))?;
        // `Token` deserialises `{"access_token","expires_in","token_type"}`; the error
        // text of serde_json never quotes the input, so no token reaches a log.
        let token: Token = serde_json::from_str(&body)
            .map_err(|e| AuthError::Json("metadata server token reply is not a token", e))?;
        let token = Arc::new(token);
        *cached = Some(token.clone());
        Ok(token)
    }

    async fn project_id(&self) -> Result<Arc<str>, AuthError> {
        let mut p = self.project.lock().await;
        if let Some(p) = p.as_ref() {
            return Ok(p.clone());
        }
        let id: Arc<str> = self
            .md
            .get_required("project/project-id")
            .await
            .map_err(|e| auth_err("metadata server project-id request failed", e))?
            .trim()
            .into();
        *p = Some(id.clone());
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::tests::serve;
    use std::sync::atomic::Ordering;

    #[tokio::test]
    async fn tokens_are_cached_until_shortly_before_expiry() {
        let (fake, host) = serve().await;
        fake.set(
            TOKEN_PATH,
            r#"{"access_token":"ya29.first","expires_in":3599,"token_type":"Bearer"}"#,
        );
        fake.set("project/project-id", "my-proj\n");
        let tokens = MetadataTokens::new(Arc::new(MetadataClient::new(&host).unwrap()));
        let a = tokens
            .token(&[cloudrun::contract::SCOPE_CLOUD_PLATFORM])
            .await
            .unwrap();
        assert_eq!(a.as_str(), "ya29.first");
        let before = fake.requests.load(Ordering::SeqCst);
        let b = tokens.token(&[]).await.unwrap();
        assert_eq!(b.as_str(), "ya29.first");
        assert_eq!(
            fake.requests.load(Ordering::SeqCst),
            before,
            "served from the cache"
        );
        assert!(
            !format!("{b:?}").contains("ya29"),
            "Debug never shows the token"
        );

        // A token about to expire is replaced.
        fake.set(
            TOKEN_PATH,
            r#"{"access_token":"ya29.short","expires_in":30,"token_type":"Bearer"}"#,
        );
        *tokens.cached.lock().await = None;
        assert_eq!(tokens.token(&[]).await.unwrap().as_str(), "ya29.short");
        fake.set(
            TOKEN_PATH,
            r#"{"access_token":"ya29.next","expires_in":3599,"token_type":"Bearer"}"#,
        );
        assert_eq!(tokens.token(&[]).await.unwrap().as_str(), "ya29.next");
        assert_eq!(&*tokens.project_id().await.unwrap(), "my-proj");
    }

    #[tokio::test]
    async fn a_bad_token_reply_is_an_error_that_does_not_quote_it() {
        let (fake, host) = serve().await;
        fake.set(TOKEN_PATH, r#"{"access_token":"ya29.secret"}"#);
        let tokens = MetadataTokens::new(Arc::new(MetadataClient::new(&host).unwrap()));
        let err = tokens.token(&[]).await.unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("ya29.secret"), "{text}");
    }
}
