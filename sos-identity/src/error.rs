//! The one error type of `sos-identity`.

use crate::vector::Field;

/// Everything that can go wrong in `sos-identity`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from `sos-core` was rejected.
    #[error(transparent)]
    Core(#[from] sos_core::Error),

    /// A name or role broke the identity input rules (1 to 256 bytes, NFC, no control characters).
    #[error("invalid agent {field} {input:?}: {reason}")]
    InvalidIdentity {
        /// Which input was rejected.
        field: Field,
        /// The input, truncated and escaped for display.
        input: String,
        /// Which rule it broke.
        reason: &'static str,
    },

    /// The name is already registered with another role; identities are immutable.
    #[error(
        "agent {name:?} of tenant {tenant} is already registered with role {registered_role:?}, \
         not {requested_role:?}; identities are immutable, so register a new name instead"
    )]
    RoleConflict {
        /// The tenant.
        tenant: String,
        /// The contested name.
        name: String,
        /// The role the name holds.
        registered_role: String,
        /// The role that was refused.
        requested_role: String,
    },

    /// A registry chain failed verification; `seq` is the first entry that does not check out.
    #[error("registry chain of tenant {tenant} is broken at entry {seq}: {reason}")]
    Tampered {
        /// The tenant whose chain is broken.
        tenant: String,
        /// Sequence number (1-based) of the first bad entry.
        seq: u64,
        /// What did not match.
        reason: String,
    },

    /// The router already holds an agent with this name.
    #[error("agent {name:?} is already in the router; remove it first")]
    DuplicateAgent {
        /// The name.
        name: String,
    },

    /// The router holds no agent with this name.
    #[error("agent {name:?} is not in the router; add it first")]
    UnknownAgent {
        /// The name.
        name: String,
    },

    /// The router holds no agents, so a signal cannot be routed.
    #[error("the router holds no agents; add at least one before routing")]
    NoAgents,

    /// A configuration value is out of range.
    #[error("invalid router configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and the accepted range.
        reason: &'static str,
    },

    /// A stored row could not be decoded (for example a vector of the wrong length).
    #[error("corrupt registry row: {reason}; run the verifier to find the tampered entry")]
    CorruptRow {
        /// What was wrong.
        reason: String,
    },

    /// The storage backend failed.
    #[error("registry storage failed: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
