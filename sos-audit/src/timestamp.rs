//! RFC 3161 timestamps for checkpoints (feature `tsa`).
//!
//! A signed checkpoint proves what a log's head was, but not *when*: the log's own key could sign
//! a back-dated checkpoint at any later time. A timestamp token from an independent Time-Stamping
//! Authority (TSA, RFC 3161) binds the SHA-256 of the exact bytes of a signed checkpoint note to
//! a time the TSA vouches for with its own key, so an auditor can show that the checkpoint (and
//! every entry it commits to) existed no later than that time.
//!
//! # Usage
//!
//! - [`TimestampAuthority`] is the capability: timestamp some bytes, get back a verified
//!   [`TimestampToken`]. [`HttpTimestampAuthority`] implements it over HTTP (RFC 3161 §3.4:
//!   `POST` of an `application/timestamp-query`, answered with an `application/timestamp-reply`).
//! - [`TimestampRequest`] builds the `TimeStampReq` (a SHA-256 message imprint of the bytes, a
//!   random 64-bit nonce, `certReq` true) and checks the `TimeStampResp` for any transport.
//! - [`TimestampToken::verify`] re-checks a stored token later, given the original bytes and the
//!   TSA's certificate, so an auditor needs nothing but the token, the note and the certificate.
//!
//! The caller names the TSA by its certificate ([`TsaCertificate`]); the token must be signed by
//! exactly that certificate. Building the certificate's chain to a root is left to the caller
//! (pin the TSA certificate you were given, as you pin a log's verifier key).
//!
//! # What is verified
//!
//! A reply is accepted only when all of these hold, and each failure is its own
//! [`Error`] variant:
//!
//! 1. the status is `granted` or `grantedWithMods` (else [`Error::TimestampRejected`] with the
//!    PKIStatus and failure information);
//! 2. the token is a CMS `SignedData` whose `eContentType` is `id-ct-TSTInfo`, with one signer;
//! 3. the `TSTInfo` message imprint is SHA-256 of the bytes ([`Error::TimestampImprintMismatch`])
//!    and its nonce is the request's ([`Error::TimestampNonceMismatch`]);
//! 4. the signer named by `sid` is the caller's certificate ([`Error::TimestampSignerMismatch`]);
//! 5. the signed attributes hold exactly one `content-type` (= `id-ct-TSTInfo`) and one
//!    `message-digest` (= SHA-256 of the `TSTInfo` DER) ([`Error::TimestampAttributes`]);
//! 6. the signature over the DER of the signed attributes verifies with the certificate's key:
//!    RSA PKCS#1 v1.5 with SHA-256, or ECDSA P-256 with SHA-256 ([`Error::TimestampBadSignature`]);
//! 7. the signed attributes hold an ESS `signingCertificateV2` (RFC 5035; certificate hash
//!    SHA-256, -384 or -512) or `signingCertificate` (RFC 2634; SHA-1), and the first certificate
//!    each names is the caller's, by hash and by issuer and serial when given, so the signature
//!    is bound to this certificate and not only to its key
//!    ([`Error::TimestampSigningCertificateMissing`],
//!    [`Error::TimestampSigningCertificateMismatch`]);
//! 8. the certificate carries the critical extended key usage `id-kp-timeStamping` and nothing
//!    else (checked when it is loaded) and was valid at the token's `genTime`
//!    ([`Error::TsaCertificate`]).
//!
//! # Example
//!
//! ```no_run
//! use sos_audit::timestamp::{HttpTimestampAuthority, HttpTsaConfig, TimestampAuthority, TimestampToken, TsaCertificate};
//!
//! # async fn example(signed_checkpoint_note: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let certificate = TsaCertificate::from_pem(&std::fs::read_to_string("tsa.crt")?)?;
//! let authority = HttpTimestampAuthority::new(
//!     HttpTsaConfig::new("http://tsa.example/tsr"),
//!     certificate.clone(),
//! )?;
//! let token = authority.timestamp(signed_checkpoint_note.as_bytes()).await?;
//! println!("checkpoint existed at {}", token.gen_time());
//! std::fs::write("checkpoint.tsr", token.as_der())?;
//!
//! // Later, an auditor with the note, the token and the TSA certificate:
//! let token = TimestampToken::verify(&std::fs::read("checkpoint.tsr")?, signed_checkpoint_note.as_bytes(), &certificate)?;
//! println!("re-verified: {} under TSA policy {}", token.gen_time(), token.policy());
//! # Ok(())
//! # }
//! ```
//!
//! # Untrusted input
//!
//! Replies and stored tokens are parsed with the RustCrypto `der`, `cms` and `x509-cert` crates
//! into typed errors, never panics (a property test and the `timestamp_response` fuzz target hold
//! the parser to that). HTTP replies are read up to [`HttpTsaConfig::max_response_bytes`].

use std::fmt;
use std::future::Future;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::{Any, BitString, Int, ObjectIdentifier, OctetString, Uint};
use der::referenced::OwnedToRef as _;
use der::{Decode as _, DecodePem as _, Encode as _, Sequence, Tag, Tagged as _};
use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::Extensions;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectKeyIdentifier};
use x509_tsp::{Accuracy, MessageImprint, TimeStampReq, TspVersion};

