//! Device authentication: proving that a Hello comes from a device of the
//! app it names (docs/protocol.md, "Device authentication"). Owns the two
//! proofs — a Hello signed with the app's device secret, and a credential
//! the app's backend minted with that secret — their encodings, the
//! checks, and the signed Hellos' nonce memory. It is a pure function of
//! the Hello, the clock and the configuration (no sockets, no time of its
//! own), shared by every shard behind an `Arc`: a replayed nonce must be
//! caught whichever shard SO_REUSEPORT gives the connection to. Deciding
//! what a refused Hello gets (an Error frame, a GoAway) is the core's.
//!
//! The client side (`sign_hello`, `mint_credential`) is here too, so the
//! bench client, the tests and the server share one definition of what is
//! signed.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, Engine as _};
use parking_lot::Mutex;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::api::auth::{NonceCache, NonceRefusal, MAX_NONCE_CHARS, MIN_NONCE_CHARS};
use crate::config::{Config, DeviceAuthMode};
use crate::protocol::body;

/// First line of a signed Hello's string to sign: names the scheme and its
/// version, so a signature made for anything else never verifies here.
pub const HELLO_CONTEXT: &str = "ringpush-hello-v1";
/// What a credential's MAC covers before its payload, for the same reason.
pub const CREDENTIAL_CONTEXT: &str = "ringpush-credential-v1";
/// Longest credential accepted, in bytes; longer ones are refused before
/// any decoding.
pub const MAX_CREDENTIAL_CHARS: usize = 1024;
/// HMAC-SHA256 output.
pub const SIGNATURE_BYTES: usize = 32;
/// Longest token a credential may bind (the core's token limit).
const MAX_BOUND_TOKEN_CHARS: usize = 128;
const MAX_APP_ID_CHARS: usize = 64;

/// base64url without padding; decoding also accepts padding.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a Hello was refused: the label of
/// `ringpush_device_auth_failures_total{reason}` and of the Error frame's
/// reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Neither a signature nor a credential, for an app that requires one.
    Missing,
    /// A field not in its format, or both proofs at once.
    Malformed,
    BadSignature,
    /// The signed Hello's timestamp is outside `device_auth.max_skew_secs`,
    /// or before this process started (its nonce could not be checked).
    ClockSkew,
    ReplayedNonce,
    /// `device_auth.nonces_per_app` unexpired nonces are held for the app:
    /// our capacity, not the device's fault (it is told to come back).
    NonceCacheFull,
    /// The credential's expiry has passed.
    Expired,
    /// The credential expires further ahead than
    /// `device_auth.max_credential_secs`.
    TooLongLived,
    /// The credential names another app than the Hello.
    WrongApp,
    /// The credential is bound to another token than the Hello presents.
    WrongToken,
}

impl Failure {
    pub const ALL: [Failure; 10] = [
        Self::Missing,
        Self::Malformed,
        Self::BadSignature,
        Self::ClockSkew,
        Self::ReplayedNonce,
        Self::NonceCacheFull,
        Self::Expired,
        Self::TooLongLived,
        Self::WrongApp,
        Self::WrongToken,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::ClockSkew => "clock_skew",
            Self::ReplayedNonce => "replayed_nonce",
            Self::NonceCacheFull => "nonce_cache_full",
            Self::Expired => "expired",
            Self::TooLongLived => "too_long_lived",
            Self::WrongApp => "wrong_app",
            Self::WrongToken => "wrong_token",
        }
    }
}

/// A refused Hello: which check failed and a reason a developer can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub failure: Failure,
    pub reason: String,
}

impl Refusal {
    fn new(failure: Failure, reason: impl Into<String>) -> Self {
        Self {
            failure,
            reason: reason.into(),
        }
    }
}

/// How an accepted Hello proved itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// The app does not require device authentication.
    NotRequired,
    Signature,
    Credential,
}

/// What a credential asserts. Field names are the JSON payload's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Claims {
    pub app_id: String,
    /// Unix milliseconds after which the credential is refused.
    pub exp: u64,
    /// When set, the credential is good only with a Hello presenting this
    /// token (a device the backend already knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A credential taken apart, before its MAC is checked.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodedCredential<'a> {
    pub claims: Claims,
    /// The text the MAC covers (after the context): the payload's base64url.
    pub signed: &'a str,
    pub mac: Vec<u8>,
}

