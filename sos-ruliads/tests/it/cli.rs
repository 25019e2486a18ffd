//! The `sos-ruliads` binary, run as a separate process the way a deploy script runs it.

use std::path::Path;
use std::process::{Command, Output};

use crate::crate_path;

fn run(args: &[&str]) -> (i32, String) {
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_sos-ruliads")).args(args).output().expect("the binary runs");
    let text = [String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)].concat();
    (status.code().expect("exited"), text)
}

fn write(dir: &Path, vertical: &str, text: &str) {
    std::fs::create_dir_all(dir.join(vertical)).expect("mkdir");
    std::fs::write(dir.join(vertical).join("seed.json"), text).expect("write");
}

#[test]
fn check_accepts_the_shipped_packs() {
    let packs = crate_path("../examples/packs");
    let (code, output) = run(&["check", packs.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{output}");
    for vertical in ["dental", "generic", "grants", "real-estate"] {
        assert!(output.contains(&format!("{vertical}/seed.json")), "{output}");
    }
    assert_eq!(output.matches("SUCCESS").count(), 4, "{output}");
}

#[test]
fn check_reports_every_invalid_pack_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "good", r#"{"agent_role":"x","ruliads_enabled":["lead-rhythm"]}"#);
    write(dir.path(), "typo", r#"{"agent_role":"x","ruliads_enabled":["stale-deals"]}"#);
    write(
        dir.path(),
        "unreachable",
        r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","lead-rhythm"],
            "grouping":{"inhibit":[{"source":"deal-lost","target":"stale-deal-nudge"}]}}"#,
    );
    let (code, output) = run(&["check", dir.path().to_str().expect("utf-8 path")]);
    assert_eq!(code, 1, "{output}");
    assert_eq!(output.matches("SUCCESS").count(), 1, "{output}");
    assert!(
        output.contains("typo/seed.json") && output.contains("known names: close-date-passed"),
        "{output}"
    );
    assert!(output.contains("grouping.inhibit[0].source"), "{output}");
    assert!(output.contains("2 of 3 packs are invalid"), "{output}");
}

#[test]
fn check_of_a_missing_directory_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let (code, output) = run(&["check", missing.to_str().expect("utf-8 path")]);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("cannot read"), "{output}");
    let (code, _) = run(&["check"]);
    assert_eq!(code, 2, "clap refuses a missing argument");
}

#[test]
fn test_runs_fixture_files() {
    let stale = crate_path("fixtures/stale-deal-nudge.json");
    let spike = crate_path("fixtures/lead-spike.json");
    let (code, output) =
        run(&["test", stale.to_str().expect("utf-8 path"), spike.to_str().expect("utf-8 path")]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("ok   stale-deal-nudge / "), "{output}");
    assert!(output.contains(" 0 failed, 0 unusable files"), "{output}");
}

#[test]
fn test_fails_on_a_failing_case_and_on_a_broken_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = dir.path().join("failing.json");
    std::fs::write(
        &failing,
        r#"{"ruliad":"stale-deal-nudge","tests":[{"name":"claims 3 idle days are stale",
            "eval_time":"2026-03-10T09:00:00Z",
            "entity":{"deal":{"tenant":"acme","id":"d1","contact_name":"Acme","stage":"discovery",
                              "last_action_at":"2026-03-07T09:00:00Z"}},
            "expect":[{"kind":"stale-deal-nudge"}]}]}"#,
    )
    .expect("write");
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{").expect("write");
    let (code, output) = run(&["test", failing.to_str().expect("utf-8"), broken.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("FAIL stale-deal-nudge / claims 3 idle days are stale: expected 1 signal(s), got 0"),
        "{output}"
    );
    assert!(
        output.contains("idle 3 d > 7 d (failed)"),
        "the explanation says which guard stopped it: {output}"
    );
    assert!(output.contains("0 passed, 1 failed, 1 unusable files"), "{output}");
}
