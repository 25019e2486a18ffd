//! A verified webhook body is still outside bytes: parsing it into the change it asks for
//! returns a typed 400 for anything malformed and never panics, and an accepted upsert always
//! belongs to the URL's tenant. The proptest mirror runs in `sos-server`'s unit tests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_server::{Change, InboundEvent, ProviderKind};

fuzz_target!(|data: &[u8]| {
    let tenant: sos_core::TenantId = "acme".parse().expect("a valid tenant id");
    for provider in [ProviderKind::Stripe, ProviderKind::Standard] {
        match InboundEvent::parse(&tenant, provider, Some("msg_fuzz"), data) {
            Ok(event) => {
                if let Change::Upsert(record) = &event.change {
                    use sos_ruliads::Entity as _;
                    assert_eq!(record.tenant(), &tenant);
                }
            }
            Err(error) => assert_eq!(error.status().as_u16(), 400),
        }
    }
});
