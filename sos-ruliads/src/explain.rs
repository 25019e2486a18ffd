//! Explanations: the leaf predicates a ruliad checked, with the observed value against the threshold.
//!
//! A [`Predicate`] is a packed, `Copy` record: the check's name, the raw observed value and
//! threshold ([`Value`]: numbers, times, `&'static str`s, or text interned in the evaluation's
//! [`Explanation`]), the comparison and whether it held. Recording one is a few stores into a
//! buffer reused from one evaluation to the next, with nothing to drop; the text people read
//! ("idle 9 d > 7 d") is rendered only when asked for (a fired signal's `because`, or
//! [`Evaluation::explain`]).

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde::ser::SerializeSeq;
use sos_core::{Severity, Signal, SignalKind, TenantId};

/// Per-thread evaluation state, in one thread-local so that starting an evaluation is one access.
struct Local {
    trace: Cell<bool>,
    /// An emptied explanation, reused so that an evaluation in the engine's loop does not
    /// allocate. One slot is enough: the engine hands the buffer back after each evaluation; a
    /// nested evaluation (inside a combinator) simply starts a new one.
    spare: Cell<Explanation>,
}

thread_local! {
    static LOCAL: Local = const { Local { trace: Cell::new(true), spare: Cell::new(Explanation::new()) } };
}

/// Whether the trace is on, and a reused buffer to record into.
#[inline]
fn start() -> (bool, Explanation) {
    LOCAL.with(|local| {
        // With the trace off the buffer still records the guard, so it is reused as well.
        (local.trace.get(), local.spare.take())
    })
}

/// Hands an explanation buffer back for reuse (used by the engine once it kept the signal).
/// Clearing it is O(1): predicates are `Copy`, interned text is one `String`.
// Always inlined: as a call (with the thread-local access outlined) it cost the engine about 40
// instructions per evaluation.
#[inline(always)]
pub(crate) fn recycle(mut explanation: Explanation) {
    if explanation.predicates.capacity() == 0 && explanation.texts.capacity() == 0 {
        return;
    }
    explanation.clear();
    LOCAL.with(|local| local.spare.set(explanation));
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

/// Text interned in an [`Explanation`] (see [`Explain::text`]): where it lies in that
/// explanation's text buffer. It means nothing outside the explanation it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TextId {
    start: u32,
    len: u32,
}

/// A value observed by a predicate, or the threshold it was compared against.
///
/// Every variant is plain data (`Copy`): text is either `&'static str` or interned in the
/// evaluation's [`Explanation`] ([`Value::Interned`], from [`Explain::text`]), so recording a
/// predicate never allocates and dropping one costs nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// A word known at compile time, such as a stage name.
    Text(&'static str),
    /// A fixed list of words known at compile time.
    Names(&'static [&'static str]),
    /// Text only known at run time (such as a host's own stage name), interned in the
    /// evaluation's [`Explanation`] by [`Explain::text`]; shown through that explanation.
    Interned(TextId),
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
        Self::Text(value)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    #[inline]
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Missing, Into::into)
    }
}

/// Shows the value; interned text needs its explanation and is shown as `<text>` without it
/// (use [`Explanation::display`]).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(24);
        write_value(self, None, &mut text);
        f.write_str(&text)
    }
}

