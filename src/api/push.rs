//! The push requests: simple (`POST /v1/push/simple`), template
//! (`/v1/push/template`), multiple (`/v1/push/multiple`), broadcast, group
//! and tag (`/v1/push/broadcast`, `/v1/push/group`, `/v1/push/tag`). One
//! validation path checks what they share (app, taskName, deliveryType, TTL,
//! targets, extendedParams, notifyType) with the reference's field names and
//! result codes; then each kind's content: a title and content, or a
//! template name and values (template and multiple pushes always; broadcast,
//! group and tag pushes when they name a template). A templated push comes
//! out as a `TemplatedPush`, which the handler renders against the template
//! it looked up; a tag push's users are looked up by the handler too
//! (`PushRequest::resolve_tag`). Every kind ends as a `PushRequest`, encoded
//! into one `Message` per device token, or one `SharedMessage` per user,
//! group, tag or broadcast, which every shard delivers to its own devices. Pure functions of the request bytes, the config, the
//! template and the clock; the HTTP plumbing is in `api::mod`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;

use super::auth::AuthenticatedApp;
use super::fields::{self, flag_field, int_field, json_text_field, small_enum, string_field, Field};
use super::result_code::{ApiError, ResultCode};
use crate::config::Config;
use crate::message::{Audience, BindFilter, Message, SharedMessage, TagUsers, TaskTag};
use crate::protocol::body;
use crate::stats::PushType;
use crate::templates::Template;

/// Targets per simple or template push (push-semantics.md §2).
pub const MAX_TARGETS: usize = 10;
/// Targets per multiple push.
pub const MAX_MULTIPLE_TARGETS: usize = 100;
pub const MAX_MSG_KEY_CHARS: usize = 64;
/// A collapseKey, like a msgKey: 1 to 64 characters.
pub const MAX_COLLAPSE_KEY_CHARS: usize = 64;
pub const MAX_EXTENDED_PARAMS: usize = 20;
/// A multiple push's per-target extendedParams: fewer than 10.
pub const MAX_TARGET_EXTENDED_PARAMS: usize = 9;
/// Extended-param keys the reference reserves for the system ("系统扩展参数");
/// a request that sets one gets 3044.
pub const RESERVED_EXTENDED_PARAMS: [&str; 7] = [
    "notifyType",
    "action",
    "silent",
    "pushType",
    "templateCode",
    "channel",
    "taskId",
];
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
    Template,
    Multiple,
    Broadcast,
    Group,
    Tag,
}

impl PushKind {
    /// A push stored once for an audience found at delivery: one msgKey, a
    /// task id, and a title and content or a template.
    pub fn is_fanout(self) -> bool {
        matches!(self, Self::Broadcast | Self::Group | Self::Tag)
    }

    /// The code for a message over `MAX_PUSH_BODY_BYTES`. The reference has
    /// two without saying which is which; going by their names, a simple or
    /// template push (one content for up to 10 targets) gets 3043
    /// SINGLE_PUSH_CONTENT_TOO_LONG, every other push 3050
    /// MSG_PAYLOAD_TOO_LONG (also the code for an oversized request body).
    fn too_long(self) -> ResultCode {
        match self {
            Self::Simple | Self::Template => ResultCode::SinglePushContentTooLong,
            Self::Multiple | Self::Broadcast | Self::Group | Self::Tag => ResultCode::MsgPayloadTooLong,
        }
    }
}

/// A validated push, ready to encode.
#[derive(Debug, PartialEq)]
pub struct PushRequest {
    pub kind: PushKind,
    pub app_id: Arc<str>,
    pub task_name: String,
    /// (token or userId, msgKey) in request order; for a broadcast or a
    /// group push, the one msgKey with an empty target.
    pub targets: Vec<(String, String)>,
    /// What the targets are.
    pub audience: AudienceKind,
    pub ttl_secs: u64,
    /// The message: one for every target, or (multiple push) one per
    /// target, in `targets` order. Ids, msgKeys and times are set when
    /// encoding.
    pub bodies: Vec<body::Push>,
    /// Per target, in `targets` order: the collapse key of its message
    /// (a newer one with the same key replaces it on the device's queue
    /// while it is unsent).
    pub collapse_keys: Vec<Option<Box<str>>>,
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
    /// A tag's users: `users` is `None` until the handler looks the tag up
    /// (`resolve_tag`).
    Tag {
        name: String,
        users: Option<Arc<TagUsers>>,
    },
}

/// A template or multiple push, validated but not rendered: the handler
/// looks `template_name` up in the app's templates and calls `render`.
#[derive(Debug, PartialEq)]
pub struct TemplatedPush {
    pub template_name: String,
    /// Everything but the bodies.
    request: PushRequest,
    /// Placeholder values: one map for every target of a template push, one
    /// per target of a multiple push.
    values: Vec<HashMap<String, String>>,
    /// Extended params, the same way; a multiple push's are the request's
    /// merged with the target's (the target's win).
    params: Vec<HashMap<String, String>>,
    notify_type: String,
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
    tag_name: Option<Field>,
    /// Template and multiple pushes, and broadcast, group and tag pushes by
    /// template.
    template_name: Option<Field>,
    template_key_value: Option<Field>,
    target_msgs: Option<Field>,
    /// Ours (FCM and APNs have it): replaces the device's unsent message
    /// with the same key.
    collapse_key: Option<Field>,
}

/// Validates a simple push.
pub fn parse(bytes: &[u8], config: &Config, caller: &AuthenticatedApp) -> Result<PushRequest, ApiError> {
    parse_kind(bytes, config, caller, PushKind::Simple)
}

/// Validates a simple, broadcast, group or tag push with a title and
/// content (one that names a template is 3028 here: use `parse_fanout`).
pub fn parse_kind(
    bytes: &[u8],
    config: &Config,
    caller: &AuthenticatedApp,
    kind: PushKind,
) -> Result<PushRequest, ApiError> {
    assert!(
        !matches!(kind, PushKind::Template | PushKind::Multiple),
        "template and multiple pushes go through parse_templated"
    );
    match parse_any(bytes, config, caller, kind)? {
        Parsed::Ready(request) => Ok(request),
        Parsed::Templated(_) => Err(ApiError::new(
            ResultCode::InvalidParam,
            "templateName: this push takes a title and content",
        )),
    }
}