use crate::{Error, Result};

mod anchor;
mod http;

#[cfg(test)]
mod tests;

pub use anchor::{TimestampedAnchorSink, timestamp_anchor, verify_anchor_timestamp};
pub use http::{HttpTimestampAuthority, HttpTsaConfig};

/// `id-sha256` (RFC 5754).
const ID_SHA_256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// `id-signedData` (RFC 5652 §5.1).
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// `id-ct-TSTInfo` (RFC 3161 §2.4.2).
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");
/// `id-contentType` signed attribute (RFC 5652 §11.1).
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
/// `id-messageDigest` signed attribute (RFC 5652 §11.2).
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// `rsaEncryption` (RFC 8017), as CMS names PKCS#1 v1.5 signatures.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// `sha256WithRSAEncryption` (RFC 4055).
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
/// `id-ecPublicKey` (RFC 5480).
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `ecdsa-with-SHA256` (RFC 5758).
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// `secp256r1` / `prime256v1` (RFC 5480).
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `id-aa-signingCertificate` signed attribute (RFC 2634 §5.4).
const ID_AA_SIGNING_CERTIFICATE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.12");
/// `id-aa-signingCertificateV2` signed attribute (RFC 5035 §3).
const ID_AA_SIGNING_CERTIFICATE_V2: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");
/// `id-sha384` (RFC 5754).
const ID_SHA_384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// `id-sha512` (RFC 5754).
const ID_SHA_512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");
/// `id-kp-timeStamping` (RFC 5280 §4.2.1.12).
const ID_KP_TIME_STAMPING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.8");

/// The largest reply or token this module parses, in bytes. Real tokens with a certificate chain
/// are a few kilobytes.
pub const MAX_TOKEN_BYTES: usize = 1 << 20;

/// A Time-Stamping Authority: something that timestamps bytes and returns a verified token.
///
/// Implementations must return only tokens that passed the checks listed in the
/// [module docs](self) for the bytes given; [`HttpTimestampAuthority`] is the RFC 3161 HTTP
/// client. The future is `Send`, so a checkpointer can call it from a spawned task.
pub trait TimestampAuthority: Send + Sync {
    /// Timestamps `bytes` (typically a signed checkpoint note, byte for byte as published) and
    /// returns the verified token.
    fn timestamp(&self, bytes: &[u8]) -> impl Future<Output = Result<TimestampToken>> + Send;
}

/// The message-imprint hash algorithm of a token. Only SHA-256 is requested or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-256 (`2.16.840.1.101.3.4.2.1`).
    Sha256,
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sha256 => f.write_str("SHA-256"),
        }
    }
}

/// The `PKIStatus` of a `TimeStampResp` (RFC 3161 §2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PkiStatus {
    /// `granted` (0): a token is present.
    Granted,
    /// `grantedWithMods` (1): a token is present, possibly not exactly as requested.
    GrantedWithMods,
    /// `rejection` (2).
    Rejection,
    /// `waiting` (3): the request was queued; this client does not poll.
    Waiting,
    /// `revocationWarning` (4): a revocation is imminent.
    RevocationWarning,
    /// `revocationNotification` (5): a revocation has occurred.
    RevocationNotification,
    /// A value RFC 3161 does not define.
    Unknown(u32),
}

impl PkiStatus {
    fn from_code(code: u32) -> Self {
        match code {
            0 => Self::Granted,
            1 => Self::GrantedWithMods,
            2 => Self::Rejection,
            3 => Self::Waiting,
            4 => Self::RevocationWarning,
            5 => Self::RevocationNotification,
            other => Self::Unknown(other),
        }
    }

    /// Whether a token accompanies this status.
    pub fn is_granted(self) -> bool {
        matches!(self, Self::Granted | Self::GrantedWithMods)
    }
}

impl fmt::Display for PkiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Granted => f.write_str("granted"),
            Self::GrantedWithMods => f.write_str("grantedWithMods"),
            Self::Rejection => f.write_str("rejection"),
            Self::Waiting => f.write_str("waiting"),
            Self::RevocationWarning => f.write_str("revocationWarning"),
            Self::RevocationNotification => f.write_str("revocationNotification"),
            Self::Unknown(code) => write!(f, "unknown status {code}"),
        }
    }
}

/// The `PKIFailureInfo` bits of a rejected request (RFC 3161 §2.4.2): why the TSA refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FailureInfo(u32);

/// The failure bits RFC 3161 names, by bit number.
const FAILURE_NAMES: [(u32, &str); 8] = [
    (0, "badAlg"),
    (2, "badRequest"),
    (5, "badDataFormat"),
    (14, "timeNotAvailable"),
    (15, "unacceptedPolicy"),
    (16, "unacceptedExtension"),
    (17, "addInfoNotAvailable"),
    (25, "systemFailure"),
];

