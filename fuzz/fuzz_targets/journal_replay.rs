//! Replays arbitrary log records into a delivery core: decoding a record
//! from disk must reject or apply it, never panic, and leave the core's
//! bookkeeping consistent. Input: records as `len: u8, kind: u8, payload`.

#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use ringpush::config::Config;
use ringpush::delivery::DeliveryCore;

fuzz_target!(|data: &[u8]| {
    let config = Config::default();
    let now = Instant::now();
    let mut core = DeliveryCore::with_wall_clock(0, 1, &config, now, 1_700_000_000_000);
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(rest[0]).min(rest.len() - 2);
        let kind = rest[1];
        let _ = core.replay(kind, &rest[2..2 + len], None, now);
        rest = &rest[2 + len..];
    }
    core.finish_replay();
    core.check_invariants();
});
