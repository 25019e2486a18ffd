use std::path::Path;

use sos_ruliads::Error;
use sos_ruliads::crm::Stage;
use sos_ruliads::pack::{self, Pack};

use crate::{at, crate_path, deal};

fn write(dir: &Path, vertical: &str, text: &str) {
    std::fs::create_dir_all(dir.join(vertical)).expect("mkdir");
    std::fs::write(dir.join(vertical).join("seed.json"), text).expect("write");
}

fn pack_error(text: &str) -> (String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "bad", text);
    match Pack::load_dir(dir.path()) {
        Err(Error::Pack { file, field, reason }) => {
            assert!(file.ends_with("bad/seed.json"), "{}", file.display());
            (field, reason)
        }
        other => panic!("expected a pack error, got {other:?}"),
    }
}

#[test]
fn the_shipped_packs_load_in_stable_order() {
    let packs = Pack::load_dir(&crate_path("../examples/packs")).expect("shipped packs are valid");
    let names: Vec<_> = packs.iter().map(Pack::vertical).collect();
    assert_eq!(names, ["dental", "generic", "grants", "real-estate"]);
    let real_estate = &packs[3];
    assert_eq!(real_estate.compliance(), ["RECO", "REBBA", "PIPEDA"]);
    assert!(real_estate.engine().names().contains(&"stale-deal-nudge"));
    // real-estate makes negotiation stale after 2 days.
    let fired = real_estate.engine().evaluate_batch(at(10, 9), &[deal("d1", Stage::Negotiation, Some(7))]);
    assert_eq!(fired.len(), 1);
    let checked = pack::check(&crate_path("../examples/packs")).expect("listable");
    assert!(checked.iter().all(|checked| checked.result.is_ok()));
}

#[test]
fn dot_directories_and_files_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "zeta", r#"{"agent_role":"x","ruliads_enabled":["lead-spike"]}"#);
    write(dir.path(), "alpha", r#"{"agent_role":"x","ruliads_enabled":[]}"#);
    write(dir.path(), ".hidden", "not json at all");
    std::fs::write(dir.path().join("README.md"), "notes").expect("write");
    let packs = Pack::load_dir(dir.path()).expect("loads");
    let names: Vec<_> = packs.iter().map(Pack::vertical).collect();
    assert_eq!(names, ["alpha", "zeta"]);
}

