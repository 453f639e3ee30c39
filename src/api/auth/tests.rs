use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};

use super::*;
use crate::config::{App, Secret};

const NOW: u64 = 1_700_000_000_000;
const SECRET: &str = "0123456789abcdef-hmac-test-secret";
const PATH: &str = "/v1/push/simple";
const BODY: &[u8] = br#"{"appId":"hmac-app","workspaceId":"default"}"#;

fn fixture(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    std::fs::read_to_string(format!("{path}{name}")).unwrap()
}

fn apps() -> Vec<App> {
    vec![
        App {
            api_secret: Some(Secret::new(SECRET)),
            ..App::new("hmac-app", "default")
        },
        App {
            public_key: Some(fixture("rsa-2048-public.pem")),
            ..App::new("rsa-app", "default")
        },
        App {
            api_secret: Some(Secret::new(SECRET)),
            api_enabled: false,
            ..App::new("off", "default")
        },
        App {
            allow_unsigned: true,
            ..App::new("open", "default")
        },
        App {
            allow_unsigned: true,
            api_enabled: false,
            ..App::new("open-but-off", "default")
        },
    ]
}

fn registry_with(capacity: usize) -> Arc<AppRegistry> {
    Arc::new(AppRegistry::new(&apps(), capacity).unwrap())
}

fn registry() -> Arc<AppRegistry> {
    registry_with(1000)
}

/// One request as a client would send it; `headers()` signs it.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    app: String,
    timestamp: String,
    nonce: String,
    body: Vec<u8>,
}

impl Req {
    fn new(app: &str) -> Self {
        Self {
            method: "POST".into(),
            path: PATH.into(),
            app: app.into(),
            timestamp: NOW.to_string(),
            nonce: "nonce-0001".into(),
            body: BODY.to_vec(),
        }
    }

    fn to_sign(&self) -> String {
        string_to_sign(
            &self.method,
            &self.path,
            &self.app,
            &self.timestamp,
            &self.nonce,
            &self.body,
        )
    }

    fn hmac(&self, secret: &str) -> HeaderMap {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            self.to_sign().as_bytes(),
        );
        self.headers("HMAC-SHA256", &encode_signature(tag.as_ref()))
    }

    fn rsa(&self, private_key_fixture: &str) -> HeaderMap {
        self.headers(
            "RSA-SHA256",
            &encode_signature(&rsa_sign(private_key_fixture, &self.to_sign())),
        )
    }

    fn headers(&self, method: &str, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            (HEADER_APP_ID, self.app.as_str()),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_NONCE, &self.nonce),
            (HEADER_SIGNATURE_METHOD, method),
            (HEADER_SIGNATURE, signature),
        ] {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn verify_with(
        &self,
        registry: &Arc<AppRegistry>,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<AuthenticatedApp, AuthError> {
        verify(registry, &self.method, &self.path, headers, &self.body, now)
    }
}

fn rsa_sign(private_key_fixture: &str, text: &str) -> Vec<u8> {
    let pem = fixture(private_key_fixture);
    let (_, der) = spki::der::pem::decode_vec(pem.as_bytes()).unwrap();
    let key = RsaKeyPair::from_pkcs8(&der).unwrap();
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        text.as_bytes(),
        &mut signature,
    )
    .unwrap();
    signature
}

fn failure(result: Result<AuthenticatedApp, AuthError>) -> Failure {
    result.expect_err("should be refused").failure
}

#[test]
fn a_good_hmac_signature_authenticates_its_app() {
    let req = Req::new("hmac-app");
    let caller = req.verify_with(&registry(), &req.hmac(SECRET), NOW).unwrap();
    assert_eq!(caller.signed_by().map(|a| &*a.id), Some("hmac-app"));
    assert_eq!(&*caller.check_app("hmac-app").unwrap().id, "hmac-app");
}

#[test]
fn a_good_rsa_signature_authenticates_its_app() {
    let req = Req::new("rsa-app");
    let caller = req
        .verify_with(&registry(), &req.rsa("rsa-2048-private.pem"), NOW)
        .unwrap();
    assert_eq!(caller.signed_by().map(|a| &*a.id), Some("rsa-app"));
}

