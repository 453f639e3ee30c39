//! Arbitrary request bodies into the multiple-push (and template-push)
//! decoding, validation and rendering against a fixed template: a result
//! code or messages, never a panic, and every message within the body limit.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ringpush::api::auth::{AppRegistry, AuthenticatedApp};
use ringpush::api::push::{self, PushKind, MAX_PUSH_BODY_BYTES};
use ringpush::config::Config;
use ringpush::protocol::HEADER_LEN;
use ringpush::templates::{validate, Draft};

fuzz_target!(|data: &[u8]| {
    static CALLER: OnceLock<(Config, AuthenticatedApp)> = OnceLock::new();
    // The default config's demo app takes unsigned requests.
    let (config, caller) = CALLER.get_or_init(|| {
        let config = Config::default();
        let registry = AppRegistry::new(&config.apps, 1).expect("the default apps load");
        (config, AuthenticatedApp::unsigned(Arc::new(registry)))
    });
    let template = validate(
        Draft {
            name: "prize".into(),
            title: "Hi #name#".into(),
            content: "#name#, you won #money# ##1".into(),
            uri: "app://p/#money#".into(),
            ..Default::default()
        },
        0,
    )
    .expect("a valid template");
    for kind in [PushKind::Multiple, PushKind::Template] {
        let Ok(templated) = push::parse_templated(data, config, caller, kind) else {
            continue;
        };
        let Ok(request) = templated.render(&template) else {
            continue;
        };
        let mut id = 0;
        if let Ok(messages) = request.messages(1_700_000_000_000, 7, || {
            id += 1;
            id
        }) {
            assert_eq!(messages.len(), request.targets.len());
            for m in &messages {
                assert!(m.frame.len() - HEADER_LEN <= MAX_PUSH_BODY_BYTES);
            }
        }
    }
});
