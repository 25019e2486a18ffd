//! The one error type of `sos-core`.

/// Everything that can go wrong when building `sos-core` values from outside input.
///
/// Each variant says what was wrong and what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tenant id did not match the documented format.
    #[error(
        "invalid tenant id {input:?}: {reason}; use 1 to 64 characters from a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    InvalidTenant {
        /// The rejected input (truncated to 80 characters).
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A signal kind was not a valid slug.
    #[error(
        "invalid signal kind {input:?}: {reason}; use 1 to 64 characters from a-z, 0-9 and single '-' between words, such as \"stale-deal\""
    )]
    InvalidSignalKind {
        /// The rejected input (truncated to 80 characters).
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A digest was not 64 hexadecimal characters.
    #[error("invalid SHA-256 digest {input:?}: expected 64 hexadecimal characters (32 bytes)")]
    InvalidDigest {
        /// The rejected input (truncated to 80 characters).
        input: String,
    },
    /// A severity name was not one of the known levels.
    #[error("invalid severity {input:?}: expected one of \"info\", \"notice\", \"warning\", \"critical\"")]
    InvalidSeverity {
        /// The rejected input (truncated to 80 characters).
        input: String,
    },
    /// A field given to [`DomainHasher`](crate::DomainHasher) is longer than its u32 length prefix can say.
    #[error(
        "hash field of {len} bytes exceeds the 4 GiB limit of its u32 length prefix; hash a digest of the data instead"
    )]
    FieldTooLong {
        /// The length of the rejected field in bytes.
        len: usize,
    },
    /// A signal's subject or text was empty or too long.
    #[error("invalid signal {field}: {reason}")]
    InvalidSignal {
        /// Which field was rejected (`subject` or `text`).
        field: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Keeps error messages readable when the rejected input is huge.
pub(crate) fn truncate_for_error(input: &str) -> String {
    const LIMIT: usize = 80;
    if input.chars().count() <= LIMIT {
        input.to_owned()
    } else {
        let mut shortened: String = input.chars().take(LIMIT).collect();
        shortened.push('…');
        shortened
    }
}
