//! Helpers shared by the launcher's integration tests (each test file compiles this
//! module, so items one file does not use are expected).

#![allow(dead_code)]

pub mod auth;
pub mod bin;
pub mod compute;
pub mod inproc;
pub mod runs;
