//! Fixtures in the style of `promtool test rules`: an entity timeline, an evaluation time and
//! the expected signals (or none), run with one call.
//!
//! The format is specified in `docs/ruliads.md`. In short:
//!
//! ```json
//! {
//!   "ruliad": "stale-deal-nudge",
//!   "params": { "stale_days": 7 },
//!   "tests": [
//!     {
//!       "name": "fires after 9 idle days",
//!       "eval_time": "2026-03-10T09:00:00Z",
//!       "entity": { "deal": { "tenant": "acme", "id": "d1", "contact_name": "Acme",
//!                             "stage": "negotiation", "last_action_at": "2026-03-01T09:00:00Z" } },
//!       "expect": [ { "kind": "stale-deal-nudge", "subject": "Deal with Acme" } ]
//!     }
//!   ]
//! }
//! ```
//!
//! A case may give a `timeline` of `{ "at", "entity" }` steps instead of (or before) `entity`:
//! each step is evaluated in order, so stateful combinators see the history, and the last entity
//! is evaluated at `eval_time`. `expect: []` means no signal; `expect_guard` names the predicate
//! that must have stopped it.

use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sos_core::Severity;

use crate::error::{Error, Result};
use crate::ruliad::Ruliad;

/// One fixture file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixtureFile<E> {
    /// The ruliad under test.
    pub ruliad: String,
    /// Its parameters (`null` for the defaults); used by catalog runners.
    #[serde(default)]
    pub params: serde_json::Value,
    /// The cases.
    pub tests: Vec<Case<E>>,
}

/// One case of a fixture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case<E> {
    /// What the case shows.
    pub name: String,
    /// When the final evaluation happens.
    pub eval_time: DateTime<Utc>,
    /// Earlier states of the entity, evaluated in order before `eval_time`.
    #[serde(default = "Vec::new")]
    pub timeline: Vec<Step<E>>,
    /// The entity at `eval_time` (default: the last timeline entity).
    #[serde(default = "Option::default")]
    pub entity: Option<E>,
    /// The expected signals; empty when none must fire.
    pub expect: Vec<Expected>,
    /// The name of the guard that must stop the evaluation, when nothing fires.
    #[serde(default)]
    pub expect_guard: Option<String>,
}

/// One step of a timeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step<E> {
    /// When it is evaluated.
    pub at: DateTime<Utc>,
    /// The entity at that time.
    pub entity: E,
}

/// An expected signal; fields left out are not compared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// The signal kind.
    pub kind: String,
    /// The exact subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// The exact text.
    #[serde(default)]
    pub text: Option<String>,
    /// The severity.
    #[serde(default)]
    pub severity: Option<Severity>,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case name.
    pub name: String,
    /// Why it failed, or `None` when it passed.
    pub failure: Option<String>,
}

/// The results of one fixture file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The file.
    pub file: PathBuf,
    /// The ruliad tested.
    pub ruliad: String,
    /// One result per case, in file order.
    pub cases: Vec<CaseResult>,
}

impl Report {
    /// Whether every case passed.
    pub fn passed(&self) -> bool {
        self.cases.iter().all(|case| case.failure.is_none())
    }

    /// The failed cases.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.cases.iter().filter(|case| case.failure.is_some())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for case in &self.cases {
            match &case.failure {
                None => writeln!(f, "ok   {} / {}", self.ruliad, case.name)?,
                Some(reason) => writeln!(f, "FAIL {} / {}: {reason}", self.ruliad, case.name)?,
            }
        }
        Ok(())
    }
}

/// Reads and parses a fixture file.
///
/// # Errors
///
/// [`Error::Io`] when it cannot be read, [`Error::Fixture`] when it is malformed.
pub fn load<E: DeserializeOwned>(path: &Path) -> Result<FixtureFile<E>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    parse(path, &bytes)
}

/// Parses fixture bytes; `path` is only used in errors.
///
/// # Errors
///
/// [`Error::Fixture`] when the bytes are not a fixture.
pub fn parse<E: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<FixtureFile<E>> {
    serde_json::from_slice(bytes)
        .map_err(|error| Error::Fixture { file: path.to_owned(), reason: error.to_string() })
}

