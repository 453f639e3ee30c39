//! The written protocol must match the code: every hex example in
//! `docs/protocol.md` decodes to the frame it names and re-encodes to the
//! same bytes, and `proto/ringpush.proto` declares exactly the fields (number
//! and wire type), frame types, error codes and GoAway reasons that
//! `src/protocol.rs` implements. No protoc needed: the .proto is read as text.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use ringpush::protocol::{body, decode_slice, ErrorCode, FrameType, GoAwayReason};

const DOC: &str = include_str!("../docs/protocol.md");
const PROTO: &str = include_str!("../proto/ringpush.proto");

#[test]
fn hex_examples_in_the_spec_are_real_frames() {
    let mut checked = 0;
    for block in DOC.split("```hex").skip(1) {
        let block = block.split("```").next().unwrap();
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let title = lines.next().unwrap().trim_start_matches('#').trim();
        let name = title.split(':').next().unwrap().trim();
        let bytes: Vec<u8> = lines
            .flat_map(|l| l.split_whitespace())
            .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("{name}: bad hex {h}")))
            .collect();
        let (frame, used) = decode_slice(&bytes, 1 << 16)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: incomplete"));
        assert_eq!(used, bytes.len(), "{name}: trailing bytes");
        assert_eq!(format!("{:?}", frame.frame_type()), name, "{title}");
        assert_eq!(frame.to_bytes(), bytes, "{name}: re-encodes differently");
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} examples found");
}

/// `message Name { ... }` → field number → wire type, from the .proto text.
fn proto_messages() -> BTreeMap<String, BTreeMap<u32, u8>> {
    let mut messages = BTreeMap::new();
    let mut current: Option<(String, BTreeMap<u32, u8>)> = None;
    for line in PROTO.lines() {
        let line = line.split("//").next().unwrap().trim();
        if let Some(rest) = line.strip_prefix("message ") {
            let name = rest.trim_end_matches(['{', '}', ' ']).trim().to_string();
            if line.ends_with("{}") {
                messages.insert(name, BTreeMap::new());
            } else {
                current = Some((name, BTreeMap::new()));
            }
        } else if line == "}" {
            if let Some((name, fields)) = current.take() {
                messages.insert(name, fields);
            }
        } else if let Some((_, fields)) = current.as_mut() {
            let Some((decl, number)) = line.trim_end_matches(';').split_once('=') else {
                continue;
            };
            let number: u32 = number.trim().parse().unwrap();
            let ty = decl.split_whitespace().next().unwrap();
            let wire = match ty {
                "repeated" | "string" | "bytes" => 2,
                t if t.starts_with("map<") => 2,
                "uint32" | "uint64" | "int32" | "int64" | "bool" => 0,
                other => panic!("type {other} not handled"),
            };
            fields.insert(number, wire);
        }
    }
    messages
}

/// Field number → wire type of an encoded message whose every field is set.
fn wire_fields(bytes: &[u8]) -> BTreeMap<u32, u8> {
    let mut fields = BTreeMap::new();
    let mut buf = bytes;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).unwrap();
        let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
        match wire {
            0 => drop(prost::encoding::decode_varint(&mut buf).unwrap()),
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).unwrap() as usize;
                buf = &buf[len..];
            }
            other => panic!("unexpected wire type {other}"),
        }
        fields.insert(number, wire);
    }
    fields
}

#[test]
fn proto_file_matches_the_prost_structs() {
    let s = || "x".to_string();
    let ours: BTreeMap<&str, Vec<u8>> = [
        (
            "Hello",
            body::Hello {
                protocol_version: 1,
                app_id: s(),
                platform: 1,
                token: s(),
                timestamp_ms: 1,
                nonce: s(),
                signature: vec![1],
                credential: s(),
            }
            .encode_to_vec(),
        ),
        (
            "Welcome",
            body::Welcome {
                token: s(),
                heartbeat_secs: 1,
                server_time_ms: 1,
                new_token: true,
                missed: 1,
                protocol_version: 1,
            }
            .encode_to_vec(),
        ),
        (
            "Push",
            body::Push {
                id: 1,
                msg_key: s(),
                title: s(),
                content: s(),
                silent: true,
                action: 1,
                uri: s(),
                push_style: 1,
                icon_urls: s(),
                image_urls: s(),
                extended_params: [(s(), s())].into(),
                task_id: s(),
                expires_at_ms: 1,
                notify_type: s(),
                accepted_at_ms: 1,
            }
            .encode_to_vec(),
        ),
        ("Ids", body::Ids { ids: vec![1] }.encode_to_vec()),
        ("Heartbeat", body::Heartbeat { time_ms: 1 }.encode_to_vec()),
        (
            "GoAway",
            body::GoAway {
                reason: 1,
                retry_after_ms: 1,
                message: s(),
            }
            .encode_to_vec(),
        ),
        ("Error", body::Error { code: 1, reason: s() }.encode_to_vec()),
        ("Empty", body::Empty {}.encode_to_vec()),
        (
            "UserBinding",
            body::UserBinding {
                request_id: 1,
                user_id: s(),
            }
            .encode_to_vec(),
        ),
        (
            "Group",
            body::Group {
                request_id: 1,
                group: s(),
            }
            .encode_to_vec(),
        ),
        (
            "VendorToken",
            body::VendorToken {
                request_id: 1,
                third_channel: 1,
                vendor_token: s(),
            }
            .encode_to_vec(),
        ),
        (
            "Revoke",
            body::Revoke {
                ids: vec![1],
                msg_keys: vec![s()],
            }
            .encode_to_vec(),
        ),
        ("TokenUpdate", body::TokenUpdate { token: s() }.encode_to_vec()),
        (
            "RequestResult",
            body::RequestResult {
                request_id: 1,
                code: 1,
                message: s(),
            }
            .encode_to_vec(),
        ),
    ]
    .into();
    let declared = proto_messages();
    assert_eq!(
        declared.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ours.keys().copied().collect::<BTreeSet<_>>(),
        "messages in the .proto vs src/protocol.rs"
    );
    for (name, bytes) in &ours {
        assert_eq!(wire_fields(bytes), declared[*name], "fields of {name}");
    }
}

/// `NAME = value;` pairs of one enum in the .proto.
fn proto_enum(name: &str) -> BTreeMap<String, u32> {
    let start = PROTO.find(&format!("enum {name} {{")).expect("enum present");
    let body = &PROTO[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
    body.lines()
        .map(|l| l.split("//").next().unwrap().trim().trim_end_matches(';'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().parse().unwrap()))
        .filter(|(_, v)| *v != 0)
        .collect()
}

#[test]
fn proto_enums_match_the_codes_on_the_wire() {
    let frames: BTreeMap<String, u32> = FrameType::ALL
        .iter()
        .map(|t| (t.as_str().to_uppercase(), *t as u32))
        .collect();
    assert_eq!(proto_enum("FrameType"), frames);
    let errors: BTreeMap<String, u32> = ErrorCode::ALL
        .iter()
        .map(|e| (e.as_str().to_uppercase(), *e as u32))
        .collect();
    assert_eq!(proto_enum("ErrorCode"), errors);
    let reasons: BTreeMap<String, u32> = GoAwayReason::ALL
        .iter()
        .map(|r| (r.as_str().to_uppercase(), *r as u32))
        .collect();
    assert_eq!(proto_enum("GoAwayReason"), reasons);
}
