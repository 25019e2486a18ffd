//! The built-in catalog: ruliads for a CRM-style domain ([`crate::crm`]).
//!
//! Each ruliad has parameters with defaults, validated at construction ([`build`] from JSON, or
//! the typed `new`). Subjects and texts are built with plain string concatenation of outside
//! text, never interpreted as a template (named shape `format-injection`).

use std::collections::BTreeMap;

use chrono::{Datelike, TimeDelta, Timelike, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sos_core::{Severity, Signal};

use crate::crm::{Direction, Record, Stage};
use crate::error::{Error, Result};
use crate::explain::{Draft, Evaluation, Explain, Op, Predicate, Value, time_text};
use crate::ruliad::{Class, Ruliad};

/// A catalog rule's [`Ruliad::evaluate`]: its [`Ruliad::evaluate_into`] (where each rule is
/// written once) into a recorder of its own.
#[inline]
fn evaluation_of<R: Ruliad<Record>>(ruliad: &R, now: chrono::DateTime<Utc>, record: &Record) -> Evaluation {
    let mut why = Explain::new();
    let fired = ruliad.evaluate_into(now, record, &mut why);
    why.into_evaluation(fired)
}

/// The two methods every catalog rule shares: it applies to whole variants of [`Record`], and
/// its [`Ruliad::evaluate`] is its [`Ruliad::evaluate_into`] through [`evaluation_of`].
macro_rules! per_variant_rule_written_once {
    () => {
        fn applies_per_variant(&self) -> bool {
            true
        }
        fn evaluate(&self, now: chrono::DateTime<Utc>, record: &Record) -> Evaluation {
            evaluation_of(self, now, record)
        }
    };
}

/// The names of every ruliad in the catalog, sorted.
pub const NAMES: &[&str] = &[
    "close-date-passed",
    "contact-gone-quiet",
    "deal-without-next-step",
    "follow-up-overdue",
    "hot-opportunity-flag",
    "lead-rhythm",
    "lead-spike",
    "new-lead-uncontacted",
    "renewal-upcoming",
    "response-time-rising",
    "stale-deal-nudge",
    "stuck-in-stage",
    "unanswered-message",
];

/// Builds the catalog ruliad `name` from JSON parameters (`null` or `{}` for the defaults).
///
/// # Errors
///
/// [`Error::UnknownRuliad`] with the known names, or [`Error::InvalidParameter`] naming the
/// field.
pub fn build(name: &str, params: &serde_json::Value) -> Result<Box<dyn Ruliad<Record>>> {
    Ok(match name {
        "stale-deal-nudge" => Box::new(StaleDealNudge::new(parse(name, params)?)?),
        "hot-opportunity-flag" => Box::new(HotOpportunityFlag::new(parse(name, params)?)?),
        "follow-up-overdue" => Box::new(FollowUpOverdue::new(parse(name, params)?)?),
        "lead-spike" => Box::new(LeadSpike::new(parse(name, params)?)?),
        "lead-rhythm" => Box::new(LeadRhythm::new(parse(name, params)?)?),
        "response-time-rising" => Box::new(ResponseTimeRising::new(parse(name, params)?)?),
        "close-date-passed" => Box::new(CloseDatePassed::new(parse(name, params)?)?),
        "deal-without-next-step" => Box::new(DealWithoutNextStep::new(parse(name, params)?)?),
        "unanswered-message" => Box::new(UnansweredMessage::new(parse(name, params)?)?),
        "new-lead-uncontacted" => Box::new(NewLeadUncontacted::new(parse(name, params)?)?),
        "contact-gone-quiet" => Box::new(ContactGoneQuiet::new(parse(name, params)?)?),
        "stuck-in-stage" => Box::new(StuckInStage::new(parse(name, params)?)?),
        "renewal-upcoming" => Box::new(RenewalUpcoming::new(parse(name, params)?)?),
        _ => {
            return Err(Error::UnknownRuliad {
                name: name.to_owned(),
                known: NAMES.iter().map(|known| (*known).to_owned()).collect(),
            });
        }
    })
}

fn parse<P: DeserializeOwned + Default>(ruliad: &str, params: &serde_json::Value) -> Result<P> {
    if params.is_null() {
        return Ok(P::default());
    }
    serde_json::from_value(params.clone()).map_err(|error| Error::InvalidParameter {
        ruliad: ruliad.to_owned(),
        field: field_of(&error.to_string()),
        reason: error.to_string(),
    })
}

/// Pulls the field name out of a serde message such as "unknown field `x`, expected …".
fn field_of(message: &str) -> String {
    message.split('`').nth(1).unwrap_or("params").to_owned()
}

fn invalid(ruliad: &str, field: &str, reason: &str) -> Error {
    Error::InvalidParameter { ruliad: ruliad.to_owned(), field: field.to_owned(), reason: reason.to_owned() }
}

fn at_least_one(ruliad: &str, field: &str, value: u32) -> Result<()> {
    if value == 0 { Err(invalid(ruliad, field, "must be at least 1")) } else { Ok(()) }
}

fn days(count: u32) -> TimeDelta {
    TimeDelta::days(i64::from(count))
}

fn hours(count: u32) -> TimeDelta {
    TimeDelta::hours(i64::from(count))
}

const CLOSED: &[&str] = &["closed-won", "closed-lost"];

/// `stage not in [closed-won, closed-lost]`; a stage name only known at run time is interned.
#[inline]
fn open_stage(why: &mut Explain, stage: &Stage) -> Predicate {
    let observed = match stage.known_name() {
        Some(name) => Value::Text(name),
        None => why.text(stage.as_str()),
    };
    Predicate::custom("stage", observed, Op::NotIn, Value::Names(CLOSED), !stage.is_closed())
}

macro_rules! expect_record {
    ($record:expr, $variant:ident, $expected:literal, $why:ident) => {
        match $record {
            Record::$variant(inner) => inner,
            other => {
                $why.check(Predicate::eq("record", other.type_name(), $expected));
                return $why.stop_here();
            }
        }
    };
}

macro_rules! require {
    ($why:ident, $predicate:expr) => {
        let predicate = $predicate;
        if !$why.check(predicate) {
            return $why.stop_here();
        }
    };
}

macro_rules! present {
    ($why:ident, $name:literal, $value:expr) => {
        match $value {
            Some(value) => {
                $why.check(Predicate::present($name, Some(value)));
                value
            }
            None => {
                $why.check(Predicate::present::<chrono::DateTime<Utc>>($name, None));
                return $why.stop_here();
            }
        }
    };
}

/// Per-stage thresholds in days: a default and overrides by stage name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StageDays(pub BTreeMap<String, u32>);

impl StageDays {
    fn for_stage(&self, stage: &str, default: u32) -> u32 {
        self.0.get(stage).copied().unwrap_or(default)
    }

    fn validate(&self, ruliad: &str, field: &str) -> Result<()> {
        for (stage, days) in &self.0 {
            if *days == 0 {
                return Err(invalid(ruliad, &format!("{field}.{stage}"), "must be at least 1 day"));
            }
        }
        Ok(())
    }
}

/// Parameters of [`StaleDealNudge`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaleDealParams {
    /// Whole days without activity before a deal is stale (default 7); it fires above this.
    pub stale_days: u32,
    /// Per-stage overrides, such as `{"negotiation": 3}`.
    pub stage_days: StageDays,
}

