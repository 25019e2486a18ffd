//! Grouping, repeat, inhibition and flapping, with Alertmanager's semantics, for people rather
//! than pagers.
//!
//! Each evaluation round hands the [`Grouper`] the signals that are active now
//! ([`Grouper::observe`]); later, [`Grouper::flush`] returns the notifications that are due.
//!
//! - Signals are grouped by (tenant, kind): 30 stale deals make one notification listing 30 deals.
//! - `group_wait`: how long a new group waits for more members before its first notification.
//! - `group_interval`: how long a group waits before notifying about new members.
//! - `repeat_interval`: a cause already notified for a kind is not notified again for that kind
//!   within it.
//! - Inhibition: an active signal of kind `source` suppresses signals of kind `target` whose
//!   `equal` labels have the same values (a lost deal inhibits the stale nudge for that deal).
//! - Flapping: a key that appears again after being absent `flap_threshold` times within
//!   `flap_window` is held back with reason `cooldown`.
//!
//! Every signal held back or delayed is recorded with its [`Reason`]; nothing disappears without
//! a trace. The state is plain serde data, bounded by expiry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use sos_core::{Sha256Digest, Signal, SignalId, SignalKind, TenantId};

use crate::error::{Error, Result};
use crate::explain::{Because, time_text};
use crate::hashing::SeededMap;
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

/// The members of a group or notification: one member (the usual case when signals arrive one
/// by one) is kept inline, without a heap allocation.
pub(crate) type Members = SmallVec<[Signal; 1]>;

/// One notification: a group's new members, summarised in one message. A group of one member
/// is that member itself: the person reads the signal, and feedback on its id reaches the trust
/// gate.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The summary of a group of several members; `None` for a single member. Boxed: a
    /// notification of one member (the usual one) is moved several times on its way out, and an
    /// inline `Option<Signal>` would be copied along although it is empty.
    summary: Option<Box<Signal>>,
    /// The members, in arrival order; never empty.
    members: Members,
}

impl Notification {
    /// The notification of `members` at `now`; `None` when there are none (or the summary cannot
    /// be built).
    pub(crate) fn of(now: DateTime<Utc>, members: Members) -> Option<Self> {
        match members.len() {
            0 => None,
            1 => Some(Self { summary: None, members }),
            _ => summarise(now, &members).map(|summary| Self { summary: Some(Box::new(summary)), members }),
        }
    }

    /// What a person reads: "3 stale-deal-nudge signals" listing every member, or the one
    /// member itself.
    pub fn summary(&self) -> &Signal {
        // A notification is built with at least one member (`Notification::of`).
        self.summary.as_deref().or_else(|| self.members.first()).expect("a notification has a member")
    }

    /// The members, in arrival order.
    pub fn members(&self) -> &[Signal] {
        &self.members
    }

    pub(crate) fn into_parts(self) -> (Option<Box<Signal>>, Members) {
        (self.summary, self.members)
    }

    pub(crate) fn from_parts(summary: Option<Box<Signal>>, members: Members) -> Self {
        Self { summary, members }
    }

    /// The members, by value.
    pub fn into_members(self) -> Vec<Signal> {
        self.members.into_vec()
    }

    /// The summary, by value.
    pub fn into_summary(self) -> Signal {
        match self.summary {
            Some(summary) => *summary,
            // A notification is built with at least one member (`Notification::of`).
            None => self.members.into_iter().next().expect("a notification has a member"),
        }
    }
}

/// Groups up to this size find a pending cause by scanning their members; bigger ones keep an
/// index, so that joining a big group stays O(log n) while a small one allocates nothing.
const SMALL_GROUP: usize = 8;

#[derive(Clone, Serialize, Deserialize)]
struct Group {
    created_at: DateTime<Utc>,
    last_flush_at: Option<DateTime<Utc>>,
    /// Serialized as a list, as in format 1.
    pending: Members,
    /// The pending members' causes while there are more than [`SMALL_GROUP`] of them, empty
    /// otherwise; derived from `pending` (format 1 stored it: it is read and ignored).
    #[serde(skip)]
    pending_causes: BTreeSet<Sha256Digest>,
    /// The group's (tenant, kind) as numbered by its grouper's [`Tenants`], once it was flushed:
    /// recording its notified causes then needs no lookup by name. A cache of the grouper that
    /// numbered it, never saved and cleared on [`Grouper::restore`] (another grouper numbers
    /// scopes in its own order).
    #[serde(skip)]
    scope: Option<u32>,
}

