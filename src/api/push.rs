//! Simple push (`POST /v1/push/simple`): decoding and validating the request
//! with the reference's field names and result codes, and turning it into
//! one encoded `Message` per target. Pure functions of the request bytes, the
//! authenticated caller, the config and the clock; the HTTP plumbing is in
//! `api::mod`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::auth::AuthenticatedApp;
use super::result_code::{ApiError, ResultCode};
use crate::config::Config;
use crate::message::Message;
use crate::protocol::body;

/// Targets per simple push (push-semantics.md §2).
pub const MAX_TARGETS: usize = 10;
pub const MAX_MSG_KEY_CHARS: usize = 64;
pub const MAX_EXTENDED_PARAMS: usize = 20;
/// The whole message body delivered to a device (push-semantics.md §2).
pub const MAX_PUSH_BODY_BYTES: usize = 2048;
/// Tokens we issue are 22 characters; this leaves room without letting an
/// arbitrary string through.
pub const MAX_TOKEN_CHARS: usize = 128;

/// A validated simple push.
#[derive(Debug, PartialEq)]
pub struct SimplePush {
    pub app_id: Arc<str>,
    pub task_name: String,
    /// (token, msgKey) in request order.
    pub targets: Vec<(String, String)>,
    pub ttl_secs: u64,
    pub template: body::Push,
}

/// The request's fields. Unknown fields (the reference has many we do not
/// use) are skipped without being built. `Field` accepts any JSON so that a
/// wrongly typed field gets its own result code rather than a parse error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    app_id: Option<Field>,
    workspace_id: Option<Field>,
    task_name: Option<Field>,
    title: Option<Field>,
    content: Option<Field>,
    delivery_type: Option<Field>,
    target_msgkey: Option<Field>,
    expired_seconds: Option<Field>,
    extended_params: Option<Field>,
    push_style: Option<Field>,
    push_action: Option<Field>,
    uri: Option<Field>,
    silent: Option<Field>,
    notify_type: Option<Field>,
    image_urls: Option<Field>,
    icon_urls: Option<Field>,
    strategy_type: Option<Field>,
}

/// `caller` decides which app the request may push for (8014 for another).
pub fn parse(bytes: &[u8], config: &Config, caller: &AuthenticatedApp) -> Result<SimplePush, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::new(ResultCode::RequestShouldBeUtf8, "the request body must be UTF-8"))?;
    let req: Request = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            ResultCode::InvalidParam,
            format!("the body is not a JSON object: {e}"),
        )
    })?;

    let app_id = string_field(&req.app_id, "appId")?.unwrap_or_default();
    let workspace_id = string_field(&req.workspace_id, "workspaceId")?.unwrap_or_default();
    if app_id.is_empty() || workspace_id.is_empty() {
        return Err(ApiError::new(
            ResultCode::NeedAppIdWorkspaceId,
            "appId and workspaceId are required",
        ));
    }
    let app = caller.check_app(&app_id)?;
    if *app.workspace_id != *workspace_id {
        return Err(ApiError::new(
            ResultCode::AppIdWrong,
            "no such appId in that workspaceId",
        ));
    }

    let task_name = string_field(&req.task_name, "taskName")?.unwrap_or_default();
    if task_name.trim().is_empty() {
        return Err(ApiError::new(ResultCode::TaskNameNull, "taskName is required"));
    }
    if let Some(strategy) = int_field(&req.strategy_type, "strategyType")? {
        if strategy != 0 {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                "strategyType: only 0 (push now) is accepted by this endpoint",
            ));
        }
    }
    let title = string_field(&req.title, "title")?.unwrap_or_default();
    let content = string_field(&req.content, "content")?.unwrap_or_default();
    if title.is_empty() || content.is_empty() {
        return Err(ApiError::new(
            ResultCode::PayloadNotEnough,
            "title and content are required",
        ));
    }

    match int_field(&req.delivery_type, "deliveryType") {
        Ok(Some(1 | 2 | 7)) => {}
        Ok(Some(3)) => {
            return Err(ApiError::new(
                ResultCode::DeliveryTypeNotSupported,
                "deliveryType 3 (by user) needs user bindings, which this server does not hold yet; use 1, 2 or 7",
            ))
        }
        Ok(Some(other)) => {
            return Err(ApiError::new(
                ResultCode::DeliveryTypeNotSupported,
                format!("deliveryType {other}: use 1 (Android), 2 (iOS) or 7 (HarmonyOS)"),
            ))
        }
        Ok(None) | Err(_) => {
            return Err(ApiError::new(
                ResultCode::DeliveryTypeNotSupported,
                "deliveryType is required: 1 (Android), 2 (iOS) or 7 (HarmonyOS)",
            ))
        }
    }

    let ttl_secs = match int_field(&req.expired_seconds, "expiredSeconds") {
        Ok(Some(s)) if s >= config.delivery.min_ttl_secs as i64 => s as u64,
        _ => {
            return Err(ApiError::new(
                ResultCode::ExpiredSecondsWrong,
                format!(
                    "expiredSeconds must be an integer of at least {}",
                    config.delivery.min_ttl_secs
                ),
            ))
        }
    };
    if ttl_secs > config.delivery.max_ttl_secs {
        return Err(ApiError::new(
            ResultCode::ExpireTimeTooLong,
            format!("expiredSeconds must be at most {}", config.delivery.max_ttl_secs),
        ));
    }

    let targets = targets(req.target_msgkey)?;
    let extended_params = extended_params(req.extended_params)?;
    let push_style = small_enum(&req.push_style, "pushStyle", &[0, 1, 2])?;
    let action = small_enum(&req.push_action, "pushAction", &[0, 1])?;
    let silent = match &req.silent {
        Some(Field::Bool(b)) => *b,
        other => small_enum(other, "silent", &[0, 1])? == 1,
    };
    let notify_type = string_field(&req.notify_type, "notifyType")?.unwrap_or_default();
    if !matches!(notify_type.as_str(), "" | "transparent" | "notify") {
        return Err(ApiError::new(
            ResultCode::InvalidParam,
            "notifyType must be transparent or notify",
        ));
    }
    let template = body::Push {
        title,
        content,
        silent,
        action,
        uri: string_field(&req.uri, "uri")?.unwrap_or_default(),
        push_style,
        icon_urls: json_text_field(req.icon_urls, "iconUrls")?,
        image_urls: json_text_field(req.image_urls, "imageUrls")?,
        extended_params,
        notify_type,
        ..Default::default()
    };
    Ok(SimplePush {
        app_id: app.id.clone(),
        task_name,
        targets,
        ttl_secs,
        template,
    })
}

