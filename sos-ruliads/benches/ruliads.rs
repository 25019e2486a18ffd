//! Rule evaluation against a hand-written loop, and the trace on against off, in the same run.
//!
//! Run with `cargo bench -p sos-ruliads --all-features --bench ruliads -- --warm-up-time 1 --measurement-time 3`.
//! Before criterion's own figures it prints, for 1,000,000 in-memory deals:
//! the generic pack on one core next to a hand-written loop doing the same checks (goal ≥ 0.8×),
//! the whole batch on every core (goal < 1 s), and the trace overhead (goal ≤ 10 %); then the full
//! gate per decision next to the bare rule. `RULIADS_ONLY=hand|off|on|gate` runs one part (for a
//! profiler; `RULIADS_ROUNDS=n` times, default 5).

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use criterion::{Criterion, Throughput};
use sos_core::{DomainHasher, Severity, Signal, SignalKind};
use sos_ruliads::crm::{Deal, Record, Stage};
use sos_ruliads::engine::Engine;
use sos_ruliads::pack::Pack;
use sos_ruliads::with_trace;

const DEALS: usize = 1_000_000;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 9, 0, 0).single().expect("valid date")
}

/// A realistic pipeline: most deals are quiet, a few percent are stale, closed, hot or late.
fn deals() -> Vec<Record> {
    let stages = [
        Stage::Discovery,
        Stage::Qualification,
        Stage::Proposal,
        Stage::Negotiation,
        Stage::ClosedWon,
        Stage::ClosedLost,
    ];
    let now = now();
    (0..DEALS)
        .map(|index| {
            let idle_hours = if index % 25 == 0 { 24 * 10 } else { (index % 120) as i64 };
            Record::Deal(Deal {
                tenant: "acme".parse().expect("valid tenant"),
                id: format!("deal-{index}"),
                contact_name: format!("Contact {index}"),
                stage: stages[index % stages.len()].clone(),
                value_cents: Some((index as i64 % 2_000) * 1_000),
                probability: Some((index % 101) as u32),
                last_action_at: Some(now - TimeDelta::hours(idle_hours)),
                last_message_at: None,
                stage_entered_at: Some(now - TimeDelta::days((index % 40) as i64)),
                expected_close_at: Some(now + TimeDelta::days(30 - (index % 33) as i64)),
                next_step_at: Some(now + TimeDelta::days(1)),
                created_at: Some(now - TimeDelta::days(60)),
            })
        })
        .collect()
}

fn generic_engine(threads: usize) -> Engine<Record> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/packs");
    let packs = Pack::load_dir(&dir).expect("shipped packs load");
    let generic = packs.into_iter().find(|pack| pack.vertical() == "generic").expect("generic pack");
    generic.into_engine().with_parallelism(threads, 16_384)
}

fn signal(deal: &Deal, kind: &'static str, subject: String, text: String, severity: Severity) -> Signal {
    signal_with(deal, kind, subject, text, severity, None)
}

fn signal_with(
    deal: &Deal,
    kind: &'static str,
    subject: String,
    text: String,
    severity: Severity,
    idle_since: Option<String>,
) -> Signal {
    let mut cause = DomainHasher::new("sos-ruliads/cause/v1");
    let mut labels = vec![format!("deal_id={}", deal.id)];
    let mut evidence = serde_json::json!({ "deal_id": deal.id });
    if let Some(idle_since) = idle_since {
        labels.push(format!("idle_since={idle_since}"));
        evidence["idle_since"] = serde_json::Value::String(idle_since);
    }
    cause.str_field(deal.tenant.as_str()).and_then(|hasher| hasher.str_field(kind)).expect("short");
    for label in &labels {
        cause.str_field(label).expect("short");
    }
    Signal::builder(deal.tenant.clone(), SignalKind::new(kind).expect("slug"))
        .subject(subject)
        .text(text)
        .severity(severity)
        .observed_at(now())
        .cause(cause.finish())
        .evidence(serde_json::json!({ "labels": evidence }))
        .build()
        .expect("valid")
}

