//! Explanations: the leaf predicates a ruliad checked, with the observed value against the threshold.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sos_core::{Severity, Signal, SignalKind, TenantId};

/// Per-thread evaluation state, in one thread-local so that starting an evaluation is one access.
struct Local {
    trace: Cell<bool>,
    /// An emptied explanation buffer, reused so that a traced evaluation in the engine's loop
    /// does not allocate. One slot is enough: the engine hands the buffer back after each
    /// evaluation; a nested evaluation (inside a combinator) simply starts a new one.
    spare: Cell<Vec<Predicate>>,
}

thread_local! {
    static LOCAL: Local = const { Local { trace: Cell::new(true), spare: Cell::new(Vec::new()) } };
}

/// Whether the trace is on, and a buffer to record into when it is.
#[inline]
fn start() -> (bool, Vec<Predicate>) {
    LOCAL.with(|local| {
        let enabled = local.trace.get();
        (enabled, if enabled { local.spare.take() } else { Vec::new() })
    })
}

/// Hands an explanation buffer back for reuse (used by the engine once it kept the signal).
#[inline]
pub(crate) fn recycle(mut predicates: Vec<Predicate>) {
    if predicates.capacity() == 0 {
        return;
    }
    predicates.clear();
    LOCAL.with(|local| local.spare.set(predicates));
}

/// Whether explanations are recorded on this thread (on by default).
#[inline]
pub fn trace_enabled() -> bool {
    LOCAL.with(|local| local.trace.get())
}

/// Runs `work` with explanations switched on or off on this thread, restoring the previous
/// setting afterwards (also on panic).
///
/// With the trace off, an evaluation still names the guard that stopped it, but does not keep
/// the predicates that held, and signals carry only their labels as evidence.
pub fn with_trace<T>(enabled: bool, work: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LOCAL.with(|local| local.trace.set(self.0));
        }
    }
    let _restore = Restore(LOCAL.with(|local| local.trace.replace(enabled)));
    work()
}

/// A value observed by a predicate, or the threshold it was compared against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Value {
    /// The field was absent.
    Missing,
    /// A yes/no value.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// A real number.
    Float(f64),
    /// A span of time, in seconds.
    Seconds(i64),
    /// A point in time.
    Time(DateTime<Utc>),
    /// A word, such as a stage name.
    Text(Cow<'static, str>),
    /// A list of words.
    List(Vec<Cow<'static, str>>),
    /// A fixed list of words known at compile time (serialized like [`Value::List`]; read back
    /// as a `List`).
    #[serde(skip_deserializing, rename = "list")]
    Names(&'static [&'static str]),
}

impl From<bool> for Value {
    #[inline]
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}
impl From<i64> for Value {
    #[inline]
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}
impl From<u32> for Value {
    #[inline]
    fn from(value: u32) -> Self {
        Self::Int(i64::from(value))
    }
}
impl From<f64> for Value {
    #[inline]
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}
impl From<TimeDelta> for Value {
    #[inline]
    fn from(value: TimeDelta) -> Self {
        Self::Seconds(value.num_seconds())
    }
}
impl From<DateTime<Utc>> for Value {
    #[inline]
    fn from(value: DateTime<Utc>) -> Self {
        Self::Time(value)
    }
}
impl From<&'static str> for Value {
    #[inline]
    fn from(value: &'static str) -> Self {
        Self::Text(Cow::Borrowed(value))
    }
}
impl From<String> for Value {
    #[inline]
    fn from(value: String) -> Self {
        Self::Text(Cow::Owned(value))
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    #[inline]
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Missing, Into::into)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::Bool(value) => write!(f, "{value}"),
            Self::Int(value) => write!(f, "{value}"),
            Self::Float(value) => write!(f, "{value}"),
            Self::Seconds(seconds) => fmt_span(*seconds, f),
            Self::Time(time) => f.write_str(&time_text(*time)),
            Self::Text(text) => f.write_str(text),
            Self::List(items) => write!(f, "[{}]", items.join(", ")),
            Self::Names(items) => write!(f, "[{}]", items.join(", ")),
        }
    }
}

