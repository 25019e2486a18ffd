//! The one error type of `sos-identity`.

/// Everything that can go wrong in `sos-identity`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from `sos-core` was rejected.
    #[error(transparent)]
    Core(#[from] sos_core::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
