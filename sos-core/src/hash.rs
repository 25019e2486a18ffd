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

/// Where the encoding goes: a running SHA-256 ([`DomainHasher`]) or a byte buffer
/// ([`DomainEncoder`]). The encoding itself is written once, by the functions below.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Sha256 {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// The domain tag with its length prefix, which starts every encoding.
#[inline]
fn put_domain(sink: &mut impl Sink, domain: &str) {
    // A domain tag is a short constant; saturating keeps this infallible, and no real tag comes
    // anywhere near 4 GiB.
    let length = u32::try_from(domain.len()).unwrap_or(u32::MAX);
    sink.put(&length.to_be_bytes());
    sink.put(domain.as_bytes());
}

/// One field: its length as a big-endian u32, then its bytes. Nothing is written when the field
/// is too long.
#[inline]
fn put_field(sink: &mut impl Sink, bytes: &[u8]) -> Result<()> {
    let length = u32::try_from(bytes.len()).map_err(|_| Error::FieldTooLong { len: bytes.len() })?;
    sink.put(&length.to_be_bytes());
    sink.put(bytes);
    Ok(())
}

/// An 8-byte integer field (big-endian), with its length prefix of 8.
#[inline]
fn put_integer(sink: &mut impl Sink, big_endian: [u8; 8]) {
    sink.put(&8u32.to_be_bytes());
    sink.put(&big_endian);
}

/// Streaming builder for a domain-separated, length-prefixed SHA-256 digest.
///
/// The domain tag names the purpose and version of the digest (`"sos-audit/entry/v1"`); fields
/// are appended in a fixed order that the purpose's own specification gives. [`DomainEncoder`]
/// writes the same bytes into a buffer instead.
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
        put_domain(&mut inner, domain);
        Self { inner }
    }

    /// Appends one field: its length as a big-endian u32, then its bytes.
    ///
    /// # Errors
    ///
    /// [`Error::FieldTooLong`] when the field is longer than `u32::MAX` bytes; the hasher is
    /// unchanged in that case.
    pub fn field(&mut self, bytes: &[u8]) -> Result<&mut Self> {
        put_field(&mut self.inner, bytes)?;
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
        put_integer(&mut self.inner, value.to_be_bytes());
        self
    }

    /// Appends an `i64` field, encoded as 8 big-endian two's-complement bytes.
    pub fn i64_field(&mut self, value: i64) -> &mut Self {
        put_integer(&mut self.inner, value.to_be_bytes());
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

/// The exact bytes a [`DomainHasher`] hashes, written into a caller's buffer, then hashed in one
/// pass.
///
/// For digests computed in a loop (a verifier re-hashing millions of entries): reusing one
/// buffer avoids an allocation per digest, and one SHA-256 call over contiguous bytes is faster
/// than one update per field. The encoding is the same code as [`DomainHasher`]'s, so both give
/// the same digest; [`DomainEncoder::as_bytes`] shows the preimage (the `encoding=` column of
/// the vectors in `docs/hashing.md`).
///
/// ```
/// use sos_core::{DomainEncoder, DomainHasher};
///
/// let mut buffer = Vec::new();
/// let mut encoder = DomainEncoder::new("example/v1", &mut buffer);
/// encoder.str_field("acme")?.u64_field(7);
/// assert_eq!(encoder.as_bytes()[..4], [0, 0, 0, 10]);
/// let mut hasher = DomainHasher::new("example/v1");
/// hasher.str_field("acme")?.u64_field(7);
/// assert_eq!(encoder.finish(), hasher.finish());
/// # Ok::<(), sos_core::Error>(())
/// ```
#[derive(Debug)]
pub struct DomainEncoder<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> DomainEncoder<'a> {
    /// Starts an encoding under `domain` in `out`, replacing what `out` held (its capacity is
    /// kept).
    #[inline]
    pub fn new(domain: &str, out: &'a mut Vec<u8>) -> Self {
        out.clear();
        put_domain(out, domain);
        Self { out }
    }

    /// Appends one field, as [`DomainHasher::field`].
    ///
    /// # Errors
    ///
    /// [`Error::FieldTooLong`] when the field is longer than `u32::MAX` bytes; nothing is written
    /// in that case.
    #[inline]
    pub fn field(&mut self, bytes: &[u8]) -> Result<&mut Self> {
        put_field(self.out, bytes)?;
        Ok(self)
    }

    /// Appends a UTF-8 string field.
    ///
    /// # Errors
    ///
    /// As [`DomainEncoder::field`].
    #[inline]
    pub fn str_field(&mut self, text: &str) -> Result<&mut Self> {
        self.field(text.as_bytes())
    }

    /// Appends a `u64` field, as [`DomainHasher::u64_field`].
    #[inline]
    pub fn u64_field(&mut self, value: u64) -> &mut Self {
        put_integer(self.out, value.to_be_bytes());
        self
    }

    /// Appends an `i64` field, as [`DomainHasher::i64_field`].
    #[inline]
    pub fn i64_field(&mut self, value: i64) -> &mut Self {
        put_integer(self.out, value.to_be_bytes());
        self
    }

    /// The bytes encoded so far: the preimage of the digest.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.out
    }

    /// The SHA-256 of the encoded bytes: the same digest a [`DomainHasher`] fed the same domain
    /// and fields gives. The buffer keeps the bytes.
    #[inline]
    pub fn finish(self) -> Sha256Digest {
        Sha256Digest::of(self.out)
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
