//! The one error type of `sos-ruliads`.

use std::path::PathBuf;

/// Everything that can go wrong in `sos-ruliads`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from `sos-core` was rejected.
    #[error(transparent)]
    Core(#[from] sos_core::Error),
    /// A ruliad name is not in the catalog.
    #[error("unknown ruliad {name:?}; use one of the known names: {}", known.join(", "))]
    UnknownRuliad {
        /// The rejected name.
        name: String,
        /// The names the catalog knows.
        known: Vec<String>,
    },
    /// A ruliad parameter was rejected at construction.
    #[error(
        "invalid parameter {field:?} of ruliad {ruliad:?}: {reason}; fix the value or remove it to use the default"
    )]
    InvalidParameter {
        /// The ruliad.
        ruliad: String,
        /// The parameter.
        field: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A pack file was rejected at load.
    #[error("invalid pack {}: field {field:?}: {reason}", file.display())]
    Pack {
        /// The file.
        file: PathBuf,
        /// The field (a JSON path such as `ruliads_enabled[2]`).
        field: String,
        /// What was wrong and what to do, including the known names where relevant.
        reason: String,
    },
    /// A fixture file was malformed or could not be read.
    #[error("invalid fixture {}: {reason}", file.display())]
    Fixture {
        /// The file.
        file: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A trust-gate configuration was rejected.
    #[error("invalid trust configuration: {0}")]
    TrustConfig(&'static str),
    /// A storage backend failed.
    #[error("storage failed: {0}; check the database connection and retry")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
