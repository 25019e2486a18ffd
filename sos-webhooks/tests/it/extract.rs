//! The axum extractor `WebhookRequest`: the raw body, refused past its limit while it streams
//! in, whatever `Content-Length` claims.

use axum::body::Body;
use axum::extract::FromRequest as _;
use axum::response::IntoResponse as _;
use sos_webhooks::signature::{DEFAULT_BODY_LIMIT, StripeVerifier, sign_stripe};
use sos_webhooks::{Error, WebhookRequest};

#[tokio::test]
async fn extractor_keeps_raw_non_utf8_bytes_and_headers() {
    let body: Vec<u8> = vec![0xff, 0xfe, b'{', 0x00, b'}'];
    let header = sign_stripe("whsec_test", 1_700_000_000, &body);
    let request =
        http::Request::post("/").header("stripe-signature", &header).body(Body::from(body.clone())).unwrap();
    let delivery = WebhookRequest::<DEFAULT_BODY_LIMIT>::from_request(request, &()).await.unwrap();
    assert_eq!(delivery.body, body, "the bytes arrive untouched");
    let clock = sos_core::ManualClock::new(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
    StripeVerifier::new(["whsec_test"]).unwrap().verify(&delivery.headers, &delivery.body, &clock).unwrap();
}

#[tokio::test]
async fn extractor_refuses_a_streamed_body_past_the_limit_despite_a_small_content_length() {
    // A sender claims 10 bytes and streams chunks forever: reading stops past the limit.
    let endless = futures::stream::repeat_with(|| Ok::<_, std::io::Error>(bytes_of(4096)));
    let request =
        http::Request::post("/").header("content-length", "10").body(Body::from_stream(endless)).unwrap();
    let refused = WebhookRequest::<65_536>::from_request(request, &()).await;
    assert!(matches!(refused, Err(Error::BodyTooLarge { limit: 65_536 })), "{refused:?}");
    assert_eq!(refused.unwrap_err().into_response().status().as_u16(), 413);
    // Exactly at the limit is accepted; one byte more is not.
    let at_limit = http::Request::post("/").body(Body::from(vec![7u8; 1024])).unwrap();
    assert_eq!(WebhookRequest::<1024>::from_request(at_limit, &()).await.unwrap().body.len(), 1024);
    let over = http::Request::post("/").body(Body::from(vec![7u8; 1025])).unwrap();
    assert!(matches!(WebhookRequest::<1024>::from_request(over, &()).await, Err(Error::BodyTooLarge { .. })));
}

#[tokio::test]
async fn extractor_reports_a_failed_body_stream_as_retryable() {
    let broken = futures::stream::iter([
        Ok(bytes_of(10)),
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the client went away")),
    ]);
    let request = http::Request::post("/").body(Body::from_stream(broken)).unwrap();
    let failed = WebhookRequest::<DEFAULT_BODY_LIMIT>::from_request(request, &()).await;
    assert!(matches!(failed, Err(Error::BodyRead(_))), "{failed:?}");
    assert_eq!(failed.unwrap_err().into_response().status().as_u16(), 500);
}

fn bytes_of(len: usize) -> Vec<u8> {
    vec![b'x'; len]
}

/// Review item: a declared `Content-Length` over the limit is answered 413 before a single
/// byte of the body is read (the body here panics if it is ever polled).
#[tokio::test]
async fn extractor_refuses_an_oversized_content_length_before_reading() {
    for declared in ["1025", "18446744073709551615", "99999999999999999999999"] {
        let untouchable =
            futures::stream::poll_fn(|_| -> std::task::Poll<Option<Result<Vec<u8>, std::io::Error>>> {
                panic!("the body was read although Content-Length was over the limit")
            });
        let request = http::Request::post("/")
            .header("content-length", declared)
            .body(Body::from_stream(untouchable))
            .unwrap();
        let refused = WebhookRequest::<1024>::from_request(request, &()).await;
        assert!(matches!(refused, Err(Error::BodyTooLarge { limit: 1024 })), "{declared}: {refused:?}");
        assert_eq!(refused.unwrap_err().into_response().status().as_u16(), 413);
    }
    // A declared length at the limit is read (and still held to the limit).
    let at_limit =
        http::Request::post("/").header("content-length", "1024").body(Body::from(vec![7u8; 1024])).unwrap();
    assert_eq!(WebhookRequest::<1024>::from_request(at_limit, &()).await.unwrap().body.len(), 1024);
}