impl SimplePush {
    /// One message per target, its Push frame encoded once here. `next_id`
    /// hands out service message ids.
    pub fn messages(&self, now_ms: u64, mut next_id: impl FnMut() -> u64) -> Result<Vec<Message>, ApiError> {
        let expires_at_ms = now_ms + self.ttl_secs * 1000;
        let mut push = self.template.clone();
        push.accepted_at_ms = now_ms;
        push.expires_at_ms = expires_at_ms;
        self.targets
            .iter()
            .map(|(token, msg_key)| {
                push.id = next_id();
                push.msg_key.clone_from(msg_key);
                let frame = crate::protocol::encode_push(&push);
                let body_len = frame.len() - crate::protocol::HEADER_LEN;
                if body_len > MAX_PUSH_BODY_BYTES {
                    return Err(ApiError::new(
                        ResultCode::MsgPayloadTooLong,
                        format!("the message is {body_len} bytes; at most {MAX_PUSH_BODY_BYTES}"),
                    ));
                }
                Ok(Message {
                    id: push.id,
                    app_id: self.app_id.clone(),
                    token: token.as_str().into(),
                    msg_key: msg_key.as_str().into(),
                    accepted_at_ms: now_ms,
                    expires_at_ms,
                    frame: Bytes::from(frame),
                })
            })
            .collect()
    }
}

