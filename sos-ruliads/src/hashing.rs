//! The hasher of the gate's in-memory maps: foldhash, keyed per map from the operating system's
//! random source.
//!
//! # Why not std's SipHash
//!
//! Every decision of the [`gate`](crate::gate) looks up and inserts several keys: the cause
//! digest in the notified causes and in the memory store's claims, the flap key (tenant, kind,
//! subject), the signal id among the trust gate's outstanding signals. With std's SipHash-1-3
//! these hashes were about 3,100 instructions a decision, plus about 1,600 amortised for
//! rehashing growing maps: more than the rest of the gate's machinery together. foldhash hashes
//! a 32-byte digest in a few dozen instructions.
//!
//! # Why this is still HashDoS-resistant enough here
//!
//! The keys partly come from outside: a host's entity fields make a signal's subject, and an
//! attacker who controls them can grind SHA-256 inputs until cause digests share any bits they
//! like. A hash table stays linear only if such an attacker cannot tell which keys land in the
//! same bucket. So:
//!
//! - **No unkeyed hash, no digest bytes used as the hash.** Both would let the attacker aim at
//!   buckets offline.
//! - **Every map has its own secret key, drawn from the operating system's random source.**
//!   [`SeededState`] mixes two 64-bit values into foldhash's seeds: one drawn once per process,
//!   one per map (per [`SeededState::default`] call). Each is the output of a fresh std
//!   [`std::hash::RandomState`] (SipHash keyed by 128 bits from the OS: `getrandom`
//!   on Linux), not foldhash's own default seed, which is derived from addresses and the clock
//!   (ASLR) and is weaker than we want. An attacker who does not know the key cannot compute
//!   which digests collide, and grinding offline against one process's key is impossible without
//!   it; two maps (two gates, two tenants' inner maps, two processes) never share a key.
//! - **No hash output or map order leaves the process.** Every map that is persisted is saved
//!   sorted by key (see the `*_serde` helpers), and nothing iterates a map into a signal, a
//!   suppression record or a log. What remains is a timing side channel: foldhash does not claim
//!   resistance to an attacker who measures many lookups precisely and adapts (its README, "HashDoS
//!   resistance"). Such an attacker needs fine timing of single decisions inside the host, which
//!   the host's own request handling, the database and the batch around each decision blur; we
//!   accept that residual risk for a 5–10× cheaper hash, and the test
//!   `colliding_low_bits_stay_linear` shows that digests chosen to collide under a
//!   digest-as-hash spread over the buckets.
//! - **The seeds never leave either**: [`SeededState`]'s `Debug` prints no seed.
//!
//! Should that trade-off ever change, swapping [`SeededState`] for
//! [`std::hash::RandomState`] is a one-line change: every map of the gate names this type.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::OnceLock;

use foldhash::SharedSeed;
use foldhash::fast::{FoldHasher, SeedableRandomState};

/// A [`BuildHasher`] for foldhash keyed from the operating system's random source: one secret
/// per process and one per instance (see the [module docs](self)).
#[derive(Clone, Copy)]
pub struct SeededState(SeedableRandomState);

/// Never prints the seeds: a secret in a log would let its reader aim at buckets.
impl std::fmt::Debug for SeededState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeededState { .. }")
    }
}

/// A hash map keyed with [`SeededState`]: a std [`HashMap`] (it dereferences to one) whose
/// `Debug` lists the entries sorted by key.
///
/// A hash map's iteration order is its bucket order, a function of the secret key: printed as it
/// is, a `Debug` of the gate's state in a host's log would hand its reader the relative hash
/// order of keys they chose (enough to search for keys that share buckets), and it would make
/// two gates' logs of the same state differ (named shapes `hash-flood`, `seed-order`). The
/// sorted `Debug` shows neither; nothing else iterates these maps into output (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct SeededMap<K, V>(HashMap<K, V, SeededState>);

impl<K, V> Default for SeededMap<K, V> {
    /// An empty map with a fresh key.
    fn default() -> Self {
        Self(HashMap::with_hasher(SeededState::default()))
    }
}

impl<K, V> std::ops::Deref for SeededMap<K, V> {
    type Target = HashMap<K, V, SeededState>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K, V> std::ops::DerefMut for SeededMap<K, V> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Equal when they hold the same entries (whatever their keys).
impl<K: Eq + Hash, V: PartialEq> PartialEq for SeededMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: Eq + Hash, V: Eq> Eq for SeededMap<K, V> {}

/// The entries sorted by key: neither the bucket order nor the seed shows.
impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for SeededMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<(&K, &V)> = self.0.iter().collect();
        entries.sort_unstable_by_key(|(key, _)| *key);
        f.debug_map().entries(entries).finish()
    }
}

impl<K: Eq + Hash, V> FromIterator<(K, V)> for SeededMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(entries: I) -> Self {
        let mut map = Self::default();
        map.0.extend(entries);
        map
    }
}

impl<K: Eq + Hash, V> Extend<(K, V)> for SeededMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, entries: I) {
        self.0.extend(entries);
    }
}

impl<'a, K, V> IntoIterator for &'a SeededMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::collections::hash_map::Iter<'a, K, V>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// 64 bits from the operating system's random source: std seeds each thread's `RandomState`
/// keys from it (and increments them per instance), and SipHash under an unknown 128-bit key is
/// a pseudorandom function, so its output on a fixed input is as good as the key.
fn os_random_u64() -> u64 {
    RandomState::new().hash_one(0x736f_732d_7275_6c69_u64)
}

/// The process's shared foldhash seed, drawn once.
fn process_seed() -> &'static SharedSeed {
    static SEED: OnceLock<SharedSeed> = OnceLock::new();
    SEED.get_or_init(|| SharedSeed::from_u64(os_random_u64()))
}

