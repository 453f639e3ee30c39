//! The push requests (`POST /v1/push/simple`, `/v1/push/broadcast`,
//! `/v1/push/group`): decoding and validating them with the reference's
//! field names and result codes, and turning them into encoded messages:
//! one `Message` per device token, or one `SharedMessage` per user, group or
//! broadcast, which every shard delivers to its own devices. Pure functions
//! of the request bytes, the config and the clock; the HTTP plumbing is in
//! `api::mod`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::result_code::{ApiError, ResultCode};
use crate::config::Config;
use crate::message::{Audience, BindFilter, Message, SharedMessage};
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
/// A group name, as a device's JoinGroup allows.
pub const MAX_GROUP_BYTES: usize = 64;

/// Which push endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushKind {
    Simple,
    Broadcast,
    Group,
}

/// A validated push.
#[derive(Debug, PartialEq)]
pub struct SimplePush {
    pub app_id: Arc<str>,
    pub task_name: String,
    /// (token or userId, msgKey) in request order; for a broadcast or a
    /// group push, the one msgKey with an empty target.
    pub targets: Vec<(String, String)>,
    /// What the targets are.
    pub audience: AudienceKind,
    pub ttl_secs: u64,
    pub template: body::Push,
}

/// What a push's targets name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudienceKind {
    /// Device tokens (deliveryType 1, 2, 7).
    Tokens,
    /// userIds (deliveryType 3).
    Users,
    Broadcast {
        platform: u8,
        filter: BindFilter,
    },
    Group(String),
}

/// Days in the reference's bindPeriod / unBindPeriod codes (4: forever).
fn period(code: i64, name: &str) -> Result<Option<u64>, ApiError> {
    const DAY_MS: u64 = 86_400_000;
    match code {
        1 => Ok(Some(7 * DAY_MS)),
        2 => Ok(Some(15 * DAY_MS)),
        3 => Ok(Some(60 * DAY_MS)),
        4 => Ok(None),
        _ => Err(ApiError::new(
            ResultCode::InvalidParam,
            format!("{name} must be 1 (7 days), 2 (15 days), 3 (60 days) or 4 (forever)"),
        )),
    }
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
    /// Broadcast and group pushes: the one msgKey (the reference spells it
    /// `msgkey`; `msgKey` is accepted too).
    msgkey: Option<Field>,
    #[serde(rename = "msgKey")]
    msg_key_camel: Option<Field>,
    push_status: Option<Field>,
    bind_period: Option<Field>,
    un_bind_period: Option<Field>,
    group_name: Option<Field>,
}

/// Validates a simple push.
pub fn parse(
    bytes: &[u8],
    config: &Config,
    apps: &HashMap<String, Arc<str>>,
) -> Result<SimplePush, ApiError> {
    parse_kind(bytes, config, apps, PushKind::Simple)
}

/// Validates a push to any endpoint.
pub fn parse_kind(
    bytes: &[u8],
    config: &Config,
    apps: &HashMap<String, Arc<str>>,
    kind: PushKind,
) -> Result<SimplePush, ApiError> {
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
    let app = config
        .apps
        .iter()
        .find(|a| a.app_id == app_id && a.workspace_id == workspace_id)
        .and_then(|a| apps.get(&a.app_id))
        .ok_or_else(|| ApiError::new(ResultCode::AppIdWrong, "no such appId in that workspaceId"))?;

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

    let delivery_type = match (kind, int_field(&req.delivery_type, "deliveryType")) {
        // A group spans platforms: deliveryType is not needed.
        (PushKind::Group, _) => 0,
        (_, Ok(Some(t @ (1 | 2 | 7)))) => t as u8,
        (PushKind::Simple, Ok(Some(3))) => 3,
        (PushKind::Broadcast, Ok(Some(3))) => return Err(ApiError::new(
            ResultCode::BroadcastOnlySupportByDevice,
            "a broadcast goes to a platform's devices: deliveryType 1 (Android), 2 (iOS) or 7 (HarmonyOS)",
        )),
        (_, Ok(Some(other))) => {
            return Err(ApiError::new(
                ResultCode::DeliveryTypeNotSupported,
                format!("deliveryType {other}: use 1 (Android), 2 (iOS), 3 (user) or 7 (HarmonyOS)"),
            ))
        }
        (_, Ok(None) | Err(_)) => {
            return Err(ApiError::new(
                ResultCode::DeliveryTypeNotSupported,
                "deliveryType is required: 1 (Android), 2 (iOS), 3 (user) or 7 (HarmonyOS)",
            ))
        }
    };

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

    let (targets, audience) = match kind {
        PushKind::Simple => {
            let audience = if delivery_type == 3 {
                AudienceKind::Users
            } else {
                AudienceKind::Tokens
            };
            (targets(req.target_msgkey, &audience)?, audience)
        }
        PushKind::Broadcast => {
            let push_status = int_field(&req.push_status, "pushStatus")?.unwrap_or(0);
            let bind_period = int_field(&req.bind_period, "bindPeriod")?;
            let unbind_period = int_field(&req.un_bind_period, "unBindPeriod")?;
            let filter = match push_status {
                0 => BindFilter::Bound {
                    within_ms: period(bind_period.unwrap_or(4), "bindPeriod")?,
                },
                1 => BindFilter::Any {
                    unbound_within_ms: period(unbind_period.unwrap_or(4), "unBindPeriod")?,
                },
                2 => BindFilter::Unbound {
                    within_ms: period(unbind_period.unwrap_or(4), "unBindPeriod")?,
                },
                _ => {
                    return Err(ApiError::new(
                        ResultCode::InvalidParam,
                        "pushStatus must be 0 (bound users), 1 (all) or 2 (unbound)",
                    ))
                }
            };
            let audience = AudienceKind::Broadcast {
                platform: delivery_type,
                filter,
            };
            (vec![(String::new(), one_msg_key(&req)?)], audience)
        }
        PushKind::Group => {
            let group = string_field(&req.group_name, "groupName")?.unwrap_or_default();
            if group.is_empty() || group.len() > MAX_GROUP_BYTES {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    format!("groupName is required, at most {MAX_GROUP_BYTES} bytes"),
                ));
            }
            (
                vec![(String::new(), one_msg_key(&req)?)],
                AudienceKind::Group(group),
            )
        }
    };
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
        app_id: app.clone(),
        task_name,
        targets,
        audience,
        ttl_secs,
        template,
    })
}

