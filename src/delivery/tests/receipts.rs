//! Receipts: an ack of an app with a receipt URL makes one, handed over
//! only once the ack is durable, with the msgKey however the message was
//! kept (in memory, in the log, shared) and the right target.

use super::shared::user;
use super::*;
use crate::message::RegistryChange;
use crate::receipts::Receipt;

fn receipt_config() -> Config {
    let mut c = config();
    c.apps[0].receipt_url = Some("https://shop.example/receipts".into());
    c
}

impl Harness {
    fn with_receipts() -> Self {
        Self::with(receipt_config(), 0, 1)
    }

    fn receipts(&mut self) -> Vec<Receipt> {
        self.core.take_receipts().collect()
    }
}

#[test]
fn an_ack_makes_one_receipt_once_it_is_committed() {
    let mut h = Harness::with_receipts();
    let (conn, w) = h.device("");
    h.commit();
    let (id, _) = h.push(&w.token, "order-1", 60);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.ack(conn, &[id]);
    assert!(h.receipts().is_empty(), "not before the ack is in the log");
    h.commit();
    assert_eq!(
        h.receipts(),
        [Receipt {
            app: "demo".into(),
            msg_key: "order-1".into(),
            token: w.token.as_str().into(),
            platform: 1,
            user: None,
            task_id: 0,
            acked_at_ms: h.unix_ms(),
        }]
    );
    // A second ack of the same id finds nothing pending: no second receipt.
    h.ack(conn, &[id]);
    h.commit();
    assert!(h.receipts().is_empty());
}

#[test]
fn a_failed_commit_sends_no_receipt() {
    let mut h = Harness::with_receipts();
    let (conn, w) = h.device("");
    h.commit();
    let (id, _) = h.push(&w.token, "k", 60);
    h.output(conn);
    h.ack(conn, &[id]);
    h.core.journal_done(Err(StorageRefusal::Full), h.now);
    assert!(h.receipts().is_empty());
    h.commit();
    assert!(h.receipts().is_empty(), "not in a later commit either");
}

#[test]
fn apps_without_a_receipt_url_get_none() {
    let mut h = Harness::with_receipts();
    let conn = h.connect();
    h.hello(conn, "other", "");
    let token = match h.output(conn).first() {
        Some(Frame::Welcome(w)) => w.token.clone(),
        other => panic!("{other:?}"),
    };
    h.commit();
    let (id, _) = h.push_app("other", &token, "k", 60);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.ack(conn, &[id]);
    h.commit();
    assert!(h.receipts().is_empty());
}

#[test]
fn a_message_kept_in_the_log_is_read_back_for_its_receipt() {
    let mut h = Harness::with(receipt_config(), 0, 1);
    let segments = MemorySegments::default();
    h.core.set_log_reader(Box::new(segments.clone()));
    h.segments = Some(segments);
    let token = offline_device(&mut h);
    h.commit();
    let (id, _) = h.push(&token, "waited", 60);
    assert_eq!(h.frames_in_memory(), 0);
    let (conn, _) = h.device(&token);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.ack(conn, &[id]);
    h.commit();
    let receipts = h.receipts();
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        (&*receipts[0].msg_key, &*receipts[0].token),
        ("waited", token.as_str())
    );
}

#[test]
fn a_push_by_user_names_the_user_and_its_task() {
    let mut h = Harness::with_receipts();
    let (conn, w) = h.device("");
    h.commit();
    assert_eq!(h.registry(&w.token, RegistryChange::Bind("alice".into())), 100);
    let (id, _) = h.publish(user("alice"), "u1", 60);
    assert_eq!(push_ids(&h.output(conn)), [id]);
    h.ack(conn, &[id]);
    h.commit();
    let receipts = h.receipts();
    assert_eq!(receipts.len(), 1);
    let r = &receipts[0];
    assert_eq!(
        (r.user.as_deref(), &*r.msg_key, r.task_id),
        (Some("alice"), "u1", 7)
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
    assert_eq!(body["targetId"], "alice");
    assert_eq!(body["extInfo"]["adToken"], w.token.as_str());
    assert_eq!(body["taskId"], "7");
}
