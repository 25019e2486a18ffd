//! Signature verification allocates nothing per call: a counting allocator watches every
//! provider's verifier, through raw header values and through an `http::HeaderMap`.

use sos_webhooks::signature::{
    GithubVerifier, ShopifyVerifier, SlackVerifier, StandardWebhooksVerifier, StripeVerifier, sign_github,
    sign_shopify, sign_slack, sign_standard, sign_stripe,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

/// The system allocator, counting every allocation of this test binary.
#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// How many allocations `f` makes, as the fewest over several tries: the counter is global,
/// so other tests running at the same time in this process (under `cargo test`) can only add
/// to a try, never hide an allocation `f` makes each time.
fn allocations(f: impl Fn()) -> usize {
    (0..50)
        .map(|_| {
            let region = Region::new(ALLOCATOR);
            f();
            let change = region.change();
            change.allocations + change.reallocations
        })
        .min()
        .unwrap_or(usize::MAX)
}

/// A named verification call.
type Check<'a> = (&'static str, Box<dyn Fn() + 'a>);

#[test]
fn signature_verification_allocates_nothing_per_call() {
    const NOW: i64 = 1_700_000_000;
    let clock = sos_core::ManualClock::new(chrono::DateTime::from_timestamp(NOW, 0).unwrap());
    let body: Vec<u8> = (0..20 * 1024).map(|i| (i % 251) as u8).collect();
    let timestamp = NOW.to_string();
    let standard_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    // Two secrets each (a rotation), the matching one last, so every key is tried.
    let stripe = StripeVerifier::new(["whsec_old", "whsec_new"]).unwrap();
    let stripe_header = sign_stripe("whsec_new", NOW, &body);
    let standard = StandardWebhooksVerifier::new(["whsec_b2xkb2xkb2xk", standard_secret]).unwrap();
    let standard_header = sign_standard(standard_secret, "msg_1", NOW, &body).unwrap();
    let github = GithubVerifier::new(["old", "new"]).unwrap();
    let github_header = sign_github("new", &body);
    let slack = SlackVerifier::new(["old", "new"]).unwrap();
    let slack_header = sign_slack("new", NOW, &body);
    let shopify = ShopifyVerifier::new(["old", "new"]).unwrap();
    let shopify_header = sign_shopify("new", &body);
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("stripe-signature", stripe_header.as_str()),
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", timestamp.as_str()),
        ("webhook-signature", standard_header.as_str()),
        ("x-hub-signature-256", github_header.as_str()),
        ("x-slack-signature", slack_header.as_str()),
        ("x-slack-request-timestamp", timestamp.as_str()),
        ("x-shopify-hmac-sha256", shopify_header.as_str()),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    let checks: [Check<'_>; 10] = [
        ("stripe", Box::new(|| stripe.verify_header(&stripe_header, &body, &clock).unwrap())),
        ("stripe map", Box::new(|| stripe.verify(&headers, &body, &clock).unwrap())),
        (
            "standard",
            Box::new(|| {
                standard.verify_header("msg_1", &timestamp, &standard_header, &body, &clock).unwrap()
            }),
        ),
        ("standard map", Box::new(|| standard.verify(&headers, &body, &clock).unwrap())),
        ("github", Box::new(|| github.verify_header(&github_header, &body).unwrap())),
        ("github map", Box::new(|| github.verify(&headers, &body).unwrap())),
        ("slack", Box::new(|| slack.verify_header(&slack_header, &timestamp, &body, &clock).unwrap())),
        ("slack map", Box::new(|| slack.verify(&headers, &body, &clock).unwrap())),
        ("shopify", Box::new(|| shopify.verify_header(&shopify_header, &body).unwrap())),
        ("shopify map", Box::new(|| shopify.verify(&headers, &body).unwrap())),
    ];
    for (name, check) in &checks {
        check(); // a first call, outside the count
        let count = allocations(check);
        assert_eq!(count, 0, "{name}: verification allocated {count} times in one call");
    }
    // The counter works: building a verifier allocates.
    assert!(allocations(|| drop(GithubVerifier::new(["x"]).unwrap())) > 0);
}
