//! Grouping, repeat, inhibition and flapping, with Alertmanager's semantics, for people rather
//! than pagers.
//!
//! Each evaluation round hands the [`Grouper`] the signals that are active now
//! ([`Grouper::observe`]); later, [`Grouper::flush`] returns the notifications that are due.
//!
//! - Signals are grouped by (tenant, kind): 30 stale deals make one notification listing 30 deals.
//! - `group_wait`: how long a new group waits for more members before its first notification.
//! - `group_interval`: how long a group waits before notifying about new members.
//! - `repeat_interval`: a cause already notified is not notified again within it.
//! - Inhibition: an active signal of kind `source` suppresses signals of kind `target` whose
//!   `equal` labels have the same values (a lost deal inhibits the stale nudge for that deal).
//! - Flapping: a key that appears again after being absent `flap_threshold` times within
//!   `flap_window` is held back with reason `cooldown`.
//!
//! Every signal held back or delayed is recorded with its [`Reason`]; nothing disappears without
//! a trace. The state is plain serde data, bounded by expiry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sos_core::{Sha256Digest, Signal, SignalId, SignalKind, TenantId};

use crate::error::{Error, Result};
use crate::trust::Reason;

/// An inhibition rule: active `source` signals suppress `target` signals with equal labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    /// The kind that inhibits (such as `deal-lost`).
    pub source: String,
    /// The kind that is inhibited (such as `stale-deal-nudge`).
    pub target: String,
    /// Labels whose values must be equal in both signals (such as `["deal_id"]`); empty means
    /// any source signal of the same tenant inhibits.
    #[serde(default)]
    pub equal: Vec<String>,
}

/// Timers and rules of a [`Grouper`]; day-scale defaults for CRM work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupingConfig {
    /// Seconds a new group waits before its first notification (default 1 h).
    pub group_wait_seconds: i64,
    /// Seconds between notifications of one group (default 1 d).
    pub group_interval_seconds: i64,
    /// Seconds before the same cause is notified again (default 7 d).
    pub repeat_interval_seconds: i64,
    /// The window in which appearances are counted for flapping, in seconds (default 1 d).
    pub flap_window_seconds: i64,
    /// Appearances within the window that make a key flapping (default 3).
    pub flap_threshold: u32,
    /// Inhibition rules.
    pub inhibit: Vec<InhibitRule>,
    /// The most suppression records kept (default 10,000); the oldest are dropped.
    pub log_capacity: usize,
}

impl Default for GroupingConfig {
    fn default() -> Self {
        Self {
            group_wait_seconds: 3_600,
            group_interval_seconds: 86_400,
            repeat_interval_seconds: 7 * 86_400,
            flap_window_seconds: 86_400,
            flap_threshold: 3,
            inhibit: Vec::new(),
            log_capacity: 10_000,
        }
    }
}

impl GroupingConfig {
    /// Checks the timers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &str, reason: &str| Error::InvalidParameter {
            ruliad: "grouping".to_owned(),
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        if self.group_wait_seconds < 0 {
            return Err(invalid("group_wait_seconds", "must not be negative"));
        }
        if self.group_interval_seconds <= 0 {
            return Err(invalid("group_interval_seconds", "must be positive"));
        }
        if self.repeat_interval_seconds <= 0 {
            return Err(invalid("repeat_interval_seconds", "must be positive"));
        }
        if self.flap_window_seconds <= 0 {
            return Err(invalid("flap_window_seconds", "must be positive"));
        }
        if self.flap_threshold < 2 {
            return Err(invalid("flap_threshold", "must be at least 2"));
        }
        if self.log_capacity == 0 {
            return Err(invalid("log_capacity", "must be at least 1"));
        }
        Ok(())
    }
}

/// A signal held back or delayed, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppressed {
    /// The signal's id.
    pub signal: SignalId,
    /// Its kind.
    pub kind: SignalKind,
    /// Why.
    pub reason: Reason,
    /// A sentence for people.
    pub detail: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One notification: a group's new members, summarised in one signal.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The summary a person reads ("3 stale-deal-nudge signals"), listing every member.
    pub summary: Signal,
    /// The members, in arrival order.
    pub members: Vec<Signal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Group {
    created_at: DateTime<Utc>,
    last_flush_at: Option<DateTime<Utc>>,
    pending: Vec<Signal>,
    /// The pending members' causes, so joining a big group stays O(log n).
    #[serde(default)]
    pending_causes: BTreeSet<Sha256Digest>,
}

