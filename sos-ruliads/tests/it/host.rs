//! A host defines its own entity and ruliad, and tests it with a fixture file.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sos_core::TenantId;
use sos_ruliads::{Class, Draft, Evaluation, Explain, Predicate, Ruliad, fixture};

use crate::crate_path;

#[derive(Debug, Deserialize)]
struct Invoice {
    tenant: TenantId,
    customer: String,
    amount: i64,
}

#[derive(Debug)]
struct BigInvoice;

impl Ruliad<Invoice> for BigInvoice {
    fn name(&self) -> &str {
        "big-invoice"
    }
    // An observation for people; a pack of interventions alone could never speak (see the
    // trust gate), so this host's only ruliad is an insight.
    fn class(&self) -> Class {
        Class::Insight
    }
    fn evaluate(&self, now: DateTime<Utc>, invoice: &Invoice) -> Evaluation {
        let mut why = Explain::new();
        if !why.check(Predicate::gt("amount", invoice.amount, 10_000)) {
            return why.stop();
        }
        why.fire(
            Draft::new(&invoice.tenant, "big-invoice", now).subject(&invoice.customer).text("A big invoice."),
        )
    }
}

#[test]
fn a_host_ruliad_passes_its_fixture_in_one_call() {
    let report =
        fixture::check_file(&BigInvoice, &crate_path("tests/it/big-invoice.json")).expect("fixture passes");
    assert_eq!(report.cases.len(), 3);
}

#[test]
fn a_fixture_for_another_ruliad_is_refused() {
    let error =
        fixture::check_file(&BigInvoice, &crate_path("fixtures/lead-spike.json")).expect_err("wrong ruliad");
    assert!(error.to_string().contains("lead-spike"), "{error}");
}

#[test]
fn a_host_ruliad_is_enabled_from_a_seed_json() {
    use sos_ruliads::pack::{Pack, Registry};
    let mut registry = Registry::<Invoice>::new();
    registry.register("big-invoice", |_params| Ok(Box::new(BigInvoice)));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("billing")).expect("mkdir");
    std::fs::write(
        dir.path().join("billing/seed.json"),
        r#"{ "agent_role": "billing assistant", "ruliads_enabled": ["big-invoice"] }"#,
    )
    .expect("write");
    let packs = Pack::load_dir_with(&registry, dir.path()).expect("loads");
    let invoice =
        Invoice { tenant: "acme".parse().expect("tenant"), customer: "Globex".into(), amount: 50_000 };
    let now = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2026, 3, 10, 9, 0, 0).single().expect("date");
    let fired = packs[0].engine().evaluate_batch(now, &[invoice]);
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].signal.subject(), "Globex");

    std::fs::write(
        dir.path().join("billing/seed.json"),
        r#"{ "agent_role": "x", "ruliads_enabled": ["stale-deal-nudge"] }"#,
    )
    .expect("write");
    let error = Pack::load_dir_with(&registry, dir.path()).expect_err("not registered").to_string();
    assert!(error.contains("known names: big-invoice"), "{error}");
}