/// The msgKey of a broadcast or group push.
fn one_msg_key(req: &Request) -> Result<String, ApiError> {
    let key = match string_field(&req.msgkey, "msgkey")? {
        Some(key) => key,
        None => string_field(&req.msg_key_camel, "msgKey")?.unwrap_or_default(),
    };
    check_msg_key(key)
}

fn check_msg_key(msg_key: String) -> Result<String, ApiError> {
    if msg_key.is_empty() || msg_key.chars().count() > MAX_MSG_KEY_CHARS {
        return Err(ApiError::new(
            ResultCode::InvalidParam,
            format!("msgKey must be 1 to {MAX_MSG_KEY_CHARS} characters"),
        ));
    }
    Ok(msg_key)
}

impl SimplePush {
    /// Whether the targets are device tokens (else the push is stored once
    /// and every shard delivers it: `shared_messages`).
    pub fn to_tokens(&self) -> bool {
        self.audience == AudienceKind::Tokens
    }

    /// One message per token, its Push frame encoded once here. `next_id`
    /// hands out service message ids.
    pub fn messages(&self, now_ms: u64, next_id: impl FnMut() -> u64) -> Result<Vec<Message>, ApiError> {
        let expires_at_ms = now_ms + self.ttl_secs * 1000;
        self.frames(now_ms, 0, next_id, |(token, msg_key), id, frame| Message {
            id,
            app_id: self.app_id.clone(),
            token: token.as_str().into(),
            msg_key: msg_key.as_str().into(),
            accepted_at_ms: now_ms,
            expires_at_ms,
            frame,
        })
    }

    /// One shared message per user, or the one of a broadcast or group push
    /// (its task id in the frame).
    pub fn shared_messages(
        &self,
        now_ms: u64,
        task_id: u64,
        next_id: impl FnMut() -> u64,
    ) -> Result<Vec<Arc<SharedMessage>>, ApiError> {
        let expires_at_ms = now_ms + self.ttl_secs * 1000;
        self.frames(now_ms, task_id, next_id, |(target, msg_key), id, frame| {
            let audience = match &self.audience {
                AudienceKind::Users | AudienceKind::Tokens => Audience::User(target.as_str().into()),
                AudienceKind::Broadcast { platform, filter } => Audience::Platform {
                    platform: *platform,
                    filter: *filter,
                },
                AudienceKind::Group(group) => Audience::Group(group.as_str().into()),
            };
            Arc::new(SharedMessage {
                id,
                app_id: self.app_id.clone(),
                audience,
                msg_key: msg_key.as_str().into(),
                task_id,
                accepted_at_ms: now_ms,
                expires_at_ms,
                frame,
            })
        })
    }

    /// Encodes each target's Push frame and builds what carries it.
    fn frames<T>(
        &self,
        now_ms: u64,
        task_id: u64,
        mut next_id: impl FnMut() -> u64,
        mut build: impl FnMut(&(String, String), u64, Bytes) -> T,
    ) -> Result<Vec<T>, ApiError> {
        let mut push = self.template.clone();
        push.accepted_at_ms = now_ms;
        push.expires_at_ms = now_ms + self.ttl_secs * 1000;
        if task_id != 0 {
            push.task_id = task_id.to_string();
        }
        self.targets
            .iter()
            .map(|target| {
                push.id = next_id();
                push.msg_key.clone_from(&target.1);
                let frame = crate::protocol::encode_push(&push);
                let body_len = frame.len() - crate::protocol::HEADER_LEN;
                if body_len > MAX_PUSH_BODY_BYTES {
                    return Err(ApiError::new(
                        ResultCode::MsgPayloadTooLong,
                        format!("the message is {body_len} bytes; at most {MAX_PUSH_BODY_BYTES}"),
                    ));
                }
                Ok(build(target, push.id, Bytes::from(frame)))
            })
            .collect()
    }
}