/// Appends `value` as people read it; `texts` resolves interned text.
fn write_value(value: &Value, texts: Option<&Explanation>, out: &mut String) {
    use std::fmt::Write as _;
    match value {
        Value::Missing => out.push_str("missing"),
        Value::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
        Value::Int(value) => push_int(out, *value),
        Value::Time(time) => push_time(out, *time),
        Value::Seconds(seconds) => push_span(out, *seconds),
        Value::Text(text) => out.push_str(text),
        Value::Interned(id) => out.push_str(texts.and_then(|texts| texts.resolve(*id)).unwrap_or("<text>")),
        Value::Names(items) => {
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
        Value::Float(value) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Appends `time` as `YYYY-MM-DDTHH:MM:SSZ` without going through chrono's format-string parser,
/// which dominated explanation and label costs.
pub(crate) fn push_time(out: &mut String, time: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    // One conversion to the calendar; `DateTime`'s own accessors convert again on every call.
    let naive = time.naive_utc();
    let year = naive.year();
    if !(0..=9999).contains(&year) {
        use std::fmt::Write as _;
        // Writing into a String cannot fail.
        let _ = write!(out, "{}", time.format("%Y-%m-%dT%H:%M:%SZ"));
        return;
    }
    let mut text = *b"0000-00-00T00:00:00Z";
    let mut digits = |at: usize, width: usize, value: u32| {
        let mut rest = value;
        for slot in text[at..at + width].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
    };
    digits(0, 4, year.unsigned_abs());
    digits(5, 2, naive.month());
    digits(8, 2, naive.day());
    digits(11, 2, naive.hour());
    digits(14, 2, naive.minute());
    digits(17, 2, naive.second());
    // ASCII digits and separators are valid UTF-8.
    out.push_str(std::str::from_utf8(&text).unwrap_or("?"));
}

/// Appends ASCII bytes one `char` at a time: cheaper than validating a few bytes as UTF-8.
#[inline]
fn push_ascii(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len());
    for byte in bytes {
        out.push(char::from(*byte));
    }
}

/// `time` as `YYYY-MM-DDTHH:MM:SSZ` (see [`push_time`]); its first 10 bytes are the date.
pub(crate) fn time_text(time: DateTime<Utc>) -> String {
    let mut out = String::with_capacity(20);
    push_time(&mut out, time);
    out
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
    push_ascii(out, &buffer[at..]);
}

/// Appends a span in the largest whole unit: `9 d`, `1.5 d`, `5 h`, `90 min`, `59 s`.
fn push_span(out: &mut String, seconds: i64) {
    const DAY: i64 = 86_400;
    let (count, unit) = if seconds % DAY == 0 {
        (seconds / DAY, " d")
    } else if seconds.abs() >= DAY {
        // One decimal is enough for a person; the exact seconds stay in the structured value.
        // Rounded in integers (float formatting was a tenth of the traced run); an exact tie
        // keeps `{:.1}`'s rounding of the binary value.
        let tenths = i128::from(seconds) * 10;
        let (whole, rest) = (tenths / i128::from(DAY), (tenths % i128::from(DAY)).abs());
        if rest * 2 == i128::from(DAY) {
            use std::fmt::Write as _;
            // Writing into a String cannot fail.
            let _ = write!(out, "{:.1} d", seconds as f64 / DAY as f64);
            return;
        }
        let rounded = if rest * 2 > i128::from(DAY) { whole + whole.signum() } else { whole };
        let rounded = i64::try_from(rounded).unwrap_or(i64::MAX);
        if rounded < 0 {
            out.push('-');
        }
        push_int(out, (rounded / 10).abs());
        out.push('.');
        push_int(out, (rounded % 10).abs());
        out.push_str(" d");
        return;
    } else if seconds % 3_600 == 0 {
        (seconds / 3_600, " h")
    } else if seconds % 60 == 0 {
        (seconds / 60, " min")
    } else {
        (seconds, " s")
    };
    push_int(out, count);
    out.push_str(unit);
}

/// How a predicate compared its observed value with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// The symbol with a space on each side, as written between two values.
    const fn padded(self) -> &'static str {
        match self {
            Self::Gt => " > ",
            Self::Ge => " >= ",
            Self::Lt => " < ",
            Self::Le => " <= ",
            Self::Eq => " = ",
            Self::Ne => " != ",
            Self::In => " in ",
            Self::NotIn => " not in ",
        }
    }

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
///
/// A packed record (`Copy`, no heap): the values are kept raw and rendered only on demand. An
/// [`Value::Interned`] value belongs to the [`Explanation`] it was recorded in; show such a
/// predicate with [`Explanation::display`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Predicate {
    /// What was checked, such as `idle` or `stage`.
    pub name: &'static str,
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
        name: &'static str,
        observed: impl Into<Value>,
        op: Op,
        threshold: impl Into<Value>,
        held: bool,
    ) -> Self {
        Self { name, observed: observed.into(), op, threshold: threshold.into(), held }
    }

    /// `observed > threshold`.
    #[inline]
    pub fn gt<T: PartialOrd + Into<Value>>(name: &'static str, observed: T, threshold: T) -> Self {
        let held = observed > threshold;
        Self::new(name, observed, Op::Gt, threshold, held)
    }

    /// `observed >= threshold`.
    #[inline]
    pub fn ge<T: PartialOrd + Into<Value>>(name: &'static str, observed: T, threshold: T) -> Self {
        let held = observed >= threshold;
        Self::new(name, observed, Op::Ge, threshold, held)
    }

    /// `observed < threshold`.
    #[inline]
    pub fn lt<T: PartialOrd + Into<Value>>(name: &'static str, observed: T, threshold: T) -> Self {
        let held = observed < threshold;
        Self::new(name, observed, Op::Lt, threshold, held)
    }

    /// `observed <= threshold`.
    #[inline]
    pub fn le<T: PartialOrd + Into<Value>>(name: &'static str, observed: T, threshold: T) -> Self {
        let held = observed <= threshold;
        Self::new(name, observed, Op::Le, threshold, held)
    }

    /// `observed = expected`.
    #[inline]
    pub fn eq<T: PartialEq + Into<Value>>(name: &'static str, observed: T, expected: T) -> Self {
        let held = observed == expected;
        Self::new(name, observed, Op::Eq, expected, held)
    }

    /// A yes/no fact that must be true, such as `consent = true`.
    #[inline]
    pub fn is_true(name: &'static str, observed: bool) -> Self {
        Self::new(name, observed, Op::Eq, true, observed)
    }

    /// A field that must be present; the observed value is shown when it is.
    #[inline]
    pub fn present<T: Into<Value>>(name: &'static str, observed: Option<T>) -> Self {
        let held = observed.is_some();
        Self::new(name, observed, Op::Ne, Value::Missing, held)
    }

    /// `observed not in excluded`. For text only known at run time, intern it with
    /// [`Explain::text`] and use [`Predicate::custom`] with [`Op::NotIn`].
    #[inline]
    pub fn not_in(name: &'static str, observed: &'static str, excluded: &'static [&'static str]) -> Self {
        let held = !excluded.contains(&observed);
        Self::new(name, Value::Text(observed), Op::NotIn, Value::Names(excluded), held)
    }

    /// A predicate with a free-form comparison, for combinators and host rules.
    #[inline]
    pub fn custom(
        name: &'static str,
        observed: impl Into<Value>,
        op: Op,
        threshold: impl Into<Value>,
        held: bool,
    ) -> Self {
        Self::new(name, observed, op, threshold, held)
    }

    /// Appends `name observed op threshold[ (failed)]` to `out`; `texts` resolves interned text.
    fn write_to(&self, texts: Option<&Explanation>, out: &mut String) {
        out.push_str(self.name);
        out.push(' ');
        write_value(&self.observed, texts, out);
        out.push_str(self.op.padded());
        write_value(&self.threshold, texts, out);
        if !self.held {
            out.push_str(" (failed)");
        }
    }

    /// Moves interned text references by `offset` (the predicate moved into a longer buffer).
    #[inline]
    pub(crate) fn shifted(mut self, offset: u32) -> Self {
        for value in [&mut self.observed, &mut self.threshold] {
            if let Value::Interned(id) = value {
                id.start += offset;
            }
        }
        self
    }
}

