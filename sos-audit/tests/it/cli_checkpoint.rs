//! `sos-audit keygen`, `checkpoint`, `prove`, `verify-proof`, `tiles` and `verify --checkpoint`,
//! run as an operator and an auditor would run them.

use std::path::Path;
use std::process::{Command, Output};

use sos_audit::{AuditStore, PgAuditChain, SqliteAuditChain};
use sos_testkit::{PgTestDatabase, SqliteTestDatabase};

use crate::entry;

fn sos_audit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sos-audit"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("the sos-audit binary runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Runs a command that must succeed and returns its standard output.
fn ok(args: &[&str]) -> String {
    let output = sos_audit(args);
    assert_eq!(output.status.code(), Some(0), "{args:?}: {}", text(&output));
    stdout(&output)
}

fn keygen(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("log.key");
    let verifier = ok(&["keygen", "--name", "example.com/sos-audit", "--out", path(&key)]);
    (key, verifier.trim().to_owned())
}

async fn sqlite_chain(length: u64, first: u64) -> (SqliteTestDatabase, SqliteAuditChain) {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let chain = SqliteAuditChain::new(database.pool().clone());
    for index in first..first + length {
        chain.append(entry("acme", index)).await.expect("append");
    }
    (database, chain)
}

#[tokio::test]
async fn keygen_writes_a_private_key_once_and_refuses_loose_permissions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, verifier) = keygen(dir.path());
    assert!(verifier.starts_with("example.com/sos-audit+"), "{verifier}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key).expect("key").permissions().mode() & 0o777, 0o600);
    }
    let again = sos_audit(&["keygen", "--name", "example.com/sos-audit", "--out", path(&key)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("never overwritten"), "{}", text(&again));

    let (database, _chain) = sqlite_chain(2, 0).await;
    let url = database.url();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let loose = sos_audit(&["checkpoint", "--database-url", &url, "--signer-key", path(&key)]);
        assert_eq!(loose.status.code(), Some(2));
        assert!(text(&loose).contains("chmod 600"), "{}", text(&loose));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    // The public key is not a signing key, and garbage is not a key.
    let public = dir.path().join("log.pub");
    std::fs::write(&public, &verifier).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let wrong = sos_audit(&["checkpoint", "--database-url", &url, "--signer-key", path(&public)]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(text(&wrong).contains("verifier key"), "{}", text(&wrong));
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "PRIVATE+KEY+x+00000000+AAAA").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let bad = sos_audit(&["checkpoint", "--database-url", &url, "--signer-key", path(&garbage)]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad).contains("malformed signer key"), "{}", text(&bad));
}

