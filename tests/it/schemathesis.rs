//! The reference server's API fuzzed from its own OpenAPI document with schemathesis: no 5xx
//! for any input, and every response conforms to the document (status code, content type,
//! headers, body schema).
//!
//! schemathesis is a Python tool from PyPI: `bash scripts/install-schemathesis` installs the
//! pinned version into `<target dir>/schemathesis-venv` (`.ci/run` does this), where this test
//! finds it. `SOS_SCHEMATHESIS=/path/to/st` overrides the search; `SOS_SCHEMATHESIS_MAX_TIME`
//! (seconds) and `SOS_SCHEMATHESIS_SEED` change the run's bounds.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server_process::harness::{ServerArgs, ServerProcess, scratch_dir};

/// The pinned version, the same as in `scripts/install-schemathesis`.
const VERSION: &str = "4.32.5";
/// The checks: no server error, and conformance of every response to the document.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";

/// Steers most generated path parameters to what `--demo` seeds (the tenant `demo`, its deals,
/// contacts, messages and agent), so that the fuzzing reaches the handlers' logic instead of
/// stopping at "unknown tenant"; the rest stay random.
const CONFIG: &str = r#"
[dictionaries.tenants]
values = ["demo"]

[dictionaries.ids]
values = ["d-1", "d-2", "d-3", "c-1", "c-2", "m-00", "m-01", "m-23"]

[dictionaries.agents]
values = ["ada"]

[dictionaries.providers]
values = ["stripe", "standard"]

[dictionaries.sequence_numbers]
values = [1, 2, 3, 10, 30]

[parameters]
"path.tenant" = { dictionary = "tenants", probability = 0.8 }
"path.id" = { dictionary = "ids", probability = 0.6 }
"path.name" = { dictionary = "agents", probability = 0.6 }
"path.provider" = { dictionary = "providers", probability = 0.8 }
"path.seq" = { dictionary = "sequence_numbers", probability = 0.6 }
"#;

fn install_hint() -> String {
    format!(
        "schemathesis is not installed: run `bash scripts/install-schemathesis` (it installs \
         schemathesis=={VERSION} from PyPI into <target dir>/schemathesis-venv; `bash .ci/run` does \
         this), or set SOS_SCHEMATHESIS to an `st` executable"
    )
}

/// `SOS_SCHEMATHESIS`, else the virtualenv under this build's target directory, else `st` on
/// the `PATH`.
fn find_schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SOS_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    // The test binary is `<target>/<profile>/deps/it-<hash>`.
    let exe = std::env::current_exe().ok()?;
    let target = exe.ancestors().nth(3)?;
    let venv = target.join("schemathesis-venv/bin/st");
    if venv.is_file() {
        return Some(venv);
    }
    let on_path = std::env::var_os("PATH")?;
    std::env::split_paths(&on_path).map(|dir| dir.join("st")).find(|candidate| runs_schemathesis(candidate))
}

fn runs_schemathesis(st: &Path) -> bool {
    Command::new(st).arg("--version").output().is_ok_and(|output| {
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("st, version")
    })
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

#[tokio::test]
async fn openapi_fuzzing_finds_no_5xx_and_no_schema_violation() {
    let st = find_schemathesis()
        .filter(|st| runs_schemathesis(st))
        .unwrap_or_else(|| panic!("{}", install_hint()));
    let dir = scratch_dir();
    let args = ServerArgs::sqlite(dir.path())
        .arg("--webhook-secret", "demo:stripe=whsec_schemathesis")
        .flag("--demo");
    let server = ServerProcess::start("schemathesis-target", dir.path(), args).await;

    // Bounded: the whole run stops after `max_time` seconds; the process is killed if it
    // overruns that by a wide margin.
    let max_time = env_number("SOS_SCHEMATHESIS_MAX_TIME", 150);
    let seed = env_number("SOS_SCHEMATHESIS_SEED", 9);
    let report = dir.path().join("report");
    let output_path = dir.path().join("schemathesis.out");
    let config_path = dir.path().join("schemathesis.toml");
    std::fs::write(&config_path, CONFIG).expect("the schemathesis configuration is written");
    let output = std::fs::File::create(&output_path).expect("an output file");
    let mut command = Command::new(&st);
    command
        .arg("--no-color")
        .arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(format!("{}/openapi.json", server.url()))
        .args(["--url", &server.url()])
        .args(["--checks", CHECKS])
        .args(["--max-time", &max_time.to_string()])
        .args(["--max-examples", "40"])
        .args(["--seed", &seed.to_string()])
        // One worker: CPython 3.11's `ast.parse`, which hypothesis calls while it builds
        // strategies, is not thread-safe ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--request-timeout", "20"])
        .args(["--generation-database", "none"])
        .args(["--wait-for-schema", "30"])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(&report)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(output.try_clone().expect("a second handle")))
        .stderr(Stdio::from(output));
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}; {}", st.display(), install_hint()));
    let deadline = Instant::now() + Duration::from_secs(max_time + 120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("the schemathesis child can be polled") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let text = std::fs::read_to_string(&output_path).unwrap_or_default();
    let tail: String = {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(150)..].join("\n")
    };
    let Some(status) = status else {
        panic!("schemathesis ran past its bound of {max_time} s and was killed:\n{tail}");
    };
    assert!(
        status.success(),
        "schemathesis found failures (seed {seed}; reproduce with SOS_SCHEMATHESIS_SEED={seed}):\n{tail}\n---- server log ----\n{}",
        crate::server_process::harness::log_tail(&dir.path().join("schemathesis-target.log"), 40)
    );
    eprintln!("schemathesis summary (seed {seed}):\n{tail}");
    // A run that tested nothing would pass vacuously: the summary names the operations tested.
    assert!(text.contains("API Operations"), "schemathesis printed no summary of tested operations:\n{tail}");
    drop(server);
}
