//! RFC 3161 timestamps against a real TSA that no one here wrote: `openssl ts -reply` (OpenSSL 3)
//! with a throwaway CA and TSA certificate made in a temporary directory, behind a small local
//! HTTP server, so the HTTP client, the request encoder and the reply verifier all meet OpenSSL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sos_audit::Error;
use sos_audit::note::{Checkpoint, NoteSigner};
use sos_audit::timestamp::{
    FailureInfo, HttpTimestampAuthority, HttpTsaConfig, PkiStatus, TimestampAuthority, TimestampRequest,
    TimestampToken, TsaCertificate,
};
use sos_core::Sha256Digest;
use tempfile::TempDir;

/// The key of a test TSA.
#[derive(Debug, Clone, Copy)]
enum Key {
    Rsa,
    P256,
}

/// How a test TSA is set up.
#[derive(Debug, Clone, Copy)]
struct Options {
    key: Key,
    /// The `digests` the TSA accepts (a TSA without sha256 rejects our requests).
    digests: &'static str,
    /// Digits of a second in `genTime` (0 to 6).
    precision: u8,
    /// The hash of the ESS signing-certificate attribute: `sha1` makes OpenSSL emit
    /// `signingCertificate` (RFC 2634), any other `signingCertificateV2` (RFC 5035).
    ess_cert_id_alg: &'static str,
}

impl Options {
    fn key(key: Key) -> Self {
        Self { key, digests: "sha256, sha384, sha512", precision: 0, ess_cert_id_alg: "sha256" }
    }
}

/// Runs `openssl` with `args` in `dir`, panicking with its stderr when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("/usr/bin/openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(output.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// A throwaway CA and an `openssl ts` TSA in a temporary directory.
struct OpensslTsa {
    dir: TempDir,
    /// Serialises `openssl ts -reply`, which updates its serial-number file.
    lock: Mutex<()>,
}

