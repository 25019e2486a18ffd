//! `sos-ruliads`: checks vertical packs and runs fixture files before deploy, in the manner of
//! `promtool check rules` and `promtool test rules`.
//!
//! ```text
//! sos-ruliads check examples/packs
//! sos-ruliads test sos-ruliads/fixtures/*.json
//! ```
//!
//! Exit status: 0 when everything is valid and every case passed, 1 when a pack is invalid or a
//! case failed, 2 when the arguments or a directory could not be used.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sos_ruliads::{catalog, pack};

/// Validates ruliad packs and runs ruliad fixtures before deploy.
#[derive(Debug, Parser)]
#[command(name = "sos-ruliads", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validates every `<dir>/<vertical>/seed.json` against the built-in catalog, reporting every
    /// invalid pack (not only the first).
    Check {
        /// The packs directory (such as `examples/packs`).
        dir: PathBuf,
    },
    /// Runs fixture files (entity timeline, evaluation time, expected signals) against the
    /// catalog ruliads they name.
    Test {
        /// The fixture files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { dir } => check(&dir),
        Command::Test { files } => test(&files),
    }
}

fn check(dir: &std::path::Path) -> ExitCode {
    let checked = match pack::check(dir) {
        Ok(checked) => checked,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if checked.is_empty() {
        eprintln!("error: no packs under {}; expected <dir>/<vertical>/seed.json", dir.display());
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for vertical in &checked {
        println!("Checking {}", vertical.file.display());
        match &vertical.result {
            Ok(names) => println!("  SUCCESS: {} ruliads found: {}", names.len(), names.join(", ")),
            Err(error) => {
                failed += 1;
                println!("  FAILED: {error}");
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("{failed} of {} packs are invalid", checked.len());
        ExitCode::from(1)
    }
}

fn test(files: &[PathBuf]) -> ExitCode {
    let (mut passed, mut failed, mut broken) = (0_usize, 0_usize, 0_usize);
    for file in files {
        println!("Unit testing {}", file.display());
        match catalog::run_fixture_file(file) {
            Ok(report) => {
                print!("{report}");
                let failures = report.failures().count();
                failed += failures;
                passed += report.cases.len() - failures;
            }
            Err(error) => {
                broken += 1;
                println!("  FAILED: {error}");
            }
        }
    }
    println!("{passed} passed, {failed} failed, {broken} unusable files");
    if failed == 0 && broken == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
