//! pgrouter: a replica-aware PostgreSQL connection router.
//!
//! The library exposes [`run`], which serves clients on an injected listener until the
//! shutdown future resolves. The binary, the demo and the integration tests all go
//! through it, so there is no global state: every handle is owned and passed down.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod consistency;
pub mod frontend;
pub mod monitor;
pub mod notify;
pub mod pool;
pub mod protocol;
pub mod router;
mod server;

pub use server::{ReloadError, Router, RouterHandle, RunError, run};