/// The grouper's serializable state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GroupingState {
    groups: BTreeMap<String, Group>,
    notified: BTreeMap<String, DateTime<Utc>>,
    previous_keys: BTreeSet<String>,
    appearances: BTreeMap<String, VecDeque<DateTime<Utc>>>,
    log: VecDeque<Suppressed>,
    /// When expired entries were last swept; sweeps run at most once per minute of clock time.
    #[serde(default)]
    swept_at: Option<DateTime<Utc>>,
}

/// Groups, deduplicates and inhibits signals before they reach people; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct Grouper {
    config: GroupingConfig,
    state: GroupingState,
}

fn label<'a>(signal: &'a Signal, name: &str) -> Option<&'a str> {
    signal.evidence().get("labels")?.get(name)?.as_str()
}

fn flap_key(signal: &Signal) -> String {
    format!("{}\u{1f}{}\u{1f}{}", signal.tenant(), signal.kind(), signal.subject())
}

fn group_key(tenant: &TenantId, kind: &SignalKind) -> String {
    format!("{tenant}\u{1f}{kind}")
}

impl Grouper {
    /// A grouper with empty state.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when a timer is invalid.
    pub fn new(config: GroupingConfig) -> Result<Self> {
        Self::restore(config, GroupingState::default())
    }

