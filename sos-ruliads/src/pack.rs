//! Vertical packs: `<dir>/<vertical>/seed.json`, resolved and validated at deploy time.
//!
//! The format is specified in `docs/ruliads.md`. A pack names the catalog ruliads an agent is
//! born with, their parameters and the trust gate's configuration. Everything is checked when
//! the pack is loaded; an error names the file, the field and the known names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::catalog;
use crate::crm::Record;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::grouping::GroupingConfig;
use crate::ruliad::{Class, Ruliad};
use crate::trust::TrustConfig;

/// The name of the pack file inside each vertical's directory.
pub const SEED_FILE: &str = "seed.json";

/// The top-level fields a `seed.json` may have.
pub const KNOWN_FIELDS: &[&str] =
    &["agent_role", "collections", "compliance", "description", "grouping", "ruliads_enabled", "trust"];

/// Builds a ruliad from its JSON parameters.
pub type Factory<E> = Box<dyn Fn(&serde_json::Value) -> Result<Box<dyn Ruliad<E>>> + Send + Sync>;

/// The ruliads a pack may name: the catalog, plus whatever the host registers.
pub struct Registry<E> {
    factories: BTreeMap<String, Factory<E>>,
}

impl<E> fmt::Debug for Registry<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("names", &self.names()).finish()
    }
}

impl<E> Default for Registry<E> {
    fn default() -> Self {
        Self { factories: BTreeMap::new() }
    }
}

impl Registry<Record> {
    /// The built-in catalog ([`catalog::NAMES`]).
    pub fn catalog() -> Self {
        let mut registry = Self::default();
        for name in catalog::NAMES {
            registry.register(name, move |params| catalog::build(name, params));
        }
        registry
    }
}

impl<E> Registry<E> {
    /// An empty registry, for a host's own entity type.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the ruliad `name`, built by `factory` from the pack's `params`
    /// (`null` when the pack gives none).
    pub fn register<F>(&mut self, name: &str, factory: F) -> &mut Self
    where
        F: Fn(&serde_json::Value) -> Result<Box<dyn Ruliad<E>>> + Send + Sync + 'static,
    {
        self.factories.insert(name.to_owned(), Box::new(factory));
        self
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    /// Builds `name` from `params`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownRuliad`] with the registered names, or the factory's error.
    pub fn build(&self, name: &str, params: &serde_json::Value) -> Result<Box<dyn Ruliad<E>>> {
        match self.factories.get(name) {
            Some(factory) => factory(params),
            None => Err(Error::UnknownRuliad {
                name: name.to_owned(),
                known: self.factories.keys().cloned().collect(),
            }),
        }
    }
}

/// One enabled ruliad as written in the pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Enabled {
    /// The catalog name.
    pub name: String,
    /// Its parameters (`null` for the defaults).
    pub params: serde_json::Value,
}

/// A loaded, validated vertical pack with its ready engine; `E` is the entity type (the CRM
/// [`Record`] for the catalog).
pub struct Pack<E = Record> {
    vertical: String,
    file: PathBuf,
    agent_role: String,
    description: Option<String>,
    compliance: Vec<String>,
    collections: Vec<String>,
    enabled: Vec<Enabled>,
    trust: TrustConfig,
    grouping: GroupingConfig,
    engine: Engine<E>,
}

impl<E> fmt::Debug for Pack<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pack")
            .field("vertical", &self.vertical)
            .field("file", &self.file)
            .field("agent_role", &self.agent_role)
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl Pack<Record> {
    /// Loads every `<dir>/<vertical>/seed.json`, sorted by vertical name; directories whose
    /// name starts with `.` and plain files are skipped.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the directory or a file cannot be read, [`Error::Pack`] for the first
    /// invalid pack (use [`check`] to see them all).
    pub fn load_dir(dir: &Path) -> Result<Vec<Pack>> {
        Pack::load_dir_with(&Registry::catalog(), dir)
    }

    /// Loads one pack file as vertical `vertical`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when it cannot be read, [`Error::Pack`] when it is invalid.
    pub fn load_file(vertical: &str, file: &Path) -> Result<Pack> {
        Pack::load_file_with(&Registry::catalog(), vertical, file)
    }

    /// Parses and validates pack bytes; `file` is only used in errors. Never panics.
    ///
    /// # Errors
    ///
    /// [`Error::Pack`] naming the file, the field and what to do.
    pub fn parse(vertical: &str, file: &Path, bytes: &[u8]) -> Result<Pack> {
        Pack::parse_with(&Registry::catalog(), vertical, file, bytes)
    }
}

