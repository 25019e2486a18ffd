//! Signals: what an agent observed, for a person to act on.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, truncate_for_error};
use crate::hash::{DomainHasher, Sha256Digest};
use crate::tenant::TenantId;

/// The identifier of a signal, a UUID.
///
/// [`SignalBuilder`] derives it from (tenant, kind, cause) unless told otherwise, so the same
/// observation of the same cause always gets the same id, on every machine: rules stay pure and
/// a replayed cause is recognisable (named shape `replay-same`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SignalId(uuid::Uuid);

impl SignalId {
    /// Wraps a UUID.
    pub const fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }

    /// The id derived from a signal's tenant, kind and cause (a UUIDv8 built from
    /// `DomainHasher("sos-core/signal-id/v1")` over those three fields).
    pub fn derive(tenant: &TenantId, kind: &SignalKind, cause: &Sha256Digest) -> Self {
        let mut hasher = DomainHasher::new("sos-core/signal-id/v1");
        // Tenant ids and kinds are at most 64 bytes and a digest is 32, far below the u32 limit.
        let _ = hasher.str_field(tenant.as_str());
        let _ = hasher.str_field(kind.as_str());
        let _ = hasher.field(cause.as_bytes());
        let digest = hasher.finish();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_bytes()[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

impl fmt::Display for SignalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SignalId {
    type Err = uuid::Error;

    fn from_str(input: &str) -> std::result::Result<Self, Self::Err> {
        uuid::Uuid::parse_str(input).map(Self)
    }
}

/// What kind of observation a signal is: a slug such as `stale-deal` or `lead-spike`.
///
/// 1 to 64 characters of `a-z` and `0-9`, words joined by single hyphens, no leading or trailing
/// hyphen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct SignalKind(String);

impl SignalKind {
    /// The longest accepted kind, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Parses and validates a kind slug.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSignalKind`] when the input is not a slug.
    pub fn new(input: impl Into<String>) -> Result<Self> {
        let input = input.into();
        match validate_slug(&input) {
            Ok(()) => Ok(Self(input)),
            Err(reason) => Err(Error::InvalidSignalKind { input: truncate_for_error(&input), reason }),
        }
    }

    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_slug(input: &str) -> std::result::Result<(), &'static str> {
    if input.is_empty() {
        return Err("it is empty");
    }
    if input.len() > SignalKind::MAX_LEN {
        return Err("it is longer than 64 characters");
    }
    if !input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("it contains a character outside a-z, 0-9 and '-'");
    }
    if input.starts_with('-') || input.ends_with('-') || input.contains("--") {
        return Err("hyphens must sit between words");
    }
    Ok(())
}

impl FromStr for SignalKind {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        Self::new(input)
    }
}

impl<'de> Deserialize<'de> for SignalKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Self::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How much a signal deserves a person's attention, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Severity {
    /// Worth knowing; no action expected.
    #[default]
    Info,
    /// Worth a look today.
    Notice,
    /// Something is slipping; act soon.
    Warning,
    /// Act now.
    Critical,
}

impl Severity {
    /// The lowercase name used in JSON and in storage.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Notice => "notice",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        match input {
            "info" => Ok(Self::Info),
            "notice" => Ok(Self::Notice),
            "warning" => Ok(Self::Warning),
            "critical" => Ok(Self::Critical),
            _ => Err(Error::InvalidSeverity { input: truncate_for_error(input) }),
        }
    }
}

/// What an agent observed, for a person to act on. Never an action.
///
/// A signal's `subject` and `text` are plain text. Nothing in SOS ever interprets them as a
/// template (named shape `format-injection`): a subject of `"{deal}"` or `"%s"` is shown exactly
/// as given.
///
/// ```
/// use sos_core::{Severity, Sha256Digest, Signal, TenantId};
///
/// let signal = Signal::builder("acme".parse()?, "stale-deal".parse()?)
///     .subject("Deal with {Acme}")
///     .text("9 days since the last action.")
///     .severity(Severity::Notice)
///     .cause(Sha256Digest::of(b"deal-42@2026-01-09"))
///     .evidence(serde_json::json!({ "idle_days": 9 }))
///     .build()?;
/// assert_eq!(signal.subject(), "Deal with {Acme}");
/// let round_trip: Signal = serde_json::from_str(&serde_json::to_string(&signal).unwrap()).unwrap();
/// assert_eq!(round_trip, signal);
/// # Ok::<(), sos_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SignalFields", into = "SignalFields")]
pub struct Signal {
    fields: SignalFields,
}

/// The wire form of a [`Signal`]; validated on the way in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalFields {
    id: SignalId,
    tenant: TenantId,
    kind: SignalKind,
    subject: String,
    text: String,
    #[serde(default)]
    severity: Severity,
    observed_at: DateTime<Utc>,
    cause: Sha256Digest,
    #[serde(default)]
    evidence: serde_json::Value,
}

impl TryFrom<SignalFields> for Signal {
    type Error = Error;

