//! Adversarial tests against `sos-identity`'s public API: forged input, races, replays, zero-row writes, NULLs in unique keys.
//!
//! Each test asserts the safe behaviour; the attack it carries is in its name and doc comment.
//! Database-level attacks use raw SQL on a real PostgreSQL and a real SQLite file.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sos_core::{ManualClock, Sha256Digest, SignalId, TenantId};
use sos_identity::{
    AgentName, AgentRole, AppliedRule, Error, IdentityRegistry, IdentityVector, LoadPolicy, MAX_FIELD_LEN,
    MemoryRegistry, Portrait, PostgresRegistry, Registration, RegistryEntry, ResonanceRouter, RouterConfig,
    ScoreMode, SignalVector, SqliteRegistry, postgres_migrator, sqlite_migrator, verify_agent, verify_chain,
};
use sos_testkit::{PgTestDatabase, SqliteTestDatabase};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(
        chrono::DateTime::from_timestamp(1_800_000_000, 123_456_000).expect("in range"),
    ))
}

fn tenant(text: &str) -> TenantId {
    text.parse().expect("valid tenant")
}

fn name(text: &str) -> AgentName {
    AgentName::new(text).expect("valid name")
}

fn role(text: &str) -> AgentRole {
    AgentRole::new(text).expect("valid role")
}

/// The spec's encoding, written from `docs/identity.md` independently of the crate:
/// `SHA-256(u32be(len tag) ‖ tag ‖ u32be(len f1) ‖ f1 ‖ …)`.
fn reference_hash(tag: &str, fields: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((tag.len() as u32).to_be_bytes());
    hasher.update(tag.as_bytes());
    for field in fields {
        hasher.update((field.len() as u32).to_be_bytes());
        hasher.update(field);
    }
    hasher.finalize().into()
}

fn reference_vector(name: &str, role: &str) -> [u8; 32] {
    reference_hash("sos-identity/v1", &[name.as_bytes(), role.as_bytes()])
}

fn signal_id(index: u64) -> SignalId {
    format!("00000000-0000-4000-8000-{index:012x}").parse().expect("valid uuid")
}