impl Default for StaleDealParams {
    fn default() -> Self {
        Self { stale_days: 7, stage_days: StageDays::default() }
    }
}

/// `stale-deal-nudge`: an open deal with no action or message for more than `stale_days` whole
/// days (per stage); closed-won and closed-lost deals never fire.
#[derive(Debug, Clone)]
pub struct StaleDealNudge {
    params: StaleDealParams,
}

impl StaleDealNudge {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when a threshold is 0.
    pub fn new(params: StaleDealParams) -> Result<Self> {
        at_least_one("stale-deal-nudge", "stale_days", params.stale_days)?;
        params.stage_days.validate("stale-deal-nudge", "stage_days")?;
        Ok(Self { params })
    }
}

impl Ruliad<Record> for StaleDealNudge {
    fn name(&self) -> &str {
        "stale-deal-nudge"
    }
    fn labels(&self) -> &[&'static str] {
        &["deal_id", "idle_since"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Deal(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let deal = expect_record!(record, Deal, "deal", why);
        let last = present!(why, "last activity", deal.last_activity_at());
        require!(why, open_stage(why, &deal.stage));
        let limit = self.params.stage_days.for_stage(deal.stage.as_str(), self.params.stale_days);
        let idle_days = (now - last).num_days();
        require!(why, Predicate::gt("idle", TimeDelta::days(idle_days), days(limit)));
        // The idle episode is part of the cause: after new activity, a new staleness is news.
        why.label("deal_id", deal.id.clone()).label("idle_since", time_text(last));
        why.fire_here(
            Draft::new(&deal.tenant, "stale-deal-nudge", now)
                .subject(["Deal with ", &deal.contact_name].concat())
                .text(
                    [
                        "Stale deal: ",
                        &deal.contact_name,
                        " — ",
                        &idle_days.to_string(),
                        " days since last action.",
                    ]
                    .concat(),
                ),
        )
    }
}

/// Parameters of [`HotOpportunityFlag`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HotOpportunityParams {
    /// The smallest value, in cents (default 1,000,000 = 10,000.00).
    pub min_value_cents: i64,
    /// The smallest win probability, 0 to 100 (default 70).
    pub min_probability: u32,
    /// The deal must have seen activity within this many days (default 3).
    pub active_within_days: u32,
}

impl Default for HotOpportunityParams {
    fn default() -> Self {
        Self { min_value_cents: 1_000_000, min_probability: 70, active_within_days: 3 }
    }
}

/// `hot-opportunity-flag`: an open, valuable, likely deal that is moving right now.
#[derive(Debug, Clone)]
pub struct HotOpportunityFlag {
    params: HotOpportunityParams,
}

impl HotOpportunityFlag {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when a value is out of range.
    pub fn new(params: HotOpportunityParams) -> Result<Self> {
        if params.min_value_cents < 0 {
            return Err(invalid("hot-opportunity-flag", "min_value_cents", "must not be negative"));
        }
        if params.min_probability > 100 {
            return Err(invalid("hot-opportunity-flag", "min_probability", "must be between 0 and 100"));
        }
        at_least_one("hot-opportunity-flag", "active_within_days", params.active_within_days)?;
        Ok(Self { params })
    }
}

impl Ruliad<Record> for HotOpportunityFlag {
    fn name(&self) -> &str {
        "hot-opportunity-flag"
    }
    fn labels(&self) -> &[&'static str] {
        &["deal_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Deal(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let deal = expect_record!(record, Deal, "deal", why);
        require!(why, open_stage(why, &deal.stage));
        let value = present!(why, "value", deal.value_cents);
        require!(why, Predicate::ge("value_cents", value, self.params.min_value_cents));
        let probability = present!(why, "probability", deal.probability);
        require!(why, Predicate::ge("probability", probability, self.params.min_probability));
        let last = present!(why, "last activity", deal.last_activity_at());
        require!(why, Predicate::le("since activity", now - last, days(self.params.active_within_days)));
        why.label("deal_id", deal.id.clone());
        why.fire_here(
            Draft::new(&deal.tenant, "hot-opportunity-flag", now)
                .severity(Severity::Warning)
                .subject(["Deal with ", &deal.contact_name].concat())
                .text(
                    [
                        "Hot opportunity: ",
                        &deal.contact_name,
                        " is ",
                        &probability.to_string(),
                        "% likely and active.",
                    ]
                    .concat(),
                ),
        )
    }
}

/// Parameters of [`FollowUpOverdue`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FollowUpParams {
    /// Hours of grace after the due time (default 24).
    pub grace_hours: u32,
}

impl Default for FollowUpParams {
    fn default() -> Self {
        Self { grace_hours: 24 }
    }
}

/// `follow-up-overdue`: a promised follow-up with a contact is more than `grace_hours` late.
#[derive(Debug, Clone)]
pub struct FollowUpOverdue {
    params: FollowUpParams,
}

impl FollowUpOverdue {
    /// Validates the parameters (any grace is valid, including 0).
    ///
    /// # Errors
    ///
    /// None today; the signature leaves room for checks.
    pub fn new(params: FollowUpParams) -> Result<Self> {
        Ok(Self { params })
    }
}

impl Ruliad<Record> for FollowUpOverdue {
    fn name(&self) -> &str {
        "follow-up-overdue"
    }
    fn labels(&self) -> &[&'static str] {
        &["contact_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Contact(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let contact = expect_record!(record, Contact, "contact", why);
        let due = present!(why, "follow-up due", contact.follow_up_due_at);
        let done = contact.followed_up_at.is_some_and(|done| done >= due);
        require!(why, Predicate::is_true("not yet followed up", !done));
        require!(why, Predicate::gt("overdue", now - due, hours(self.params.grace_hours)));
        why.label("contact_id", contact.id.clone());
        let overdue_days = (now - due).num_days();
        why.fire_here(
            Draft::new(&contact.tenant, "follow-up-overdue", now)
                .subject(["Follow-up with ", &contact.name].concat())
                .text(
                    [
                        "You haven't followed up with ",
                        &contact.name,
                        " — ",
                        &overdue_days.to_string(),
                        " days past due.",
                    ]
                    .concat(),
                ),
        )
    }
}

/// Parameters of [`LeadSpike`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeadSpikeParams {
    /// The recent window in hours (default 24).
    pub window_hours: u32,
    /// Days before the window used as the baseline (default 14).
    pub baseline_days: u32,
    /// How many times the baseline rate the recent window must exceed (default 2.0, ≥ 1).
    pub factor: f64,
    /// The fewest leads in the window (default 5).
    pub min_leads: u32,
}

impl Default for LeadSpikeParams {
    fn default() -> Self {
        Self { window_hours: 24, baseline_days: 14, factor: 2.0, min_leads: 5 }
    }
}

/// `lead-spike`: many more leads in the last window than the baseline rate.
#[derive(Debug, Clone)]
pub struct LeadSpike {
    params: LeadSpikeParams,
}

impl LeadSpike {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when a window is 0 or the factor is below 1 or not finite.
    pub fn new(params: LeadSpikeParams) -> Result<Self> {
        at_least_one("lead-spike", "window_hours", params.window_hours)?;
        at_least_one("lead-spike", "baseline_days", params.baseline_days)?;
        if !params.factor.is_finite() || params.factor < 1.0 {
            return Err(invalid("lead-spike", "factor", "must be a finite number of at least 1.0"));
        }
        Ok(Self { params })
    }
}

impl Ruliad<Record> for LeadSpike {
    fn name(&self) -> &str {
        "lead-spike"
    }
    fn labels(&self) -> &[&'static str] {
        &["window_end"]
    }
    fn class(&self) -> Class {
        Class::Insight
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::LeadLog(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let log = expect_record!(record, LeadLog, "lead_log", why);
        let window = hours(self.params.window_hours);
        let baseline = days(self.params.baseline_days);
        let recent = log.arrivals.iter().filter(|at| **at <= now && now - **at < window).count();
        let before =
            log.arrivals.iter().filter(|at| now - **at >= window && now - **at < window + baseline).count();
        let recent = i64::try_from(recent).unwrap_or(i64::MAX);
        require!(why, Predicate::ge("leads in window", recent, i64::from(self.params.min_leads)));
        let windows_in_baseline = baseline.num_seconds() as f64 / window.num_seconds() as f64;
        let baseline_rate = before as f64 / windows_in_baseline;
        require!(why, Predicate::gt("leads in window", recent as f64, self.params.factor * baseline_rate));
        why.label("window_end", now.format("%Y-%m-%dT%H").to_string());
        why.fire_here(
            Draft::new(&log.tenant, "lead-spike", now).subject("Lead spike").text(
                [
                    &recent.to_string(),
                    " leads in the last ",
                    &self.params.window_hours.to_string(),
                    " hours, about ",
                    &format!("{:.1}", baseline_rate),
                    " usually.",
                ]
                .concat(),
            ),
        )
    }
}

/// Parameters of [`LeadRhythm`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeadRhythmParams {
    /// The fewest leads to say anything (default 20).
    pub min_leads: u32,
    /// The smallest share of leads in the busiest (weekday, part of day) slot, in percent
    /// (default 25).
    pub min_share_percent: u32,
    /// How many days back to look (default 28).
    pub lookback_days: u32,
}

impl Default for LeadRhythmParams {
    fn default() -> Self {
        Self { min_leads: 20, min_share_percent: 25, lookback_days: 28 }
    }
}

/// `lead-rhythm`: an insight such as "you get most leads on Tuesday mornings".
#[derive(Debug, Clone)]
pub struct LeadRhythm {
    params: LeadRhythmParams,
}

impl LeadRhythm {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when the share is 0 or above 100, or a count is 0.
    pub fn new(params: LeadRhythmParams) -> Result<Self> {
        at_least_one("lead-rhythm", "min_leads", params.min_leads)?;
        at_least_one("lead-rhythm", "lookback_days", params.lookback_days)?;
        if params.min_share_percent == 0 || params.min_share_percent > 100 {
            return Err(invalid("lead-rhythm", "min_share_percent", "must be between 1 and 100"));
        }
        Ok(Self { params })
    }
}

const PARTS_OF_DAY: [&str; 4] = ["nights", "mornings", "afternoons", "evenings"];

impl Ruliad<Record> for LeadRhythm {
    fn name(&self) -> &str {
        "lead-rhythm"
    }
    fn labels(&self) -> &[&'static str] {
        &["slot"]
    }
    fn class(&self) -> Class {
        Class::Insight
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::LeadLog(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let log = expect_record!(record, LeadLog, "lead_log", why);
        let lookback = days(self.params.lookback_days);
        let mut slots = [0_u32; 28];
        let mut total = 0_u32;
        for at in log.arrivals.iter().filter(|at| **at <= now && now - **at < lookback) {
            let slot = at.weekday().num_days_from_monday() as usize * 4 + (at.hour() / 6) as usize;
            slots[slot] += 1;
            total += 1;
        }
        require!(why, Predicate::ge("leads", total, self.params.min_leads));
        // The earliest busiest slot wins ties, so the answer is deterministic.
        let (busiest, count) = slots
            .iter()
            .enumerate()
            .fold((0, 0), |best, (slot, count)| if *count > best.1 { (slot, *count) } else { best });
        let share = u32::try_from(u64::from(count) * 100 / u64::from(total.max(1))).unwrap_or(100);
        require!(why, Predicate::ge("busiest slot share %", share, self.params.min_share_percent));
        let weekday = ["Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays", "Sundays"]
            [busiest / 4];
        let part = PARTS_OF_DAY[busiest % 4];
        let weekday_singular = weekday.trim_end_matches('s');
        why.label("slot", [weekday, "-", part].concat());
        why.fire_here(
            Draft::new(&log.tenant, "lead-rhythm", now).severity(Severity::Info).subject("Lead rhythm").text(
                [
                    "I noticed you get most leads on ",
                    weekday_singular,
                    " ",
                    part,
                    " (",
                    &share.to_string(),
                    "% of the last ",
                    &total.to_string(),
                    ").",
                ]
                .concat(),
            ),
        )
    }
}

/// Parameters of [`ResponseTimeRising`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseTimeParams {
    /// The recent window in days (default 7).
    pub recent_days: u32,
    /// The baseline window before it, in days (default 28).
    pub baseline_days: u32,
    /// How many times the baseline median the recent median must exceed (default 1.5, ≥ 1).
    pub factor: f64,
    /// The fewest responses in each window (default 5).
    pub min_responses: u32,
}

impl Default for ResponseTimeParams {
    fn default() -> Self {
        Self { recent_days: 7, baseline_days: 28, factor: 1.5, min_responses: 5 }
    }
}

/// `response-time-rising`: a team member who opted in answers much slower than usual; a
/// private, gentle check-in. Without consent it never fires.
#[derive(Debug, Clone)]
pub struct ResponseTimeRising {
    params: ResponseTimeParams,
}

impl ResponseTimeRising {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when a window or count is 0 or the factor is below 1.
    pub fn new(params: ResponseTimeParams) -> Result<Self> {
        at_least_one("response-time-rising", "recent_days", params.recent_days)?;
        at_least_one("response-time-rising", "baseline_days", params.baseline_days)?;
        at_least_one("response-time-rising", "min_responses", params.min_responses)?;
        if !params.factor.is_finite() || params.factor < 1.0 {
            return Err(invalid("response-time-rising", "factor", "must be a finite number of at least 1.0"));
        }
        Ok(Self { params })
    }
}

fn median(values: &mut [u32]) -> f64 {
    values.sort_unstable();
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (f64::from(values[middle - 1]) + f64::from(values[middle])) / 2.0
    } else {
        f64::from(values[middle])
    }
}