    fn try_from(fields: SignalFields) -> Result<Self> {
        validate_text("subject", &fields.subject, Signal::MAX_SUBJECT_LEN)?;
        validate_text("text", &fields.text, Signal::MAX_TEXT_LEN)?;
        Ok(Self { fields })
    }
}

impl From<Signal> for SignalFields {
    fn from(signal: Signal) -> Self {
        signal.fields
    }
}

fn validate_text(field: &'static str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(Error::InvalidSignal { field, reason: "it is empty; say what was observed" });
    }
    if value.len() > max {
        return Err(Error::InvalidSignal { field, reason: "it is too long; keep details in the evidence" });
    }
    Ok(())
}

impl Signal {
    /// The longest accepted subject, in bytes.
    pub const MAX_SUBJECT_LEN: usize = 512;
    /// The longest accepted text, in bytes.
    pub const MAX_TEXT_LEN: usize = 4096;

    /// Starts a signal of `kind` for `tenant`.
    pub fn builder(tenant: TenantId, kind: SignalKind) -> SignalBuilder {
        SignalBuilder {
            tenant,
            kind,
            id: None,
            subject: String::new(),
            text: String::new(),
            severity: Severity::default(),
            observed_at: None,
            cause: None,
            evidence: serde_json::Value::Null,
        }
    }

    /// The signal's id.
    pub fn id(&self) -> SignalId {
        self.fields.id
    }

    /// The tenant the observation belongs to.
    pub fn tenant(&self) -> &TenantId {
        &self.fields.tenant
    }

    /// What kind of observation this is.
    pub fn kind(&self) -> &SignalKind {
        &self.fields.kind
    }

    /// What the observation is about ("Deal with Acme"), plain text.
    pub fn subject(&self) -> &str {
        &self.fields.subject
    }

    /// The human sentence a person reads, plain text.
    pub fn text(&self) -> &str {
        &self.fields.text
    }

    /// How urgent it is.
    pub fn severity(&self) -> Severity {
        self.fields.severity
    }

    /// When the agent observed it.
    pub fn observed_at(&self) -> DateTime<Utc> {
        self.fields.observed_at
    }

    /// The digest of what caused it, used for dedupe and replay protection.
    pub fn cause(&self) -> &Sha256Digest {
        &self.fields.cause
    }

    /// Structured evidence: the values the rule looked at.
    pub fn evidence(&self) -> &serde_json::Value {
        &self.fields.evidence
    }

    /// The evidence, to add to it after the signal was built (for instance a line explaining
    /// it, rendered only when the signal is about to be sent). The evidence is not part of the
    /// signal's id or cause, and nothing else of the signal can change.
    pub fn evidence_mut(&mut self) -> &mut serde_json::Value {
        &mut self.fields.evidence
    }
}

/// Builds a [`Signal`]; see [`Signal::builder`].
#[derive(Debug, Clone)]
pub struct SignalBuilder {
    tenant: TenantId,
    kind: SignalKind,
    id: Option<SignalId>,
    subject: String,
    text: String,
    severity: Severity,
    observed_at: Option<DateTime<Utc>>,
    cause: Option<Sha256Digest>,
    evidence: serde_json::Value,
}

impl SignalBuilder {
    /// Sets an explicit id instead of the one derived from tenant, kind and cause.
    pub fn id(mut self, id: SignalId) -> Self {
        self.id = Some(id);
        self
    }

    /// What the observation is about (required, plain text).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// The human sentence (required, plain text).
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    /// How urgent it is (default [`Severity::Info`]).
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// When it was observed (default: the Unix epoch, so that forgetting it is visible; rules
    /// pass their clock's time).
    pub fn observed_at(mut self, observed_at: DateTime<Utc>) -> Self {
        self.observed_at = Some(observed_at);
        self
    }

    /// The digest of the cause (default: a digest of tenant, kind and subject).
    pub fn cause(mut self, cause: Sha256Digest) -> Self {
        self.cause = Some(cause);
        self
    }

    /// Structured evidence (default `null`).
    pub fn evidence(mut self, evidence: serde_json::Value) -> Self {
        self.evidence = evidence;
        self
    }

    /// Validates and builds the signal.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSignal`] when the subject or text is empty or too long.
    pub fn build(self) -> Result<Signal> {
        let cause = match self.cause {
            Some(cause) => cause,
            None => {
                let mut hasher = DomainHasher::new("sos-core/signal-cause/v1");
                hasher
                    .str_field(self.tenant.as_str())?
                    .str_field(self.kind.as_str())?
                    .str_field(&self.subject)?;
                hasher.finish()
            }
        };
        let id = self.id.unwrap_or_else(|| SignalId::derive(&self.tenant, &self.kind, &cause));
        Signal::try_from(SignalFields {
            id,
            tenant: self.tenant,
            kind: self.kind,
            subject: self.subject,
            text: self.text,
            severity: self.severity,
            observed_at: self.observed_at.unwrap_or(DateTime::UNIX_EPOCH),
            cause,
            evidence: self.evidence,
        })
    }
}
