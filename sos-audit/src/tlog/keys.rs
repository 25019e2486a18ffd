//! Signing and verifier key files.

use std::io::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::note::{NoteSigner, NoteVerifier};

/// The largest key file read (a key string is about 100 bytes).
const MAX_KEY_FILE_BYTES: u64 = 4096;

fn key_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::KeyFile { path: path.to_owned(), reason: reason.into() }
}

fn read_key_file(path: &Path) -> Result<String> {
    let metadata = std::fs::metadata(path).map_err(|error| {
        key_error(
            path,
            format!("cannot read it ({error}); give the path of a key made by `sos-audit keygen`"),
        )
    })?;
    if !metadata.is_file() {
        return Err(key_error(path, "it is not a regular file"));
    }
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(key_error(path, "it is larger than a key file can be"));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| key_error(path, format!("cannot read it as UTF-8 text ({error})")))?;
    Ok(text.trim().to_owned())
}

/// Loads a signer key (`PRIVATE+KEY+…`, as written by [`generate_signer_file`]).
///
/// On Unix the file must not be readable by group or others: a signing key that other accounts
/// can read is refused.
///
/// # Errors
///
/// [`Error::KeyFile`] saying what is wrong: unreadable, too widely readable, a verifier key given
/// where a signer key is expected, or a malformed key.
pub fn load_signer(path: &Path) -> Result<NoteSigner> {
    let text = read_key_file(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path).map_err(Error::Io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(key_error(
                path,
                format!("it is readable by other accounts (mode {:o}); run `chmod 600` on it", mode & 0o777),
            ));
        }
    }
    if !text.starts_with("PRIVATE+KEY+") {
        return Err(key_error(
            path,
            "it holds no signer key (a signer key starts with PRIVATE+KEY+; is this the public verifier key?)",
        ));
    }
    NoteSigner::from_key_string(&text).map_err(|error| key_error(path, error.to_string()))
}

/// Loads a verifier key (`<name>+<id>+<key>`) from a file, or takes `source` itself as the key
/// string when it is one.
///
/// # Errors
///
/// [`Error::KeyFile`] when the file cannot be read or holds a signer key (never publish it) or a
/// malformed key.
pub fn load_verifier(source: &str) -> Result<NoteVerifier> {
    if let Ok(verifier) = NoteVerifier::from_key_string(source) {
        return Ok(verifier);
    }
    let path = Path::new(source);
    let text = read_key_file(path)?;
    if text.starts_with("PRIVATE+KEY+") {
        return Err(key_error(
            path,
            "it holds a private signer key; give the verifier key (`sos-audit keygen` prints it), and keep the signer key secret",
        ));
    }
    NoteVerifier::from_key_string(&text).map_err(|error| key_error(path, error.to_string()))
}

/// Generates a signer key named `name` (the log's name, such as `example.com/sos-audit`), writes
/// it to a new file at `path` readable only by its owner, and returns it. An existing file is
/// never overwritten.
///
/// # Errors
///
/// [`Error::Note`] for an invalid name, [`Error::KeyFile`] when the file exists or cannot be
/// written.
pub fn generate_signer_file(path: &Path, name: &str) -> Result<NoteSigner> {
    let signer = NoteSigner::generate(name)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            key_error(path, "it already exists; a key file is never overwritten, choose another path")
        } else {
            key_error(path, format!("cannot create it ({error})"))
        }
    })?;
    file.write_all(format!("{}\n", signer.to_key_string()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| key_error(path, format!("cannot write it ({error})")))?;
    Ok(signer)
}