/// The spec's tie key: the first 8 bytes of `DomainHasher("sos-identity/tie/v1").field(id).str(agent)`.
fn reference_tie_key(id: &SignalId, agent: &str) -> u64 {
    let digest = reference_hash("sos-identity/tie/v1", &[id.as_uuid().as_bytes(), agent.as_bytes()]);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn is_invalid(result: sos_identity::Result<impl std::fmt::Debug>) -> bool {
    matches!(result, Err(Error::InvalidIdentity { .. }))
}

// ---------------------------------------------------------------------------------------------
// Identity collisions by encoding
// ---------------------------------------------------------------------------------------------

/// Named shape `injection` (by concatenation): every split of one byte string into (name, role)
/// gives a different vector, and the crate's vector is exactly the spec's length-prefixed encoding.
#[test]
fn injection_name_role_splits_never_collide() {
    let joined = "alice:researcher";
    let mut seen = HashSet::new();
    for split in 1..joined.len() {
        let (left, right) = joined.split_at(split);
        let vector = IdentityVector::derive(left, right).expect("valid");
        assert_eq!(*vector.as_bytes(), reference_vector(left, right), "spec encoding for {left:?}/{right:?}");
        assert!(seen.insert(vector), "split {left:?}/{right:?} collides with another split");
    }
    // A name that spells out a length prefix cannot forge a split either: the prefix would need
    // NUL bytes, which are control characters and refused.
    assert!(is_invalid(IdentityVector::derive("a\u{0}\u{0}\u{0}\u{1}b", "c")));
    assert_ne!(
        IdentityVector::derive("ab", "c").expect("valid"),
        IdentityVector::derive("a", "bc").expect("valid")
    );
    // Name and role are not interchangeable.
    assert_ne!(
        IdentityVector::derive("alice", "researcher").expect("valid"),
        IdentityVector::derive("researcher", "alice").expect("valid")
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Named shape `injection`: for arbitrary valid text, the crate agrees with the spec's encoding
    /// and two different (name, role) pairs with the same concatenation never share a vector.
    #[test]
    fn injection_encoding_matches_spec_for_arbitrary_text(
        name in "[\\PC&&[^\\p{Cf}]]{1,40}",
        role in "[\\PC&&[^\\p{Cf}]]{1,40}",
        cut in 0usize..80,
    ) {
        let nfc = |text: &str| accepted(text);
        proptest::prop_assume!(nfc(&name) && nfc(&role));
        let vector = IdentityVector::derive(&name, &role).expect("accepted text derives");
        proptest::prop_assert_eq!(*vector.as_bytes(), reference_vector(&name, &role));
        let joined = format!("{name}{role}");
        let boundaries: Vec<usize> = joined.char_indices().map(|(index, _)| index).skip(1).collect();
        if !boundaries.is_empty() {
            let at = boundaries[cut % boundaries.len()];
            let (left, right) = joined.split_at(at);
            if left != name && nfc(left) && nfc(right) {
                let other = IdentityVector::derive(left, right).expect("valid split");
                proptest::prop_assert_ne!(vector, other);
            }
        }
    }
}

proptest::proptest! {
    /// Untrusted input never panics the parsers, and whatever they accept derives the spec's vector.
    #[test]
    fn injection_arbitrary_input_never_panics(text in proptest::prelude::any::<String>(), hex in "[0-9a-fA-Fé ]{0,70}") {
        if let (Ok(name), Ok(role)) = (AgentName::new(text.as_str()), AgentRole::new(text.as_str())) {
            proptest::prop_assert_eq!(*IdentityVector::of(&name, &role).as_bytes(), reference_vector(&text, &text));
        }
        let _ = IdentityVector::from_hex(&hex);
        let _ = serde_json::from_str::<AgentName>(&serde_json::to_string(&text).expect("json"));
    }
}

/// Whether the crate accepts `text` (the strategy avoids controls, so this is mostly NFC).
fn accepted(text: &str) -> bool {
    AgentName::new(text).is_ok()
}

/// Empty names and roles are refused, never hashed as a zero-length field.
#[test]
fn empty_name_or_role_is_refused() {
    assert!(is_invalid(AgentName::new("")));
    assert!(is_invalid(AgentRole::new("")));
    assert!(is_invalid(IdentityVector::derive("", "researcher")));
    assert!(is_invalid(IdentityVector::derive("alice", "")));
    assert!(is_invalid(IdentityVector::derive("", "")));
    // Deserialisation goes through the same validation.
    assert!(serde_json::from_str::<AgentName>("\"\"").is_err());
    assert!(serde_json::from_str::<AgentName>("\"e\\u0301\"").is_err());
}

/// Canonically equivalent spellings can never be two agents: only the NFC one is accepted.
#[test]
fn nfd_and_singleton_forms_are_refused_not_merged() {
    let pairs = [
        ("é", "e\u{301}"),                  // precomposed vs decomposed
        ("한", "\u{1112}\u{1161}\u{11AB}"), // Hangul syllable vs conjoining jamo
        ("Å", "\u{212B}"),                  // Latin Å vs ANGSTROM SIGN (singleton decomposition)
        ("Ω", "\u{2126}"),                  // Greek Omega vs OHM SIGN
        ("ệ", "e\u{323}\u{302}"),           // two marks, canonical order
        ("ệ", "e\u{302}\u{323}"),           // two marks, non-canonical order
    ];
    for (nfc, other) in pairs {
        assert!(AgentName::new(nfc).is_ok(), "{nfc:?} is NFC");
        assert!(is_invalid(AgentName::new(other)), "{other:?} is not NFC and must be refused");
        assert!(is_invalid(AgentRole::new(other)), "{other:?} is not NFC and must be refused");
        assert!(is_invalid(IdentityVector::derive(&format!("agent-{other}"), "r")));
    }
}

/// Trailing spaces and case are significant: no silent merging, and every variant registers as
/// its own agent without a role conflict.
#[tokio::test]
async fn trailing_space_and_case_are_distinct_agents() {
    let variants = ["alice", "alice ", " alice", "Alice", "ALICE", "alice\u{a0}", "alice  "];
    let vectors: HashSet<IdentityVector> =
        variants.iter().map(|text| IdentityVector::derive(text, "researcher").expect("valid")).collect();
    assert_eq!(vectors.len(), variants.len());
    distinct_variants(&MemoryRegistry::new(clock()), &variants).await;
    let pg = PgTestDatabase::new(&[&postgres_migrator()]).await;
    distinct_variants(&PostgresRegistry::new(pg.pool().clone(), clock()), &variants).await;
    let sqlite = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    distinct_variants(&SqliteRegistry::new(sqlite.pool().clone(), clock()), &variants).await;
}

async fn distinct_variants<R: IdentityRegistry>(registry: &R, variants: &[&str]) {
    let acme = tenant("acme");
    for (index, text) in variants.iter().enumerate() {
        let registration = registry.register(&acme, &name(text), &role(&format!("role-{index}"))).await;
        assert!(matches!(registration, Ok(Registration::Created(_))), "{text:?}: {registration:?}");
        let entry = registry.lookup(&acme, &name(text)).await.expect("lookup").expect("registered");
        assert_eq!(entry.name.as_str(), *text, "stored exactly as given");
        assert_eq!(
            entry.role.as_str(),
            format!("role-{index}"),
            "{text:?} did not merge with another variant"
        );
    }
    let chain = verify_chain(&acme, &registry.entries(&acme).await.expect("entries")).expect("valid");
    assert_eq!(chain.len, variants.len() as u64);
}

/// Every Unicode control character (category Cc) is refused anywhere in a name or role.
#[test]
fn control_characters_are_refused_everywhere() {
    let controls = (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32);
    for control in controls {
        for text in [format!("{control}alice"), format!("al{control}ice"), format!("alice{control}")] {
            assert!(is_invalid(AgentName::new(text.as_str())), "name {text:?}");
            assert!(is_invalid(AgentRole::new(text.as_str())), "role {text:?}");
        }
    }
}

/// Named shape `invisible-identity`: zero-width and bidirectional formatting characters make two
/// names that render identically ("alice" and "al\u{200B}ice"), or a name that renders as another
/// ("\u{202E}ecila" shows as "alice"). The spec promises that "two byte strings that look the same
/// can never be two agents" and forbids control characters; these invisible format controls must
/// be refused like C0/C1 controls.
#[test]
fn invisible_identity_zero_width_and_bidi_controls_are_refused() {
    let invisible = [
        '\u{00AD}', // SOFT HYPHEN
        '\u{034F}', // COMBINING GRAPHEME JOINER
        '\u{061C}', // ARABIC LETTER MARK
        '\u{180E}', // MONGOLIAN VOWEL SEPARATOR
        '\u{200B}', // ZERO WIDTH SPACE
        '\u{200C}', // ZERO WIDTH NON-JOINER
        '\u{200D}', // ZERO WIDTH JOINER
        '\u{200E}', // LEFT-TO-RIGHT MARK
        '\u{200F}', // RIGHT-TO-LEFT MARK
        '\u{202A}',
        '\u{202B}',
        '\u{202C}',
        '\u{202D}',
        '\u{202E}', // embeddings and overrides
        '\u{2060}', // WORD JOINER
        '\u{2061}',
        '\u{2062}',
        '\u{2063}',
        '\u{2064}', // invisible operators
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}', // isolates
        '\u{FEFF}', // ZERO WIDTH NO-BREAK SPACE (BOM)
        '\u{E0001}',
        '\u{E0041}', // tag characters
    ];
    for character in invisible {
        for text in [format!("al{character}ice"), format!("alice{character}"), format!("{character}alice")] {
            assert!(
                is_invalid(AgentName::new(text.as_str())),
                "name {text:?} (U+{:04X}) renders like \"alice\" and must be refused",
                u32::from(character)
            );
            assert!(
                is_invalid(AgentRole::new(text.as_str())),
                "role {text:?} (U+{:04X})",
                u32::from(character)
            );
        }
    }
    // The bidi spoof itself: shows as "alice" in a right-to-left-override-aware renderer.
    assert!(is_invalid(AgentName::new("\u{202E}ecila")));
    // Line and paragraph separators break a name over lines in logs and UIs.
    assert!(is_invalid(AgentName::new("alice\u{2028}admin")));
    assert!(is_invalid(AgentName::new("alice\u{2029}admin")));
}

/// The length bound is in bytes, inclusive at 256, whatever the character widths; longer input
/// (up to a megabyte) is refused without panicking and the error does not echo it whole.
#[test]
fn length_bound_is_exact_in_bytes_and_long_input_is_refused_cheaply() {
    assert_eq!(MAX_FIELD_LEN, 256);
    let at_bound = [
        "a".repeat(256),
        "é".repeat(128),                // 2-byte characters
        format!("{}a", "€".repeat(85)), // 3-byte characters: 255 + 1
        "🙂".repeat(64),                // 4-byte characters
        format!("{}{}", "a".repeat(252), "🙂"),
    ];
    for text in &at_bound {
        assert_eq!(text.len(), 256);
        let vector = IdentityVector::derive(text, text).expect("256 bytes is within the bound");
        assert_eq!(*vector.as_bytes(), reference_vector(text, text));
    }
    let past_bound = [
        "a".repeat(257),
        format!("{}{}", "a".repeat(253), "🙂"), // a 4-byte character straddling the bound
        format!("{}{}", "a".repeat(255), "é"),
        "x".repeat(1 << 20),
    ];
    for text in &past_bound {
        assert!(text.len() > 256);
        for result in [AgentName::new(text.as_str()).map(|_| ()), AgentRole::new(text.as_str()).map(|_| ())] {
            match result {
                Err(Error::InvalidIdentity { input, .. }) => {
                    assert!(input.chars().count() <= 65, "error echoes {} characters", input.chars().count())
                }
                other => panic!("{} bytes accepted: {other:?}", text.len()),
            }
        }
    }
}

/// Odd but valid Unicode (noncharacters, private use, the last code point, astral planes,
/// combining-heavy NFC text) derives the spec's vector and round-trips through every store.
#[tokio::test]
async fn odd_unicode_round_trips_through_every_store() {
    let odd = [
        "\u{FFFD}",
        "\u{FFFE}x",
        "x\u{FFFF}",
        "\u{10FFFF}",
        "\u{E000}\u{F8FF}",
        "𝔞𝔩𝔦𝔠𝔢",
        "\u{e1}\u{301}\u{301}",
        "ｆｕｌｌ",
        "\u{1F469}",
        "'; DROP TABLE sos_identity_entries; --",
        "%s{0}{{}}$1",
    ];
    let odd: Vec<&str> = odd.iter().copied().filter(|text| AgentName::new(*text).is_ok()).collect();
    assert!(odd.len() >= 10, "almost all of these are valid NFC: {odd:?}");
    for text in &odd {
        assert_eq!(
            *IdentityVector::derive(text, "r").expect("valid").as_bytes(),
            reference_vector(text, "r")
        );
    }
    let pg = PgTestDatabase::new(&[&postgres_migrator()]).await;
    let sqlite = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    round_trip(&MemoryRegistry::new(clock()), &odd).await;
    round_trip(&PostgresRegistry::new(pg.pool().clone(), clock()), &odd).await;
    round_trip(&SqliteRegistry::new(sqlite.pool().clone(), clock()), &odd).await;
}

async fn round_trip<R: IdentityRegistry>(registry: &R, texts: &[&str]) {
    let acme = tenant("acme");
    for text in texts {
        let created = registry.register(&acme, &name(text), &role(text)).await.expect("register");
        assert!(created.is_created());
        let found = registry.lookup(&acme, &name(text)).await.expect("lookup").expect("found");
        assert_eq!(found, *created.entry(), "{text:?} round-trips byte for byte");
        assert!(
            verify_agent(registry, &acme, &name(text), &IdentityVector::derive(text, text).expect("valid"))
                .await
                .expect("verified")
        );
    }
    verify_chain(&acme, &registry.entries(&acme).await.expect("entries")).expect("valid chain");
}

// ---------------------------------------------------------------------------------------------
// Registry immutability and races
// ---------------------------------------------------------------------------------------------

/// Identity is immutable: another role is a typed refusal that leaves the chain untouched, the
/// same role is an idempotent replay of the original entry (named shape `replay-same`).
async fn immutability_suite<R: IdentityRegistry>(registry: &R) {
    let acme = tenant("acme");
    let first = registry.register(&acme, &name("alice"), &role("researcher")).await.expect("register");
    assert!(first.is_created());
    for other in ["admin", "researcher ", "Researcher", "researcher\u{a0}"] {
        match registry.register(&acme, &name("alice"), &role(other)).await {
            Err(Error::RoleConflict { registered_role, requested_role, .. }) => {
                assert_eq!(registered_role, "researcher");
                assert_eq!(requested_role, other);
            }
            outcome => panic!("re-registering with role {other:?} must be refused, got {outcome:?}"),
        }
    }
    for _ in 0..3 {
        match registry.register(&acme, &name("alice"), &role("researcher")).await.expect("replay") {
            Registration::Existing(entry) => assert_eq!(entry, *first.entry()),
            created => panic!("a replay appended a second entry: {created:?}"),
        }
    }
    let entries = registry.entries(&acme).await.expect("entries");
    assert_eq!(entries.len(), 1, "refusals and replays append nothing");
    verify_chain(&acme, &entries).expect("valid");
}

#[tokio::test]
async fn replay_same_and_role_conflict_on_every_store() {
    immutability_suite(&MemoryRegistry::new(clock())).await;
    let sqlite = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    immutability_suite(&SqliteRegistry::new(sqlite.pool().clone(), clock())).await;
    let pg = PgTestDatabase::new(&[&postgres_migrator()]).await;
    immutability_suite(&PostgresRegistry::new(pg.pool().clone(), clock())).await;
}

/// Named shape `toctou-dedupe`: many tasks register one name at once, each with its own role.
/// Exactly one wins; every other gets `RoleConflict` naming the winner's role; no storage error,
/// no panic, one entry.
async fn one_name_many_tasks<R: IdentityRegistry + 'static>(registry: Arc<R>, tasks: usize) {
    let acme = tenant("acme");
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let registry = registry.clone();
            let barrier = barrier.clone();
            let acme = acme.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let own = format!("role-{task}");
                (own.clone(), registry.register(&acme, &name("contested"), &role(&own)).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for handle in handles {
        let (own, outcome) = handle.await.expect("no task panicked");
        match outcome {
            Ok(Registration::Created(entry)) => winners.push(entry),
            Err(Error::RoleConflict { registered_role, requested_role, .. }) => {
                assert_eq!(requested_role, own);
                losers.push(registered_role);
            }
            other => panic!("task with {own} got {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner");
    assert_eq!(losers.len(), tasks - 1);
    assert!(losers.iter().all(|registered| *registered == winners[0].role.as_str()));
    let entries = registry.entries(&acme).await.expect("entries");
    assert_eq!(entries, winners);
    verify_chain(&acme, &entries).expect("valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_many_tasks_one_name_memory() {
    one_name_many_tasks(Arc::new(MemoryRegistry::new(clock())), 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_many_tasks_one_name_sqlite() {
    let sqlite = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    one_name_many_tasks(Arc::new(SqliteRegistry::new(sqlite.pool().clone(), clock())), 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_many_tasks_one_name_postgres() {
    let pg = PgTestDatabase::new(&[&postgres_migrator()]).await;
    one_name_many_tasks(Arc::new(PostgresRegistry::new(pg.pool().clone(), clock())), 24).await;
}

/// Named shape `replay-same` under concurrency: many tasks register the same (name, role) at
/// once. One creates the entry; every other gets `Existing` with that very entry; nothing else is
/// appended.
async fn one_identity_many_replays<R: IdentityRegistry + 'static>(registry: Arc<R>, tasks: usize) {
    let acme = tenant("acme");
    let barrier = Arc::new(tokio::sync::Barrier::new(tasks));
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (registry, barrier, acme) = (registry.clone(), barrier.clone(), acme.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                registry.register(&acme, &name("replayed"), &role("worker")).await
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for handle in handles {
        match handle.await.expect("no task panicked") {
            Ok(Registration::Created(entry)) => created.push(entry),
            Ok(Registration::Existing(entry)) => existing.push(entry),
            other => panic!("a replay of the same identity got {other:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one creation");
    assert!(existing.iter().all(|entry| *entry == created[0]), "replays return the created entry");
    assert_eq!(registry.entries(&acme).await.expect("entries"), created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_same_concurrent_registrations_of_one_identity() {
    one_identity_many_replays(Arc::new(MemoryRegistry::new(clock())), 32).await;
    let sqlite = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    one_identity_many_replays(Arc::new(SqliteRegistry::new(sqlite.pool().clone(), clock())), 16).await;
    let pg = PgTestDatabase::new(&[&postgres_migrator()]).await;
    one_identity_many_replays(Arc::new(PostgresRegistry::new(pg.pool().clone(), clock())), 16).await;
}

/// Named shapes `toctou-dedupe` and `chain-seq-stale-read` under a stricter default isolation:
/// a host whose database defaults to REPEATABLE READ or SERIALIZABLE (a common hardening) must
/// still see one winner and typed `RoleConflict`s, not serialization failures surfacing as
/// storage errors, and concurrent appends of different names must all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_under_strict_default_isolation_postgres() {
    for level in ["repeatable read", "serializable"] {
        let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
        sqlx::query(&format!(
            "ALTER DATABASE {} SET default_transaction_isolation TO '{level}'",
            database.name()
        ))
        .execute(database.pool())
        .await
        .expect("alter database");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(database.url())
            .await
            .expect("pool");
        let shown: String =
            sqlx::query_scalar("SHOW transaction_isolation").fetch_one(&pool).await.expect("isolation");
        assert_eq!(shown, level);
        let registry = Arc::new(PostgresRegistry::new(pool.clone(), clock()));
        one_name_many_tasks(registry.clone(), 16).await;
        // Different names at once: every one is appended, the chain stays one line.
        let acme = tenant("acme");
        let handles: Vec<_> = (0..16)
            .map(|index| {
                let registry = registry.clone();
                let acme = acme.clone();
                tokio::spawn(async move {
                    registry.register(&acme, &name(&format!("distinct-{index}")), &role("worker")).await
                })
            })
            .collect();
        for handle in handles {
            let outcome = handle.await.expect("no panic");
            assert!(matches!(outcome, Ok(Registration::Created(_))), "{level}: {outcome:?}");
        }
        verify_chain(&acme, &registry.entries(&acme).await.expect("entries")).expect("one chain");
        pool.close().await;
    }
}

/// Named shapes `toctou-dedupe` and `chain-seq-stale-read` across OS processes: two processes, each
/// with several tasks, register the same names in one tenant (every task with its own role) on
/// one PostgreSQL and on one SQLite file. Per name exactly one winner, everyone else a typed
/// `RoleConflict`, never a storage error; the chain is one unforked line.
mod toctou_dedupe_processes {
    use std::process::Command;

    use super::*;

    const BACKEND_VAR: &str = "SOS_ADV_IDENTITY_BACKEND";
    const URL_VAR: &str = "SOS_ADV_IDENTITY_URL";
    const PROCESS_VAR: &str = "SOS_ADV_IDENTITY_PROCESS";
    const START_VAR: &str = "SOS_ADV_IDENTITY_START_MS";
    const NAMES: usize = 8;
    const TASKS: usize = 4;
    const CHILD: &str = "adversarial_identity::toctou_dedupe_processes::toctou_dedupe_process_child";

    fn now_ms() -> u128 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis()
    }

    async fn race_with<R: IdentityRegistry + 'static>(registry: Arc<R>, process: &str) -> Vec<String> {
        let handles: Vec<_> = (0..TASKS)
            .map(|task| {
                let registry = registry.clone();
                let own = format!("{process}-task-{task}");
                tokio::spawn(async move {
                    let acme = tenant("acme");
                    let mut lines = Vec::new();
                    for index in 0..NAMES {
                        let outcome = match registry
                            .register(&acme, &name(&format!("racer-{index}")), &role(&own))
                            .await
                        {
                            Ok(Registration::Created(_)) => "won".to_owned(),
                            Err(Error::RoleConflict { .. }) => "refused".to_owned(),
                            Ok(other) => format!("unexpected-{other:?}").replace(' ', "_"),
                            Err(other) => format!("error-{other}").replace(' ', "_"),
                        };
                        lines.push(format!("OUTCOME racer-{index} {outcome}"));
                    }
                    lines
                })
            })
            .collect();
        let mut lines = Vec::new();
        for handle in handles {
            lines.extend(handle.await.expect("task did not panic"));
        }
        lines
    }

    async fn race(backend: &str, url: &str, process: &str) -> Vec<String> {
        match backend {
            "postgres" => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(TASKS as u32)
                    .connect(url)
                    .await
                    .expect("connect");
                race_with(Arc::new(PostgresRegistry::new(pool, Arc::new(sos_core::SystemClock))), process)
                    .await
            }
            _ => {
                let pool = sos_testkit::sqlite_pool(std::path::Path::new(url), TASKS as u32).await;
                race_with(Arc::new(SqliteRegistry::new(pool, Arc::new(sos_core::SystemClock))), process).await
            }
        }
    }

    /// The child half; run on its own it registers every name once on a fresh SQLite database
    /// (its tasks still race each other) and checks one winner per name.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn toctou_dedupe_process_child() {
        if let Ok(backend) = std::env::var(BACKEND_VAR) {
            let url = std::env::var(URL_VAR).expect("parent passes the database");
            let process = std::env::var(PROCESS_VAR).expect("parent passes the process name");
            let start: u128 = std::env::var(START_VAR).expect("start").parse().expect("ms");
            while now_ms() < start {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            for line in race(&backend, &url, &process).await {
                println!("{line}");
            }
        } else {
            let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
            let lines = race("sqlite", &database.path().display().to_string(), "solo").await;
            let won = lines.iter().filter(|line| line.ends_with(" won")).count();
            let refused = lines.iter().filter(|line| line.ends_with(" refused")).count();
            assert_eq!((won, refused), (NAMES, NAMES * (TASKS - 1)), "{lines:?}");
        }
    }

    fn run_children(backend: &str, url: &str) {
        let executable = std::env::current_exe().expect("test binary path");
        let start = now_ms() + 2000;
        let children: Vec<_> = ["p1", "p2"]
            .iter()
            .map(|process| {
                Command::new(&executable)
                    .args(["--exact", CHILD, "--nocapture"])
                    .env(BACKEND_VAR, backend)
                    .env(URL_VAR, url)
                    .env(PROCESS_VAR, process)
                    .env(START_VAR, start.to_string())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn child")
            })
            .collect();
        let outputs: Vec<_> =
            children.into_iter().map(|child| child.wait_with_output().expect("child output")).collect();
        let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for output in &outputs {
            assert!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                if let Some(rest) = line.strip_prefix("OUTCOME ") {
                    let (racer, outcome) = rest.split_once(' ').expect("racer and outcome");
                    outcomes.entry(racer.to_owned()).or_default().push(outcome.to_owned());
                }
            }
        }
        assert_eq!(outcomes.len(), NAMES, "{outcomes:?}");
        for (racer, results) in &outcomes {
            assert_eq!(results.len(), 2 * TASKS, "{racer}: {results:?}");
            let won = results.iter().filter(|outcome| *outcome == "won").count();
            let refused = results.iter().filter(|outcome| *outcome == "refused").count();
            assert_eq!(
                (won, refused),
                (1, 2 * TASKS - 1),
                "{racer}: exactly one winner, typed refusals: {results:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn toctou_dedupe_two_processes_postgres() {
        let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
        // Spawning blocks; the children own their own runtimes.
        let url = database.url().to_owned();
        tokio::task::spawn_blocking(move || run_children("postgres", &url)).await.expect("children");
        let registry = PostgresRegistry::new(database.pool().clone(), clock());
        let acme = tenant("acme");
        let entries = registry.entries(&acme).await.expect("entries");
        assert_eq!(entries.len(), NAMES);
        verify_chain(&acme, &entries).expect("one unforked chain");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn toctou_dedupe_two_processes_sqlite() {
        let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
        let path = database.path().display().to_string();
        tokio::task::spawn_blocking(move || run_children("sqlite", &path)).await.expect("children");
        let registry = SqliteRegistry::new(database.pool().clone(), clock());
        let acme = tenant("acme");
        let entries = registry.entries(&acme).await.expect("entries");
        assert_eq!(entries.len(), NAMES);
        verify_chain(&acme, &entries).expect("one unforked chain");
    }
}

// ---------------------------------------------------------------------------------------------
// Raw SQL: unique-null, typed keys, tampering, cross-tenant splicing
// ---------------------------------------------------------------------------------------------

/// A bound value for raw SQL on either backend.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Bytes(Vec<u8>),
    Int(i64),
}

/// A raw handle on the test database behind a registry.
#[derive(Debug, Clone)]
enum Db {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Db {
    async fn exec(&self, sql: &str, binds: &[Bind]) -> Result<u64, sqlx::Error> {
        match self {
            Self::Pg(pool) => {
                let mut query = sqlx::query(sql);
                for bind in binds {
                    query = match bind {
                        Bind::Text(text) => query.bind(text.clone()),
                        Bind::Bytes(bytes) => query.bind(bytes.clone()),
                        Bind::Int(value) => query.bind(*value),
                    };
                }
                query.execute(pool).await.map(|done| done.rows_affected())
            }
            Self::Sqlite(pool) => {
                let mut query = sqlx::query(sql);
                for bind in binds {
                    query = match bind {
                        Bind::Text(text) => query.bind(text.clone()),
                        Bind::Bytes(bytes) => query.bind(bytes.clone()),
                        Bind::Int(value) => query.bind(*value),
                    };
                }
                query.execute(pool).await.map(|done| done.rows_affected())
            }
        }
    }

    async fn must(&self, sql: &str, binds: &[Bind]) {
        self.exec(sql, binds).await.unwrap_or_else(|error| panic!("{sql}: {error}"));
    }
}

/// Either registry, so one attack script runs on both databases.
enum AnyRegistry {
    Pg(PostgresRegistry),
    Sqlite(SqliteRegistry),
}

impl AnyRegistry {
    async fn register(
        &self,
        tenant: &TenantId,
        name: &AgentName,
        role: &AgentRole,
    ) -> sos_identity::Result<Registration> {
        match self {
            Self::Pg(registry) => registry.register(tenant, name, role).await,
            Self::Sqlite(registry) => registry.register(tenant, name, role).await,
        }
    }

    async fn entries(&self, tenant: &TenantId) -> sos_identity::Result<Vec<RegistryEntry>> {
        match self {
            Self::Pg(registry) => registry.entries(tenant).await,
            Self::Sqlite(registry) => registry.entries(tenant).await,
        }
    }

    async fn lookup(
        &self,
        tenant: &TenantId,
        name: &AgentName,
    ) -> sos_identity::Result<Option<RegistryEntry>> {
        match self {
            Self::Pg(registry) => registry.lookup(tenant, name).await,
            Self::Sqlite(registry) => registry.lookup(tenant, name).await,
        }
    }

    async fn verify_agent(
        &self,
        tenant: &TenantId,
        name: &AgentName,
        vector: &IdentityVector,
    ) -> sos_identity::Result<bool> {
        match self {
            Self::Pg(registry) => verify_agent(registry, tenant, name, vector).await,
            Self::Sqlite(registry) => verify_agent(registry, tenant, name, vector).await,
        }
    }
}

/// A fresh database of each kind with the registry migrated, and the means to attack it.
struct Target {
    label: &'static str,
    db: Db,
    registry: AnyRegistry,
    _pg: Option<PgTestDatabase>,
    _sqlite: Option<SqliteTestDatabase>,
}

async fn targets() -> Vec<Target> {
    let pg = PgTestDatabase::new(&[&postgres_migrator()]).await;
    let sqlite = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    vec![
        Target {
            label: "postgres",
            db: Db::Pg(pg.pool().clone()),
            registry: AnyRegistry::Pg(PostgresRegistry::new(pg.pool().clone(), clock())),
            _pg: Some(pg),
            _sqlite: None,
        },
        Target {
            label: "sqlite",
            db: Db::Sqlite(sqlite.pool().clone()),
            registry: AnyRegistry::Sqlite(SqliteRegistry::new(sqlite.pool().clone(), clock())),
            _pg: None,
            _sqlite: Some(sqlite),
        },
    ]
}

const INSERT_ENTRY: &str = "INSERT INTO sos_identity_entries \
     (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

fn entry_binds(entry: &RegistryEntry) -> Vec<Bind> {
    vec![
        Bind::Text(entry.tenant.as_str().to_owned()),
        Bind::Int(entry.seq as i64),
        Bind::Text(entry.name.as_str().to_owned()),
        Bind::Text(entry.role.as_str().to_owned()),
        Bind::Bytes(entry.vector.as_bytes().to_vec()),
        Bind::Int(entry.registered_at.timestamp_micros()),
        Bind::Bytes(entry.prev_hash.as_bytes().to_vec()),
        Bind::Bytes(entry.hash.as_bytes().to_vec()),
    ]
}

async fn seed_chain(target: &Target, tenant_text: &str, count: usize) -> Vec<RegistryEntry> {
    let tenant = tenant(tenant_text);
    for index in 1..=count {
        target
            .registry
            .register(&tenant, &name(&format!("agent-{index}")), &role("worker"))
            .await
            .expect("register");
    }
    target.registry.entries(&tenant).await.expect("entries")
}

/// Named shape `unique-null`: a raw insert with NULL in any column of `(tenant, name)` or
/// `(tenant, seq)` is refused on both databases, and so is a NULL head tenant.
#[tokio::test]
async fn unique_null_raw_inserts_with_null_keys_are_refused() {
    for target in targets().await {
        let template = seed_chain(&target, "acme", 1).await.remove(0);
        let vector = Bind::Bytes(template.vector.as_bytes().to_vec());
        let hash = Bind::Bytes(template.hash.as_bytes().to_vec());
        let rows = [
            ("tenant", "NULL, 5, 'alice'"),
            ("seq", "'acme', NULL, 'bob'"),
            ("name", "'acme', 6, NULL"),
            ("tenant and name", "NULL, 7, NULL"),
        ];
        for (column, keys) in rows {
            let sql = format!(
                "INSERT INTO sos_identity_entries \
                 (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash) \
                 VALUES ({keys}, 'worker', $1, 0, $2, $2)"
            );
            // Twice: NULL ≠ NULL would let the second one through a nullable UNIQUE.
            for attempt in 0..2 {
                let result = target.db.exec(&sql, &[vector.clone(), hash.clone()]).await;
                assert!(result.is_err(), "{}: NULL {column} accepted on attempt {attempt}", target.label);
            }
        }
        let result = target
            .db
            .exec(
                "INSERT INTO sos_identity_heads (tenant, seq, head) VALUES (NULL, 0, $1)",
                std::slice::from_ref(&hash),
            )
            .await;
        assert!(result.is_err(), "{}: NULL head tenant accepted", target.label);
        // A raw duplicate of a registered name is refused by UNIQUE (tenant, name).
        let mut duplicate = template.clone();
        duplicate.seq = 2;
        assert!(target.db.exec(INSERT_ENTRY, &entry_binds(&duplicate)).await.is_err(), "{}", target.label);
        verify_chain(&tenant("acme"), &target.registry.entries(&tenant("acme")).await.expect("entries"))
            .expect("still one valid entry");
    }
}

/// Named shape `unique-affinity` (a cousin of `unique-null`): SQLite's flexible typing lets a raw
/// insert store the key column `name` (or `tenant`) as a BLOB; a BLOB never equals the TEXT of
/// the same bytes, so `UNIQUE (tenant, name)` lets a second "alice" in. The schema must refuse
/// key values of the wrong type, as PostgreSQL does.
#[tokio::test]
async fn unique_affinity_sqlite_blob_key_escapes_unique() {
    let sqlite = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    let registry = SqliteRegistry::new(sqlite.pool().clone(), clock());
    let acme = tenant("acme");
    let entry =
        registry.register(&acme, &name("alice"), &role("worker")).await.expect("register").entry().clone();
    let attempts = [("name as BLOB", "$1", "CAST($3 AS BLOB)"), ("tenant as BLOB", "CAST($1 AS BLOB)", "$3")];
    for (what, tenant_expr, name_expr) in attempts {
        let sql = format!(
            "INSERT INTO sos_identity_entries (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash) \
             VALUES ({tenant_expr}, $2, {name_expr}, $4, $5, $6, $7, $8)"
        );
        let mut forged = entry.clone();
        forged.seq = 2;
        forged.prev_hash = entry.hash;
        forged.hash = forged.compute_hash();
        let mut query = sqlx::query(&sql);
        for bind in entry_binds(&forged) {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Bytes(bytes) => query.bind(bytes),
                Bind::Int(value) => query.bind(value),
            };
        }
        let inserted = query.execute(sqlite.pool()).await;
        assert!(inserted.is_err(), "{what}: a second \"alice\" slipped past UNIQUE (tenant, name)");
    }
    // A REAL sequence number passes `CHECK (seq >= 1)` and the primary key, then cannot be read.
    let inserted = sqlx::query(
        "INSERT INTO sos_identity_entries (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash) \
         VALUES ('acme', 1.5, 'carol', 'worker', zeroblob(32), 0, zeroblob(32), zeroblob(32))",
    )
    .execute(sqlite.pool())
    .await;
    assert!(inserted.is_err(), "a REAL sequence number was stored");
    // Wrongly typed vector and digests are refused too (`length()` counts characters of TEXT).
    let text_digest = "é".repeat(32);
    let inserted = sqlx::query(
        "INSERT INTO sos_identity_entries (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash) \
         VALUES ('acme', 3, 'mallory', 'worker', $1, 0, $1, $1)",
    )
    .bind(text_digest)
    .execute(sqlite.pool())
    .await;
    assert!(inserted.is_err(), "a 64-byte TEXT passed the 32-byte length check");
}

/// The first bad entry, as reported by `entries` + `verify_chain` (what `verify_agent` does).
async fn first_bad(target: &Target, tenant_text: &str) -> Result<u64, String> {
    let tenant = tenant(tenant_text);
    let entries = match target.registry.entries(&tenant).await {
        Ok(entries) => entries,
        Err(error) => return Err(format!("entries failed: {error}")),
    };
    match verify_chain(&tenant, &entries) {
        Err(Error::Tampered { seq, .. }) => Ok(seq),
        other => Err(format!("not detected: {other:?}")),
    }
}

/// Chain tampering by raw SQL on both databases: modify, delete, reorder and insert entries (one
/// tenant per attack) and check that verification names the first bad entry, and that
/// `verify_agent` refuses to vouch for anyone on a broken chain.
#[tokio::test]
async fn chain_tampering_is_named_at_the_first_bad_entry() {
    for target in targets().await {
        let label = target.label;
        // Modify a role in place.
        seed_chain(&target, "t-role", 5).await;
        target
            .db
            .must("UPDATE sos_identity_entries SET role = 'admin' WHERE tenant = 't-role' AND seq = 2", &[])
            .await;
        assert_eq!(first_bad(&target, "t-role").await, Ok(2), "{label}: modified role");
        let forged = IdentityVector::derive("agent-2", "admin").expect("valid");
        assert!(
            matches!(
                target.registry.verify_agent(&tenant("t-role"), &name("agent-2"), &forged).await,
                Err(Error::Tampered { seq: 2, .. })
            ),
            "{label}: verify_agent must fail on a tampered chain"
        );
        // Even an untouched agent is not vouched for on a broken chain.
        let honest = IdentityVector::derive("agent-1", "worker").expect("valid");
        assert!(target.registry.verify_agent(&tenant("t-role"), &name("agent-1"), &honest).await.is_err());

        // Modify the name (to another valid name), the time, each digest.
        seed_chain(&target, "t-name", 5).await;
        target
            .db
            .must("UPDATE sos_identity_entries SET name = 'agent-9' WHERE tenant = 't-name' AND seq = 1", &[])
            .await;
        assert_eq!(first_bad(&target, "t-name").await, Ok(1), "{label}: modified name");
        seed_chain(&target, "t-time", 5).await;
        target
            .db
            .must("UPDATE sos_identity_entries SET registered_at_us = registered_at_us + 1 WHERE tenant = 't-time' AND seq = 4", &[])
            .await;
        assert_eq!(first_bad(&target, "t-time").await, Ok(4), "{label}: modified time");
        for (tenant_text, column) in [("t-vec", "vector"), ("t-prev", "prev_hash"), ("t-hash", "entry_hash")]
        {
            seed_chain(&target, tenant_text, 5).await;
            target
                .db
                .must(
                    &format!("UPDATE sos_identity_entries SET {column} = $1 WHERE tenant = '{tenant_text}' AND seq = 3"),
                    &[Bind::Bytes(vec![7u8; 32])],
                )
                .await;
            assert_eq!(first_bad(&target, tenant_text).await, Ok(3), "{label}: modified {column}");
        }

        // Rewrite an entry consistently (new role, vector and hash): the next entry breaks.
        let chain = seed_chain(&target, "t-rewrite", 5).await;
        let mut rewritten = chain[1].clone();
        rewritten.role = role("admin");
        rewritten.vector = IdentityVector::of(&rewritten.name, &rewritten.role);
        rewritten.hash = rewritten.compute_hash();
        target
            .db
            .must(
                "UPDATE sos_identity_entries SET role = $1, vector = $2, entry_hash = $3 WHERE tenant = 't-rewrite' AND seq = 2",
                &[
                    Bind::Text("admin".into()),
                    Bind::Bytes(rewritten.vector.as_bytes().to_vec()),
                    Bind::Bytes(rewritten.hash.as_bytes().to_vec()),
                ],
            )
            .await;
        assert_eq!(first_bad(&target, "t-rewrite").await, Ok(3), "{label}: consistent rewrite");

        // Delete a middle entry, and the first.
        seed_chain(&target, "t-del", 5).await;
        target.db.must("DELETE FROM sos_identity_entries WHERE tenant = 't-del' AND seq = 3", &[]).await;
        assert_eq!(first_bad(&target, "t-del").await, Ok(3), "{label}: deleted entry 3");
        seed_chain(&target, "t-del-first", 5).await;
        target
            .db
            .must("DELETE FROM sos_identity_entries WHERE tenant = 't-del-first' AND seq = 1", &[])
            .await;
        assert_eq!(first_bad(&target, "t-del-first").await, Ok(1), "{label}: deleted entry 1");

        // Reorder: swap entries 2 and 3.
        seed_chain(&target, "t-swap", 5).await;
        for sql in [
            "UPDATE sos_identity_entries SET seq = 1000 WHERE tenant = 't-swap' AND seq = 2",
            "UPDATE sos_identity_entries SET seq = 2 WHERE tenant = 't-swap' AND seq = 3",
            "UPDATE sos_identity_entries SET seq = 3 WHERE tenant = 't-swap' AND seq = 1000",
        ] {
            target.db.must(sql, &[]).await;
        }
        assert_eq!(first_bad(&target, "t-swap").await, Ok(2), "{label}: swapped 2 and 3");

        // Insert: shift 3.. up by one and put a well-formed forged entry at 3 that links to 2.
        let chain = seed_chain(&target, "t-insert", 5).await;
        for sql in [
            "UPDATE sos_identity_entries SET seq = seq + 100 WHERE tenant = 't-insert' AND seq >= 3",
            "UPDATE sos_identity_entries SET seq = seq - 99 WHERE tenant = 't-insert' AND seq >= 100",
        ] {
            target.db.must(sql, &[]).await;
        }
        let mut inserted = chain[2].clone();
        inserted.name = name("mallory");
        inserted.role = role("admin");
        inserted.vector = IdentityVector::of(&inserted.name, &inserted.role);
        inserted.prev_hash = chain[1].hash;
        inserted.hash = inserted.compute_hash();
        target.db.must(INSERT_ENTRY, &entry_binds(&inserted)).await;
        assert_eq!(first_bad(&target, "t-insert").await, Ok(4), "{label}: forged entry inserted at 3");
        assert!(
            target
                .registry
                .verify_agent(&tenant("t-insert"), &name("mallory"), &inserted.vector)
                .await
                .is_err(),
            "{label}: the inserted agent must not verify"
        );

        // After tampering, registration either fails with a typed error or appends; it never panics.
        let _ = target.registry.register(&tenant("t-insert"), &name("late"), &role("worker")).await;
    }
}

/// A later row that cannot even be decoded (a non-NFC name written by raw SQL) must not hide an
/// earlier, decodable tampered entry: verification names the first bad entry, not the later one.
#[tokio::test]
async fn chain_tampering_first_bad_entry_wins_over_a_later_undecodable_row() {
    for target in targets().await {
        let label = target.label;
        seed_chain(&target, "t-two", 5).await;
        target
            .db
            .must("UPDATE sos_identity_entries SET role = 'admin' WHERE tenant = 't-two' AND seq = 2", &[])
            .await;
        target
            .db
            .must(
                "UPDATE sos_identity_entries SET name = $1 WHERE tenant = 't-two' AND seq = 4",
                &[Bind::Text("e\u{301}".into())],
            )
            .await;
        let outcome = target
            .registry
            .verify_agent(
                &tenant("t-two"),
                &name("agent-1"),
                &IdentityVector::derive("agent-1", "worker").expect("valid"),
            )
            .await;
        assert!(
            matches!(outcome, Err(Error::Tampered { seq: 2, .. })),
            "{label}: expected the first bad entry (2) to be named, got {outcome:?}"
        );
    }
}

/// Tenant boundaries: one name in two tenants with different roles is two agents; listings,
/// lookups and verification never cross over; an entry of tenant A spliced into tenant B's chain
/// (as B's next entry, or as the first entry of an empty tenant C, where the zero previous hash
/// matches) is named as tampered, because the entry hash covers the tenant.
#[tokio::test]
async fn tenant_boundaries_hold_and_cross_tenant_splices_are_detected() {
    // Memory store: listings and verification.
    let memory = MemoryRegistry::new(clock());
    tenant_listing_suite(&memory).await;
    for target in targets().await {
        let label = target.label;
        match &target.registry {
            AnyRegistry::Pg(registry) => tenant_listing_suite(registry).await,
            AnyRegistry::Sqlite(registry) => tenant_listing_suite(registry).await,
        }
        let a = seed_chain(&target, "splice-a", 3).await;
        let b = seed_chain(&target, "splice-b", 2).await;
        // A's entry 1 becomes B's entry 3, linked to B's head.
        let mut spliced = a[0].clone();
        spliced.tenant = tenant("splice-b");
        spliced.seq = 3;
        spliced.prev_hash = b[1].hash;
        let mut binds = entry_binds(&spliced);
        binds[2] = Bind::Text("spliced".into()); // the name is taken in B; the hash stays A's
        spliced.name = name("spliced");
        target.db.must(INSERT_ENTRY, &binds).await;
        assert_eq!(first_bad(&target, "splice-b").await, Ok(3), "{label}: A's entry in B's chain");
        // A's entry 1 copied verbatim (hash, zero previous hash) as the first entry of tenant C.
        let mut copied = a[0].clone();
        copied.tenant = tenant("splice-c");
        target.db.must(INSERT_ENTRY, &entry_binds(&copied)).await;
        assert_eq!(first_bad(&target, "splice-c").await, Ok(1), "{label}: A's first entry as C's first");
        assert!(
            target.registry.verify_agent(&tenant("splice-c"), &a[0].name, &a[0].vector).await.is_err(),
            "{label}: C must not vouch for A's agent"
        );
        // A's whole chain presented as B's is refused at the first entry.
        assert!(matches!(verify_chain(&tenant("splice-b"), &a), Err(Error::Tampered { seq: 1, .. })));
        // A itself is untouched.
        assert_eq!(
            verify_chain(
                &tenant("splice-a"),
                &target.registry.entries(&tenant("splice-a")).await.expect("a")
            )
            .expect("A verifies")
            .len,
            3
        );
        assert_eq!(
            target.registry.lookup(&tenant("splice-a"), &name("spliced")).await.expect("lookup"),
            None,
            "{label}"
        );
    }
}

async fn tenant_listing_suite<R: IdentityRegistry>(registry: &R) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let in_a = registry.register(&a, &name("shared"), &role("researcher")).await.expect("a");
    let in_b = registry
        .register(&b, &name("shared"), &role("admin"))
        .await
        .expect("b: no RoleConflict across tenants");
    assert!(in_a.is_created() && in_b.is_created());
    registry.register(&a, &name("only-a"), &role("researcher")).await.expect("a");
    let entries_a = registry.entries(&a).await.expect("a");
    let entries_b = registry.entries(&b).await.expect("b");
    assert_eq!(entries_a.len(), 2);
    assert_eq!(entries_b.len(), 1);
    assert!(entries_a.iter().all(|entry| entry.tenant == a));
    assert!(entries_b.iter().all(|entry| entry.tenant == b));
    assert_eq!(entries_b[0].seq, 1, "each tenant has its own sequence");
    assert_eq!(entries_b[0].prev_hash, Sha256Digest::ZERO);
    verify_chain(&a, &entries_a).expect("a");
    verify_chain(&b, &entries_b).expect("b");
    assert_eq!(registry.lookup(&b, &name("only-a")).await.expect("lookup"), None);
    let vector_a = IdentityVector::derive("shared", "researcher").expect("valid");
    assert!(verify_agent(registry, &a, &name("shared"), &vector_a).await.expect("a"));
    assert!(
        !verify_agent(registry, &b, &name("shared"), &vector_a).await.expect("b"),
        "B must not vouch for A's vector"
    );
    assert!(
        !verify_agent(
            registry,
            &b,
            &name("only-a"),
            &IdentityVector::derive("only-a", "researcher").expect("valid")
        )
        .await
        .expect("b")
    );
    assert!(!verify_agent(registry, &tenant("tenant-c"), &name("shared"), &vector_a).await.expect("empty c"));
}

// ---------------------------------------------------------------------------------------------
// Merkle checkpoints and inclusion proofs
// ---------------------------------------------------------------------------------------------

/// RFC 9162 §2.1.1 leaf hash, written from the RFC independently of both crates.
fn rfc9162_leaf(data: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update([0u8]).chain_update(data).finalize().into()
}

/// RFC 9162 §2.1.1 interior node hash.
fn rfc9162_node(left: &[u8], right: &[u8]) -> [u8; 32] {
    Sha256::new().chain_update([1u8]).chain_update(left).chain_update(right).finalize().into()
}

/// The spec's Merkle tree hash (RFC 9162 exactly, leaf data = the entry hash), written from
/// `docs/identity.md` and the RFC independently of the crate.
fn reference_root(hashes: &[[u8; 32]]) -> [u8; 32] {
    match hashes.len() {
        0 => Sha256::digest(b"").into(),
        1 => rfc9162_leaf(&hashes[0]),
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            let (left, right) = (reference_root(&hashes[..k]), reference_root(&hashes[k..]));
            rfc9162_node(&left, &right)
        }
    }
}

/// Inclusion proofs cannot be forged or transplanted: every honest proof verifies, and changing
/// any path element, the path's length, the position, the tree size, the entry, or using another
/// tenant's checkpoint makes it fail. The root matches the spec; extreme values never panic; a
/// checkpoint of a tampered chain is refused.
#[tokio::test]
async fn merkle_inclusion_proofs_resist_forgery() {
    use sos_identity::{checkpoint, inclusion_proof, verify_inclusion};

    let registry = MemoryRegistry::new(clock());
    let (acme, beta) = (tenant("acme"), tenant("beta"));
    for index in 0..17 {
        registry.register(&acme, &name(&format!("agent-{index}")), &role("worker")).await.expect("a");
        registry.register(&beta, &name(&format!("agent-{index}")), &role("worker")).await.expect("b");
    }
    let entries = registry.entries(&acme).await.expect("entries");
    let other = registry.entries(&beta).await.expect("entries");
    for size in 1..=entries.len() {
        let prefix = &entries[..size];
        let cp = checkpoint(&acme, prefix).expect("intact");
        let hashes: Vec<[u8; 32]> = prefix.iter().map(|entry| *entry.hash.as_bytes()).collect();
        assert_eq!(*cp.root.as_bytes(), reference_root(&hashes), "root of size {size} follows the spec");
        let cp_beta = checkpoint(&beta, &other[..size]).expect("intact");
        for seq in 1..=size as u64 {
            let entry_hash = entries[(seq - 1) as usize].hash;
            let proof = inclusion_proof(&entries, seq, size as u64).expect("in range");
            assert!(verify_inclusion(&cp, &entry_hash, &proof), "size {size} seq {seq}");
            assert!(!verify_inclusion(&cp_beta, &entry_hash, &proof), "another tenant's checkpoint");
            for position in 0..proof.path.len() {
                let mut forged = proof.clone();
                let mut bytes = *forged.path[position].as_bytes();
                bytes[31] ^= 1;
                forged.path[position] = Sha256Digest::from_bytes(bytes);
                assert!(!verify_inclusion(&cp, &entry_hash, &forged), "flipped path[{position}]");
            }
            let mut longer = proof.clone();
            longer.path.push(cp.root);
            assert!(!verify_inclusion(&cp, &entry_hash, &longer), "size {size} seq {seq}: extra element");
            if !proof.path.is_empty() {
                let mut shorter = proof.clone();
                shorter.path.pop();
                assert!(!verify_inclusion(&cp, &entry_hash, &shorter), "size {size} seq {seq}: dropped");
                // A subtree root is not a leaf: presenting it with the rest of the path fails.
                let mut upper = proof.clone();
                let sibling = upper.path.remove(0);
                let leaf = rfc9162_leaf(entry_hash.as_bytes());
                let parent = if seq % 2 == 1 && seq < size as u64 {
                    rfc9162_node(&leaf, sibling.as_bytes())
                } else {
                    rfc9162_node(sibling.as_bytes(), &leaf)
                };
                upper.seq = seq.div_ceil(2);
                upper.tree_size = (size as u64).div_ceil(2);
                let mut small = cp;
                small.len = upper.tree_size;
                assert!(
                    !verify_inclusion(&small, &Sha256Digest::from_bytes(parent), &upper),
                    "second preimage"
                );
            }
            for wrong_seq in (0..=size as u64 + 1).filter(|wrong| *wrong != seq) {
                let mut moved = proof.clone();
                moved.seq = wrong_seq;
                assert!(!verify_inclusion(&cp, &entry_hash, &moved), "size {size}: seq {seq} as {wrong_seq}");
            }
            for wrong_size in [size as u64 - 1, size as u64 + 1, u64::MAX] {
                let mut resized = proof.clone();
                resized.tree_size = wrong_size;
                assert!(!verify_inclusion(&cp, &entry_hash, &resized), "size {size} as {wrong_size}");
            }
            if size > 1 {
                let neighbour = entries[(seq as usize) % size].hash;
                assert!(!verify_inclusion(&cp, &neighbour, &proof), "size {size} seq {seq}: neighbour");
            }
        }
    }
    // Extreme and inconsistent requests are typed errors or plain `false`, never panics.
    assert!(inclusion_proof(&entries, u64::MAX, u64::MAX).is_err());
    assert!(inclusion_proof(&entries, 1, u64::MAX).is_err());
    assert!(inclusion_proof(&[], 1, 1).is_err());
    let cp = checkpoint(&acme, &entries).expect("intact");
    let proof = sos_identity::InclusionProof { seq: u64::MAX, tree_size: u64::MAX, path: vec![cp.root; 70] };
    let mut huge = cp;
    huge.len = u64::MAX;
    assert!(!verify_inclusion(&huge, &entries[0].hash, &proof));
    // A checkpoint is never issued over a tampered chain.
    let mut tampered = entries.clone();
    tampered[5].role = role("admin");
    assert!(matches!(checkpoint(&acme, &tampered), Err(Error::Tampered { seq: 6, .. })));
    assert!(matches!(checkpoint(&beta, &entries), Err(Error::Tampered { seq: 1, .. })));
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

fn agent_vector(index: usize) -> IdentityVector {
    IdentityVector::derive(&format!("agent-{index}"), "worker").expect("valid")
}

fn probe(index: u64) -> SignalVector {
    SignalVector::from_identity(&IdentityVector::derive(&format!("signal-{index}"), "probe").expect("valid"))
}

fn build(config: RouterConfig, order: &[usize]) -> ResonanceRouter {
    let mut router = ResonanceRouter::new(config).expect("valid config");
    for index in order {
        router.add(name(&format!("agent-{index}")), agent_vector(*index)).expect("new agent");
    }
    router
}

/// A deterministic permutation of `0..n` (a multiplicative step coprime with n).
fn permutation(n: usize, step: usize, offset: usize) -> Vec<usize> {
    (0..n).map(|index| (index * step + offset) % n).collect()
}

/// Routing determinism: the top-k and the routed winners do not depend on the order agents
/// were added (or on earlier removals that shuffled slots), in either mode.
#[test]
fn routing_is_independent_of_insertion_order() {
    let n = 101;
    for mode in [ScoreMode::Exact, ScoreMode::Float] {
        let config = RouterConfig::default().with_mode(mode).with_sticky(false);
        let orders = [permutation(n, 1, 0), permutation(n, 37, 5), permutation(n, 64, 99)];
        let mut reference: Option<Vec<Vec<String>>> = None;
        let mut routed_reference: Option<Vec<String>> = None;
        for order in &orders {
            let mut router = build(config, order);
            // Slot shuffling by removal and re-adding.
            for index in [3usize, 50, 0, 100] {
                router.remove(&name(&format!("agent-{index}"))).expect("present");
            }
            for index in [100usize, 0, 50, 3] {
                router.add(name(&format!("agent-{index}")), agent_vector(index)).expect("absent");
            }
            let tops: Vec<Vec<String>> = (0..200)
                .map(|signal| {
                    router
                        .top_k(&probe(signal), *signal_id(signal).as_uuid().as_bytes(), 5)
                        .into_iter()
                        .map(|candidate| candidate.agent.into_string())
                        .collect()
                })
                .collect();
            let routed: Vec<String> = (0..400)
                .map(|signal| {
                    router
                        .route_vector(&probe(signal % 50), signal_id(signal), "")
                        .expect("routed")
                        .agent
                        .into_string()
                })
                .collect();
            match (&reference, &routed_reference) {
                (Some(tops_ref), Some(routed_ref)) => {
                    assert_eq!(&tops, tops_ref, "{mode:?}: top-5 depends on insertion order");
                    assert_eq!(&routed, routed_ref, "{mode:?}: routing depends on insertion order");
                }
                _ => {
                    reference = Some(tops);
                    routed_reference = Some(routed);
                }
            }
        }
    }
}

/// Stability: adding an agent moves a signal's best agent only to the newcomer, and removing one
/// moves only the signals it held, in both modes (so slot reshuffling by removal never leaks
/// into rankings).
#[test]
fn routing_stability_one_agent_moves_only_its_own_signals() {
    for mode in [ScoreMode::Exact, ScoreMode::Float] {
        let config = RouterConfig::default().with_mode(mode).with_sticky(false).with_load(LoadPolicy::Argmax);
        let mut router = build(config, &(0..60).collect::<Vec<_>>());
        let best = |router: &ResonanceRouter| -> Vec<String> {
            (0..600u64)
                .map(|signal| {
                    router.top_k(&probe(signal), *signal_id(signal).as_uuid().as_bytes(), 1)[0]
                        .agent
                        .as_str()
                        .to_owned()
                })
                .collect()
        };
        let before = best(&router);
        router
            .add(name("newcomer"), IdentityVector::derive("newcomer", "worker").expect("valid"))
            .expect("new");
        let after = best(&router);
        let moved = before.iter().zip(&after).filter(|(old, new)| old != new).count();
        assert!(before.iter().zip(&after).all(|(old, new)| old == new || new == "newcomer"), "{mode:?}");
        assert!(moved > 0 && moved < 60, "{mode:?}: {moved} of 600 moved to the newcomer");
        let victim = name("agent-17");
        router.remove(&victim).expect("present");
        let removed = best(&router);
        for ((old, new), index) in after.iter().zip(&removed).zip(0..) {
            assert!(old == new || old == "agent-17", "{mode:?}: signal {index} moved from {old} to {new}");
        }
    }
}

/// Ties are broken by the spec's hash of (signal id, agent name), never by position: agents with
/// identical vectors (and, in exact mode, equal cosines from permuted vectors) win according to
/// the tie key, whatever order they were added in, and each twin wins for some signals.
#[test]
fn routing_ties_are_broken_by_hash_not_index() {
    let twin = agent_vector(7);
    let twins = ["twin-a", "twin-b", "twin-c"];
    for mode in [ScoreMode::Exact, ScoreMode::Float] {
        let config = RouterConfig::default().with_mode(mode).with_sticky(false).with_load(LoadPolicy::Argmax);
        let mut wins: BTreeMap<String, usize> = BTreeMap::new();
        for order in [[0usize, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut router = ResonanceRouter::new(config).expect("valid");
            for index in order {
                router.add(name(twins[index]), twin).expect("new");
            }
            for other in 0..20 {
                router.add(name(&format!("agent-{other}")), agent_vector(100 + other)).expect("new");
            }
            let signal = SignalVector::from_identity(&twin);
            for index in 0..64 {
                let id = signal_id(index);
                let top = router.top_k(&signal, *id.as_uuid().as_bytes(), 3);
                let expected = {
                    let mut sorted: Vec<&str> = twins.to_vec();
                    sorted.sort_by_key(|twin| reference_tie_key(&id, twin));
                    sorted
                };
                let got: Vec<&str> = top.iter().map(|candidate| candidate.agent.as_str()).collect();
                assert_eq!(got, expected, "{mode:?} order {order:?} signal {index}");
                let routed = router.route_vector(&signal, id, "").expect("routed");
                assert_eq!(routed.agent.as_str(), expected[0]);
                *wins.entry(routed.agent.into_string()).or_default() += 1;
            }
        }
        assert_eq!(wins.len(), 3, "{mode:?}: every twin wins some ties: {wins:?}");
    }
    // Exact mode: permuted components give exactly equal cosines with the all-ones signal.
    let base = *agent_vector(3).as_bytes();
    let mut rotated = [0u8; 32];
    rotated[..30].copy_from_slice(&base[2..]);
    rotated[30..].copy_from_slice(&base[..2]);
    let (left, right) = (IdentityVector::from_bytes(base), IdentityVector::from_bytes(rotated));
    let ones = SignalVector::new([1; 16]).expect("valid");
    for order in [[0, 1], [1, 0]] {
        let config = RouterConfig::default().with_mode(ScoreMode::Exact).with_load(LoadPolicy::Argmax);
        let mut router = ResonanceRouter::new(config).expect("valid");
        for index in order {
            router.add(name(["perm-l", "perm-r"][index]), [left, right][index]).expect("new");
        }
        for index in 0..32 {
            let id = signal_id(index);
            let expected = if reference_tie_key(&id, "perm-l") < reference_tie_key(&id, "perm-r") {
                "perm-l"
            } else {
                "perm-r"
            };
            let top = router.top_k(&ones, *id.as_uuid().as_bytes(), 1);
            assert_eq!(top[0].agent.as_str(), expected, "exact tie, order {order:?}, signal {index}");
        }
    }
}

/// Bounded load: whatever the workload (all signals identical, a few clusters, repeated
/// subjects, completions and removals in between), no agent is handed a signal at or above
/// `ceil((1 + ε)·(total + 1)/agents)`, so max/mean stays within the promise; argmax is unfair.
#[test]
fn bounded_load_fairness_holds_on_adversarial_workloads() {
    for mode in [ScoreMode::Float, ScoreMode::Exact] {
        for epsilon in [0.25, 0.01, 1.0] {
            let n = 40usize;
            let config = RouterConfig::default().with_mode(mode).with_epsilon(epsilon);
            let mut router = build(config, &(0..n).collect::<Vec<_>>());
            let clusters = [probe(1), probe(2), probe(3)];
            let mut total = 0u64;
            for index in 0..4000u64 {
                // All of one direction for a long stretch, then three clusters; subjects repeat.
                let signal = if index < 1500 { clusters[0] } else { clusters[(index % 3) as usize] };
                let subject = format!("deal-{}", index % 17);
                let before = router.loads().to_vec();
                let cap = ((1.0 + epsilon) * (total as f64 + 1.0) / router.len() as f64).ceil() as u64;
                let routed = router.route_vector(&signal, signal_id(index), &subject).expect("routed");
                total += 1;
                assert_eq!(routed.capacity, cap.max(1));
                let load = router.load(&routed.agent).expect("present");
                assert!(
                    load <= routed.capacity,
                    "{mode:?} ε={epsilon}: load {load} over capacity {}",
                    routed.capacity
                );
                assert!(routed.score.is_finite());
                let max_before = before.iter().copied().max().unwrap_or(0);
                let max_after = router.loads().iter().copied().max().unwrap_or(0);
                assert!(max_after <= max_before.max(routed.capacity));
                if index % 7 == 0 {
                    router.complete(&routed.agent).expect("present");
                    total -= 1;
                }
                if index == 2500 {
                    let victim = name("agent-0");
                    total -= router.load(&victim).expect("present");
                    router.remove(&victim).expect("present");
                }
            }
            assert_eq!(router.loads().iter().sum::<u64>(), total, "{mode:?}: load accounting");
        }
    }
    // Argmax on the same clustered workload is documented as unfair: show it, so the contrast holds.
    let mut argmax = build(
        RouterConfig::default().with_load(LoadPolicy::Argmax).with_sticky(false),
        &(0..40).collect::<Vec<_>>(),
    );
    for index in 0..1000 {
        argmax.route_vector(&probe(1), signal_id(index), "").expect("routed");
    }
    assert_eq!(*argmax.loads().iter().max().expect("agents"), 1000);
}

/// Stickiness: a subject keeps its agent while that agent is below capacity, even when the
/// signal's direction changes; at capacity the signal goes elsewhere instead of overloading it.
/// The explanation predicts exactly what routing then does.
#[test]
fn stickiness_keeps_the_subject_within_capacity_and_explain_predicts_route() {
    let mut router = build(RouterConfig::default(), &(0..10).collect::<Vec<_>>());
    let mut total = 0u64;
    // The subject's agent: the one that handled it last (an overflow moves the subject).
    let mut current = router.route_vector(&probe(1), signal_id(0), "deal-42").expect("routed").agent;
    total += 1;
    let mut sticky = 0;
    for index in 1..300u64 {
        let capacity = ((1.25 * (total as f64 + 1.0)) / router.len() as f64).ceil() as u64;
        let current_load = router.load(&current).expect("present");
        // Other subjects raise the others' loads so capacity keeps moving.
        let subject = if index % 2 == 0 { "deal-42".to_owned() } else { format!("other-{index}") };
        let routed = router.route_vector(&probe(index), signal_id(index), &subject).expect("routed");
        total += 1;
        assert!(router.load(&routed.agent).expect("present") <= routed.capacity);
        if subject == "deal-42" {
            if current_load < capacity {
                assert_eq!(routed.agent, current, "signal {index}: the subject's agent had capacity");
                assert_eq!(routed.rule, AppliedRule::Sticky);
                sticky += 1;
            } else {
                assert_ne!(routed.agent, current, "signal {index}: the subject's agent was full");
                current = routed.agent.clone();
            }
        }
    }
    assert!(sticky > 0);

    let acme = tenant("acme");
    let profile = sos_identity::KindEvidenceProfile;
    for index in 0..150u64 {
        let kind: sos_core::SignalKind =
            ["stale-deal", "lead-spike", "churn-risk"][(index % 3) as usize].parse().expect("kind");
        let signal = sos_core::Signal::builder(acme.clone(), kind)
            .subject(format!("subject-{}", index % 11))
            .text("observed")
            .evidence(serde_json::json!({ "n": index, "nested": { "b": 1, "a": [index, "x"] } }))
            .build()
            .expect("signal");
        let explanation = router.explain(&signal, &profile, 4).expect("explained");
        for candidate in &explanation.candidates {
            let sum: f64 = candidate.contributions.iter().sum();
            assert!(candidate.score.is_finite() && (sum - candidate.score).abs() < 1e-9);
        }
        let routed = router.route(&signal, &profile).expect("routed");
        assert_eq!(routed, explanation.decision, "explain must predict route for signal {index}");
    }
}

/// Degenerate signal vectors: zero vectors and out-of-range components are refused with a typed
/// error; extreme but valid vectors (±2^20 everywhere, one-hot, alternating) route in float mode
/// and exact mode without panicking, with finite scores and no NaN winner; invalid ε (NaN, ∞, 0,
/// negative) is refused.
#[test]
fn degenerate_signal_profiles_never_panic_or_produce_nan() {
    assert!(matches!(SignalVector::new([0; 16]), Err(Error::InvalidConfig { .. })));
    assert!(matches!(SignalVector::new([i32::MIN; 16]), Err(Error::InvalidConfig { .. })));
    assert!(matches!(SignalVector::new([(1 << 20) + 1; 16]), Err(Error::InvalidConfig { .. })));
    for epsilon in
        [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, -1.0, 16.000_001, f64::MIN_POSITIVE / 2.0]
    {
        let outcome = ResonanceRouter::new(RouterConfig::default().with_epsilon(epsilon));
        if epsilon > 0.0 && epsilon <= 16.0 {
            assert!(outcome.is_ok());
        } else {
            assert!(matches!(outcome, Err(Error::InvalidConfig { .. })), "ε = {epsilon} accepted");
        }
    }
    let max = 1 << 20;
    let mut one_hot = [0; 16];
    one_hot[15] = 1;
    let mut alternating = [0; 16];
    for (index, value) in alternating.iter_mut().enumerate() {
        *value = if index % 2 == 0 { max } else { -max };
    }
    let extremes = [[max; 16], [-max; 16], one_hot, alternating, [1; 16], [-1; 16]];
    for mode in [ScoreMode::Float, ScoreMode::Exact] {
        for load in [LoadPolicy::Bounded, LoadPolicy::Argmax] {
            let mut router =
                build(RouterConfig::default().with_mode(mode).with_load(load), &(0..17).collect::<Vec<_>>());
            // Agents at the corners of the space too: all components ±65535.
            router.add(name("corner-high"), IdentityVector::from_bytes([0xff; 32])).expect("new");
            router.add(name("corner-low"), IdentityVector::from_bytes([0x00; 32])).expect("new");
            for (index, components) in extremes.iter().enumerate() {
                let signal = SignalVector::new(*components).expect("valid extreme");
                let top = router.top_k(&signal, [0; 16], usize::MAX);
                assert_eq!(top.len(), router.len());
                assert!(
                    top.iter()
                        .all(|candidate| candidate.score.is_finite() && candidate.score.abs() <= 1.0 + 1e-9)
                );
                assert!(
                    top.windows(2).all(|pair| pair[0].score >= pair[1].score - 1e-6),
                    "{mode:?}: ranking is by score"
                );
                assert!(router.top_k(&signal, [0; 16], 0).is_empty());
                let routed = router.route_vector(&signal, signal_id(index as u64), "").expect("routed");
                assert!(routed.score.is_finite());
            }
            // The all-max signal's best agent is the all-max corner; the all-min signal's the other.
            let top = router.top_k(&SignalVector::new([max; 16]).expect("valid"), [0; 16], 1);
            assert_eq!(top[0].agent.as_str(), "corner-high", "{mode:?}");
            let top = router.top_k(&SignalVector::new([-max; 16]).expect("valid"), [0; 16], 1);
            assert_eq!(top[0].agent.as_str(), "corner-low", "{mode:?}");
        }
    }
    let mut empty = ResonanceRouter::new(RouterConfig::default()).expect("valid");
    assert!(matches!(empty.route_vector(&probe(1), signal_id(1), "x"), Err(Error::NoAgents)));
    assert!(empty.top_k(&probe(1), [0; 16], 10).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Portraits
// ---------------------------------------------------------------------------------------------

const SVG_ELEMENTS: [&str; 8] = ["svg", "defs", "clipPath", "rect", "g", "circle", "path", "use"];

/// Checks that `svg` is ASCII, uses only the portrait's own elements, and has balanced tags.
fn check_svg_structure(svg: &str) {
    assert!(svg.is_ascii(), "non-ASCII in portrait");
    assert!(!svg.contains("NaN") && !svg.contains("inf"), "float artefacts in {svg}");
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("every tag closes") + open;
        let tag = &rest[open + 1..close];
        let self_closing = tag.ends_with('/');
        let tag = tag.trim_end_matches('/');
        if let Some(closing) = tag.strip_prefix('/') {
            assert_eq!(stack.pop(), Some(closing), "unbalanced </{closing}>");
        } else {
            let element = tag.split(' ').next().expect("element name");
            assert!(SVG_ELEMENTS.contains(&element), "unexpected element <{element}> in portrait");
            for attribute in tag.split_whitespace().filter_map(|token| token.split_once('=')) {
                assert!(!attribute.0.starts_with("on"), "event handler {attribute:?} in <{tag}>");
            }
            if !self_closing {
                stack.push(element);
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed {stack:?}");
}

/// Named shape `format-injection` (markup injection): names and roles full of markup, entities
/// and template syntax never reach the SVG; the portrait is drawn from the 32 bytes alone.
#[test]
fn format_injection_portraits_never_embed_user_text() {
    let hostile = [
        ("</svg><script>alert(1)</script>", "<img src=x onerror=alert(1)>"),
        ("\"><foreignObject>", "&lt;&amp;&#x3c;"),
        ("{0}{name}%s%n", "${role}{{}}"),
        ("]]><!--", "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>"),
        ("url(javascript:alert(1))", "href=\"javascript:x\""),
    ];
    for (name_text, role_text) in hostile {
        let vector = IdentityVector::derive(name_text, role_text).expect("markup is valid text");
        let svg = Portrait::of(&vector).into_svg();
        for needle in [name_text, role_text, "script", "javascript", "ENTITY", "foreignObject", "%s", "{0}"] {
            assert!(!svg.contains(needle), "portrait embeds {needle:?}");
        }
        check_svg_structure(&svg);
    }
}

/// Byte determinism: the same vector gives the same bytes across calls and threads, and the
/// bytes depend on nothing but the vector (two names with one vector cannot exist, but two
/// `from_bytes` copies must draw identically).
#[test]
fn portrait_bytes_are_deterministic_across_threads() {
    let vectors: Vec<IdentityVector> = (0..64).map(agent_vector).collect();
    let here: Vec<String> = vectors.iter().map(|vector| Portrait::of(vector).into_svg()).collect();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let vectors = vectors.clone();
            std::thread::spawn(move || {
                vectors.iter().map(|vector| Portrait::of(vector).into_svg()).collect::<Vec<_>>()
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().expect("no panic"), here);
    }
    for (vector, svg) in vectors.iter().zip(&here) {
        assert_eq!(Portrait::of(&IdentityVector::from_bytes(*vector.as_bytes())).into_svg(), *svg);
        check_svg_structure(svg);
    }
    // The same bytes as the crate's golden file (whatever version of the spec it pins).
    let alice = Portrait::of(&IdentityVector::derive("alice", "researcher").expect("valid")).into_svg();
    let golden = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sos-identity/tests/it/golden/alice-researcher.svg"
    ))
    .expect("golden file");
    assert_eq!(alice, golden, "alice's portrait bytes differ from the golden file");
}

/// The 4 KB budget holds for the most expensive portrait the traits allow: 4 rings of stars at the
/// highest symmetry order, a star glyph, the dots texture and all 16 rim marks. The marks come
/// from the seeded stream, so the free bytes (28..32) were searched once for a vector that shows
/// all 16 (seed 0x000217ed).
#[test]
fn portrait_worst_case_fits_four_kilobytes() {
    let mut bytes = [0u8; 32];
    bytes[2] = 5 << 5; // u1: geometry 5 (star)
    bytes[4] = 7 << 5; // u2: symmetry 9
    bytes[6] = 0xc0; // u3: contrast 3
    bytes[8] = 2 << 6; // u4: texture dots
    bytes[12] = 3 << 6; // u6: 4 layers
    bytes[14] = 5 << 5; // u7: star glyph
    bytes[16] = 3 << 6; // u8: largest scale
    bytes[18] = 7 << 5; // u9: rotation 7/8
    bytes[28..32].copy_from_slice(&0x0002_17edu32.to_be_bytes());
    let svg = Portrait::of(&IdentityVector::from_bytes(bytes)).into_svg();
    assert_eq!(svg.matches("href=\"#m\"").count(), 16, "all 16 rim marks");
    let traits = sos_identity::Traits::of(&IdentityVector::from_bytes(bytes)).aesthetics;
    let mut lowest = bytes;
    lowest[4] = 0;
    let fewest = sos_identity::Traits::of(&IdentityVector::from_bytes(lowest)).aesthetics.symmetry;
    assert!(traits.symmetry > fewest, "the highest symmetry order");
    assert_eq!(traits.layers, 4);
    assert_eq!(svg.matches("href=\"#l").count(), 4 * usize::from(traits.symmetry), "4 full rings");
    assert_eq!(svg.matches("L.24-.32").count(), 5, "4 star layers and a star glyph");
    assert_eq!(svg.matches("l1 1-1 1-1-1z").count(), 16, "dots texture");
    assert!(svg.len() <= Portrait::MAX_BYTES, "worst-case portrait is {} bytes", svg.len());
    check_svg_structure(&svg);
}
