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
/// entry (named shape `tenant-crosstalk`). A tenant is named by a small number in memory (an
/// agent serves few tenants), so that a release or a feedback is one hash probe and allocates
/// nothing.
///
/// Saved as `{tenant: {id: [class, released at]}}`, sorted. A state saved before the tenant was
/// part of the key (`{id: [class, released at]}`) loads its signals as of no known tenant (saved
/// under `*`, never a tenant id): feedback from any tenant still answers them, as it did, until
/// they count as ignored after `ignore_after_days`.
#[derive(Debug, Clone, Default)]
pub struct Outstanding {
    /// The tenants named by `entries`, by number (never removed: an agent serves few tenants;
    /// only those with signals are saved).
    tenants: Vec<TenantId>,
    /// (tenant number or [`NO_TENANT`], id) → class and release time.
    entries: SeededMap<(u32, SignalId), Released>,
}

/// The tenant number of signals of no known tenant (from a state saved without tenants).
const NO_TENANT: u32 = u32::MAX;

/// The key under which signals of no known tenant are saved.
const ANY_TENANT: &str = "*";

/// Equal when they hold the same signals for the same tenants (however the tenants are numbered).
impl PartialEq for Outstanding {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().all(|((tenant, id), released)| {
                let number = match self.tenant_name(*tenant) {
                    Some(name) => other.number_of(name),
                    None => Some(NO_TENANT),
                };
                number.is_some_and(|number| other.entries.get(&(number, *id)) == Some(released))
            })
    }
}

impl Outstanding {
    /// The number of signals awaiting feedback.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no signal awaits feedback.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The class and release time of `tenant`'s signal `id`, if it awaits feedback (also one of
    /// no known tenant, from an older state).
    pub fn get(&self, tenant: &TenantId, id: SignalId) -> Option<&(Class, DateTime<Utc>)> {
        let own = self.number_of(tenant).and_then(|number| self.entries.get(&(number, id)));
        own.or_else(|| self.entries.get(&(NO_TENANT, id)))
    }

    /// The number of `tenant`, if it has one.
    #[inline]
    fn number_of(&self, tenant: &TenantId) -> Option<u32> {
        // An agent serves few tenants: a short scan.
        let index = self.tenants.iter().position(|known| known == tenant)?;
        u32::try_from(index).ok()
    }

    /// The number of `tenant`, given one when new (cloned once).
    #[inline]
    fn number(&mut self, tenant: &TenantId) -> u32 {
        if let Some(number) = self.number_of(tenant) {
            return number;
        }
        self.tenants.push(tenant.clone());
        u32::try_from(self.tenants.len() - 1).unwrap_or(NO_TENANT - 1)
    }

    /// The tenant numbered `number` (`None` for signals of no known tenant).
    fn tenant_name(&self, number: u32) -> Option<&TenantId> {
        if number == NO_TENANT {
            return None;
        }
        self.tenants.get(number as usize)
    }

    /// The tenants' signals sorted for saving: `*` first, then by tenant.
    fn sorted(&self) -> BTreeMap<&str, BTreeMap<SignalId, Released>> {
        let mut sorted: BTreeMap<&str, BTreeMap<SignalId, Released>> = BTreeMap::new();
        for ((tenant, id), released) in self.entries.iter() {
            let name = self.tenant_name(*tenant).map_or(ANY_TENANT, TenantId::as_str);
            sorted.entry(name).or_default().insert(*id, *released);
        }
        sorted
    }
}

impl Serialize for Outstanding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.sorted().serialize(serializer)
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
                    outstanding.entries.insert((NO_TENANT, id), released);
                }
                Entry::Ids(ids) if key == ANY_TENANT => {
                    outstanding
                        .entries
                        .extend(ids.into_iter().map(|(id, released)| ((NO_TENANT, id), released)));
                }
                Entry::Ids(ids) if ids.is_empty() => {}
                Entry::Ids(ids) => {
                    let tenant = TenantId::new(key).map_err(D::Error::custom)?;
                    let number = outstanding.number(&tenant);
                    outstanding
                        .entries
                        .extend(ids.into_iter().map(|(id, released)| ((number, id), released)));
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
    /// entries outnumber the live ones). Keys are `outstanding`'s: (tenant number, id).
    order: VecDeque<(DateTime<Utc>, (u32, SignalId))>,
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
        Ok(Self { config, state, order: VecDeque::new() })
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
        // Tenants are numbered in name order on load and every entry is sorted: the index does
        // not depend on any map's (seeded) iteration order.
        let mut order: Vec<_> = state.outstanding.entries.iter().map(|(key, (_, at))| (*at, *key)).collect();
        order.sort_unstable();
        Ok(Self { config, state, order: order.into() })
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
            let Some((at, oldest)) = self.order.pop_front() else { break };
            if self.is_current(at, oldest) {
                self.state.outstanding.entries.remove(&oldest);
                self.adjust(Feedback::Ignored);
            }
        }
        // A signal released again by its tenant replaces that tenant's entry; the old queue
        // entry goes stale.
        let key = (self.state.outstanding.number(tenant), id);
        self.state.outstanding.entries.insert(key, (class, now));
        self.enqueue(now, key);
        None
    }

    /// Whether the queue entry (`at`, `key`) is the outstanding signal's current one.
    fn is_current(&self, at: DateTime<Utc>, key: (u32, SignalId)) -> bool {
        self.state.outstanding.entries.get(&key).is_some_and(|(_, released)| *released == at)
    }

    /// Adds (`at`, `key`) to the time-ordered queue, compacting it when stale entries outnumber
    /// the live ones (so that it stays within twice the outstanding signals).
    fn enqueue(&mut self, at: DateTime<Utc>, key: (u32, SignalId)) {
        if self.order.len() >= 2 * self.state.outstanding.len() + 64 {
            let entries = &self.state.outstanding.entries;
            self.order.retain(|(at, key)| entries.get(key).is_some_and(|(_, released)| released == at));
        }
        // Releases come in time order; a clock that went back is placed where it belongs.
        if self.order.back().is_none_or(|(last, _)| *last <= at) {
            self.order.push_back((at, key));
        } else {
            let index = self.order.partition_point(|(queued, _)| *queued <= at);
            self.order.insert(index, (at, key));
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
        let outstanding = &mut self.state.outstanding;
        let own =
            outstanding.number_of(tenant).and_then(|number| outstanding.entries.remove(&(number, signal)));
        let Some((class, _)) = own.or_else(|| outstanding.entries.remove(&(NO_TENANT, signal))) else {
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
        while let Some(&(at, key)) = self.order.front() {
            if now - at < limit {
                break;
            }
            self.order.pop_front();
            if self.is_current(at, key)
                && let Some((class, _)) = self.state.outstanding.entries.remove(&key)
            {
                self.answer(now, class, Feedback::Ignored);
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
