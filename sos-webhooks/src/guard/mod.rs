//! The idempotent guard: a dedupe record per (tenant, provider, event id), claimed by one
//! arbitrated write, in transactional or two-phase mode.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sos_core::{Clock, DomainHasher, Sha256Digest, TenantId};

use crate::error::{Error, Result};

mod cache;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(test)]
mod tests;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgHandler, PgStore, postgres_migrator};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteHandler, SqliteStore, sqlite_migrator};

/// The name of a webhook provider, as it appears in the dedupe key (`stripe`, `github`).
///
/// 1 to 64 characters from `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Provider(String);

impl Provider {
    /// Parses a provider name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when it is empty, longer than 64 or has another character.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let bytes = name.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(Error::InvalidKey { field: "provider", reason: "it is empty" });
        };
        if bytes.len() > 64 {
            return Err(Error::InvalidKey { field: "provider", reason: "it is longer than 64 characters" });
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit())
            || !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
        {
            return Err(Error::InvalidKey {
                field: "provider",
                reason: "use a-z, 0-9, '-' and '_', starting with a letter or a digit",
            });
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A provider's event id (`evt_…`, a `webhook-id`, or [`EventId::of_body`] for GitHub and Shopify).
///
/// 1 to [`EventId::MAX_LEN`] bytes of UTF-8 without control characters (no NUL, which
/// PostgreSQL text cannot hold). The id is stored as given: no trimming, no case folding.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

impl EventId {
    /// The longest accepted event id, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Parses an event id.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when it is empty, too long or contains a control character.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::InvalidKey { field: "event id", reason: "it is empty" });
        }
        if id.len() > Self::MAX_LEN {
            return Err(Error::InvalidKey { field: "event id", reason: "it is longer than 255 bytes" });
        }
        if id.chars().any(char::is_control) {
            return Err(Error::InvalidKey { field: "event id", reason: "it contains a control character" });
        }
        Ok(Self(id))
    }

    /// An event id derived from the raw body: `sha256:` and the body's SHA-256 in lowercase hex.
    ///
    /// Use it for providers that sign the body but not the delivery id (GitHub's
    /// `X-GitHub-Delivery` and Shopify's `X-Shopify-Webhook-Id` are outside the signature, and
    /// nothing timestamped is signed): a captured delivery replayed under a fresh delivery id
    /// still finds its record. Retries resend the same bytes, so they dedupe too; two
    /// deliveries with byte-identical bodies count as one event.
    ///
    /// ```
    /// use sos_webhooks::EventId;
    ///
    /// let id = EventId::of_body(b"{\"zen\":\"Keep it logically awesome.\"}");
    /// assert!(id.as_str().starts_with("sha256:"));
    /// ```
    pub fn of_body(body: &[u8]) -> Self {
        Self(format!("sha256:{}", Sha256Digest::of(body).to_hex()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The dedupe key: (tenant, provider, event id), all three required.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    tenant: TenantId,
    provider: Provider,
    event_id: EventId,
}

impl EventKey {
    /// Builds a key from its parts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] when the provider or the event id is not acceptable.
    pub fn new(tenant: TenantId, provider: &str, event_id: &str) -> Result<Self> {
        Ok(Self { tenant, provider: Provider::new(provider)?, event_id: EventId::new(event_id)? })
    }

    /// The tenant.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The provider.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// The provider's event id.
    pub fn event_id(&self) -> &EventId {
        &self.event_id
    }

    /// A 64-bit lock id for this key (domain-separated SHA-256, first 8 bytes), used for
    /// PostgreSQL advisory locks.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn lock_id(&self) -> i64 {
        let mut hasher = DomainHasher::new("sos-webhooks/lock/v1");
        // The three parts are at most 255 bytes each, far below the hasher's field limit.
        for part in [self.tenant.as_str(), self.provider.as_str(), self.event_id.as_str()] {
            let _ = hasher.str_field(part);
        }
        let digest = hasher.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest.as_bytes()[..8]);
        i64::from_be_bytes(first)
    }
}