/// Equal when their timers and pending members are; the derived index and the cached scope
/// number are not part of what a group is.
impl PartialEq for Group {
    fn eq(&self, other: &Self) -> bool {
        self.created_at == other.created_at
            && self.last_flush_at == other.last_flush_at
            && self.pending == other.pending
    }
}

/// Printed as the derived `Debug` printed it before the scope number was cached: that number
/// belongs to the process holding the group (a restored one has none), not to the state, and a
/// logged state must read the same in every process (named shape `seed-order`).
impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("created_at", &self.created_at)
            .field("last_flush_at", &self.last_flush_at)
            .field("pending", &self.pending)
            .field("pending_causes", &self.pending_causes)
            .finish()
    }
}

impl Group {
    fn due(&self, config: &GroupingConfig) -> DateTime<Utc> {
        match self.last_flush_at {
            None => self.created_at + TimeDelta::seconds(config.group_wait_seconds),
            Some(last) => last + TimeDelta::seconds(config.group_interval_seconds),
        }
    }

    fn is_pending(&self, cause: &Sha256Digest) -> bool {
        if self.pending.len() <= SMALL_GROUP {
            self.pending.iter().any(|member| member.cause() == cause)
        } else {
            self.pending_causes.contains(cause)
        }
    }

    /// Adds `signal` unless its cause is pending already; returns whether it was added.
    fn join(&mut self, signal: Signal) -> bool {
        if self.is_pending(signal.cause()) {
            return false;
        }
        if self.pending.len() == SMALL_GROUP {
            self.pending_causes.extend(self.pending.iter().map(|member| *member.cause()));
        }
        if self.pending.len() >= SMALL_GROUP {
            self.pending_causes.insert(*signal.cause());
        }
        self.pending.push(signal);
        true
    }

    fn take_pending(&mut self) -> Members {
        self.pending_causes.clear();
        std::mem::take(&mut self.pending)
    }

    /// Rebuilds the derived index after a restore, and forgets the scope number (the restoring
    /// grouper numbers scopes anew).
    fn reindex(&mut self) {
        self.scope = None;
        self.pending_causes.clear();
        if self.pending.len() > SMALL_GROUP {
            self.pending_causes.extend(self.pending.iter().map(|member| *member.cause()));
        }
    }
}

/// When an entity (flap key) appeared after being absent, oldest first; serialized as a list.
/// Up to the default flap threshold fits inline.
type Appearances = SmallVec<[DateTime<Utc>; 3]>;

/// Rounds are numbered from 1; a key never seen was last active in no round.
const NO_ROUND: u64 = u64::MAX;

/// The flapping history of one entity (one flap key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Flap {
    /// The last round in which it was active.
    seen: u64,
    /// The round in which it was active before `seen` ([`NO_ROUND`] when none).
    before: u64,
    /// When it appeared after being absent, within the flap window, oldest first.
    times: Appearances,
}

/// cause → when it was last notified.
type NotifiedCauses = SeededMap<Sha256Digest, DateTime<Utc>>;

/// The causes notified for one tenant: by kind, as the store keys its claims (two signals of
/// different kinds with the same cause digest are different signals), and, from a state saved
/// before the kind was part of the key, causes that hold back a signal of any kind until they
/// expire.
///
/// Saved as `{kind: {cause: time}}`, the causes of any kind under the key `*` (never a kind's
/// name); a state saved as `{cause: time}` loads as causes of any kind.
#[derive(Debug, Clone, PartialEq, Default)]
struct TenantNotified {
    by_kind: BTreeMap<SignalKind, NotifiedCauses>,
    any_kind: NotifiedCauses,
}