/// Shows the predicate; interned text needs its explanation and is shown as `<text>` without it
/// (use [`Explanation::display`]).
impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(48);
        self.write_to(None, &mut text);
        f.write_str(&text)
    }
}

/// The predicates one evaluation checked, in order, with the text they interned.
///
/// Serializes as a JSON array of `{"name", "observed", "op", "threshold", "held"}` objects,
/// values as `{"int": 9}`, `{"seconds": 777600}`, `{"time": "…"}`, `{"text": "…"}`,
/// `{"list": […]}` or `"missing"` (interned text is written out). It is a record for people and
/// logs and is not read back: predicate names are `&'static str`.
#[derive(Debug, Clone, Default)]
pub struct Explanation {
    predicates: Vec<Predicate>,
    /// Interned text ([`Value::Interned`] points into it).
    texts: String,
}

impl Explanation {
    /// An empty explanation (allocates nothing).
    pub const fn new() -> Self {
        Self { predicates: Vec::new(), texts: String::new() }
    }

    /// The number of predicates.
    #[inline]
    pub fn len(&self) -> usize {
        self.predicates.len()
    }

    /// Whether no predicate was recorded.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.predicates.is_empty()
    }

    /// The predicates, in the order they were checked.
    #[inline]
    pub fn predicates(&self) -> &[Predicate] {
        &self.predicates
    }

    /// The predicates, in the order they were checked.
    pub fn iter(&self) -> std::slice::Iter<'_, Predicate> {
        self.predicates.iter()
    }

    /// Appends a predicate; its interned text, if any, must come from this explanation.
    #[inline]
    pub fn push(&mut self, predicate: Predicate) {
        self.predicates.push(predicate);
    }

    /// Interns `text` and returns the value that refers to it.
    pub fn intern(&mut self, text: &str) -> Value {
        let (Ok(start), Ok(len)) = (u32::try_from(self.texts.len()), u32::try_from(text.len())) else {
            return Value::Text("<text over 4 GiB>");
        };
        if start.checked_add(len).is_none() {
            return Value::Text("<text over 4 GiB>");
        }
        self.texts.push_str(text);
        Value::Interned(TextId { start, len })
    }

    /// The text of a [`Value::Text`] or of a [`Value::Interned`] value from this explanation.
    pub fn text(&self, value: &Value) -> Option<&str> {
        match value {
            Value::Text(text) => Some(text),
            Value::Interned(id) => self.resolve(*id),
            _ => None,
        }
    }

    fn resolve(&self, id: TextId) -> Option<&str> {
        let start = id.start as usize;
        self.texts.get(start..start + id.len as usize)
    }

    /// Shows `predicate`, with its interned text resolved in this explanation.
    pub fn display<'a>(&'a self, predicate: &'a Predicate) -> impl fmt::Display + 'a {
        Shown { predicate, texts: self }
    }

    /// Appends every predicate, `; `-separated, to `out`.
    fn write_line(&self, out: &mut String) {
        self.write_predicates(&self.predicates, out);
    }

    /// Appends `predicates` (whose interned text is this explanation's), `; `-separated, to
    /// `out`.
    fn write_predicates(&self, predicates: &[Predicate], out: &mut String) {
        for (index, predicate) in predicates.iter().enumerate() {
            if index > 0 {
                out.push_str("; ");
            }
            predicate.write_to(Some(self), out);
        }
    }

    /// Appends `other` after this explanation's predicates (interned text moves along);
    /// returns the offset its interned text moved by.
    pub(crate) fn append(&mut self, other: &Explanation) -> u32 {
        let offset = u32::try_from(self.texts.len()).unwrap_or(u32::MAX);
        if other.texts.is_empty() {
            // Nothing interned (the usual case): one copy of the packed records, no shifting.
            // A `Value::Interned` of empty text may still be there; it resolves to "" wherever
            // it points.
            self.predicates.extend_from_slice(&other.predicates);
            return offset;
        }
        self.texts.push_str(&other.texts);
        self.predicates.extend(other.predicates.iter().map(|predicate| predicate.shifted(offset)));
        offset
    }

    /// Keeps only the predicates for which `keep` is true.
    pub fn retain(&mut self, keep: impl FnMut(&Predicate) -> bool) {
        self.predicates.retain(keep);
    }

    #[inline]
    fn clear(&mut self) {
        self.predicates.clear();
        self.texts.clear();
    }

    /// Whether `a` (from `self`) and `b` (from `other`) say the same thing.
    fn same(&self, a: &Predicate, other: &Explanation, b: &Predicate) -> bool {
        let value = |left: &Value, right: &Value| match (left, right) {
            (Value::Interned(_) | Value::Text(_), Value::Interned(_) | Value::Text(_)) => {
                self.text(left) == other.text(right)
            }
            _ => left == right,
        };
        a.name == b.name
            && a.op == b.op
            && a.held == b.held
            && value(&a.observed, &b.observed)
            && value(&a.threshold, &b.threshold)
    }
}

