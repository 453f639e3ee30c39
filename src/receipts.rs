//! Delivery receipts (docs/api.md, "Receipts"): what the delivery core
//! records when a device acks a message of an app with a `receiptUrl`
//! (`Receipt`), the MPS-shaped JSON body and the gateway's RSA-SHA256
//! signature over it (`Signer`), and the bounded per-app queues a shard
//! hands receipts to once their ack is committed (`ReceiptQueue`). The
//! retry policy is in `retry`, the HTTP sender in `sender`. A shard never
//! waits here: a full queue drops the receipt and counts it.

pub mod outbox;
mod retry;
pub mod sender;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use base64::Engine as _;
use metrics::{Counter, Gauge};
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::Config;

pub use retry::{Attempt, RetryPolicy, Verdict};

/// One acknowledged message of an app with a receipt URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub app: Arc<str>,
    /// The app's key for the message (`msgId` in the body).
    pub msg_key: Box<str>,
    /// The token of the device that acked (`extInfo.adToken`).
    pub token: Box<str>,
    /// 1 Android, 2 iOS, 7 HarmonyOS (`extInfo.osType`).
    pub platform: u8,
    /// The userId a push by user was addressed to: the `targetId` then,
    /// the token otherwise.
    pub user: Option<Box<str>>,
    /// The task id of a multiple, broadcast, group or tag push (0: none).
    pub task_id: u64,
    /// Unix ms of the ack: a receipt saved by one run and posted by the
    /// next keeps its age.
    pub acked_at_ms: u64,
}

/// The receipt body, field for field as MPS sends it (keys in this order),
/// plus `taskId` for pushes that have one.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    ext_info: ExtInfo<'a>,
    msg_id: &'a str,
    push_success: bool,
    status_code: &'static str,
    status_desc: &'static str,
    target_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtInfo<'a> {
    ad_token: &'a str,
    os_type: &'static str,
}

/// MPS's `osType` for a platform number.
pub fn os_type(platform: u8) -> &'static str {
    match platform {
        1 => "android",
        2 => "ios",
        7 => "harmony",
        _ => "unknown",
    }
}

impl Receipt {
    /// The exact bytes that are POSTed and signed.
    pub fn body(&self) -> Vec<u8> {
        let body = Body {
            ext_info: ExtInfo {
                ad_token: &self.token,
                os_type: os_type(self.platform),
            },
            msg_id: &self.msg_key,
            push_success: true,
            status_code: "2",
            status_desc: "Acked",
            target_id: self.user.as_deref().unwrap_or(&self.token),
            task_id: (self.task_id != 0).then(|| self.task_id.to_string()),
        };
        serde_json::to_vec(&body).expect("a struct of strings always serializes")
    }
}

/// With `receipts.batch_max` > 1: the receipts' bodies as one JSON array,
/// each element exactly the body it would have alone.
pub fn batch_body(receipts: &[Receipt]) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, r) in receipts.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&r.body());
    }
    body.push(b']');
    body
}

/// The gateway's receipt key: signs bodies, publishes its public half.
pub struct Signer {
    key: RsaKeyPair,
    rng: ring::rand::SystemRandom,
}

/// Smallest receipt signing key, in bits.
pub const MIN_KEY_BITS: usize = 2048;