/// Validates a broadcast, group or tag push: with a title and content
/// (`Parsed::Ready`), or naming a template (`Parsed::Templated`).
pub fn parse_fanout(
    bytes: &[u8],
    config: &Config,
    caller: &AuthenticatedApp,
    kind: PushKind,
) -> Result<Parsed, ApiError> {
    assert!(kind.is_fanout(), "{kind:?} is not a broadcast, group or tag push");
    parse_any(bytes, config, caller, kind)
}

/// Validates a template push (`kind` Template) or a multiple push
/// (`Multiple`), up to the template lookup.
pub fn parse_templated(
    bytes: &[u8],
    config: &Config,
    caller: &AuthenticatedApp,
    kind: PushKind,
) -> Result<TemplatedPush, ApiError> {
    assert!(
        matches!(kind, PushKind::Template | PushKind::Multiple),
        "simple, broadcast and group pushes go through parse_kind"
    );
    match parse_any(bytes, config, caller, kind)? {
        Parsed::Templated(push) => Ok(push),
        Parsed::Ready(_) => unreachable!("template kinds name a template"),
    }
}

/// A validated push: ready to encode, or to render against its template.
#[derive(Debug)]
pub enum Parsed {
    Ready(PushRequest),
    Templated(TemplatedPush),
}

/// What a push delivers, before its bodies are built.
enum Content {
    Literal { title: String, content: String },
    Template(String),
}

/// The one validation path. Checks run in a fixed order, so a request with
/// several faults always gets the same code: appId/workspaceId (3003, 3007),
/// taskName (3019), strategyType, the content (3024 or 3025; for a
/// broadcast, group or tag push, a templateName with a title or content is
/// 3028), deliveryType
/// (3009, 3030), expiredSeconds (3020, 3026), the targets (3021, 3029, 3055
/// and per target), extendedParams (3044, 3035), collapseKey (3028), the
/// display fields, notifyType, templateKeyValue.
fn parse_any(
    bytes: &[u8],
    config: &Config,
    caller: &AuthenticatedApp,
    kind: PushKind,
) -> Result<Parsed, ApiError> {
    let req: Request = fields::decode(bytes)?;
    let app_id = app(&req, caller)?;
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
    let content = match kind {
        PushKind::Template | PushKind::Multiple => {
            let name = string_field(&req.template_name, "templateName")?.unwrap_or_default();
            if name.is_empty() {
                return Err(ApiError::new(
                    ResultCode::NeedTemplate,
                    "templateName is required",
                ));
            }
            Content::Template(name)
        }
        PushKind::Simple | PushKind::Broadcast | PushKind::Group | PushKind::Tag => {
            let title = string_field(&req.title, "title")?.unwrap_or_default();
            let content = string_field(&req.content, "content")?.unwrap_or_default();
            let template = match kind.is_fanout() {
                true => string_field(&req.template_name, "templateName")?.unwrap_or_default(),
                false => String::new(),
            };
            if !template.is_empty() {
                if !title.is_empty() || !content.is_empty() {
                    return Err(ApiError::new(
                        ResultCode::InvalidParam,
                        "give a title and content, or a templateName, not both",
                    ));
                }
                Content::Template(template)
            } else if title.is_empty() || content.is_empty() {
                let or = if kind.is_fanout() {
                    " (or templateName and templateKeyValue)"
                } else {
                    ""
                };
                return Err(ApiError::new(
                    ResultCode::PayloadNotEnough,
                    format!("title and content are required{or}"),
                ));
            } else {
                Content::Literal { title, content }
            }
        }
    };
    let delivery_type = delivery_type(&req, kind)?;
    let ttl_secs = ttl(&req, config)?;

    let to_users = delivery_type == 3;
    let audience = match kind {
        PushKind::Simple | PushKind::Template | PushKind::Multiple if to_users => AudienceKind::Users,
        PushKind::Simple | PushKind::Template | PushKind::Multiple => AudienceKind::Tokens,
        PushKind::Broadcast => AudienceKind::Broadcast {
            platform: delivery_type,
            filter: bind_filter(&req)?,
        },
        PushKind::Group => {
            let group = string_field(&req.group_name, "groupName")?.unwrap_or_default();
            if group.is_empty() || group.len() > MAX_GROUP_BYTES {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    format!("groupName is required, at most {MAX_GROUP_BYTES} bytes"),
                ));
            }
            AudienceKind::Group(group)
        }
        PushKind::Tag => {
            let name = string_field(&req.tag_name, "tagName")?.unwrap_or_default();
            crate::tags::check_name(&name)
                .map_err(|e| ApiError::new(ResultCode::InvalidParam, e.to_string()))?;
            AudienceKind::Tag { name, users: None }
        }
    };
    let (targets, per_target, target_collapse_keys) = match kind {
        PushKind::Simple | PushKind::Template => (target_msgkey(req.target_msgkey, &audience)?, None, None),
        PushKind::Multiple => {
            let msgs = target_msgs(req.target_msgs, &audience)?;
            (msgs.targets, Some(msgs.extras), Some(msgs.collapse_keys))
        }
        PushKind::Broadcast | PushKind::Group | PushKind::Tag => (
            vec![(String::new(), one_msg_key(&req.msgkey, &req.msg_key_camel)?)],
            None,
            None,
        ),
    };
    let extended_params = extended_params(
        req.extended_params,
        "extendedParams",
        MAX_EXTENDED_PARAMS,
        ResultCode::ExtendParamTooMuch,
    )?;
    let collapse = collapse_key(&req.collapse_key, "collapseKey")?;
    let collapse_keys = match target_collapse_keys {
        // A target's own collapseKey wins over the request's.
        Some(own) => own.into_iter().map(|k| k.or_else(|| collapse.clone())).collect(),
        None => vec![collapse; targets.len()],
    };
    let notify_type = string_field(&req.notify_type, "notifyType")?.unwrap_or_default();
    let request = PushRequest {
        kind,
        app_id,
        task_name,
        targets,
        audience,
        ttl_secs,
        bodies: Vec::new(),
        collapse_keys,
    };

    let template_name = match content {
        Content::Literal { title, content } => {
            let push_style = small_enum(&req.push_style, "pushStyle", &[0, 1, 2])?;
            let action = small_enum(&req.push_action, "pushAction", &[0, 1])?;
            let silent = flag_field(&req.silent, "silent")?;
            check_notify_type(&notify_type)?;
            let body = body::Push {
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
            return Ok(Parsed::Ready(PushRequest {
                bodies: vec![body],
                ..request
            }));
        }
        Content::Template(name) => name,
    };
    check_notify_type(&notify_type)?;
    let (values, params) = match per_target {
        None => {
            let values = fields::string_map(req.template_key_value).map_err(|()| {
                ApiError::new(
                    ResultCode::InvalidParam,
                    "templateKeyValue must map placeholder names to strings",
                )
            })?;
            (vec![values], vec![extended_params])
        }
        Some(per_target) => {
            let mut values = Vec::with_capacity(per_target.len());
            let mut params = Vec::with_capacity(per_target.len());
            for (i, (target_values, target_params)) in per_target.into_iter().enumerate() {
                let mut merged = extended_params.clone();
                merged.extend(target_params);
                if merged.len() > MAX_EXTENDED_PARAMS {
                    return Err(ApiError::new(
                        ResultCode::ExtendParamTooMuch,
                        format!(
                            "targetMsgs[{i}]: its extendedParams and the request's make {} keys; at most {MAX_EXTENDED_PARAMS}",
                            merged.len()
                        ),
                    ));
                }
                values.push(target_values);
                params.push(merged);
            }
            (values, params)
        }
    };
    Ok(Parsed::Templated(TemplatedPush {
        template_name,
        request,
        values,
        params,
        notify_type,
    }))
}

