//! Integration tests of `sos-webhooks`, through the public API only, on real databases.
//!
//! Some tests re-run this binary as child processes (`SOS_CHILD_ROLE` names the child's job),
//! so that several OS processes share one database.

mod conformance;
mod crash;
#[cfg(feature = "axum")]
mod extract;
mod http_mapping;
mod memory;
mod no_alloc;
#[cfg(feature = "postgres")]
mod postgres;
mod replay_same;
#[cfg(feature = "sqlite")]
mod sqlite;
mod support;
mod toctou_dedupe;
mod unique_null;