/// `YYYY-MM-DDTHH:MM:SSZ` without chrono's format-string parser, as a careful hand-written loop
/// would do it (the engine formats times the same way).
fn time_text(time: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let mut out = String::with_capacity(20);
    let mut digits = |value: u32, width: usize, separator: char| {
        let mut buffer = [b'0'; 4];
        let mut rest = value;
        for slot in buffer[..width].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.push_str(std::str::from_utf8(&buffer[..width]).expect("ASCII digits"));
        out.push(separator);
    };
    digits(time.year().unsigned_abs(), 4, '-');
    digits(time.month(), 2, '-');
    digits(time.day(), 2, 'T');
    digits(time.hour(), 2, ':');
    digits(time.minute(), 2, ':');
    digits(time.second(), 2, 'Z');
    out
}

/// The same checks the generic pack makes on deals, written by hand.
fn hand_loop(now: DateTime<Utc>, records: &[Record]) -> Vec<Signal> {
    let mut fired = Vec::new();
    for record in records {
        let Record::Deal(deal) = record else { continue };
        let open = !deal.stage.is_closed();
        if let (true, Some(last)) = (open, deal.last_activity_at()) {
            let idle = (now - last).num_days();
            if idle > 7 {
                let text = format!("Stale deal: {} — {idle} days since last action.", deal.contact_name);
                fired.push(signal_with(
                    deal,
                    "stale-deal-nudge",
                    format!("Deal with {}", deal.contact_name),
                    text,
                    Severity::Notice,
                    Some(time_text(last)),
                ));
            }
        }
        let last = deal.last_activity_at();
        if let (true, Some(value), Some(probability), Some(last)) =
            (open, deal.value_cents, deal.probability, last)
            && value >= 1_000_000
            && probability >= 70
            && now - last <= TimeDelta::days(3)
        {
            let text = format!("Hot opportunity: {} is {probability}% likely and active.", deal.contact_name);
            fired.push(signal(
                deal,
                "hot-opportunity-flag",
                format!("Deal with {}", deal.contact_name),
                text,
                Severity::Warning,
            ));
        }
        if let (true, Some(close)) = (open, deal.expected_close_at)
            && now - close > TimeDelta::zero()
        {
            let text = format!(
                "The deal with {} was expected to close on {}.",
                deal.contact_name,
                &time_text(close)[..10]
            );
            fired.push(signal(
                deal,
                "close-date-passed",
                format!("Deal with {}", deal.contact_name),
                text,
                Severity::Notice,
            ));
        }
        if let (true, Some(created)) = (open, deal.created_at)
            && now - created > TimeDelta::days(3)
            && deal.next_step_at.is_none_or(|next| next < now)
        {
            let text = format!("The deal with {} has no next step planned.", deal.contact_name);
            fired.push(signal(
                deal,
                "deal-without-next-step",
                format!("Deal with {}", deal.contact_name),
                text,
                Severity::Notice,
            ));
        }
    }
    fired
}

/// The CPU time this thread has run so far, from `/proc/thread-self/schedstat` (nanoseconds on
/// the CPU): unlike wall time it does not count the time other engineers' processes held the
/// core, so single-core ratios stay meaningful on a loaded machine. `None` where unavailable.
fn thread_cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// The least CPU time (wall time where CPU time is unavailable) of `runs` runs of `work`.
fn best_cpu_of<T>(runs: usize, mut work: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let (cpu, wall) = (thread_cpu_time(), Instant::now());
            black_box(work());
            match (cpu, thread_cpu_time()) {
                (Some(before), Some(after)) => after.saturating_sub(before),
                _ => wall.elapsed(),
            }
        })
        .min()
        .unwrap_or_default()
}

