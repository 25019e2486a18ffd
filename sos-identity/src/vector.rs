//! Identity vectors: 32 canonical bytes from SHA-256 of a validated name and role.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sos_core::{DomainHasher, Sha256Digest};

use crate::error::{Error, Result};

/// The version tag hashed in front of every (name, role) pair.
///
/// Changing the algorithm means a new tag (`sos-identity/v2`), never a silent change.
pub const VERSION_TAG: &str = "sos-identity/v1";

/// The number of dimensions of an identity vector.
pub const DIMENSIONS: usize = 16;

/// The longest accepted name or role, in UTF-8 bytes.
pub const MAX_FIELD_LEN: usize = 256;

/// Which input a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// The agent's name.
    Name,
    /// The agent's role.
    Role,
}

impl Field {
    /// `"name"` or `"role"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Role => "role",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks one name or role against the rules of `docs/identity.md`: 1 to [`MAX_FIELD_LEN`] bytes,
/// Unicode NFC, no control characters. The input is never trimmed, case-folded or normalised:
/// `"alice"` and `"alice "` are two different agents, and a non-NFC input is refused rather than
/// silently merged with its NFC form.
fn validate(field: Field, input: &str) -> Result<()> {
    let reason = if input.is_empty() {
        Some("it is empty")
    } else if input.len() > MAX_FIELD_LEN {
        Some("it is longer than 256 bytes")
    } else if input.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if input.chars().any(is_invisible) {
        Some("it contains an invisible or bidirectional formatting character")
    } else if !unicode_normalization::is_nfc(input) {
        Some("it is not in Unicode NFC; normalise it to NFC before registering")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidIdentity { field, input: truncate(input), reason }),
        None => Ok(()),
    }
}

/// Characters that render as nothing or reorder what surrounds them, so that two names could
/// look alike ("al\u{200B}ice") or one could pose as another ("\u{202E}ecila" shows as "alice"):
/// Unicode's `Default_Ignorable_Code_Point` (zero-width spaces and joiners, bidirectional marks,
/// embeddings, overrides and isolates, variation selectors, fillers, tags), the interlinear
/// annotation controls U+FFF9–U+FFFB and the line and paragraph separators U+2028–U+2029.
const INVISIBLE: [(char, char); 17] = [
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{2028}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFFB}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Whether `character` is one of [`INVISIBLE`].
fn is_invisible(character: char) -> bool {
    INVISIBLE.iter().any(|(first, last)| (*first..=*last).contains(&character))
}

/// At most 64 characters of untrusted input, with control characters escaped, for error messages.
fn truncate(input: &str) -> String {
    let mut shown: String = input.chars().take(64).flat_map(char::escape_debug).collect();
    if input.chars().count() > 64 {
        shown.push('…');
    }
    shown
}

