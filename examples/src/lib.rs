//! The SOS reference server: the crates composed into one axum service.
//!
//! Run it with `cargo run -p sos-server`; it starts on an embedded SQLite file
//! (`sos-data/sos.sqlite`, created on first run) and moves to PostgreSQL when `DATABASE_URL`
//! is set. See the README for the endpoints.

mod api;
mod config;
mod db;

pub use api::{ApiError, AppState, router};
pub use config::Config;
pub use db::{Database, Inserted, migrators};

/// Opens the database named by `config`, applies migrations and serves until `shutdown`
/// resolves, finishing in-flight requests first.
///
/// # Errors
///
/// When the database cannot be opened or migrated, or the address cannot be bound.
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let database = Database::open(&config).await?;
    let state = AppState::new(database, std::sync::Arc::new(sos_core::SystemClock));
    let app = router(state);
    tracing::info!(address = %listener.local_addr()?, "sos-server listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
