//! Arbitrary bytes into the API's remaining request decoders: template
//! create and replace bodies, the device registry bodies (bind, unbind,
//! group join/leave, vendor token), the token-update body, broadcast and
//! group push bodies (tag pushes are in `api_tags`), and the query strings
//! of the task list, statistics, device and template queries. The
//! first byte picks the decoder. A result code or a value, never a panic;
//! what decodes names the caller's app and keeps the documented bounds.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ringpush::api::auth::{AppRegistry, AuthenticatedApp};
use ringpush::api::devices::{self, Operation};
use ringpush::api::push::{self, PushKind};
use ringpush::api::{stats, templates};
use ringpush::config::Config;

const NOW_MS: u64 = 1_700_000_000_000;

/// `k=v&k2=v2` as axum's `Query<HashMap<String, String>>` hands it over
/// (after percent-decoding, which is axum's; the last value of a key wins).
fn query(bytes: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(bytes)
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

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
    match selector % 13 {
        0 => {
            if let Ok((app, draft)) = templates::parse_draft(body, caller, None) {
                assert_eq!(&*app, "demo");
                drop(draft);
            }
        }
        1 => {
            if let Ok((app, _)) = templates::parse_draft(body, caller, Some("welcome")) {
                assert_eq!(&*app, "demo");
            }
        }
        n @ 2..=7 => {
            let operation = Operation::ALL[usize::from(n - 2)];
            if let Ok((app, token, _change)) = devices::parse_change(body, caller, operation) {
                assert_eq!(&*app, "demo");
                assert!(!token.is_empty(), "{operation:?} without a token");
            }
        }
        8 => {
            if let Ok((app, token)) = devices::parse_rotation(body, caller) {
                assert_eq!(&*app, "demo");
                assert!(!token.is_empty());
            }
        }
        9 => {
            let q = query(body);
            let retention = config.stats.minute_retention_hours * 3_600_000;
            if let Ok(app) = stats::app_of(caller, &q) {
                assert_eq!(&*app, "demo");
            }
            if let Ok((Some(start), Some(end))) = stats::time_range(&q) {
                assert!(start <= end);
            }
            drop(stats::parse_query(&q, retention, NOW_MS));
        }
        10 => {
            let q = query(body);
            if let Ok(app) = templates::query_app(caller, &q) {
                assert_eq!(&*app, "demo");
            }
        }
        11 => drop(push::parse_fanout(body, config, caller, PushKind::Broadcast)),
        _ => drop(push::parse_fanout(body, config, caller, PushKind::Group)),
    }
});