/// The auditor's flow of the README, end to end, and what it catches.
#[tokio::test]
async fn checkpoint_prove_verify_proof_and_verify_against_checkpoints() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, verifier) = keygen(dir.path());
    let (database, chain) = sqlite_chain(5, 0).await;
    let url = database.url();
    let anchors = dir.path().join("anchors");

    // Operator: sign a checkpoint and give it to the auditor.
    let note = ok(&[
        "checkpoint",
        "--database-url",
        &url,
        "--signer-key",
        path(&key),
        "--tenant",
        "acme",
        "--anchor-dir",
        path(&anchors),
    ]);
    assert!(note.starts_with("example.com/sos-audit/acme\n5\n"), "{note}");
    assert_eq!(
        std::fs::read_to_string(anchors.join("acme/00000000000000000005.checkpoint")).expect("anchor"),
        note
    );
    let checkpoint5 = dir.path().join("acme-5.checkpoint");
    std::fs::write(&checkpoint5, &note).expect("write");

    // Operator: prove entry 3; auditor: verify it with the public key only.
    let proof = ok(&["prove", "--database-url", &url, "--tenant", "acme", "--seq", "3"]);
    let proof_file = dir.path().join("proof.json");
    std::fs::write(&proof_file, &proof).expect("write");
    let verified = ok(&["verify-proof", "--proof", path(&proof_file), "--verifier-key", &verifier]);
    assert!(verified.starts_with("verified: tenant acme entry 3"), "{verified}");
    ok(&[
        "verify-proof",
        "--proof",
        path(&proof_file),
        "--verifier-key",
        &verifier,
        "--checkpoint",
        path(&checkpoint5),
    ]);

    // The entry itself, from an export, must be the proven leaf.
    let exported = ok(&["export", "--database-url", &url, "--tenant", "acme"]);
    let lines: Vec<&str> = exported.lines().collect();
    let entry3 = dir.path().join("entry3.jsonl");
    std::fs::write(&entry3, lines[2]).expect("write");
    ok(&[
        "verify-proof",
        "--proof",
        path(&proof_file),
        "--verifier-key",
        &verifier,
        "--entry",
        path(&entry3),
    ]);
    let entry4 = dir.path().join("entry4.jsonl");
    std::fs::write(&entry4, lines[3]).expect("write");
    let other = sos_audit(&[
        "verify-proof",
        "--proof",
        path(&proof_file),
        "--verifier-key",
        &verifier,
        "--entry",
        path(&entry4),
    ]);
    assert_eq!(other.status.code(), Some(1), "{}", text(&other));
    let edited = dir.path().join("edited.jsonl");
    std::fs::write(&edited, lines[2].replacen("record/2", "record/X", 1)).expect("write");
    let forged_entry = sos_audit(&[
        "verify-proof",
        "--proof",
        path(&proof_file),
        "--verifier-key",
        &verifier,
        "--entry",
        path(&edited),
    ]);
    assert_eq!(forged_entry.status.code(), Some(1), "{}", text(&forged_entry));

    // A proof with an altered hash fails; a malformed one is a usage error; another key fails.
    let mut altered: serde_json::Value = serde_json::from_str(&proof).expect("json");
    altered["proof"]["hashes"][0] = serde_json::json!("00".repeat(32));
    std::fs::write(&proof_file, altered.to_string()).expect("write");
    let bad = sos_audit(&["verify-proof", "--proof", path(&proof_file), "--verifier-key", &verifier]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(stdout(&bad).starts_with("FAILED: "), "{}", text(&bad));
    std::fs::write(&proof_file, &proof[..proof.len() / 2]).expect("write");
    let truncated = sos_audit(&["verify-proof", "--proof", path(&proof_file), "--verifier-key", &verifier]);
    assert_eq!(truncated.status.code(), Some(2), "{}", text(&truncated));
    std::fs::write(&proof_file, &proof).expect("write");
    let (_other_key, other_verifier) = keygen(&dir.path().join("other").tap_create());
    let wrong_key =
        sos_audit(&["verify-proof", "--proof", path(&proof_file), "--verifier-key", &other_verifier]);
    assert_eq!(wrong_key.status.code(), Some(1), "{}", text(&wrong_key));

    // The chain matches its checkpoint.
    let matches = ok(&[
        "verify",
        "--database-url",
        &url,
        "--checkpoint",
        path(&checkpoint5),
        "--verifier-key",
        &verifier,
    ]);
    assert!(matches.contains("checkpoint matches: tenant acme: size 5"), "{matches}");

    // A second checkpoint, then a careful truncation of the tail (entries and head row).
    for index in 5..7 {
        chain.append(entry("acme", index)).await.expect("append");
    }
    let note7 = ok(&["checkpoint", "--database-url", &url, "--signer-key", path(&key), "--tenant", "acme"]);
    let checkpoint7 = dir.path().join("acme-7.checkpoint");
    std::fs::write(&checkpoint7, &note7).expect("write");
    sqlx::query("DROP TRIGGER audit_entries_no_delete").execute(database.pool()).await.expect("drop trigger");
    sqlx::query("DELETE FROM audit_entries WHERE tenant = 'acme' AND seq > 5")
        .execute(database.pool())
        .await
        .expect("delete");
    sqlx::query("UPDATE audit_heads SET seq = 5, hash = (SELECT hash FROM audit_entries WHERE tenant = 'acme' AND seq = 5)")
        .execute(database.pool())
        .await
        .expect("rewind");
    let fooled = sos_audit(&["verify", "--database-url", &url, "--tenant", "acme"]);
    assert_eq!(fooled.status.code(), Some(0), "without the checkpoint the cut is invisible");
    let caught = sos_audit(&[
        "verify",
        "--database-url",
        &url,
        "--checkpoint",
        path(&checkpoint5),
        "--checkpoint",
        path(&checkpoint7),
        "--verifier-key",
        &verifier,
    ]);
    assert_eq!(caught.status.code(), Some(1), "{}", text(&caught));
    assert!(
        stdout(&caught).contains(
            "TAMPERED: tenant acme: truncated: the checkpoint signs 7 entries but the log has only 5"
        ),
        "{}",
        text(&caught)
    );

    // A log that forked from the checkpoint: another history of the same tenant, intact as a
    // chain, signed by the same key (a compromised operator showing auditors different logs).
    let (forked_database, _forked) = sqlite_chain(5, 100).await;
    let forked_url = forked_database.url();
    let forked_note =
        ok(&["checkpoint", "--database-url", &forked_url, "--signer-key", path(&key), "--tenant", "acme"]);
    let forked_checkpoint = dir.path().join("forked-5.checkpoint");
    std::fs::write(&forked_checkpoint, &forked_note).expect("write");
    let forked_file = dir.path().join("forked.jsonl");
    std::fs::write(&forked_file, ok(&["export", "--database-url", &forked_url, "--tenant", "acme"]))
        .expect("write");
    let forked = sos_audit(&[
        "verify",
        "--file",
        path(&forked_file),
        "--checkpoint",
        path(&checkpoint5),
        "--verifier-key",
        &verifier,
    ]);
    assert_eq!(forked.status.code(), Some(1), "{}", text(&forked));
    assert!(stdout(&forked).contains("intact: "), "the fork is a valid chain: {}", text(&forked));
    assert!(
        stdout(&forked).contains("TAMPERED: tenant acme: forked: the log's first 5 entries"),
        "{}",
        text(&forked)
    );
    let split = sos_audit(&[
        "verify",
        "--file",
        path(&forked_file),
        "--checkpoint",
        path(&checkpoint5),
        "--checkpoint",
        path(&forked_checkpoint),
        "--verifier-key",
        &verifier,
    ]);
    assert_eq!(split.status.code(), Some(1), "{}", text(&split));
    assert!(
        stdout(&split).contains("SPLIT VIEW: tenant acme: split view: two signed checkpoints of size 5"),
        "{}",
        text(&split)
    );

    // A checkpoint signed by another key, or edited, is refused before anything is compared.
    let mut edited_note = note.clone();
    edited_note = edited_note.replacen("\n5\n", "\n4\n", 1);
    let edited_checkpoint = dir.path().join("edited.checkpoint");
    std::fs::write(&edited_checkpoint, edited_note).expect("write");
    let refused = sos_audit(&[
        "verify",
        "--database-url",
        &url,
        "--checkpoint",
        path(&edited_checkpoint),
        "--verifier-key",
        &verifier,
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("not signed by the log's key"), "{}", text(&refused));
}

trait TapCreate {
    fn tap_create(self) -> Self;
}

impl TapCreate for std::path::PathBuf {
    fn tap_create(self) -> Self {
        std::fs::create_dir_all(&self).expect("create dir");
        self
    }
}

#[tokio::test]
async fn checkpoint_and_tiles_on_postgres() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, verifier) = keygen(dir.path());
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let chain = PgAuditChain::new(database.pool().clone());
    for index in 0..260 {
        chain.append(entry("acme", index)).await.expect("append");
    }
    chain.append(entry("globex", 0)).await.expect("append");
    let notes = ok(&["checkpoint", "--database-url", database.url(), "--signer-key", path(&key)]);
    assert!(notes.contains("example.com/sos-audit/acme\n260\n"), "{notes}");
    assert!(notes.contains("example.com/sos-audit/globex\n1\n"), "{notes}");
    let proof = ok(&["prove", "--database-url", database.url(), "--tenant", "acme", "--seq", "258"]);
    let proof_file = dir.path().join("proof.json");
    std::fs::write(&proof_file, proof).expect("write");
    ok(&["verify-proof", "--proof", path(&proof_file), "--verifier-key", &verifier]);
    let uncovered =
        sos_audit(&["prove", "--database-url", database.url(), "--tenant", "acme", "--seq", "261"]);
    assert_eq!(uncovered.status.code(), Some(2));
    assert!(text(&uncovered).contains("no entry 261"), "{}", text(&uncovered));

    let tiles = dir.path().join("tiles");
    ok(&["tiles", "--database-url", database.url(), "--tenant", "acme", "--out", path(&tiles)]);
    assert!(tiles.join("tile/0/000").is_file());
    assert_eq!(std::fs::read(tiles.join("tile/0/001.p/4")).expect("partial tile").len(), 4 * 32);
    assert_eq!(std::fs::read(tiles.join("tile/entries/001.p/4")).expect("bundle").len(), 4 * 34);
    assert!(tiles.join("tile/1/000.p/1").is_file());
    assert!(
        std::fs::read_to_string(tiles.join("checkpoint"))
            .expect("checkpoint")
            .starts_with("example.com/sos-audit/acme\n260\n")
    );
}