impl FailureInfo {
    /// `badAlg`: the TSA does not accept the hash algorithm.
    pub const BAD_ALG: u32 = 0;
    /// `badRequest`: the TSA does not accept this kind of request.
    pub const BAD_REQUEST: u32 = 2;
    /// `badDataFormat`: the request was malformed.
    pub const BAD_DATA_FORMAT: u32 = 5;
    /// `timeNotAvailable`: the TSA's time source is unavailable.
    pub const TIME_NOT_AVAILABLE: u32 = 14;
    /// `unacceptedPolicy`: the requested policy is not supported.
    pub const UNACCEPTED_POLICY: u32 = 15;
    /// `unacceptedExtension`: a requested extension is not supported.
    pub const UNACCEPTED_EXTENSION: u32 = 16;
    /// `addInfoNotAvailable`: additional information is not available.
    pub const ADD_INFO_NOT_AVAILABLE: u32 = 17;
    /// `systemFailure`: the TSA failed.
    pub const SYSTEM_FAILURE: u32 = 25;

    /// Whether bit `bit` (one of the constants above) is set.
    pub fn contains(self, bit: u32) -> bool {
        bit < 32 && self.0 & (1 << bit) != 0
    }

    /// The bits as a mask: bit `n` of the BIT STRING is `1 << n`. Bits past 31 are dropped.
    pub fn bits(self) -> u32 {
        self.0
    }

    fn from_bit_string(bits: &BitString) -> Self {
        let mut mask = 0u32;
        for (index, bit) in bits.bits().enumerate().take(32) {
            if bit {
                mask |= 1 << index;
            }
        }
        Self(mask)
    }
}

impl fmt::Display for FailureInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none given");
        }
        let mut first = true;
        for bit in 0..32 {
            if self.contains(bit) {
                if !first {
                    f.write_str(", ")?;
                }
                first = false;
                match FAILURE_NAMES.iter().find(|(number, _)| *number == bit) {
                    Some((_, name)) => f.write_str(name)?,
                    None => write!(f, "bit {bit}")?,
                }
            }
        }
        Ok(())
    }
}

/// `PKIStatusInfo` (RFC 3161 §2.4.2), read with the `der` crate.
///
/// `x509-tsp` reads this through `cmpv2`, whose `PKIFailureInfo` flags are 16 bits wide and so
/// cannot represent `systemFailure` (bit 25): a rejection carrying it would not even parse.
#[derive(Clone, Debug, Sequence)]
struct PkiStatusInfo {
    status: u32,
    #[asn1(optional = "true")]
    status_string: Option<Vec<String>>,
    #[asn1(optional = "true")]
    fail_info: Option<BitString>,
}

/// `TimeStampResp` (RFC 3161 §2.4.2).
#[derive(Clone, Debug, Sequence)]
struct TimeStampResp {
    status: PkiStatusInfo,
    #[asn1(optional = "true")]
    time_stamp_token: Option<Any>,
}

/// `TSTInfo` (RFC 3161 §2.4.2).
///
/// `x509-tsp` types `genTime` as the `der` crate's `GeneralizedTime`, which rejects fractional
/// seconds; RFC 3161 allows them and TSAs with sub-second accuracy send them. So the time is read
/// as a GeneralizedTime TLV here and its text parsed by [`parse_generalized_time`].
#[derive(Clone, Debug, Sequence)]
struct TstInfo {
    version: TspVersion,
    policy: ObjectIdentifier,
    message_imprint: MessageImprint,
    serial_number: Int,
    gen_time: Any,
    #[asn1(optional = "true")]
    accuracy: Option<Accuracy>,
    #[asn1(default = "Default::default")]
    ordering: bool,
    #[asn1(optional = "true")]
    nonce: Option<Int>,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    tsa: Option<GeneralName>,
    #[asn1(context_specific = "1", tag_mode = "IMPLICIT", optional = "true")]
    extensions: Option<Extensions>,
}

/// `IssuerSerial` (RFC 5035 §4).
#[derive(Clone, Debug, Sequence)]
struct IssuerSerial {
    issuer: Vec<GeneralName>,
    serial_number: x509_cert::serial_number::SerialNumber,
}

/// `ESSCertID` (RFC 2634 §5.4.1): the SHA-1 hash of a certificate.
#[derive(Clone, Debug, Sequence)]
struct EssCertId {
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<IssuerSerial>,
}

/// `SigningCertificate` (RFC 2634 §5.4).
#[derive(Clone, Debug, Sequence)]
struct SigningCertificate {
    certs: Vec<EssCertId>,
    #[asn1(optional = "true")]
    policies: Option<x509_cert::ext::pkix::CertificatePolicies>,
}

/// `ESSCertIDv2` (RFC 5035 §4): a certificate hash by any algorithm (SHA-256 when absent).
#[derive(Clone, Debug, Sequence)]
struct EssCertIdV2 {
    #[asn1(optional = "true")]
    hash_algorithm: Option<spki::AlgorithmIdentifierOwned>,
    cert_hash: OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<IssuerSerial>,
}

/// `SigningCertificateV2` (RFC 5035 §3).
#[derive(Clone, Debug, Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
    #[asn1(optional = "true")]
    policies: Option<x509_cert::ext::pkix::CertificatePolicies>,
}

fn malformed(what: &'static str, reason: impl fmt::Display) -> Error {
    Error::TimestampMalformed { what, reason: reason.to_string() }
}

