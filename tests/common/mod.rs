//! Test code shared by the library's integration tests.

pub mod storage_suite;