impl Default for SeededState {
    /// A new key: the process's secret and a fresh per-instance secret.
    fn default() -> Self {
        Self(SeedableRandomState::with_seed(os_random_u64(), process_seed()))
    }
}

impl BuildHasher for SeededState {
    type Hasher = FoldHasher;

    #[inline]
    fn build_hasher(&self) -> FoldHasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use foldhash::fast::FixedState;
    use sos_core::Sha256Digest;

    use super::{SeededMap, SeededState, process_seed};

    /// The hash of `key` in a fresh [`SeededState`].
    fn hash_in_fresh_state(key: &Sha256Digest) -> u64 {
        SeededState::default().hash_one(key)
    }

    #[test]
    fn hasher_is_seeded_per_instance() {
        let key = Sha256Digest::of(b"the same cause");
        let hashes: HashSet<u64> = (0..64).map(|_| hash_in_fresh_state(&key)).collect();
        // 64 draws of a 64-bit key: a repeat would be a 2^-52 event, not bad luck.
        assert_eq!(hashes.len(), 64, "every map has its own key");
        // One state hashes the same key the same way (a map stays consistent).
        let state = SeededState::default();
        assert_eq!(state.hash_one(key), state.hash_one(key));
        // And it is not foldhash's fixed, public key.
        assert_ne!(state.hash_one(key), FixedState::default().hash_one(key));
    }

    /// The child half of `hasher_is_seeded_per_process`: prints the process seed's effect on a
    /// fixed key when asked to, and checks nothing otherwise.
    #[test]
    fn print_process_seed_when_asked() {
        if std::env::var_os("SOS_RULIADS_PRINT_SEED").is_some() {
            let state = SeededState(foldhash::fast::SeedableRandomState::with_seed(0, process_seed()));
            println!("process-seed-hash={}", state.hash_one(Sha256Digest::of(b"fixed")));
        }
    }

    #[test]
    fn hasher_is_seeded_per_process() {
        // Two fresh processes of this test binary print the hash of one fixed key under their
        // process seed with a per-instance seed of 0: they differ, so the process seed is drawn
        // at run time, not built in.
        let run = || -> String {
            let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
                .args([
                    "--exact",
                    "hashing::tests::print_process_seed_when_asked",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("SOS_RULIADS_PRINT_SEED", "1")
                .output()
                .expect("the test binary runs");
            let stdout = String::from_utf8_lossy(&output.stdout);
            stdout
                .lines()
                .find_map(|line| line.split_once("process-seed-hash=").map(|(_, hash)| hash.to_owned()))
                .unwrap_or_else(|| panic!("the child printed its seed: {stdout}"))
        };
        let (first, second) = (run(), run());
        assert_ne!(first, second, "each process draws its own seed");
    }

    #[test]
    fn colliding_low_bits_stay_linear() {
        // Keys an attacker would pick against a table that used a digest's bytes as its hash:
        // 20,000 digests that agree in every byte but the last two, so that such a hash (the
        // first 8 bytes) puts them all in one bucket. Under the keyed hasher they spread out: the largest
        // group sharing the 12 low hash bits stays small, so no probe walks a long chain.
        let colliding: Vec<Sha256Digest> = (0_u16..20_000)
            .map(|index| {
                let mut bytes = [0_u8; 32];
                bytes[30..].copy_from_slice(&index.to_be_bytes());
                Sha256Digest::from_bytes(bytes)
            })
            .collect();
        let state = SeededState::default();
        let mut buckets = std::collections::HashMap::<u64, usize>::new();
        for key in &colliding {
            *buckets.entry(state.hash_one(key) & 0xfff).or_default() += 1;
        }
        let largest = buckets.values().copied().max().unwrap_or(0);
        // 20,000 keys in 4,096 buckets: about 5 a bucket; 40 would be far outside chance.
        assert!(largest < 40, "a bucket of {largest} keys sharing the 12 low hash bits");

        // And a map of them holds every one (each probe found its own key among the few that
        // share its bucket).
        let map: SeededMap<Sha256Digest, usize> =
            colliding.iter().enumerate().map(|(index, key)| (*key, index)).collect();
        assert_eq!(map.len(), colliding.len());
        assert!(colliding.iter().enumerate().all(|(index, key)| map.get(key) == Some(&index)));
        // The seeds never show in a log.
        assert_eq!(format!("{state:?}"), "SeededState { .. }");
    }

    #[test]
    fn seed_order_debug_lists_entries_sorted() {
        // Two maps, two keys, the same entries inserted in opposite orders: their bucket orders
        // differ, their `Debug` does not, and it is the sorted map's.
        let keys: Vec<Sha256Digest> =
            (0_u32..500).map(|index| Sha256Digest::of(&index.to_be_bytes())).collect();
        let forward: SeededMap<Sha256Digest, usize> =
            keys.iter().enumerate().map(|(i, key)| (*key, i)).collect();
        let backward: SeededMap<Sha256Digest, usize> =
            keys.iter().enumerate().rev().map(|(i, key)| (*key, i)).collect();
        let sorted: std::collections::BTreeMap<Sha256Digest, usize> =
            keys.iter().enumerate().map(|(i, key)| (*key, i)).collect();
        assert_eq!(format!("{forward:?}"), format!("{sorted:?}"));
        assert_eq!(format!("{backward:?}"), format!("{sorted:?}"));
        assert_eq!(forward, backward);
        let orders_differ = forward.keys().zip(backward.keys()).any(|(left, right)| left != right);
        assert!(orders_differ, "two keys gave 500 entries one bucket order: the test shows nothing");
    }
}
