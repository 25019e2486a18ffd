//! C2SP `signed-note` with Ed25519 keys, and C2SP `tlog-checkpoint` bodies.
//!
//! A checkpoint is the text
//!
//! ```text
//! <origin>\n<tree size in decimal>\n<root hash in standard base64>\n
//! ```
//!
//! signed as a note: the text, a blank line, then one line per signature,
//! `— <key name> <base64(key id ‖ Ed25519 signature)>\n`, where the key id is the first 4 bytes of
//! `SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key)`. Keys are written as in Go's
//! `golang.org/x/mod/sumdb/note`: the verifier key `<name>+<key id hex>+<base64(0x01 ‖ public key)>`
//! and the signer key `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 ‖ seed)>`, so existing
//! transparency tooling reads both.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use sos_core::Sha256Digest;

/// The algorithm byte of an Ed25519 key in a note key string.
const ALGORITHM_ED25519: u8 = 0x01;
/// The largest note this parser reads, in bytes.
pub const MAX_NOTE_BYTES: usize = 1 << 20;
/// The most signature lines a note may carry.
pub const MAX_SIGNATURES: usize = 100;

/// What was wrong with a key, a note or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// A key string did not have the documented shape.
    #[error("malformed {which} key: {reason}; expect `{expected}`")]
    MalformedKey {
        /// `signer` or `verifier`.
        which: &'static str,
        /// What was wrong.
        reason: &'static str,
        /// The expected shape.
        expected: &'static str,
    },
    /// A key name is empty or contains a space, `+` or a newline.
    #[error(
        "invalid key name {name:?}: use a non-empty name without spaces, '+' or newlines (a URL-like log origin)"
    )]
    InvalidKeyName {
        /// The rejected name.
        name: String,
    },
    /// The note is not valid UTF-8, too large, or lacks the blank line before its signatures.
    #[error("malformed note: {reason}")]
    MalformedNote {
        /// What was wrong.
        reason: &'static str,
    },
    /// A signature line could not be parsed.
    #[error("malformed signature line {line}: {reason}")]
    MalformedSignature {
        /// The 1-based line number within the signature block.
        line: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A signature by a known key did not verify: the note was altered or forged.
    #[error("signature by {name} does not verify: the note was altered or signed by another key")]
    BadSignature {
        /// The key name.
        name: String,
    },
    /// None of the note's signatures is by a key the verifier knows.
    #[error("no signature by a known key (known: {known}); pass the log's verifier key")]
    UnknownSigner {
        /// The names of the known keys.
        known: String,
    },
    /// The checkpoint body did not have the C2SP `tlog-checkpoint` shape.
    #[error("malformed checkpoint: {reason}")]
    MalformedCheckpoint {
        /// What was wrong.
        reason: &'static str,
    },
    /// The checkpoint names another log.
    #[error("checkpoint origin {found:?} is not the expected {expected:?}")]
    WrongOrigin {
        /// The origin the checkpoint carries.
        found: String,
        /// The origin the verifier expected.
        expected: String,
    },
}

fn validate_key_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c == ' ' || c == '+' || c.is_control() || c.is_whitespace()) {
        return Err(NoteError::InvalidKeyName { name: name.to_owned() });
    }
    Ok(())
}

/// The 4-byte key id of an Ed25519 note key: `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[..4]`.
fn key_id(name: &str, public_key: &VerifyingKey) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ALGORITHM_ED25519]);
    hasher.update(public_key.as_bytes());
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Encodes `base64(0x01 ‖ key)`, the inverse of [`decode_typed_key`].
fn encode_typed_key(key: &[u8; 32]) -> String {
    let mut material = [0u8; 33];
    material[0] = ALGORITHM_ED25519;
    material[1..].copy_from_slice(key);
    STANDARD.encode(material)
}

