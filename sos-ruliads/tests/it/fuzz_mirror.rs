//! Mirrors `fuzz/fuzz_targets/parse_pack_and_fixture.rs`: random bytes and random JSON-shaped
//! text never make the pack or fixture parsers panic.

use std::path::Path;

use proptest::prelude::*;
use sos_ruliads::crm::Record;
use sos_ruliads::pack::Pack;

fn parse_everything(bytes: &[u8]) {
    let _ = Pack::parse("fuzz", Path::new("seed.json"), bytes);
    let _ = sos_ruliads::fixture::parse::<Record>(Path::new("fixture.json"), bytes);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_everything(&bytes);
    }

    #[test]
    fn pack_shaped_text_never_panics(
        names in proptest::collection::vec("[a-z{}%-]{0,20}", 0..5),
        value in any::<i64>(),
        field in "[a-z_]{0,12}",
    ) {
        let entries: Vec<String> = names
            .iter()
            .map(|name| format!(r#"{{"name":"{name}","params":{{"{field}":{value}}}}}"#))
            .collect();
        let text = format!(r#"{{"agent_role":"x","ruliads_enabled":[{}],"trust":{{"{field}":{value}}}}}"#, entries.join(","));
        parse_everything(text.as_bytes());
    }
}

#[test]
fn every_shipped_pack_truncated_at_every_byte_is_an_error_not_a_panic() {
    let text =
        std::fs::read(crate::crate_path("../examples/packs/real-estate/seed.json")).expect("shipped pack");
    for end in 0..text.len() {
        let _ = Pack::parse("cut", Path::new("seed.json"), &text[..end]);
    }
    assert!(Pack::parse("whole", Path::new("seed.json"), &text).is_ok());
}