impl OpensslTsa {
    fn new(options: Options) -> Arc<Self> {
        let tsa = Self { dir: tempfile::tempdir().expect("a temporary directory"), lock: Mutex::new(()) };
        let path = tsa.path();
        // Each test CA has its own name, as real CAs do, so two TSAs never share an issuer.
        let unique = path.file_name().expect("a temporary directory has a name").to_string_lossy();
        let subject = format!("/CN=sos-audit test CA {unique}");
        openssl(
            path,
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-subj", &subject, "-days", "2",
            ],
        );
        generate_key(path, options.key, "tsa.key");
        tsa.issue("tsa.key", "tsa.crt", "critical,timeStamping", "1001");
        let directory = path.display();
        let precision = options.precision;
        let digests = options.digests;
        let ess_cert_id_alg = options.ess_cert_id_alg;
        std::fs::write(
            path.join("tsa.cnf"),
            format!(
                "[ tsa ]\ndefault_tsa = test\n[ test ]\ndir = {directory}\nserial = $dir/serial\n\
                 crypto_device = builtin\nsigner_cert = $dir/tsa.crt\ncerts = $dir/ca.crt\n\
                 signer_key = $dir/tsa.key\nsigner_digest = sha256\ndefault_policy = 1.2.3.4.1\n\
                 digests = {digests}\naccuracy = secs:1, millisecs:500\n\
                 clock_precision_digits = {precision}\nordering = no\ntsa_name = yes\n\
                 ess_cert_id_chain = no\ness_cert_id_alg = {ess_cert_id_alg}\n"
            ),
        )
        .expect("write tsa.cnf");
        Arc::new(tsa)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a certificate for `key_file` from this CA with extendedKeyUsage `usage` (none when
    /// empty) and serial `serial`, subject `CN=sos-audit test TSA`.
    fn issue(&self, key_file: &str, certificate_file: &str, usage: &str, serial: &str) -> PathBuf {
        self.issue_for_days(key_file, certificate_file, usage, serial, "2")
    }

    /// As [`OpensslTsa::issue`], valid for `days` days.
    fn issue_for_days(
        &self,
        key_file: &str,
        certificate_file: &str,
        usage: &str,
        serial: &str,
        days: &str,
    ) -> PathBuf {
        let path = self.path();
        let request = format!("{certificate_file}.csr");
        openssl(
            path,
            &["req", "-new", "-key", key_file, "-subj", "/CN=sos-audit test TSA", "-out", &request],
        );
        let usage_line =
            if usage.is_empty() { String::new() } else { format!("extendedKeyUsage = {usage}\n") };
        let extensions = format!("{certificate_file}.ext");
        std::fs::write(
            path.join(&extensions),
            format!(
                "[tsa]\n{usage_line}subjectKeyIdentifier = hash\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n"
            ),
        )
        .expect("write the extensions");
        openssl(
            path,
            &[
                "x509",
                "-req",
                "-in",
                &request,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                serial,
                "-days",
                days,
                "-extfile",
                &extensions,
                "-extensions",
                "tsa",
                "-out",
                certificate_file,
            ],
        );
        path.join(certificate_file)
    }

    /// Makes the TSA sign with `certificate_file` (of its key `tsa.key`) from now on.
    fn sign_with(&self, certificate_file: &str) {
        let config = self.path().join("tsa.cnf");
        let text = std::fs::read_to_string(&config).expect("read tsa.cnf");
        let text =
            text.replace("signer_cert = $dir/tsa.crt", &format!("signer_cert = $dir/{certificate_file}"));
        std::fs::write(config, text).expect("write tsa.cnf");
    }

    fn certificate(&self) -> TsaCertificate {
        load_certificate(&self.path().join("tsa.crt")).expect("the TSA certificate loads")
    }

    /// `openssl ts -reply` for a DER query.
    fn reply(&self, query: &[u8]) -> Vec<u8> {
        let _serial = self.lock.lock().expect("no test panicked while holding the lock");
        let path = self.path();
        std::fs::write(path.join("query.tsq"), query).expect("write the query");
        openssl(
            path,
            &["ts", "-reply", "-config", "tsa.cnf", "-queryfile", "query.tsq", "-out", "reply.tsr"],
        );
        std::fs::read(path.join("reply.tsr")).expect("read the reply")
    }

    /// An `openssl ts -query` for `data`, with a nonce of OpenSSL's choosing.
    fn query_for(&self, data: &[u8]) -> Vec<u8> {
        let path = self.path();
        std::fs::write(path.join("other.bin"), data).expect("write the data");
        openssl(path, &["ts", "-query", "-data", "other.bin", "-sha256", "-cert", "-out", "other.tsq"]);
        std::fs::read(path.join("other.tsq")).expect("read the query")
    }

    /// `openssl ts -verify` of a stored token against `data` and this CA.
    fn openssl_verifies(&self, token: &[u8], data: &[u8]) -> bool {
        let path = self.path();
        std::fs::write(path.join("token.der"), token).expect("write the token");
        std::fs::write(path.join("data.bin"), data).expect("write the data");
        Command::new("/usr/bin/openssl")
            .args([
                "ts",
                "-verify",
                "-token_in",
                "-in",
                "token.der",
                "-data",
                "data.bin",
                "-CAfile",
                "ca.crt",
            ])
            .args(["-untrusted", "tsa.crt"])
            .current_dir(path)
            .output()
            .expect("openssl runs")
            .status
            .success()
    }
}

fn generate_key(dir: &Path, key: Key, file: &str) {
    match key {
        Key::Rsa => {
            openssl(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", file])
        }
        Key::P256 => openssl(
            dir,
            &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", file],
        ),
    }
}

fn load_certificate(path: &Path) -> sos_audit::Result<TsaCertificate> {
    TsaCertificate::from_pem(&std::fs::read_to_string(path).expect("read the certificate"))
}

/// What the local HTTP server does with a query.
#[derive(Clone)]
enum Behaviour {
    /// Pipes the query through `openssl ts -reply`.
    Honest,
    /// Answers the first query honestly and replays that reply to every later one.
    Replay(Arc<Mutex<Option<Vec<u8>>>>),
    /// Ignores the query and answers a query for other bytes.
    OtherBytes,
    /// Answers with this status, content type and body.
    Fixed { status: StatusCode, content_type: &'static str, body: Vec<u8> },
}

/// Serves `tsa` at `http://127.0.0.1:<port>/tsr` until the test's runtime ends.
async fn serve(tsa: Arc<OpensslTsa>, behaviour: Behaviour) -> String {
    let handler = move |request_headers: axum::http::HeaderMap, query: Bytes| {
        let tsa = Arc::clone(&tsa);
        let behaviour = behaviour.clone();
        async move {
            let content_type =
                request_headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
            if content_type != Some("application/timestamp-query") {
                return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
            }
            let reply = tokio::task::spawn_blocking(move || match behaviour {
                Behaviour::Honest => Ok(tsa.reply(&query)),
                Behaviour::Replay(recorded) => {
                    let mut recorded = recorded.lock().expect("no test panicked while holding the lock");
                    Ok(recorded.get_or_insert_with(|| tsa.reply(&query)).clone())
                }
                Behaviour::OtherBytes => Ok(tsa.reply(&tsa.query_for(b"some other checkpoint\n"))),
                Behaviour::Fixed { status, content_type, body } => Err((status, content_type, body)),
            })
            .await
            .expect("the TSA task does not panic");
            match reply {
                Ok(body) => ([(header::CONTENT_TYPE, "application/timestamp-reply")], body).into_response(),
                Err((status, content_type, body)) => Response::builder()
                    .status(status)
                    .header(header::CONTENT_TYPE, content_type)
                    .body(axum::body::Body::from(body))
                    .expect("a valid response"),
            }
        }
    };
    let router = axum::Router::new().route("/tsr", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
    let address = listener.local_addr().expect("a local address");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("the test server runs") });
    format!("http://{address}/tsr")
}

fn client(url: &str, certificate: TsaCertificate) -> HttpTimestampAuthority {
    HttpTimestampAuthority::new(HttpTsaConfig::new(url).timeout(Duration::from_secs(30)), certificate)
        .expect("a valid client")
}

/// A real signed checkpoint note, the bytes sos-audit timestamps.
fn signed_checkpoint(size: u64) -> String {
    let signer = NoteSigner::generate("example.com/sos-audit/acme").expect("a valid key name");
    Checkpoint {
        origin: "example.com/sos-audit/acme".to_owned(),
        size,
        root: Sha256Digest::from_bytes([7; 32]),
        extensions: Vec::new(),
    }
    .sign(&signer)
    .expect("the checkpoint signs")
}

/// The position of the `genTime` GeneralizedTime's seconds digit in a token.
fn gen_time_seconds_digit(token: &[u8]) -> usize {
    (0..token.len() - 2)
        .find(|&start| {
            let length = usize::from(token[start + 1]);
            token[start] == 0x18
                && (15..=24).contains(&length)
                && token.len() >= start + 2 + length
                && token[start + 2 + length - 1] == b'Z'
                && token[start + 2..start + 2 + 14].iter().all(u8::is_ascii_digit)
        })
        .map(|start| start + 2 + 13)
        .expect("the token has a genTime")
}

/// The position of the signingTime attribute's seconds digit in a token.
fn signing_time_seconds_digit(token: &[u8]) -> usize {
    // OID 1.2.840.113549.1.9.5, SET of one UTCTime of 13 characters.
    let pattern = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05, 0x31, 0x0f, 0x17, 0x0d];
    let start = token
        .windows(pattern.len())
        .position(|window| window == pattern)
        .expect("the token has a signingTime");
    start + pattern.len() + 11
}

fn bump_digit(byte: &mut u8) {
    *byte = if *byte == b'9' { b'0' } else { *byte + 1 };
}

#[tokio::test]
async fn rsa_tsa_over_http_issues_a_token_that_verifies_now_and_later() {
    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
    let authority = client(&url, tsa.certificate());
    let note = signed_checkpoint(256);

    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    let token = authority.timestamp(note.as_bytes()).await.expect("the TSA timestamps the checkpoint");
    let after = chrono::Utc::now() + chrono::Duration::seconds(5);
    assert!(before <= token.gen_time() && token.gen_time() <= after, "genTime {}", token.gen_time());
    assert_eq!(token.policy(), "1.2.3.4.1");
    assert_eq!(token.message_imprint(), Sha256Digest::of(note.as_bytes()).as_bytes());
    assert!(token.nonce().is_some());
    assert!(!token.serial_number().is_empty());

    // An auditor re-checks the stored token with only the note and the certificate.
    let stored = token.as_der().to_vec();
    let reverified =
        TimestampToken::verify(&stored, note.as_bytes(), &tsa.certificate()).expect("it re-verifies");
    assert_eq!(reverified, token);
    // And OpenSSL agrees that the token we keep is a valid token for the note.
    assert!(tsa.openssl_verifies(&stored, note.as_bytes()));
    assert!(!tsa.openssl_verifies(&stored, b"other bytes"));

    // A second checkpoint gets its own serial number.
    let next = authority.timestamp(signed_checkpoint(512).as_bytes()).await.expect("a second token");
    assert_ne!(next.serial_number(), token.serial_number());
}

#[tokio::test]
async fn p256_tsa_over_http_with_sub_second_gen_time() {
    let tsa = OpensslTsa::new(Options { precision: 3, ..Options::key(Key::P256) });
    let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
    let authority = client(&url, tsa.certificate());
    assert_eq!(authority.certificate().key_algorithm(), "ECDSA P-256");
    // Several tokens: ECDSA signatures are randomised, so high and low S values both occur.
    for size in 1..=6 {
        let note = signed_checkpoint(size);
        let token = authority.timestamp(note.as_bytes()).await.expect("the EC TSA timestamps the checkpoint");
        TimestampToken::verify(token.as_der(), note.as_bytes(), &tsa.certificate()).expect("it re-verifies");
        assert!(tsa.openssl_verifies(token.as_der(), note.as_bytes()));
    }
}

#[tokio::test]
async fn replayed_reply_with_another_nonce_is_rejected() {
    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    let url = serve(Arc::clone(&tsa), Behaviour::Replay(Arc::default())).await;
    let authority = client(&url, tsa.certificate());
    let note = signed_checkpoint(256);
    authority.timestamp(note.as_bytes()).await.expect("the first reply is genuine");
    // Same bytes, so the imprint matches: only the nonce tells the replay apart.
    let replayed = authority.timestamp(note.as_bytes()).await;
    assert!(matches!(replayed, Err(Error::TimestampNonceMismatch)), "{replayed:?}");
}

#[tokio::test]
async fn token_for_other_bytes_is_rejected() {
    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    let url = serve(Arc::clone(&tsa), Behaviour::OtherBytes).await;
    let authority = client(&url, tsa.certificate());
    let result = authority.timestamp(signed_checkpoint(256).as_bytes()).await;
    assert!(matches!(result, Err(Error::TimestampImprintMismatch)), "{result:?}");

    // A stored token checked against bytes other than the ones timestamped.
    let honest = serve(Arc::clone(&tsa), Behaviour::Honest).await;
    let note = signed_checkpoint(256);
    let token = client(&honest, tsa.certificate()).timestamp(note.as_bytes()).await.expect("a token");
    let mut altered = note.clone().into_bytes();
    altered[0] ^= 1;
    let result = TimestampToken::verify(token.as_der(), &altered, &tsa.certificate());
    assert!(matches!(result, Err(Error::TimestampImprintMismatch)), "{result:?}");
}

#[tokio::test]
async fn token_checked_against_another_tsa_certificate_is_rejected() {
    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    let other = OpensslTsa::new(Options::key(Key::P256));
    let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
    let note = signed_checkpoint(256);

    // A client pinned to the other TSA refuses this TSA's reply.
    let result = client(&url, other.certificate()).timestamp(note.as_bytes()).await;
    assert!(matches!(result, Err(Error::TimestampSignerMismatch)), "{result:?}");

    // And so does the auditor's re-check.
    let token = client(&url, tsa.certificate()).timestamp(note.as_bytes()).await.expect("a token");
    let result = TimestampToken::verify(token.as_der(), note.as_bytes(), &other.certificate());
    assert!(matches!(result, Err(Error::TimestampSignerMismatch)), "{result:?}");
}

#[tokio::test]
async fn impostor_certificate_with_the_same_issuer_and_serial_is_rejected() {
    // An impostor certificate names the same issuer and serial as the TSA's (so `sid` matches)
    // but holds another key: only the signature check can tell.
    for (key, impostor_key) in [(Key::Rsa, Key::Rsa), (Key::P256, Key::P256), (Key::Rsa, Key::P256)] {
        let tsa = OpensslTsa::new(Options::key(key));
        generate_key(tsa.path(), impostor_key, "impostor.key");
        let impostor =
            load_certificate(&tsa.issue("impostor.key", "impostor.crt", "critical,timeStamping", "1001"))
                .expect("the impostor certificate loads");
        let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
        let note = signed_checkpoint(256);
        let result = client(&url, impostor.clone()).timestamp(note.as_bytes()).await;
        assert!(matches!(result, Err(Error::TimestampBadSignature)), "{key:?}: {result:?}");
        let token = client(&url, tsa.certificate()).timestamp(note.as_bytes()).await.expect("a token");
        let result = TimestampToken::verify(token.as_der(), note.as_bytes(), &impostor);
        assert!(matches!(result, Err(Error::TimestampBadSignature)), "{key:?}: {result:?}");
    }
}

#[test]
fn certificate_without_only_critical_time_stamping_usage_is_refused() {
    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    for (file, usage) in [
        ("noncritical.crt", "timeStamping"),
        ("no-usage.crt", ""),
        ("server.crt", "critical,serverAuth"),
        ("two-purposes.crt", "critical,timeStamping,codeSigning"),
    ] {
        let result = load_certificate(&tsa.issue("tsa.key", file, usage, "1002"));
        assert!(matches!(result, Err(Error::TsaCertificate { .. })), "{file}: {result:?}");
    }
    openssl(
        tsa.path(),
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", "p384.key"],
    );
    let result = load_certificate(&tsa.issue("p384.key", "p384.crt", "critical,timeStamping", "1003"));
    let Err(Error::TsaCertificate { reason }) = result else {
        panic!("a P-384 key was accepted: {result:?}")
    };
    assert!(reason.contains("P-256"), "{reason}");
}

#[tokio::test]
async fn tampered_tokens_are_rejected() {
    for key in [Key::Rsa, Key::P256] {
        let tsa = OpensslTsa::new(Options::key(key));
        let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
        let note = signed_checkpoint(256);
        let token = client(&url, tsa.certificate()).timestamp(note.as_bytes()).await.expect("a token");
        let certificate = tsa.certificate();

        // The signature itself: its last byte.
        let mut signature_flipped = token.as_der().to_vec();
        *signature_flipped.last_mut().expect("a token is not empty") ^= 0x01;
        let result = TimestampToken::verify(&signature_flipped, note.as_bytes(), &certificate);
        assert!(matches!(result, Err(Error::TimestampBadSignature)), "{key:?}: {result:?}");

        // The TSTInfo: a back-dated genTime no longer matches the signed message digest.
        let mut back_dated = token.as_der().to_vec();
        bump_digit(&mut back_dated[gen_time_seconds_digit(token.as_der())]);
        let result = TimestampToken::verify(&back_dated, note.as_bytes(), &certificate);
        assert!(matches!(result, Err(Error::TimestampAttributes { .. })), "{key:?}: {result:?}");

        // A signed attribute: the signature no longer covers the attributes.
        let mut attribute_changed = token.as_der().to_vec();
        bump_digit(&mut attribute_changed[signing_time_seconds_digit(token.as_der())]);
        let result = TimestampToken::verify(&attribute_changed, note.as_bytes(), &certificate);
        assert!(matches!(result, Err(Error::TimestampBadSignature)), "{key:?}: {result:?}");

        assert!(!tsa.openssl_verifies(&back_dated, note.as_bytes()), "OpenSSL agrees the token is forged");
    }
}

#[tokio::test]
async fn tsa_rejection_is_a_typed_error_with_status_and_failure_info() {
    // A real TSA that does not accept SHA-256 imprints rejects with badAlg.
    let tsa = OpensslTsa::new(Options { digests: "sha512", ..Options::key(Key::Rsa) });
    let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
    let result = client(&url, tsa.certificate()).timestamp(signed_checkpoint(256).as_bytes()).await;
    let Err(Error::TimestampRejected { status, failure, text }) = result else {
        panic!("expected a rejection, got {result:?}")
    };
    assert_eq!(status, PkiStatus::Rejection);
    assert!(failure.contains(FailureInfo::BAD_ALG), "{failure}");
    assert!(text.is_some_and(|text| !text.is_empty()));
}

/// Whether an error is the one a case expects.
type ErrorCheck = fn(&Error) -> bool;

#[tokio::test]
async fn broken_transport_and_garbage_replies_are_typed_errors() {
    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    let note = signed_checkpoint(256);
    let genuine = tsa.reply(TimestampRequest::new(note.as_bytes()).expect("a request").as_der());
    let reply_type = "application/timestamp-reply";
    let cases: Vec<(Behaviour, ErrorCheck)> = vec![
        (
            Behaviour::Fixed {
                status: StatusCode::OK,
                content_type: reply_type,
                body: b"<html>not a TSA</html>".to_vec(),
            },
            |error| matches!(error, Error::TimestampMalformed { .. }),
        ),
        (
            Behaviour::Fixed {
                status: StatusCode::OK,
                content_type: reply_type,
                body: genuine[..genuine.len() / 2].to_vec(),
            },
            |error| matches!(error, Error::TimestampMalformed { .. }),
        ),
        (Behaviour::Fixed { status: StatusCode::OK, content_type: reply_type, body: Vec::new() }, |error| {
            matches!(error, Error::TimestampMalformed { .. })
        }),
        (
            Behaviour::Fixed { status: StatusCode::OK, content_type: "text/html", body: genuine.clone() },
            |error| matches!(error, Error::TsaContentType { .. }),
        ),
        (
            Behaviour::Fixed {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                content_type: reply_type,
                body: Vec::new(),
            },
            |error| matches!(error, Error::TsaHttpStatus { status: 500, .. }),
        ),
        (
            Behaviour::Fixed { status: StatusCode::OK, content_type: reply_type, body: vec![0x30; 200_000] },
            |error| matches!(error, Error::TsaResponseTooLarge { .. }),
        ),
    ];
    for (behaviour, expected) in cases {
        let url = serve(Arc::clone(&tsa), behaviour).await;
        let result = client(&url, tsa.certificate()).timestamp(note.as_bytes()).await;
        assert!(result.as_ref().is_err_and(expected), "{result:?}");
    }

    // Nothing listens on a port that was just released.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let address = listener.local_addr().expect("a local address");
    drop(listener);
    let result = client(&format!("http://{address}/tsr"), tsa.certificate()).timestamp(note.as_bytes()).await;
    assert!(matches!(result, Err(Error::TsaUnreachable { .. })), "{result:?}");

    for url in ["not a url", "ftp://tsa.example/tsr"] {
        let result = HttpTimestampAuthority::new(HttpTsaConfig::new(url), tsa.certificate());
        assert!(matches!(result, Err(Error::TsaUrl { .. })), "{url}: {result:?}");
    }
}

#[tokio::test]
async fn checkpointer_anchors_carry_a_verified_timestamp() {
    use sos_audit::timestamp::{TimestampedAnchorSink, verify_anchor_timestamp};
    use sos_audit::tlog::{Anchor, AnchorSink, Checkpointer, FsAnchorSink};
    use sos_audit::{AuditStore, MemoryAuditStore};

    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
    let anchors = tempfile::tempdir().expect("a temporary directory");
    let files = FsAnchorSink::new(anchors.path());
    let sink = Arc::new(TimestampedAnchorSink::new(client(&url, tsa.certificate()), Arc::new(files.clone())));

    let store = MemoryAuditStore::new();
    let acme = crate::tenant("acme");
    for index in 0..5 {
        store.append(crate::entry("acme", index)).await.expect("append");
    }
    let checkpointer =
        Checkpointer::new(store, NoteSigner::generate("example.com/sos-audit").expect("a key"))
            .with_anchor(Arc::clone(&sink) as Arc<dyn AnchorSink>);
    let signed = checkpointer.checkpoint_now(&acme).await.expect("a timestamped checkpoint");

    // The anchor on disk: the note and its token, which an auditor re-verifies with the TSA
    // certificate alone.
    let note_path = files.path_of(&acme, signed.size());
    let note = std::fs::read_to_string(&note_path).expect("the anchored note");
    assert_eq!(note, signed.note);
    let token = std::fs::read(note_path.with_extension("tsr")).expect("the anchored token");
    let verified =
        TimestampToken::verify(&token, note.as_bytes(), &tsa.certificate()).expect("the token verifies");
    assert!(tsa.openssl_verifies(&token, note.as_bytes()));

    let anchor = Anchor::new(&signed).with_timestamp_token(token.clone());
    let from_anchor = verify_anchor_timestamp(&anchor, &tsa.certificate()).expect("it verifies");
    assert_eq!(from_anchor.map(|token| token.gen_time()), Some(verified.gen_time()));
    assert!(verify_anchor_timestamp(&Anchor::new(&signed), &tsa.certificate()).expect("no token").is_none());

    // A token moved onto another checkpoint's anchor does not verify.
    let mut moved = anchor.clone();
    moved.note = checkpoint_note_for_other_size(&signed.note);
    let result = verify_anchor_timestamp(&moved, &tsa.certificate());
    assert!(matches!(result, Err(Error::TimestampImprintMismatch)), "{result:?}");

    // A retry of the same checkpoint gets a new token from the TSA, and the write-once sink keeps
    // the first one.
    let receipt = sink.write(&Anchor::new(&signed)).await.expect("a retry succeeds");
    assert!(receipt.already_present);
    assert_eq!(std::fs::read(note_path.with_extension("tsr")).expect("the token"), token);
}

/// The same note text with another tree size (its signature no longer matters here).
fn checkpoint_note_for_other_size(note: &str) -> String {
    let mut lines: Vec<String> = note.lines().map(str::to_owned).collect();
    lines[1] = format!("{}", lines[1].parse::<u64>().expect("a size") + 1);
    lines.join("\n") + "\n"
}

/// OpenSSL emits ESS `signingCertificate` (SHA-1 certificate hash, RFC 2634) with
/// `ess_cert_id_alg = sha1` and `signingCertificateV2` (RFC 5035) with a SHA-2 hash: both bind the
/// token to the pinned certificate and verify, fresh and stored. (SHA-256, the default, is what
/// every other test here uses.)
#[tokio::test]
async fn openssl_signing_certificate_attributes_of_every_hash_verify() {
    for ess_cert_id_alg in ["sha1", "sha384", "sha512"] {
        let tsa = OpensslTsa::new(Options { ess_cert_id_alg, ..Options::key(Key::Rsa) });
        let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
        let note = signed_checkpoint(256);
        let token = client(&url, tsa.certificate())
            .timestamp(note.as_bytes())
            .await
            .unwrap_or_else(|error| panic!("{ess_cert_id_alg}: {error}"));
        TimestampToken::verify(token.as_der(), note.as_bytes(), &tsa.certificate())
            .unwrap_or_else(|error| panic!("{ess_cert_id_alg}: {error}"));
        assert!(tsa.openssl_verifies(token.as_der(), note.as_bytes()), "{ess_cert_id_alg}");
    }
}

/// The TSA signs with another certificate of the same key, the same issuer and the same serial
/// number (a re-issued certificate with another validity): `sid` matches the pinned certificate
/// and the signature verifies with its key, but the ESS signing-certificate attribute names the
/// other certificate, in both its SHA-1 and its SHA-256 forms. Only that attribute tells them apart.
#[tokio::test]
async fn token_whose_signing_certificate_is_another_certificate_of_the_same_key_is_rejected() {
    for ess_cert_id_alg in ["sha256", "sha1"] {
        let tsa = OpensslTsa::new(Options { ess_cert_id_alg, ..Options::key(Key::Rsa) });
        let reissued = load_certificate(&tsa.issue_for_days(
            "tsa.key",
            "tsa-reissued.crt",
            "critical,timeStamping",
            "1001",
            "3",
        ))
        .expect("the re-issued certificate loads");
        tsa.sign_with("tsa-reissued.crt");
        let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
        let note = signed_checkpoint(256);

        let result = client(&url, tsa.certificate()).timestamp(note.as_bytes()).await;
        assert!(
            matches!(result, Err(Error::TimestampSigningCertificateMismatch { .. })),
            "{ess_cert_id_alg}: {result:?}"
        );
        // Pinned to the certificate it really signs with, the same TSA is fine, and the stored
        // token is refused for the other certificate.
        let token = client(&url, reissued.clone()).timestamp(note.as_bytes()).await.expect("a token");
        let result = TimestampToken::verify(token.as_der(), note.as_bytes(), &tsa.certificate());
        assert!(
            matches!(result, Err(Error::TimestampSigningCertificateMismatch { .. })),
            "{ess_cert_id_alg}: {result:?}"
        );
    }
}

/// A token re-signed by the TSA's own key with `openssl cms -sign` over the very `TSTInfo` of a
/// real token, with a `content-type` and a `message-digest` attribute but no ESS
/// signing-certificate attribute: the signature verifies, the binding to the certificate is
/// missing, and the token is refused.
#[tokio::test]
async fn token_without_a_signing_certificate_attribute_is_rejected() {
    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
    let note = signed_checkpoint(256);
    let token = client(&url, tsa.certificate()).timestamp(note.as_bytes()).await.expect("a token");
    let path = tsa.path();
    std::fs::write(path.join("token.der"), token.as_der()).expect("write the token");
    openssl(
        path,
        &[
            "cms",
            "-verify",
            "-noverify",
            "-inform",
            "DER",
            "-in",
            "token.der",
            "-binary",
            "-out",
            "tstinfo.der",
        ],
    );
    openssl(
        path,
        &[
            "cms",
            "-sign",
            "-binary",
            "-nodetach",
            "-in",
            "tstinfo.der",
            "-econtent_type",
            "1.2.840.113549.1.9.16.1.4",
            "-signer",
            "tsa.crt",
            "-inkey",
            "tsa.key",
            "-md",
            "sha256",
            "-nosmimecap",
            "-outform",
            "DER",
            "-out",
            "bare.der",
        ],
    );
    let bare = std::fs::read(path.join("bare.der")).expect("read the re-signed token");
    let result = TimestampToken::verify(&bare, note.as_bytes(), &tsa.certificate());
    assert!(matches!(result, Err(Error::TimestampSigningCertificateMissing)), "{result:?}");
}

/// ESS `ESSCertIDv2` (RFC 5035 §4), encoded here to forge attributes.
#[derive(Clone, Debug, der::Sequence)]
struct EssCertIdV2 {
    #[asn1(optional = "true")]
    hash_algorithm: Option<spki::AlgorithmIdentifierOwned>,
    cert_hash: der::asn1::OctetString,
    #[asn1(optional = "true")]
    issuer_serial: Option<IssuerSerial>,
}

/// ESS `IssuerSerial` (RFC 5035 §4).
#[derive(Clone, Debug, der::Sequence)]
struct IssuerSerial {
    issuer: Vec<x509_cert::ext::pkix::name::GeneralName>,
    serial_number: x509_cert::serial_number::SerialNumber,
}

/// ESS `SigningCertificateV2` (RFC 5035 §3) or, with `EssCertId` hashes, `SigningCertificate`.
#[derive(Clone, Debug, der::Sequence)]
struct SigningCertificateV2 {
    certs: Vec<EssCertIdV2>,
}

/// ESS `ESSCertID` (RFC 2634 §5.4.1).
#[derive(Clone, Debug, der::Sequence)]
struct EssCertId {
    cert_hash: der::asn1::OctetString,
}

/// ESS `SigningCertificate` (RFC 2634 §5.4).
#[derive(Clone, Debug, der::Sequence)]
struct SigningCertificate {
    certs: Vec<EssCertId>,
}

const SIGNING_CERTIFICATE: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.12");
const SIGNING_CERTIFICATE_V2: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.2.47");

fn attribute(oid: der::oid::ObjectIdentifier, values: Vec<der::Any>) -> x509_cert::attr::Attribute {
    x509_cert::attr::Attribute {
        oid,
        values: der::asn1::SetOfVec::try_from(values).expect("distinct values"),
    }
}

fn v2(cert_hash: &[u8], algorithm: Option<&str>, issuer_serial: Option<IssuerSerial>) -> der::Any {
    let id = EssCertIdV2 {
        hash_algorithm: algorithm.map(|oid| spki::AlgorithmIdentifierOwned {
            oid: oid.parse().expect("an OID"),
            parameters: None,
        }),
        cert_hash: der::asn1::OctetString::new(cert_hash).expect("a hash"),
        issuer_serial,
    };
    der::Any::encode_from(&SigningCertificateV2 { certs: vec![id] }).expect("encode")
}

fn v1(cert_hash: &[u8]) -> der::Any {
    let id = EssCertId { cert_hash: der::asn1::OctetString::new(cert_hash).expect("a hash") };
    der::Any::encode_from(&SigningCertificate { certs: vec![id] }).expect("encode")
}

/// A real token of `tsa` whose ESS signing-certificate attributes are replaced by `ess`, and whose
/// signed attributes are signed again with the TSA's own key (`openssl dgst -sign`, RSA PKCS#1
/// v1.5 with SHA-256): the signature verifies, only the attributes say what they say.
fn resigned(tsa: &OpensslTsa, token: &[u8], ess: Vec<x509_cert::attr::Attribute>) -> Vec<u8> {
    use der::{Decode as _, Encode as _};
    let info = cms::content_info::ContentInfo::from_der(token).expect("a token");
    let mut signed: cms::signed_data::SignedData = info.content.decode_as().expect("SignedData");
    let mut signers = signed.signer_infos.0.into_vec();
    let signer = &mut signers[0];
    let mut attributes: Vec<x509_cert::attr::Attribute> = signer
        .signed_attrs
        .take()
        .expect("signed attributes")
        .into_vec()
        .into_iter()
        .filter(|attribute| attribute.oid != SIGNING_CERTIFICATE && attribute.oid != SIGNING_CERTIFICATE_V2)
        .collect();
    attributes.extend(ess);
    let attributes = der::asn1::SetOfVec::try_from(attributes).expect("distinct attributes");
    let path = tsa.path();
    std::fs::write(path.join("attributes.der"), attributes.to_der().expect("encode")).expect("write");
    openssl(path, &["dgst", "-sha256", "-sign", "tsa.key", "-out", "attributes.sig", "attributes.der"]);
    let signature = std::fs::read(path.join("attributes.sig")).expect("the signature");
    signer.signature = der::asn1::OctetString::new(signature).expect("a signature");
    signer.signed_attrs = Some(attributes);
    signed.signer_infos = cms::signed_data::SignerInfos(der::asn1::SetOfVec::try_from(signers).expect("one"));
    cms::content_info::ContentInfo {
        content_type: info.content_type,
        content: der::Any::encode_from(&signed).expect("encode"),
    }
    .to_der()
    .expect("encode")
}

/// Forged ESS attributes in tokens the TSA's key really signed: each names the pinned certificate
/// wrongly in one way, and each is refused; the correct forms (built the same way) verify, so the
/// re-signing itself is sound.
#[tokio::test]
async fn forged_signing_certificate_attributes_are_rejected() {
    use sha2::Digest as _;
    let tsa = OpensslTsa::new(Options::key(Key::Rsa));
    let url = serve(Arc::clone(&tsa), Behaviour::Honest).await;
    let note = signed_checkpoint(256);
    let token = client(&url, tsa.certificate()).timestamp(note.as_bytes()).await.expect("a token");
    let certificate = tsa.certificate();
    let sha256 = sha2::Sha256::digest(certificate.as_der()).to_vec();
    let path = tsa.path();
    std::fs::write(path.join("tsa.der"), certificate.as_der()).expect("write");
    openssl(path, &["dgst", "-sha1", "-binary", "-out", "tsa.sha1", "tsa.der"]);
    let sha1 = std::fs::read(path.join("tsa.sha1")).expect("the SHA-1 hash");
    let mut wrong = sha256.clone();
    wrong[31] ^= 1;
    let mut wrong_sha1 = sha1.clone();
    wrong_sha1[19] ^= 1;
    let parsed = {
        use der::Decode as _;
        x509_cert::Certificate::from_der(certificate.as_der()).expect("a certificate")
    };
    let issuer =
        vec![x509_cert::ext::pkix::name::GeneralName::DirectoryName(parsed.tbs_certificate.issuer.clone())];
    let serial = |serial: &[u8]| x509_cert::serial_number::SerialNumber::new(serial).expect("a serial");
    let issuer_serial = |serial_number| IssuerSerial { issuer: issuer.clone(), serial_number };

    let verify = |ess: Vec<x509_cert::attr::Attribute>| {
        TimestampToken::verify(&resigned(&tsa, token.as_der(), ess), note.as_bytes(), &certificate)
    };
    // The sound forms: V2 with issuerSerial, V1 and V2 together, V2 with SHA-256 named.
    let real_serial = parsed.tbs_certificate.serial_number.clone();
    for ess in [
        vec![attribute(
            SIGNING_CERTIFICATE_V2,
            vec![v2(&sha256, None, Some(issuer_serial(real_serial.clone())))],
        )],
        vec![
            attribute(SIGNING_CERTIFICATE, vec![v1(&sha1)]),
            attribute(SIGNING_CERTIFICATE_V2, vec![v2(&sha256, None, None)]),
        ],
        vec![attribute(SIGNING_CERTIFICATE_V2, vec![v2(&sha256, Some("2.16.840.1.101.3.4.2.1"), None)])],
    ] {
        verify(ess).expect("a correct signing-certificate attribute verifies");
    }

    let mismatches = [
        (
            "V1 right, V2 wrong",
            vec![
                attribute(SIGNING_CERTIFICATE, vec![v1(&sha1)]),
                attribute(SIGNING_CERTIFICATE_V2, vec![v2(&wrong, None, None)]),
            ],
        ),
        (
            "V1 wrong, V2 right",
            vec![
                attribute(SIGNING_CERTIFICATE, vec![v1(&wrong_sha1)]),
                attribute(SIGNING_CERTIFICATE_V2, vec![v2(&sha256, None, None)]),
            ],
        ),
        (
            "another serial",
            vec![attribute(
                SIGNING_CERTIFICATE_V2,
                vec![v2(&sha256, None, Some(issuer_serial(serial(&[0x10, 0x02]))))],
            )],
        ),
        (
            "no issuer name",
            vec![attribute(
                SIGNING_CERTIFICATE_V2,
                vec![v2(
                    &sha256,
                    None,
                    Some(IssuerSerial { issuer: Vec::new(), serial_number: real_serial.clone() }),
                )],
            )],
        ),
        (
            "SHA-384 named over a SHA-256 hash",
            vec![attribute(SIGNING_CERTIFICATE_V2, vec![v2(&sha256, Some("2.16.840.1.101.3.4.2.2"), None)])],
        ),
    ];
    for (case, ess) in mismatches {
        let result = verify(ess);
        assert!(
            matches!(result, Err(Error::TimestampSigningCertificateMismatch { .. })),
            "{case}: {result:?}"
        );
    }
    // A hash algorithm it does not know (SHA-224).
    let result = verify(vec![attribute(
        SIGNING_CERTIFICATE_V2,
        vec![v2(&sha256[..28], Some("2.16.840.1.101.3.4.2.4"), None)],
    )]);
    assert!(matches!(result, Err(Error::TimestampUnsupportedAlgorithm { .. })), "{result:?}");
    // The attribute twice, or one attribute with two values: the first naming another certificate.
    let result = verify(vec![attribute(
        SIGNING_CERTIFICATE_V2,
        vec![v2(&sha256, None, None), v2(&wrong, None, None)],
    )]);
    assert!(matches!(result, Err(Error::TimestampAttributes { .. })), "{result:?}");
    let result = verify(vec![
        attribute(SIGNING_CERTIFICATE_V2, vec![v2(&wrong, None, None)]),
        attribute(SIGNING_CERTIFICATE_V2, vec![v2(&sha256, None, None)]),
    ]);
    assert!(matches!(result, Err(Error::TimestampAttributes { .. })), "{result:?}");
}
