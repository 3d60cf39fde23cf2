//! `cloudrun`: the contract shared by `cloudrun-launch` (the laptop side) and
//! `cloudrun-agent` (the VM side).
//!
//! It owns the run spec and status types, the object layout under `GCS_DIR`, the storage
//! backends and the sync engine, the Compute REST client, the retry policy, the GPU table,
//! prices and billing arithmetic. It holds nothing specific to either binary.

pub mod billing;
pub mod compute;
pub mod compute_rest;
pub mod contract;
pub mod google_rest;
pub mod gpu_names;
pub mod gpu_table;
pub mod http;
pub mod joblog;
pub mod layout;
pub mod manifest;
pub mod prices;
pub mod procfs;
pub mod retry;
pub mod run_id;
pub mod run_store;
pub mod spec;
pub mod status;
pub mod storage;
pub mod store_url;
pub mod sync;

pub use layout::Layout;
pub use run_id::RunId;
pub use spec::RunSpec;
pub use status::RunStatus;
pub use storage::{ObjectMeta, PutOptions, Storage, StorageError};
pub use store_url::StoreUrl;