fn targets(field: Option<Field>) -> Result<Vec<(String, String)>, ApiError> {
    let map = match map_or_json_string(field) {
        Ok(Some(map)) => map,
        Ok(None) => {
            return Err(ApiError::new(
                ResultCode::TokenOrUserIdNull,
                "targetMsgkey is required",
            ))
        }
        Err(()) => {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                "targetMsgkey must be an object {token: msgKey}",
            ))
        }
    };
    if map.is_empty() {
        return Err(ApiError::new(
            ResultCode::TokenOrUserIdNull,
            "targetMsgkey has no target",
        ));
    }
    if map.len() > MAX_TARGETS {
        return Err(ApiError::new(
            ResultCode::SinglePushTargetTooMuch,
            format!("targetMsgkey has {} targets; at most {MAX_TARGETS}", map.len()),
        ));
    }
    map.into_iter()
        .map(|(token, msg_key)| {
            if token.is_empty() {
                return Err(ApiError::new(
                    ResultCode::NeedDeliveryToken,
                    "a target token is empty",
                ));
            }
            if token.chars().count() > MAX_TOKEN_CHARS {
                return Err(ApiError::new(
                    ResultCode::DeliveryTokenInvalid,
                    "a target token is too long",
                ));
            }
            let msg_key = match msg_key {
                Field::Str(s) => s,
                Field::Int(n) => n.to_string(),
                _ => {
                    return Err(ApiError::new(
                        ResultCode::InvalidParam,
                        "a msgKey must be a string",
                    ))
                }
            };
            if msg_key.is_empty() || msg_key.chars().count() > MAX_MSG_KEY_CHARS {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    format!("msgKey must be 1 to {MAX_MSG_KEY_CHARS} characters"),
                ));
            }
            Ok((token, msg_key))
        })
        .collect()
}

fn extended_params(field: Option<Field>) -> Result<HashMap<String, String>, ApiError> {
    let invalid = || {
        ApiError::new(
            ResultCode::InvalidExtendParam,
            "extendedParams must map strings to strings",
        )
    };
    let Some(map) = map_or_json_string(field).map_err(|()| invalid())? else {
        return Ok(HashMap::new());
    };
    if map.len() > MAX_EXTENDED_PARAMS {
        return Err(ApiError::new(
            ResultCode::ExtendParamTooMuch,
            format!(
                "extendedParams has {} keys; at most {MAX_EXTENDED_PARAMS}",
                map.len()
            ),
        ));
    }
    map.into_iter()
        .map(|(k, v)| match v {
            Field::Str(s) => Ok((k, s)),
            Field::Int(n) => Ok((k, n.to_string())),
            Field::Float(n) => Ok((k, n.to_string())),
            Field::Bool(b) => Ok((k, b.to_string())),
            _ => Err(invalid()),
        })
        .collect()
}

/// The reference's SDKs send maps either as JSON objects or as strings that
/// hold one; both are accepted. `Err(())` when present but neither.
fn map_or_json_string(field: Option<Field>) -> Result<Option<Vec<(String, Field)>>, ()> {
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Map(m)) => Ok(Some(m)),
        Some(Field::Str(s)) if s.trim().is_empty() => Ok(None),
        Some(Field::Str(s)) => match serde_json::from_str(&s) {
            Ok(Field::Map(m)) => Ok(Some(m)),
            _ => Err(()),
        },
        Some(_) => Err(()),
    }
}

fn string_field(field: &Option<Field>, name: &str) -> Result<Option<String>, ApiError> {
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) => Ok(Some(s.clone())),
        Some(Field::Int(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ApiError::new(
            ResultCode::InvalidParam,
            format!("{name} must be a string"),
        )),
    }
}

/// Integers arrive as JSON numbers or numeric strings (the reference's Long
/// fields).
fn int_field(field: &Option<Field>, name: &str) -> Result<Option<i64>, ApiError> {
    let invalid = || ApiError::new(ResultCode::InvalidParam, format!("{name} must be an integer"));
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Int(n)) => Ok(Some(*n)),
        Some(Field::Str(s)) if s.trim().is_empty() => Ok(None),
        Some(Field::Str(s)) => s.trim().parse().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

fn small_enum(field: &Option<Field>, name: &str, allowed: &[u32]) -> Result<u32, ApiError> {
    let value = int_field(field, name)?.unwrap_or(0);
    u32::try_from(value)
        .ok()
        .filter(|v| allowed.contains(v))
        .ok_or_else(|| {
            ApiError::new(
                ResultCode::InvalidParam,
                format!("{name} must be one of {allowed:?}"),
            )
        })
}

/// `imageUrls`/`iconUrls`: a JSON string (as the reference sends) or an
/// object, passed to the device as JSON text.
fn json_text_field(field: Option<Field>, name: &str) -> Result<String, ApiError> {
    match field {
        None | Some(Field::Null) => Ok(String::new()),
        Some(Field::Str(s)) => Ok(s),
        Some(Field::Map(m)) => {
            let object: serde_json::Map<String, serde_json::Value> =
                m.into_iter().map(|(k, v)| (k, v.into_json())).collect();
            Ok(serde_json::Value::Object(object).to_string())
        }
        Some(_) => Err(ApiError::new(
            ResultCode::InvalidParam,
            format!("{name} must be a JSON object"),
        )),
    }
}

