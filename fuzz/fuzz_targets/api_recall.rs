//! Arbitrary request bodies into the recall endpoints' decoding and
//! validation (`/v1/push/recall` and `/v1/push/recall-task`): a result code
//! or a recall that names what the body named, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ringpush::api::auth::{AppRegistry, AuthenticatedApp};
use ringpush::api::recall;
use ringpush::config::Config;
use ringpush::message::RecallTarget;

fuzz_target!(|data: &[u8]| {
    static CALLER: OnceLock<AuthenticatedApp> = OnceLock::new();
    // The default config's demo app takes unsigned requests.
    let caller = CALLER.get_or_init(|| {
        let registry = AppRegistry::new(&Config::default().apps, 1).expect("the default apps load");
        AuthenticatedApp::unsigned(Arc::new(registry))
    });
    if let Ok(request) = recall::parse_message(data, caller) {
        assert_eq!(&*request.app_id, "demo");
        match request.target {
            RecallTarget::Token { msg_key, token } => {
                assert!(!msg_key.is_empty() && msg_key.chars().count() <= 64);
                assert!(!token.is_empty() && token.len() <= 128);
            }
            RecallTarget::User { msg_key, user_id } => {
                assert!(!msg_key.is_empty() && msg_key.chars().count() <= 64);
                assert!(!user_id.is_empty() && user_id.chars().count() <= 60);
            }
            RecallTarget::Task(_) => panic!("a message recall names no task"),
        }
    }
    if let Ok(request) = recall::parse_task(data, caller) {
        assert!(matches!(request.target, RecallTarget::Task(t) if t > 0));
    }
});
