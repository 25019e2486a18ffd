//! The heads a database store appended last, per tenant: a guess that saves the head read.
//!
//! A database append normally reads (and locks) the tenant's head row, builds the entry, then
//! inserts it and moves the head: one round trip more than the write itself. With a cached head
//! the store builds the entry first and writes it with one statement that moves the head only
//! if it still is the cached one (`WHERE seq = cached AND hash = cached`), and inserts the entry
//! only if the head moved. The database decides under its row lock (PostgreSQL re-checks the
//! condition on the newest row version; SQLite holds its write lock), so a stale guess, left by
//! another process or a rolled-back transaction, writes nothing: the store then falls back to
//! the locking read. The cache is never trusted, only checked.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use sos_core::Sha256Digest;

/// At most this many tenants are remembered; past it the cache starts over (a miss costs one
/// round trip, a cache of every tenant ever seen would cost memory without bound).
const MAX_TENANTS: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct HeadCache {
    heads: Mutex<HashMap<String, (u64, Sha256Digest)>>,
}

impl HeadCache {
    /// The last head appended to `tenant` through this store, if any.
    pub(crate) fn get(&self, tenant: &str) -> Option<(u64, Sha256Digest)> {
        // The map holds plain values replaced whole, so it is valid even if a holder panicked.
        self.heads.lock().unwrap_or_else(PoisonError::into_inner).get(tenant).copied()
    }

    /// Remembers `head` as `tenant`'s newest head.
    pub(crate) fn set(&self, tenant: &str, head: (u64, Sha256Digest)) {
        let mut heads = self.heads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = heads.get_mut(tenant) {
            *slot = head;
            return;
        }
        if heads.len() >= MAX_TENANTS {
            heads.clear();
        }
        heads.insert(tenant.to_owned(), head);
    }

    /// Forgets `tenant`'s head (after an append that did not commit).
    pub(crate) fn forget(&self, tenant: &str) {
        self.heads.lock().unwrap_or_else(PoisonError::into_inner).remove(tenant);
    }
}