impl TenantNotified {
    /// When the cause of `signal` was last notified for its kind (or for any kind).
    fn at(&self, signal: &Signal) -> Option<DateTime<Utc>> {
        let by_kind = self.by_kind.get(signal.kind()).and_then(|causes| causes.get(signal.cause()));
        by_kind.or_else(|| self.any_kind.get(signal.cause())).copied()
    }

    fn is_empty(&self) -> bool {
        self.by_kind.is_empty() && self.any_kind.is_empty()
    }
}

/// The key under which causes of any kind are saved.
const ANY_KIND: &str = "*";

impl Serialize for TenantNotified {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let sorted = |causes: &NotifiedCauses| -> BTreeMap<Sha256Digest, DateTime<Utc>> {
            causes.iter().map(|(cause, at)| (*cause, *at)).collect()
        };
        let extra = usize::from(!self.any_kind.is_empty());
        let mut map = serializer.serialize_map(Some(self.by_kind.len() + extra))?;
        if !self.any_kind.is_empty() {
            map.serialize_entry(ANY_KIND, &sorted(&self.any_kind))?;
        }
        for (kind, causes) in &self.by_kind {
            map.serialize_entry(kind.as_str(), &sorted(causes))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for TenantNotified {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        /// A kind's causes (format 3), or one cause's time (format 1 and 2: the key is the
        /// cause).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Causes(BTreeMap<Sha256Digest, DateTime<Utc>>),
            At(DateTime<Utc>),
        }
        let entries: BTreeMap<String, Entry> = Deserialize::deserialize(deserializer)?;
        let mut notified = Self::default();
        for (key, entry) in entries {
            match entry {
                Entry::At(at) => {
                    let cause = Sha256Digest::from_hex(&key).map_err(D::Error::custom)?;
                    notified.any_kind.insert(cause, at);
                }
                Entry::Causes(causes) if key == ANY_KIND => notified.any_kind.extend(causes),
                Entry::Causes(causes) => {
                    let kind = SignalKind::new(key).map_err(D::Error::custom)?;
                    notified.by_kind.insert(kind, causes.into_iter().collect());
                }
            }
        }
        Ok(notified)
    }
}

/// tenant → the causes notified (see [`TenantNotified`]).
type Notified = BTreeMap<TenantId, TenantNotified>;

/// The flap histories by their full key (see [`flap_key`]); saved sorted by key.
type Flaps = SeededMap<Arc<str>, Flap>;

mod flaps_serde {
    use super::{Arc, BTreeMap, Flap, Flaps};

    pub(super) fn serialize<S: serde::Serializer>(flaps: &Flaps, serializer: S) -> Result<S::Ok, S::Error> {
        let sorted: BTreeMap<&str, &Flap> = flaps.iter().map(|(key, flap)| (&**key, flap)).collect();
        serde::Serialize::serialize(&sorted, serializer)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Flaps, D::Error> {
        let sorted: BTreeMap<String, Flap> = serde::Deserialize::deserialize(deserializer)?;
        Ok(sorted.into_iter().map(|(key, flap)| (Arc::from(key), flap)).collect())
    }
}

/// The grouper's serializable state. Maps are keyed by tenant first, so that lookups borrow the
/// signal's own values instead of building keys.
///
/// Format 2: flapping is tracked by the full key (tenant, kind, subject) instead of its 64-bit
/// hash, so that no crafted subject can merge its history with another entity's. A format-1
/// state's hashed flap history (`previous_keys`, `appearances`) is ignored on restore: every
/// entity starts counting its appearances again.
///
/// Format 3: notified causes are kept per (tenant, kind, cause), the key of the store's claims;
/// a cause saved per (tenant, cause) holds back signals of any kind until it expires.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GroupingState {
    /// tenant → kind → group.
    groups: BTreeMap<TenantId, BTreeMap<SignalKind, Group>>,
    /// tenant → kind → cause → when it was last notified; causes hashed (one probe instead of a
    /// walk down a tree of every cause notified within `repeat_interval`), saved sorted.
    notified: Notified,
    /// The number of the last round observed.
    #[serde(default)]
    round: u64,
    /// flap key → its history: the rounds it was last active in and when it appeared after being
    /// absent, within the flap window.
    #[serde(default, with = "flaps_serde")]
    flaps: Flaps,
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
    /// Notified causes in notification order and appearances in time order, so that expiry
    /// pops the oldest instead of scanning; derived from the state (rebuilt on restore). A
    /// tenant is named by its index in `tenants`, so that recording a notification allocates
    /// nothing.
    notified_order: VecDeque<(DateTime<Utc>, u32, Sha256Digest)>,
    /// Appearances and new flap keys in time order; an entry whose key is still active when its
    /// window ends is queued again, so that every key is looked at once per window at least.
    appearance_order: VecDeque<(DateTime<Utc>, Arc<str>)>,
    /// Every tenant notified since the start (a gate serves one agent: few).
    tenants: Tenants,
    /// Buffers reused across rounds: a flap or inhibition key being built, and the inhibitors'
    /// index (full key → rule).
    key: String,
    inhibitors: SeededMap<String, usize>,
}