/// Two explanations are equal when their predicates say the same, text resolved.
impl PartialEq for Explanation {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self.predicates.iter().zip(&other.predicates).all(|(a, b)| self.same(a, other, b))
    }
}

/// The explanation as one line: `idle 9 d > 7 d; stage negotiation not in [closed-won, closed-lost]`.
impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = String::with_capacity(40 * self.len());
        self.write_line(&mut line);
        f.write_str(&line)
    }
}

impl<'a> IntoIterator for &'a Explanation {
    type Item = &'a Predicate;
    type IntoIter = std::slice::Iter<'a, Predicate>;
    fn into_iter(self) -> Self::IntoIter {
        self.predicates.iter()
    }
}

struct Shown<'a> {
    predicate: &'a Predicate,
    texts: &'a Explanation,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::with_capacity(48);
        self.predicate.write_to(Some(self.texts), &mut text);
        f.write_str(&text)
    }
}

/// The JSON shape of one predicate (unchanged from the owned representation before packing).
#[derive(Serialize)]
struct PredicateJson<'a> {
    name: &'a str,
    observed: ValueJson<'a>,
    op: Op,
    threshold: ValueJson<'a>,
    held: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ValueJson<'a> {
    Missing,
    Bool(bool),
    Int(i64),
    Float(f64),
    Seconds(i64),
    Time(DateTime<Utc>),
    Text(&'a str),
    List(&'a [&'a str]),
}

impl Explanation {
    fn json<'a>(&'a self, value: &'a Value) -> ValueJson<'a> {
        match value {
            Value::Missing => ValueJson::Missing,
            Value::Bool(value) => ValueJson::Bool(*value),
            Value::Int(value) => ValueJson::Int(*value),
            Value::Float(value) => ValueJson::Float(*value),
            Value::Seconds(value) => ValueJson::Seconds(*value),
            Value::Time(value) => ValueJson::Time(*value),
            Value::Text(text) => ValueJson::Text(text),
            Value::Interned(id) => ValueJson::Text(self.resolve(*id).unwrap_or("<text>")),
            Value::Names(items) => ValueJson::List(items),
        }
    }
}

impl Serialize for Explanation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for predicate in &self.predicates {
            seq.serialize_element(&PredicateJson {
                name: predicate.name,
                observed: self.json(&predicate.observed),
                op: predicate.op,
                threshold: self.json(&predicate.threshold),
                held: predicate.held,
            })?;
        }
        seq.end()
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

/// No failed predicate yet.
const NONE: u32 = u32::MAX;