impl Ruliad<Record> for ResponseTimeRising {
    fn name(&self) -> &str {
        "response-time-rising"
    }
    fn labels(&self) -> &[&'static str] {
        &["member_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Member(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let member = expect_record!(record, Member, "member", why);
        require!(why, Predicate::is_true("consent", member.consent));
        let recent_window = days(self.params.recent_days);
        let baseline_window = days(self.params.baseline_days);
        let mut recent: Vec<u32> = Vec::new();
        let mut baseline: Vec<u32> = Vec::new();
        for (at, minutes) in &member.responses {
            let age = now - *at;
            if *at > now {
                continue;
            } else if age < recent_window {
                recent.push(*minutes);
            } else if age < recent_window + baseline_window {
                baseline.push(*minutes);
            }
        }
        let minimum = i64::from(self.params.min_responses);
        require!(
            why,
            Predicate::ge("recent responses", i64::try_from(recent.len()).unwrap_or(i64::MAX), minimum)
        );
        require!(
            why,
            Predicate::ge("baseline responses", i64::try_from(baseline.len()).unwrap_or(i64::MAX), minimum)
        );
        let recent_median = median(&mut recent);
        let baseline_median = median(&mut baseline);
        require!(
            why,
            Predicate::gt("recent median minutes", recent_median, self.params.factor * baseline_median)
        );
        why.label("member_id", member.id.clone());
        why.fire_here(
            Draft::new(&member.tenant, "response-time-rising", now)
                .severity(Severity::Info)
                .subject(["Check-in with ", &member.name].concat())
                .text(
                    [
                        "Replies from ",
                        &member.name,
                        " take longer than usual lately. A private check-in may help.",
                    ]
                    .concat(),
                ),
        )
    }
}

/// Parameters of [`CloseDatePassed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CloseDateParams {
    /// Days of grace after the expected close date (default 0).
    pub grace_days: u32,
}

