//! The one error type of `sos-audit`.

use crate::ExpectRows;

/// Everything that can go wrong in `sos-audit`.
///
/// Tampering found by the verifier is not an error: it is a [`Finding`](crate::Finding) inside a
/// [`Verdict`](crate::Verdict). Errors are about input that cannot be read or stores that cannot
/// be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value from `sos-core` was rejected.
    #[error(transparent)]
    Core(#[from] sos_core::Error),
    /// A field of a new entry was rejected before anything was written.
    #[error("invalid audit entry {field}: {reason}")]
    InvalidEntry {
        /// Which field (`actor`, `action`, `subject`).
        field: &'static str,
        /// Why it was rejected and what is accepted.
        reason: &'static str,
    },
    /// A payload could not be put in canonical JSON form.
    #[error(
        "invalid audit payload: {reason}; use objects, arrays, strings, booleans, null and integers within ±(2^53 - 1)"
    )]
    InvalidPayload {
        /// What was wrong.
        reason: String,
    },
    /// The host's write inside an audited transaction changed an unexpected number of rows; the
    /// audit entry and the write were both rolled back.
    #[error(
        "audited write changed {actual} rows where {expected} were expected; the write and its audit entry were rolled back"
    )]
    UnexpectedRows {
        /// What the caller expected.
        expected: ExpectRows,
        /// What the write reported.
        actual: u64,
    },
    /// The host's write inside an audited transaction failed; the audit entry and the write were
    /// both rolled back.
    #[error("audited write failed, so the write and its audit entry were rolled back")]
    HostWrite(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backing store failed (connection, SQL or constraint error).
    #[error(
        "audit store failed; check that the database is reachable and the sos-audit migrations are applied"
    )]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A stored row cannot even be read as an audit entry (wrong hash length, negative sequence
    /// number, invalid tenant id). The verifier reports this as tampering.
    #[error("stored audit row of tenant {tenant:?} at seq {seq} is corrupt: {reason}")]
    CorruptEntry {
        /// The tenant column as stored.
        tenant: String,
        /// The sequence number as stored.
        seq: i64,
        /// What is wrong with the row.
        reason: &'static str,
    },
    /// A line of a JSONL chain file is not a valid entry.
    #[error("line {line} of the chain file is not a valid audit entry: {reason}")]
    MalformedLine {
        /// The 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An expected head was not `SEQ:HASH`.
    #[error("invalid chain head {input:?}: expected SEQ:HASH, such as 42:<64 hex characters>")]
    InvalidHead {
        /// The rejected input (at most 200 characters).
        input: String,
    },
    /// Reading or writing a chain file failed.
    #[error("chain file I/O failed")]
    Io(#[from] std::io::Error),
    /// A Merkle proof could not be made or did not verify.
    #[error(transparent)]
    Proof(#[from] crate::merkle::ProofError),
    /// A signed note, key or checkpoint was malformed or did not verify.
    #[error(transparent)]
    Note(#[from] crate::note::NoteError),
    /// Extending the Merkle tree found an entry that does not chain on from the previous one, so
    /// nothing was written or signed.
    #[error(
        "entry {seq} of tenant {tenant:?} does not chain on ({reason}); nothing was checkpointed: run `sos-audit verify` to locate the tampering"
    )]
    ChainBroken {
        /// The tenant.
        tenant: String,
        /// The entry that does not chain on.
        seq: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A stored tile or tree state cannot be read.
    #[error("the stored Merkle tree of tenant {tenant:?} is corrupt: {reason}")]
    CorruptTree {
        /// The tenant (empty when unknown).
        tenant: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No recorded checkpoint covers the entry yet.
    #[error(
        "entry {seq} of tenant {tenant:?} is not covered by a checkpoint yet (latest size: {checkpoint_size:?}); make one with `sos-audit checkpoint` or wait for the checkpointer"
    )]
    NotCheckpointed {
        /// The tenant.
        tenant: String,
        /// The entry asked for.
        seq: u64,
        /// The size of the latest checkpoint, if any.
        checkpoint_size: Option<u64>,
    },
    /// The entry does not exist in the chain.
    #[error("tenant {tenant:?} has no entry {seq}; sequence numbers start at 1 and end at the chain's head")]
    EntryNotFound {
        /// The tenant.
        tenant: String,
        /// The entry asked for.
        seq: u64,
    },
    /// A proof is for another entry or another tree size than the one it is checked against.
    #[error("the proof does not match: {reason}")]
    ProofMismatch {
        /// What does not match.
        reason: String,
    },
    /// Two checkpoints of the same size with different roots: a split view. Nothing was signed.
    #[error(
        "split view refused: tenant {tenant:?} already has a checkpoint of size {size} with root {recorded}, and the tree now has root {computed}; the log was rewritten, investigate before signing anything"
    )]
    SplitView {
        /// The tenant.
        tenant: String,
        /// The tree size of both checkpoints.
        size: u64,
        /// The root already signed.
        recorded: sos_core::Sha256Digest,
        /// The root the tree has now.
        computed: sos_core::Sha256Digest,
    },
    /// The log is not an append-only extension of its last signed checkpoint (it forked or was
    /// truncated). Nothing was signed.
    #[error(
        "tenant {tenant:?} no longer extends its checkpoint of size {checkpoint_size}: {reason}; nothing was signed, investigate the log"
    )]
    Forked {
        /// The tenant.
        tenant: String,
        /// The size of the signed checkpoint the log should extend.
        checkpoint_size: u64,
        /// What was found.
        reason: String,
    },
    /// The stored Merkle tree beyond the last signed checkpoint disagrees with what the chain's
    /// entries yield (tiles or leaf hashes were rewritten in the database). Nothing was signed.
    #[error(
        "the stored Merkle tree of tenant {tenant:?} beyond its signed checkpoint of size {checkpoint_size} disagrees with the chain: {reason}; nothing was signed: the tree rows were rewritten, investigate the database before signing anything"
    )]
    RewrittenTree {
        /// The tenant.
        tenant: String,
        /// The size of the signed checkpoint the tree was re-derived from.
        checkpoint_size: u64,
        /// What disagrees.
        reason: String,
    },
    /// An anchor already holds a different checkpoint of this size; it was not overwritten.
    #[error(
        "anchor {location} already holds a different checkpoint of size {size}; refusing to overwrite it"
    )]
    AnchorConflict {
        /// Where the anchor is (a path, or a table and key).
        location: String,
        /// The checkpoint size.
        size: u64,
    },
    /// An anchor sink files, under one tree size, a checkpoint of another size: its rows or files
    /// were written by something other than a sink (a forged row, a renamed file). Picking the
    /// latest anchor by the filed size would then hide the real latest one.
    #[error(
        "anchor {location} is filed under size {filed} but holds a checkpoint of size {held}; \
         the anchor store was tampered with: compare it with another copy of the anchors before \
         checkpointing this tenant again"
    )]
    AnchorMisfiled {
        /// Where the anchor is (a path, or a table and key).
        location: String,
        /// The size it is filed under (row column or file name).
        filed: u64,
        /// The size of the checkpoint the note holds.
        held: u64,
    },
    /// A key file cannot be read, is too widely readable, or does not hold a key.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A timestamp reply or stored token is not the DER structure RFC 3161 defines.
    #[cfg(feature = "tsa")]
    #[error(
        "malformed RFC 3161 {what}: {reason}; check that the URL is an RFC 3161 TSA and that the stored token was not damaged"
    )]
    TimestampMalformed {
        /// Which structure (`reply`, `token`, `TSTInfo`, `request`).
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The TSA answered with a status other than granted.
    #[cfg(feature = "tsa")]
    #[error(
        "the TSA refused the timestamp request: status {status}, failure info {failure}{}; check the TSA's accepted hash algorithms and policies, or retry later",
        text.as_deref().map(|text| format!(", text {text:?}")).unwrap_or_default()
    )]
    TimestampRejected {
        /// The `PKIStatus` of the reply.
        status: crate::timestamp::PkiStatus,
        /// The `PKIFailureInfo` bits (empty when the TSA gave none).
        failure: crate::timestamp::FailureInfo,
        /// The TSA's `statusString`, lines joined with `; `.
        text: Option<String>,
    },
    /// The token's message imprint is not SHA-256 of the bytes: it timestamps other bytes.
    #[cfg(feature = "tsa")]
    #[error(
        "the timestamp token is not for these bytes (its message imprint is not their SHA-256); verify it against the exact bytes that were timestamped"
    )]
    TimestampImprintMismatch,
    /// The reply's nonce is not the request's: a replayed or misrouted reply.
    #[cfg(feature = "tsa")]
    #[error(
        "the timestamp reply carries another nonce than the request: it is a replayed or misrouted reply; retry, and check what sits between you and the TSA"
    )]
    TimestampNonceMismatch,
    /// The token was signed by another certificate than the caller's.
    #[cfg(feature = "tsa")]
    #[error(
        "the timestamp token names another signer than the configured TSA certificate; pass the certificate of the TSA that issued it"
    )]
    TimestampSignerMismatch,
    /// The token's signed attributes are missing, repeated or do not match its content.
    #[cfg(feature = "tsa")]
    #[error(
        "the timestamp token's signed attributes are invalid: {reason}; the token was altered or is not RFC 3161"
    )]
    TimestampAttributes {
        /// What was wrong.
        reason: &'static str,
    },
    /// The token's signed attributes hold no ESS `signingCertificate` or `signingCertificateV2`
    /// (RFC 2634 / RFC 5035, required by RFC 3161 §2.4.2 and RFC 5816), so nothing binds the
    /// signature to the TSA certificate.
    #[cfg(feature = "tsa")]
    #[error(
        "the timestamp token has no ESS signingCertificate or signingCertificateV2 attribute, so its signature is not bound to the TSA certificate; the token is not RFC 3161 (use a TSA that includes it)"
    )]
    TimestampSigningCertificateMissing,
    /// The token's ESS `signingCertificate(V2)` attribute names another certificate than the
    /// caller's (another certificate of the same key, or an altered attribute).
    #[cfg(feature = "tsa")]
    #[error(
        "the timestamp token's ESS signing-certificate attribute does not identify the configured TSA certificate: {reason}; pass the exact certificate the TSA signs with"
    )]
    TimestampSigningCertificateMismatch {
        /// What does not match.
        reason: &'static str,
    },
    /// The token's signature does not verify with the TSA certificate's key.
    #[cfg(feature = "tsa")]
    #[error(
        "the timestamp token's signature does not verify with the TSA certificate: the token was altered, or a certificate with another key was given"
    )]
    TimestampBadSignature,
    /// The token uses an algorithm this crate does not verify.
    #[cfg(feature = "tsa")]
    #[error(
        "unsupported {what} {oid} in the timestamp token; this crate verifies SHA-256 with RSA PKCS#1 v1.5 or ECDSA P-256"
    )]
    TimestampUnsupportedAlgorithm {
        /// Which algorithm (`signer digest algorithm` or `signature algorithm`).
        what: &'static str,
        /// Its object identifier.
        oid: String,
    },
    /// The TSA certificate cannot be used to verify timestamps.
    #[cfg(feature = "tsa")]
    #[error("unusable TSA certificate: {reason}")]
    TsaCertificate {
        /// What was wrong and what to use instead.
        reason: String,
    },
    /// The TSA URL is not an `http` or `https` URL.
    #[cfg(feature = "tsa")]
    #[error("invalid TSA URL {url:?}: {reason}; give an http or https URL such as https://tsa.example/tsr")]
    TsaUrl {
        /// The rejected URL (at most 200 characters).
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The TSA could not be reached or the exchange failed midway.
    #[cfg(feature = "tsa")]
    #[error(
        "could not complete the exchange with the TSA at {url}; check the URL, the network and the timeout"
    )]
    TsaUnreachable {
        /// The TSA URL.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TSA answered with an HTTP error status.
    #[cfg(feature = "tsa")]
    #[error("the TSA at {url} answered HTTP {status}; check the URL and the TSA's state")]
    TsaHttpStatus {
        /// The TSA URL.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// The TSA's reply is not `application/timestamp-reply`.
    #[cfg(feature = "tsa")]
    #[error(
        "the reply from {url} has content type {content_type:?}, not application/timestamp-reply; check that the URL is an RFC 3161 endpoint"
    )]
    TsaContentType {
        /// The TSA URL.
        url: String,
        /// The content type received (at most 200 characters).
        content_type: String,
    },
    /// The TSA's reply is larger than the configured limit.
    #[cfg(feature = "tsa")]
    #[error(
        "the reply from {url} exceeds {limit} bytes; raise HttpTsaConfig::max_response_bytes if the TSA sends large chains"
    )]
    TsaResponseTooLarge {
        /// The TSA URL.
        url: String,
        /// The limit in bytes.
        limit: usize,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn storage(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Storage(Box::new(error))
}