/// Decodes `base64(0x01 ‖ 32 bytes)`.
fn decode_typed_key(which: &'static str, expected: &'static str, text: &str) -> Result<[u8; 32], NoteError> {
    let bytes = STANDARD.decode(text).map_err(|_| NoteError::MalformedKey {
        which,
        reason: "the key material is not standard base64",
        expected,
    })?;
    match bytes.split_first() {
        Some((&ALGORITHM_ED25519, key)) if key.len() == 32 => {
            let mut out = [0u8; 32];
            out.copy_from_slice(key);
            Ok(out)
        }
        Some((&ALGORITHM_ED25519, _)) => {
            Err(NoteError::MalformedKey { which, reason: "an Ed25519 key has 32 bytes", expected })
        }
        _ => Err(NoteError::MalformedKey {
            which,
            reason: "only Ed25519 keys (algorithm byte 0x01) are supported",
            expected,
        }),
    }
}

/// A note signing key: an Ed25519 key with a name (the log's origin).
///
/// Keep it outside the database: whoever can rewrite rows must not be able to re-sign.
pub struct NoteSigner {
    name: String,
    id: u32,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("id", &format_args!("{:08x}", self.id))
            .finish()
    }
}

const SIGNER_SHAPE: &str = "PRIVATE+KEY+<name>+<8 hex digits>+<base64 of 0x01 and the 32-byte seed>";
const VERIFIER_SHAPE: &str = "<name>+<8 hex digits>+<base64 of 0x01 and the 32-byte public key>";

impl NoteSigner {
    /// A new random key named `name`.
    ///
    /// # Errors
    ///
    /// [`NoteError::InvalidKeyName`].
    pub fn generate(name: &str) -> Result<Self, NoteError> {
        validate_key_name(name)?;
        let seed: [u8; 32] = rand::random();
        Ok(Self::from_seed(name, seed))
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let id = key_id(name, &key.verifying_key());
        Self { name: name.to_owned(), id, key }
    }

    /// Parses a signer key string, `PRIVATE+KEY+<name>+<id>+<base64(0x01 ‖ seed)>`.
    ///
    /// # Errors
    ///
    /// [`NoteError::MalformedKey`] or [`NoteError::InvalidKeyName`]; the id must match the key.
    pub fn from_key_string(text: &str) -> Result<Self, NoteError> {
        let malformed = |reason| NoteError::MalformedKey { which: "signer", reason, expected: SIGNER_SHAPE };
        let rest = text.trim_end_matches('\n');
        let rest =
            rest.strip_prefix("PRIVATE+KEY+").ok_or_else(|| malformed("it must start with PRIVATE+KEY+"))?;
        // The base64 part may itself contain '+', so split only twice.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("it needs a name, a key id and the key, separated by '+'"));
        };
        validate_key_name(name)?;
        let seed = decode_typed_key("signer", SIGNER_SHAPE, material)?;
        let signer = Self::from_seed(name, seed);
        if id_hex.len() != 8 || u32::from_str_radix(id_hex, 16).ok() != Some(signer.id) {
            return Err(malformed("the key id does not match the key"));
        }
        Ok(signer)
    }

    /// The signer key string, to store in a file only the signing process can read.
    pub fn to_key_string(&self) -> String {
        format!("PRIVATE+KEY+{}+{:08x}+{}", self.name, self.id, encode_typed_key(self.key.as_bytes()))
    }

    /// The matching verifier, to publish.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), id: self.id, key: self.key.verifying_key() }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs `text` (already validated by [`sign_note`]) and returns its signature line.
    fn signature_line(&self, text: &str) -> String {
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_be_bytes().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!("\u{2014} {} {}\n", self.name, STANDARD.encode(blob))
    }
}

/// A note verifier key: a name, a key id and an Ed25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    id: u32,
    key: VerifyingKey,
}

impl fmt::Debug for NoteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_key_string())
    }
}