#[test]
fn bad_signatures_are_refused_with_minus_one() {
    let registry = registry();
    let req = Req::new("hmac-app");
    let err = req
        .verify_with(&registry, &req.hmac("another-secret-of-16+bytes"), NOW)
        .unwrap_err();
    assert_eq!(err.failure, Failure::BadSignature);
    assert_eq!(ApiError::from(err).code.code(), -1);
    let req = Req::new("rsa-app");
    let other_key = req.rsa("rsa-2048-other-private.pem");
    assert_eq!(
        failure(req.verify_with(&registry, &other_key, NOW)),
        Failure::BadSignature
    );
    // A good signature cut short.
    let good = rsa_sign("rsa-2048-private.pem", &req.to_sign());
    let truncated = req.headers("RSA-SHA256", &encode_signature(&good[..good.len() - 3]));
    assert_eq!(
        failure(req.verify_with(&registry, &truncated, NOW)),
        Failure::BadSignature
    );
}

#[test]
fn a_method_without_its_credential_is_refused() {
    let registry = registry();
    let req = Req::new("rsa-app");
    let err = req.verify_with(&registry, &req.hmac(SECRET), NOW).unwrap_err();
    assert_eq!(err.failure, Failure::NoCredential);
    assert!(err.reason.contains("no apiSecret"), "{}", err.reason);
    let req = Req::new("hmac-app");
    let rsa = req.rsa("rsa-2048-private.pem");
    assert_eq!(
        failure(req.verify_with(&registry, &rsa, NOW)),
        Failure::NoCredential
    );
}

