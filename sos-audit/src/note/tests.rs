//! Signed-note and checkpoint tests, against Go's `sumdb/note` and the C2SP spec examples.

use proptest::prelude::*;

use super::*;

/// golang.org/x/mod/sumdb/note, `note_test.go` and the package documentation.
const GO_SIGNER: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_TEXT: &str =
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
/// C2SP signed-note, the example of the specification.
const SPEC_VERIFIER: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

#[test]
fn go_sumdb_note_vector_signs_byte_for_byte() {
    let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    assert_eq!(signer.verifier().to_key_string(), GO_VERIFIER);
    assert_eq!(signer.to_key_string(), GO_SIGNER);
    // Ed25519 is deterministic, so our signature must equal Go's.
    assert_eq!(sign_note(GO_TEXT, &signer).unwrap(), GO_NOTE);
    let verifier = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    let opened = open_note(GO_NOTE.as_bytes(), &[verifier]).unwrap();
    assert_eq!(opened.text, GO_TEXT);
    assert_eq!(opened.signed_by, ["PeterNeumann"]);
}

#[test]
fn c2sp_spec_example_verifies() {
    let verifier = NoteVerifier::from_key_string(SPEC_VERIFIER).unwrap();
    let opened = open_note(SPEC_NOTE.as_bytes(), &[verifier]).unwrap();
    assert_eq!(opened.text, "This is an example message.\n");
}

#[test]
fn forged_and_foreign_notes_are_refused() {
    let verifier = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    let altered = GO_NOTE.replace("cryptography", "cryptographY");
    assert!(matches!(
        open_note(altered.as_bytes(), std::slice::from_ref(&verifier)),
        Err(NoteError::BadSignature { .. })
    ));
    let other = NoteVerifier::from_key_string(SPEC_VERIFIER).unwrap();
    assert!(matches!(open_note(GO_NOTE.as_bytes(), &[other]), Err(NoteError::UnknownSigner { .. })));
    // The same name with another key: an impostor key is not the log's key.
    let impostor = NoteSigner::generate("PeterNeumann").unwrap();
    let forged = sign_note(GO_TEXT, &impostor).unwrap();
    assert!(open_note(forged.as_bytes(), std::slice::from_ref(&verifier)).is_err());
    for broken in [
        &GO_NOTE[..GO_NOTE.len() - 1],
        GO_TEXT,
        "",
        "text\n\n- PeterNeumann abc\n",
        "text\n\n\u{2014} PeterNeumann !!!\n",
        "text\n\n\u{2014} PeterNeumann AAAA\n",
    ] {
        assert!(
            open_note(broken.as_bytes(), std::slice::from_ref(&verifier)).is_err(),
            "{broken:?} accepted"
        );
    }
    assert!(open_note(&[0xff, 0xfe, b'\n', b'\n'], &[verifier]).is_err());
}

#[test]
fn mangled_keys_are_refused() {
    assert!(NoteVerifier::from_key_string(GO_VERIFIER).is_ok());
    let bytes = GO_VERIFIER.as_bytes();
    for i in 0..bytes.len() {
        let mut mangled = bytes.to_vec();
        mangled[i] = mangled[i].wrapping_add(1);
        if let Ok(text) = std::str::from_utf8(&mangled) {
            assert!(NoteVerifier::from_key_string(text).is_err(), "byte {i} changed and still accepted");
        }
    }
    for prefix_len in 0..GO_VERIFIER.len() {
        assert!(NoteVerifier::from_key_string(&GO_VERIFIER[..prefix_len]).is_err());
    }
    assert!(NoteSigner::from_key_string(GO_VERIFIER).is_err());
    assert!(NoteSigner::from_key_string(&GO_SIGNER.replace("c74f20a3", "c74f20a4")).is_err());
    assert!(NoteSigner::generate("has space").is_err());
    assert!(NoteSigner::generate("").is_err());
}

#[test]
fn checkpoint_roundtrip_and_origin_check() {
    let signer = NoteSigner::generate("example.com/sos-audit/acme").unwrap();
    let checkpoint = Checkpoint {
        origin: "example.com/sos-audit/acme".into(),
        size: 8,
        root: Sha256Digest::from_hex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
            .unwrap(),
        extensions: vec![],
    };
    assert_eq!(
        checkpoint.to_text(),
        "example.com/sos-audit/acme\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    );
    let note = checkpoint.sign(&signer).unwrap();
    let opened = Checkpoint::open(note.as_bytes(), &signer.verifier(), "example.com/sos-audit/acme").unwrap();
    assert_eq!(opened, checkpoint);
    assert!(matches!(
        Checkpoint::open(note.as_bytes(), &signer.verifier(), "example.com/sos-audit/globex"),
        Err(NoteError::WrongOrigin { .. })
    ));
    for bad in [
        "",
        "o\n",
        "o\n8\n",
        "o\n08\nAA==\n",
        "o\n-1\nAA==\n",
        "o\n8\nAA==\n",
        "\n8\nAA==\n",
        "o\n99999999999999999999\nAA==\n",
    ] {
        assert!(Checkpoint::parse(bad).is_err(), "{bad:?} accepted");
    }
}

proptest! {
    #[test]
    fn note_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let verifier = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
        let _ = open_note(&data, &[verifier]);
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = Checkpoint::parse(text);
            let _ = NoteVerifier::from_key_string(text);
            let _ = NoteSigner::from_key_string(text);
        }
    }

    #[test]
    fn sign_then_open_roundtrips(size in any::<u64>(), root in any::<[u8; 32]>()) {
        let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
        let checkpoint = Checkpoint { origin: "o.example/log".into(), size, root: Sha256Digest::from_bytes(root), extensions: vec![] };
        let note = checkpoint.sign(&signer).unwrap();
        prop_assert_eq!(Checkpoint::open(note.as_bytes(), &signer.verifier(), "o.example/log").unwrap(), checkpoint);
    }
}