/// The configured app named by appId and workspaceId.
fn app(req: &Request, caller: &AuthenticatedApp) -> Result<Arc<str>, ApiError> {
    let app_id = string_field(&req.app_id, "appId")?.unwrap_or_default();
    let workspace_id = string_field(&req.workspace_id, "workspaceId")?.unwrap_or_default();
    fields::app(caller, &app_id, &workspace_id)
}

/// 1, 2, 7 (device tokens of a platform) or 3 (users); a group push needs
/// none.
fn delivery_type(req: &Request, kind: PushKind) -> Result<u8, ApiError> {
    match (kind, int_field(&req.delivery_type, "deliveryType")) {
        // A group or a tag spans platforms: deliveryType is not needed.
        (PushKind::Group | PushKind::Tag, _) => Ok(0),
        (_, Ok(Some(t @ (1 | 2 | 7)))) => Ok(t as u8),
        (PushKind::Broadcast, Ok(Some(3))) => Err(ApiError::new(
            ResultCode::BroadcastOnlySupportByDevice,
            "a broadcast goes to a platform's devices: deliveryType 1 (Android), 2 (iOS) or 7 (HarmonyOS)",
        )),
        (_, Ok(Some(3))) => Ok(3),
        (_, Ok(Some(other))) => Err(ApiError::new(
            ResultCode::DeliveryTypeNotSupported,
            format!("deliveryType {other}: use 1 (Android), 2 (iOS), 3 (user) or 7 (HarmonyOS)"),
        )),
        (_, Ok(None) | Err(_)) => Err(ApiError::new(
            ResultCode::DeliveryTypeNotSupported,
            "deliveryType is required: 1 (Android), 2 (iOS), 3 (user) or 7 (HarmonyOS)",
        )),
    }
}

/// expiredSeconds within `delivery.min_ttl_secs ..= max_ttl_secs`.
fn ttl(req: &Request, config: &Config) -> Result<u64, ApiError> {
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
    Ok(ttl_secs)
}

/// A broadcast's pushStatus with its bindPeriod or unBindPeriod.
fn bind_filter(req: &Request) -> Result<BindFilter, ApiError> {
    let push_status = int_field(&req.push_status, "pushStatus")?.unwrap_or(0);
    let bind_period = int_field(&req.bind_period, "bindPeriod")?;
    let unbind_period = int_field(&req.un_bind_period, "unBindPeriod")?;
    match push_status {
        0 => Ok(BindFilter::Bound {
            within_ms: period(bind_period.unwrap_or(4), "bindPeriod")?,
        }),
        1 => Ok(BindFilter::Any {
            unbound_within_ms: period(unbind_period.unwrap_or(4), "unBindPeriod")?,
        }),
        2 => Ok(BindFilter::Unbound {
            within_ms: period(unbind_period.unwrap_or(4), "unBindPeriod")?,
        }),
        _ => Err(ApiError::new(
            ResultCode::InvalidParam,
            "pushStatus must be 0 (bound users), 1 (all) or 2 (unbound)",
        )),
    }
}

fn check_notify_type(notify_type: &str) -> Result<(), ApiError> {
    if matches!(notify_type, "" | "transparent" | "notify") {
        Ok(())
    } else {
        Err(ApiError::new(
            ResultCode::InvalidParam,
            "notifyType must be transparent or notify",
        ))
    }
}

/// The msgKey of a broadcast or group push.
fn one_msg_key(msgkey: &Option<Field>, msg_key_camel: &Option<Field>) -> Result<String, ApiError> {
    let key = match string_field(msgkey, "msgkey")? {
        Some(key) => key,
        None => string_field(msg_key_camel, "msgKey")?.unwrap_or_default(),
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

/// An optional collapse key: 1 to `MAX_COLLAPSE_KEY_CHARS` characters, a
/// string or an integer (3028 otherwise).
fn collapse_key(field: &Option<Field>, name: &str) -> Result<Option<Box<str>>, ApiError> {
    match string_field(field, name)? {
        None => Ok(None),
        Some(key) if key.is_empty() || key.chars().count() > MAX_COLLAPSE_KEY_CHARS => Err(ApiError::new(
            ResultCode::InvalidParam,
            format!("{name} must be 1 to {MAX_COLLAPSE_KEY_CHARS} characters"),
        )),
        Some(key) => Ok(Some(key.into_boxed_str())),
    }
}

/// A msgKey given as a string or an integer.
fn msg_key_value(field: Field) -> Result<String, ApiError> {
    let msg_key = match field {
        Field::Str(s) => s,
        Field::Int(n) => n.to_string(),
        _ => {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                "a msgKey must be a string",
            ))
        }
    };
    check_msg_key(msg_key)
}

