//! Outside bytes fed to the pack and fixture parsers must give a value or a typed error, never a
//! panic. Mirrored by the proptest `fuzz_mirror` in `tests/it/`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sos_ruliads::crm::Record;
use sos_ruliads::pack::Pack;

fuzz_target!(|bytes: &[u8]| {
    let _ = Pack::parse("fuzz", Path::new("seed.json"), bytes);
    let _ = sos_ruliads::fixture::parse::<Record>(Path::new("fixture.json"), bytes);
});