/// Records the predicates of one evaluation; see the crate docs for a ruliad that uses it.
///
/// A ruliad either owns one for a single evaluation ([`Explain::new`], then [`Explain::stop`]
/// or [`Explain::fire`] into an [`Evaluation`]), or records into one its caller passes down and
/// reuses from one evaluation to the next ([`Ruliad::evaluate_into`](crate::Ruliad::evaluate_into),
/// the engine's path), with [`Explain::stop_here`] and [`Explain::fire_here`].
#[derive(Debug, Clone)]
pub struct Explain {
    explanation: Explanation,
    /// (name, value) in the order given; part of the cause digest in that order.
    labels: Vec<(String, String)>,
    /// Where the last failed predicate (the guard) is in `explanation`, or [`NONE`].
    failed: u32,
    enabled: bool,
    /// Whether a signal fired by [`Explain::fire_here`] (or adopted) still needs its `because`
    /// line rendered from `explanation`.
    because: bool,
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
        let (enabled, explanation) = start();
        Self { explanation, labels: Vec::new(), failed: NONE, enabled, because: false }
    }

    /// Whether predicates that held are recorded (the trace is on).
    #[inline]
    pub fn tracing(&self) -> bool {
        self.enabled
    }

    /// Empties the recorder for the next evaluation, keeping its buffers and its trace setting
    /// (what the engine does between two [`Ruliad::evaluate_into`](crate::Ruliad::evaluate_into)
    /// calls). O(1) unless labels were left behind.
    #[inline]
    pub fn reset(&mut self) {
        self.explanation.clear();
        if !self.labels.is_empty() {
            self.labels.clear();
        }
        self.failed = NONE;
        self.because = false;
    }

    /// The predicates recorded so far (after [`Explain::stop_here`], the guard is the last
    /// failed one: [`Explain::guard`]).
    #[inline]
    pub fn explanation(&self) -> &Explanation {
        &self.explanation
    }

    /// The last predicate that failed, which is the guard once the evaluation stopped.
    pub fn guard(&self) -> Option<&Predicate> {
        self.explanation.predicates.get(self.failed as usize)
    }

    /// Whether the signal returned by [`Explain::fire_here`] (or by
    /// [`Ruliad::evaluate_into`](crate::Ruliad::evaluate_into)) does not hold its `because`
    /// line yet: it is to be written from [`Explain::explanation`] (the trace was on).
    #[inline]
    pub fn because_pending(&self) -> bool {
        self.because
    }

    /// Records `predicate` and returns whether it held. A predicate that failed is always
    /// recorded, so that the guard that stopped an evaluation is known even with the trace off.
    #[inline]
    pub fn check(&mut self, predicate: Predicate) -> bool {
        let held = predicate.held;
        if !held {
            self.failed = u32::try_from(self.explanation.len()).unwrap_or(NONE);
            self.explanation.push(predicate);
        } else if self.enabled {
            self.explanation.push(predicate);
        }
        held
    }

    /// Interns text only known at run time (such as a host's stage name) for a predicate of
    /// this evaluation: `why.check(Predicate::custom("stage", why.text(name), Op::Eq, "won", held))`.
    pub fn text(&mut self, text: &str) -> Value {
        self.explanation.intern(text)
    }

    /// Adds a label (such as `deal_id`) to the signal's evidence; labels are used for grouping
    /// and inhibition, and are part of the cause digest.
    pub fn label(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.labels.push((name.to_owned(), value.into()));
        self
    }

    /// Stops the evaluation at the last failed predicate (a synthetic `condition = true`
    /// guard when none failed).
    // Always inlined: as a call it moved the whole `Explain` through memory on every stopped
    // evaluation (124 M instructions over the benchmark's million deals).
    #[inline(always)]
    pub fn stop(mut self) -> Evaluation {
        self.stop_here();
        self.into_evaluation(None)
    }

    /// Stops the evaluation in place, at the last failed predicate (a synthetic
    /// `condition = true` guard when none failed); returns `None`, what
    /// [`Ruliad::evaluate_into`](crate::Ruliad::evaluate_into) returns for a rule that did not
    /// fire.
    #[inline(always)]
    pub fn stop_here(&mut self) -> Option<Signal> {
        if self.failed == NONE {
            self.failed = u32::try_from(self.explanation.len()).unwrap_or(NONE);
            self.explanation.push(Predicate::is_true("condition", false));
        }
        None
    }

    /// Validates the draft and fires it, with the explanation and labels as evidence and a cause
    /// digest over the tenant, the kind and the labels.
    pub fn fire(mut self, draft: Draft) -> Evaluation {
        let signal = self.fire_here(draft);
        self.into_evaluation(signal)
    }

    /// [`Explain::fire`] in place, for a recorder passed down by the caller: the signal, or
    /// `None` when the draft is invalid (the failed check is then the guard). With the trace
    /// on, the signal's `because` line is left to write from [`Explain::explanation`]
    /// ([`Explain::because_pending`]).
    pub fn fire_here(&mut self, draft: Draft) -> Option<Signal> {
        let kind = match SignalKind::new(draft.kind) {
            Ok(kind) => kind,
            Err(_) => return self.fail(Predicate::custom("kind", draft.kind, Op::Eq, "a slug", false)),
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
            return self.fail(Predicate::custom("labels", "too long", Op::Le, "4 GiB", false));
        }
        let mut labels = serde_json::Map::new();
        for (name, value) in self.labels.drain(..) {
            labels.insert(name, serde_json::Value::String(value));
        }
        let mut evidence = serde_json::Map::new();
        evidence.insert("labels".to_owned(), serde_json::Value::Object(labels));
        // The `because` line is not rendered here: the explanation is kept as packed data and
        // the line is written when the signal is handed out (see `Evaluation::signal`), or by
        // the gate when the signal joins its group; most fired signals of a periodic
        // evaluation are repeats that nobody reads again.
        let built = Signal::builder(draft.tenant, kind)
            .subject(draft.subject)
            .text(draft.text)
            .severity(draft.severity)
            .observed_at(draft.observed_at)
            .cause(cause.finish())
            .evidence(serde_json::Value::Object(evidence))
            .build();
        match built {
            Ok(signal) => {
                self.failed = NONE;
                self.because = self.enabled;
                Some(signal)
            }
            Err(error) => {
                let observed = self.text(&error.to_string());
                self.fail(Predicate::custom("signal", observed, Op::Eq, "valid", false))
            }
        }
    }

    /// Stops the evaluation at `guard`, recorded as the last predicate.
    fn fail(&mut self, guard: Predicate) -> Option<Signal> {
        self.check(guard);
        self.stop_here()
    }

    /// The evaluation this recorder describes, `fired` being what the rule returned (see
    /// [`Ruliad::evaluate_into`](crate::Ruliad::evaluate_into)): a rule written once against
    /// a passed-down recorder gets its [`Ruliad::evaluate`](crate::Ruliad::evaluate) as
    /// `let mut why = Explain::new(); let fired = self.evaluate_into(now, entity, &mut why);
    /// why.into_evaluation(fired)`.
    #[inline(always)]
    pub fn into_evaluation(mut self, fired: Option<Signal>) -> Evaluation {
        match fired {
            Some(signal) => Evaluation {
                signal: Some(Box::new(signal)),
                guard: NONE,
                because: self.because,
                shown: OnceLock::new(),
                explanation: self.explanation,
            },
            None => {
                self.stop_here();
                Evaluation {
                    signal: None,
                    guard: self.failed,
                    because: false,
                    shown: OnceLock::new(),
                    explanation: self.explanation,
                }
            }
        }
    }

    /// Takes `evaluation` as this recorder's state and returns its signal (the default
    /// [`Ruliad::evaluate_into`](crate::Ruliad::evaluate_into)): the recorder's own buffer goes
    /// back to the per-thread spare, which the next [`Explain::new`] takes, so nothing is
    /// allocated from one evaluation to the next.
    pub(crate) fn adopt(&mut self, evaluation: Evaluation) -> Option<Signal> {
        let Evaluation { signal, guard, because, explanation, .. } = evaluation;
        recycle(std::mem::replace(&mut self.explanation, explanation));
        self.labels.clear();
        match signal {
            Some(signal) => {
                self.failed = NONE;
                self.because = because;
                Some(*signal)
            }
            None => {
                self.failed = guard;
                self.because = false;
                None
            }
        }
    }

    /// Hands the recorder's buffer back to the per-thread spare (the engine, at the end of a
    /// batch).
    pub(crate) fn recycle(self) {
        recycle(self.explanation);
    }
}