impl NoteVerifier {
    /// Parses a verifier key string, `<name>+<id>+<base64(0x01 ‖ public key)>`.
    ///
    /// # Errors
    ///
    /// [`NoteError::MalformedKey`] or [`NoteError::InvalidKeyName`]; the id must match the key.
    pub fn from_key_string(text: &str) -> Result<Self, NoteError> {
        let malformed =
            |reason| NoteError::MalformedKey { which: "verifier", reason, expected: VERIFIER_SHAPE };
        let text = text.trim_end_matches('\n');
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(material)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("it needs a name, a key id and the key, separated by '+'"));
        };
        validate_key_name(name)?;
        let bytes = decode_typed_key("verifier", VERIFIER_SHAPE, material)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| malformed("the public key is not a valid Ed25519 point"))?;
        let id = key_id(name, &key);
        if id_hex.len() != 8 || u32::from_str_radix(id_hex, 16).ok() != Some(id) {
            return Err(malformed("the key id does not match the key"));
        }
        Ok(Self { name: name.to_owned(), id, key })
    }

    /// The verifier key string, to publish.
    pub fn to_key_string(&self) -> String {
        format!("{}+{:08x}+{}", self.name, self.id, encode_typed_key(self.key.as_bytes()))
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id.
    pub fn id(&self) -> u32 {
        self.id
    }
}

fn validate_note_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::MalformedNote { reason: "the text must end with a newline" });
    }
    if text.contains("\n\n") || text.starts_with('\n') {
        return Err(NoteError::MalformedNote { reason: "the text must not contain a blank line" });
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::MalformedNote { reason: "the text must not contain control characters" });
    }
    Ok(())
}

/// Signs `text` as a note: the text, a blank line, and one signature line.
///
/// # Errors
///
/// [`NoteError::MalformedNote`] when the text does not end with a newline, contains a blank line
/// or a control character.
pub fn sign_note(text: &str, signer: &NoteSigner) -> Result<String, NoteError> {
    validate_note_text(text)?;
    Ok(format!("{text}\n{}", signer.signature_line(text)))
}

/// A note whose signature by a known key verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNote {
    /// The signed text, ending with a newline.
    pub text: String,
    /// The names of the known keys whose signatures verified.
    pub signed_by: Vec<String>,
}

/// Parses a signed note and verifies it against `verifiers`.
///
/// Signatures by unknown keys are ignored (a note may carry cosignatures); a signature by a
/// known key that does not verify is an error; at least one known key must have signed.
///
/// # Errors
///
/// [`NoteError::MalformedNote`], [`NoteError::MalformedSignature`], [`NoteError::BadSignature`] or
/// [`NoteError::UnknownSigner`].
pub fn open_note(note: &[u8], verifiers: &[NoteVerifier]) -> Result<VerifiedNote, NoteError> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(NoteError::MalformedNote { reason: "it is larger than 1 MiB" });
    }
    let note =
        std::str::from_utf8(note).map_err(|_| NoteError::MalformedNote { reason: "it is not UTF-8" })?;
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::MalformedNote { reason: "no blank line before the signatures" })?;
    let text = &note[..=split];
    let signatures = &note[split + 2..];
    validate_note_text(text)?;
    if !signatures.ends_with('\n') {
        return Err(NoteError::MalformedNote { reason: "the signature block must end with a newline" });
    }
    let mut signed_by = Vec::new();
    let lines: Vec<&str> = signatures.trim_end_matches('\n').split('\n').collect();
    if lines.len() > MAX_SIGNATURES {
        return Err(NoteError::MalformedNote { reason: "more than 100 signatures" });
    }
    for (number, line) in lines.iter().enumerate() {
        let line_number = number + 1;
        let malformed = |reason| NoteError::MalformedSignature { line: line_number, reason };
        let rest = line
            .strip_prefix("\u{2014} ")
            .ok_or_else(|| malformed("it must start with an em dash and a space"))?;
        let (name, blob) =
            rest.split_once(' ').ok_or_else(|| malformed("it needs a key name and a signature"))?;
        validate_key_name(name).map_err(|_| malformed("the key name is invalid"))?;
        let blob = STANDARD.decode(blob).map_err(|_| malformed("the signature is not standard base64"))?;
        if blob.len() < 5 {
            return Err(malformed("the signature is shorter than a key id and one byte"));
        }
        let id = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        let Some(verifier) = verifiers.iter().find(|v| v.name == name && v.id == id) else {
            continue;
        };
        let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
            .map_err(|_| NoteError::BadSignature { name: name.to_owned() })?;
        verifier
            .key
            .verify_strict(text.as_bytes(), &signature)
            .map_err(|_| NoteError::BadSignature { name: name.to_owned() })?;
        if !signed_by.iter().any(|known: &String| known == name) {
            signed_by.push(name.to_owned());
        }
    }
    if signed_by.is_empty() {
        let known = verifiers.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ");
        return Err(NoteError::UnknownSigner { known });
    }
    Ok(VerifiedNote { text: text.to_owned(), signed_by })
}