impl<E: Sync> Pack<E> {
    /// As [`Pack::load_dir`], resolving names in `registry`.
    ///
    /// # Errors
    ///
    /// As [`Pack::load_dir`].
    pub fn load_dir_with(registry: &Registry<E>, dir: &Path) -> Result<Vec<Pack<E>>> {
        verticals(dir)?
            .into_iter()
            .map(|(vertical, file)| Pack::load_file_with(registry, &vertical, &file))
            .collect()
    }

    /// As [`Pack::load_file`], resolving names in `registry`.
    ///
    /// # Errors
    ///
    /// As [`Pack::load_file`].
    pub fn load_file_with(registry: &Registry<E>, vertical: &str, file: &Path) -> Result<Pack<E>> {
        let bytes = std::fs::read(file).map_err(|source| Error::Io { path: file.to_owned(), source })?;
        Pack::parse_with(registry, vertical, file, &bytes)
    }

    /// As [`Pack::parse`], resolving names in `registry`. Never panics.
    ///
    /// # Errors
    ///
    /// As [`Pack::parse`].
    pub fn parse_with(registry: &Registry<E>, vertical: &str, file: &Path, bytes: &[u8]) -> Result<Pack<E>> {
        let error = |field: &str, reason: String| Error::Pack {
            file: file.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let root: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|json| error("(root)", format!("malformed JSON: {json}")))?;
        let serde_json::Value::Object(root) = root else {
            return Err(error("(root)", "expected a JSON object".to_owned()));
        };
        for key in root.keys() {
            if !KNOWN_FIELDS.contains(&key.as_str()) {
                return Err(error(key, format!("unknown field; known fields: {}", KNOWN_FIELDS.join(", "))));
            }
        }
        let agent_role = match root.get("agent_role") {
            Some(serde_json::Value::String(role)) if !role.trim().is_empty() => role.clone(),
            Some(_) => return Err(error("agent_role", "expected a non-empty string".to_owned())),
            None => {
                return Err(error(
                    "agent_role",
                    "missing; say what the agent is, such as \"operations coordinator\"".to_owned(),
                ));
            }
        };
        let description = match root.get("description") {
            None => None,
            Some(serde_json::Value::String(text)) => Some(text.clone()),
            Some(_) => return Err(error("description", "expected a string".to_owned())),
        };
        let compliance = string_list(&root, "compliance").map_err(|reason| error("compliance", reason))?;
        let collections = string_list(&root, "collections").map_err(|reason| error("collections", reason))?;
        let trust = match root.get("trust") {
            None => TrustConfig::default(),
            Some(value) => {
                let config: TrustConfig = serde_json::from_value(value.clone())
                    .map_err(|json| error("trust", format!("{json}; see docs/ruliads.md for the fields")))?;
                config.validate().map_err(|invalid| error("trust", invalid.to_string()))?;
                config
            }
        };
        let grouping = match root.get("grouping") {
            None => GroupingConfig::default(),
            Some(value) => {
                let config: GroupingConfig = serde_json::from_value(value.clone()).map_err(|json| {
                    error("grouping", format!("{json}; see docs/ruliads.md for the fields"))
                })?;
                config.validate().map_err(|invalid| match invalid {
                    Error::InvalidParameter { field, reason, .. } => {
                        error(&format!("grouping.{field}"), reason)
                    }
                    other => error("grouping", other.to_string()),
                })?;
                config
            }
        };
        let Some(serde_json::Value::Array(entries)) = root.get("ruliads_enabled") else {
            return Err(error(
                "ruliads_enabled",
                "missing or not an array; list catalog ruliad names".to_owned(),
            ));
        };
        let mut seen = BTreeSet::new();
        let mut enabled = Vec::with_capacity(entries.len());
        let mut ruliads: Vec<Box<dyn Ruliad<E>>> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let field = format!("ruliads_enabled[{index}]");
            let (name, params) = match entry {
                serde_json::Value::String(name) => (name.clone(), serde_json::Value::Null),
                serde_json::Value::Object(object) => {
                    if let Some(unknown) = object.keys().find(|key| *key != "name" && *key != "params") {
                        return Err(error(
                            &format!("{field}.{unknown}"),
                            "unknown field; known fields: name, params".to_owned(),
                        ));
                    }
                    let Some(serde_json::Value::String(name)) = object.get("name") else {
                        return Err(error(&format!("{field}.name"), "missing or not a string".to_owned()));
                    };
                    (name.clone(), object.get("params").cloned().unwrap_or(serde_json::Value::Null))
                }
                _ => {
                    return Err(error(&field, "expected a ruliad name or {\"name\", \"params\"}".to_owned()));
                }
            };
            if !seen.insert(name.clone()) {
                return Err(error(&field, format!("duplicate ruliad {name:?}; enable each ruliad once")));
            }
            let ruliad = registry.build(&name, &params).map_err(|built| match built {
                Error::UnknownRuliad { name, known } => {
                    error(&field, format!("unknown ruliad {name:?}; known names: {}", known.join(", ")))
                }
                Error::InvalidParameter { field: parameter, reason, .. } => {
                    error(&format!("{field}.params.{parameter}"), reason)
                }
                other => error(&field, other.to_string()),
            })?;
            ruliads.push(ruliad);
            enabled.push(Enabled { name, params });
        }
        check_routes(registry, &ruliads, &grouping).map_err(|(field, reason)| error(&field, reason))?;
        Ok(Pack {
            vertical: vertical.to_owned(),
            file: file.to_owned(),
            agent_role,
            description,
            compliance,
            collections,
            enabled,
            trust,
            grouping,
            engine: Engine::new(ruliads),
        })
    }

    /// The vertical's name (its directory).
    pub fn vertical(&self) -> &str {
        &self.vertical
    }

    /// The file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The agent's role.
    pub fn agent_role(&self) -> &str {
        &self.agent_role
    }

    /// The pack's description, if any.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Compliance regimes the vertical names (informational).
    pub fn compliance(&self) -> &[String] {
        &self.compliance
    }

    /// Content collections the vertical names (informational).
    pub fn collections(&self) -> &[String] {
        &self.collections
    }

    /// The enabled ruliads as written.
    pub fn enabled(&self) -> &[Enabled] {
        &self.enabled
    }

    /// The trust gate's configuration.
    pub fn trust(&self) -> &TrustConfig {
        &self.trust
    }

    /// The grouping, repeat and inhibition configuration (`grouping` in the file; day-scale
    /// defaults when absent).
    pub fn grouping(&self) -> &GroupingConfig {
        &self.grouping
    }

    /// A fresh [`Gate`] with the pack's grouping and trust configuration, for an agent planted
    /// at `planted_at`.
    ///
    /// # Errors
    ///
    /// Never for a loaded pack (its configuration was validated at load); the `Result` guards
    /// against future configuration fields.
    pub fn gate(&self, planted_at: chrono::DateTime<chrono::Utc>) -> Result<Gate> {
        Gate::new(self.grouping.clone(), self.trust.clone(), planted_at)
    }

    /// The ready engine.
    pub fn engine(&self) -> &Engine<E> {
        &self.engine
    }

    /// Takes the engine out of the pack.
    pub fn into_engine(self) -> Engine<E> {
        self.engine
    }
}