/// `close-date-passed`: an open deal past its expected close date.
#[derive(Debug, Clone)]
pub struct CloseDatePassed {
    params: CloseDateParams,
}

impl CloseDatePassed {
    /// Validates the parameters (any grace is valid).
    ///
    /// # Errors
    ///
    /// None today; the signature leaves room for checks.
    pub fn new(params: CloseDateParams) -> Result<Self> {
        Ok(Self { params })
    }
}

impl Ruliad<Record> for CloseDatePassed {
    fn name(&self) -> &str {
        "close-date-passed"
    }
    fn labels(&self) -> &[&'static str] {
        &["deal_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Deal(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let deal = expect_record!(record, Deal, "deal", why);
        require!(why, open_stage(why, &deal.stage));
        let expected = present!(why, "expected close", deal.expected_close_at);
        require!(why, Predicate::gt("past close date", now - expected, days(self.params.grace_days)));
        why.label("deal_id", deal.id.clone());
        why.fire_here(
            Draft::new(&deal.tenant, "close-date-passed", now)
                .subject(["Deal with ", &deal.contact_name].concat())
                .text(
                    [
                        "The deal with ",
                        &deal.contact_name,
                        " was expected to close on ",
                        &time_text(expected)[..10],
                        ".",
                    ]
                    .concat(),
                ),
        )
    }
}

/// Parameters of [`DealWithoutNextStep`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NextStepParams {
    /// Days a deal may exist without a next step (default 3).
    pub min_age_days: u32,
}

