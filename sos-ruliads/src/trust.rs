//! The trust gate: an agent earns trust before it speaks often.
//!
//! Lifecycle (seed 000, section 3): **Plant** (deployed, silent) → **Introduce** (one hello
//! message, then observe) → **Observe** (count messages) → **First insight** (only after at least
//! `min_messages` observed messages and `insight_after_days` days) → **Intervene** (from day
//! `intervene_after_days`, once an insight was accepted).
//!
//! Released signals spend from a token bucket that refills at the *budget* (signals per day).
//! Accepting or acknowledging a signal raises the budget, rejecting or ignoring it lowers it,
//! always within `[floor, ceiling]`; the floor is above zero, so an agent that earned the right to
//! speak never falls silent for ever. Withheld signals are kept with their reason. The whole
//! state is plain serde data.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sos_core::{Signal, SignalId, SignalKind, TenantId};

use crate::error::{Error, Result};
use crate::hashing::SeededMap;
use crate::ruliad::Class;

/// Why a signal did not go out (yet). Every suppressed or delayed signal records one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// Waiting to be sent together with its group.
    Grouped,
    /// Inhibited by another active signal with equal labels.
    Inhibited,
    /// Already sent within the repeat interval.
    Repeat,
    /// The rate budget is spent for now, or the entity is flapping.
    Cooldown,
    /// The agent has not earned the right to send this class of signal yet.
    Trust,
    /// The trigger ceiling refused it.
    Ceiling,
}

impl Reason {
    /// The reason's name (`grouped`, `inhibited`, `repeat`, `cooldown`, `trust`, `ceiling`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Grouped => "grouped",
            Self::Inhibited => "inhibited",
            Self::Repeat => "repeat",
            Self::Cooldown => "cooldown",
            Self::Trust => "trust",
            Self::Ceiling => "ceiling",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A signal kept back, with why and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Withheld {
    /// The signal.
    pub signal: Signal,
    /// Its class.
    pub class: Class,
    /// Why it was withheld.
    pub reason: Reason,
    /// A sentence for people ("observing: 12 of 20 messages").
    pub detail: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// The gate's configuration; a pack's `trust` object. Defaults follow the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Observed messages before the first insight (default 20).
    pub min_messages: u32,
    /// Days after planting before the first insight (default 3).
    pub insight_after_days: u32,
    /// Days after planting before the first intervention (default 14).
    pub intervene_after_days: u32,
    /// The lowest budget in signals per day, above zero (default 0.2: one every five days).
    pub floor_per_day: f64,
    /// The highest budget in signals per day (default 5).
    pub ceiling_per_day: f64,
    /// The starting budget (default 1 per day).
    pub initial_per_day: f64,
    /// Factor applied on accept or acknowledge (default 1.25, at least 1).
    pub accept_factor: f64,
    /// Factor applied on reject (default 0.5, in (0, 1]).
    pub reject_factor: f64,
    /// Factor applied on ignore (default 0.8, in (0, 1]).
    pub ignore_factor: f64,
    /// Days without feedback after which a released signal counts as ignored (default 3).
    pub ignore_after_days: u32,
    /// The most withheld signals kept (default 1000); the oldest are dropped and counted.
    pub withheld_capacity: usize,
}

impl Default for TrustConfig {
    fn default() -> Self {
        Self {
            min_messages: 20,
            insight_after_days: 3,
            intervene_after_days: 14,
            floor_per_day: 0.2,
            ceiling_per_day: 5.0,
            initial_per_day: 1.0,
            accept_factor: 1.25,
            reject_factor: 0.5,
            ignore_factor: 0.8,
            ignore_after_days: 3,
            withheld_capacity: 1000,
        }
    }
}

impl TrustConfig {
    /// Checks the bounds and factors.
    ///
    /// # Errors
    ///
    /// [`Error::TrustConfig`] saying which value is out of range.
    pub fn validate(&self) -> Result<()> {
        let finite = [
            self.floor_per_day,
            self.ceiling_per_day,
            self.initial_per_day,
            self.accept_factor,
            self.reject_factor,
            self.ignore_factor,
        ];
        if finite.iter().any(|value| !value.is_finite()) {
            return Err(Error::TrustConfig("every rate and factor must be a finite number"));
        }
        if self.floor_per_day <= 0.0 {
            return Err(Error::TrustConfig(
                "floor_per_day must be above 0 so that earned trust never falls to zero",
            ));
        }
        if self.ceiling_per_day < self.floor_per_day {
            return Err(Error::TrustConfig("ceiling_per_day must be at least floor_per_day"));
        }
        if self.initial_per_day < self.floor_per_day || self.initial_per_day > self.ceiling_per_day {
            return Err(Error::TrustConfig(
                "initial_per_day must lie between floor_per_day and ceiling_per_day",
            ));
        }
        if self.accept_factor < 1.0 {
            return Err(Error::TrustConfig(
                "accept_factor must be at least 1 so that accepts never lower the rate",
            ));
        }
        for factor in [self.reject_factor, self.ignore_factor] {
            if factor <= 0.0 || factor > 1.0 {
                return Err(Error::TrustConfig("reject_factor and ignore_factor must lie in (0, 1]"));
            }
        }
        if self.insight_after_days > self.intervene_after_days {
            return Err(Error::TrustConfig("insight_after_days must not exceed intervene_after_days"));
        }
        if self.withheld_capacity == 0 {
            return Err(Error::TrustConfig("withheld_capacity must be at least 1"));
        }
        Ok(())
    }
}

/// Where the agent is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Deployed, silent, not yet introduced.
    Planted,
    /// Introduced; observing the business's rhythm.
    Observing,
    /// Has shared its first insight.
    Insight,
    /// May intervene.
    Intervening,
}