/// What an evaluation came to, by value (see [`Evaluation::into_parts`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The ruliad fired this signal.
    Fired(Box<Signal>),
    /// The ruliad did not fire; this guard stopped it (its interned text, if any, is in the
    /// evaluation's [`Explanation`]).
    Stopped {
        /// The predicate that failed.
        guard: Predicate,
    },
}

/// The result of evaluating one ruliad against one entity: a signal or the guard that stopped
/// it, with the predicates that were checked.
///
/// The guard is always part of the explanation, also with the trace off (then the explanation
/// holds only the predicates that failed).
///
/// A signal fired through [`Explain::fire`] with the trace on carries the explanation as one
/// line in its evidence (`"because"`). That line is rendered from the packed predicates only
/// when the signal is handed out ([`Evaluation::signal`], [`Evaluation::into_signal`],
/// [`Evaluation::into_parts`]), so it always says what the final explanation says, predicates
/// added by combinators included.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The signal as fired; without its `because` line while `because` is set.
    signal: Option<Box<Signal>>,
    /// Where the guard is in `explanation` when it did not fire.
    guard: u32,
    /// Whether the signal's `because` line is still to be rendered from `explanation`.
    because: bool,
    /// The signal with its `because` line, rendered on the first [`Evaluation::signal`] call.
    shown: OnceLock<Box<Signal>>,
    explanation: Explanation,
}

/// Adds `explanation` as one line (`"because"`) to `signal`'s evidence, when the evidence is an
/// object (as [`Explain::fire`] builds it).
pub(crate) fn write_because(signal: &mut Signal, explanation: &Explanation) {
    write_because_of(signal, explanation, &explanation.predicates);
}

/// [`write_because`] of `predicates`, whose interned text is `texts`'.
fn write_because_of(signal: &mut Signal, texts: &Explanation, predicates: &[Predicate]) {
    if let serde_json::Value::Object(evidence) = signal.evidence_mut() {
        // One line, as people read it: "idle 9 d > 7 d; stage negotiation not in [...]".
        let mut because = String::with_capacity(40 * predicates.len());
        texts.write_predicates(predicates, &mut because);
        evidence.insert("because".to_owned(), serde_json::Value::String(because));
    }
}

/// A fired signal's explanation, whose `because` line its evidence does not hold yet: in the
/// engine, a range of a buffer that holds the explanations of the signals fired around it in
/// the same batch range (see [`Batch`]), so that keeping one costs a copy into that buffer, not
/// an allocation of its own; the buffer lives as long as the last signal still holding a range
/// of it. Outside the engine, the evaluation's own explanation.
#[derive(Clone)]
pub(crate) enum Because {
    /// An explanation of its own (a signal fired outside the engine's batch, through
    /// [`crate::engine::Fired::from_evaluation`]); its buffer is recycled once written.
    Own(Explanation),
    /// A range of a buffer shared with the other signals fired in the same batch range.
    Shared { batch: Arc<Explanation>, start: u32, end: u32 },
}

