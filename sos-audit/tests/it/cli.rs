//! The `sos-audit` binary, run as a user would run it.

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

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn postgres_chain(length: u64) -> (PgTestDatabase, PgAuditChain) {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let chain = PgAuditChain::new(database.pool().clone());
    for index in 0..length {
        chain.append(entry("acme", index)).await.expect("append");
    }
    chain.append(entry("globex", 0)).await.expect("append");
    (database, chain)
}

#[tokio::test]
async fn export_then_verify_file_and_find_edits() {
    let (database, _chain) = postgres_chain(5).await;
    let exported = sos_audit(&["export", "--database-url", database.url(), "--tenant", "acme"]);
    assert_eq!(exported.status.code(), Some(0), "{}", stderr(&exported));
    let text = stdout(&exported);
    assert_eq!(text.lines().count(), 5);

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("chain.jsonl");
    std::fs::write(&file, &text).expect("write");
    let path = file.to_str().expect("utf-8 path");
    let intact = sos_audit(&["verify", "--file", path]);
    assert_eq!(intact.status.code(), Some(0), "{}{}", stdout(&intact), stderr(&intact));
    assert!(stdout(&intact).starts_with("intact: "), "{}", stdout(&intact));

    // Swap lines 2 and 3 of the file.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(1, 2);
    std::fs::write(&file, lines.join("\n")).expect("write");
    let swapped = sos_audit(&["verify", "--file", path]);
    assert_eq!(swapped.status.code(), Some(1));
    assert!(
        stdout(&swapped).contains("first bad entry at seq 2: entries 2 and 3 are swapped"),
        "{}",
        stdout(&swapped)
    );

    // Delete line 2.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    std::fs::write(&file, lines.join("\n")).expect("write");
    let deleted = sos_audit(&["verify", "--file", path]);
    assert_eq!(deleted.status.code(), Some(1));
    assert!(stdout(&deleted).contains("seq 2: entry 2 is missing (deleted)"), "{}", stdout(&deleted));

    // Edit a field of line 4.
    let edited = text.replacen("record/3", "record/X", 1);
    std::fs::write(&file, &edited).expect("write");
    let modified = sos_audit(&["verify", "--file", path]);
    assert_eq!(modified.status.code(), Some(1));
    assert!(stdout(&modified).contains("seq 4: entry 4 was modified"), "{}", stdout(&modified));

    // Drop the last line: only a head recorded elsewhere notices.
    let last_head = {
        let last = text.lines().last().expect("a last line");
        let entry = sos_audit::parse_jsonl_line(last.as_bytes(), 5).expect("parse");
        entry.as_head().to_string()
    };
    let truncated: Vec<&str> = text.lines().take(4).collect();
    std::fs::write(&file, truncated.join("\n")).expect("write");
    assert_eq!(sos_audit(&["verify", "--file", path]).status.code(), Some(0));
    let caught = sos_audit(&["verify", "--file", path, "--expect-head", &last_head]);
    assert_eq!(caught.status.code(), Some(1));
    assert!(stdout(&caught).contains("truncated"), "{}", stdout(&caught));

    // A malformed line is a usage/I-O error that names the line.
    let mut broken: Vec<&str> = text.lines().collect();
    broken[2] = "{\"tenant\": \"acme\", \"seq\": ";
    std::fs::write(&file, broken.join("\n")).expect("write");
    let malformed = sos_audit(&["verify", "--file", path]);
    assert_eq!(malformed.status.code(), Some(2));
    assert!(stderr(&malformed).contains("line 3"), "{}", stderr(&malformed));
}

#[tokio::test]
async fn verify_database_and_expect_head_catches_a_careful_truncation() {
    let (database, chain) = postgres_chain(4).await;
    let all = sos_audit(&["verify", "--database-url", database.url()]);
    assert_eq!(all.status.code(), Some(0), "{}{}", stdout(&all), stderr(&all));
    assert!(stdout(&all).contains("tenant acme: 4 entries"), "{}", stdout(&all));
    assert!(stdout(&all).contains("tenant globex: 1 entries"), "{}", stdout(&all));

    let recorded = chain.head(&crate::tenant("acme")).await.expect("head").expect("a head").to_string();
    // A careful attacker deletes the tail around the trigger and rewinds the head row too.
    sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER USER")
        .execute(database.pool())
        .await
        .expect("disable");
    sqlx::query("DELETE FROM audit_entries WHERE tenant = 'acme' AND seq = 4")
        .execute(database.pool())
        .await
        .expect("delete");
    sqlx::query(
        "UPDATE audit_heads SET seq = 3, hash = (SELECT hash FROM audit_entries WHERE tenant = 'acme' AND seq = 3) WHERE tenant = 'acme'",
    )
    .execute(database.pool())
    .await
    .expect("rewind head");
    let fooled = sos_audit(&["verify", "--database-url", database.url(), "--tenant", "acme"]);
    assert_eq!(fooled.status.code(), Some(0), "without an outside head the truncation is invisible");
    let caught = sos_audit(&[
        "verify",
        "--database-url",
        database.url(),
        "--tenant",
        "acme",
        "--expect-head",
        &recorded,
    ]);
    assert_eq!(caught.status.code(), Some(1), "{}{}", stdout(&caught), stderr(&caught));
    assert!(stdout(&caught).contains("first bad entry at seq 4"), "{}", stdout(&caught));
}

#[tokio::test]
async fn verify_sqlite_database() {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let chain = SqliteAuditChain::new(database.pool().clone());
    for index in 0..3 {
        chain.append(entry("acme", index)).await.expect("append");
    }
    let output = sos_audit(&["verify", "--database-url", &database.url()]);
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    assert!(stdout(&output).contains("tenant acme: 3 entries"), "{}", stdout(&output));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(sos_audit(&[]).status.code(), Some(2));
    assert_eq!(sos_audit(&["verify"]).status.code(), Some(2));
    let missing = sos_audit(&["verify", "--file", "/nonexistent/chain.jsonl"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("cannot open"), "{}", stderr(&missing));
    let bad_head = sos_audit(&["verify", "--file", "/dev/null", "--expect-head", "nope"]);
    assert_eq!(bad_head.status.code(), Some(2));
    assert_eq!(sos_audit(&["verify", "--file", "/dev/null"]).status.code(), Some(0));
    assert_eq!(sos_audit(&["--help"]).status.code(), Some(0));
    // A DATABASE_URL in the environment does not get in the way of verifying a file.
    let with_env = Command::new(env!("CARGO_BIN_EXE_sos-audit"))
        .args(["verify", "--file", "/dev/null"])
        .env("DATABASE_URL", "postgres://nowhere.invalid/db")
        .output()
        .expect("runs");
    assert_eq!(with_env.status.code(), Some(0), "{}", stderr(&with_env));
}