/// Runs every case of the fixture at `path` against `ruliad` and fails with the report when a
/// case fails: the one call a host's test makes.
///
/// The same `ruliad` value serves every case, so a stateful combinator carries its state from
/// one case to the next; give each stateful case its own file, or use [`run_cases`] with a
/// factory.
///
/// # Errors
///
/// [`Error::Io`] or [`Error::Fixture`] when the file is unreadable or malformed, or names another
/// ruliad; [`Error::Fixture`] listing the failures when a case fails.
pub fn check_file<E: DeserializeOwned>(ruliad: &dyn Ruliad<E>, path: &Path) -> Result<Report> {
    let fixture: FixtureFile<E> = load(path)?;
    if fixture.ruliad != ruliad.name() {
        return Err(Error::Fixture {
            file: path.to_owned(),
            reason: format!("it tests ruliad {:?} but was run against {:?}", fixture.ruliad, ruliad.name()),
        });
    }
    let report = run_cases(path, &fixture, |_| Ok(ruliad))?;
    into_result(report)
}

/// Turns a report with failures into an error that lists them.
///
/// # Errors
///
/// [`Error::Fixture`] when a case failed.
pub fn into_result(report: Report) -> Result<Report> {
    if report.passed() {
        return Ok(report);
    }
    Err(Error::Fixture { file: report.file.clone(), reason: format!("cases failed:\n{report}") })
}

/// Runs every case with a ruliad made by `make` from the fixture's parameters (called once per
/// case, so stateful ruliads start fresh).
///
/// # Errors
///
/// Whatever `make` returns.
pub fn run_cases<E, R, F>(path: &Path, fixture: &FixtureFile<E>, make: F) -> Result<Report>
where
    R: Ruliad<E>,
    F: Fn(&serde_json::Value) -> Result<R>,
{
    let mut cases = Vec::with_capacity(fixture.tests.len());
    for case in &fixture.tests {
        let ruliad = make(&fixture.params)?;
        cases.push(CaseResult { name: case.name.clone(), failure: run_case(&ruliad, case).err() });
    }
    Ok(Report { file: path.to_owned(), ruliad: fixture.ruliad.clone(), cases })
}

fn run_case<E, R: Ruliad<E>>(ruliad: &R, case: &Case<E>) -> std::result::Result<(), String> {
    for step in &case.timeline {
        ruliad.evaluate(step.at, &step.entity);
    }
    let entity = case
        .entity
        .as_ref()
        .or_else(|| case.timeline.last().map(|step| &step.entity))
        .ok_or_else(|| "the case has neither an entity nor a timeline".to_owned())?;
    let evaluation = ruliad.evaluate(case.eval_time, entity);
    let fired: Vec<_> = evaluation.signal().into_iter().collect();
    if fired.len() != case.expect.len() {
        return Err(format!(
            "expected {} signal(s), got {}; explanation: {}",
            case.expect.len(),
            fired.len(),
            evaluation.explain()
        ));
    }
    for (signal, expected) in fired.iter().zip(&case.expect) {
        if signal.kind().as_str() != expected.kind {
            return Err(format!("expected kind {:?}, got {:?}", expected.kind, signal.kind().as_str()));
        }
        if expected.subject.as_ref().is_some_and(|subject| signal.subject() != subject) {
            let subject = expected.subject.as_deref().unwrap_or_default();
            return Err(format!("expected subject {subject:?}, got {:?}", signal.subject()));
        }
        if expected.text.as_ref().is_some_and(|text| signal.text() != text) {
            let text = expected.text.as_deref().unwrap_or_default();
            return Err(format!("expected text {text:?}, got {:?}", signal.text()));
        }
        if expected.severity.is_some_and(|severity| signal.severity() != severity) {
            let severity = expected.severity.unwrap_or_default();
            return Err(format!("expected severity {severity:?}, got {:?}", signal.severity()));
        }
    }
    if let Some(expected_guard) = &case.expect_guard {
        let guard = evaluation.guard().map(|guard| guard.name);
        if guard != Some(expected_guard.as_str()) {
            return Err(format!(
                "expected guard {expected_guard:?}, got {guard:?}; explanation: {}",
                evaluation.explain()
            ));
        }
    }
    Ok(())
}