impl Because {
    /// The whole of `explanation` (a fired signal kept outside the engine's batch).
    pub(crate) fn whole(explanation: Explanation) -> Self {
        Self::Own(explanation)
    }

    /// The explanation holding the interned text, and the predicates.
    fn parts(&self) -> (&Explanation, &[Predicate]) {
        match self {
            Self::Own(explanation) => (explanation, &explanation.predicates),
            Self::Shared { batch, start, end } => {
                (batch, batch.predicates.get(*start as usize..*end as usize).unwrap_or_default())
            }
        }
    }

    /// The explanation as one of its own (interned text copied along).
    pub(crate) fn to_explanation(&self) -> Explanation {
        let (texts, predicates) = self.parts();
        let mut own = Explanation::new();
        own.predicates.reserve_exact(predicates.len());
        for predicate in predicates {
            let mut predicate = *predicate;
            for value in [&mut predicate.observed, &mut predicate.threshold] {
                if let Value::Interned(id) = *value {
                    *value = own.intern(texts.resolve(id).unwrap_or("<text>"));
                }
            }
            own.push(predicate);
        }
        own
    }

    /// Adds the explanation as one line (`"because"`) to `signal`'s evidence (see
    /// [`write_because`]).
    pub(crate) fn write_into(&self, signal: &mut Signal) {
        let (texts, predicates) = self.parts();
        write_because_of(signal, texts, predicates);
    }

    /// Hands an explanation of its own back to this thread's spare buffer, which the next
    /// evaluation's recorder takes (no allocation per signal on the gate's path); a shared
    /// buffer is simply released.
    pub(crate) fn recycle(self) {
        if let Self::Own(explanation) = self {
            recycle(explanation);
        }
    }
}

/// Printed as the explanation of its own signal, whichever way it is kept: the shared buffer of
/// a batch holds other signals' predicates and interned text (other rules', entities' and
/// tenants'), which the `Debug` of one fired signal in a host's log must not show (named shape
/// `tenant-crosstalk`). Built only when printed.
impl fmt::Debug for Because {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Because").field(&self.to_explanation()).finish()
    }
}

/// Equal when the predicates say the same, text resolved.
impl PartialEq for Because {
    fn eq(&self, other: &Self) -> bool {
        let ((my_texts, mine), (their_texts, theirs)) = (self.parts(), other.parts());
        mine.len() == theirs.len() && mine.iter().zip(theirs).all(|(a, b)| my_texts.same(a, their_texts, b))
    }
}

/// The explanations of the signals fired in one batch range, collected into shared buffers as
/// they fire (the engine's path): [`Batch::keep`] copies the recorder's predicates in and
/// remembers their range; once a buffer holds about [`Batch::CHUNK`] predicates it is shared
/// among its signals ([`Batch::flush`]) and the next one starts. Buffers of a bounded size come
/// from the allocator's heap and are reused from one batch to the next, where one buffer growing
/// to the whole batch (tens of MB for a million deals) would be mapped and faulted in afresh on
/// every batch; no signal holds more than one buffer alive.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    kept: Explanation,
    /// (index of the fired signal in the range's list, start, end) for each explanation in
    /// `kept`.
    ranges: Vec<(usize, u32, u32)>,
}

impl Batch {
    /// The predicates one shared buffer holds before the next one starts (72 KiB of records,
    /// under the allocator's 128 KiB threshold for mapping memory).
    pub(crate) const CHUNK: usize = 1_024;

    /// Copies `why`'s explanation in, for the fired signal at `index` of the range's list;
    /// `attach` gives the signals of a full buffer their explanations (see [`Batch::flush`]).
    #[inline]
    pub(crate) fn keep(&mut self, index: usize, why: &Explain, attach: impl FnMut(usize, Because)) {
        if !self.kept.is_empty() && self.kept.len() + why.explanation.len() > Self::CHUNK {
            self.flush(attach);
            self.kept.predicates.reserve_exact(Self::CHUNK);
        }
        let start = u32::try_from(self.kept.len()).unwrap_or(u32::MAX);
        self.kept.append(&why.explanation);
        let end = u32::try_from(self.kept.len()).unwrap_or(u32::MAX);
        self.ranges.push((index, start, end));
    }

    /// Shares the current buffer: calls `attach` with each index given to [`Batch::keep`] since
    /// the last flush and that signal's explanation, and starts an empty buffer. Nothing when
    /// nothing was kept (trace off).
    pub(crate) fn flush(&mut self, mut attach: impl FnMut(usize, Because)) {
        if self.ranges.is_empty() {
            return;
        }
        let batch = Arc::new(std::mem::take(&mut self.kept));
        for (index, start, end) in self.ranges.drain(..) {
            attach(index, Because::Shared { batch: Arc::clone(&batch), start, end });
        }
    }
}

/// Equal when they fired the same signal or stopped at the same guard, with the same
/// explanation (interned text compared as text).
impl PartialEq for Evaluation {
    fn eq(&self, other: &Self) -> bool {
        let same_outcome = match (self.guard(), other.guard()) {
            (Some(a), Some(b)) => self.explanation.same(a, &other.explanation, b),
            (None, None) => self.signal() == other.signal(),
            _ => false,
        };
        same_outcome && self.explanation == other.explanation
    }
}

