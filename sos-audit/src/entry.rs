//! The audit entry, its hash, and the chain head.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sos_core::{DomainEncoder, Sha256Digest, TenantId};

use crate::canonical::canonical_json;
use crate::error::{Error, Result};

/// The domain tag of an entry hash (see `docs/audit-format.md`).
pub const ENTRY_DOMAIN: &str = "sos-audit/entry/v1";

/// Room for the preimage's fixed part, length prefixes and a typical actor and action, so that
/// one allocation usually holds it.
const PREIMAGE_OVERHEAD: usize = 256;

/// The longest accepted `actor` or `action`, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// The longest accepted `subject`, in bytes.
pub const MAX_SUBJECT_LEN: usize = 1024;
/// The longest accepted canonical payload, in bytes.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;

/// An entry to be appended: everything except its place in the chain.
///
/// The store assigns the sequence number, the time (from its [`Clock`](sos_core::Clock)) and
/// the previous hash when it appends.
///
/// ```
/// use sos_audit::NewEntry;
///
/// let entry = NewEntry::new(
///     "acme".parse()?,
///     "agent:closer",
///     "deal.update",
///     "deal/42",
///     &serde_json::json!({"stage": "won"}),
/// )?;
/// assert_eq!(entry.payload(), r#"{"stage":"won"}"#);
/// # Ok::<(), sos_audit::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    tenant: TenantId,
    actor: String,
    action: String,
    subject: String,
    payload: String,
}

impl NewEntry {
    /// Validates the fields and puts the payload in canonical JSON form.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEntry`] when `actor` or `action` is empty or longer than
    /// [`MAX_NAME_LEN`], `subject` is longer than [`MAX_SUBJECT_LEN`], or a field contains a NUL
    /// character; [`Error::InvalidPayload`] when the payload has no canonical form (see
    /// [`canonical_json`](crate::canonical_json)) or is longer than [`MAX_PAYLOAD_LEN`].
    pub fn new(
        tenant: TenantId,
        actor: impl Into<String>,
        action: impl Into<String>,
        subject: impl Into<String>,
        payload: &Value,
    ) -> Result<Self> {
        let actor = checked_text("actor", actor.into(), 1, MAX_NAME_LEN)?;
        let action = checked_text("action", action.into(), 1, MAX_NAME_LEN)?;
        let subject = checked_text("subject", subject.into(), 0, MAX_SUBJECT_LEN)?;
        let payload = canonical_json(payload)?;
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(Error::InvalidPayload {
                reason: format!(
                    "its canonical form is {} bytes, more than the {MAX_PAYLOAD_LEN} allowed",
                    payload.len()
                ),
            });
        }
        Ok(Self { tenant, actor, action, subject, payload })
    }

    /// The tenant whose chain this entry joins.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Who acted.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// What was done.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// What it was done to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The payload in canonical JSON form.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    /// Places the entry in a chain: the store calls this while it holds the chain's head.
    pub fn into_entry(self, seq: u64, time: DateTime<Utc>, prev_hash: Sha256Digest) -> Result<AuditEntry> {
        let mut scratch = Vec::with_capacity(PREIMAGE_OVERHEAD + self.payload.len() + self.subject.len());
        self.into_entry_with(seq, time, prev_hash, &mut scratch)
    }

    /// As [`NewEntry::into_entry`], reusing `scratch` for the hash preimage.
    pub(crate) fn into_entry_with(
        self,
        seq: u64,
        time: DateTime<Utc>,
        prev_hash: Sha256Digest,
        scratch: &mut Vec<u8>,
    ) -> Result<AuditEntry> {
        let mut entry = AuditEntry {
            tenant: self.tenant,
            seq,
            time_us: time.timestamp_micros(),
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            payload: self.payload,
            prev_hash,
            hash: Sha256Digest::ZERO,
        };
        entry.hash = entry.compute_hash_with(scratch)?;
        Ok(entry)
    }
}

fn checked_text(field: &'static str, text: String, min: usize, max: usize) -> Result<String> {
    if text.len() < min {
        return Err(Error::InvalidEntry { field, reason: "it is empty; name who or what acted" });
    }
    if text.len() > max {
        return Err(Error::InvalidEntry {
            field,
            reason: "it is too long (actor and action: 256 bytes, subject: 1024)",
        });
    }
    if text.contains('\0') {
        return Err(Error::InvalidEntry {
            field,
            reason: "it contains a NUL character, which PostgreSQL cannot store",
        });
    }
    Ok(text)
}