#[test]
fn more_than_300_seconds_of_skew_either_way_is_refused() {
    let registry = registry();
    for (i, (offset, ok)) in [
        (-301_000i64, false),
        (301_000, false),
        (-300_001, false),
        (-300_000, true),
        (300_000, true),
        (0, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = Req::new("hmac-app");
        req.timestamp = (NOW as i64 + offset).to_string();
        req.nonce = format!("skew-test-{i}");
        let result = req.verify_with(&registry, &req.hmac(SECRET), NOW);
        if ok {
            assert!(result.is_ok(), "{offset}: {result:?}");
        } else {
            let err = result.unwrap_err();
            assert_eq!(err.failure, Failure::ClockSkew, "{offset}");
            assert_eq!(err.failure.code().code(), -1);
            let side = if offset > 0 { "ahead of" } else { "behind" };
            assert!(err.reason.contains(side), "{}", err.reason);
        }
    }
}

#[test]
fn requests_stamped_before_the_start_are_refused() {
    let registry = Arc::new(
        AppRegistry::new(&apps(), 10)
            .unwrap()
            .refuse_timestamps_before(NOW),
    );
    let mut req = Req::new("hmac-app");
    req.timestamp = (NOW - 1).to_string();
    let err = req
        .verify_with(&registry, &req.hmac(SECRET), NOW + 1_000)
        .unwrap_err();
    assert_eq!(err.failure, Failure::ClockSkew);
    assert!(
        err.reason.contains("before this server started"),
        "{}",
        err.reason
    );
    req.timestamp = NOW.to_string();
    req.verify_with(&registry, &req.hmac(SECRET), NOW + 1_000)
        .unwrap();
}

#[test]
fn a_replayed_request_is_refused() {
    let registry = registry();
    let req = Req::new("hmac-app");
    let headers = req.hmac(SECRET);
    req.verify_with(&registry, &headers, NOW).unwrap();
    let err = req.verify_with(&registry, &headers, NOW + 1_000).unwrap_err();
    assert_eq!(err.failure, Failure::ReplayedNonce);
    assert_eq!(err.failure.code().code(), -1);
    // Re-signed with a new timestamp but the same nonce: still a replay.
    let mut again = req.clone();
    again.timestamp = (NOW + 2_000).to_string();
    assert_eq!(
        failure(again.verify_with(&registry, &again.hmac(SECRET), NOW + 2_000)),
        Failure::ReplayedNonce
    );
    // Nonces are per app: another app may use the same one.
    let rsa = Req::new("rsa-app");
    rsa.verify_with(&registry, &rsa.rsa("rsa-2048-private.pem"), NOW)
        .unwrap();
    // Once the timestamp is out of the window, the skew check refuses it.
    let late = NOW + MAX_CLOCK_SKEW_MS + 1;
    assert_eq!(
        failure(req.verify_with(&registry, &headers, late)),
        Failure::ClockSkew
    );
}

#[test]
fn a_full_nonce_cache_refuses_new_requests_and_keeps_catching_replays() {
    let registry = registry_with(2);
    let signed = |nonce: &str, now: u64| {
        let mut req = Req::new("hmac-app");
        req.nonce = nonce.into();
        req.timestamp = now.to_string();
        let headers = req.hmac(SECRET);
        (req, headers)
    };
    for nonce in ["nonce-aaaa", "nonce-bbbb"] {
        let (req, headers) = signed(nonce, NOW);
        req.verify_with(&registry, &headers, NOW).unwrap();
    }
    let (req, headers) = signed("nonce-cccc", NOW);
    let err = req.verify_with(&registry, &headers, NOW).unwrap_err();
    assert_eq!(err.failure, Failure::NonceCacheFull);
    assert_eq!(err.failure.code(), ResultCode::SystemError);
    assert_eq!(err.failure.code().http_status(), 503);
    let (req, headers) = signed("nonce-aaaa", NOW);
    assert_eq!(
        failure(req.verify_with(&registry, &headers, NOW)),
        Failure::ReplayedNonce
    );
    // Room again once the first two expire.
    let later = NOW + MAX_CLOCK_SKEW_MS + 2_000;
    let (req, headers) = signed("nonce-cccc", later);
    req.verify_with(&registry, &headers, later).unwrap();
}

#[test]
fn a_forged_request_does_not_use_up_its_nonce() {
    let registry = registry_with(1);
    let req = Req::new("hmac-app");
    let forged = req.hmac("not-the-secret-at-all");
    assert_eq!(
        failure(req.verify_with(&registry, &forged, NOW)),
        Failure::BadSignature
    );
    req.verify_with(&registry, &req.hmac(SECRET), NOW).unwrap();
}

#[test]
fn an_app_whose_api_is_off_gets_3032() {
    let registry = registry();
    let req = Req::new("off");
    let err = req.verify_with(&registry, &req.hmac(SECRET), NOW).unwrap_err();
    assert_eq!(err.failure, Failure::ApiDisabled);
    let err = ApiError::from(err);
    assert_eq!((err.code.code(), err.code.http_status()), (3032, 403));
    // Authentication comes first: a bad signature learns nothing of the switch.
    assert_eq!(
        failure(req.verify_with(&registry, &req.hmac("wrong-secret-wrong-secret"), NOW)),
        Failure::BadSignature
    );
    let unsigned = AuthenticatedApp::unsigned(registry.clone());
    assert_eq!(unsigned.check_app("open-but-off").unwrap_err().code.code(), 3032);
}

#[test]
fn an_unknown_app_gets_8014() {
    let registry = registry();
    let req = Req::new("nobody");
    let err = ApiError::from(req.verify_with(&registry, &req.hmac(SECRET), NOW).unwrap_err());
    assert_eq!((err.code.code(), err.code.http_status()), (8014, 403));
    let unsigned = AuthenticatedApp::unsigned(registry);
    assert_eq!(unsigned.check_app("nobody").unwrap_err().code.code(), 8014);
}

#[test]
fn a_signed_request_may_act_only_for_its_own_app() {
    let registry = registry();
    let req = Req::new("hmac-app");
    let caller = req.verify_with(&registry, &req.hmac(SECRET), NOW).unwrap();
    let other = caller.check_app("rsa-app").unwrap_err();
    let missing = caller.check_app("no-such-app").unwrap_err();
    assert_eq!((other.code.code(), missing.code.code()), (8014, 8014));
    assert_eq!(other.code.http_status(), 403);
    // An app that takes unsigned requests is no exception.
    assert_eq!(caller.check_app("open").unwrap_err().code.code(), 8014);
    assert_eq!(&*caller.default_app().unwrap().id, "hmac-app");
}

#[test]
fn unsigned_requests_act_only_for_apps_that_allow_them() {
    let registry = registry();
    let caller = verify(&registry, "POST", PATH, &HeaderMap::new(), BODY, NOW).unwrap();
    assert!(caller.signed_by().is_none());
    assert_eq!(&*caller.check_app("open").unwrap().id, "open");
    let err = caller.check_app("hmac-app").unwrap_err();
    assert_eq!(err.code.code(), -1);
    assert!(err.reason.contains("requires signed requests"), "{}", err.reason);
    // Several apps: an unsigned request must name one.
    assert_eq!(caller.default_app().unwrap_err().code.code(), 3003);
    let demo = Arc::new(AppRegistry::new(&crate::config::Config::default().apps, 10).unwrap());
    let caller = AuthenticatedApp::unsigned(demo);
    assert_eq!(&*caller.default_app().unwrap().id, "demo");
}

#[test]
fn base64url_signatures_verify_padded_and_unpadded() {
    let registry = registry();
    for (i, app) in ["hmac-app", "rsa-app"].into_iter().enumerate() {
        let mut req = Req::new(app);
        let raw = if i == 0 {
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes()),
                req.to_sign().as_bytes(),
            )
            .as_ref()
            .to_vec()
        } else {
            rsa_sign("rsa-2048-private.pem", &req.to_sign())
        };
        let method = if i == 0 { "HMAC-SHA256" } else { "RSA-SHA256" };
        let unpadded = encode_signature(&raw);
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&raw);
        assert_ne!(unpadded, padded, "32- and 256-byte signatures need padding");
        assert!(padded.ends_with('='));
        req.verify_with(&registry, &req.headers(method, &unpadded), NOW)
            .unwrap();
        req.nonce = "nonce-0002".into();
        let raw = if i == 0 {
            hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes()),
                req.to_sign().as_bytes(),
            )
            .as_ref()
            .to_vec()
        } else {
            rsa_sign("rsa-2048-private.pem", &req.to_sign())
        };
        let padded = base64::engine::general_purpose::URL_SAFE.encode(&raw);
        req.verify_with(&registry, &req.headers(method, &padded), NOW)
            .unwrap();
        // Standard base64 ('+', '/') is not base64url.
        let standard = base64::engine::general_purpose::STANDARD.encode(&raw);
        if standard != padded {
            req.nonce = "nonce-0003".into();
            assert_eq!(
                failure(req.verify_with(&registry, &req.headers(method, &standard), NOW)),
                Failure::MalformedHeader
            );
        }
    }
}

