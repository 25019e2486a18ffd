//! Start-up configuration, from flags and environment.

use std::net::SocketAddr;
use std::path::PathBuf;

/// How the reference server is configured. Every flag also reads an environment variable.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sos-server", version, about = "The SOS reference server")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "SOS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// PostgreSQL URL; when set, the server uses PostgreSQL instead of the embedded SQLite file.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// The embedded SQLite database file, created on first run (ignored when DATABASE_URL is set).
    #[arg(long, env = "SOS_SQLITE_PATH", default_value = "sos-data/sos.sqlite")]
    pub sqlite_path: PathBuf,
}