/// Takes a credential (`base64url(payload) "." base64url(mac)`) apart and
/// checks its shape; untrusted input, so every length is bounded before it
/// is decoded.
pub fn decode_credential(text: &str) -> Result<DecodedCredential<'_>, String> {
    if text.len() > MAX_CREDENTIAL_CHARS {
        return Err(format!(
            "the credential is {} bytes; at most {MAX_CREDENTIAL_CHARS}",
            text.len()
        ));
    }
    let (signed, mac) = text
        .split_once('.')
        .ok_or("the credential must be base64url(payload) \".\" base64url(mac)")?;
    let mac = BASE64URL
        .decode(mac)
        .map_err(|_| "the credential's mac is not base64url")?;
    if mac.len() != SIGNATURE_BYTES {
        return Err(format!(
            "the credential's mac is {} bytes; HMAC-SHA256 gives {SIGNATURE_BYTES}",
            mac.len()
        ));
    }
    let payload = BASE64URL
        .decode(signed)
        .map_err(|_| "the credential's payload is not base64url")?;
    let claims: Claims =
        serde_json::from_slice(&payload).map_err(|e| format!("the credential's payload: {e}"))?;
    if claims.app_id.is_empty() || claims.app_id.len() > MAX_APP_ID_CHARS {
        return Err(format!(
            "the credential's appId must be 1..={MAX_APP_ID_CHARS} bytes"
        ));
    }
    if claims
        .token
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > MAX_BOUND_TOKEN_CHARS)
    {
        return Err(format!(
            "the credential's token must be 1..={MAX_BOUND_TOKEN_CHARS} bytes"
        ));
    }
    Ok(DecodedCredential { claims, signed, mac })
}

/// What a signed Hello's HMAC covers: the context, the app id, the token
/// presented (`new` when the device has none yet), the timestamp in decimal
/// and the nonce, one per line.
pub fn hello_string_to_sign(app_id: &str, token: &str, timestamp_ms: u64, nonce: &str) -> String {
    let token = if token.is_empty() { "new" } else { token };
    format!("{HELLO_CONTEXT}\n{app_id}\n{token}\n{timestamp_ms}\n{nonce}")
}

/// Client side: signs `hello` (its app id and token as set) with the app's
/// device secret, at `timestamp_ms`, with a fresh `nonce`.
pub fn sign_hello(secret: &[u8], hello: &mut body::Hello, timestamp_ms: u64, nonce: &str) {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let text = hello_string_to_sign(&hello.app_id, &hello.token, timestamp_ms, nonce);
    hello.timestamp_ms = timestamp_ms;
    hello.nonce = nonce.to_string();
    hello.signature = hmac::sign(&key, text.as_bytes()).as_ref().to_vec();
    hello.credential.clear();
}

/// Backend side: a credential for `claims`, MACed with the app's device
/// secret.
pub fn mint_credential(secret: &[u8], claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialize");
    let signed = BASE64URL.encode(payload);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mac = hmac::sign(&key, credential_string_to_sign(&signed).as_bytes());
    format!("{signed}.{}", BASE64URL.encode(mac.as_ref()))
}

fn credential_string_to_sign(signed: &str) -> String {
    format!("{CREDENTIAL_CONTEXT}\n{signed}")
}

/// A nonce is what the API accepts as one: 8..=64 URL-safe characters.
fn valid_nonce(nonce: &str) -> bool {
    (MIN_NONCE_CHARS..=MAX_NONCE_CHARS).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Describes this module's metrics (called once at start).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "ringpush_device_auth_failures_total",
        "Hellos refused by device authentication, by reason (missing, malformed, bad_signature, clock_skew, replayed_nonce, nonce_cache_full, expired, too_long_lived, wrong_app, wrong_token)"
    );
    metrics::describe_counter!(
        "ringpush_device_auth_accepted_total",
        "Hellos of apps requiring device authentication that proved themselves, by proof (signature, credential)"
    );
}