#[test]
fn tampering_with_method_path_query_or_body_breaks_the_signature() {
    let registry = registry();
    let req = Req::new("hmac-app");
    let headers = req.hmac(SECRET);
    let tampered: [(&str, &str, &[u8]); 5] = [
        ("POST", "/v1/push/simplE", BODY),
        ("POST", "/v1/push/simple?appId=rsa-app", BODY),
        ("PUT", PATH, BODY),
        ("POST", PATH, br#"{"appId":"hmac-app","workspaceId":"defaulT"}"#),
        ("POST", PATH, b""),
    ];
    for (method, path, body) in tampered {
        let result = verify(&registry, method, path, &headers, body, NOW);
        assert_eq!(failure(result), Failure::BadSignature, "{method} {path}");
    }
    // The app id header is signed too.
    let mut as_other = headers.clone();
    as_other.insert(HEADER_APP_ID, HeaderValue::from_static("off"));
    assert_eq!(
        failure(req.verify_with(&registry, &as_other, NOW)),
        Failure::BadSignature
    );
    // And the untouched request still verifies (nothing above used its nonce).
    req.verify_with(&registry, &headers, NOW).unwrap();
}

#[test]
fn missing_headers_are_named() {
    let registry = registry();
    let req = Req::new("hmac-app");
    let headers = req.hmac(SECRET);
    for name in [
        HEADER_TIMESTAMP,
        HEADER_NONCE,
        HEADER_SIGNATURE_METHOD,
        HEADER_SIGNATURE,
        HEADER_APP_ID,
    ] {
        let mut partial = headers.clone();
        partial.remove(name);
        let err = req.verify_with(&registry, &partial, NOW).unwrap_err();
        assert_eq!(err.failure, Failure::MissingHeader, "{name}");
        assert_eq!(err.failure.code().code(), -1);
        assert!(err.reason.contains(name), "{name}: {}", err.reason);
    }
}

#[test]
fn malformed_headers_are_refused() {
    let registry = registry();
    let cases: [(&str, &str); 10] = [
        (HEADER_NONCE, "short"),
        (HEADER_NONCE, &"n".repeat(65)),
        (HEADER_NONCE, "has space 123"),
        (HEADER_NONCE, "dots.are.not.allowed"),
        (HEADER_TIMESTAMP, "1700000000.5"),
        (HEADER_TIMESTAMP, "-1700000000000"),
        (HEADER_TIMESTAMP, "9999999999999999999999"),
        (HEADER_SIGNATURE_METHOD, "HMAC-SHA1"),
        (HEADER_SIGNATURE, "not*base64"),
        (HEADER_SIGNATURE, &"A".repeat(2000)),
    ];
    for (name, value) in cases {
        let req = Req::new("hmac-app");
        let mut headers = req.hmac(SECRET);
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        let err = req.verify_with(&registry, &headers, NOW).unwrap_err();
        assert_eq!(err.failure, Failure::MalformedHeader, "{name}: {value}");
        assert!(err.reason.contains(name), "{}", err.reason);
    }
    // A header given twice is ambiguous.
    let req = Req::new("hmac-app");
    let mut headers = req.hmac(SECRET);
    headers.append(HEADER_NONCE, HeaderValue::from_static("nonce-0002"));
    assert_eq!(
        failure(req.verify_with(&registry, &headers, NOW)),
        Failure::MalformedHeader
    );
}

#[test]
fn header_names_and_the_method_are_case_insensitive() {
    let registry = registry();
    let req = Req::new("hmac-app");
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes()),
        req.to_sign().as_bytes(),
    );
    let headers = req.headers("hmac-sha256", &encode_signature(tag.as_ref()));
    assert!(headers.contains_key("x-ringpush-signature"));
    req.verify_with(&registry, &headers, NOW).unwrap();
}