/// The answer to a delivery that did not run the handler, because the event id is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Duplicate {
    /// The event was processed before: skip it and answer success.
    AlreadyProcessed,
    /// Another delivery of the event is being handled right now: answer "retry later".
    RetryInFlight,
    /// A previous attempt failed and is not yet re-claimable (two-phase mode): answer with a
    /// retryable error; a later delivery re-claims it.
    PriorAttemptFailed,
    /// The event id is known but arrived with a different body: a forged or corrupted event.
    BodyMismatch,
}

/// What a guarded delivery came to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome<T> {
    /// This delivery ran the handler, and its effects committed; here is the handler's value.
    Processed(T),
    /// See [`Duplicate::AlreadyProcessed`].
    AlreadyProcessed,
    /// See [`Duplicate::RetryInFlight`].
    RetryInFlight,
    /// See [`Duplicate::PriorAttemptFailed`].
    PriorAttemptFailed,
    /// See [`Duplicate::BodyMismatch`].
    BodyMismatch,
}

impl<T> Outcome<T> {
    /// Whether this delivery ran the handler.
    pub fn is_processed(&self) -> bool {
        matches!(self, Self::Processed(_))
    }

    /// A short, stable name for logs and JSON (`processed`, `already_processed`, …).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Processed(_) => "processed",
            Self::AlreadyProcessed => "already_processed",
            Self::RetryInFlight => "retry_in_flight",
            Self::PriorAttemptFailed => "prior_attempt_failed",
            Self::BodyMismatch => "body_mismatch",
        }
    }
}

impl<T> From<Duplicate> for Outcome<T> {
    fn from(duplicate: Duplicate) -> Self {
        match duplicate {
            Duplicate::AlreadyProcessed => Self::AlreadyProcessed,
            Duplicate::RetryInFlight => Self::RetryInFlight,
            Duplicate::PriorAttemptFailed => Self::PriorAttemptFailed,
            Duplicate::BodyMismatch => Self::BodyMismatch,
        }
    }
}

/// A guarded run that did not come to an [`Outcome`].
#[derive(Debug)]
pub enum RunError<E> {
    /// The handler returned an error. In transactional mode nothing it did remains; in
    /// two-phase mode the failure is recorded.
    Handler(E),
    /// The guard itself failed (storage, lease lost); the delivery was not decided.
    Guard(Error),
}

impl<E> From<Error> for RunError<E> {
    fn from(error: Error) -> Self {
        Self::Guard(error)
    }
}

impl<E: fmt::Display> fmt::Display for RunError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Handler(error) => write!(f, "the webhook handler failed: {error}"),
            Self::Guard(error) => write!(f, "{error}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RunError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Handler(error) => Some(error),
            Self::Guard(error) => Some(error),
        }
    }
}

/// When PostgreSQL transactional mode reads the committed record before it opens a
/// transaction ([`GuardConfig::with_read_first`]).
///
/// Either order decides every delivery the same way: the read only answers duplicates of
/// committed records early, and a new event is always decided by the claim's one arbitrated
/// insert (no check-then-insert). The orders differ in cost: claiming first costs a new event
/// the plain transaction plus the claim, and a duplicate a transaction that only reads; reading
/// first costs a duplicate one query without a transaction, and a new event that query more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadFirst {
    /// Always claim first: new events cost least, duplicates pay for a transaction.
    Never,
    /// Always read first: duplicates cost one query, new events pay for it.
    Always,
    /// Read first while most recent deliveries to this guard were duplicates of committed
    /// records, claim first otherwise (the default). Reading first is the cheaper order exactly
    /// when more than half of the deliveries are such duplicates (a retry storm after an
    /// outage); the guard follows the share over its last few dozen deliveries, shared by
    /// its clones.
    Adaptive,
}