impl Signer {
    /// Reads `receipts.signing_key_file`: a PKCS#8 PEM ("BEGIN PRIVATE KEY",
    /// what `openssl genpkey` writes) or PKCS#1 ("BEGIN RSA PRIVATE KEY")
    /// RSA key of at least 2048 bits. Errors name the key and the file.
    pub fn load(path: &Path) -> anyhow::Result<Signer> {
        let context = || format!("receipts.signing_key_file {}", path.display());
        let pem = std::fs::read(path).with_context(context)?;
        Self::from_pem(&pem).with_context(context)
    }

    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Signer> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};
        let key = if let Ok(der) = PrivatePkcs8KeyDer::from_pem_slice(pem) {
            RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
                .map_err(|e| anyhow::anyhow!("not an RSA private key ({e})"))?
        } else if let Ok(der) = PrivatePkcs1KeyDer::from_pem_slice(pem) {
            RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map_err(|e| anyhow::anyhow!("not a usable RSA private key ({e})"))?
        } else {
            anyhow::bail!(
                "holds no \"BEGIN PRIVATE KEY\" (PKCS#8) or \"BEGIN RSA PRIVATE KEY\" PEM block; \
                 make one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`"
            );
        };
        let bits = key.public().modulus_len() * 8;
        if bits < MIN_KEY_BITS {
            anyhow::bail!("the RSA key has {bits} bits; at least {MIN_KEY_BITS} are needed");
        }
        Ok(Signer {
            key,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// RSA-SHA256 (PKCS#1 v1.5) over `body`, base64 with `+` as `-` and `/`
    /// as `_`, padding kept: MPS's `sign` parameter.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, body, &mut signature)
            .expect("the buffer is the modulus length");
        base64::engine::general_purpose::STANDARD
            .encode(signature)
            .replace('+', "-")
            .replace('/', "_")
    }

    /// The public key as PEM "BEGIN PUBLIC KEY" (SubjectPublicKeyInfo), what
    /// receivers verify `sign` with.
    pub fn public_key_pem(&self) -> String {
        use spki::der::{asn1::BitString, pem::LineEnding, EncodePem};
        let spki = spki::SubjectPublicKeyInfoOwned {
            algorithm: spki::AlgorithmIdentifierOwned {
                oid: spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1"),
                parameters: Some(spki::der::asn1::Null.into()),
            },
            subject_public_key: BitString::from_bytes(self.key.public().as_ref())
                .expect("a DER RSAPublicKey fits a bit string"),
        };
        spki.to_pem(LineEnding::LF).expect("an SPKI always encodes")
    }

    /// The public key as ring's DER RSAPublicKey, for verification in tests.
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public().as_ref()
    }
}

/// Undoes the `sign` encoding and verifies it over `body` with a DER
/// RSAPublicKey: what a receiver does (docs/api.md shows it with openssl).
pub fn verify(public_key_der: &[u8], body: &[u8], sign: &str) -> bool {
    let standard = sign.replace('-', "+").replace('_', "/");
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(standard) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public_key_der)
        .verify(body, &signature)
        .is_ok()
}

/// A receipt on its way, with when it was handed over (its age decides
/// when retrying stops).
pub struct Queued {
    pub receipt: Receipt,
    pub queued_at: Instant,
}

/// The shards' end of the per-app receipt queues. Cloned into every shard's
/// store; handing off never blocks.
#[derive(Clone)]
pub struct ReceiptQueue {
    apps: Arc<HashMap<Box<str>, AppQueue>>,
}

#[derive(Clone)]
struct AppQueue {
    tx: mpsc::Sender<Queued>,
    outstanding: Arc<Outstanding>,
    dropped_full: Counter,
}

/// Receipts of one app accepted into its queue and not yet finished
/// (queued, being posted or waiting to retry), mirrored in a gauge.
pub struct Outstanding {
    count: AtomicUsize,
    gauge: Gauge,
}

impl Outstanding {
    pub(crate) fn add(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.gauge.increment(1.0);
    }

    pub fn done(&self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.decrement(1.0);
    }

