//! Every outcome and error maps to the HTTP answer a provider expects.

use sos_core::SystemClock;
use sos_webhooks::signature::{GithubVerifier, StripeVerifier};
use sos_webhooks::{Error, Outcome, RunError};

#[test]
fn outcomes_map_to_status_and_json() {
    let cases = [
        (Outcome::Processed(()), 200, "processed"),
        (Outcome::AlreadyProcessed, 200, "already_processed"),
        (Outcome::RetryInFlight, 503, "retry_in_flight"),
        (Outcome::PriorAttemptFailed, 500, "prior_attempt_failed"),
        (Outcome::BodyMismatch, 409, "body_mismatch"),
    ];
    for (outcome, status, name) in cases {
        let answer = outcome.to_http();
        assert_eq!(answer.status().as_u16(), status, "{outcome:?}");
        let json: serde_json::Value = serde_json::from_str(answer.body()).unwrap();
        assert_eq!(json["outcome"], name);
        let response = answer.into_http_response();
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.headers().contains_key("retry-after"), status == 503);
    }
}

#[test]
fn verification_errors_map_to_client_errors() {
    let headers = http::HeaderMap::new();
    let missing =
        StripeVerifier::new(["whsec_a"]).unwrap().verify(&headers, b"{}", &SystemClock).unwrap_err();
    assert_eq!(missing.to_http().status().as_u16(), 400);
    let mismatch = GithubVerifier::new(["a"])
        .unwrap()
        .verify_header("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", b"x")
        .unwrap_err();
    assert_eq!(mismatch.to_http().status().as_u16(), 401);
    assert_eq!(Error::BodyTooLarge { limit: 1 }.to_http().status().as_u16(), 413);
    assert_eq!(RunError::<String>::Handler("boom".into()).to_http().status().as_u16(), 500);
}

#[cfg(feature = "axum")]
#[test]
fn axum_responses_carry_status_headers_and_body() {
    use axum::response::IntoResponse as _;

    let response = Outcome::<()>::RetryInFlight.into_response();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(response.headers()["content-type"], "application/json");
    let response = Outcome::Processed(42).into_response();
    assert_eq!(response.status().as_u16(), 200);
    let response = RunError::Handler("boom").into_response();
    assert_eq!(response.status().as_u16(), 500);
    let response = Error::BodyTooLarge { limit: 1 }.into_response();
    assert_eq!(response.status().as_u16(), 413);
    let body = futures::executor::block_on(axum::body::to_bytes(
        Outcome::<()>::BodyMismatch.into_response().into_body(),
        1024,
    ))
    .unwrap();
    assert_eq!(&body[..], br#"{"outcome":"body_mismatch"}"#);
}