/// Refuses a pack with an unreachable route: a path from an enabled ruliad to people that can
/// never carry a signal, or a configured rule that can never apply. See "Unreachable routes" in
/// `docs/ruliads.md`. Returns the field and the reason, naming the known names.
fn check_routes<E>(
    registry: &Registry<E>,
    ruliads: &[Box<dyn Ruliad<E>>],
    grouping: &GroupingConfig,
) -> std::result::Result<(), (String, String)> {
    let enabled: Vec<&str> = ruliads.iter().map(|ruliad| ruliad.name()).collect();
    let known = if enabled.is_empty() { "(none)".to_owned() } else { enabled.join(", ") };
    let find = |name: &str| ruliads.iter().find(|ruliad| ruliad.name() == name);
    for (index, rule) in grouping.inhibit.iter().enumerate() {
        let field = format!("grouping.inhibit[{index}]");
        for (side, name) in [("source", &rule.source), ("target", &rule.target)] {
            if find(name).is_none() {
                return Err((
                    format!("{field}.{side}"),
                    format!(
                        "no enabled ruliad fires {name:?}, so this inhibition can never apply; \
                         enabled ruliads: {known}"
                    ),
                ));
            }
        }
        for (position, label) in rule.equal.iter().enumerate() {
            for name in [&rule.source, &rule.target] {
                let labels = find(name).map(|ruliad| ruliad.labels()).unwrap_or_default();
                if !labels.is_empty() && !labels.contains(&label.as_str()) {
                    return Err((
                        format!("{field}.equal[{position}]"),
                        format!(
                            "{name:?} never sets label {label:?}, so this inhibition can never apply; \
                             its labels: {}",
                            labels.join(", ")
                        ),
                    ));
                }
            }
        }
        // A cycle source → target → … → source means signals can silence each other (or
        // themselves) whenever they are active together: neither reaches anyone.
        let mut path = vec![rule.source.as_str(), rule.target.as_str()];
        if let Some(cycle) = inhibition_cycle(&grouping.inhibit, &mut path) {
            return Err((
                field,
                format!(
                    "inhibition cycle {}: these signals silence each other when active together, \
                     so none of them reaches anyone; remove one of the rules",
                    cycle.join(" -> ")
                ),
            ));
        }
    }
    // Interventions go out only once people accepted an insight (the trust gate's lifecycle);
    // without an insight ruliad the agent never gets there.
    let has_insight = ruliads.iter().any(|ruliad| ruliad.class() == Class::Insight);
    if !has_insight
        && let Some(index) = ruliads.iter().position(|ruliad| ruliad.class() == Class::Intervention)
    {
        let insights: Vec<&str> = registry
            .names()
            .into_iter()
            .filter(|name| {
                registry
                    .build(name, &serde_json::Value::Null)
                    .is_ok_and(|ruliad| ruliad.class() == Class::Insight)
            })
            .collect();
        let insights = if insights.is_empty() { "(none registered)".to_owned() } else { insights.join(", ") };
        return Err((
            format!("ruliads_enabled[{index}]"),
            format!(
                "{:?} is an intervention, and interventions go out only after people accepted an \
                 insight; this pack enables no insight ruliad, so it can never reach anyone; \
                 enable one of the insight ruliads: {insights}",
                ruliads[index].name()
            ),
        ));
    }
    Ok(())
}