impl From<bool> for ReadFirst {
    fn from(read_first: bool) -> Self {
        if read_first { Self::Always } else { Self::Never }
    }
}

/// The guard's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardConfig {
    lease: Duration,
    failed_retry_after: Duration,
    retention: Duration,
    busy_timeout: Duration,
    read_first: ReadFirst,
    processed_cache: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            failed_retry_after: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            busy_timeout: Duration::from_millis(20),
            read_first: ReadFirst::Adaptive,
            processed_cache: 0,
        }
    }
}

impl GuardConfig {
    /// Two-phase mode: how long a claim is exclusive before another worker may take it over
    /// (default 60 s). Set it above the handler's longest run.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when it is zero.
    pub fn with_lease(mut self, lease: Duration) -> Result<Self> {
        if lease.is_zero() {
            return Err(Error::InvalidConfig { reason: "the lease must be longer than zero" });
        }
        self.lease = lease;
        Ok(self)
    }

    /// Two-phase mode: how long after a failure the event stays answered
    /// [`Outcome::PriorAttemptFailed`] before the next delivery re-claims it (default 30 s).
    /// A failed event is always re-claimable after this delay; none is skipped forever.
    pub fn with_failed_retry_after(mut self, delay: Duration) -> Self {
        self.failed_retry_after = delay;
        self
    }

    /// How long processed keys are kept before [`WebhookGuard::purge`] removes them (default
    /// 7 days; providers retry for up to about 3 days).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// SQLite transactional mode: how long to wait for the write lock before answering
    /// [`Outcome::RetryInFlight`] (default 20 ms, inside the 50 ms goal for that answer).
    pub fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// PostgreSQL transactional mode: whether to read the record before claiming (default
    /// [`ReadFirst::Adaptive`]; `true` is [`ReadFirst::Always`], `false` [`ReadFirst::Never`]).
    ///
    /// Reading first, a duplicate of a processed event costs one indexed read instead of a
    /// transaction, and a new event pays one extra round trip. The read only answers
    /// committed duplicates early; the claim still decides. SQLite always reads first, so that
    /// duplicates never wait for its single write lock.
    pub fn with_read_first(mut self, read_first: impl Into<ReadFirst>) -> Self {
        self.read_first = read_first.into();
        self
    }

    /// Remember up to `entries` events this guard has seen processed, and answer their
    /// duplicates from memory (default 0: off).
    ///
    /// `processed` is a final state (only the retention purge removes it), so the answer is
    /// the one the store would give: [`Outcome::AlreadyProcessed`] for the same body,
    /// [`Outcome::BodyMismatch`] for another. The memory never claims and never calls an event
    /// new, so it cannot admit a duplicate; unknown keys go to the store as before. It helps
    /// when a provider's retries reach the same replica; clones of the guard share it. An
    /// entry is used until the retention horizon counted from when this guard saw the
    /// record, so an event may be answered `AlreadyProcessed` a little after the store purged
    /// it (never before). About 150 bytes per entry.
    pub fn with_processed_cache(mut self, entries: usize) -> Self {
        self.processed_cache = entries;
        self
    }

    /// How many processed events the guard remembers (0: off).
    pub fn processed_cache(&self) -> usize {
        self.processed_cache
    }

    /// When PostgreSQL transactional mode reads the record before claiming.
    pub fn read_first(&self) -> ReadFirst {
        self.read_first
    }

    /// The two-phase lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// The delay before a failed event is re-claimable.
    pub fn failed_retry_after(&self) -> Duration {
        self.failed_retry_after
    }

    /// The retention horizon.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The SQLite busy timeout.
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }
}

