//! The reference server as real processes: several servers on one PostgreSQL racing on the same
//! webhook, SIGKILL mid-load and restart on SQLite and PostgreSQL, graceful shutdown.
//!
//! The processes are this test binary re-executed as children that run the server's library
//! entry point exactly as its `main` does (see [`harness`]).

pub(crate) mod harness;

use std::time::Duration;

use harness::{ServerArgs, ServerProcess, scratch_dir};

/// The child side of every process test. Run as a child (with [`harness::CHILD_ARGS`] set) it
/// is the server; run as a plain test it checks that the entry point refuses a bad
/// configuration with an error naming the flag, before binding or opening anything.
#[test]
fn child_entry() {
    if let Ok(args) = std::env::var(harness::CHILD_ARGS) {
        harness::init_child_logging();
        let args: Vec<String> = serde_json::from_str(&args).expect("the parent passes a JSON array");
        if let Err(error) = harness::child_main(args) {
            // `{:#}` prints the whole chain of causes, as `main` returning the error would.
            eprintln!("Error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    let error = harness::child_main(vec!["--listen".to_owned(), "not-an-address".to_owned()])
        .expect_err("an unparseable --listen is refused");
    assert!(error.to_string().contains("--listen"), "the error names the flag: {error}");
}

/// SIGTERM lets the server finish and exit 0; a restart on the same SQLite file comes up again
/// (migrations already applied) on the same address.
#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_reopens_the_same_sqlite_file() {
    let dir = scratch_dir();
    let args = ServerArgs::sqlite(&dir.path().join("sos.sqlite"));
    let mut server = ServerProcess::start("sqlite", dir.path(), args).await;
    let status = server.terminate(Duration::from_secs(30)).expect("the server exits by itself on SIGTERM");
    assert!(status.success(), "a SIGTERM shutdown exits 0, got {status}\n{}", server.log());
    server.restart().await;
    let health: serde_json::Value =
        reqwest::get(format!("{}/healthz", server.url())).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
}