impl Default for NextStepParams {
    fn default() -> Self {
        Self { min_age_days: 3 }
    }
}

/// `deal-without-next-step`: an open deal older than `min_age_days` with no next step planned
/// in the future.
#[derive(Debug, Clone)]
pub struct DealWithoutNextStep {
    params: NextStepParams,
}

impl DealWithoutNextStep {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when `min_age_days` is 0.
    pub fn new(params: NextStepParams) -> Result<Self> {
        at_least_one("deal-without-next-step", "min_age_days", params.min_age_days)?;
        Ok(Self { params })
    }
}

impl Ruliad<Record> for DealWithoutNextStep {
    fn name(&self) -> &str {
        "deal-without-next-step"
    }
    fn labels(&self) -> &[&'static str] {
        &["deal_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Deal(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let deal = expect_record!(record, Deal, "deal", why);
        require!(why, open_stage(why, &deal.stage));
        let created = present!(why, "created", deal.created_at);
        require!(why, Predicate::gt("age", now - created, days(self.params.min_age_days)));
        let planned = deal.next_step_at.is_some_and(|next| next >= now);
        require!(why, Predicate::is_true("no next step planned", !planned));
        why.label("deal_id", deal.id.clone());
        why.fire_here(
            Draft::new(&deal.tenant, "deal-without-next-step", now)
                .subject(["Deal with ", &deal.contact_name].concat())
                .text(["The deal with ", &deal.contact_name, " has no next step planned."].concat()),
        )
    }
}

/// Parameters of [`UnansweredMessage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnansweredParams {
    /// Hours an inbound message may wait (default 24).
    pub hours: u32,
}