/// Parses the text of a DER GeneralizedTime as RFC 3161 §2.4.2 allows it:
/// `YYYYMMDDhhmmss[.f…]Z`, with at most 9 fraction digits and no trailing zero.
fn parse_generalized_time(value: &Any) -> Result<DateTime<Utc>> {
    let bad = |reason: &str| malformed("TSTInfo", format!("genTime {reason}"));
    if value.tag() != Tag::GeneralizedTime {
        return Err(bad("is not a GeneralizedTime"));
    }
    let text = std::str::from_utf8(value.value()).map_err(|_| bad("is not ASCII"))?;
    let text = text.strip_suffix('Z').ok_or_else(|| bad("is not in UTC (no trailing Z)"))?;
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if whole.len() != 14 || !whole.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad("is not YYYYMMDDhhmmss"));
    }
    let number =
        |range: std::ops::Range<usize>| whole[range].parse::<u32>().map_err(|_| bad("has a bad field"));
    let year = i32::try_from(number(0..4)?).map_err(|_| bad("has a bad year"))?;
    let date =
        NaiveDate::from_ymd_opt(year, number(4..6)?, number(6..8)?).ok_or_else(|| bad("is not a date"))?;
    let mut nanos = 0u32;
    if let Some(fraction) = fraction {
        if fraction.is_empty()
            || fraction.len() > 9
            || fraction.ends_with('0')
            || !fraction.bytes().all(|byte| byte.is_ascii_digit())
        {
            return Err(bad("has a malformed fraction of a second"));
        }
        let digits: u32 = fraction.parse().map_err(|_| bad("has a malformed fraction of a second"))?;
        let scale = 10u32.pow(9 - u32::try_from(fraction.len()).map_err(|_| bad("fraction too long"))?);
        nanos = digits * scale;
    }
    let time = NaiveTime::from_hms_nano_opt(number(8..10)?, number(10..12)?, number(12..14)?, nanos)
        .ok_or_else(|| bad("is not a time of day"))?;
    Ok(NaiveDateTime::new(date, time).and_utc())
}

/// The key of a TSA certificate, ready to verify.
#[derive(Clone)]
enum SignerKey {
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
    P256(p256::ecdsa::VerifyingKey),
}