/// Follows inhibition edges from the last element of `path`; returns the cycle when one leads
/// back to `path[0]`.
fn inhibition_cycle<'a>(
    rules: &'a [crate::grouping::InhibitRule],
    path: &mut Vec<&'a str>,
) -> Option<Vec<String>> {
    let (first, last) = (path[0], path[path.len() - 1]);
    if first == last {
        return Some(path.iter().map(|name| (*name).to_owned()).collect());
    }
    if path.len() > rules.len() + 1 {
        return None;
    }
    for rule in rules.iter().filter(|rule| rule.source == last) {
        if path[1..].contains(&rule.target.as_str()) {
            continue;
        }
        path.push(&rule.target);
        if let Some(cycle) = inhibition_cycle(rules, path) {
            return Some(cycle);
        }
        path.pop();
    }
    None
}

fn string_list(
    root: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> std::result::Result<Vec<String>, String> {
    match root.get(field) {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| "expected an array of strings".to_owned())
            })
            .collect(),
        Some(_) => Err("expected an array of strings".to_owned()),
    }
}

/// The `(vertical, seed.json path)` pairs under `dir`, sorted by name, dot-directories skipped.
///
/// # Errors
///
/// [`Error::Io`] when the directory cannot be read; [`Error::Pack`] when a vertical directory
/// has no `seed.json`.
pub fn verticals(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let io = |source| Error::Io { path: dir.to_owned(), source };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.file_type().map_err(io)?.is_dir() {
            continue;
        }
        let file = entry.path().join(SEED_FILE);
        if !file.is_file() {
            return Err(Error::Pack {
                file,
                field: "(file)".to_owned(),
                reason: "missing; every vertical directory needs a seed.json".to_owned(),
            });
        }
        found.push((name, file));
    }
    found.sort();
    Ok(found)
}

/// The outcome of [`check`] for one vertical.
#[derive(Debug)]
pub struct Checked {
    /// The vertical.
    pub vertical: String,
    /// The file.
    pub file: PathBuf,
    /// The enabled ruliads' names, or the error.
    pub result: Result<Vec<String>>,
}

/// Validates every pack under `dir` without stopping at the first error, like
/// `promtool check rules`.
///
/// # Errors
///
/// [`Error::Io`] when the directory cannot be listed, or a vertical lacks its `seed.json`.
pub fn check(dir: &Path) -> Result<Vec<Checked>> {
    check_with(&Registry::catalog(), dir)
}

/// As [`check`], resolving names in `registry`.
///
/// # Errors
///
/// As [`check`].
pub fn check_with<E: Sync>(registry: &Registry<E>, dir: &Path) -> Result<Vec<Checked>> {
    Ok(verticals(dir)?
        .into_iter()
        .map(|(vertical, file)| {
            let result = Pack::load_file_with(registry, &vertical, &file)
                .map(|pack| pack.enabled().iter().map(|enabled| enabled.name.clone()).collect());
            Checked { vertical, file, result }
        })
        .collect())
}