/// A device token (3001 empty, 3054 too long) or a userId (3012 empty, 3028
/// too long).
fn check_target(target: &str, audience: &AudienceKind) -> Result<(), ApiError> {
    if *audience == AudienceKind::Users {
        if target.is_empty() {
            return Err(ApiError::new(ResultCode::NeedUserId, "a target userId is empty"));
        }
        if target.chars().count() > super::devices::MAX_USER_ID_CHARS {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                format!(
                    "a target userId is over {} characters",
                    super::devices::MAX_USER_ID_CHARS
                ),
            ));
        }
    } else if target.is_empty() {
        return Err(ApiError::new(
            ResultCode::NeedDeliveryToken,
            "a target token is empty",
        ));
    } else if target.chars().count() > MAX_TOKEN_CHARS {
        return Err(ApiError::new(
            ResultCode::DeliveryTokenInvalid,
            "a target token is too long",
        ));
    }
    Ok(())
}

/// `targetMsgkey` of a simple or template push: `{target: msgKey}`.
fn target_msgkey(field: Option<Field>, audience: &AudienceKind) -> Result<Vec<(String, String)>, ApiError> {
    let map = match fields::map_or_json_string(field) {
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
        .map(|(target, msg_key)| {
            check_target(&target, audience)?;
            Ok((target, msg_key_value(msg_key)?))
        })
        .collect()
}

/// The targets of a multiple push, and per target its placeholder values
/// and its own extendedParams.
struct TargetMsgs {
    targets: Vec<(String, String)>,
    extras: Vec<(HashMap<String, String>, HashMap<String, String>)>,
    /// A target's own collapseKey, if it has one.
    collapse_keys: Vec<Option<Box<str>>>,
}

/// `targetMsgs` of a multiple push: a list (or a string holding one) of
/// `{target, msgKey, templateKeyValue, extendedParams, collapseKey}`, 1 to
/// 100 entries.
fn target_msgs(field: Option<Field>, audience: &AudienceKind) -> Result<TargetMsgs, ApiError> {
    let items = match fields::list_or_json_string(field) {
        Ok(Some(items)) => items,
        Ok(None) => {
            return Err(ApiError::new(
                ResultCode::TokenOrUserIdNull,
                "targetMsgs is required",
            ))
        }
        Err(()) => {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                "targetMsgs must be a list of {target, msgKey, templateKeyValue, extendedParams}",
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::new(
            ResultCode::TokenOrUserIdNull,
            "targetMsgs has no target",
        ));
    }
    if items.len() > MAX_MULTIPLE_TARGETS {
        return Err(ApiError::new(
            ResultCode::MultipleTargetNumberTooMuch,
            format!(
                "targetMsgs has {} targets; at most {MAX_MULTIPLE_TARGETS}",
                items.len()
            ),
        ));
    }
    let mut targets = Vec::with_capacity(items.len());
    let mut extras = Vec::with_capacity(items.len());
    let mut collapse_keys = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let at = |e: ApiError| ApiError::new(e.code, format!("targetMsgs[{i}]: {}", e.reason));
        let Field::Map(entries) = item else {
            return Err(at(ApiError::new(
                ResultCode::InvalidParam,
                "must be an object {target, msgKey, templateKeyValue, extendedParams}",
            )));
        };
        let (mut target, mut msg_key, mut values, mut params, mut collapse) = (None, None, None, None, None);
        for (key, value) in entries {
            match key.as_str() {
                "target" => target = Some(value),
                "msgKey" => msg_key = Some(value),
                "templateKeyValue" => values = Some(value),
                "extendedParams" => params = Some(value),
                "collapseKey" => collapse = Some(value),
                _ => {}
            }
        }
        let target = string_field(&target, "target").map_err(at)?.unwrap_or_default();
        check_target(&target, audience).map_err(at)?;
        let msg_key = msg_key_value(msg_key.unwrap_or(Field::Null)).map_err(at)?;
        let values = fields::string_map(values).map_err(|()| {
            at(ApiError::new(
                ResultCode::InvalidParam,
                "templateKeyValue must map placeholder names to strings",
            ))
        })?;
        let params = extended_params(
            params,
            "extendedParams",
            MAX_TARGET_EXTENDED_PARAMS,
            ResultCode::MultipleInnerExtendParamTooMuch,
        )
        .map_err(at)?;
        collapse_keys.push(collapse_key(&collapse, "collapseKey").map_err(at)?);
        targets.push((target, msg_key));
        extras.push((values, params));
    }
    Ok(TargetMsgs {
        targets,
        extras,
        collapse_keys,
    })
}

/// A string map of at most `max` keys (else `too_many`), none empty or
/// reserved (3044).
fn extended_params(
    field: Option<Field>,
    what: &str,
    max: usize,
    too_many: ResultCode,
) -> Result<HashMap<String, String>, ApiError> {
    let params = fields::string_map(field).map_err(|()| {
        ApiError::new(
            ResultCode::InvalidExtendParam,
            format!("{what} must map strings to strings"),
        )
    })?;
    if params.len() > max {
        return Err(ApiError::new(
            too_many,
            format!("{what} has {} keys; at most {max}", params.len()),
        ));
    }
    if params.contains_key("") {
        return Err(ApiError::new(
            ResultCode::InvalidExtendParam,
            format!("{what} has an empty key"),
        ));
    }
    if let Some(key) = RESERVED_EXTENDED_PARAMS.iter().find(|k| params.contains_key(**k)) {
        return Err(ApiError::new(
            ResultCode::InvalidExtendParam,
            format!(
                "{what}: {key} is reserved for the system (so are {})",
                RESERVED_EXTENDED_PARAMS.join(", ")
            ),
        ));
    }
    Ok(params)
}

impl TemplatedPush {
    pub fn app_id(&self) -> &Arc<str> {
        &self.request.app_id
    }