/// What people did with a released signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feedback {
    /// They took the suggestion.
    Accepted,
    /// They acknowledged it (counts like an accept).
    Acknowledged,
    /// They said no.
    Rejected,
    /// They did not react.
    Ignored,
}

/// What the gate decided for one signal.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Decision {
    /// It may go out now.
    Release,
    /// It is kept back; see [`TrustGate::withheld`].
    Withhold {
        /// Why.
        reason: Reason,
        /// A sentence for people.
        detail: String,
    },
}

/// The gate's serializable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustState {
    /// The lifecycle phase.
    pub phase: Phase,
    /// When the agent was planted.
    pub planted_at: DateTime<Utc>,
    /// Messages observed so far.
    pub observed_messages: u64,
    /// When the first insight went out.
    pub first_insight_at: Option<DateTime<Utc>>,
    /// Whether people accepted (or acknowledged) an insight.
    pub insight_accepted: bool,
    /// The budget in signals per day.
    pub budget_per_day: f64,
    /// Tokens in the bucket.
    pub tokens: f64,
    /// When the bucket was last refilled.
    pub refilled_at: DateTime<Utc>,
    /// Released signals awaiting feedback, per tenant: (tenant, id) → (class, released at).
    pub outstanding: Outstanding,
    /// Withheld signals, oldest first.
    pub withheld: VecDeque<Withheld>,
    /// How many withheld signals were dropped because the list was full.
    pub withheld_dropped: u64,
    /// When unanswered signals were last swept into "ignored" (at most once per minute).
    #[serde(default)]
    pub swept_at: Option<DateTime<Utc>>,
}

/// A released signal's class and when it was released.
type Released = (Class, DateTime<Utc>);

/// The released signals awaiting feedback, keyed per tenant: (tenant, [`SignalId`]).
///
/// A host may set a signal's id itself, so two tenants served by one agent can release signals
/// with the same id; keyed by the id alone, one tenant's feedback answered (and moved the budget
/// for) the other tenant's signal, and one tenant's release replaced the other's outstanding
/// entry (named shape `tenant-crosstalk`). Each tenant's ids are hashed (one probe per release
/// and per feedback).
///
/// Saved as `{tenant: {id: [class, released at]}}`, sorted. A state saved before the tenant was
/// part of the key (`{id: [class, released at]}`) loads its signals as of no known tenant (saved
/// under `*`, never a tenant id): feedback from any tenant still answers them, as it did, until
/// they count as ignored after `ignore_after_days`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outstanding {
    by_tenant: BTreeMap<TenantId, SeededMap<SignalId, Released>>,
    /// From a state saved without tenants.
    any_tenant: SeededMap<SignalId, Released>,
}

/// The key under which signals of no known tenant are saved.
const ANY_TENANT: &str = "*";

impl Outstanding {
    /// The number of signals awaiting feedback.
    pub fn len(&self) -> usize {
        self.any_tenant.len() + self.by_tenant.values().map(|ids| ids.len()).sum::<usize>()
    }

