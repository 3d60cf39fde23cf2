//! The HTTP client every cloudrun binary uses: rustls with the `ring` provider and the
//! bundled Mozilla roots (the static agent may land on an image without a CA store), no
//! automatic redirects (GCS answers resumable chunks with 308, which is not a redirect),
//! and bounded connect and request times. Also the shortened-body helper for errors.

use std::time::Duration;

/// Time to open a TCP connection: a healthy Google front end answers in milliseconds.
pub const CONNECT_TIMEOUT_SECS: u64 = 10;
/// Longest a single request may take, body included. Large objects are moved in
/// resumable chunks, each its own request, so this bounds one chunk, not one file.
pub const REQUEST_TIMEOUT_SECS: u64 = 300;
/// How much of an error body is kept in error messages.
pub const ERROR_BODY_MAX_CHARS: usize = 512;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("could not build the HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

/// Make sure the process-wide rustls provider is `ring`. Safe to call many times.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder with cloudrun's TLS, timeouts and redirect settings.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .filter_map(|c| reqwest::Certificate::from_der(c).ok());
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(CONNECT_TIMEOUT_SECS))
        .timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS))
        .user_agent(concat!("cloudrun/", env!("CARGO_PKG_VERSION")))
}

/// A client with cloudrun's defaults.
pub fn client() -> Result<reqwest::Client, ClientError> {
    Ok(client_builder().build()?)
}

/// The start of a response body, for error messages: at most
/// [`ERROR_BODY_MAX_CHARS`] characters, with a marker when cut.
pub fn short_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(ERROR_BODY_MAX_CHARS).collect();
    if text.chars().count() > ERROR_BODY_MAX_CHARS {
        out.push_str("…(cut)");
    }
    out
}

/// The URL without its query string, for logs and errors: queries can carry upload ids,
/// which act as credentials for a resumable session.
pub fn redact_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_without_a_system_ca_store() {
        assert!(client().is_ok());
    }

    #[test]
    fn bodies_are_shortened_and_urls_redacted() {
        let long = "x".repeat(2000);
        let s = short_body(long.as_bytes());
        assert!(s.len() < 600 && s.ends_with("…(cut)"));
        assert_eq!(short_body(b"ok"), "ok");
        assert_eq!(
            redact_url("http://h/upload?upload_id=SECRET&x=1"),
            "http://h/upload?…"
        );
    }
}