/// An app that requires device authentication: its key and the nonces of
/// its recent signed Hellos.
struct AppKey {
    key: hmac::Key,
    /// Shared with the `DeviceAuth` a reload builds: a Hello seen before
    /// the reload cannot be replayed after it.
    nonces: Arc<Mutex<NonceCache>>,
}

/// Every app's device-authentication settings; one per process, shared by
/// the shards.
pub struct DeviceAuth {
    /// Only apps with `deviceAuth = "required"`.
    apps: HashMap<Box<str>, AppKey>,
    max_skew_ms: u64,
    max_credential_ms: u64,
    /// Signed Hellos stamped before this are refused: nonces are not kept
    /// across a restart.
    not_before_ms: u64,
    failures: [metrics::Counter; Failure::ALL.len()],
    accepted: [metrics::Counter; 2],
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuth")
            .field("apps", &self.apps.keys().collect::<Vec<_>>())
            .field("max_skew_ms", &self.max_skew_ms)
            .finish_non_exhaustive()
    }
}

impl DeviceAuth {
    /// From validated config; `started_ms` is the process's start (unix ms).
    pub fn new(config: &Config, started_ms: u64) -> Self {
        Self::build(config, started_ms, None)
    }

    /// The settings of a reloaded configuration: apps that still require
    /// authentication keep their nonce memory (with a new key if their
    /// secret changed), and the start-time cut-off stays.
    /// `device_auth.max_skew_secs` and `nonces_per_app` size that memory,
    /// so a reload keeps their running values (`reload`).
    pub fn reconfigure(&self, config: &Config) -> Self {
        Self::build(config, self.not_before_ms, Some(self))
    }

