//! Deterministic 16-dimensional identity vectors for agents, their traits, portraits, a
//! hash-chained registry and resonance routing.
//!
//! # Overview
//!
//! - [`IdentityVector`]: SHA-256 of a version tag and the length-prefixed name and role
//!   ([`AgentName`], [`AgentRole`], validated but never trimmed or case-folded). The same
//!   (name, role) gives the same 32 bytes on every machine, forever. Specified with test vectors
//!   in `docs/identity.md`.
//! - [`Traits`]: a stable table from dimensions to aesthetic and behavioural parameters.
//! - [`Portrait`]: a deterministic SVG (≤ 4 KB, byte-identical everywhere) drawn from the traits
//!   and a ChaCha20 stream seeded from the vector. A recognition aid, not authentication.
//! - The registry ([`IdentityRegistry`]: [`MemoryRegistry`], `SqliteRegistry`,
//!   `PostgresRegistry`): a per-tenant hash chain of registrations; a name keeps its first role
//!   forever, and [`verify_chain`] names the first tampered entry. With the `audit` feature,
//!   `checkpoint` adds an RFC 9162 Merkle root (computed by `sos_audit::merkle`),
//!   `inclusion_proof` / `verify_inclusion` prove one agent is in it, and `consistency_proof` /
//!   `verify_consistency` prove a later checkpoint extends an earlier one.
//! - [`ResonanceRouter`]: signals go to the agents they resemble (cosine similarity), with bounded
//!   load, stickiness by subject, deterministic ties and an exact integer mode.
//!
//! # Usage
//!
//! ```toml
//! [dependencies]
//! sos-identity = "0.1"
//! ```
//!
//! # Examples
//!
//! ```
//! use sos_identity::{IdentityVector, Traits};
//!
//! let vector = IdentityVector::derive("alice", "researcher")?;
//! assert_eq!(vector.as_bytes().len(), 32);
//! let traits = Traits::of(&vector);
//! assert!(traits.behaviour.formality < 1.0);
//! // Whitespace is significant: no silent merging of "alice" and "alice ".
//! assert_ne!(vector, IdentityVector::derive("alice ", "researcher")?);
//! # Ok::<(), sos_identity::Error>(())
//! ```
//!
//! Registering and verifying:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use sos_identity::{AgentName, AgentRole, IdentityRegistry, MemoryRegistry, verify_chain};
//!
//! let registry = MemoryRegistry::default();
//! let tenant = "acme".parse()?;
//! let alice = AgentName::new("alice")?;
//! registry.register(&tenant, &alice, &AgentRole::new("researcher")?).await?;
//! // Identity is immutable: the same name with another role is refused.
//! assert!(registry.register(&tenant, &alice, &AgentRole::new("admin")?).await.is_err());
//! let summary = verify_chain(&tenant, &registry.entries(&tenant).await?)?;
//! assert_eq!(summary.len, 1);
//! # Ok::<(), sos_identity::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Performance
//!
//! Deriving a vector costs one SHA-256 of about 40 bytes. Routing one signal scans 36 bytes
//! per agent (16-bit `r` halves and an `f32` inverse norm) in both modes; see `BENCHMARKS.md`
//! for figures beside the memory-bandwidth bound.
//!
//! # Untrusted input
//!
//! Names and roles are parsed by [`AgentName::new`] and [`AgentRole::new`], which return
//! [`Error::InvalidIdentity`] and never panic. A portrait is a recognition aid, not
//! authentication: verify an agent against the registry.
//!
//! # Crate features
//!
//! - `sqlite`: the SQLite registry store.
//! - `postgres`: the PostgreSQL registry store. Enables `sos-core`'s `postgres`
//!   feature: transactions on the host's pool open through `sos_core::postgres::PgTxConnection`
//!   (cancel-safe `BEGIN`, see `docs/webhooks.md`, "Sharing the host's pool").
//! - `audit`: RFC 9162 Merkle checkpoints, inclusion and consistency proofs of the registry,
//!   reusing `sos-audit`'s Merkle module. Without it `sos-identity` depends on `sos-core` only.
//!
//! The in-memory store is always available.

mod error;
#[cfg(feature = "audit")]
mod merkle;
mod portrait;
mod registry;
mod route;
mod traits;
mod vector;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
#[cfg(feature = "audit")]
pub use merkle::{
    Checkpoint, ConsistencyProof, InclusionProof, checkpoint, consistency_proof, inclusion_proof,
    verify_consistency, verify_inclusion,
};
pub use portrait::{DRAWS_PER_FEATURE, PORTRAIT_SEED_TAG, PORTRAIT_VERSION, Portrait};
pub use registry::{
    ChainSummary, ENTRY_HASH_TAG, IdentityRegistry, MemoryRegistry, Registration, RegistryEntry,
    verify_agent, verify_chain,
};
#[cfg(feature = "postgres")]
pub use registry::{PostgresRegistry, postgres_migrator};
#[cfg(feature = "sqlite")]
pub use registry::{SqliteRegistry, sqlite_migrator};
pub use route::{
    AppliedRule, Candidate, ExplainedCandidate, Explanation, KindEvidenceProfile, LoadPolicy,
    MAX_SIGNAL_COMPONENT, PARALLEL_MIN_AGENTS, ResonanceRouter, Routed, RouterConfig, ScoreMode,
    SignalProfile, SignalVector,
};
pub use traits::{Aesthetics, Behaviour, CommunicationStyle, Geometry, Texture, Traits};
pub use vector::{AgentName, AgentRole, DIMENSIONS, Field, IdentityVector, MAX_FIELD_LEN, VERSION_TAG};