impl Default for UnansweredParams {
    fn default() -> Self {
        Self { hours: 24 }
    }
}

/// `unanswered-message`: an inbound message unanswered for more than `hours`.
#[derive(Debug, Clone)]
pub struct UnansweredMessage {
    params: UnansweredParams,
}

impl UnansweredMessage {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when `hours` is 0.
    pub fn new(params: UnansweredParams) -> Result<Self> {
        at_least_one("unanswered-message", "hours", params.hours)?;
        Ok(Self { params })
    }
}

impl Ruliad<Record> for UnansweredMessage {
    fn name(&self) -> &str {
        "unanswered-message"
    }
    fn labels(&self) -> &[&'static str] {
        &["message_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Message(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let message = expect_record!(record, Message, "message", why);
        require!(why, Predicate::is_true("inbound", message.direction == Direction::Inbound));
        require!(why, Predicate::is_true("not answered", message.answered_at.is_none()));
        require!(why, Predicate::gt("waiting", now - message.at, hours(self.params.hours)));
        why.label("message_id", message.id.clone());
        let waited = (now - message.at).num_hours();
        why.fire_here(
            Draft::new(&message.tenant, "unanswered-message", now)
                .subject(["Message from ", &message.contact_name, ": ", &message.subject].concat())
                .text(
                    [&message.contact_name, " has waited ", &waited.to_string(), " hours for an answer."]
                        .concat(),
                ),
        )
    }
}

/// Parameters of [`NewLeadUncontacted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NewLeadParams {
    /// Hours a new lead may wait for first contact (default 4).
    pub hours: u32,
}