fn targets(field: Option<Field>, audience: &AudienceKind) -> Result<Vec<(String, String)>, ApiError> {
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
            if *audience == AudienceKind::Users {
                if token.is_empty() {
                    return Err(ApiError::new(ResultCode::NeedUserId, "a target userId is empty"));
                }
                if token.chars().count() > super::devices::MAX_USER_ID_CHARS {
                    return Err(ApiError::new(
                        ResultCode::InvalidParam,
                        format!(
                            "a target userId is over {} characters",
                            super::devices::MAX_USER_ID_CHARS
                        ),
                    ));
                }
            } else if token.is_empty() {
                return Err(ApiError::new(
                    ResultCode::NeedDeliveryToken,
                    "a target token is empty",
                ));
            } else if token.chars().count() > MAX_TOKEN_CHARS {
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
            Ok((token, check_msg_key(msg_key)?))
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
    use crate::protocol::{decode_slice, Frame};
    use serde_json::{json, Map, Value};

    fn apps(config: &Config) -> HashMap<String, Arc<str>> {
        config
            .apps
            .iter()
            .map(|a| (a.app_id.clone(), Arc::from(a.app_id.as_str())))
            .collect()
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
        parse(req.to_string().as_bytes(), &config, &apps(&config)).map_err(|e| e.code.code())
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
            (Box::new(|r| drop(r.insert("appId".into(), json!("nope")))), 3007),
            (
                Box::new(|r| drop(r.insert("workspaceId".into(), json!("other")))),
                3007,
            ),
            (Box::new(|r| drop(r.insert("taskName".into(), json!("  ")))), 3019),
            (Box::new(|r| drop(r.remove("title"))), 3024),
            (Box::new(|r| drop(r.insert("content".into(), json!("")))), 3024),
            (
                Box::new(|r| drop(r.insert("deliveryType".into(), json!(4)))),
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
    fn user_broadcast_and_group_pushes() {
        let config = Config::default();
        let apps = apps(&config);
        let mut users = base();
        users["deliveryType"] = json!(3);
        users["targetMsgkey"] = json!({"alice": "k1"});
        let push = parse(users.to_string().as_bytes(), &config, &apps).unwrap();
        assert_eq!(push.audience, AudienceKind::Users);
        assert!(!push.to_tokens());
        let shared = push.shared_messages(1_000, 0, || 9).unwrap();
        assert_eq!(shared[0].audience, Audience::User("alice".into()));
        assert_eq!((shared[0].id, shared[0].expires_at_ms), (9, 1_000 + 300_000));

        let mut broadcast = base();
        broadcast.as_object_mut().unwrap().remove("targetMsgkey");
        broadcast["msgkey"] = json!("b1");
        broadcast["pushStatus"] = json!(0);
        broadcast["bindPeriod"] = json!(2);
        let parsed = |body: &Value, kind| parse_kind(body.to_string().as_bytes(), &config, &apps, kind);
        let push = parsed(&broadcast, PushKind::Broadcast).unwrap();
        assert_eq!(
            push.audience,
            AudienceKind::Broadcast {
                platform: 1,
                filter: BindFilter::Bound {
                    within_ms: Some(15 * 86_400_000)
                }
            }
        );
        let shared = push.shared_messages(1_000, 77, || 9).unwrap();
        let frame = decode_slice(&shared[0].frame, 4096).unwrap().unwrap().0;
        match frame {
            Frame::Push(p) => assert_eq!((p.task_id.as_str(), p.msg_key.as_str()), ("77", "b1")),
            other => panic!("{other:?}"),
        }
        let code = |body: &Value, kind| parsed(body, kind).unwrap_err().code.code();
        let mut by_user = broadcast.clone();
        by_user["deliveryType"] = json!(3);
        assert_eq!(code(&by_user, PushKind::Broadcast), 3030);
        let mut no_key = broadcast.clone();
        no_key.as_object_mut().unwrap().remove("msgkey");
        assert_eq!(code(&no_key, PushKind::Broadcast), 3028);
        let mut group = broadcast.clone();
        assert_eq!(code(&group, PushKind::Group), 3028, "groupName is required");
        group["groupName"] = json!("news");
        group.as_object_mut().unwrap().remove("deliveryType");
        let push = parsed(&group, PushKind::Group).unwrap();
        assert_eq!(push.audience, AudienceKind::Group("news".into()));
    }

    #[test]
    fn non_utf8_and_non_json_bodies() {
        let config = Config::default();
        let apps = apps(&config);
        assert_eq!(
            parse(&[0xFF, 0xFE], &config, &apps).unwrap_err().code.code(),
            3031
        );
        assert_eq!(parse(b"{nope", &config, &apps).unwrap_err().code.code(), 3028);
        assert_eq!(parse(b"[1]", &config, &apps).unwrap_err().code.code(), 3028);
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
