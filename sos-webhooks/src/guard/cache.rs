//! An in-process memory of events known to be processed: the race-free fast path for their
//! duplicates.
//!
//! `processed` is a final state: no claim, takeover or failure ever changes a processed record,
//! and only the retention purge removes it. So once this process has seen a record committed
//! as processed (its own commit, or a store's answer), a later delivery of the same key is
//! answered from memory with exactly what the store would answer: `AlreadyProcessed` for the
//! same body, `BodyMismatch` for another. The memory never claims and never says an event is
//! new, so it cannot admit a duplicate (named shape `toctou-dedupe`); a key it does not hold
//! goes to the store as before.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sos_core::Sha256Digest;

use super::{Duplicate, EventKey};

/// At most `capacity` keys in two generations: new keys go to `young`; when it is full it
/// becomes `old` and the previous `old` is dropped, so memory stays bounded without a list.
#[derive(Debug, Default)]
pub(crate) struct ProcessedCache {
    capacity: usize,
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    young: HashMap<EventKey, Entry>,
    old: HashMap<EventKey, Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    body_hash: [u8; 32],
    /// The entry is not used at or after this instant (the record's retention horizon).
    expires_at: DateTime<Utc>,
}

impl ProcessedCache {
    /// A cache of up to `capacity` keys; 0 turns it off.
    pub(crate) fn new(capacity: usize) -> Self {
        Self { capacity, generations: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Each update is a single map operation: a panicking holder leaves no torn entry.
        self.generations.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer for a delivery of `key` with `body_hash`, when `key` is known processed.
    pub(crate) fn answer(
        &self,
        key: &EventKey,
        body_hash: &Sha256Digest,
        now: DateTime<Utc>,
    ) -> Option<Duplicate> {
        if self.capacity == 0 {
            return None;
        }
        let generations = self.lock();
        let entry = generations.young.get(key).or_else(|| generations.old.get(key))?;
        if now >= entry.expires_at {
            return None;
        }
        Some(if entry.body_hash == body_hash.to_bytes() {
            Duplicate::AlreadyProcessed
        } else {
            Duplicate::BodyMismatch
        })
    }

    /// Records that `key` is processed with `body_hash`, until `expires_at`.
    pub(crate) fn insert(&self, key: &EventKey, body_hash: &Sha256Digest, expires_at: DateTime<Utc>) {
        if self.capacity == 0 {
            return;
        }
        let mut generations = self.lock();
        if generations.young.len() >= self.capacity.div_ceil(2) {
            generations.old = std::mem::take(&mut generations.young);
        }
        generations.young.insert(key.clone(), Entry { body_hash: body_hash.to_bytes(), expires_at });
    }

    /// How many keys are held (both generations; a key may be counted twice).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let generations = self.lock();
        generations.young.len() + generations.old.len()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn key(event: &str) -> EventKey {
        EventKey::new("acme".parse().unwrap(), "stripe", event).unwrap()
    }

    #[test]
    fn answers_only_known_processed_keys_and_stays_bounded() {
        let now = Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap();
        let later = now + chrono::Duration::days(7);
        let cache = ProcessedCache::new(4);
        let body = Sha256Digest::of(b"{}");
        assert_eq!(cache.answer(&key("a"), &body, now), None, "an unknown key goes to the store");
        cache.insert(&key("a"), &body, later);
        assert_eq!(cache.answer(&key("a"), &body, now), Some(Duplicate::AlreadyProcessed));
        assert_eq!(cache.answer(&key("a"), &Sha256Digest::of(b"{1}"), now), Some(Duplicate::BodyMismatch));
        assert_eq!(cache.answer(&key("a"), &body, later), None, "an expired entry goes to the store");
        for event in 0..100 {
            cache.insert(&key(&format!("e{event}")), &body, later);
            assert!(cache.len() <= 4);
        }
        assert_eq!(cache.answer(&key("e99"), &body, now), Some(Duplicate::AlreadyProcessed));
        let off = ProcessedCache::new(0);
        off.insert(&key("a"), &body, later);
        assert_eq!(off.answer(&key("a"), &body, now), None, "capacity 0 turns the cache off");
    }
}