impl Default for NewLeadParams {
    fn default() -> Self {
        Self { hours: 4 }
    }
}

/// `new-lead-uncontacted`: a lead nobody has contacted for more than `hours`.
#[derive(Debug, Clone)]
pub struct NewLeadUncontacted {
    params: NewLeadParams,
}

impl NewLeadUncontacted {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when `hours` is 0.
    pub fn new(params: NewLeadParams) -> Result<Self> {
        at_least_one("new-lead-uncontacted", "hours", params.hours)?;
        Ok(Self { params })
    }
}

impl Ruliad<Record> for NewLeadUncontacted {
    fn name(&self) -> &str {
        "new-lead-uncontacted"
    }
    fn labels(&self) -> &[&'static str] {
        &["lead_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Lead(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let lead = expect_record!(record, Lead, "lead", why);
        require!(why, Predicate::is_true("not contacted", lead.contacted_at.is_none()));
        require!(why, Predicate::gt("waiting", now - lead.created_at, hours(self.params.hours)));
        why.label("lead_id", lead.id.clone());
        why.fire_here(
            Draft::new(&lead.tenant, "new-lead-uncontacted", now)
                .severity(Severity::Warning)
                .subject(["New lead ", &lead.name].concat())
                .text(
                    [
                        "Nobody has contacted ",
                        &lead.name,
                        " yet — ",
                        &(now - lead.created_at).num_hours().to_string(),
                        " hours since they arrived.",
                    ]
                    .concat(),
                ),
        )
    }
}

/// Parameters of [`ContactGoneQuiet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GoneQuietParams {
    /// Days without interaction (default 60).
    pub quiet_days: u32,
    /// The fewest past interactions for the silence to mean something (default 3).
    pub min_interactions: u32,
}

impl Default for GoneQuietParams {
    fn default() -> Self {
        Self { quiet_days: 60, min_interactions: 3 }
    }
}

/// `contact-gone-quiet`: a contact you used to talk to has gone quiet.
#[derive(Debug, Clone)]
pub struct ContactGoneQuiet {
    params: GoneQuietParams,
}

impl ContactGoneQuiet {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when `quiet_days` is 0.
    pub fn new(params: GoneQuietParams) -> Result<Self> {
        at_least_one("contact-gone-quiet", "quiet_days", params.quiet_days)?;
        Ok(Self { params })
    }
}

impl Ruliad<Record> for ContactGoneQuiet {
    fn name(&self) -> &str {
        "contact-gone-quiet"
    }
    fn labels(&self) -> &[&'static str] {
        &["contact_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Contact(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let contact = expect_record!(record, Contact, "contact", why);
        require!(why, Predicate::ge("interactions", contact.interactions, self.params.min_interactions));
        let last = present!(why, "last interaction", contact.last_interaction_at);
        require!(why, Predicate::gt("quiet", now - last, days(self.params.quiet_days)));
        why.label("contact_id", contact.id.clone());
        why.fire_here(
            Draft::new(&contact.tenant, "contact-gone-quiet", now)
                .severity(Severity::Info)
                .subject(["Contact ", &contact.name].concat())
                .text(
                    [&contact.name, " has been quiet for ", &(now - last).num_days().to_string(), " days."]
                        .concat(),
                ),
        )
    }
}

/// Parameters of [`StuckInStage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StuckParams {
    /// Days in one stage (default 30).
    pub days: u32,
    /// Per-stage overrides.
    pub stage_days: StageDays,
}

impl Default for StuckParams {
    fn default() -> Self {
        Self { days: 30, stage_days: StageDays::default() }
    }
}

/// `stuck-in-stage`: an open deal that has sat in one stage too long, even if people touch it.
#[derive(Debug, Clone)]
pub struct StuckInStage {
    params: StuckParams,
}