#[test]
fn the_client_signer_produces_what_the_server_verifies() {
    let registry = registry();
    let signer = HmacSigner::new("hmac-app", SECRET.as_bytes());
    let signed = signer.sign("GET", "/v1/messages/k?target=t", b"", NOW, "signer-nonce");
    let mut headers = HeaderMap::new();
    for (name, value) in signed.pairs() {
        headers.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    verify(&registry, "GET", "/v1/messages/k?target=t", &headers, b"", NOW).unwrap();
    assert!(!format!("{signer:?}").contains(SECRET));
}

/// Pins the string to sign and the signature of docs/api.md's worked
/// example: a change here breaks every client.
#[test]
fn the_documented_example_signature() {
    let text = string_to_sign(
        "POST",
        "/v1/push/simple",
        "shop",
        "1700000000000",
        "3f1c2a9e7b6d4c10",
        br#"{"appId":"shop"}"#,
    );
    let body_hash = hex_sha256(br#"{"appId":"shop"}"#);
    assert_eq!(
        text,
        format!("POST\n/v1/push/simple\nshop\n1700000000000\n3f1c2a9e7b6d4c10\n{body_hash}")
    );
    let signer = HmacSigner::new("shop", b"docs-example-secret-0123456789");
    let signed = signer.sign(
        "POST",
        "/v1/push/simple",
        br#"{"appId":"shop"}"#,
        1_700_000_000_000,
        "3f1c2a9e7b6d4c10",
    );
    assert_eq!(signed.signature, DOCUMENTED_SIGNATURE);
}

/// The value docs/api.md shows for its example (computed there with openssl
/// and with python).
const DOCUMENTED_SIGNATURE: &str = "tJ9aTg76p-JsWEs3M7SUKMj2TZZySDXglxfo7M-78PY";

fn hex_sha256(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn failure_counters_are_indexed_by_declaration_order() {
    for (i, failure) in Failure::ALL.into_iter().enumerate() {
        assert_eq!(failure as usize, i);
    }
}

#[test]
fn debug_output_shows_no_credentials() {
    let registry = registry();
    let text = format!("{registry:?} {:?}", apps());
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("has_api_secret: true"), "{text}");
}

#[test]
fn rsa_public_keys_are_checked_at_load() {
    let der = rsa_public_key_from_pem(&fixture("rsa-2048-public.pem")).unwrap();
    assert!(der.len() > 256);
    let indented: String = fixture("rsa-2048-public.pem")
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    assert_eq!(rsa_public_key_from_pem(&format!("\n{indented}\n")).unwrap(), der);
    assert_eq!(
        rsa_public_key_from_pem(&fixture("rsa-1024-public.pem")),
        Err(KeyError::TooSmall(1024))
    );
    assert!(matches!(
        rsa_public_key_from_pem(&fixture("ec-p256-public.pem")),
        Err(KeyError::NotRsa(oid)) if oid == "1.2.840.10045.2.1"
    ));
    assert!(matches!(
        rsa_public_key_from_pem(&fixture("rsa-2048-private.pem")),
        Err(KeyError::Label(label)) if label == "PRIVATE KEY"
    ));
    assert!(matches!(
        rsa_public_key_from_pem("not a key"),
        Err(KeyError::Pem(_))
    ));
    let garbage = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    assert!(matches!(rsa_public_key_from_pem(garbage), Err(KeyError::Der(_))));
}

/// One way to change a signed request.
#[derive(Clone, Debug)]
enum Mutation {
    Method(String),
    PathByte(usize, u8),
    PathAppend(String),
    BodyByte(usize, u8),
    BodyAppend(Vec<u8>),
    BodyTruncate(usize),
    Timestamp(i64),
    Nonce(String),
    App(String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        prop::sample::select(vec!["GET", "PUT", "DELETE", "PATCH", "post"])
            .prop_map(|m| Mutation::Method(m.into())),
        (any::<usize>(), 0x21u8..0x7f).prop_map(|(i, b)| Mutation::PathByte(i, b)),
        "[a-z?=&/]{1,8}".prop_map(Mutation::PathAppend),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::BodyByte(i, b)),
        prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::BodyAppend),
        any::<usize>().prop_map(Mutation::BodyTruncate),
        (-300_000i64..300_000)
            .prop_filter("a change", |d| *d != 0)
            .prop_map(Mutation::Timestamp),
        "[A-Za-z0-9_-]{8,64}".prop_map(Mutation::Nonce),
        prop::sample::select(vec!["rsa-app", "off", "open", "hmac-ap", "hmac-app2"])
            .prop_map(|a| Mutation::App(a.into())),
    ]
}