    /// Whether no signal awaits feedback.
    pub fn is_empty(&self) -> bool {
        self.any_tenant.is_empty() && self.by_tenant.is_empty()
    }

    /// The class and release time of `tenant`'s signal `id`, if it awaits feedback (also one of
    /// no known tenant, from an older state).
    pub fn get(&self, tenant: &TenantId, id: SignalId) -> Option<&(Class, DateTime<Utc>)> {
        self.get_in(Some(tenant), id).or_else(|| self.get_in(None, id))
    }

    /// Exactly the entry of (`tenant`, `id`); `None` names the signals of no known tenant.
    fn get_in(&self, tenant: Option<&TenantId>, id: SignalId) -> Option<&Released> {
        match tenant {
            Some(tenant) => self.by_tenant.get(tenant)?.get(&id),
            None => self.any_tenant.get(&id),
        }
    }

    fn insert(&mut self, tenant: &TenantId, id: SignalId, released: Released) {
        if let Some(ids) = self.by_tenant.get_mut(tenant) {
            ids.insert(id, released);
            return;
        }
        let mut ids = SeededMap::default();
        ids.insert(id, released);
        self.by_tenant.insert(tenant.clone(), ids);
    }

    /// Removes exactly the entry of (`tenant`, `id`) (no tenant map is left empty).
    fn remove_in(&mut self, tenant: Option<&TenantId>, id: SignalId) -> Option<Released> {
        let Some(tenant) = tenant else { return self.any_tenant.remove(&id) };
        let ids = self.by_tenant.get_mut(tenant)?;
        let removed = ids.remove(&id);
        if ids.is_empty() {
            self.by_tenant.remove(tenant);
        }
        removed
    }
}

impl Serialize for Outstanding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let sorted = |ids: &SeededMap<SignalId, Released>| -> BTreeMap<SignalId, Released> {
            ids.iter().map(|(id, released)| (*id, *released)).collect()
        };
        let extra = usize::from(!self.any_tenant.is_empty());
        let mut map = serializer.serialize_map(Some(self.by_tenant.len() + extra))?;
        if !self.any_tenant.is_empty() {
            map.serialize_entry(ANY_TENANT, &sorted(&self.any_tenant))?;
        }
        for (tenant, ids) in &self.by_tenant {
            map.serialize_entry(tenant.as_str(), &sorted(ids))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Outstanding {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        /// A tenant's signals (now), or one signal of no known tenant (saved before the tenant
        /// was part of the key: the key is its id).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Ids(BTreeMap<SignalId, Released>),
            Released(Released),
        }
        let entries: BTreeMap<String, Entry> = Deserialize::deserialize(deserializer)?;
        let mut outstanding = Self::default();
        for (key, entry) in entries {
            match entry {
                Entry::Released(released) => {
                    let id: SignalId = key.parse().map_err(D::Error::custom)?;
                    outstanding.any_tenant.insert(id, released);
                }
                Entry::Ids(ids) if key == ANY_TENANT => outstanding.any_tenant.extend(ids),
                Entry::Ids(ids) if ids.is_empty() => {}
                Entry::Ids(ids) => {
                    let tenant = TenantId::new(key).map_err(D::Error::custom)?;
                    outstanding.by_tenant.insert(tenant, ids.into_iter().collect());
                }
            }
        }
        Ok(outstanding)
    }
}

/// The most released signals kept awaiting feedback; the oldest count as ignored beyond this.
pub const OUTSTANDING_CAPACITY: usize = 10_000;

/// The trust gate of one agent; see the module docs.
#[derive(Debug, Clone)]
pub struct TrustGate {
    config: TrustConfig,
    state: TrustState,
    /// `state.outstanding` in release-time order, so that expiry and eviction take the oldest
    /// without scanning; derived from the state (rebuilt on restore), never persisted. Entries
    /// are dropped lazily: one whose signal was answered or released again no longer matches
    /// `outstanding` and is skipped when it comes up (and compacted away when the stale
    /// entries outnumber the live ones). A tenant is named by its index in `tenants`
    /// ([`NO_TENANT`] for signals of no known tenant), so that a release allocates nothing.
    order: VecDeque<(DateTime<Utc>, u32, SignalId)>,
    /// The tenants of `order`, derived like it.
    tenants: Vec<TenantId>,
}

/// The tenant index of signals of no known tenant (from a state saved without tenants).
const NO_TENANT: u32 = u32::MAX;