    /// A grouper with saved state.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when a timer is invalid.
    pub fn restore(config: GroupingConfig, state: GroupingState) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, state })
    }

    /// The state, to persist.
    pub fn state(&self) -> &GroupingState {
        &self.state
    }

    /// Every suppression recorded, oldest first.
    pub fn suppressed(&self) -> impl Iterator<Item = &Suppressed> {
        self.state.log.iter()
    }

    /// Takes the suppression records out.
    pub fn drain_suppressed(&mut self) -> Vec<Suppressed> {
        self.state.log.drain(..).collect()
    }

    /// Hands over the signals active at `now`; returns what happened to each one that did not
    /// simply join its group (every one of them is also in [`Grouper::suppressed`]).
    pub fn observe(&mut self, now: DateTime<Utc>, active: Vec<Signal>) -> Vec<Suppressed> {
        self.expire(now);
        let mut outcomes = Vec::new();
        let keys: BTreeSet<String> = active.iter().map(flap_key).collect();
        for signal in &active {
            if let Some(detail) = self.inhibited_by(signal, &active) {
                outcomes.push(self.record(now, signal, Reason::Inhibited, detail));
                continue;
            }
            let cause = format!("{}\u{1f}{}", signal.tenant(), signal.cause().to_hex());
            if let Some(notified_at) = self.state.notified.get(&cause) {
                let detail = format!("already notified at {}", notified_at.format("%Y-%m-%dT%H:%M:%SZ"));
                outcomes.push(self.record(now, signal, Reason::Repeat, detail));
                continue;
            }
            let key = flap_key(signal);
            if !self.state.previous_keys.contains(&key) {
                self.state.appearances.entry(key.clone()).or_default().push_back(now);
            }
            let appearances = self.state.appearances.get(&key).map_or(0, VecDeque::len);
            if appearances >= self.config.flap_threshold as usize {
                let detail = format!("flapping: appeared {appearances} times within the flap window");
                outcomes.push(self.record(now, signal, Reason::Cooldown, detail));
                continue;
            }
            let group =
                self.state.groups.entry(group_key(signal.tenant(), signal.kind())).or_insert_with(|| Group {
                    created_at: now,
                    last_flush_at: None,
                    pending: Vec::new(),
                    pending_causes: BTreeSet::new(),
                });
            if !group.pending_causes.insert(*signal.cause()) {
                continue;
            }
            group.pending.push(signal.clone());
            let due = match group.last_flush_at {
                None => group.created_at + TimeDelta::seconds(self.config.group_wait_seconds),
                Some(last) => last + TimeDelta::seconds(self.config.group_interval_seconds),
            };
            if due > now {
                let detail = format!("grouped; the group is due at {}", due.format("%Y-%m-%dT%H:%M:%SZ"));
                outcomes.push(self.record(now, signal, Reason::Grouped, detail));
            }
        }
        self.state.previous_keys = keys;
        outcomes
    }

    /// The notifications due at `now`, in (tenant, kind) order.
    pub fn flush(&mut self, now: DateTime<Utc>) -> Vec<Notification> {
        let mut notifications = Vec::new();
        for group in self.state.groups.values_mut() {
            if group.pending.is_empty() {
                continue;
            }
            let due = match group.last_flush_at {
                None => group.created_at + TimeDelta::seconds(self.config.group_wait_seconds),
                Some(last) => last + TimeDelta::seconds(self.config.group_interval_seconds),
            };
            if due > now {
                continue;
            }
            let members = std::mem::take(&mut group.pending);
            group.pending_causes.clear();
            group.last_flush_at = Some(now);
            for member in &members {
                self.state
                    .notified
                    .insert(format!("{}\u{1f}{}", member.tenant(), member.cause().to_hex()), now);
            }
            if let Some(summary) = summarise(now, &members) {
                notifications.push(Notification { summary, members });
            }
        }
        notifications
    }

    fn inhibited_by(&self, signal: &Signal, active: &[Signal]) -> Option<String> {
        for rule in &self.config.inhibit {
            if rule.target != signal.kind().as_str() {
                continue;
            }
            let source = active.iter().find(|source| {
                source.kind().as_str() == rule.source
                    && source.tenant() == signal.tenant()
                    && rule.equal.iter().all(|name| {
                        let value = label(signal, name);
                        value.is_some() && value == label(source, name)
                    })
            });
            if let Some(source) = source {
                return Some(format!("inhibited by {} with equal {}", source.kind(), rule.equal.join(", ")));
            }
        }
        None
    }

    fn record(&mut self, now: DateTime<Utc>, signal: &Signal, reason: Reason, detail: String) -> Suppressed {
        let suppressed =
            Suppressed { signal: signal.id(), kind: signal.kind().clone(), reason, detail, at: now };
        if self.state.log.len() >= self.config.log_capacity {
            self.state.log.pop_front();
        }
        self.state.log.push_back(suppressed.clone());
        suppressed
    }

    fn expire(&mut self, now: DateTime<Utc>) {
        // Sweeping is linear in the state, so it runs at most once per minute of clock time;
        // entries live for hours or days, so a minute's delay changes nothing people see.
        if self.state.swept_at.is_some_and(|swept| now - swept < TimeDelta::minutes(1)) {
            return;
        }
        self.state.swept_at = Some(now);
        let repeat = TimeDelta::seconds(self.config.repeat_interval_seconds);
        self.state.notified.retain(|_, at| now - *at < repeat);
        let window = TimeDelta::seconds(self.config.flap_window_seconds);
        for times in self.state.appearances.values_mut() {
            while times.front().is_some_and(|first| now - *first >= window) {
                times.pop_front();
            }
        }
        self.state.appearances.retain(|_, times| !times.is_empty());
        let interval = TimeDelta::seconds(self.config.group_interval_seconds);
        self.state.groups.retain(|_, group| {
            !group.pending.is_empty() || group.last_flush_at.is_none_or(|last| now - last <= interval)
        });
    }
}

fn summarise(now: DateTime<Utc>, members: &[Signal]) -> Option<Signal> {
    let first = members.first()?;
    let mut text = String::new();
    for member in members {
        let line = ["- ", member.subject(), ": ", member.text(), "\n"].concat();
        if text.len() + line.len() > Signal::MAX_TEXT_LEN - 32 {
            text.push_str("- and more\n");
            break;
        }
        text.push_str(&line);
    }
    let mut cause = sos_core::DomainHasher::new("sos-ruliads/group/v1");
    for member in members {
        cause.field(member.cause().as_bytes()).ok()?;
    }
    let subject = if members.len() == 1 {
        first.subject().to_owned()
    } else {
        format!("{} {} signals", members.len(), first.kind())
    };
    Signal::builder(first.tenant().clone(), first.kind().clone())
        .subject(subject)
        .text(text.trim_end())
        .severity(members.iter().map(Signal::severity).max().unwrap_or_default())
        .observed_at(now)
        .cause(cause.finish())
        .build()
        .ok()
}