impl Evaluation {
    /// An evaluation from its parts (for combinators and tests). A guard is recorded after
    /// `explanation`; its interned text, if any, must come from `explanation`.
    pub fn new(outcome: Outcome, mut explanation: Explanation) -> Self {
        match outcome {
            Outcome::Fired(signal) => Self {
                signal: Some(signal),
                guard: NONE,
                because: false,
                shown: OnceLock::new(),
                explanation,
            },
            Outcome::Stopped { guard } => {
                let index = u32::try_from(explanation.len()).unwrap_or(NONE);
                explanation.push(guard);
                Self { signal: None, guard: index, because: false, shown: OnceLock::new(), explanation }
            }
        }
    }

    /// A stopped evaluation whose guard is `guard`, recorded after `explanation`.
    pub fn stopped(guard: Predicate, explanation: Explanation) -> Self {
        Self::new(Outcome::Stopped { guard }, explanation)
    }

    /// A stopped evaluation whose guard is the predicate at `index` of `explanation`.
    pub(crate) fn stopped_at(index: usize, explanation: Explanation) -> Self {
        Self {
            signal: None,
            guard: u32::try_from(index).unwrap_or(NONE),
            because: false,
            shown: OnceLock::new(),
            explanation,
        }
    }

    /// The signal, when it fired (with its `because` line; the first call renders it).
    pub fn signal(&self) -> Option<&Signal> {
        let signal = self.signal.as_deref()?;
        if !self.because {
            return Some(signal);
        }
        Some(self.shown.get_or_init(|| {
            let mut shown = Box::new(signal.clone());
            write_because(&mut shown, &self.explanation);
            shown
        }))
    }

    /// The signal as fired, without rendering its `because` line (for its id and cause).
    pub(crate) fn raw_signal(&self) -> Option<&Signal> {
        self.signal.as_deref()
    }

    /// The signal, when it fired, by value (with its `because` line).
    pub fn into_signal(mut self) -> Option<Signal> {
        self.render();
        self.signal.map(|signal| *signal)
    }

    /// Writes the pending `because` line into the signal.
    fn render(&mut self) {
        if std::mem::take(&mut self.because)
            && let Some(signal) = self.signal.as_deref_mut()
        {
            write_because(signal, &self.explanation);
        }
        self.shown = OnceLock::new();
    }

    /// The guard that stopped it, when it did not fire.
    pub fn guard(&self) -> Option<&Predicate> {
        match self.signal {
            Some(_) => None,
            None => self.explanation.predicates.get(self.guard as usize),
        }
    }

    /// Where the guard is in the explanation, when it did not fire.
    pub(crate) fn guard_index(&self) -> Option<usize> {
        self.guard().map(|_| self.guard as usize)
    }

    /// Whether it fired.
    pub fn fired(&self) -> bool {
        self.signal.is_some()
    }

    /// The predicates that were checked, in order.
    pub fn explanation(&self) -> &Explanation {
        &self.explanation
    }

    /// The explanation as one line: `idle 9 d > 7 d; stage not in [closed-won, closed-lost]`.
    pub fn explain(&self) -> String {
        self.explanation.to_string()
    }

    /// Puts `prefix`'s predicates before this evaluation's own (used by combinators).
    pub fn with_prefix(mut self, mut prefix: Explanation) -> Self {
        self.shown = OnceLock::new();
        if self.signal.is_none() {
            self.guard = self.guard.saturating_add(u32::try_from(prefix.len()).unwrap_or(NONE));
        }
        prefix.append(&self.explanation);
        recycle(std::mem::replace(&mut self.explanation, prefix));
        self
    }

    /// Appends a predicate to the explanation (used by combinators); its interned text, if
    /// any, must come from this evaluation's explanation.
    pub fn push(&mut self, predicate: Predicate) {
        self.shown = OnceLock::new();
        self.explanation.push(predicate);
    }

    /// Applies `map` to the signal, when it fired (with its `because` line).
    pub fn map_signal(mut self, map: impl FnOnce(Signal) -> Signal) -> Self {
        self.render();
        self.signal = self.signal.map(|signal| Box::new(map(*signal)));
        self
    }

    /// Splits the evaluation into its parts; the guard is also the explanation's last failed
    /// predicate.
    pub fn into_parts(mut self) -> (Outcome, Explanation) {
        self.render();
        let outcome = match self.signal {
            Some(signal) => Outcome::Fired(signal),
            None => {
                let guard = self.explanation.predicates.get(self.guard as usize).copied();
                Outcome::Stopped { guard: guard.unwrap_or(Predicate::is_true("condition", false)) }
            }
        };
        (outcome, self.explanation)
    }

    /// The signal, when it fired, the explanation buffer, and whether the signal's `because`
    /// line is still to be rendered from that explanation (the engine's hot path).
    #[inline]
    pub(crate) fn into_signal_and_buffer(self) -> (Option<Box<Signal>>, Explanation, bool) {
        (self.signal, self.explanation, self.because)
    }
}