    /// Builds the messages from `template`: every placeholder of its title,
    /// content and uri needs a value (3023 names those that have none; extra
    /// values are ignored), and the rendered title and content must not be
    /// empty (3024). The other display fields are the template's.
    pub fn render(self, template: &Template) -> Result<PushRequest, ApiError> {
        let placeholders = template.placeholders();
        let multiple = self.request.kind == PushKind::Multiple;
        let mut bodies = Vec::with_capacity(self.values.len());
        for (i, (values, params)) in self.values.iter().zip(self.params).enumerate() {
            let place = || {
                if multiple {
                    format!("targetMsgs[{i}] (target {}): ", self.request.targets[i].0)
                } else {
                    String::new()
                }
            };
            let missing: Vec<&str> = placeholders
                .iter()
                .copied()
                .filter(|name| !values.contains_key(*name))
                .collect();
            if !missing.is_empty() {
                return Err(ApiError::new(
                    ResultCode::TemplateKvNotEnough,
                    format!(
                        "{}templateKeyValue has no value for {} (template {:?} needs {})",
                        place(),
                        missing.join(", "),
                        template.draft.name,
                        placeholders.join(", ")
                    ),
                ));
            }
            let value = |name: &str| values.get(name).map(String::as_str);
            let rendered = |text: &crate::templates::text::Text| {
                text.render(value).expect("every placeholder has a value")
            };
            let title = rendered(&template.title);
            let content = rendered(&template.content);
            if title.is_empty() || content.is_empty() {
                return Err(ApiError::new(
                    ResultCode::PayloadNotEnough,
                    format!(
                        "{}the rendered title or content is empty (its placeholders' values are empty)",
                        place()
                    ),
                ));
            }
            let d = &template.draft;
            bodies.push(body::Push {
                title,
                content,
                uri: rendered(&template.uri),
                silent: d.silent,
                action: d.action,
                push_style: d.push_style,
                icon_urls: d.icon_urls.clone(),
                image_urls: d.image_urls.clone(),
                extended_params: params,
                notify_type: self.notify_type.clone(),
                ..Default::default()
            });
        }
        Ok(PushRequest {
            bodies,
            ..self.request
        })
    }
}

impl PushRequest {
    /// Gives a tag push the users its tag holds now.
    pub fn resolve_tag(&mut self, tag_users: Arc<TagUsers>) {
        if let AudienceKind::Tag { users, .. } = &mut self.audience {
            *users = Some(tag_users);
        }
    }

    /// The tag a tag push names.
    pub fn tag_name(&self) -> Option<&str> {
        match &self.audience {
            AudienceKind::Tag { name, .. } => Some(name),
            _ => None,
        }
    }

    /// What the statistics count it as: by endpoint, except that a push to
    /// userIds is `user` whichever endpoint took it.
    pub fn push_type(&self) -> PushType {
        match (self.kind, &self.audience) {
            (_, AudienceKind::Users) => PushType::User,
            (PushKind::Simple, _) => PushType::Simple,
            (PushKind::Template, _) => PushType::Template,
            (PushKind::Multiple, _) => PushType::Multiple,
            (PushKind::Broadcast, _) => PushType::Broadcast,
            (PushKind::Group, _) => PushType::Group,
            (PushKind::Tag, _) => PushType::Tag,
        }
    }

    fn task_tag(&self, task_id: u64) -> TaskTag {
        TaskTag {
            id: task_id,
            push_type: self.push_type(),
            name: Arc::from(self.task_name.as_str()),
        }
    }

    /// Whether the targets are device tokens (else the push is stored once
    /// and every shard delivers it: `shared_messages`).
    pub fn to_tokens(&self) -> bool {
        self.audience == AudienceKind::Tokens
    }

    /// One message per token, its Push frame encoded once here. `task_id`
    /// (0: none) goes into every frame; `next_id` hands out service message
    /// ids.
    pub fn messages(
        &self,
        now_ms: u64,
        task_id: u64,
        next_id: impl FnMut() -> u64,
    ) -> Result<Vec<Message>, ApiError> {
        let expires_at_ms = now_ms + self.ttl_secs * 1000;
        let task = self.task_tag(task_id);
        self.frames(now_ms, task_id, next_id, |i, (token, msg_key), id, frame| {
            Message {
                id,
                app_id: self.app_id.clone(),
                token: token.as_str().into(),
                msg_key: msg_key.as_str().into(),
                accepted_at_ms: now_ms,
                expires_at_ms,
                frame,
                task: task.clone(),
                collapse_key: self.collapse_keys[i].clone(),
            }
        })
    }