fn best_of<T>(runs: usize, mut work: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(work());
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn comparison(records: &[Record]) {
    let now = now();
    let one_core = generic_engine(1);
    let all_cores = generic_engine(std::thread::available_parallelism().map_or(1, usize::from));
    let engine_count = with_trace(false, || one_core.evaluate_batch(now, records).len());
    let hand_count = hand_loop(now, records).len();
    let engine_trace_count = one_core.evaluate_batch(now, records).len();
    println!(
        "deals: {DEALS}; signals: engine {engine_count}, hand loop {hand_count}, engine traced {engine_trace_count}"
    );

    // The machine is shared: the four figures are measured in interleaved rounds and the best
    // of each kept, so that a burst of load hits them alike; the one-core figures are this
    // thread's CPU time, the all-cores figure is wall time (what the goal is about).
    let (mut hand, mut engine_off, mut engine_on, mut parallel) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..5 {
        hand = hand.min(best_cpu_of(1, || hand_loop(now, records)));
        engine_off =
            engine_off.min(best_cpu_of(1, || with_trace(false, || one_core.evaluate_batch(now, records))));
        engine_on = engine_on.min(best_cpu_of(1, || one_core.evaluate_batch(now, records)));
        parallel = parallel.min(best_of(1, || all_cores.evaluate_batch(now, records)));
    }
    let evaluations = (DEALS * one_core.ruliads().len()) as f64;
    let per_second = |duration: Duration| evaluations / duration.as_secs_f64();
    println!(
        "hand loop, 1 core (CPU time): {:>8.1} ms ({:.2e} rule evaluations/s)",
        hand.as_secs_f64() * 1e3,
        per_second(hand)
    );
    println!(
        "generic pack, 1 core, trace off: {:>5.1} ms ({:.2e} rule evaluations/s) = {:.2}x the hand loop (goal >= 0.8x)",
        engine_off.as_secs_f64() * 1e3,
        per_second(engine_off),
        hand.as_secs_f64() / engine_off.as_secs_f64()
    );
    println!(
        "generic pack, 1 core, trace on:  {:>5.1} ms = {:+.1} % over trace off (goal <= 10 %)",
        engine_on.as_secs_f64() * 1e3,
        (engine_on.as_secs_f64() / engine_off.as_secs_f64() - 1.0) * 100.0
    );
    println!(
        "generic pack, all cores, trace on: {:>3.1} ms for the whole batch (goal < 1000 ms)",
        parallel.as_secs_f64() * 1e3
    );
}

fn percentile(samples: &mut [Duration], fraction: f64) -> Duration {
    samples.sort_unstable();
    let index = ((samples.len() as f64 * fraction) as usize).min(samples.len().saturating_sub(1));
    samples.get(index).copied().unwrap_or_default()
}

/// Per decision: the bare rule, then the full gate on the engine's path ([`Gate::round`]: rule +
/// inhibition + repeat + flapping + grouping + cause claim + trust gate), with the cause claimed
/// in memory and in SQLite. Each decision is one round at its own second, so that every
/// decision's group is due and goes through the claim and the trust gate.
fn gate(records: &[Record]) {
    use sos_ruliads::Ruliad;
    use sos_ruliads::engine::Fired;
    use sos_ruliads::gate::Gate;
    use sos_ruliads::grouping::{GroupingConfig, InhibitRule};
    use sos_ruliads::store::{MemoryStore, SqliteStore};
    use sos_ruliads::trust::{Decision, Feedback, TrustConfig};

    const DECISIONS: usize = 20_000;
    let now = now();
    let rule = sos_ruliads::catalog::build("stale-deal-nudge", &serde_json::Value::Null).expect("defaults");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let open_sqlite = |name: &str| {
        runtime.block_on(async {
            // No check before each acquire: sqlx runs the connection on its own thread, and the check
            // is one more round trip to it (see docs/ruliads.md, "Persisted state").
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .test_before_acquire(false)
                .connect_with(
                    sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(dir.path().join(name))
                        .create_if_missing(true)
                        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal),
                )
                .await
                .expect("sqlite");
            sos_ruliads::store::sqlite_migrator().run(&pool).await.expect("migrations");
            SqliteStore::new(pool)
        })
    };
    let sqlite = open_sqlite("bench.sqlite");
    // A second database for the batched rounds, which decide the same causes again.
    let batched_sqlite = open_sqlite("batched.sqlite");
    let stale: Vec<&Record> =
        records.iter().filter(|record| rule.evaluate(now, record).fired()).take(DECISIONS).collect();

    let mut bare = Vec::with_capacity(stale.len());
    for record in &stale {
        // The complete signal, `because` line included: what the rule alone hands a person.
        let start = Instant::now();
        black_box(rule.evaluate(now, record).into_signal());
        bare.push(start.elapsed());
    }

    let trusted_gate = || {
        let grouping = GroupingConfig {
            group_wait_seconds: 0,
            group_interval_seconds: 1,
            inhibit: vec![InhibitRule {
                source: "deal-lost".into(),
                target: "stale-deal-nudge".into(),
                equal: vec!["deal_id".into()],
            }],
            ..GroupingConfig::default()
        };
        // No feedback comes in the benchmark: unanswered signals must not count as ignored (the
        // budget would fall to the floor after 10,000 of them, as it should in real life).
        let trust = TrustConfig {
            ceiling_per_day: 1e9,
            initial_per_day: 1e9,
            ignore_factor: 1.0,
            ..TrustConfig::default()
        };
        let planted = now - TimeDelta::days(30);
        let mut gate = Gate::new(grouping, trust, planted).expect("valid");
        let tenant = "acme".parse().expect("tenant");
        let trust = gate.trust_mut();
        trust.introduce(planted, &tenant, "Nova").expect("valid name");
        for _ in 0..20 {
            trust.observe_message();
        }
        let insight = sos_ruliads::Explain::new()
            .fire(sos_ruliads::Draft::new(&tenant, "lead-rhythm", planted).subject("Leads").text("Tuesdays."))
            .into_signal()
            .expect("valid");
        let at = planted + TimeDelta::days(5);
        assert_eq!(trust.offer(at, insight.clone(), sos_ruliads::Class::Insight), Decision::Release);
        trust.feedback(at, insight.tenant(), insight.id(), Feedback::Accepted);
        gate
    };
    // Returns (full decision, gate part) samples.
    /// One round of the gate; returns how many signals it released.
    type Round<'a> = &'a dyn Fn(&mut Gate, DateTime<Utc>, Vec<Fired>) -> usize;
    let run = |claim: Round<'_>| {
        let mut gate = trusted_gate();
        let (mut full, mut gated) = (Vec::with_capacity(stale.len()), Vec::with_capacity(stale.len()));
        let mut released = 0;
        for (index, record) in stale.iter().enumerate() {
            let at = now + TimeDelta::seconds(index as i64);
            let start = Instant::now();
            // As the engine hands it over: the `because` line is written when the signal joins
            // its group, inside the gate.
            let fired =
                Fired::from_evaluation(index, 0, rule.class(), rule.evaluate(at, record)).expect("fires");
            let rule_done = Instant::now();
            released += claim(&mut gate, at, vec![fired]);
            let end = Instant::now();
            full.push(end - start);
            gated.push(end - rule_done);
        }
        assert_eq!(released, stale.len(), "every decision went through the claim and the trust gate");
        (full, gated)
    };
    let memory = MemoryStore::new();
    let (mut in_memory, mut memory_gate) = run(&|gate, at, fired| {
        futures::executor::block_on(gate.round(&memory, at, fired))
            .expect("store works")
            .released_signals()
            .count()
    });
    let (mut with_sqlite, mut sqlite_gate) = run(&|gate, at, fired| {
        runtime.block_on(gate.round(&sqlite, at, fired)).expect("store works").released_signals().count()
    });
    // Rounds of several decisions, as the engine hands the gate a whole batch: the round's claims
    // go to SQLite in one statement. Per decision is the round's time divided by its decisions;
    // the latency of each decision is the whole round's.
    const PER_ROUND: usize = 20;
    let mut batched_rounds = Vec::with_capacity(stale.len() / PER_ROUND);
    {
        let mut gate = trusted_gate();
        let mut released = 0;
        for (index, records) in stale.chunks(PER_ROUND).enumerate() {
            let at = now + TimeDelta::days(1) + TimeDelta::seconds(index as i64);
            let start = Instant::now();
            let fired: Vec<Fired> = records
                .iter()
                .enumerate()
                .map(|(entity, record)| {
                    Fired::from_evaluation(entity, 0, rule.class(), rule.evaluate(at, record)).expect("fires")
                })
                .collect();
            let round = runtime.block_on(gate.round(&batched_sqlite, at, fired)).expect("store works");
            released += round.released_signals().count();
            batched_rounds.push(start.elapsed());
        }
        assert_eq!(released, stale.len(), "every decision went through the claim and the trust gate");
    }
    let us = |duration: Duration| duration.as_secs_f64() * 1e6;
    let bare_p50 = percentile(&mut bare, 0.5);
    println!(
        "bare rule per decision (evaluate + build the signal): p50 {:>7.2} µs, p99 {:>7.2} µs",
        us(bare_p50),
        us(percentile(&mut bare, 0.99))
    );
    let memory_p50 = percentile(&mut in_memory, 0.5);
    println!(
        "full gate in memory per decision:    p50 {:>7.2} µs ({:.2}x the bare rule, goal <= 2x), p99 {:>7.2} µs; \
         the gate alone: p50 {:>6.2} µs, p99 {:>6.2} µs (goal p99 < 1 µs)",
        us(memory_p50),
        memory_p50.as_secs_f64() / bare_p50.as_secs_f64(),
        us(percentile(&mut in_memory, 0.99)),
        us(percentile(&mut memory_gate, 0.5)),
        us(percentile(&mut memory_gate, 0.99)),
    );
    println!(
        "full gate, cause in SQLite:          p50 {:>7.2} µs, p99 {:>7.2} µs (goal < 1000 µs); the gate alone: p99 {:>7.2} µs",
        us(percentile(&mut with_sqlite, 0.5)),
        us(percentile(&mut with_sqlite, 0.99)),
        us(percentile(&mut sqlite_gate, 0.99)),
    );
    println!(
        "full gate, cause in SQLite, rounds of {PER_ROUND}: per decision p50 {:>7.2} µs, p99 {:>7.2} µs (the round's time / {PER_ROUND}; a round's p99 {:>7.2} µs)",
        us(percentile(&mut batched_rounds, 0.5)) / PER_ROUND as f64,
        us(percentile(&mut batched_rounds, 0.99)) / PER_ROUND as f64,
        us(percentile(&mut batched_rounds, 0.99)),
    );
}