impl StuckInStage {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when a threshold is 0.
    pub fn new(params: StuckParams) -> Result<Self> {
        at_least_one("stuck-in-stage", "days", params.days)?;
        params.stage_days.validate("stuck-in-stage", "stage_days")?;
        Ok(Self { params })
    }
}

impl Ruliad<Record> for StuckInStage {
    fn name(&self) -> &str {
        "stuck-in-stage"
    }
    fn labels(&self) -> &[&'static str] {
        &["deal_id"]
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Deal(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let deal = expect_record!(record, Deal, "deal", why);
        require!(why, open_stage(why, &deal.stage));
        let entered = present!(why, "stage entered", deal.stage_entered_at);
        let limit = self.params.stage_days.for_stage(deal.stage.as_str(), self.params.days);
        require!(why, Predicate::gt("in stage", now - entered, days(limit)));
        why.label("deal_id", deal.id.clone());
        why.fire_here(
            Draft::new(&deal.tenant, "stuck-in-stage", now)
                .subject(["Deal with ", &deal.contact_name].concat())
                .text(
                    [
                        "The deal with ",
                        &deal.contact_name,
                        " has been in ",
                        deal.stage.as_str(),
                        " for ",
                        &(now - entered).num_days().to_string(),
                        " days.",
                    ]
                    .concat(),
                ),
        )
    }
}

/// Parameters of [`RenewalUpcoming`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenewalParams {
    /// How many days ahead to warn (default 14).
    pub days_ahead: u32,
}

impl Default for RenewalParams {
    fn default() -> Self {
        Self { days_ahead: 14 }
    }
}

/// `renewal-upcoming`: a contact's renewal date is within `days_ahead`.
#[derive(Debug, Clone)]
pub struct RenewalUpcoming {
    params: RenewalParams,
}

impl RenewalUpcoming {
    /// Validates the parameters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] when `days_ahead` is 0.
    pub fn new(params: RenewalParams) -> Result<Self> {
        at_least_one("renewal-upcoming", "days_ahead", params.days_ahead)?;
        Ok(Self { params })
    }
}

impl Ruliad<Record> for RenewalUpcoming {
    fn name(&self) -> &str {
        "renewal-upcoming"
    }
    fn labels(&self) -> &[&'static str] {
        &["contact_id"]
    }
    fn class(&self) -> Class {
        Class::Insight
    }
    fn applies_to(&self, record: &Record) -> bool {
        matches!(record, Record::Contact(_))
    }
    per_variant_rule_written_once!();
    fn evaluate_into(
        &self,
        now: chrono::DateTime<Utc>,
        record: &Record,
        why: &mut Explain,
    ) -> Option<Signal> {
        let contact = expect_record!(record, Contact, "contact", why);
        let renewal = present!(why, "renewal", contact.renewal_at);
        require!(why, Predicate::ge("until renewal", renewal - now, TimeDelta::zero()));
        require!(why, Predicate::le("until renewal", renewal - now, days(self.params.days_ahead)));
        why.label("contact_id", contact.id.clone());
        why.fire_here(
            Draft::new(&contact.tenant, "renewal-upcoming", now)
                .severity(Severity::Info)
                .subject(["Renewal for ", &contact.name].concat())
                .text([&contact.name, " renews on ", &time_text(renewal)[..10], "."].concat()),
        )
    }
}

/// Runs the fixture file at `path` against the catalog ruliad it names, built fresh for every
/// case from the file's `params`, and fails with the report when a case fails.
///
/// # Errors
///
/// [`Error::Io`] or [`Error::Fixture`] when the file is unreadable or malformed;
/// [`Error::UnknownRuliad`] or [`Error::InvalidParameter`] when it names a bad ruliad;
/// [`Error::Fixture`] listing the failures when a case fails.
pub fn check_fixture_file(path: &std::path::Path) -> Result<crate::fixture::Report> {
    crate::fixture::into_result(run_fixture_file(path)?)
}

/// Runs the fixture file at `path` like [`check_fixture_file`], but returns the report whether
/// or not every case passed (what the `sos-ruliads test` subcommand prints).
///
/// # Errors
///
/// [`Error::Io`] or [`Error::Fixture`] when the file is unreadable or malformed;
/// [`Error::UnknownRuliad`] or [`Error::InvalidParameter`] when it names a bad ruliad.
pub fn run_fixture_file(path: &std::path::Path) -> Result<crate::fixture::Report> {
    let fixture: crate::fixture::FixtureFile<Record> = crate::fixture::load(path)?;
    let name = fixture.ruliad.clone();
    crate::fixture::run_cases(path, &fixture, |params| build(&name, params))
}