#[test]
fn unknown_ruliad_names_the_field_and_the_known_names() {
    let (field, reason) =
        pack_error(r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","stale-deals"]}"#);
    assert_eq!(field, "ruliads_enabled[1]");
    assert!(reason.contains("stale-deals") && reason.contains("hot-opportunity-flag"), "{reason}");
}

#[test]
fn bad_parameter_names_the_parameter() {
    let (field, reason) = pack_error(
        r#"{"agent_role":"x","ruliads_enabled":[{"name":"stale-deal-nudge","params":{"stale_days":0}}]}"#,
    );
    assert_eq!(field, "ruliads_enabled[0].params.stale_days");
    assert!(reason.contains("at least 1"), "{reason}");
    let (field, reason) = pack_error(
        r#"{"agent_role":"x","ruliads_enabled":[{"name":"stale-deal-nudge","params":{"stale":3}}]}"#,
    );
    assert_eq!(field, "ruliads_enabled[0].params.stale");
    assert!(reason.contains("stale_days"), "the known parameters are named: {reason}");
}

#[test]
fn duplicate_is_an_error() {
    let (field, reason) =
        pack_error(r#"{"agent_role":"x","ruliads_enabled":["lead-spike",{"name":"lead-spike"}]}"#);
    assert_eq!(field, "ruliads_enabled[1]");
    assert!(reason.contains("duplicate"), "{reason}");
}

#[test]
fn malformed_json_and_shapes_are_errors() {
    let (field, reason) = pack_error(r#"{"agent_role": "x", "ruliads_enabled": ["#);
    assert_eq!(field, "(root)");
    assert!(reason.contains("malformed JSON"), "{reason}");
    assert_eq!(pack_error("[]").0, "(root)");
    assert_eq!(pack_error(r#"{"ruliads_enabled":[]}"#).0, "agent_role");
    assert_eq!(pack_error(r#"{"agent_role":"x"}"#).0, "ruliads_enabled");
    assert_eq!(pack_error(r#"{"agent_role":"x","ruliads_enabled":[3]}"#).0, "ruliads_enabled[0]");
    let (field, reason) = pack_error(r#"{"agent_role":"x","ruliads_enabled":[],"ruliad":[]}"#);
    assert_eq!(field, "ruliad");
    assert!(reason.contains("ruliads_enabled"), "{reason}");
    let (field, reason) =
        pack_error(r#"{"agent_role":"x","ruliads_enabled":[],"trust":{"floor_per_day":0}}"#);
    assert_eq!(field, "trust");
    assert!(reason.contains("floor_per_day"), "{reason}");
}

#[test]
fn a_vertical_without_seed_json_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    assert!(matches!(Pack::load_dir(dir.path()), Err(Error::Pack { field, .. }) if field == "(file)"));
}

#[test]
fn check_reports_every_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "good", r#"{"agent_role":"x","ruliads_enabled":["lead-spike"]}"#);
    write(dir.path(), "bad", r#"{"agent_role":"x","ruliads_enabled":["nope"]}"#);
    let checked = pack::check(dir.path()).expect("listable");
    assert_eq!(checked.len(), 2);
    assert!(checked[0].result.is_err());
    assert_eq!(checked[1].result.as_ref().expect("good"), &["lead-spike".to_owned()]);
}

#[test]
fn grouping_timers_and_inhibitions_load_from_the_pack() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "crm",
        r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","close-date-passed","lead-rhythm"],
            "grouping":{"group_wait_seconds":60,"inhibit":[
              {"source":"close-date-passed","target":"stale-deal-nudge","equal":["deal_id"]}]}}"#,
    );
    let packs = Pack::load_dir(dir.path()).expect("loads");
    assert_eq!(packs[0].grouping().group_wait_seconds, 60);
    assert_eq!(packs[0].grouping().inhibit[0].equal, ["deal_id"]);
    let (field, reason) = pack_error(
        r#"{"agent_role":"x","ruliads_enabled":["lead-rhythm"],"grouping":{"group_interval_seconds":0}}"#,
    );
    assert_eq!(field, "grouping.group_interval_seconds");
    assert!(reason.contains("positive"), "{reason}");
    let (field, reason) =
        pack_error(r#"{"agent_role":"x","ruliads_enabled":["lead-rhythm"],"grouping":{"wait":1}}"#);
    assert_eq!(field, "grouping");
    assert!(reason.contains("group_wait_seconds"), "the known fields are named: {reason}");
}

#[test]
fn unreachable_route_inhibition_of_a_ruliad_the_pack_does_not_enable() {
    let (field, reason) = pack_error(
        r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","lead-rhythm"],
            "grouping":{"inhibit":[{"source":"deal-lost","target":"stale-deal-nudge","equal":["deal_id"]}]}}"#,
    );
    assert_eq!(field, "grouping.inhibit[0].source");
    assert!(reason.contains("\"deal-lost\"") && reason.contains("stale-deal-nudge, lead-rhythm"), "{reason}");
    let (field, _) = pack_error(
        r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","lead-rhythm"],
            "grouping":{"inhibit":[{"source":"stale-deal-nudge","target":"stale-deals"}]}}"#,
    );
    assert_eq!(field, "grouping.inhibit[0].target");
}

#[test]
fn unreachable_route_inhibition_on_a_label_the_ruliad_never_sets() {
    let (field, reason) = pack_error(
        r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","follow-up-overdue","lead-rhythm"],
            "grouping":{"inhibit":[{"source":"follow-up-overdue","target":"stale-deal-nudge","equal":["deal_id"]}]}}"#,
    );
    assert_eq!(field, "grouping.inhibit[0].equal[0]");
    assert!(reason.contains("\"follow-up-overdue\" never sets label \"deal_id\""), "{reason}");
    assert!(reason.contains("its labels: contact_id"), "{reason}");
}

#[test]
fn unreachable_route_inhibition_cycle() {
    let (field, reason) = pack_error(
        r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","lead-rhythm"],
            "grouping":{"inhibit":[{"source":"stale-deal-nudge","target":"stale-deal-nudge"}]}}"#,
    );
    assert_eq!(field, "grouping.inhibit[0]");
    assert!(reason.contains("stale-deal-nudge -> stale-deal-nudge"), "{reason}");
    let (field, reason) = pack_error(
        r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","close-date-passed","stuck-in-stage","lead-rhythm"],
            "grouping":{"inhibit":[
              {"source":"stale-deal-nudge","target":"close-date-passed","equal":["deal_id"]},
              {"source":"close-date-passed","target":"stuck-in-stage","equal":["deal_id"]},
              {"source":"stuck-in-stage","target":"stale-deal-nudge","equal":["deal_id"]}]}}"#,
    );
    assert_eq!(field, "grouping.inhibit[0]");
    assert!(
        reason.contains("stale-deal-nudge -> close-date-passed -> stuck-in-stage -> stale-deal-nudge"),
        "{reason}"
    );
}

#[test]
fn unreachable_route_interventions_without_an_insight() {
    let (field, reason) =
        pack_error(r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","follow-up-overdue"]}"#);
    assert_eq!(field, "ruliads_enabled[0]");
    assert!(reason.contains("\"stale-deal-nudge\" is an intervention"), "{reason}");
    assert!(reason.contains("lead-rhythm, lead-spike, renewal-upcoming"), "the known insights: {reason}");
    // An insight anywhere in the pack opens the route.
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "ok",
        r#"{"agent_role":"x","ruliads_enabled":["stale-deal-nudge","renewal-upcoming"]}"#,
    );
    assert!(Pack::load_dir(dir.path()).is_ok());
}
