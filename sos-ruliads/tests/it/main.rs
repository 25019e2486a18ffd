//! Integration tests of `sos-ruliads`, through the public API only.

mod catalog;
#[cfg(all(feature = "postgres", feature = "sqlite"))]
mod ceiling;
#[cfg(feature = "cli")]
mod cli;
mod combinators;
mod engine;
mod fuzz_mirror;
mod gate;
mod gate_allocations;
mod grouping;
mod host;
mod packs;
#[cfg(all(feature = "postgres", feature = "sqlite"))]
mod store;
mod trust;

use chrono::{DateTime, TimeZone, Utc};
use sos_ruliads::crm::{Deal, Record, Stage};

pub(crate) fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0).single().expect("valid test date")
}

pub(crate) fn deal(id: &str, stage: Stage, last_action_day: Option<u32>) -> Record {
    Record::Deal(Deal {
        tenant: "acme".parse().expect("valid tenant"),
        id: id.to_owned(),
        contact_name: format!("Contact {id}"),
        stage,
        value_cents: None,
        probability: None,
        last_action_at: last_action_day.map(|day| at(day, 9)),
        last_message_at: None,
        stage_entered_at: None,
        expected_close_at: None,
        next_step_at: None,
        created_at: None,
    })
}

pub(crate) fn crate_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}