/// A two-phase claim request, as a [`ClaimStore`] receives it.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The event.
    pub key: &'a EventKey,
    /// SHA-256 of the delivery's raw body.
    pub body_hash: Sha256Digest,
    /// The guard's current time.
    pub now: DateTime<Utc>,
    /// When the new claim's lease ends.
    pub lease_until: DateTime<Utc>,
    /// A failed record last touched at or before this instant may be re-claimed.
    pub failed_reclaimable_before: DateTime<Utc>,
    /// The configured lease, for stores that time leases by their own clock.
    pub lease: Duration,
    /// The configured delay before a failure is re-claimable, for stores that time it by their
    /// own clock.
    pub failed_retry_after: Duration,
}

/// A two-phase claim held by this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    key: EventKey,
    token: String,
    attempt: u32,
}

impl Claim {
    /// A claim on `key` with a fresh random token.
    pub(crate) fn fresh(key: &EventKey, attempt: u32) -> Self {
        Self { key: key.clone(), token: new_token(), attempt }
    }

    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn with_token(key: &EventKey, token: String, attempt: u32) -> Self {
        Self { key: key.clone(), token, attempt }
    }

    /// The claimed event.
    pub fn key(&self) -> &EventKey {
        &self.key
    }

    /// The claim's unique token: completion and failure only count while it still holds.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Which attempt this is (1 for the first claim, more after takeovers and failures).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

pub(crate) fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The answer of a [`ClaimStore`] to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// This worker holds the claim: run the handler.
    Claimed(Claim),
    /// The event is known; here is the answer.
    Duplicate(Duplicate),
}