    pub fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl ReceiptQueue {
    /// Queues each receipt for its app, or drops and counts it when the
    /// app's queue is full.
    pub fn hand_off(&self, receipts: impl Iterator<Item = Receipt>, now: Instant) {
        for receipt in receipts {
            let Some(app) = self.apps.get(&*receipt.app) else {
                continue;
            };
            app.outstanding.add();
            if app
                .tx
                .try_send(Queued {
                    receipt,
                    queued_at: now,
                })
                .is_err()
            {
                app.outstanding.done();
                app.dropped_full.increment(1);
            }
        }
    }
}

/// One app's receiving end, for the sender.
pub struct AppReceiver {
    pub app: Arc<str>,
    pub url: String,
    pub rx: mpsc::Receiver<Queued>,
    pub outstanding: Arc<Outstanding>,
}

/// A queue per app with a `receiptUrl`, `receipts.queue_per_app` deep.
/// `None` when no app has one.
pub fn queues(config: &Config) -> Option<(ReceiptQueue, Vec<AppReceiver>)> {
    let mut apps = HashMap::new();
    let mut receivers = Vec::new();
    for app in &config.apps {
        let Some(url) = &app.receipt_url else { continue };
        let (tx, rx) = mpsc::channel(config.receipts.queue_per_app);
        let name = app.app_id.as_str();
        let outstanding = Arc::new(Outstanding {
            count: AtomicUsize::new(0),
            gauge: metrics::gauge!("ringpush_receipts_queued", "app" => name.to_string()),
        });
        apps.insert(
            name.into(),
            AppQueue {
                tx,
                outstanding: outstanding.clone(),
                dropped_full: dropped_counter(name, "queue_full"),
            },
        );
        receivers.push(AppReceiver {
            app: name.into(),
            url: url.clone(),
            rx,
            outstanding,
        });
    }
    (!receivers.is_empty()).then(|| (ReceiptQueue { apps: Arc::new(apps) }, receivers))
}

pub fn dropped_counter(app: &str, reason: &'static str) -> Counter {
    metrics::counter!("ringpush_receipts_dropped_total", "app" => app.to_string(), "reason" => reason)
}

pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ringpush_receipts_sent_total",
        "Receipt POSTs by app and result (ok: 2xx; rejected: 3xx or 4xx other than 408/429, not retried; retry: connection error, timeout, 408, 429 or 5xx)"
    );
    describe_counter!(
        "ringpush_receipts_dropped_total",
        "Receipts given up, by app and reason (queue_full, expired, rejected, not_durable, unreadable, shutdown)"
    );
    describe_gauge!(
        "ringpush_receipts_queued",
        "Receipts of an app queued, being posted or waiting to retry"
    );
    describe_histogram!(
        "ringpush_receipt_send_seconds",
        Unit::Seconds,
        "Time of one receipt POST, until the response is read"
    );
    describe_counter!(
        "ringpush_receipt_retries_total",
        "Receipt POSTs retried after a retryable failure"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = include_bytes!("../tests/fixtures/rsa-2048-private.pem");

    fn receipt() -> Receipt {
        Receipt {
            app: "shop".into(),
            msg_key: "console_1584853300103".into(),
            token: "da64bc9d7d448684".into(),
            platform: 2,
            user: None,
            task_id: 0,
            acked_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn body_is_mps_shaped() {
        assert_eq!(
            String::from_utf8(receipt().body()).unwrap(),
            r#"{"extInfo":{"adToken":"da64bc9d7d448684","osType":"ios"},"msgId":"console_1584853300103","pushSuccess":true,"statusCode":"2","statusDesc":"Acked","targetId":"da64bc9d7d448684"}"#
        );
        let by_user = Receipt {
            user: Some("alice \"A\"".into()),
            task_id: 42,
            platform: 7,
            ..receipt()
        };
        let json: serde_json::Value = serde_json::from_slice(&by_user.body()).unwrap();
        assert_eq!(json["targetId"], "alice \"A\"");
        assert_eq!(json["taskId"], "42");
        assert_eq!(json["extInfo"]["osType"], "harmony");
        assert_eq!(json["extInfo"]["adToken"], "da64bc9d7d448684");
    }

    fn any_receipt() -> impl proptest::strategy::Strategy<Value = Receipt> {
        use proptest::prelude::*;
        (
            "\\PC{0,64}",
            "[A-Za-z0-9_-]{1,40}",
            prop::option::of("\\PC{1,60}"),
            any::<u64>(),
            prop::sample::select(vec![1u8, 2, 7]),
            any::<u64>(),
        )
            .prop_map(|(msg_key, token, user, task_id, platform, acked_at_ms)| Receipt {
                app: "shop".into(),
                msg_key: msg_key.into(),
                token: token.into(),
                platform,
                user: user.map(Into::into),
                task_id,
                acked_at_ms,
            })
    }

    proptest::proptest! {
        /// Whatever the strings hold (quotes, backslashes, control and
        /// non-ASCII characters), the body is JSON that gives them back.
        #[test]
        fn any_body_parses_back_to_its_fields(r in any_receipt()) {
            let json: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
            proptest::prop_assert_eq!(json["msgId"].as_str(), Some(&*r.msg_key));
            proptest::prop_assert_eq!(json["extInfo"]["adToken"].as_str(), Some(&*r.token));
            proptest::prop_assert_eq!(json["targetId"].as_str(), Some(r.user.as_deref().unwrap_or(&r.token)));
            proptest::prop_assert_eq!(json["extInfo"]["osType"].as_str(), Some(os_type(r.platform)));
            let task = (r.task_id != 0).then(|| r.task_id.to_string());
            proptest::prop_assert_eq!(json["taskId"].as_str(), task.as_deref());
        }

        #[test]
        fn any_receipts_survive_the_outbox(receipts in proptest::collection::vec(any_receipt(), 0..8)) {
            let dir = std::env::temp_dir().join(format!(
                "ringpush-outbox-prop-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            outbox::save(&dir, &receipts).unwrap();
            let back = outbox::load(&dir).unwrap();
            std::fs::remove_dir_all(&dir).unwrap();
            proptest::prop_assert_eq!(back, receipts);
        }
    }

    #[test]
    fn a_batch_is_an_array_of_the_single_bodies() {
        let two = [
            receipt(),
            Receipt {
                task_id: 5,
                ..receipt()
            },
        ];
        let batch: serde_json::Value = serde_json::from_slice(&batch_body(&two)).unwrap();
        let singles: Vec<serde_json::Value> = two
            .iter()
            .map(|r| serde_json::from_slice(&r.body()).unwrap())
            .collect();
        assert_eq!(batch, serde_json::Value::Array(singles));
        assert_eq!(batch_body(&two[..1]), [b"[", &two[0].body()[..], b"]"].concat());
    }

    #[test]
    fn signature_verifies_with_the_public_key_and_only_over_the_body() {
        let signer = Signer::from_pem(KEY).unwrap();
        let body = receipt().body();
        // Enough bodies that the encoding meets both replaced characters.
        let mut seen = (false, false);
        for i in 0..40u64 {
            let body = Receipt {
                task_id: i,
                ..receipt()
            }
            .body();
            let sign = signer.sign(&body);
            assert!(!sign.contains('+') && !sign.contains('/'), "{sign}");
            seen.0 |= sign.contains('-');
            seen.1 |= sign.contains('_');
            assert!(verify(signer.public_key_der(), &body, &sign));
        }
        assert!(seen.0 && seen.1, "40 signatures without a - or a _");
        let sign = signer.sign(&body);
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert!(!verify(signer.public_key_der(), &tampered, &sign));
        let other = Signer::from_pem(include_bytes!("../tests/fixtures/rsa-2048-other-private.pem")).unwrap();
        assert!(!verify(other.public_key_der(), &body, &sign));
    }

    #[test]
    fn published_pem_is_the_signing_keys_public_half() {
        let signer = Signer::from_pem(KEY).unwrap();
        let pem = signer.public_key_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        // The same parser that reads apps' publicKey accepts it, and it is
        // the fixture's public key.
        crate::api::auth::rsa_public_key_from_pem(&pem).unwrap();
        assert_eq!(
            pem.trim(),
            include_str!("../tests/fixtures/rsa-2048-public.pem").trim()
        );
    }

    #[test]
    fn bad_keys_are_refused_with_a_reason() {
        let err = Signer::from_pem(b"nothing").err().unwrap().to_string();
        assert!(err.contains("BEGIN PRIVATE KEY"), "{err}");
        let public = include_bytes!("../tests/fixtures/rsa-2048-public.pem");
        assert!(Signer::from_pem(public).is_err());
        let err = Signer::load(Path::new("/nonexistent/receipts.key"))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("receipts.signing_key_file /nonexistent/receipts.key"));
    }

    #[test]
    fn a_full_queue_drops_and_never_blocks() {
        let mut config = Config::default();
        config.receipts.queue_per_app = 2;
        config.apps[0].receipt_url = Some("http://127.0.0.1:1/r".into());
        let (queue, mut receivers) = queues(&config).unwrap();
        let demo = Receipt {
            app: "demo".into(),
            ..receipt()
        };
        let other_app = receipt();
        queue.hand_off(
            [demo.clone(), other_app, demo.clone(), demo.clone()].into_iter(),
            Instant::now(),
        );
        let rx = &mut receivers[0];
        assert_eq!(rx.outstanding.get(), 2);
        assert_eq!(rx.rx.try_recv().unwrap().receipt, demo);
        assert_eq!(rx.rx.try_recv().unwrap().receipt, demo);
        assert!(rx.rx.try_recv().is_err());
        let mut none = Config::default();
        none.apps[0].receipt_url = None;
        assert!(queues(&none).is_none());
    }
}
