//! Arbitrary request bodies into the push API's decoding and validation: a
//! result code or messages, never a panic.
#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use ringpush::api::push;
use ringpush::config::Config;

fuzz_target!(|data: &[u8]| {
    let config = Config::default();
    let apps: HashMap<String, Arc<str>> = [("demo".to_string(), Arc::from("demo"))].into();
    if let Ok(request) = push::parse(data, &config, &apps) {
        let mut id = 0;
        let _ = request.messages(1_700_000_000_000, 0, || {
            id += 1;
            id
        });
    }
});