/// The certificate of the TSA a caller trusts, checked to be fit for timestamping.
///
/// Loading refuses a certificate whose extended key usage is not exactly the critical
/// `id-kp-timeStamping` (RFC 3161 §2.3), or whose key is neither RSA nor ECDSA P-256.
#[derive(Clone)]
pub struct TsaCertificate {
    certificate: Certificate,
    der: Vec<u8>,
    key: SignerKey,
    subject_key_identifier: Option<Vec<u8>>,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

impl fmt::Debug for TsaCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsaCertificate")
            .field("subject", &self.certificate.tbs_certificate.subject.to_string())
            .field("issuer", &self.certificate.tbs_certificate.issuer.to_string())
            .field("serial", &self.certificate.tbs_certificate.serial_number.to_string())
            .field("key", &self.key_algorithm())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

fn certificate_error(reason: impl fmt::Display) -> Error {
    Error::TsaCertificate { reason: reason.to_string() }
}

fn to_utc(time: x509_cert::time::Time) -> Result<DateTime<Utc>> {
    let since_epoch = time.to_unix_duration();
    let seconds = i64::try_from(since_epoch.as_secs())
        .map_err(|_| certificate_error("its validity is out of range"))?;
    DateTime::from_timestamp(seconds, since_epoch.subsec_nanos())
        .ok_or_else(|| certificate_error("its validity is out of range"))
}

impl TsaCertificate {
    /// Loads a DER-encoded X.509 certificate.
    ///
    /// # Errors
    ///
    /// [`Error::TsaCertificate`] when the bytes are not a certificate, its extended key usage is
    /// not exactly the critical `id-kp-timeStamping`, or its key is not RSA or ECDSA P-256.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let certificate = Certificate::from_der(der).map_err(|error| {
            certificate_error(format_args!("it is not a DER X.509 certificate ({error})"))
        })?;
        Self::from_certificate(certificate)
    }

    /// Loads a PEM-encoded X.509 certificate (`-----BEGIN CERTIFICATE-----`).
    ///
    /// # Errors
    ///
    /// As [`TsaCertificate::from_der`], and when the text is not one PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let certificate = Certificate::from_pem(pem.trim().as_bytes()).map_err(|error| {
            certificate_error(format_args!("it is not a PEM X.509 certificate ({error})"))
        })?;
        Self::from_certificate(certificate)
    }

    fn from_certificate(certificate: Certificate) -> Result<Self> {
        let der = certificate
            .to_der()
            .map_err(|error| certificate_error(format_args!("it cannot be re-encoded ({error})")))?;
        let tbs = &certificate.tbs_certificate;
        match tbs.get::<ExtendedKeyUsage>() {
            Ok(Some((true, usage))) if usage.0.as_slice() == [ID_KP_TIME_STAMPING] => {}
            Ok(Some((false, _))) => {
                return Err(certificate_error(
                    "its extendedKeyUsage is not critical; RFC 3161 requires a TSA certificate with the critical extendedKeyUsage timeStamping",
                ));
            }
            Ok(Some((true, _))) => {
                return Err(certificate_error(
                    "its extendedKeyUsage is not exactly timeStamping; RFC 3161 requires a TSA certificate whose only key purpose is timeStamping",
                ));
            }
            Ok(None) => {
                return Err(certificate_error(
                    "it has no extendedKeyUsage; RFC 3161 requires a TSA certificate with the critical extendedKeyUsage timeStamping",
                ));
            }
            Err(error) => {
                return Err(certificate_error(format_args!(
                    "its extendedKeyUsage extension is malformed or repeated ({error})"
                )));
            }
        }
        let subject_key_identifier = match tbs.get::<SubjectKeyIdentifier>() {
            Ok(found) => found.map(|(_, identifier)| identifier.0.as_bytes().to_vec()),
            Err(error) => {
                return Err(certificate_error(format_args!(
                    "its subjectKeyIdentifier extension is malformed or repeated ({error})"
                )));
            }
        };
        let public_key = &tbs.subject_public_key_info;
        let key = if public_key.algorithm.oid == RSA_ENCRYPTION {
            let key = rsa::pkcs1v15::VerifyingKey::<Sha256>::try_from(public_key.owned_to_ref()).map_err(
                |error| certificate_error(format_args!("its RSA public key is malformed ({error})")),
            )?;
            SignerKey::Rsa(key)
        } else if public_key.algorithm.oid == ID_EC_PUBLIC_KEY {
            let curve = public_key
                .algorithm
                .parameters
                .as_ref()
                .and_then(|parameters| parameters.decode_as::<ObjectIdentifier>().ok());
            if curve != Some(SECP256R1) {
                return Err(certificate_error(
                    "its EC key is not on P-256; supported TSA keys are RSA and ECDSA P-256",
                ));
            }
            let key = p256::ecdsa::VerifyingKey::try_from(public_key.owned_to_ref()).map_err(|error| {
                certificate_error(format_args!("its P-256 public key is malformed ({error})"))
            })?;
            SignerKey::P256(key)
        } else {
            return Err(certificate_error(format_args!(
                "its key algorithm {} is not supported; supported TSA keys are RSA and ECDSA P-256",
                public_key.algorithm.oid
            )));
        };
        let not_before = to_utc(tbs.validity.not_before)?;
        let not_after = to_utc(tbs.validity.not_after)?;
        Ok(Self { certificate, der, key, subject_key_identifier, not_before, not_after })
    }

    /// The certificate's DER encoding.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate's subject, as an RFC 4514 string.
    pub fn subject(&self) -> String {
        self.certificate.tbs_certificate.subject.to_string()
    }

    /// The certificate's key algorithm: `RSA` or `ECDSA P-256`.
    pub fn key_algorithm(&self) -> &'static str {
        match self.key {
            SignerKey::Rsa(_) => "RSA",
            SignerKey::P256(_) => "ECDSA P-256",
        }
    }

    /// Whether `sid` names this certificate.
    fn is_named_by(&self, sid: &SignerIdentifier) -> bool {
        match sid {
            SignerIdentifier::IssuerAndSerialNumber(name) => {
                name.issuer == self.certificate.tbs_certificate.issuer
                    && name.serial_number == self.certificate.tbs_certificate.serial_number
            }
            SignerIdentifier::SubjectKeyIdentifier(identifier) => {
                self.subject_key_identifier.as_deref() == Some(identifier.0.as_bytes())
            }
        }
    }

    /// Verifies `signature` over `message` with this certificate's key, as `algorithm` says.
    fn verify_signature(&self, algorithm: &ObjectIdentifier, message: &[u8], signature: &[u8]) -> Result<()> {
        use p256::ecdsa::signature::Verifier as _;
        let is_rsa = *algorithm == RSA_ENCRYPTION || *algorithm == SHA256_WITH_RSA;
        let is_ecdsa = *algorithm == ECDSA_WITH_SHA256 || *algorithm == ID_EC_PUBLIC_KEY;
        if !is_rsa && !is_ecdsa {
            return Err(Error::TimestampUnsupportedAlgorithm {
                what: "signature algorithm",
                oid: algorithm.to_string(),
            });
        }
        // A known algorithm for the other kind of key means this key did not make the signature.
        let verified = match &self.key {
            SignerKey::Rsa(key) => {
                is_rsa
                    && rsa::pkcs1v15::Signature::try_from(signature)
                        .is_ok_and(|signature| key.verify(message, &signature).is_ok())
            }
            SignerKey::P256(key) => {
                is_ecdsa
                    && p256::ecdsa::Signature::from_der(signature)
                        .is_ok_and(|signature| key.verify(message, &signature).is_ok())
            }
        };
        if verified { Ok(()) } else { Err(Error::TimestampBadSignature) }
    }
}

/// An RFC 3161 `TimeStampReq` for some bytes, and the checks of the reply to it.
#[derive(Debug, Clone)]
pub struct TimestampRequest {
    imprint: [u8; 32],
    nonce: Int,
    der: Vec<u8>,
}

impl TimestampRequest {
    /// A request for `bytes`: SHA-256 message imprint, a fresh random 64-bit nonce, `certReq`
    /// true (so the TSA includes its certificate, which this crate ignores: the caller's is used).
    pub fn new(bytes: &[u8]) -> Result<Self> {
        Self::with_nonce(bytes, rand::random())
    }

