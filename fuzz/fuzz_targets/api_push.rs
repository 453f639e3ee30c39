//! Arbitrary request bodies into the push API's decoding and validation: a
//! result code or messages, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ringpush::api::auth::{AppRegistry, AuthenticatedApp};
use ringpush::api::push;
use ringpush::config::Config;

fuzz_target!(|data: &[u8]| {
    static CALLER: OnceLock<(Config, AuthenticatedApp)> = OnceLock::new();
    // The default config's demo app takes unsigned requests.
    let (config, caller) = CALLER.get_or_init(|| {
        let config = Config::default();
        let registry = AppRegistry::new(&config.apps, 1).expect("the default apps load");
        let caller = AuthenticatedApp::unsigned(Arc::new(registry));
        (config, caller)
    });
    if let Ok(request) = push::parse(data, config, caller) {
        let mut id = 0;
        let _ = request.messages(1_700_000_000_000, 0, || {
            id += 1;
            id
        });
    }
});