/// The tenant of a queue entry (`None` for signals of no known tenant).
fn tenant_name(tenants: &[TenantId], index: u32) -> Option<&TenantId> {
    if index == NO_TENANT {
        return None;
    }
    tenants.get(index as usize)
}

/// Equal when configuration and state are (the time-ordered index is derived from the state).
impl PartialEq for TrustGate {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && self.state == other.state
    }
}

impl TrustGate {
    /// Plants an agent at `now`.
    ///
    /// # Errors
    ///
    /// [`Error::TrustConfig`] when the configuration is invalid.
    pub fn plant(config: TrustConfig, now: DateTime<Utc>) -> Result<Self> {
        config.validate()?;
        let state = TrustState {
            phase: Phase::Planted,
            planted_at: now,
            observed_messages: 0,
            first_insight_at: None,
            insight_accepted: false,
            budget_per_day: config.initial_per_day,
            tokens: 1.0,
            refilled_at: now,
            outstanding: Outstanding::default(),
            withheld: VecDeque::new(),
            withheld_dropped: 0,
            swept_at: None,
        };
        Ok(Self { config, state, order: VecDeque::new(), tenants: Vec::new() })
    }

    /// Restores a gate from saved state.
    ///
    /// # Errors
    ///
    /// [`Error::TrustConfig`] when the configuration is invalid or the budget lies outside it.
    pub fn restore(config: TrustConfig, state: TrustState) -> Result<Self> {
        config.validate()?;
        if !(config.floor_per_day..=config.ceiling_per_day).contains(&state.budget_per_day) {
            return Err(Error::TrustConfig("the saved budget lies outside the configured floor and ceiling"));
        }
        // Tenants are numbered in name order and every entry is sorted: the index does not
        // depend on any map's (seeded) iteration order.
        let tenants: Vec<TenantId> = state.outstanding.by_tenant.keys().cloned().collect();
        let mut order: Vec<_> =
            state.outstanding.any_tenant.iter().map(|(id, (_, at))| (*at, NO_TENANT, *id)).collect();
        for (index, ids) in state.outstanding.by_tenant.values().enumerate() {
            let index = u32::try_from(index).unwrap_or(NO_TENANT - 1);
            order.extend(ids.iter().map(|(id, (_, at))| (*at, index, *id)));
        }
        order.sort_unstable();
        Ok(Self { config, state, order: order.into(), tenants })
    }

    /// The state, to persist.
    pub fn state(&self) -> &TrustState {
        &self.state
    }

    /// The configuration.
    pub fn config(&self) -> &TrustConfig {
        &self.config
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.state.phase
    }

    /// The budget in signals per day.
    pub fn budget_per_day(&self) -> f64 {
        self.state.budget_per_day
    }

    /// The withheld signals, oldest first.
    pub fn withheld(&self) -> impl Iterator<Item = &Withheld> {
        self.state.withheld.iter()
    }

    /// Takes the withheld signals out of the gate (for a digest or for storage).
    pub fn drain_withheld(&mut self) -> Vec<Withheld> {
        self.state.withheld.drain(..).collect()
    }

    /// The introduction: moves Plant → Observe and returns the one hello message. `agent_name`
    /// is plain text, never a template. Calling it again returns `None`.
    ///
    /// # Errors
    ///
    /// [`Error::Core`] when the name makes an invalid signal (empty or too long).
    pub fn introduce(
        &mut self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        agent_name: &str,
    ) -> Result<Option<Signal>> {
        if self.state.phase != Phase::Planted {
            return Ok(None);
        }
        let signal = Signal::builder(tenant.clone(), SignalKind::new("agent-introduction")?)
            .subject(["Hi, I'm ", agent_name].concat())
            .text(
                ["Hi, I'm ", agent_name, ". I'll be quiet for a few days while I learn your rhythm."]
                    .concat(),
            )
            .severity(sos_core::Severity::Info)
            .observed_at(now)
            .build()?;
        self.state.phase = Phase::Observing;
        Ok(Some(signal))
    }

    /// Counts one observed message.
    pub fn observe_message(&mut self) {
        self.state.observed_messages = self.state.observed_messages.saturating_add(1);
    }