/// One entry of a tenant's chain, as stored or as read from a file.
///
/// The fields are public because an entry read back is evidence, not a trusted value: the
/// [`ChainVerifier`](crate::ChainVerifier) decides whether it is intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The tenant whose chain holds the entry.
    pub tenant: TenantId,
    /// Position in the tenant's chain, from 1, without gaps.
    pub seq: u64,
    /// When the entry was appended, in microseconds since 1970-01-01T00:00:00Z.
    pub time_us: i64,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub subject: String,
    /// The payload in canonical JSON form, hashed as these exact UTF-8 bytes.
    pub payload: String,
    /// The previous entry's hash ([`Sha256Digest::ZERO`] for seq 1).
    pub prev_hash: Sha256Digest,
    /// This entry's hash, as stored.
    pub hash: Sha256Digest,
}

impl AuditEntry {
    /// Recomputes the entry's hash from its fields (ignoring the stored `hash`).
    ///
    /// ```text
    /// hash = DomainHasher("sos-audit/entry/v1")
    ///     .str(tenant).u64(seq).i64(time_us).str(actor).str(action).str(subject)
    ///     .bytes(payload).bytes(prev_hash)
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Core`] when a field is longer than 4 GiB (only possible for entries read from
    /// outside).
    pub fn compute_hash(&self) -> Result<Sha256Digest> {
        let mut scratch = Vec::with_capacity(PREIMAGE_OVERHEAD + self.payload.len() + self.subject.len());
        self.compute_hash_with(&mut scratch)
    }

    /// Recomputes the entry's hash like [`AuditEntry::compute_hash`], writing the preimage into
    /// `scratch` (replacing its contents) and hashing it in one pass: the verifier's fast path,
    /// which reuses one buffer for every entry.
    ///
    /// # Errors
    ///
    /// As [`AuditEntry::compute_hash`].
    pub fn compute_hash_with(&self, scratch: &mut Vec<u8>) -> Result<Sha256Digest> {
        // The field order of `docs/audit-format.md`; the encoding is sos-core's.
        let mut encoder = DomainEncoder::new(ENTRY_DOMAIN, scratch);
        encoder.str_field(self.tenant.as_str())?;
        encoder.u64_field(self.seq).i64_field(self.time_us);
        encoder.str_field(&self.actor)?.str_field(&self.action)?.str_field(&self.subject)?;
        encoder.str_field(&self.payload)?.field(self.prev_hash.as_bytes())?;
        Ok(encoder.finish())
    }

    /// Moves an entry that was built on a stale head to another place in its chain: new `seq`,
    /// `prev_hash` and time, hash recomputed (a database store's retry after its head guess
    /// missed). The time is stamped again while the store holds the head, so that it is not
    /// older than the entry that moved the head meanwhile.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    pub(crate) fn replace_at(
        &mut self,
        seq: u64,
        time: DateTime<Utc>,
        prev_hash: Sha256Digest,
    ) -> Result<()> {
        self.seq = seq;
        self.time_us = time.timestamp_micros();
        self.prev_hash = prev_hash;
        self.hash = self.compute_hash()?;
        Ok(())
    }

    /// The entry's time as a UTC timestamp, if it is within chrono's range.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(self.time_us)
    }

    /// The head of the chain if this entry is its last.
    pub fn as_head(&self) -> ChainHead {
        ChainHead { seq: self.seq, hash: self.hash }
    }
}

/// The last entry of a chain, by sequence number and hash: `SEQ:HASH` in text.
///
/// A head recorded outside the store (in a ticket, an email, another system) lets the verifier
/// detect a truncated tail.
///
/// ```
/// use sos_audit::ChainHead;
///
/// let head: ChainHead = "3:0000000000000000000000000000000000000000000000000000000000000000".parse()?;
/// assert_eq!(head.seq, 3);
/// assert_eq!(head.to_string().parse::<ChainHead>()?, head);
/// # Ok::<(), sos_audit::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHead {
    /// The last sequence number.
    pub seq: u64,
    /// The hash of that entry.
    pub hash: Sha256Digest,
}

impl fmt::Display for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

impl FromStr for ChainHead {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let invalid = || Error::InvalidHead { input: input.chars().take(200).collect() };
        let (seq, hash) = input.split_once(':').ok_or_else(invalid)?;
        if seq.is_empty() || !seq.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(invalid());
        }
        let seq = seq.parse::<u64>().map_err(|_| invalid())?;
        let hash = Sha256Digest::from_hex(hash).map_err(|_| invalid())?;
        Ok(Self { seq, hash })
    }
}
