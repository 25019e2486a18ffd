//! Cross-crate integration tests over real HTTP and real databases.

mod server;