    /// Decides whether `signal` of `class` may go out at `now`. A withheld signal is kept with
    /// its reason.
    pub fn offer(&mut self, now: DateTime<Utc>, signal: Signal, class: Class) -> Decision {
        match self.admit(now, signal.tenant(), signal.id(), class) {
            None => Decision::Release,
            Some((reason, detail)) => self.withhold(now, signal, class, reason, detail),
        }
    }

    /// [`TrustGate::offer`] without taking the signal: on release the signal counts as sent and
    /// awaits feedback; otherwise the reason is returned and the caller must keep the signal
    /// (with [`TrustGate::keep`]).
    pub(crate) fn admit(
        &mut self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        id: SignalId,
        class: Class,
    ) -> Option<(Reason, String)> {
        self.expire_feedback(now);
        self.update_phase(now);
        // The agent's age, only where a rule reads it (an intervening agent's interventions
        // never do).
        let age = || now - self.state.planted_at;
        let blocked = match (self.state.phase, class) {
            (Phase::Planted, _) => Some("the agent has not introduced itself yet".to_owned()),
            (_, Class::Insight) if self.state.observed_messages < u64::from(self.config.min_messages) => {
                Some(format!(
                    "observing: {} of {} messages",
                    self.state.observed_messages, self.config.min_messages
                ))
            }
            (_, Class::Insight) if age() < TimeDelta::days(i64::from(self.config.insight_after_days)) => {
                Some(format!("observing: day {} of {}", age().num_days(), self.config.insight_after_days))
            }
            (Phase::Intervening, Class::Intervention) => None,
            (_, Class::Intervention) if !self.state.insight_accepted => {
                Some("interventions wait until an insight was accepted".to_owned())
            }
            (_, Class::Intervention) => Some(format!(
                "interventions start on day {}; this is day {}",
                self.config.intervene_after_days,
                age().num_days()
            )),
            (_, Class::Insight) => None,
        };
        if let Some(detail) = blocked {
            return Some((Reason::Trust, detail));
        }
        self.refill(now);
        if self.state.tokens < 1.0 {
            let detail = format!("budget of {:.2} signals per day spent", self.state.budget_per_day);
            return Some((Reason::Cooldown, detail));
        }
        self.state.tokens -= 1.0;
        if class == Class::Insight && self.state.first_insight_at.is_none() {
            self.state.first_insight_at = Some(now);
            self.state.phase = self.state.phase.max(Phase::Insight);
        }
        while self.state.outstanding.len() >= OUTSTANDING_CAPACITY {
            let Some((at, tenant, oldest)) = self.order.pop_front() else { break };
            if self.is_current(at, tenant, oldest) {
                self.state.outstanding.remove_in(tenant_name(&self.tenants, tenant), oldest);
                self.adjust(Feedback::Ignored);
            }
        }
        // A signal released again by its tenant replaces that tenant's entry; the old queue
        // entry goes stale.
        self.state.outstanding.insert(tenant, id, (class, now));
        let tenant = self.tenant_index(tenant);
        self.enqueue(now, tenant, id);
        None
    }

    /// The index of `tenant` in the queue's tenants, added when new (cloned once).
    fn tenant_index(&mut self, tenant: &TenantId) -> u32 {
        // An agent serves few tenants: a short scan.
        if let Some(index) = self.tenants.iter().position(|known| known == tenant) {
            return u32::try_from(index).unwrap_or(NO_TENANT - 1);
        }
        self.tenants.push(tenant.clone());
        u32::try_from(self.tenants.len() - 1).unwrap_or(NO_TENANT - 1)
    }

    /// Whether the queue entry (`at`, `tenant`, `id`) is the outstanding signal's current one.
    fn is_current(&self, at: DateTime<Utc>, tenant: u32, id: SignalId) -> bool {
        if tenant != NO_TENANT && tenant as usize >= self.tenants.len() {
            return false;
        }
        let released = self.state.outstanding.get_in(tenant_name(&self.tenants, tenant), id);
        released.is_some_and(|(_, released)| *released == at)
    }

    /// Adds (`at`, `tenant`, `id`) to the time-ordered queue, compacting it when stale entries
    /// outnumber the live ones (so that it stays within twice the outstanding signals).
    fn enqueue(&mut self, at: DateTime<Utc>, tenant: u32, id: SignalId) {
        if self.order.len() >= 2 * self.state.outstanding.len() + 64 {
            let mut order = std::mem::take(&mut self.order);
            order.retain(|&(at, tenant, id)| self.is_current(at, tenant, id));
            self.order = order;
        }
        // Releases come in time order; a clock that went back is placed where it belongs.
        if self.order.back().is_none_or(|(last, _, _)| *last <= at) {
            self.order.push_back((at, tenant, id));
        } else {
            let index = self.order.partition_point(|(queued, _, _)| *queued <= at);
            self.order.insert(index, (at, tenant, id));
        }
    }

