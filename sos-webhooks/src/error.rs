//! The one error type of `sos-webhooks`.

/// Everything that can go wrong in `sos-webhooks`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from `sos-core` was rejected.
    #[error(transparent)]
    Core(#[from] sos_core::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