    /// A request with a caller-chosen nonce. Use [`TimestampRequest::new`]: a predictable nonce
    /// lets a recorded reply be replayed. This exists to check recorded exchanges in tests.
    pub fn with_nonce(bytes: &[u8], nonce: u64) -> Result<Self> {
        let imprint: [u8; 32] = Sha256::digest(bytes).into();
        let encode_error =
            |error: der::Error| malformed("request", format_args!("cannot encode it ({error})"));
        let nonce = Int::from(Uint::new(&nonce.to_be_bytes()).map_err(encode_error)?);
        let request = TimeStampReq {
            version: TspVersion::V1,
            message_imprint: MessageImprint {
                hash_algorithm: spki::AlgorithmIdentifier { oid: ID_SHA_256, parameters: Some(Any::null()) },
                hashed_message: OctetString::new(imprint.to_vec()).map_err(encode_error)?,
            },
            req_policy: None,
            nonce: Some(nonce.clone()),
            cert_req: true,
            extensions: None,
        };
        let der = request.to_der().map_err(encode_error)?;
        Ok(Self { imprint, nonce, der })
    }

    /// The DER `TimeStampReq`, the body of an `application/timestamp-query`.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    /// The SHA-256 of the bytes being timestamped.
    pub fn message_imprint(&self) -> &[u8; 32] {
        &self.imprint
    }

    /// Checks a DER `TimeStampResp` (the body of an `application/timestamp-reply`) against this
    /// request and the TSA's certificate, and returns the verified token.
    ///
    /// # Errors
    ///
    /// [`Error::TimestampRejected`] when the TSA refused, and otherwise the error of the first
    /// check that failed (see the [module docs](self)).
    pub fn verify_response(&self, response: &[u8], certificate: &TsaCertificate) -> Result<TimestampToken> {
        if response.len() > MAX_TOKEN_BYTES {
            return Err(malformed("reply", format_args!("it is larger than {MAX_TOKEN_BYTES} bytes")));
        }
        let response = TimeStampResp::from_der(response)
            .map_err(|error| malformed("reply", format_args!("it is not a DER TimeStampResp ({error})")))?;
        let status = PkiStatus::from_code(response.status.status);
        if !status.is_granted() {
            return Err(Error::TimestampRejected {
                status,
                failure: response
                    .status
                    .fail_info
                    .as_ref()
                    .map(FailureInfo::from_bit_string)
                    .unwrap_or_default(),
                text: response.status.status_string.map(|lines| lines.join("; ")),
            });
        }
        let token = response
            .time_stamp_token
            .ok_or_else(|| malformed("reply", "its status is granted but it carries no token"))?;
        let token = token
            .to_der()
            .map_err(|error| malformed("reply", format_args!("its token cannot be re-encoded ({error})")))?;
        verify_token(token, &self.imprint, Some(&self.nonce), certificate)
    }
}

/// A verified RFC 3161 timestamp token: the DER `TimeStampToken` (a CMS `ContentInfo`) and what
/// its `TSTInfo` says.
///
/// Only verification makes one ([`TimestampRequest::verify_response`],
/// [`TimestampToken::verify`]), so holding one means the checks of the [module docs](self)
/// passed for the bytes it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampToken {
    der: Vec<u8>,
    gen_time: DateTime<Utc>,
    serial_number: Vec<u8>,
    policy: String,
    hash_algorithm: HashAlgorithm,
    message_imprint: [u8; 32],
    nonce: Option<Vec<u8>>,
}

impl TimestampToken {
    /// Re-verifies a stored token: that it is a valid token by `certificate` for exactly `bytes`.
    /// The nonce is not checked (it only proves freshness of the original reply).
    ///
    /// # Errors
    ///
    /// The error of the first check that failed (see the [module docs](self)); a token for other
    /// bytes is [`Error::TimestampImprintMismatch`].
    pub fn verify(token_der: &[u8], bytes: &[u8], certificate: &TsaCertificate) -> Result<Self> {
        if token_der.len() > MAX_TOKEN_BYTES {
            return Err(malformed("token", format_args!("it is larger than {MAX_TOKEN_BYTES} bytes")));
        }
        let imprint: [u8; 32] = Sha256::digest(bytes).into();
        verify_token(token_der.to_vec(), &imprint, None, certificate)
    }

    /// The DER `TimeStampToken` (CMS `ContentInfo`), to store beside the checkpoint.
    pub fn as_der(&self) -> &[u8] {
        &self.der
    }

    /// The token's DER, consumed.
    pub fn into_der(self) -> Vec<u8> {
        self.der
    }

    /// `genTime`: when the TSA says it saw the imprint.
    pub fn gen_time(&self) -> DateTime<Utc> {
        self.gen_time
    }

    /// `serialNumber`: the TSA's unique number for this token, big-endian two's complement.
    pub fn serial_number(&self) -> &[u8] {
        &self.serial_number
    }

    /// `policy`: the TSA policy the token was issued under, as a dotted OID.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// The message-imprint hash algorithm.
    pub fn hash_algorithm(&self) -> HashAlgorithm {
        self.hash_algorithm
    }

    /// The message imprint: SHA-256 of the timestamped bytes.
    pub fn message_imprint(&self) -> &[u8; 32] {
        &self.message_imprint
    }

    /// `nonce`, big-endian two's complement, when the request carried one.
    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }
}