fn main() {
    let records = deals();
    // Profiling aid: `RULIADS_ONLY=gate|hand|off|on` runs one part (`RULIADS_ROUNDS` times for
    // the loops, default 5; 1 is enough under an instruction-counting profiler).
    if let Ok(part) = std::env::var("RULIADS_ONLY") {
        let engine = generic_engine(1);
        let rounds = std::env::var("RULIADS_ROUNDS").ok().and_then(|rounds| rounds.parse().ok()).unwrap_or(5);
        for _ in 0..rounds {
            match part.as_str() {
                "gate" => return gate(&records),
                "hand" => drop(black_box(hand_loop(now(), &records))),
                "off" => drop(black_box(with_trace(false, || engine.evaluate_batch(now(), &records)))),
                _ => drop(black_box(engine.evaluate_batch(now(), &records))),
            }
        }
        return;
    }
    comparison(&records);
    gate(&records);

    let mut criterion = Criterion::default().sample_size(10).configure_from_args();
    let now = now();
    let one_core = generic_engine(1);
    let sample = &records[..100_000];
    let mut group = criterion.benchmark_group("generic-pack-100k-deals");
    group.throughput(Throughput::Elements(sample.len() as u64));
    group.bench_function("hand-loop", |bench| bench.iter(|| hand_loop(now, black_box(sample))));
    group.bench_function("engine-trace-off", |bench| {
        bench.iter(|| with_trace(false, || one_core.evaluate_batch(now, black_box(sample))))
    });
    group.bench_function("engine-trace-on", |bench| {
        bench.iter(|| one_core.evaluate_batch(now, black_box(sample)))
    });
    group.finish();
    criterion.final_summary();
}
