//! An append-only, SHA-256 hash-chained audit log.
//!
//! # Overview
//!
//! A state change and its audit record commit in the same transaction or not at all ("audit before
//! write"). Concurrent appenders never fork the chain, and an independent verifier finds any
//! modified, deleted, reordered or truncated entry.
//!
//! This crate is being built in stages; the items below are what exists so far.

mod error;

pub use error::{Error, Result};
