//! Tenant identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, truncate_for_error};

/// The id of a tenant: the boundary that every stored row and every signal carries.
///
/// A `TenantId` is 1 to [`TenantId::MAX_LEN`] characters from `a-z`, `0-9`, `-` and `_`, and
/// starts with a letter or a digit. The set is deliberately small: tenant ids end up in URLs,
/// file names, log lines and SQL parameters, and none of those need escaping for it.
/// Parsing never changes the input (no trimming, no case folding): `"Acme"` is rejected rather
/// than silently merged with `"acme"`.
///
/// ```
/// use sos_core::TenantId;
///
/// let tenant: TenantId = "acme-realty".parse()?;
/// assert_eq!(tenant.as_str(), "acme-realty");
/// assert!("Acme Realty".parse::<TenantId>().is_err());
/// # Ok::<(), sos_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct TenantId(String);

impl TenantId {
    /// The longest accepted tenant id, in bytes (all accepted characters are one byte).
    pub const MAX_LEN: usize = 64;

    /// Parses and validates a tenant id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTenant`] when the input is empty, too long, starts with `-` or `_`, or
    /// contains a character outside `a-z`, `0-9`, `-`, `_`.
    pub fn new(input: impl Into<String>) -> Result<Self> {
        let input = input.into();
        match validate_tenant(&input) {
            Ok(()) => Ok(Self(input)),
            Err(reason) => Err(Error::InvalidTenant { input: truncate_for_error(&input), reason }),
        }
    }

    /// The tenant id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the id and returns its string.
    pub fn into_string(self) -> String {
        self.0
    }
}

fn validate_tenant(input: &str) -> std::result::Result<(), &'static str> {
    let bytes = input.as_bytes();
    let Some(first) = bytes.first() else {
        return Err("it is empty");
    };
    if bytes.len() > TenantId::MAX_LEN {
        return Err("it is longer than 64 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("it must start with a lowercase letter or a digit");
    }
    if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_') {
        return Err("it contains a character outside a-z, 0-9, '-' and '_'");
    }
    Ok(())
}

impl FromStr for TenantId {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        Self::new(input)
    }
}

impl TryFrom<String> for TenantId {
    type Error = Error;

    fn try_from(input: String) -> Result<Self> {
        Self::new(input)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::new(raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TenantId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}