    /// One shared message per user, or the one of a broadcast, group or tag
    /// push (its task id in the frame). A tag push must be resolved first.
    pub fn shared_messages(
        &self,
        now_ms: u64,
        task_id: u64,
        next_id: impl FnMut() -> u64,
    ) -> Result<Vec<Arc<SharedMessage>>, ApiError> {
        let expires_at_ms = now_ms + self.ttl_secs * 1000;
        if let AudienceKind::Tag { users: None, name } = &self.audience {
            return Err(ApiError::new(
                ResultCode::SystemError,
                format!("the users of tag {name:?} were not looked up"),
            ));
        }
        let task = self.task_tag(task_id);
        self.frames(now_ms, task_id, next_id, |i, (target, msg_key), id, frame| {
            let audience = match &self.audience {
                AudienceKind::Users | AudienceKind::Tokens => Audience::User(target.as_str().into()),
                AudienceKind::Broadcast { platform, filter } => Audience::Platform {
                    platform: *platform,
                    filter: *filter,
                },
                AudienceKind::Group(group) => Audience::Group(group.as_str().into()),
                AudienceKind::Tag { name, users } => Audience::Tag {
                    name: name.as_str().into(),
                    users: users.clone().expect("checked above"),
                },
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
                push_type: task.push_type,
                task_name: task.name.clone(),
                collapse_key: self.collapse_keys[i].clone(),
            })
        })
    }

    /// Encodes each target's Push frame (refusing one over
    /// `MAX_PUSH_BODY_BYTES`) and builds what carries it.
    fn frames<T>(
        &self,
        now_ms: u64,
        task_id: u64,
        mut next_id: impl FnMut() -> u64,
        mut build: impl FnMut(usize, &(String, String), u64, Bytes) -> T,
    ) -> Result<Vec<T>, ApiError> {
        let one_body = self.bodies.len() == 1;
        debug_assert!(one_body || self.bodies.len() == self.targets.len());
        let stamp = |mut push: body::Push| {
            push.accepted_at_ms = now_ms;
            push.expires_at_ms = now_ms + self.ttl_secs * 1000;
            if task_id != 0 {
                push.task_id = task_id.to_string();
            }
            push
        };
        let mut push = stamp(self.bodies[0].clone());
        self.targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                if !one_body && i > 0 {
                    push = stamp(self.bodies[i].clone());
                }
                push.id = next_id();
                push.msg_key.clone_from(&target.1);
                let frame = crate::protocol::encode_push(&push);
                let body_len = frame.len() - crate::protocol::HEADER_LEN;
                if body_len > MAX_PUSH_BODY_BYTES {
                    let whom = if target.0.is_empty() {
                        String::new()
                    } else {
                        format!(" to {}", target.0)
                    };
                    return Err(ApiError::new(
                        self.kind.too_long(),
                        format!("the message{whom} is {body_len} bytes; at most {MAX_PUSH_BODY_BYTES}"),
                    ));
                }
                Ok(build(i, target, push.id, Bytes::from(frame)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_slice, Frame};
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

    fn check(change: impl FnOnce(&mut Map<String, Value>)) -> Result<PushRequest, i32> {
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
        assert!(push.bodies[0].silent);
        assert_eq!(push.bodies[0].push_style, 2);
        assert_eq!(push.bodies[0].extended_params["n"], "2");
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
            (
                Box::new(|r| drop(r.insert("extendedParams".into(), json!({"taskId": "1"})))),
                3044,
            ),
            (
                Box::new(|r| drop(r.insert("extendedParams".into(), json!({"": "v"})))),
                3044,
            ),
        ];
        for (i, (change, want)) in cases.into_iter().enumerate() {
            assert_eq!(check(change).map(|_| ()), Err(want), "case {i}");
        }
    }

    #[test]
    fn user_broadcast_and_group_pushes() {
        let config = Config::default();
        let apps = caller(&config);
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
            .messages(1, 0, || {
                id += 1;
                id
            })
            .unwrap_err();
        assert_eq!(err.code.code(), 3043);
    }

    #[test]
    fn messages_carry_ids_keys_and_expiry() {
        let push = check(|r| drop(r.insert("targetMsgkey".into(), json!({"a": "ka", "b": "kb"})))).unwrap();
        let mut id = 10;
        let messages = push
            .messages(5_000, 0, || {
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

    fn template() -> Template {
        crate::templates::validate(
            crate::templates::Draft {
                name: "prize".into(),
                title: "Hi #name#".into(),
                content: "#name#, you won #money#".into(),
                uri: "app://prize/#money#".into(),
                push_style: 1,
                silent: true,
                ..Default::default()
            },
            0,
        )
        .unwrap()
    }

    fn templated(kind: PushKind, body: &Value) -> Result<TemplatedPush, i32> {
        let config = Config::default();
        parse_templated(body.to_string().as_bytes(), &config, &caller(&config), kind)
            .map_err(|e| e.code.code())
    }

    fn template_base() -> Value {
        json!({
            "appId": "demo", "workspaceId": "default", "taskName": "t",
            "templateName": "prize", "templateKeyValue": "{\"name\":\"Ann\",\"money\":200}",
            "deliveryType": 1, "targetMsgkey": {"tok": "k"}, "expiredSeconds": 300,
            "extendedParams": {"orderId": "7"},
        })
    }

    fn multiple_base() -> Value {
        json!({
            "appId": "demo", "workspaceId": "default", "taskName": "t",
            "templateName": "prize", "deliveryType": 1, "expiredSeconds": 300,
            "extendedParams": {"campaign": "spring", "orderId": "0"},
            "targetMsgs": [
                {"target": "a", "msgKey": "ka", "templateKeyValue": {"name": "Ann", "money": "1"},
                 "extendedParams": {"orderId": "1"}},
                {"target": "b", "msgKey": 2, "templateKeyValue": "{\"name\":\"Bob\",\"money\":\"2\"}"},
            ],
        })
    }

    fn decoded(frame: &Bytes) -> body::Push {
        match decode_slice(frame, 4096).unwrap().unwrap().0 {
            Frame::Push(p) => *p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_template_push_renders_the_template() {
        let push = templated(PushKind::Template, &template_base()).unwrap();
        assert_eq!(push.template_name, "prize");
        let request = push.render(&template()).unwrap();
        assert_eq!(request.bodies.len(), 1);
        let messages = request.messages(1_000, 0, || 5).unwrap();
        let p = decoded(&messages[0].frame);
        assert_eq!(
            (p.title.as_str(), p.content.as_str(), p.uri.as_str()),
            ("Hi Ann", "Ann, you won 200", "app://prize/200")
        );
        assert!(p.silent);
        assert_eq!(p.push_style, 1);
        assert_eq!(p.extended_params["orderId"], "7");
        assert_eq!(p.task_id, "", "a template push has no task");
    }

    #[test]
    fn a_missing_value_is_3023_and_names_the_placeholder() {
        let mut body = template_base();
        body["templateKeyValue"] = json!({"name": "Ann", "extra": "ignored"});
        let err = templated(PushKind::Template, &body)
            .unwrap()
            .render(&template())
            .unwrap_err();
        assert_eq!(err.code.code(), 3023);
        assert!(err.reason.contains("money"), "{}", err.reason);
        let mut bare = template();
        bare.title = crate::templates::text::Text::parse("#name#").unwrap();
        body["templateKeyValue"] = json!({"name": "", "money": "1"});
        let err = templated(PushKind::Template, &body)
            .unwrap()
            .render(&bare)
            .unwrap_err();
        assert_eq!(err.code.code(), 3024, "the rendered title would be empty");
    }

    #[test]
    fn template_push_result_codes() {
        let cases: Vec<(Value, i32)> = vec![
            (json!({"templateName": null}), 3025),
            (json!({"templateName": ""}), 3025),
            (json!({"templateKeyValue": [1]}), 3028),
            (json!({"templateKeyValue": {"a": {"b": 1}}}), 3028),
            (json!({"targetMsgkey": {}}), 3021),
            (json!({"extendedParams": {"channel": "x"}}), 3044),
            (json!({"deliveryType": 9}), 3009),
            (json!({"notifyType": "loud"}), 3028),
        ];
        for (change, want) in cases {
            let mut body = template_base();
            for (k, v) in change.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert_eq!(
                templated(PushKind::Template, &body).map(|_| ()),
                Err(want),
                "{change}"
            );
        }
        // The rendered message is what is measured.
        let mut body = template_base();
        body["templateKeyValue"] = json!({"name": "n".repeat(1500), "money": "1"});
        let request = templated(PushKind::Template, &body)
            .unwrap()
            .render(&template())
            .unwrap();
        assert_eq!(request.messages(1, 0, || 1).unwrap_err().code.code(), 3043);
    }

    #[test]
    fn a_multiple_push_renders_each_target_and_carries_the_task() {
        let push = templated(PushKind::Multiple, &multiple_base()).unwrap();
        let request = push.render(&template()).unwrap();
        assert_eq!(
            request.targets,
            [("a".into(), "ka".into()), ("b".into(), "2".into())]
        );
        let mut id = 0;
        let messages = request
            .messages(1_000, 99, || {
                id += 1;
                id
            })
            .unwrap();
        let (a, b) = (decoded(&messages[0].frame), decoded(&messages[1].frame));
        assert_eq!(
            (a.title.as_str(), a.content.as_str()),
            ("Hi Ann", "Ann, you won 1")
        );
        assert_eq!(
            (b.title.as_str(), b.content.as_str()),
            ("Hi Bob", "Bob, you won 2")
        );
        assert_eq!((a.id, b.id), (1, 2));
        assert_eq!((a.task_id.as_str(), b.task_id.as_str()), ("99", "99"));
        assert_eq!((a.msg_key.as_str(), b.msg_key.as_str()), ("ka", "2"));
        assert_eq!(a.extended_params["orderId"], "1", "the target's param wins");
        assert_eq!(b.extended_params["orderId"], "0");
        assert_eq!(b.extended_params["campaign"], "spring");
        // A list sent as a JSON string is the same request.
        let mut as_string = multiple_base();
        as_string["targetMsgs"] = json!(multiple_base()["targetMsgs"].to_string());
        let again = templated(PushKind::Multiple, &as_string).unwrap();
        assert_eq!(again, templated(PushKind::Multiple, &multiple_base()).unwrap());
    }

    #[test]
    fn multiple_push_result_codes() {
        let target = |i: usize| json!({"target": format!("t{i}"), "msgKey": format!("k{i}")});
        let hundred: Vec<Value> = (0..100).map(target).collect();
        let too_many: Vec<Value> = (0..101).map(target).collect();
        let nine: Map<String, Value> = (0..9).map(|i| (format!("p{i}"), json!("v"))).collect();
        let ten: Map<String, Value> = (0..10).map(|i| (format!("p{i}"), json!("v"))).collect();
        let twenty: Map<String, Value> = (0..20).map(|i| (format!("q{i}"), json!("v"))).collect();
        let cases: Vec<(Value, Result<(), i32>)> = vec![
            (json!({"targetMsgs": hundred}), Ok(())),
            (json!({"targetMsgs": too_many}), Err(3055)),
            (json!({"targetMsgs": null}), Err(3021)),
            (json!({"targetMsgs": []}), Err(3021)),
            (json!({"targetMsgs": "[]"}), Err(3021)),
            (json!({"targetMsgs": {"a": "k"}}), Err(3028)),
            (json!({"targetMsgs": ["x"]}), Err(3028)),
            (json!({"targetMsgs": [{"msgKey": "k"}]}), Err(3001)),
            (
                json!({"deliveryType": 3, "targetMsgs": [{"msgKey": "k"}]}),
                Err(3012),
            ),
            (json!({"targetMsgs": [{"target": "t"}]}), Err(3028)),
            (
                json!({"targetMsgs": [{"target": "t", "msgKey": "k".repeat(65)}]}),
                Err(3028),
            ),
            (
                json!({"targetMsgs": [{"target": "t".repeat(129), "msgKey": "k"}]}),
                Err(3054),
            ),
            (
                json!({"targetMsgs": [{"target": "t", "msgKey": "k", "templateKeyValue": "nope"}]}),
                Err(3028),
            ),
            (
                json!({"extendedParams": null, "targetMsgs": [{"target": "t", "msgKey": "k", "extendedParams": nine}]}),
                Ok(()),
            ),
            (
                json!({"targetMsgs": [{"target": "t", "msgKey": "k", "extendedParams": ten}]}),
                Err(3049),
            ),
            (
                json!({"targetMsgs": [{"target": "t", "msgKey": "k", "extendedParams": {"taskId": "1"}}]}),
                Err(3044),
            ),
            (
                json!({"extendedParams": twenty, "targetMsgs": [{"target": "t", "msgKey": "k", "extendedParams": {"x": "1"}}]}),
                Err(3035),
            ),
            (json!({"templateName": null}), Err(3025)),
            (json!({"strategyType": 1}), Err(3028)),
            (json!({"expiredSeconds": 0}), Err(3020)),
        ];
        for (change, want) in cases {
            let mut body = multiple_base();
            for (k, v) in change.as_object().unwrap() {
                body[k] = v.clone();
            }
            let got = templated(PushKind::Multiple, &body).map(|_| ());
            assert_eq!(got, want, "{change}");
        }
        let mut body = multiple_base();
        body["targetMsgs"][1]["templateKeyValue"] = json!({"name": "Bob"});
        let err = templated(PushKind::Multiple, &body)
            .unwrap()
            .render(&template())
            .unwrap_err();
        assert_eq!(err.code.code(), 3023);
        assert!(
            err.reason.contains("targetMsgs[1]") && err.reason.contains("money"),
            "{}",
            err.reason
        );
        body["targetMsgs"][1]["templateKeyValue"] = json!({"name": "n".repeat(1500), "money": "1"});
        let request = templated(PushKind::Multiple, &body)
            .unwrap()
            .render(&template())
            .unwrap();
        let err = request.messages(1, 7, || 1).unwrap_err();
        assert_eq!(err.code.code(), 3050);
        assert!(err.reason.contains("to b"), "{}", err.reason);
    }

    #[test]
    fn users_are_targets_of_template_and_multiple_pushes() {
        let mut body = multiple_base();
        body["deliveryType"] = json!(3);
        let request = templated(PushKind::Multiple, &body)
            .unwrap()
            .render(&template())
            .unwrap();
        assert_eq!(request.audience, AudienceKind::Users);
        let shared = request.shared_messages(1_000, 42, || 3).unwrap();
        assert_eq!(shared[1].audience, Audience::User("b".into()));
        assert_eq!(shared[1].task_id, 42);
        assert_eq!(decoded(&shared[1].frame).title, "Hi Bob");
    }

    #[test]
    fn a_collapse_key_reaches_every_message_of_the_push() {
        let mut body = base();
        body["collapseKey"] = json!("score");
        body["targetMsgkey"] = json!({"t1": "k1", "t2": "k2"});
        let request = check(|r| *r = body.as_object().unwrap().clone()).unwrap();
        let messages = request.messages(1, 0, || 1).unwrap();
        assert!(messages
            .iter()
            .all(|m| m.collapse_key.as_deref() == Some("score")));
        // Absent or null: none.
        let request = check(|_| {}).unwrap();
        assert_eq!(request.messages(1, 0, || 1).unwrap()[0].collapse_key, None);
        let request = check(|r| drop(r.insert("collapseKey".into(), Value::Null))).unwrap();
        assert_eq!(request.messages(1, 0, || 1).unwrap()[0].collapse_key, None);
        // A number is its decimal text, like a msgKey.
        let request = check(|r| drop(r.insert("collapseKey".into(), json!(7)))).unwrap();
        assert_eq!(
            request.messages(1, 0, || 1).unwrap()[0].collapse_key.as_deref(),
            Some("7")
        );
        // To users: every user's shared message carries it.
        let mut body = template_base();
        body["deliveryType"] = json!(3);
        body["collapseKey"] = json!("score");
        let request = templated(PushKind::Template, &body)
            .unwrap()
            .render(&template())
            .unwrap();
        let shared = request.shared_messages(1, 0, || 1).unwrap();
        assert_eq!(shared[0].collapse_key.as_deref(), Some("score"));
    }

    #[test]
    fn a_collapse_key_is_one_to_64_characters() {
        let max = "é".repeat(MAX_COLLAPSE_KEY_CHARS);
        assert!(check(|r| drop(r.insert("collapseKey".into(), json!(max)))).is_ok());
        let over = "é".repeat(MAX_COLLAPSE_KEY_CHARS + 1);
        for bad in [json!(""), json!(over), json!(["a"]), json!({"a": 1})] {
            assert_eq!(
                check(|r| drop(r.insert("collapseKey".into(), bad.clone()))).unwrap_err(),
                3028,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_multiple_push_target_may_have_its_own_collapse_key() {
        let mut body = multiple_base();
        body["collapseKey"] = json!("all");
        body["targetMsgs"][0]["collapseKey"] = json!("mine");
        let request = templated(PushKind::Multiple, &body)
            .unwrap()
            .render(&template())
            .unwrap();
        let messages = request.messages(1, 5, || 1).unwrap();
        assert_eq!(messages[0].collapse_key.as_deref(), Some("mine"));
        assert_eq!(messages[1].collapse_key.as_deref(), Some("all"), "the request's");
        body["targetMsgs"][1]["collapseKey"] = json!("");
        assert_eq!(templated(PushKind::Multiple, &body).unwrap_err(), 3028);
    }

    #[test]
    fn tag_pushes_name_a_tag_and_need_its_users() {
        let config = Config::default();
        let apps = caller(&config);
        let body = json!({
            "appId": "demo", "workspaceId": "default", "taskName": "t", "tagName": "vip",
            "msgkey": "k", "title": "Hi", "content": "c", "expiredSeconds": 60,
        });
        let parsed = |b: &Value| parse_fanout(b.to_string().as_bytes(), &config, &apps, PushKind::Tag);
        let Ok(Parsed::Ready(mut push)) = parsed(&body) else {
            panic!("a ready tag push");
        };
        assert_eq!(push.tag_name(), Some("vip"));
        assert_eq!(
            push.shared_messages(1, 2, || 3).unwrap_err().code.code(),
            9000,
            "not before its users are looked up"
        );
        let users = TagUsers::new(vec![crate::message::user_digest("demo", "alice")]);
        push.resolve_tag(users.clone());
        let shared = push.shared_messages(1_000, 42, || 3).unwrap();
        assert_eq!(
            shared[0].audience,
            Audience::Tag {
                name: "vip".into(),
                users
            }
        );
        assert_eq!(decoded(&shared[0].frame).task_id, "42");
        let code = |change: Value| {
            let mut b = body.clone();
            for (k, v) in change.as_object().unwrap() {
                b[k] = v.clone();
            }
            parsed(&b).map(|_| ()).unwrap_err().code.code()
        };
        assert_eq!(code(json!({"tagName": null})), 3028);
        assert_eq!(code(json!({"tagName": "t".repeat(31)})), 3028);
        assert_eq!(code(json!({"msgkey": null})), 3028);
        assert_eq!(code(json!({"title": ""})), 3024);
        assert_eq!(code(json!({"expiredSeconds": 0})), 3020);
    }

    #[test]
    fn broadcast_group_and_tag_pushes_may_name_a_template() {
        let config = Config::default();
        let apps = caller(&config);
        let body = json!({
            "appId": "demo", "workspaceId": "default", "taskName": "t", "deliveryType": 1,
            "groupName": "news", "tagName": "vip", "msgkey": "k", "expiredSeconds": 60,
            "templateName": "prize", "templateKeyValue": {"name": "Ann", "money": "5"},
        });
        for kind in [PushKind::Broadcast, PushKind::Group, PushKind::Tag] {
            let parsed = parse_fanout(body.to_string().as_bytes(), &config, &apps, kind).unwrap();
            let Parsed::Templated(push) = parsed else {
                panic!("{kind:?}: a templated push");
            };
            let mut request = push.render(&template()).unwrap();
            request.resolve_tag(TagUsers::new(vec![1]));
            let shared = request.shared_messages(1_000, 9, || 4).unwrap();
            let p = decoded(&shared[0].frame);
            assert_eq!(
                (p.title.as_str(), p.content.as_str()),
                ("Hi Ann", "Ann, you won 5")
            );
            assert_eq!((p.task_id.as_str(), p.msg_key.as_str()), ("9", "k"));
            let mut missing = body.clone();
            missing["templateKeyValue"] = json!({"name": "Ann"});
            let Parsed::Templated(push) =
                parse_fanout(missing.to_string().as_bytes(), &config, &apps, kind).unwrap()
            else {
                panic!("templated");
            };
            assert_eq!(push.render(&template()).unwrap_err().code.code(), 3023);
            let mut both = body.clone();
            both["title"] = json!("Hi");
            assert_eq!(
                parse_fanout(both.to_string().as_bytes(), &config, &apps, kind)
                    .unwrap_err()
                    .code
                    .code(),
                3028,
                "a title and a template are ambiguous"
            );
            assert_eq!(
                parse_kind(body.to_string().as_bytes(), &config, &apps, kind)
                    .unwrap_err()
                    .code
                    .code(),
                3028
            );
        }
        // A simple push does not take one: its title and content are required.
        let mut simple = body.clone();
        simple["targetMsgkey"] = json!({"tok": "k"});
        assert_eq!(
            parse(simple.to_string().as_bytes(), &config, &apps)
                .unwrap_err()
                .code
                .code(),
            3024
        );
    }
}
