//! Cross-crate integration tests over real HTTP and real databases.
//!
//! The `adversarial_*` modules hold the findings of adversarial review: each test is an attack
//! that once worked or was tried, kept so that it keeps failing.

mod adversarial_audit;
mod adversarial_cancel;
mod adversarial_identity;
mod adversarial_server;
mod adversarial_tlog;
mod adversarial_webhooks;
mod schemathesis;
mod server;
mod server_e2e;
mod server_process;
mod server_shapes;