    /// Keeps a signal that [`TrustGate::admit`] held back.
    pub(crate) fn keep(
        &mut self,
        now: DateTime<Utc>,
        signal: Signal,
        class: Class,
        reason: Reason,
        detail: String,
    ) {
        self.withhold(now, signal, class, reason, detail);
    }

    /// Records `tenant`'s feedback on its released signal; returns `false` when the signal is
    /// unknown (never released for `tenant`, or already answered). Another tenant's signal with
    /// the same id is never answered (named shape `tenant-crosstalk`); a signal of no known
    /// tenant (from a state saved without tenants) is, as it was before.
    pub fn feedback(
        &mut self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        signal: SignalId,
        feedback: Feedback,
    ) -> bool {
        // Its queue entry goes stale and is skipped when it comes up.
        let removed = self.state.outstanding.remove_in(Some(tenant), signal);
        let Some((class, _)) = removed.or_else(|| self.state.outstanding.remove_in(None, signal)) else {
            return false;
        };
        self.answer(now, class, feedback);
        true
    }

    /// Moves the budget and the phase for feedback on a signal of `class`.
    fn answer(&mut self, now: DateTime<Utc>, class: Class, feedback: Feedback) {
        if class == Class::Insight && matches!(feedback, Feedback::Accepted | Feedback::Acknowledged) {
            self.state.insight_accepted = true;
        }
        self.adjust(feedback);
        self.update_phase(now);
    }

    fn adjust(&mut self, feedback: Feedback) {
        let factor = match feedback {
            Feedback::Accepted | Feedback::Acknowledged => self.config.accept_factor,
            Feedback::Rejected => self.config.reject_factor,
            Feedback::Ignored => self.config.ignore_factor,
        };
        self.state.budget_per_day = (self.state.budget_per_day * factor)
            .clamp(self.config.floor_per_day, self.config.ceiling_per_day);
    }

    fn expire_feedback(&mut self, now: DateTime<Utc>) {
        // Released signals unanswered for `ignore_after_days` count as ignored; the time-ordered
        // index makes this one comparison when nothing expired.
        let limit = TimeDelta::days(i64::from(self.config.ignore_after_days));
        while let Some(&(at, tenant, id)) = self.order.front() {
            if now - at < limit {
                break;
            }
            self.order.pop_front();
            if self.is_current(at, tenant, id) {
                let tenant = tenant_name(&self.tenants, tenant);
                if let Some((class, _)) = self.state.outstanding.remove_in(tenant, id) {
                    self.answer(now, class, Feedback::Ignored);
                }
            }
        }
        self.state.swept_at = Some(now);
    }

    fn update_phase(&mut self, now: DateTime<Utc>) {
        if self.state.phase == Phase::Intervening {
            // The last phase: nothing to compute.
            return;
        }
        let intervene_at = TimeDelta::days(i64::from(self.config.intervene_after_days));
        if self.state.phase >= Phase::Observing
            && self.state.insight_accepted
            && now - self.state.planted_at >= intervene_at
        {
            self.state.phase = Phase::Intervening;
        }
    }

    fn refill(&mut self, now: DateTime<Utc>) {
        let elapsed = (now - self.state.refilled_at).num_milliseconds().max(0) as f64 / 86_400_000.0;
        let capacity = self.state.budget_per_day.max(1.0);
        self.state.tokens = (self.state.tokens + elapsed * self.state.budget_per_day).min(capacity);
        self.state.refilled_at = self.state.refilled_at.max(now);
    }

    fn withhold(
        &mut self,
        now: DateTime<Utc>,
        signal: Signal,
        class: Class,
        reason: Reason,
        detail: String,
    ) -> Decision {
        if self.state.withheld.len() >= self.config.withheld_capacity {
            self.state.withheld.pop_front();
            self.state.withheld_dropped = self.state.withheld_dropped.saturating_add(1);
        }
        self.state.withheld.push_back(Withheld { signal, class, reason, detail: detail.clone(), at: now });
        Decision::Withhold { reason, detail }
    }
}