/// Finds the single value of the signed attribute `oid`; `missing` and `repeated` say what is
/// wrong otherwise.
fn single_attribute<'a>(
    attributes: &'a x509_cert::attr::Attributes,
    oid: ObjectIdentifier,
    missing: &'static str,
    repeated: &'static str,
) -> Result<&'a Any> {
    let mut matching = attributes.iter().filter(|attribute| attribute.oid == oid);
    let attribute = matching.next().ok_or(Error::TimestampAttributes { reason: missing })?;
    if matching.next().is_some() {
        return Err(Error::TimestampAttributes { reason: repeated });
    }
    match attribute.values.as_slice() {
        [value] => Ok(value),
        _ => Err(Error::TimestampAttributes { reason: repeated }),
    }
}

/// Checks the ESS signing-certificate attributes (RFC 2634 `signingCertificate`, RFC 5035
/// `signingCertificateV2`; RFC 3161 §2.4.2 and RFC 5816 require one): at least one is present,
/// and each present names the caller's certificate first (RFC 5035 §3: the first certificate
/// identified is the one that verifies the signature), by its hash and, when given, its issuer and
/// serial number. This binds the signature to the certificate, not only to its key.
fn check_signing_certificate(
    attributes: &x509_cert::attr::Attributes,
    certificate: &TsaCertificate,
) -> Result<()> {
    let mismatch = |reason| Error::TimestampSigningCertificateMismatch { reason };
    let present = |oid| attributes.iter().any(|attribute| attribute.oid == oid);
    let (version_1, version_2) = (present(ID_AA_SIGNING_CERTIFICATE), present(ID_AA_SIGNING_CERTIFICATE_V2));
    if !version_1 && !version_2 {
        return Err(Error::TimestampSigningCertificateMissing);
    }
    if version_1 {
        let value = single_attribute(
            attributes,
            ID_AA_SIGNING_CERTIFICATE,
            "the signingCertificate attribute is missing",
            "the signingCertificate attribute is repeated or has several values",
        )?;
        let attribute: SigningCertificate = value.decode_as().map_err(|error| {
            malformed("token", format_args!("its signingCertificate attribute does not parse ({error})"))
        })?;
        let first = attribute
            .certs
            .first()
            .ok_or(mismatch("the signingCertificate attribute names no certificate"))?;
        let hash: [u8; 20] = sha1::Sha1::digest(&certificate.der).into();
        if first.cert_hash.as_bytes() != hash {
            return Err(mismatch("the SHA-1 hash in signingCertificate is not the certificate's"));
        }
        check_issuer_serial(first.issuer_serial.as_ref(), certificate)?;
    }
    if version_2 {
        let value = single_attribute(
            attributes,
            ID_AA_SIGNING_CERTIFICATE_V2,
            "the signingCertificateV2 attribute is missing",
            "the signingCertificateV2 attribute is repeated or has several values",
        )?;
        let attribute: SigningCertificateV2 = value.decode_as().map_err(|error| {
            malformed("token", format_args!("its signingCertificateV2 attribute does not parse ({error})"))
        })?;
        let first = attribute
            .certs
            .first()
            .ok_or(mismatch("the signingCertificateV2 attribute names no certificate"))?;
        let algorithm = first.hash_algorithm.as_ref();
        if algorithm.is_some_and(|algorithm| !algorithm.parameters.as_ref().is_none_or(Any::is_null)) {
            return Err(malformed("token", "its signingCertificateV2 hash algorithm has parameters"));
        }
        let hash: Vec<u8> = match algorithm.map_or(ID_SHA_256, |algorithm| algorithm.oid) {
            oid if oid == ID_SHA_256 => Sha256::digest(&certificate.der).to_vec(),
            oid if oid == ID_SHA_384 => sha2::Sha384::digest(&certificate.der).to_vec(),
            oid if oid == ID_SHA_512 => sha2::Sha512::digest(&certificate.der).to_vec(),
            oid => {
                return Err(Error::TimestampUnsupportedAlgorithm {
                    what: "signing certificate hash algorithm",
                    oid: oid.to_string(),
                });
            }
        };
        if first.cert_hash.as_bytes() != hash.as_slice() {
            return Err(mismatch("the hash in signingCertificateV2 is not the certificate's"));
        }
        check_issuer_serial(first.issuer_serial.as_ref(), certificate)?;
    }
    Ok(())
}

/// An ESS `issuerSerial`, when given, must be the certificate's issuer (as a directory name) and
/// serial number.
fn check_issuer_serial(issuer_serial: Option<&IssuerSerial>, certificate: &TsaCertificate) -> Result<()> {
    let Some(issuer_serial) = issuer_serial else { return Ok(()) };
    let tbs = &certificate.certificate.tbs_certificate;
    let issuer_named = issuer_serial
        .issuer
        .iter()
        .any(|name| matches!(name, GeneralName::DirectoryName(issuer) if *issuer == tbs.issuer));
    if !issuer_named || issuer_serial.serial_number != tbs.serial_number {
        return Err(Error::TimestampSigningCertificateMismatch {
            reason: "its issuerSerial is not the certificate's issuer and serial number",
        });
    }
    Ok(())
}

