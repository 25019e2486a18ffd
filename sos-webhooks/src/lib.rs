//! An idempotent webhook guard and provider signature verification.
//!
//! # Overview
//!
//! Providers deliver the same webhook more than once, sometimes concurrently. The guard makes
//! the handler's effects happen exactly once, and answers duplicates by the status of the first
//! attempt: processed, in flight, or failed.
//!
//! This crate is being built in stages; the items below are what exists so far.

mod error;

pub use error::{Error, Result};