/// A C2SP `tlog-checkpoint`: the log's origin, its size and its root hash at that size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin, a unique name such as `example.com/sos-audit/acme`.
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The RFC 9162 root hash of those leaves.
    pub root: Sha256Digest,
    /// Extension lines, each without its newline (empty for SOS checkpoints).
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint body, the text that is signed.
    pub fn to_text(&self) -> String {
        let mut text = format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root.as_bytes()));
        for line in &self.extensions {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    /// Parses a checkpoint body.
    ///
    /// # Errors
    ///
    /// [`NoteError::MalformedCheckpoint`].
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let malformed = |reason| NoteError::MalformedCheckpoint { reason };
        let body = text.strip_suffix('\n').ok_or_else(|| malformed("it must end with a newline"))?;
        let mut lines = body.split('\n');
        let origin =
            lines.next().filter(|o| !o.is_empty()).ok_or_else(|| malformed("the origin line is empty"))?;
        let size_text = lines.next().ok_or_else(|| malformed("the size line is missing"))?;
        if size_text.is_empty()
            || !size_text.bytes().all(|b| b.is_ascii_digit())
            || (size_text.len() > 1 && size_text.starts_with('0'))
        {
            return Err(malformed("the size must be a decimal number without leading zeros"));
        }
        let size = size_text.parse::<u64>().map_err(|_| malformed("the size does not fit in 64 bits"))?;
        let root_text = lines.next().ok_or_else(|| malformed("the root hash line is missing"))?;
        let root_bytes =
            STANDARD.decode(root_text).map_err(|_| malformed("the root hash is not standard base64"))?;
        let root: [u8; 32] = root_bytes.try_into().map_err(|_| malformed("the root hash is not 32 bytes"))?;
        let extensions: Vec<String> = lines.map(str::to_owned).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(malformed("extension lines must not be empty"));
        }
        Ok(Self { origin: origin.to_owned(), size, root: Sha256Digest::from_bytes(root), extensions })
    }

    /// Signs the checkpoint as a note.
    ///
    /// # Errors
    ///
    /// [`NoteError::MalformedNote`] when the origin contains a control character.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, NoteError> {
        sign_note(&self.to_text(), signer)
    }

    /// Opens a signed checkpoint, verifies its signature and checks its origin.
    ///
    /// # Errors
    ///
    /// Any [`NoteError`] of [`open_note`] and [`Checkpoint::parse`], or
    /// [`NoteError::WrongOrigin`].
    pub fn open(note: &[u8], verifier: &NoteVerifier, expected_origin: &str) -> Result<Self, NoteError> {
        let verified = open_note(note, std::slice::from_ref(verifier))?;
        let checkpoint = Self::parse(&verified.text)?;
        if checkpoint.origin != expected_origin {
            return Err(NoteError::WrongOrigin {
                found: checkpoint.origin,
                expected: expected_origin.to_owned(),
            });
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests;
