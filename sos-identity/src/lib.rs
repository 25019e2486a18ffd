//! Deterministic 16-dimensional identity vectors for agents.
//!
//! # Overview
//!
//! An agent's vector comes from SHA-256 of its name and role: the same (name, role) gives the
//! same vector and the same portrait on every machine, forever.
//!
//! This crate is being built in stages; the items below are what exists so far.

mod error;

pub use error::{Error, Result};