    fn build(config: &Config, started_ms: u64, previous: Option<&Self>) -> Self {
        let a = &config.device_auth;
        let max_skew_ms = a.max_skew_secs * 1000;
        let apps = config
            .apps
            .iter()
            .filter(|app| app.device_auth == DeviceAuthMode::Required)
            .filter_map(|app| {
                let secret = app.device_secret.as_ref()?;
                let nonces = previous
                    .and_then(|p| p.apps.get(app.app_id.as_str()))
                    .map(|before| before.nonces.clone())
                    .unwrap_or_else(|| {
                        Arc::new(Mutex::new(NonceCache::with_window(a.nonces_per_app, max_skew_ms)))
                    });
                Some((
                    app.app_id.as_str().into(),
                    AppKey {
                        key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose()),
                        nonces,
                    },
                ))
            })
            .collect();
        Self {
            apps,
            max_skew_ms,
            max_credential_ms: a.max_credential_secs.saturating_mul(1000),
            not_before_ms: started_ms,
            failures: Failure::ALL
                .map(|f| metrics::counter!("ringpush_device_auth_failures_total", "reason" => f.label())),
            accepted: ["signature", "credential"]
                .map(|p| metrics::counter!("ringpush_device_auth_accepted_total", "proof" => p)),
        }
    }

    /// Checks a Hello's proof for its app (already known to be configured).
    /// Counts the outcome.
    pub fn check(&self, hello: &body::Hello, now_ms: u64) -> Result<Proof, Refusal> {
        let Some(app) = self.apps.get(hello.app_id.as_str()) else {
            return Ok(Proof::NotRequired);
        };
        let result = match (hello.signature.is_empty(), hello.credential.is_empty()) {
            (true, true) => Err(Refusal::new(
                Failure::Missing,
                "this app requires device authentication: sign the Hello (timestamp_ms, nonce, \
                 signature) or present a credential",
            )),
            (false, false) => Err(Refusal::new(
                Failure::Malformed,
                "a Hello carries a signature or a credential, not both",
            )),
            (false, true) => self
                .check_signature(app, hello, now_ms)
                .map(|()| Proof::Signature),
            (true, false) => self
                .check_credential(app, hello, now_ms)
                .map(|()| Proof::Credential),
        };
        match &result {
            Ok(Proof::Signature) => self.accepted[0].increment(1),
            Ok(Proof::Credential) => self.accepted[1].increment(1),
            Ok(Proof::NotRequired) => {}
            Err(r) => self.failures[r.failure as usize].increment(1),
        }
        result
    }

    fn check_signature(&self, app: &AppKey, hello: &body::Hello, now_ms: u64) -> Result<(), Refusal> {
        if !valid_nonce(&hello.nonce) {
            return Err(Refusal::new(
                Failure::Malformed,
                format!("nonce must be {MIN_NONCE_CHARS}..={MAX_NONCE_CHARS} characters of A-Z a-z 0-9 - _"),
            ));
        }
        if hello.signature.len() != SIGNATURE_BYTES {
            return Err(Refusal::new(
                Failure::Malformed,
                format!("signature must be {SIGNATURE_BYTES} bytes (HMAC-SHA256)"),
            ));
        }
        let skew_ms = now_ms.abs_diff(hello.timestamp_ms);
        if skew_ms > self.max_skew_ms {
            let side = if hello.timestamp_ms > now_ms {
                "ahead of"
            } else {
                "behind"
            };
            return Err(Refusal::new(
                Failure::ClockSkew,
                format!(
                    "timestamp_ms is {:.1} s {side} the server's clock; at most {} s either way \
                     (Welcome.server_time_ms is the server's clock)",
                    skew_ms as f64 / 1000.0,
                    self.max_skew_ms / 1000
                ),
            ));
        }
        if hello.timestamp_ms < self.not_before_ms {
            return Err(Refusal::new(
                Failure::ClockSkew,
                "timestamp_ms is before this server started: nonces are not kept across a restart, \
                 so such a Hello could be a replay; sign again with the current time",
            ));
        }
        let text = hello_string_to_sign(&hello.app_id, &hello.token, hello.timestamp_ms, &hello.nonce);
        // Constant time: ring compares the tags without early exit.
        if hmac::verify(&app.key, text.as_bytes(), &hello.signature).is_err() {
            return Err(Refusal::new(
                Failure::BadSignature,
                "signature does not match (HMAC-SHA256 with the app's device secret over \
                 context, app id, token or \"new\", timestamp and nonce; see docs/protocol.md)",
            ));
        }
        // Recorded only once the signature verified: nobody without the
        // secret can fill the cache.
        app.nonces
            .lock()
            .insert(hello.nonce.as_bytes(), hello.timestamp_ms, now_ms)
            .map_err(|refusal| match refusal {
                NonceRefusal::Replayed => Refusal::new(
                    Failure::ReplayedNonce,
                    "nonce was already used by a recent Hello of this app (a replay?); use a new \
                     random nonce for every Hello",
                ),
                NonceRefusal::Full => Refusal::new(
                    Failure::NonceCacheFull,
                    "too many signed Hellos of this app in the skew window \
                     (device_auth.nonces_per_app); retry shortly",
                ),
            })
    }

    fn check_credential(&self, app: &AppKey, hello: &body::Hello, now_ms: u64) -> Result<(), Refusal> {
        let decoded =
            decode_credential(&hello.credential).map_err(|e| Refusal::new(Failure::Malformed, e))?;
        let text = credential_string_to_sign(decoded.signed);
        if hmac::verify(&app.key, text.as_bytes(), &decoded.mac).is_err() {
            return Err(Refusal::new(
                Failure::BadSignature,
                "the credential's mac does not match (HMAC-SHA256 with the app's device secret; \
                 see docs/protocol.md)",
            ));
        }
        let claims = &decoded.claims;
        if claims.app_id != hello.app_id {
            // Only reachable when two apps share a device secret.
            return Err(Refusal::new(
                Failure::WrongApp,
                format!("the credential is for app {:?}", claims.app_id),
            ));
        }
        if claims.exp <= now_ms {
            return Err(Refusal::new(
                Failure::Expired,
                format!(
                    "the credential expired {:.1} s ago; ask the app's backend for a new one",
                    (now_ms - claims.exp) as f64 / 1000.0
                ),
            ));
        }
        if claims.exp - now_ms > self.max_credential_ms {
            return Err(Refusal::new(
                Failure::TooLongLived,
                format!(
                    "the credential expires in {} s; at most device_auth.max_credential_secs = {} s",
                    (claims.exp - now_ms) / 1000,
                    self.max_credential_ms / 1000
                ),
            ));
        }
        if let Some(token) = &claims.token {
            if *token != hello.token {
                return Err(Refusal::new(
                    Failure::WrongToken,
                    "the credential is bound to another token than the Hello presents",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{App, Secret};

    const T0: u64 = 1_767_225_600_000;
    const SECRET: &str = "device-secret-of-the-doc-example";

    fn config() -> Config {
        let config = Config {
            apps: vec![
                App {
                    device_secret: Some(Secret::new(SECRET)),
                    device_auth: DeviceAuthMode::Required,
                    allow_unsigned: true,
                    ..App::new("demo", "default")
                },
                App {
                    device_secret: Some(Secret::new("the-other-apps-device-secret")),
                    device_auth: DeviceAuthMode::Required,
                    allow_unsigned: true,
                    ..App::new("other", "default")
                },
                App {
                    allow_unsigned: true,
                    ..App::new("open", "default")
                },
            ],
            ..Config::default()
        };
        config.validate().unwrap();
        config
    }

    fn auth() -> DeviceAuth {
        DeviceAuth::new(&config(), T0 - 60_000)
    }

    fn hello(app: &str, token: &str) -> body::Hello {
        body::Hello {
            protocol_version: 1,
            app_id: app.into(),
            platform: 1,
            token: token.into(),
            ..Default::default()
        }
    }

    fn signed(app: &str, token: &str, secret: &str, at: u64, nonce: &str) -> body::Hello {
        let mut h = hello(app, token);
        sign_hello(secret.as_bytes(), &mut h, at, nonce);
        h
    }

    fn failure(r: Result<Proof, Refusal>) -> Failure {
        r.expect_err("refused").failure
    }

    /// The worked example in docs/protocol.md, "Device authentication".
    #[test]
    fn the_documented_vectors() {
        let text = hello_string_to_sign("demo", "", 1_767_225_600_000, "n0nce-0001");
        assert_eq!(text, "ringpush-hello-v1\ndemo\nnew\n1767225600000\nn0nce-0001");
        let h = signed("demo", "", SECRET, 1_767_225_600_000, "n0nce-0001");
        assert_eq!(
            hex(&h.signature),
            "e98bd63e7bce5ec640fa0bd92c1e44de783c3900a977d90fe3f9d5616ba65b9f"
        );
        let credential = mint_credential(
            SECRET.as_bytes(),
            &Claims {
                app_id: "demo".into(),
                exp: 1_767_229_200_000,
                token: None,
            },
        );
        assert_eq!(
            credential,
            "eyJhcHBJZCI6ImRlbW8iLCJleHAiOjE3NjcyMjkyMDAwMDB9.14jozbt61EAl7eJk4Bab-cfk1tvyEfvgdEMr_H4yc70"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_good_signed_hello_passes_once() {
        let auth = auth();
        let h = signed("demo", "", SECRET, T0, "nonce-0001");
        assert_eq!(auth.check(&h, T0 + 1_000), Ok(Proof::Signature));
        assert_eq!(failure(auth.check(&h, T0 + 2_000)), Failure::ReplayedNonce);
        let again = signed("demo", "", SECRET, T0, "nonce-0002");
        assert_eq!(auth.check(&again, T0 + 2_000), Ok(Proof::Signature));
    }

    #[test]
    fn a_signature_covers_every_field() {
        let auth = auth();
        let good = signed("demo", "tok-1", SECRET, T0, "nonce-0001");
        let mut other_token = good.clone();
        other_token.token = "tok-2".into();
        assert_eq!(failure(auth.check(&other_token, T0)), Failure::BadSignature);
        let mut other_time = good.clone();
        other_time.timestamp_ms += 1;
        assert_eq!(failure(auth.check(&other_time, T0)), Failure::BadSignature);
        let mut other_nonce = good.clone();
        other_nonce.nonce = "nonce-0003".into();
        assert_eq!(failure(auth.check(&other_nonce, T0)), Failure::BadSignature);
        // Another app's secret, and another app's name on this app's proof.
        let wrong_secret = signed("demo", "", "the-other-apps-device-secret", T0, "nonce-0004");
        assert_eq!(failure(auth.check(&wrong_secret, T0)), Failure::BadSignature);
        let mut moved = signed("other", "", "the-other-apps-device-secret", T0, "nonce-0005");
        moved.app_id = "demo".into();
        assert_eq!(failure(auth.check(&moved, T0)), Failure::BadSignature);
        assert_eq!(auth.check(&good, T0), Ok(Proof::Signature));
    }

    #[test]
    fn the_skew_window_is_inclusive_and_bounded() {
        let auth = auth();
        let window = 300_000;
        let at_edge = signed("demo", "", SECRET, T0, "nonce-edge");
        assert_eq!(auth.check(&at_edge, T0 + window), Ok(Proof::Signature));
        let late = signed("demo", "", SECRET, T0, "nonce-late");
        assert_eq!(failure(auth.check(&late, T0 + window + 1)), Failure::ClockSkew);
        let ahead = signed("demo", "", SECRET, T0 + window + 1, "nonce-ahead");
        assert_eq!(failure(auth.check(&ahead, T0)), Failure::ClockSkew);
        // Within the window but before the process started.
        let before_start = signed("demo", "", SECRET, T0 - 61_000, "nonce-old1");
        let err = auth.check(&before_start, T0).unwrap_err();
        assert_eq!(err.failure, Failure::ClockSkew);
        assert!(
            err.reason.contains("before this server started"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn malformed_and_missing_proofs() {
        let auth = auth();
        assert_eq!(failure(auth.check(&hello("demo", ""), T0)), Failure::Missing);
        assert_eq!(
            failure(auth.check(&signed("demo", "", SECRET, T0, "short"), T0)),
            Failure::Malformed
        );
        assert_eq!(
            failure(auth.check(&signed("demo", "", SECRET, T0, "bad nonce!"), T0)),
            Failure::Malformed
        );
        let mut truncated = signed("demo", "", SECRET, T0, "nonce-0001");
        truncated.signature.pop();
        assert_eq!(failure(auth.check(&truncated, T0)), Failure::Malformed);
        let mut both = signed("demo", "", SECRET, T0, "nonce-0002");
        both.credential = "x.y".into();
        assert_eq!(failure(auth.check(&both, T0)), Failure::Malformed);
        // An app without device authentication takes a bare Hello.
        assert_eq!(auth.check(&hello("open", ""), T0), Ok(Proof::NotRequired));
    }

    #[test]
    fn a_full_nonce_cache_refuses_rather_than_forgets() {
        let mut config = config();
        config.device_auth.nonces_per_app = 2;
        let auth = DeviceAuth::new(&config, T0 - 60_000);
        for n in ["nonce-0001", "nonce-0002"] {
            assert_eq!(
                auth.check(&signed("demo", "", SECRET, T0, n), T0),
                Ok(Proof::Signature)
            );
        }
        let third = signed("demo", "", SECRET, T0, "nonce-0003");
        assert_eq!(failure(auth.check(&third, T0)), Failure::NonceCacheFull);
        // Per app: the other app still has room.
        let other = signed("other", "", "the-other-apps-device-secret", T0, "nonce-0003");
        assert_eq!(auth.check(&other, T0), Ok(Proof::Signature));
        // Once the first two leave the window there is room again.
        let later = T0 + 302_000;
        let fourth = signed("demo", "", SECRET, later, "nonce-0004");
        assert_eq!(auth.check(&fourth, later), Ok(Proof::Signature));
    }

    fn with_credential(app: &str, token: &str, credential: String) -> body::Hello {
        body::Hello {
            credential,
            ..hello(app, token)
        }
    }

    fn claims(app: &str, exp: u64, token: Option<&str>) -> Claims {
        Claims {
            app_id: app.into(),
            exp,
            token: token.map(Into::into),
        }
    }

    #[test]
    fn credentials_expire_and_bind() {
        let auth = auth();
        let c = mint_credential(SECRET.as_bytes(), &claims("demo", T0 + 3_600_000, None));
        let h = with_credential("demo", "", c);
        // Reusable until it expires: a device reconnects with it.
        assert_eq!(auth.check(&h, T0), Ok(Proof::Credential));
        assert_eq!(auth.check(&h, T0 + 1), Ok(Proof::Credential));
        assert_eq!(failure(auth.check(&h, T0 + 3_600_000)), Failure::Expired);

        let bound = mint_credential(SECRET.as_bytes(), &claims("demo", T0 + 60_000, Some("tok-1")));
        assert_eq!(
            auth.check(&with_credential("demo", "tok-1", bound.clone()), T0),
            Ok(Proof::Credential)
        );
        assert_eq!(
            failure(auth.check(&with_credential("demo", "tok-2", bound.clone()), T0)),
            Failure::WrongToken
        );
        assert_eq!(
            failure(auth.check(&with_credential("demo", "", bound), T0)),
            Failure::WrongToken
        );

        let forever = mint_credential(SECRET.as_bytes(), &claims("demo", T0 + 8 * 86_400_000, None));
        assert_eq!(
            failure(auth.check(&with_credential("demo", "", forever), T0)),
            Failure::TooLongLived
        );
    }

    #[test]
    fn a_credential_is_good_for_its_own_app_only() {
        let auth = auth();
        // Minted by the other app's backend, presented to this app.
        let theirs = mint_credential(
            b"the-other-apps-device-secret",
            &claims("other", T0 + 60_000, None),
        );
        assert_eq!(
            failure(auth.check(&with_credential("demo", "", theirs.clone()), T0)),
            Failure::BadSignature
        );
        assert_eq!(
            auth.check(&with_credential("other", "", theirs), T0),
            Ok(Proof::Credential)
        );
        // This app's key over a payload naming another app.
        let renamed = mint_credential(SECRET.as_bytes(), &claims("other", T0 + 60_000, None));
        assert_eq!(
            failure(auth.check(&with_credential("demo", "", renamed), T0)),
            Failure::WrongApp
        );
        // A tampered payload.
        let good = mint_credential(SECRET.as_bytes(), &claims("demo", T0 + 60_000, None));
        let (_, mac) = good.split_once('.').unwrap();
        let longer = BASE64URL.encode(serde_json::to_vec(&claims("demo", T0 + 3_600_000, None)).unwrap());
        assert_eq!(
            failure(auth.check(&with_credential("demo", "", format!("{longer}.{mac}")), T0)),
            Failure::BadSignature
        );
    }

    #[test]
    fn the_credential_decoder_bounds_and_explains() {
        let long = "a".repeat(MAX_CREDENTIAL_CHARS + 1);
        assert!(decode_credential(&long).unwrap_err().contains("at most"));
        assert!(decode_credential("no-dot").is_err());
        assert!(decode_credential("!!!.AAAA").is_err());
        let mac = BASE64URL.encode([0u8; 32]);
        let payload = |json: &str| format!("{}.{mac}", BASE64URL.encode(json));
        assert!(decode_credential(&payload(r#"{"appId":"demo","exp":1}"#)).is_ok());
        assert!(decode_credential(&payload(r#"{"appId":"demo","exp":1,"x":1}"#))
            .unwrap_err()
            .contains("unknown field"));
        assert!(decode_credential(&payload(r#"{"appId":"","exp":1}"#)).is_err());
        assert!(decode_credential(&payload(r#"{"appId":"demo","exp":1,"token":""}"#)).is_err());
        assert!(decode_credential(&format!(
            "{}.AAAA",
            BASE64URL.encode(r#"{"appId":"demo","exp":1}"#)
        ))
        .unwrap_err()
        .contains("32"));
    }

    proptest::proptest! {
        #[test]
        fn minted_credentials_round_trip(
            app in "[a-z]{1,64}",
            exp in proptest::prelude::any::<u64>(),
            token in proptest::option::of("[A-Za-z0-9]{1,128}"),
        ) {
            let c = claims(&app, exp, token.as_deref());
            let text = mint_credential(b"0123456789abcdef", &c);
            let decoded = decode_credential(&text).unwrap();
            proptest::prop_assert_eq!(decoded.claims, c);
        }

        #[test]
        fn arbitrary_credentials_never_panic(text in "\\PC{0,200}") {
            let _ = decode_credential(&text);
        }
    }
}
