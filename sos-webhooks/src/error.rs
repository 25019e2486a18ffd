//! The one error type of `sos-webhooks`.

/// Everything that can go wrong in `sos-webhooks`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from `sos-core` was rejected.
    #[error(transparent)]
    Core(#[from] sos_core::Error),

    /// A header the provider always sends is absent.
    #[error(
        "the {header} header is missing; the request was not signed by the provider or a proxy dropped it"
    )]
    MissingHeader {
        /// The header's name, lowercase.
        header: &'static str,
    },

    /// A header is present but does not follow the provider's format.
    #[error("the {header} header is malformed: {reason}")]
    MalformedHeader {
        /// The header's name, lowercase.
        header: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },

    /// The signed timestamp is further from now than the tolerance, in either direction.
    #[error(
        "the signed timestamp {timestamp} is more than {tolerance_secs} s away from now ({now}); \
         refuse it as a replay, or check the server's clock"
    )]
    TimestampOutsideTolerance {
        /// The signed timestamp, in Unix seconds.
        timestamp: i64,
        /// The verifier's current time, in Unix seconds.
        now: i64,
        /// The configured tolerance, in seconds.
        tolerance_secs: u64,
    },

    /// No signature in the header matches the body under any configured secret.
    #[error("no signature in the {header} header matches the body under any configured secret")]
    NoMatchingSignature {
        /// The header that carried the signatures, lowercase.
        header: &'static str,
    },

    /// A signing secret could not be used.
    #[error("the signing secret is invalid: {reason}")]
    InvalidSecret {
        /// What was wrong with it.
        reason: &'static str,
    },

    /// The request body grew past the configured limit while it was being read.
    #[error("the request body is larger than the limit of {limit} bytes; refuse it or raise the limit")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },

    /// Reading the request body failed.
    #[error("reading the request body failed")]
    BodyRead(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A provider name or event id is not acceptable as part of a dedupe key.
    #[error("invalid {field}: {reason}")]
    InvalidKey {
        /// Which part of the key (`provider` or `event id`).
        field: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },

    /// A two-phase claim was taken over by another worker after its lease expired, so this
    /// worker's completion or failure was not recorded.
    #[error(
        "the claim on this event was taken over after its lease expired; \
         raise the lease above the handler's longest run"
    )]
    LeaseLost,

    /// The handler's transaction could not commit its claim: a statement inside it failed (so
    /// PostgreSQL aborted it) or the handler removed the claim. Nothing was committed.
    #[error(
        "the handler's transaction was aborted by a failed statement, or the claim was removed; \
         nothing was committed, so return the statement's error from the handler instead of ignoring it"
    )]
    TransactionAborted,

    /// A transactional delivery met an unfinished two-phase record of the same event
    /// (`processing` or `failed`). Transactional mode cannot take over a two-phase lease or
    /// re-claim a two-phase failure, and answering from that record would skip the event, so
    /// the delivery is refused; nothing was written. Deliver each event through one mode.
    #[error(
        "the event has an unfinished two-phase record (processing or failed); transactional mode \
         refuses it so that it is not skipped: deliver this event through two_phase"
    )]
    ModeMismatch,

    /// A configuration value is out of range.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What was wrong.
        reason: &'static str,
    },

    /// The storage backend failed.
    #[error("the webhook store failed; the delivery was not decided, answer it as retryable")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(Box::new(error))
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl From<sqlx::migrate::MigrateError> for Error {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        Self::Storage(Box::new(error))
    }
}
