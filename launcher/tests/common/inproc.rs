//! Running the real dispatcher (`cloudrun_launch::run`) in the test process with an
//! injected environment (never the process's own) and, optionally, a fixed token source.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use cloudrun::compute_rest::StaticToken;
use cloudrun_launch::cli::Cli;
use cloudrun_launch::{run, Context, Error};

/// The bearer token [`Invoker::with_token`] hands out.
pub const TEST_TOKEN: &str = "test-token";

/// One environment and working directory for in-process invocations.
pub struct Invoker {
    pub env: BTreeMap<String, String>,
    pub cwd: std::path::PathBuf,
    pub tokens: Option<Arc<dyn gcp_auth::TokenProvider>>,
}

impl Invoker {
    /// `GCS_DIR=store` and `HOME` pointing nowhere; no credentials.
    pub fn new(store: &str, cwd: &Path) -> Self {
        let mut env = BTreeMap::new();
        env.insert("GCS_DIR".to_string(), store.to_string());
        env.insert("HOME".to_string(), "/nonexistent-home".to_string());
        Invoker {
            env,
            cwd: cwd.to_path_buf(),
            tokens: None,
        }
    }

    pub fn set(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.insert(k.to_string(), v.into());
        self
    }

    /// Use [`TEST_TOKEN`] instead of resolving credentials.
    pub fn with_token(mut self) -> Self {
        self.tokens = Some(Arc::new(StaticToken::new(TEST_TOKEN).unwrap()));
        self
    }

    /// `cloudrun-launch ARGS`: the exit code and stdout, or the error.
    pub async fn try_cmd(&self, args: &[&str]) -> Result<(i32, String), Error> {
        let vars = self.env.clone();
        let env = move |k: &str| vars.get(k).cloned();
        let ctx = Context {
            env: &env,
            cwd: self.cwd.clone(),
            default_agent: None,
            tokens: self.tokens.clone(),
            progress: false,
            terminal: false,
        };
        let mut argv = vec!["cloudrun-launch"];
        argv.extend_from_slice(args);
        let mut out = Vec::new();
        let code = run(Cli::try_parse_from(argv).unwrap(), &ctx, &mut out).await?;
        Ok((code, String::from_utf8(out).unwrap()))
    }

    /// [`Invoker::try_cmd`] that must succeed.
    pub async fn cmd(&self, args: &[&str]) -> (i32, String) {
        match self.try_cmd(args).await {
            Ok(r) => r,
            Err(e) => panic!("cloudrun-launch {args:?} failed: {e}"),
        }
    }
}