fn mutate(req: &Req, mutation: &Mutation) -> Req {
    let mut out = req.clone();
    match mutation {
        Mutation::Method(m) => out.method.clone_from(m),
        Mutation::PathByte(i, b) => {
            let mut bytes = out.path.into_bytes();
            let i = i % bytes.len();
            bytes[i] = *b;
            out.path = String::from_utf8(bytes).unwrap();
        }
        Mutation::PathAppend(s) => out.path.push_str(s),
        Mutation::BodyByte(i, b) if !out.body.is_empty() => {
            let i = i % out.body.len();
            out.body[i] = *b;
        }
        Mutation::BodyByte(_, b) => out.body.push(*b),
        Mutation::BodyAppend(extra) => out.body.extend_from_slice(extra),
        Mutation::BodyTruncate(n) if !out.body.is_empty() => out.body.truncate(n % out.body.len()),
        Mutation::BodyTruncate(_) => out.body.push(b'x'),
        Mutation::Timestamp(d) => out.timestamp = (NOW as i64 + d).to_string(),
        Mutation::Nonce(n) => out.nonce.clone_from(n),
        Mutation::App(a) => out.app.clone_from(a),
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A signature over one request never verifies a request that differs
    /// in any signed part: method, path and query, app, timestamp, nonce or
    /// body.
    #[test]
    fn a_signature_never_verifies_a_mutated_request(
        method in prop::sample::select(vec!["POST", "GET"]),
        path in "/v1/[a-z]{1,10}(/[a-zA-Z0-9]{1,8})?(\\?[a-z]{1,5}=[a-z0-9]{0,8})?",
        body in prop::collection::vec(any::<u8>(), 0..200),
        nonce in "[A-Za-z0-9_-]{8,64}",
        rsa in any::<bool>(),
        mutation in mutation(),
    ) {
        let registry = registry();
        let app = if rsa { "rsa-app" } else { "hmac-app" };
        let req = Req { method: method.into(), path, app: app.into(), timestamp: NOW.to_string(), nonce, body };
        let signature = if rsa {
            encode_signature(&rsa_sign("rsa-2048-private.pem", &req.to_sign()))
        } else {
            let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes()), req.to_sign().as_bytes());
            encode_signature(tag.as_ref())
        };
        let method_name = if rsa { "RSA-SHA256" } else { "HMAC-SHA256" };
        let changed = mutate(&req, &mutation);
        prop_assume!(changed.to_sign() != req.to_sign());
        // The mutated request carries the original signature.
        let headers = changed.headers(method_name, &signature);
        let result = changed.verify_with(&registry, &headers, NOW);
        prop_assert!(result.is_err(), "{mutation:?} verified");
        // The original still verifies: the refusal recorded nothing.
        prop_assert!(req.verify_with(&registry, &req.headers(method_name, &signature), NOW).is_ok());
    }
}
