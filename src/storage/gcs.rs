//! Cloud Storage through the JSON API (placeholder; being written).

use std::sync::Arc;

/// Where the JSON API lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub base: String,
    pub anonymous: bool,
}

impl Endpoint {
    pub fn from_env() -> Self {
        Endpoint {
            base: "https://storage.googleapis.com".into(),
            anonymous: false,
        }
    }
}

#[derive(Debug)]
pub struct GcsStorage;

impl GcsStorage {
    pub fn new(
        _bucket: &str,
        _e: Endpoint,
        _t: Option<Arc<dyn gcp_auth::TokenProvider>>,
    ) -> Result<Self, super::StorageError> {
        Err(super::StorageError::Other("not yet".into()))
    }
}

#[async_trait::async_trait]
impl super::Storage for GcsStorage {
    fn describe(&self) -> String {
        String::new()
    }
    async fn put_bytes(
        &self,
        _: &str,
        _: bytes::Bytes,
        _: &super::PutOptions,
    ) -> Result<super::ObjectMeta, super::StorageError> {
        Err(super::StorageError::Other("not yet".into()))
    }
    async fn put_file(
        &self,
        _: &str,
        _: &std::path::Path,
        _: &super::PutOptions,
    ) -> Result<super::ObjectMeta, super::StorageError> {
        Err(super::StorageError::Other("not yet".into()))
    }
    async fn get_stream(
        &self,
        _: &str,
        _: Option<(u64, Option<u64>)>,
    ) -> Result<super::ByteStream, super::StorageError> {
        Err(super::StorageError::Other("not yet".into()))
    }
    async fn head(&self, _: &str) -> Result<Option<super::ObjectMeta>, super::StorageError> {
        Err(super::StorageError::Other("not yet".into()))
    }
    async fn list(&self, _: &str) -> Result<Vec<super::ObjectMeta>, super::StorageError> {
        Err(super::StorageError::Other("not yet".into()))
    }
    async fn delete(&self, _: &str) -> Result<bool, super::StorageError> {
        Err(super::StorageError::Other("not yet".into()))
    }
}