fn verify_token(
    token_der: Vec<u8>,
    imprint: &[u8; 32],
    nonce: Option<&Int>,
    certificate: &TsaCertificate,
) -> Result<TimestampToken> {
    let content_info = ContentInfo::from_der(&token_der)
        .map_err(|error| malformed("token", format_args!("it is not a DER CMS ContentInfo ({error})")))?;
    if content_info.content_type != ID_SIGNED_DATA {
        return Err(malformed(
            "token",
            format_args!("its content type {} is not SignedData", content_info.content_type),
        ));
    }
    let signed_data: SignedData = content_info
        .content
        .decode_as()
        .map_err(|error| malformed("token", format_args!("its SignedData does not parse ({error})")))?;
    let encapsulated = &signed_data.encap_content_info;
    if encapsulated.econtent_type != ID_CT_TST_INFO {
        return Err(malformed(
            "token",
            format_args!("its eContentType {} is not id-ct-TSTInfo", encapsulated.econtent_type),
        ));
    }
    let tst_info_der = encapsulated
        .econtent
        .as_ref()
        .ok_or_else(|| malformed("token", "its TSTInfo is missing (detached content)"))?
        .decode_as::<OctetString>()
        .map_err(|error| malformed("token", format_args!("its eContent is not an OCTET STRING ({error})")))?;
    let tst_info = TstInfo::from_der(tst_info_der.as_bytes())
        .map_err(|error| malformed("TSTInfo", format_args!("it does not parse ({error})")))?;
    let gen_time = parse_generalized_time(&tst_info.gen_time)?;

    // The bytes: the imprint must be SHA-256 of exactly ours.
    let algorithm = &tst_info.message_imprint.hash_algorithm;
    let parameters_ok = algorithm.parameters.as_ref().is_none_or(Any::is_null);
    if algorithm.oid != ID_SHA_256
        || !parameters_ok
        || tst_info.message_imprint.hashed_message.as_bytes() != imprint
    {
        return Err(Error::TimestampImprintMismatch);
    }
    if let Some(expected) = nonce
        && tst_info.nonce.as_ref() != Some(expected)
    {
        return Err(Error::TimestampNonceMismatch);
    }

    // The signer: exactly one, the caller's certificate.
    let signer: &SignerInfo = match signed_data.signer_infos.0.as_slice() {
        [signer] => signer,
        others => {
            return Err(malformed(
                "token",
                format_args!("it has {} signers where RFC 3161 requires one", others.len()),
            ));
        }
    };
    if !certificate.is_named_by(&signer.sid) {
        return Err(Error::TimestampSignerMismatch);
    }
    if signer.digest_alg.oid != ID_SHA_256 {
        return Err(Error::TimestampUnsupportedAlgorithm {
            what: "signer digest algorithm",
            oid: signer.digest_alg.oid.to_string(),
        });
    }

    // The signed attributes bind the signature to this TSTInfo.
    let attributes = signer
        .signed_attrs
        .as_ref()
        .ok_or(Error::TimestampAttributes { reason: "the signer has no signed attributes" })?;
    let content_type = single_attribute(
        attributes,
        ID_CONTENT_TYPE,
        "the content-type attribute is missing",
        "the content-type attribute is repeated or has several values",
    )?;
    if content_type.decode_as::<ObjectIdentifier>().ok() != Some(ID_CT_TST_INFO) {
        return Err(Error::TimestampAttributes { reason: "the content-type attribute is not id-ct-TSTInfo" });
    }
    let message_digest = single_attribute(
        attributes,
        ID_MESSAGE_DIGEST,
        "the message-digest attribute is missing",
        "the message-digest attribute is repeated or has several values",
    )?;
    let content_digest: [u8; 32] = Sha256::digest(tst_info_der.as_bytes()).into();
    match message_digest.decode_as::<OctetString>() {
        Ok(digest) if digest.as_bytes() == content_digest => {}
        _ => {
            return Err(Error::TimestampAttributes {
                reason: "the message-digest attribute is not SHA-256 of the TSTInfo (the TSTInfo was altered)",
            });
        }
    }
    // RFC 5652 §5.4: the signature covers the DER of the attributes as a SET OF (tag 0x31).
    let signed_bytes = attributes.to_der().map_err(|error| {
        malformed("token", format_args!("its signed attributes cannot be re-encoded ({error})"))
    })?;
    certificate.verify_signature(
        &signer.signature_algorithm.oid,
        &signed_bytes,
        signer.signature.as_bytes(),
    )?;
    // Only now that the attributes are known to be the TSA's: they must name its certificate.
    check_signing_certificate(attributes, certificate)?;

    if gen_time < certificate.not_before || gen_time > certificate.not_after {
        return Err(certificate_error(format_args!(
            "it was not valid at the token's genTime {gen_time} (valid {} to {}); use the certificate the TSA had then",
            certificate.not_before, certificate.not_after
        )));
    }

    Ok(TimestampToken {
        der: token_der,
        gen_time,
        serial_number: tst_info.serial_number.as_bytes().to_vec(),
        policy: tst_info.policy.to_string(),
        hash_algorithm: HashAlgorithm::Sha256,
        message_imprint: *imprint,
        nonce: tst_info.nonce.map(|nonce| nonce.as_bytes().to_vec()),
    })
}
