//! Ruliads: tiny independent rules that look at state and emit signals for people.
//!
//! # Overview
//!
//! A ruliad never acts: it notices ("this deal has been idle for 9 days") and emits a
//! [`sos_core::Signal`] for a person to act on.
//!
//! This crate is being built in stages; the items below are what exists so far.

mod error;

pub use error::{Error, Result};