fn label<'a>(signal: &'a Signal, name: &str) -> Option<&'a str> {
    signal.evidence().get("labels")?.get(name)?.as_str()
}

/// Appends `part` with its length in front (`5:acme,`), so that a sequence of parts is
/// written one way only: no two different sequences give the same key.
fn push_part(key: &mut String, part: &str) {
    // The length in decimal, without `core::fmt` (this runs for every signal of every round).
    push_decimal(key, part.len());
    key.push(':');
    key.push_str(part);
    key.push(',');
}

/// Appends `value` in decimal, digit by digit (no `core::fmt`, no UTF-8 check of a buffer, no
/// copy call). Lengths of tenants, kinds, subjects and labels are almost always below 100: one
/// or two digits without recursion.
#[inline]
fn push_decimal(key: &mut String, value: usize) {
    let digit = |value: usize| char::from(b'0' + (value % 10) as u8);
    if value >= 100 {
        push_decimal(key, value / 100);
        key.push(digit(value / 10));
    } else if value >= 10 {
        key.push(digit(value / 10));
    }
    key.push(digit(value));
}

/// The number of decimal digits of `value`.
fn decimal_digits(value: usize) -> usize {
    let mut digits = 1;
    let mut rest = value;
    while rest >= 10 {
        rest /= 10;
        digits += 1;
    }
    digits
}

/// Writes the full flap key of `signal` (tenant, kind, subject) into `key`. Keys are compared
/// whole, never by a hash alone, so that a crafted subject cannot pass for another entity.
fn flap_key(key: &mut String, signal: &Signal) {
    key.clear();
    push_part(key, signal.tenant().as_str());
    push_part(key, signal.kind().as_str());
    push_part(key, signal.subject());
}

/// Writes the full key under which a signal of `rule` (by index) meets its inhibitors: the rule,
/// the tenant and the values of the `equal` labels; `false` when the signal lacks one of them
/// (it can then neither inhibit nor be inhibited by that rule).
fn inhibition_key(key: &mut String, signal: &Signal, index: usize, rule: &InhibitRule) -> bool {
    key.clear();
    // The rule's index as a part, as `push_part` writes its decimal text.
    push_decimal(key, decimal_digits(index));
    key.push(':');
    push_decimal(key, index);
    key.push(',');
    push_part(key, signal.tenant().as_str());
    for name in &rule.equal {
        let Some(value) = label(signal, name) else { return false };
        push_part(key, value);
    }
    true
}