/// Storage for two-phase claims: one arbitrated write decides every claim.
///
/// Implemented by [`MemoryStore`], `PgStore` (feature `postgres`) and `SqliteStore` (feature
/// `sqlite`). Implementations never check then insert: [`ClaimStore::claim`] is a single insert
/// or conditional update against the unique key.
pub trait ClaimStore: Send + Sync + fmt::Debug {
    /// Claims the event: inserts a `processing` record, or takes over an expired lease or a
    /// re-claimable failure with the same body hash. Otherwise answers from the record.
    fn claim(&self, request: &ClaimRequest<'_>) -> impl Future<Output = Result<ClaimAnswer>> + Send;

    /// Marks a held claim processed.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when another worker took the claim over.
    fn complete(&self, claim: &Claim, now: DateTime<Utc>) -> impl Future<Output = Result<()>> + Send;

    /// Records that the handler failed under a held claim.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when another worker took the claim over.
    fn fail(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        reason: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes processed records last touched before `before`; never a `processing` or
    /// `failed` one. Returns how many were deleted.
    fn purge_processed(&self, before: DateTime<Utc>) -> impl Future<Output = Result<u64>> + Send;

    /// Like [`ClaimStore::purge_processed`], for one tenant's records only.
    fn purge_processed_of(
        &self,
        tenant: &TenantId,
        before: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// Answers a delivery from an existing record's state and body hash.
pub(crate) fn answer_from(state: &str, stored_hash: &[u8], body_hash: &Sha256Digest) -> Duplicate {
    if stored_hash != body_hash.as_bytes() {
        return Duplicate::BodyMismatch;
    }
    match state {
        "processed" => Duplicate::AlreadyProcessed,
        "failed" => Duplicate::PriorAttemptFailed,
        _ => Duplicate::RetryInFlight,
    }
}

/// Answers a *transactional* delivery from an existing record. Transactional mode only ever
/// commits `processed` records; a `processing` or `failed` one was written by two-phase mode,
/// whose lease takeover and failure re-claim transactional mode cannot do, so answering
/// "retry" or "failed" from it would skip the event for good: refuse it instead.
///
/// # Errors
///
/// [`Error::ModeMismatch`] for an unfinished two-phase record with the same body.
#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
pub(crate) fn transactional_answer(
    state: &str,
    stored_hash: &[u8],
    body_hash: &Sha256Digest,
) -> Result<Duplicate> {
    match answer_from(state, stored_hash, body_hash) {
        answer @ (Duplicate::AlreadyProcessed | Duplicate::BodyMismatch) => Ok(answer),
        _ => Err(Error::ModeMismatch),
    }
}

/// Failure reasons are stored for operators: control characters (NUL cannot be stored in
/// PostgreSQL text) become U+FFFD, and the text is cut to at most 500 bytes.
pub(crate) fn clean_reason(reason: &str) -> String {
    const MAX: usize = 500;
    let mut cleaned = String::with_capacity(reason.len().min(MAX));
    for character in reason.chars() {
        let character = if character.is_control() { '\u{FFFD}' } else { character };
        if cleaned.len() + character.len_utf8() > MAX {
            break;
        }
        cleaned.push(character);
    }
    cleaned
}

/// Far enough for any lease or horizon, and inside every backend's time range.
pub(crate) fn far_future() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

pub(crate) fn far_past() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(-62_135_596_800, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// `instant + duration`, saturating at year 9999: a huge lease means "never expires", never
/// "already expired".
pub(crate) fn add(instant: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|duration| instant.checked_add_signed(duration))
        .map_or_else(far_future, |later| later.min(far_future()))
}

/// `instant - duration`, saturating at year 1: a huge retention or retry delay means "nothing
/// is old enough", never "everything is".
pub(crate) fn sub(instant: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|duration| instant.checked_sub_signed(duration))
        .map_or_else(far_past, |earlier| earlier.max(far_past()))
}

/// The idempotent webhook guard over a store.
///
/// Two-phase mode ([`WebhookGuard::two_phase`]) works on every [`ClaimStore`]; transactional
/// mode is `transactional` on the PostgreSQL and SQLite stores. See the crate docs for when to
/// choose which.
#[derive(Debug, Clone)]
pub struct WebhookGuard<S> {
    store: S,
    clock: Arc<dyn Clock>,
    config: GuardConfig,
    cache: Arc<cache::ProcessedCache>,
    duplicate_share: Arc<DuplicateShare>,
}

/// The share of recent deliveries that were duplicates of committed records, for
/// [`ReadFirst::Adaptive`]: an exponential moving average with weight 1/16, in units of
/// 1/65,536. It only chooses the order of two correct paths, so updates that race (two
/// deliveries reading the same old value) may lose one observation without harm.
#[derive(Debug, Default)]
struct DuplicateShare(AtomicU32);

impl DuplicateShare {
    const ONE: u32 = 1 << 16;

    fn observe(&self, duplicate: bool) {
        let old = self.0.load(Ordering::Relaxed);
        let new = old - old / 16 + if duplicate { Self::ONE / 16 } else { 0 };
        self.0.store(new.min(Self::ONE), Ordering::Relaxed);
    }

    fn mostly_duplicates(&self) -> bool {
        self.0.load(Ordering::Relaxed) > Self::ONE / 2
    }
}

impl<S> WebhookGuard<S> {
    /// A guard over `store` with the default [`GuardConfig`].
    pub fn new(store: S, clock: impl Clock + 'static) -> Self {
        let config = GuardConfig::default();
        Self {
            store,
            clock: Arc::new(clock),
            config,
            cache: Arc::new(cache::ProcessedCache::new(config.processed_cache)),
            duplicate_share: Arc::default(),
        }
    }

    /// Replaces the configuration (and starts an empty processed-event memory and a fresh
    /// duplicate share for [`ReadFirst::Adaptive`]).
    pub fn with_config(mut self, config: GuardConfig) -> Self {
        self.config = config;
        self.cache = Arc::new(cache::ProcessedCache::new(config.processed_cache));
        self.duplicate_share = Arc::default();
        self
    }

    /// Whether PostgreSQL transactional mode reads the committed record first for the next
    /// delivery (see [`ReadFirst`]).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn reads_first(&self) -> bool {
        match self.config.read_first {
            ReadFirst::Never => false,
            ReadFirst::Always => true,
            ReadFirst::Adaptive => self.duplicate_share.mostly_duplicates(),
        }
    }

    /// Notes whether a delivery that reached the store was answered by a committed record
    /// (`true`) or claimed the event or met one in flight (`false`), for
    /// [`ReadFirst::Adaptive`].
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn observe_delivery(&self, committed_duplicate: bool) {
        if self.config.read_first == ReadFirst::Adaptive {
            self.duplicate_share.observe(committed_duplicate);
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The processed-event memory's answer for this delivery, if it knows the key.
    pub(crate) fn cached(&self, key: &EventKey, body_hash: &Sha256Digest) -> Option<Duplicate> {
        self.cache.answer(key, body_hash, self.now())
    }

    /// Remembers `key` when `answer` says it is processed with this body.
    pub(crate) fn remember(&self, key: &EventKey, body_hash: &Sha256Digest, answer: Duplicate) {
        if answer == Duplicate::AlreadyProcessed {
            let now = self.now();
            self.cache.insert(key, body_hash, add(now, self.config.retention));
        }
    }
}

impl<S: ClaimStore> WebhookGuard<S> {
    /// Runs `handler` at most once per event across deliveries, in two-phase mode.
    ///
    /// The claim commits first, with a lease; then the handler runs (it may call outside
    /// APIs); then the record is marked processed, or failed with the handler's message.
    /// A worker that dies mid-handler leaves a `processing` record that another delivery takes
    /// over once the lease has expired. A failed event answers
    /// [`Outcome::PriorAttemptFailed`] until [`GuardConfig::with_failed_retry_after`] has
    /// passed, then the next delivery re-claims it.
    ///
    /// # Errors
    ///
    /// [`RunError::Handler`] with the handler's error (recorded as a failure);
    /// [`RunError::Guard`] when the store fails or the lease was lost.
    pub async fn two_phase<T, E, F, Fut>(
        &self,
        key: &EventKey,
        body: &[u8],
        handler: F,
    ) -> Result<Outcome<T>, RunError<E>>
    where
        F: FnOnce(Claim) -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: fmt::Display,
    {
        let body_hash = Sha256Digest::of(body);
        if let Some(answer) = self.cached(key, &body_hash) {
            return Ok(answer.into());
        }
        let now = self.now();
        let request = ClaimRequest {
            key,
            body_hash,
            now,
            lease_until: add(now, self.config.lease),
            failed_reclaimable_before: sub(now, self.config.failed_retry_after),
            lease: self.config.lease,
            failed_retry_after: self.config.failed_retry_after,
        };
        let claim = match self.store.claim(&request).await? {
            ClaimAnswer::Claimed(claim) => claim,
            ClaimAnswer::Duplicate(duplicate) => {
                self.remember(key, &body_hash, duplicate);
                return Ok(duplicate.into());
            }
        };
        match handler(claim.clone()).await {
            Ok(value) => {
                self.store.complete(&claim, self.now()).await?;
                self.remember(key, &body_hash, Duplicate::AlreadyProcessed);
                Ok(Outcome::Processed(value))
            }
            Err(error) => {
                let reason = clean_reason(&error.to_string());
                self.store.fail(&claim, self.now(), &reason).await?;
                Err(RunError::Handler(error))
            }
        }
    }

    /// Deletes processed keys older than the retention horizon. Claims in flight are never
    /// touched: they are `processing` (two-phase) or not yet committed (transactional).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the store fails.
    pub async fn purge(&self) -> Result<u64> {
        let before = sub(self.now(), self.config.retention);
        self.store.purge_processed(before).await
    }

    /// Like [`WebhookGuard::purge`], for one tenant's records only: other tenants' records
    /// are never read or deleted. Use it when tenants keep keys for different horizons (a
    /// guard per horizon, `guard.clone().with_config(…)`), or to purge one tenant on its own
    /// schedule. On PostgreSQL and SQLite the key starts with the tenant, so only that
    /// tenant's records are scanned.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the store fails.
    pub async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64> {
        let before = sub(self.now(), self.config.retention);
        self.store.purge_processed_of(tenant, before).await
    }
}
