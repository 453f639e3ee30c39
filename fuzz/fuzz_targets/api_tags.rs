//! Arbitrary bytes into the tag decoders: a tag request body (create,
//! replace, add/remove), a tag push (with a title or a template), and a
//! tag file read back from disk. A result code or a value, never a panic;
//! a tag file that decodes holds valid, sorted, distinct userIds.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ringpush::api::auth::{AppRegistry, AuthenticatedApp};
use ringpush::api::push::{self, PushKind};
use ringpush::api::tags::{parse_request, TagOp};
use ringpush::config::Config;
use ringpush::tags::{decode_file, MAX_USER_ID_CHARS};

fuzz_target!(|data: &[u8]| {
    static CALLER: OnceLock<(Config, AuthenticatedApp)> = OnceLock::new();
    // The default config's demo app takes unsigned requests.
    let (config, caller) = CALLER.get_or_init(|| {
        let config = Config::default();
        let registry = AppRegistry::new(&config.apps, 1).expect("the default apps load");
        (config, AuthenticatedApp::unsigned(Arc::new(registry)))
    });
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => drop(parse_request(body, caller, TagOp::Create, None)),
        1 => drop(parse_request(body, caller, TagOp::Replace, Some("vip"))),
        2 => drop(parse_request(body, caller, TagOp::ChangeUsers, Some("vip"))),
        3 => drop(push::parse_fanout(body, config, caller, PushKind::Tag)),
        _ => {
            if let Ok(file) = decode_file(body, "demo") {
                assert!(file.ids.windows(2).all(|w| w[0] < w[1]));
                assert!(file
                    .ids
                    .iter()
                    .all(|id| !id.is_empty() && id.chars().count() <= MAX_USER_ID_CHARS));
            }
        }
    }
});