/// The group of `signal`'s (tenant, kind), created at `now` when new. Looks up by reference first;
/// keys are cloned only when a tenant or group is new.
fn group_mut<'a>(state: &'a mut GroupingState, now: DateTime<Utc>, signal: &Signal) -> &'a mut Group {
    if !state.groups.contains_key(signal.tenant()) {
        state.groups.insert(signal.tenant().clone(), BTreeMap::new());
    }
    let kinds = state.groups.get_mut(signal.tenant()).expect("inserted above");
    if !kinds.contains_key(signal.kind()) {
        let group = Group {
            created_at: now,
            last_flush_at: None,
            pending: Members::new(),
            pending_causes: BTreeSet::new(),
            scope: None,
        };
        kinds.insert(signal.kind().clone(), group);
    }
    kinds.get_mut(signal.kind()).expect("inserted above")
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
    pub fn restore(config: GroupingConfig, mut state: GroupingState) -> Result<Self> {
        config.validate()?;
        let mut tenants = Tenants::default();
        let mut notified_order = Vec::new();
        for (tenant, notified) in &state.notified {
            if !notified.any_kind.is_empty() {
                let index = tenants.intern(tenant, None);
                notified_order.extend(notified.any_kind.iter().map(|(cause, at)| (*at, index, *cause)));
            }
            for (kind, causes) in &notified.by_kind {
                let index = tenants.intern(tenant, Some(kind));
                notified_order.extend(causes.iter().map(|(cause, at)| (*at, index, *cause)));
            }
        }
        notified_order.sort();
        // Every key is queued at its appearances; a key without one (active, not appearing
        // again) is queued at its oldest possible time, so that it is looked at again.
        let mut appearance_order: Vec<(DateTime<Utc>, Arc<str>)> = Vec::new();
        for (key, flap) in &state.flaps {
            if flap.times.is_empty() {
                appearance_order.push((DateTime::UNIX_EPOCH, Arc::clone(key)));
            }
            appearance_order.extend(flap.times.iter().map(|at| (*at, Arc::clone(key))));
        }
        appearance_order.sort();
        for group in state.groups.values_mut().flat_map(BTreeMap::values_mut) {
            group.reindex();
        }
        Ok(Self {
            config,
            state,
            notified_order: notified_order.into(),
            appearance_order: appearance_order.into(),
            tenants,
            key: String::new(),
            inhibitors: SeededMap::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GroupingConfig {
        &self.config
    }

    /// The state, to persist.
    pub fn state(&self) -> &GroupingState {
        &self.state
    }

    /// Every suppression recorded, oldest first (at most `log_capacity`).
    pub fn suppressed(&self) -> impl Iterator<Item = &Suppressed> {
        self.state.log.iter()
    }

    /// Takes the suppression records out.
    pub fn drain_suppressed(&mut self) -> Vec<Suppressed> {
        self.state.log.drain(..).collect()
    }

    /// Hands over the signals active at `now`; returns what happened to each one that did not
    /// simply join its group (every one of them is also in [`Grouper::suppressed`]).
    pub fn observe(&mut self, now: DateTime<Utc>, mut active: Vec<Signal>) -> Vec<Suppressed> {
        let mut outcomes = Vec::new();
        self.observe_into(now, &mut active, &mut Vec::new(), &mut outcomes);
        outcomes
    }

    /// As [`Grouper::observe`], taking the signals out of `active` (whose buffer the caller
    /// reuses) and appending to `outcomes`. `explanations[i]`, when given, is the explanation
    /// whose `because` line `active[i]` does not hold yet: it is written when the signal joins
    /// its group, and never for a signal held back.
    pub(crate) fn observe_into(
        &mut self,
        now: DateTime<Utc>,
        active: &mut Vec<Signal>,
        explanations: &mut Vec<Option<Because>>,
        outcomes: &mut Vec<Suppressed>,
    ) {
        self.expire(now);
        self.state.round = self.state.round.saturating_add(1);
        let round = self.state.round;
        // Inhibitors, indexed once per round: (rule, tenant, equal label values) of every active
        // source signal, so that checking a target is one lookup, not a scan of the round. Keys
        // are full keys: a crafted label value cannot pass for another's.
        let mut inhibitors = std::mem::take(&mut self.inhibitors);
        let mut key = std::mem::take(&mut self.key);
        inhibitors.clear();
        for (index, rule) in self.config.inhibit.iter().enumerate() {
            for source in active.iter().filter(|signal| signal.kind().as_str() == rule.source) {
                if inhibition_key(&mut key, source, index, rule) && !inhibitors.contains_key(&key) {
                    inhibitors.insert(key.clone(), index);
                }
            }
        }
        let mut pending = explanations.drain(..);
        for signal in active.drain(..) {
            let because = pending.next().flatten();
            let inhibited = self.inhibited_by(&signal, &inhibitors, &mut key);
            let notified_at =
                self.state.notified.get(signal.tenant()).and_then(|notified| notified.at(&signal));
            // Every active signal marks its entity active in this round; only one that is not
            // held back by inhibition or repeat records an appearance (as before the change to
            // full keys). One lookup either way.
            flap_key(&mut key, &signal);
            let held = inhibited.is_some() || notified_at.is_some();
            let appearances = self.touch_flap(&key, round, now, !held);
            if let Some(detail) = inhibited {
                outcomes.push(self.record(now, &signal, Reason::Inhibited, detail));
                continue;
            }
            if let Some(notified_at) = notified_at {
                let detail = ["already notified at ", &time_text(notified_at)].concat();
                outcomes.push(self.record(now, &signal, Reason::Repeat, detail));
                continue;
            }
            if appearances >= self.config.flap_threshold as usize {
                let detail =
                    ["flapping: appeared ", &appearances.to_string(), " times within the flap window"]
                        .concat();
                outcomes.push(self.record(now, &signal, Reason::Cooldown, detail));
                continue;
            }
            // One lookup by (tenant, kind) for a group that exists (the usual case); creating one
            // looks up again.
            let group = match self
                .state
                .groups
                .get_mut(signal.tenant())
                .and_then(|kinds| kinds.get_mut(signal.kind()))
            {
                Some(group) => group,
                None => group_mut(&mut self.state, now, &signal),
            };
            if group.is_pending(signal.cause()) {
                continue;
            }
            let due = group.due(&self.config);
            let delayed = (due > now).then(|| (signal.id(), signal.kind().clone()));
            let mut signal = signal;
            if let Some(because) = because {
                because.write_into(&mut signal);
                // An explanation of its own goes back to this thread's spare, which the next
                // evaluation's recorder takes (as the engine does with its own): no allocation
                // per signal. A shared one is the engine batch's and is only released.
                because.recycle();
            }
            group.join(signal);
            if let Some((id, kind)) = delayed {
                let detail = ["grouped; the group is due at ", &time_text(due)].concat();
                outcomes.push(self.log(Suppressed {
                    signal: id,
                    kind,
                    reason: Reason::Grouped,
                    detail,
                    at: now,
                }));
            }
        }
        drop(pending);
        self.key = key;
        self.inhibitors = inhibitors;
    }

    /// The notifications due at `now`, in (tenant, kind) order.
    pub fn flush(&mut self, now: DateTime<Utc>) -> Vec<Notification> {
        let mut notifications = Vec::new();
        self.flush_into(now, &mut notifications);
        notifications
    }

    /// As [`Grouper::flush`], appending to `notifications` (a buffer the caller reuses).
    pub(crate) fn flush_into(&mut self, now: DateTime<Utc>, notifications: &mut Vec<Notification>) {
        for (tenant, kinds) in &mut self.state.groups {
            for (kind, group) in kinds.iter_mut() {
                if group.pending.is_empty() || group.due(&self.config) > now {
                    continue;
                }
                let members = group.take_pending();
                group.last_flush_at = Some(now);
                // One lookup when the tenant and kind were notified before (the usual case).
                let notified = match self
                    .state
                    .notified
                    .get_mut(tenant)
                    .and_then(|notified| notified.by_kind.get_mut(kind))
                {
                    Some(notified) => notified,
                    None => {
                        let notified = self.state.notified.entry(tenant.clone()).or_default();
                        notified.by_kind.entry(kind.clone()).or_default()
                    }
                };
                let index = *group.scope.get_or_insert_with(|| self.tenants.intern(tenant, Some(kind)));
                for member in &members {
                    notified.insert(*member.cause(), now);
                    self.notified_order.push_back((now, index, *member.cause()));
                }
                notifications.extend(Notification::of(now, members));
            }
        }
    }

    /// Puts members whose message could not be sent back into their groups (due at once) and
    /// forgets that they were notified, so the next round offers them again.
    pub(crate) fn requeue(&mut self, now: DateTime<Utc>, members: impl IntoIterator<Item = Signal>) {
        for member in members {
            let notified = self.state.notified.get_mut(member.tenant());
            if let Some(causes) = notified.and_then(|notified| notified.by_kind.get_mut(member.kind())) {
                causes.remove(member.cause());
            }
            let group = group_mut(&mut self.state, now, &member);
            // Due at once: the message was due already when sending it failed.
            group.last_flush_at = None;
            group.created_at = now - TimeDelta::seconds(self.config.group_wait_seconds);
            group.join(member);
        }
    }

    /// Marks the entity of flap key `key` active in `round`; when `record`, records an
    /// appearance at `now` if it was not active in the round before (several signals of one
    /// entity in a round count once). Returns its appearances within the flap window.
    fn touch_flap(&mut self, key: &str, round: u64, now: DateTime<Utc>, record: bool) -> usize {
        if let Some(flap) = self.state.flaps.get_mut(key) {
            if flap.seen != round {
                flap.before = flap.seen;
                flap.seen = round;
            }
            let appeared = flap.before != round - 1;
            if !(record && appeared && flap.times.last() != Some(&now)) {
                return flap.times.len();
            }
            flap.times.push(now);
            let count = flap.times.len();
            // The queue needs the shared key: a second lookup, only when an entity reappears.
            if let Some((shared, _)) = self.state.flaps.get_key_value(key) {
                self.appearance_order.push_back((now, Arc::clone(shared)));
            }
            return count;
        }
        // A new entity is queued at once, also when it records no appearance, so that it is
        // looked at again (and forgotten once inactive) one window from now.
        let shared: Arc<str> = Arc::from(key);
        self.appearance_order.push_back((now, Arc::clone(&shared)));
        let times: Appearances = if record { smallvec::smallvec![now] } else { Appearances::new() };
        let count = times.len();
        self.state.flaps.insert(shared, Flap { seen: round, before: NO_ROUND, times });
        count
    }

    fn inhibited_by(
        &self,
        signal: &Signal,
        inhibitors: &SeededMap<String, usize>,
        key: &mut String,
    ) -> Option<String> {
        if inhibitors.is_empty() {
            return None;
        }
        for (index, rule) in self.config.inhibit.iter().enumerate() {
            if rule.target != signal.kind().as_str() {
                continue;
            }
            // The key includes the rule's index, so a hit is a source of this very rule.
            if !(inhibition_key(key, signal, index, rule) && inhibitors.contains_key(key.as_str())) {
                continue;
            }
            return Some(["inhibited by ", &rule.source, " with equal ", &rule.equal.join(", ")].concat());
        }
        None
    }

    fn record(&mut self, now: DateTime<Utc>, signal: &Signal, reason: Reason, detail: String) -> Suppressed {
        self.log(Suppressed { signal: signal.id(), kind: signal.kind().clone(), reason, detail, at: now })
    }

    /// Records a suppression decided outside the grouper (by the [`crate::gate::Gate`]), so that
    /// one log holds every reason.
    pub(crate) fn log(&mut self, suppressed: Suppressed) -> Suppressed {
        if self.state.log.len() >= self.config.log_capacity {
            self.state.log.pop_front();
        }
        self.state.log.push_back(suppressed.clone());
        suppressed
    }

    fn expire(&mut self, now: DateTime<Utc>) {
        // Notified causes and appearances expire oldest first from their time-ordered queues:
        // one comparison when nothing expired, whatever the size of the state.
        let repeat = TimeDelta::seconds(self.config.repeat_interval_seconds);
        while let Some((at, _, _)) = self.notified_order.front() {
            if now - *at < repeat {
                break;
            }
            let Some((at, tenant, cause)) = self.notified_order.pop_front() else { break };
            let Some((tenant, kind)) = self.tenants.name(tenant) else { continue };
            if let Some(notified) = self.state.notified.get_mut(tenant) {
                let causes = match kind {
                    Some(kind) => notified.by_kind.get_mut(kind),
                    None => Some(&mut notified.any_kind),
                };
                if let Some(causes) = causes {
                    // A cause notified again later has a newer entry; only the matching one
                    // expires.
                    if causes.get(&cause) == Some(&at) {
                        causes.remove(&cause);
                    }
                    if causes.is_empty()
                        && let Some(kind) = kind
                    {
                        notified.by_kind.remove(kind);
                    }
                }
                if notified.is_empty() {
                    self.state.notified.remove(tenant);
                }
            }
        }
        let window = TimeDelta::seconds(self.config.flap_window_seconds);
        // The round that is about to be observed is `round + 1`: a key last active in `round`
        // may still be active in it, and is kept.
        let round = self.state.round;
        while let Some((at, _)) = self.appearance_order.front() {
            if now - *at < window {
                break;
            }
            let Some((at, key)) = self.appearance_order.pop_front() else { break };
            let Some(flap) = self.state.flaps.get_mut(&*key) else { continue };
            if flap.times.first() == Some(&at) {
                flap.times.remove(0);
            }
            if !flap.times.is_empty() {
                // A later appearance is queued: it is looked at again then.
                continue;
            }
            if flap.seen == round {
                // Still active: looked at again one window from now.
                self.appearance_order.push_back((now, key));
            } else {
                self.state.flaps.remove(&*key);
            }
        }
        // Groups are few (one per tenant and ruliad): they are swept at most once per minute of
        // clock time.
        if self.state.swept_at.is_some_and(|swept| now - swept < TimeDelta::minutes(1)) {
            return;
        }
        self.state.swept_at = Some(now);
        let interval = TimeDelta::seconds(self.config.group_interval_seconds);
        for kinds in self.state.groups.values_mut() {
            kinds.retain(|_, group| {
                !group.pending.is_empty() || group.last_flush_at.is_none_or(|last| now - last <= interval)
            });
        }
        self.state.groups.retain(|_, kinds| !kinds.is_empty());
    }
}

/// The (tenant, kind) scopes of notified causes named by a small number, so that a queue entry
/// holds no string; the kind is `None` for causes of any kind (from an older state).
#[derive(Debug, Clone, PartialEq, Default)]
struct Tenants {
    names: Vec<(TenantId, Option<SignalKind>)>,
    indexes: BTreeMap<TenantId, (Option<u32>, BTreeMap<SignalKind, u32>)>,
}

impl Tenants {
    /// The index of (`tenant`, `kind`), added when new (cloning them once).
    fn intern(&mut self, tenant: &TenantId, kind: Option<&SignalKind>) -> u32 {
        let next = self.names.len() as u32;
        if !self.indexes.contains_key(tenant) {
            self.indexes.insert(tenant.clone(), (None, BTreeMap::new()));
        }
        let (any_kind, by_kind) = self.indexes.get_mut(tenant).expect("inserted above");
        let index = match kind {
            None => *any_kind.get_or_insert(next),
            Some(kind) => match by_kind.get(kind) {
                Some(index) => *index,
                None => {
                    by_kind.insert(kind.clone(), next);
                    next
                }
            },
        };
        if index == next {
            self.names.push((tenant.clone(), kind.cloned()));
        }
        index
    }

    fn name(&self, index: u32) -> Option<(&TenantId, Option<&SignalKind>)> {
        self.names.get(index as usize).map(|(tenant, kind)| (tenant, kind.as_ref()))
    }
}

/// One signal summarising a group's members (their subjects and texts, one line each).
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

#[cfg(test)]
mod tests {
    use super::{decimal_digits, push_decimal, push_part};

    /// Flap keys are saved: the length-prefixed format (`5:acme,`) must not change.
    #[test]
    fn key_parts_are_length_prefixed_in_decimal() {
        let mut key = String::new();
        push_part(&mut key, "acme");
        push_part(&mut key, "");
        push_part(&mut key, &"x".repeat(123));
        assert_eq!(key, ["4:acme,0:,123:", &"x".repeat(123), ","].concat());
        for value in [0, 7, 9, 10, 42, 99, 100, 101, 110, 999, 1_000, 1_009, 12_345, 99_999, usize::MAX] {
            let mut text = String::new();
            push_decimal(&mut text, value);
            assert_eq!(text, value.to_string());
            assert_eq!(decimal_digits(value), text.len());
        }
    }
}