/// Appends `time` as `YYYY-MM-DDTHH:MM:SSZ` without going through chrono's format-string parser,
/// which dominated explanation and label costs.
pub(crate) fn push_time(out: &mut String, time: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let year = time.year();
    if !(0..=9999).contains(&year) {
        use std::fmt::Write as _;
        // Writing into a String cannot fail.
        let _ = write!(out, "{}", time.format("%Y-%m-%dT%H:%M:%SZ"));
        return;
    }
    let digits = |out: &mut String, value: u32, width: usize| {
        let mut buffer = [b'0'; 4];
        let mut rest = value;
        for slot in buffer[..width].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        // ASCII digits are valid UTF-8.
        out.push_str(std::str::from_utf8(&buffer[..width]).unwrap_or("?"));
    };
    out.reserve(20);
    digits(out, year.unsigned_abs(), 4);
    out.push('-');
    digits(out, time.month(), 2);
    out.push('-');
    digits(out, time.day(), 2);
    out.push('T');
    digits(out, time.hour(), 2);
    out.push(':');
    digits(out, time.minute(), 2);
    out.push(':');
    digits(out, time.second(), 2);
    out.push('Z');
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ` (see [`push_time`]); its first 10 bytes are the date.
pub(crate) fn time_text(time: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(20);
    push_time(&mut out, time);
    out
}

impl Value {
    /// Appends the value as [`fmt::Display`] shows it.
    fn write_to(&self, out: &mut String) {
        use std::fmt::Write as _;
        match self {
            Self::Missing => out.push_str("missing"),
            Self::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
            Self::Time(time) => push_time(out, *time),
            Self::Int(value) => push_int(out, *value),
            Self::Seconds(seconds) if seconds % 86_400 == 0 => {
                push_int(out, seconds / 86_400);
                out.push_str(" d");
            }
            Self::Text(text) => out.push_str(text),
            Self::Names(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(item);
                }
                out.push(']');
            }
            // Writing into a String cannot fail.
            other => {
                let _ = write!(out, "{other}");
            }
        }
    }
}

/// Appends the decimal digits of `value`.
fn push_int(out: &mut String, value: i64) {
    let mut buffer = [0_u8; 20];
    let mut at = buffer.len();
    let mut rest = value.unsigned_abs();
    loop {
        at -= 1;
        buffer[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if value < 0 {
        out.push('-');
    }
    // ASCII digits are valid UTF-8.
    out.push_str(std::str::from_utf8(&buffer[at..]).unwrap_or("?"));
}

fn fmt_span(seconds: i64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    const DAY: i64 = 86_400;
    if seconds % DAY == 0 {
        write!(f, "{} d", seconds / DAY)
    } else if seconds.abs() >= DAY {
        // One decimal is enough for a person; the exact seconds stay in the structured value.
        write!(f, "{:.1} d", seconds as f64 / DAY as f64)
    } else if seconds % 3_600 == 0 {
        write!(f, "{} h", seconds / 3_600)
    } else if seconds % 60 == 0 {
        write!(f, "{} min", seconds / 60)
    } else {
        write!(f, "{seconds} s")
    }
}

/// How a predicate compared its observed value with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Op {
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Ge,
    /// Less than.
    Lt,
    /// Less than or equal.
    Le,
    /// Equal.
    Eq,
    /// Not equal.
    Ne,
    /// Member of a list.
    In,
    /// Not a member of a list.
    NotIn,
}

impl Op {
    /// The symbol shown in explanations.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::In => "in",
            Self::NotIn => "not in",
        }
    }
}

/// One leaf check of a ruliad: `name observed op threshold`, and whether it held.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicate {
    /// What was checked, such as `idle` or `stage`.
    pub name: Cow<'static, str>,
    /// The value the ruliad observed.
    pub observed: Value,
    /// The comparison.
    pub op: Op,
    /// The threshold or expected value.
    pub threshold: Value,
    /// Whether the check held.
    pub held: bool,
}

impl Predicate {
    #[inline]
    fn new(
        name: impl Into<Cow<'static, str>>,
        observed: impl Into<Value>,
        op: Op,
        threshold: impl Into<Value>,
        held: bool,
    ) -> Self {
        Self { name: name.into(), observed: observed.into(), op, threshold: threshold.into(), held }
    }

    /// `observed > threshold`.
    #[inline]
    pub fn gt<T: PartialOrd + Into<Value>>(
        name: impl Into<Cow<'static, str>>,
        observed: T,
        threshold: T,
    ) -> Self {
        let held = observed > threshold;
        Self::new(name, observed, Op::Gt, threshold, held)
    }

    /// `observed >= threshold`.
    #[inline]
    pub fn ge<T: PartialOrd + Into<Value>>(
        name: impl Into<Cow<'static, str>>,
        observed: T,
        threshold: T,
    ) -> Self {
        let held = observed >= threshold;
        Self::new(name, observed, Op::Ge, threshold, held)
    }

    /// `observed < threshold`.
    #[inline]
    pub fn lt<T: PartialOrd + Into<Value>>(
        name: impl Into<Cow<'static, str>>,
        observed: T,
        threshold: T,
    ) -> Self {
        let held = observed < threshold;
        Self::new(name, observed, Op::Lt, threshold, held)
    }

    /// `observed <= threshold`.
    #[inline]
    pub fn le<T: PartialOrd + Into<Value>>(
        name: impl Into<Cow<'static, str>>,
        observed: T,
        threshold: T,
    ) -> Self {
        let held = observed <= threshold;
        Self::new(name, observed, Op::Le, threshold, held)
    }

    /// `observed = expected`.
    #[inline]
    pub fn eq<T: PartialEq + Into<Value>>(
        name: impl Into<Cow<'static, str>>,
        observed: T,
        expected: T,
    ) -> Self {
        let held = observed == expected;
        Self::new(name, observed, Op::Eq, expected, held)
    }

    /// A yes/no fact that must be true, such as `consent = true`.
    #[inline]
    pub fn is_true(name: impl Into<Cow<'static, str>>, observed: bool) -> Self {
        Self::new(name, observed, Op::Eq, true, observed)
    }

    /// A field that must be present; the observed value is shown when it is.
    #[inline]
    pub fn present<T: Into<Value>>(name: impl Into<Cow<'static, str>>, observed: Option<T>) -> Self {
        let held = observed.is_some();
        Self::new(name, observed, Op::Ne, Value::Missing, held)
    }

    /// `observed not in excluded`.
    #[inline]
    pub fn not_in(
        name: impl Into<Cow<'static, str>>,
        observed: Cow<'static, str>,
        excluded: &'static [&'static str],
    ) -> Self {
        let held = !excluded.contains(&observed.as_ref());
        Self::new(name, Value::Text(observed), Op::NotIn, Value::Names(excluded), held)
    }

    /// A predicate with a free-form comparison, for combinators and host rules.
    pub fn custom(
        name: impl Into<Cow<'static, str>>,
        observed: impl Into<Value>,
        op: Op,
        threshold: impl Into<Value>,
        held: bool,
    ) -> Self {
        Self::new(name, observed, op, threshold, held)
    }
}

impl Predicate {
    /// Appends `name observed op threshold[ (failed)]` to `out`, without the formatting
    /// machinery for the common values (explanations are built for every fired signal).
    fn write_to(&self, out: &mut String) {
        out.push_str(&self.name);
        out.push(' ');
        self.observed.write_to(out);
        out.push(' ');
        out.push_str(self.op.as_str());
        out.push(' ');
        self.threshold.write_to(out);
        if !self.held {
            out.push_str(" (failed)");
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(48);
        self.write_to(&mut text);
        f.write_str(&text)
    }
}

/// The draft of a signal a ruliad wants to emit; [`Explain::fire`] validates it and adds the
/// explanation and labels as evidence.
#[derive(Debug, Clone)]
pub struct Draft {
    tenant: TenantId,
    kind: &'static str,
    observed_at: DateTime<Utc>,
    subject: String,
    text: String,
    severity: Severity,
}

impl Draft {
    /// A draft of kind `kind` (a slug such as `stale-deal-nudge`) for `tenant`, observed at `now`.
    pub fn new(tenant: &TenantId, kind: &'static str, now: DateTime<Utc>) -> Self {
        Self {
            tenant: tenant.clone(),
            kind,
            observed_at: now,
            subject: String::new(),
            text: String::new(),
            severity: Severity::Notice,
        }
    }

    /// What the signal is about; plain text, never a template.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = subject.into();
        self
    }

    /// The sentence a person reads; plain text, never a template.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.text = text.into();
        self
    }

    /// How urgent it is (default [`Severity::Notice`]).
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }
}

/// Records the predicates of one evaluation; see the crate docs for a ruliad that uses it.
#[derive(Debug, Clone)]
pub struct Explain {
    predicates: Vec<Predicate>,
    failed: Option<Predicate>,
    /// (name, value) in the order given; part of the cause digest in that order.
    labels: Vec<(String, String)>,
    enabled: bool,
}

impl Default for Explain {
    fn default() -> Self {
        Self::new()
    }
}

impl Explain {
    /// An empty explanation; records everything unless the trace is off (see [`with_trace`]).
    #[inline]
    pub fn new() -> Self {
        let (enabled, predicates) = start();
        Self { predicates, failed: None, labels: Vec::new(), enabled }
    }

    /// Records `predicate` and returns whether it held. A predicate that failed is always
    /// recorded, so that the guard that stopped an evaluation is known even with the trace off.
    #[inline]
    pub fn check(&mut self, predicate: Predicate) -> bool {
        let held = predicate.held;
        if self.enabled {
            self.predicates.push(predicate);
        } else if !held {
            // With the trace off the guard is kept aside, so a stopped evaluation allocates
            // nothing for its explanation.
            self.failed = Some(predicate);
        }
        held
    }

    /// Adds a label (such as `deal_id`) to the signal's evidence; labels are used for grouping
    /// and inhibition, and are part of the cause digest.
    pub fn label(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.labels.push((name.to_owned(), value.into()));
        self
    }

    /// Stops the evaluation at the last failed predicate.
    #[inline]
    pub fn stop(mut self) -> Evaluation {
        if let Some(guard) = self.failed.take() {
            return Evaluation::from_repr(Repr::Stopped(guard), self.predicates);
        }
        // The guard stays where it was recorded; the evaluation points at it instead of copying.
        let index = match self.predicates.iter().rposition(|predicate| !predicate.held) {
            Some(index) => index,
            None => {
                self.predicates.push(Predicate::is_true("condition", false));
                self.predicates.len() - 1
            }
        };
        Evaluation::from_repr(Repr::StoppedAt(index), self.predicates)
    }

    /// Validates the draft and fires it, with the explanation and labels as evidence and a cause
    /// digest over the tenant, the kind and the labels.
    pub fn fire(mut self, draft: Draft) -> Evaluation {
        let kind = match SignalKind::new(draft.kind) {
            Ok(kind) => kind,
            Err(_) => {
                self.predicates.push(Predicate::custom("kind", draft.kind, Op::Eq, "a slug", false));
                return self.stop();
            }
        };
        let mut cause = sos_core::DomainHasher::new("sos-ruliads/cause/v1");
        let mut hashed =
            cause.str_field(draft.tenant.as_str()).and_then(|hasher| hasher.str_field(draft.kind)).is_ok();
        // Each label is hashed as one `name=value` field, built in one reused buffer.
        let mut field = String::new();
        for (name, value) in &self.labels {
            field.clear();
            field.push_str(name);
            field.push('=');
            field.push_str(value);
            hashed &= cause.str_field(&field).is_ok();
        }
        if !hashed {
            self.predicates.push(Predicate::custom("labels", "too long", Op::Le, "4 GiB", false));
            return self.stop();
        }
        let mut labels = serde_json::Map::new();
        for (name, value) in std::mem::take(&mut self.labels) {
            labels.insert(name, serde_json::Value::String(value));
        }
        let mut evidence = serde_json::Map::new();
        evidence.insert("labels".to_owned(), serde_json::Value::Object(labels));
        if self.enabled {
            // One line, as people read it: "idle 9 d > 7 d; stage negotiation not in [...]".
            let mut because = String::with_capacity(40 * self.predicates.len());
            for (index, predicate) in self.predicates.iter().enumerate() {
                if index > 0 {
                    because.push_str("; ");
                }
                predicate.write_to(&mut because);
            }
            evidence.insert("because".to_owned(), serde_json::Value::String(because));
        }
        let built = Signal::builder(draft.tenant, kind)
            .subject(draft.subject)
            .text(draft.text)
            .severity(draft.severity)
            .observed_at(draft.observed_at)
            .cause(cause.finish())
            .evidence(serde_json::Value::Object(evidence))
            .build();
        match built {
            Ok(signal) => Evaluation::from_repr(Repr::Fired(Box::new(signal)), self.predicates),
            Err(error) => {
                self.predicates.push(Predicate::custom("signal", error.to_string(), Op::Eq, "valid", false));
                self.stop()
            }
        }
    }
}

/// What an evaluation came to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The ruliad fired this signal.
    Fired(Box<Signal>),
    /// The ruliad did not fire; this guard stopped it.
    Stopped {
        /// The predicate that failed.
        guard: Predicate,
    },
}

/// What an evaluation came to, as stored: a stopped evaluation with the trace on points at its
/// guard in the explanation rather than holding a copy (the engine never asks for it).
#[derive(Debug, Clone, PartialEq)]
enum Repr {
    Fired(Box<Signal>),
    Stopped(Predicate),
    StoppedAt(usize),
}

/// The result of evaluating one ruliad against one entity: a signal or the guard that stopped
/// it, with the predicates that were checked.
#[derive(Debug, Clone)]
pub struct Evaluation {
    repr: Repr,
    explanation: Vec<Predicate>,
    /// [`Evaluation::outcome`], built on first use.
    outcome: std::sync::OnceLock<Outcome>,
}

impl PartialEq for Evaluation {
    fn eq(&self, other: &Self) -> bool {
        self.signal() == other.signal()
            && self.guard() == other.guard()
            && self.explanation == other.explanation
    }
}

impl Evaluation {
    #[inline]
    fn from_repr(repr: Repr, explanation: Vec<Predicate>) -> Self {
        Self { repr, explanation, outcome: std::sync::OnceLock::new() }
    }

    /// An evaluation from its parts (for combinators and tests).
    pub fn new(outcome: Outcome, explanation: Vec<Predicate>) -> Self {
        let repr = match outcome {
            Outcome::Fired(signal) => Repr::Fired(signal),
            Outcome::Stopped { guard } => Repr::Stopped(guard),
        };
        Self::from_repr(repr, explanation)
    }

    /// A stopped evaluation whose guard is `guard`, keeping `explanation` before it.
    pub fn stopped(guard: Predicate, mut explanation: Vec<Predicate>) -> Self {
        explanation.push(guard);
        let index = explanation.len() - 1;
        Self::from_repr(Repr::StoppedAt(index), explanation)
    }

    /// What it came to.
    pub fn outcome(&self) -> &Outcome {
        self.outcome.get_or_init(|| match &self.repr {
            Repr::Fired(signal) => Outcome::Fired(signal.clone()),
            Repr::Stopped(guard) => Outcome::Stopped { guard: guard.clone() },
            Repr::StoppedAt(index) => Outcome::Stopped { guard: self.explanation[*index].clone() },
        })
    }

    /// The signal, when it fired.
    pub fn signal(&self) -> Option<&Signal> {
        match &self.repr {
            Repr::Fired(signal) => Some(signal),
            Repr::Stopped(_) | Repr::StoppedAt(_) => None,
        }
    }

    /// The signal, when it fired, by value.
    pub fn into_signal(self) -> Option<Signal> {
        match self.repr {
            Repr::Fired(signal) => Some(*signal),
            Repr::Stopped(_) | Repr::StoppedAt(_) => None,
        }
    }

    /// The guard that stopped it, when it did not fire.
    pub fn guard(&self) -> Option<&Predicate> {
        match &self.repr {
            Repr::Fired(_) => None,
            Repr::Stopped(guard) => Some(guard),
            Repr::StoppedAt(index) => self.explanation.get(*index),
        }
    }

    /// Whether it fired.
    pub fn fired(&self) -> bool {
        matches!(self.repr, Repr::Fired(_))
    }

    /// The predicates that were checked, in order.
    pub fn explanation(&self) -> &[Predicate] {
        &self.explanation
    }

    /// The explanation as one line: `idle 9 d > 7 d; stage not in [closed-won, closed-lost]`.
    pub fn explain(&self) -> String {
        let parts: Vec<String> = self.explanation.iter().map(ToString::to_string).collect();
        parts.join("; ")
    }

    /// Puts `predicates` before this evaluation's own (used by combinators).
    pub fn with_prefix(mut self, mut predicates: Vec<Predicate>) -> Self {
        if let Repr::StoppedAt(index) = &mut self.repr {
            *index += predicates.len();
        }
        predicates.append(&mut self.explanation);
        self.explanation = predicates;
        self
    }

    /// Appends a predicate to the explanation (used by combinators).
    pub fn push(&mut self, predicate: Predicate) {
        self.explanation.push(predicate);
    }

    /// Splits the evaluation into its parts.
    pub fn into_parts(self) -> (Outcome, Vec<Predicate>) {
        let outcome = match self.repr {
            Repr::Fired(signal) => Outcome::Fired(signal),
            Repr::Stopped(guard) => Outcome::Stopped { guard },
            Repr::StoppedAt(index) => Outcome::Stopped { guard: self.explanation[index].clone() },
        };
        (outcome, self.explanation)
    }

    /// The signal, when it fired, and the explanation buffer, without building the guard (the
    /// engine's hot path).
    #[inline]
    pub(crate) fn into_signal_and_buffer(self) -> (Option<Box<Signal>>, Vec<Predicate>) {
        match self.repr {
            Repr::Fired(signal) => (Some(signal), self.explanation),
            Repr::Stopped(_) | Repr::StoppedAt(_) => (None, self.explanation),
        }
    }
}
