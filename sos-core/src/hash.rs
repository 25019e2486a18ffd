//! Domain-separated, length-prefixed SHA-256: the one way SOS crates hash structured data.
//!
//! The encoding is specified in `docs/hashing.md` with test vectors:
//!
//! ```text
//! digest = SHA-256( u32be(len(domain)) ‖ domain ‖ u32be(len(f1)) ‖ f1 ‖ … ‖ u32be(len(fn)) ‖ fn )
//! ```
//!
//! Every field carries its length, so `("ab", "c")` and `("a", "bc")` can never produce the same
//! bytes, and the domain tag keeps a digest made for one purpose from being replayed as another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result, truncate_for_error};

/// A SHA-256 digest: 32 bytes, shown and serialized as 64 lowercase hex characters.
///
/// ```
/// use sos_core::Sha256Digest;
///
/// let digest = Sha256Digest::of(b"abc");
/// assert_eq!(
///     digest.to_string(),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// assert_eq!(digest, digest.to_string().parse()?);
/// # Ok::<(), sos_core::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// The all-zero digest, used as the "previous hash" of the first entry of a chain.
    pub const ZERO: Self = Self([0; 32]);

    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Plain SHA-256 of `data`, without domain separation. Prefer [`DomainHasher`] for anything
    /// structured; this exists for digests of opaque blobs such as webhook bodies.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Copies out the 32 raw bytes.
    pub const fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDigest`] for any other length or a non-hex character.
    pub fn from_hex(input: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(input, &mut bytes)
            .map_err(|_| Error::InvalidDigest { input: truncate_for_error(input) })?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Sha256Digest {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        Self::from_hex(input)
    }
}

impl From<[u8; 32]> for Sha256Digest {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl AsRef<[u8]> for Sha256Digest {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&raw).map_err(serde::de::Error::custom)
    }
}

/// Streaming builder for a domain-separated, length-prefixed SHA-256 digest.
///
/// The domain tag names the purpose and version of the digest (`"sos-audit/entry/v1"`); fields
/// are appended in a fixed order that the purpose's own specification gives.
///
/// ```
/// use sos_core::DomainHasher;
///
/// let mut left = DomainHasher::new("example/v1");
/// left.field(b"ab")?.field(b"c")?;
/// let mut right = DomainHasher::new("example/v1");
/// right.field(b"a")?.field(b"bc")?;
/// assert_ne!(left.finish(), right.finish());
/// # Ok::<(), sos_core::Error>(())
/// ```
#[derive(Clone)]
pub struct DomainHasher {
    inner: Sha256,
}

impl DomainHasher {
    /// Starts a digest under `domain`.
    ///
    /// Domain tags are constants chosen by the crate that defines the digest, so they are not
    /// validated beyond their length: a tag longer than `u32::MAX` bytes cannot be written.
    pub fn new(domain: &str) -> Self {
        let mut inner = Sha256::new();
        // A domain tag is a short constant; saturating keeps this infallible, and no real tag
        // comes anywhere near 4 GiB.
        let length = u32::try_from(domain.len()).unwrap_or(u32::MAX);
        inner.update(length.to_be_bytes());
        inner.update(domain.as_bytes());
        Self { inner }
    }

    /// Appends one field: its length as a big-endian u32, then its bytes.
    ///
    /// # Errors
    ///
    /// [`Error::FieldTooLong`] when the field is longer than `u32::MAX` bytes; the hasher is
    /// unchanged in that case.
    pub fn field(&mut self, bytes: &[u8]) -> Result<&mut Self> {
        let length = u32::try_from(bytes.len()).map_err(|_| Error::FieldTooLong { len: bytes.len() })?;
        self.inner.update(length.to_be_bytes());
        self.inner.update(bytes);
        Ok(self)
    }

    /// Appends a UTF-8 string field.
    ///
    /// # Errors
    ///
    /// As [`DomainHasher::field`].
    pub fn str_field(&mut self, text: &str) -> Result<&mut Self> {
        self.field(text.as_bytes())
    }

    /// Appends a `u64` field, encoded as 8 big-endian bytes (with its length prefix of 8).
    pub fn u64_field(&mut self, value: u64) -> &mut Self {
        self.inner.update(8u32.to_be_bytes());
        self.inner.update(value.to_be_bytes());
        self
    }

    /// Appends an `i64` field, encoded as 8 big-endian two's-complement bytes.
    pub fn i64_field(&mut self, value: i64) -> &mut Self {
        self.inner.update(8u32.to_be_bytes());
        self.inner.update(value.to_be_bytes());
        self
    }

    /// Finishes the digest.
    pub fn finish(self) -> Sha256Digest {
        Sha256Digest(self.inner.finalize().into())
    }
}

impl fmt::Debug for DomainHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainHasher").finish_non_exhaustive()
    }
}

/// Digest of `fields` under `domain`, in one call.
///
/// # Errors
///
/// [`Error::FieldTooLong`] when a field is longer than `u32::MAX` bytes.
///
/// ```
/// let digest = sos_core::digest_fields("sos-core/test/v1", &[b"ab", b"c"])?;
/// assert_ne!(digest, sos_core::digest_fields("sos-core/test/v1", &[b"a", b"bc"])?);
/// # Ok::<(), sos_core::Error>(())
/// ```
pub fn digest_fields(domain: &str, fields: &[&[u8]]) -> Result<Sha256Digest> {
    let mut hasher = DomainHasher::new(domain);
    for field in fields {
        hasher.field(field)?;
    }
    Ok(hasher.finish())
}