/// Any JSON value, decoded without building a `serde_json::Value` tree for
/// the common cases (strings, integers, flat maps).
#[derive(Debug, PartialEq)]
enum Field {
    Null,
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Map(Vec<(String, Field)>),
    /// An array: never valid for our fields, so its contents are skipped.
    List,
}

impl Field {
    fn into_json(self) -> serde_json::Value {
        match self {
            Field::Null | Field::List => serde_json::Value::Null,
            Field::Str(s) => s.into(),
            Field::Int(n) => n.into(),
            Field::Float(n) => n.into(),
            Field::Bool(b) => b.into(),
            Field::Map(m) => {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k, v.into_json())).collect())
            }
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> serde::de::Visitor<'de> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Field, E> {
                Ok(Field::Null)
            }
            fn visit_none<E>(self) -> Result<Field, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Field, E> {
                Ok(Field::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Field, E> {
                Ok(Field::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Field, E> {
                Ok(i64::try_from(v).map_or(Field::Float(v as f64), Field::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Field, E> {
                Ok(Field::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Field, E> {
                Ok(Field::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Field, E> {
                Ok(Field::Str(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Field::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Field, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4).min(32));
                while let Some((k, v)) = map.next_entry::<String, Field>()? {
                    entries.push((k, v));
                }
                Ok(Field::Map(entries))
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;
    use serde_json::{json, Map, Value};

    /// An unsigned caller: the default config's demo app allows it.
    fn caller(config: &Config) -> AuthenticatedApp {
        let registry = crate::api::auth::AppRegistry::new(&config.apps, 16).unwrap();
        AuthenticatedApp::unsigned(Arc::new(registry))
    }

    fn base() -> Value {
        json!({
            "appId": "demo", "workspaceId": "default", "taskName": "t",
            "title": "title", "content": "content", "deliveryType": 1,
            "targetMsgkey": {"tok": "k"}, "expiredSeconds": 300,
        })
    }

    fn check(change: impl FnOnce(&mut Map<String, Value>)) -> Result<SimplePush, i32> {
        let config = Config::default();
        let mut req = base();
        change(req.as_object_mut().unwrap());
        parse(req.to_string().as_bytes(), &config, &caller(&config)).map_err(|e| e.code.code())
    }

    #[test]
    fn a_complete_request_is_accepted() {
        let push = check(|r| {
            r.insert("extendedParams".into(), json!("{\"a\":\"1\",\"n\":2}"));
            r.insert("silent".into(), json!("1"));
            r.insert("pushStyle".into(), json!(2));
            r.insert("notifyType".into(), json!("transparent"));
            r.insert("classification".into(), json!("1"));
        })
        .unwrap();
        assert_eq!(push.targets, [("tok".to_string(), "k".to_string())]);
        assert_eq!(push.ttl_secs, 300);
        assert!(push.template.silent);
        assert_eq!(push.template.push_style, 2);
        assert_eq!(push.template.extended_params["n"], "2");
    }

    #[test]
    fn every_user_error_has_its_result_code() {
        let many: Map<String, Value> = (0..11).map(|i| (format!("t{i}"), json!("k"))).collect();
        let params: Map<String, Value> = (0..21).map(|i| (format!("p{i}"), json!("v"))).collect();
        type Change = Box<dyn FnOnce(&mut Map<String, Value>)>;
        let cases: Vec<(Change, i32)> = vec![
            (Box::new(|r| drop(r.remove("appId"))), 3003),
            (
                Box::new(|r| drop(r.insert("workspaceId".into(), json!("")))),
                3003,
            ),
            (Box::new(|r| drop(r.insert("appId".into(), json!("nope")))), 8014),
            (
                Box::new(|r| drop(r.insert("workspaceId".into(), json!("other")))),
                3007,
            ),
            (Box::new(|r| drop(r.insert("taskName".into(), json!("  ")))), 3019),
            (Box::new(|r| drop(r.remove("title"))), 3024),
            (Box::new(|r| drop(r.insert("content".into(), json!("")))), 3024),
            (
                Box::new(|r| drop(r.insert("deliveryType".into(), json!(3)))),
                3009,
            ),
            (
                Box::new(|r| drop(r.insert("deliveryType".into(), json!("5")))),
                3009,
            ),
            (Box::new(|r| drop(r.remove("deliveryType"))), 3009),
            (Box::new(|r| drop(r.remove("expiredSeconds"))), 3020),
            (
                Box::new(|r| drop(r.insert("expiredSeconds".into(), json!(0)))),
                3020,
            ),
            (
                Box::new(|r| drop(r.insert("expiredSeconds".into(), json!("soon")))),
                3020,
            ),
            (
                Box::new(|r| drop(r.insert("expiredSeconds".into(), json!(1.5)))),
                3020,
            ),
            (
                Box::new(|r| drop(r.insert("expiredSeconds".into(), json!(259_201)))),
                3026,
            ),
            (Box::new(|r| drop(r.remove("targetMsgkey"))), 3021),
            (
                Box::new(|r| drop(r.insert("targetMsgkey".into(), json!({})))),
                3021,
            ),
            (
                Box::new(move |r| drop(r.insert("targetMsgkey".into(), Value::Object(many)))),
                3029,
            ),
            (
                Box::new(|r| drop(r.insert("targetMsgkey".into(), json!([1])))),
                3028,
            ),
            (
                Box::new(|r| drop(r.insert("targetMsgkey".into(), json!({"": "k"})))),
                3001,
            ),
            (
                Box::new(|r| drop(r.insert("targetMsgkey".into(), json!({"t": ""})))),
                3028,
            ),
            (
                Box::new(|r| drop(r.insert("targetMsgkey".into(), json!({"t": "k".repeat(65)})))),
                3028,
            ),
            (
                Box::new(|r| drop(r.insert("targetMsgkey".into(), json!({"t".repeat(129): "k"})))),
                3054,
            ),
            (
                Box::new(move |r| drop(r.insert("extendedParams".into(), Value::Object(params)))),
                3035,
            ),
            (
                Box::new(|r| drop(r.insert("extendedParams".into(), json!({"a": {"b": 1}})))),
                3044,
            ),
            (
                Box::new(|r| drop(r.insert("extendedParams".into(), json!("not json")))),
                3044,
            ),
            (Box::new(|r| drop(r.insert("pushStyle".into(), json!(3)))), 3028),
            (Box::new(|r| drop(r.insert("pushAction".into(), json!(-1)))), 3028),
            (Box::new(|r| drop(r.insert("silent".into(), json!(2)))), 3028),
            (
                Box::new(|r| drop(r.insert("notifyType".into(), json!("loud")))),
                3028,
            ),
            (
                Box::new(|r| drop(r.insert("strategyType".into(), json!(1)))),
                3028,
            ),
            (Box::new(|r| drop(r.insert("title".into(), json!(["x"])))), 3028),
        ];
        for (i, (change, want)) in cases.into_iter().enumerate() {
            assert_eq!(check(change).map(|_| ()), Err(want), "case {i}");
        }
    }

    #[test]
    fn non_utf8_and_non_json_bodies() {
        let config = Config::default();
        let caller = caller(&config);
        assert_eq!(
            parse(&[0xFF, 0xFE], &config, &caller).unwrap_err().code.code(),
            3031
        );
        assert_eq!(parse(b"{nope", &config, &caller).unwrap_err().code.code(), 3028);
        assert_eq!(parse(b"[1]", &config, &caller).unwrap_err().code.code(), 3028);
    }

    #[test]
    fn a_message_over_two_kib_is_refused() {
        let push = check(|r| drop(r.insert("content".into(), json!("x".repeat(3000))))).unwrap();
        let mut id = 0;
        let err = push
            .messages(1, || {
                id += 1;
                id
            })
            .unwrap_err();
        assert_eq!(err.code.code(), 3050);
    }

    #[test]
    fn messages_carry_ids_keys_and_expiry() {
        let push = check(|r| drop(r.insert("targetMsgkey".into(), json!({"a": "ka", "b": "kb"})))).unwrap();
        let mut id = 10;
        let messages = push
            .messages(5_000, || {
                id += 1;
                id
            })
            .unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].expires_at_ms, 5_000 + 300_000);
        let (frame, _) = crate::protocol::decode_slice(&messages[1].frame, 4096)
            .unwrap()
            .unwrap();
        match frame {
            Frame::Push(p) => {
                assert_eq!((p.id, p.msg_key.as_str(), p.title.as_str()), (12, "kb", "title"));
                assert_eq!(p.accepted_at_ms, 5_000);
            }
            other => panic!("{other:?}"),
        }
    }
}