macro_rules! text_newtype {
    ($(#[$meta:meta])* $name:ident, $field:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `input` (1 to 256 bytes, NFC, no control characters) without changing it.
            ///
            /// # Errors
            ///
            /// [`Error::InvalidIdentity`] naming the rule that was broken.
            pub fn new(input: impl Into<String>) -> Result<Self> {
                let input = input.into();
                validate($field, &input)?;
                Ok(Self(input))
            }

            /// The text, exactly as given.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Consumes the value and returns its text.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(input: &str) -> Result<Self> {
                Self::new(input)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
                Self::new(String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_newtype!(
    /// An agent's name: 1 to 256 bytes of NFC text without control characters, kept exactly as
    /// given (never trimmed or case-folded).
    ///
    /// ```
    /// use sos_identity::AgentName;
    ///
    /// assert!(AgentName::new("alice").is_ok());
    /// assert_ne!(AgentName::new("alice")?, AgentName::new("alice ")?);
    /// assert!(AgentName::new("bad\nname").is_err());
    /// assert!(AgentName::new("e\u{301}").is_err()); // decomposed é: not NFC
    /// # Ok::<(), sos_identity::Error>(())
    /// ```
    AgentName,
    Field::Name
);

text_newtype!(
    /// An agent's role, validated like [`AgentName`].
    AgentRole,
    Field::Role
);

/// The 16-dimensional identity of an agent: 32 canonical bytes.
///
/// `bytes = DomainHasher("sos-identity/v1").str_field(name).str_field(role).finish()`, that is
/// `SHA-256(u32be(15) ‖ "sos-identity/v1" ‖ u32be(len name) ‖ name ‖ u32be(len role) ‖ role)`.
/// The bytes read as 16 big-endian `u16` values `u`; [`IdentityVector::p`] gives
/// `u / 65536 ∈ [0, 1)` for aesthetics and [`IdentityVector::r`] gives `2u + 1 − 65536`, odd
/// integers in `[−65535, 65535]` (exact in `f32`), for routing.
///
/// ```
/// use sos_identity::IdentityVector;
///
/// let vector = IdentityVector::derive("alice", "researcher")?;
/// assert_eq!(vector, IdentityVector::derive("alice", "researcher")?);
/// assert_ne!(IdentityVector::derive("ab", "c")?, IdentityVector::derive("a", "bc")?);
/// assert!(vector.p().iter().all(|p| (0.0..1.0).contains(p)));
/// assert!(vector.r().iter().all(|r| r % 2 != 0));
/// # Ok::<(), sos_identity::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentityVector([u8; 32]);

impl IdentityVector {
    /// Validates `name` and `role` and derives their vector.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentity`] when either input breaks the rules of [`AgentName`].
    pub fn derive(name: &str, role: &str) -> Result<Self> {
        let name = AgentName::new(name)?;
        let role = AgentRole::new(role)?;
        Ok(Self::of(&name, &role))
    }

    /// The vector of an already validated (name, role).
    pub fn of(name: &AgentName, role: &AgentRole) -> Self {
        let mut hasher = DomainHasher::new(VERSION_TAG);
        // Both fields are at most 256 bytes, far below the u32 limit of a field, so neither
        // call can fail.
        let _ = hasher.str_field(name.as_str());
        let _ = hasher.str_field(role.as_str());
        Self(hasher.finish().to_bytes())
    }

    /// Wraps 32 canonical bytes (for example read back from storage).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 canonical bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The bytes as a [`Sha256Digest`] (they are one).
    pub const fn to_digest(self) -> Sha256Digest {
        Sha256Digest::from_bytes(self.0)
    }

    /// The 16 big-endian `u16` values.
    pub fn u(&self) -> [u16; DIMENSIONS] {
        std::array::from_fn(|index| u16::from_be_bytes([self.0[2 * index], self.0[2 * index + 1]]))
    }

    /// The aesthetic view: `u / 65536`, in `[0, 1)`. Exact in `f32` (16 significant bits).
    pub fn p(&self) -> [f32; DIMENSIONS] {
        self.u().map(|value| f32::from(value) / 65536.0)
    }

    /// The routing view: `2u + 1 − 65536`, odd integers in `[−65535, 65535]`, centred on zero.
    pub fn r(&self) -> [i32; DIMENSIONS] {
        self.u().map(|value| 2 * i32::from(value) + 1 - 65536)
    }

    /// Lowercase hex of the 32 bytes.
    pub fn to_hex(&self) -> String {
        self.to_digest().to_hex()
    }

    /// Parses 64 hex characters.
    ///
    /// # Errors
    ///
    /// [`Error::Core`] when the input is not 64 hex characters.
    pub fn from_hex(input: &str) -> Result<Self> {
        Ok(Self(Sha256Digest::from_hex(input)?.to_bytes()))
    }
}

impl fmt::Debug for IdentityVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityVector({})", self.to_hex())
    }
}

impl fmt::Display for IdentityVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for IdentityVector {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        Self::from_hex(input)
    }
}

impl Serialize for IdentityVector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for IdentityVector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&raw).map_err(serde::de::Error::custom)
    }
}
