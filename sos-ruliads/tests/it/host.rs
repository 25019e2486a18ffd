//! A host defines its own entity and ruliad, and tests it with a fixture file.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sos_core::TenantId;
use sos_ruliads::{Draft, Evaluation, Explain, Predicate, Ruliad, fixture};

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
