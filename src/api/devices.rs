//! The device registry through the API: bind and unbind a user, join and
//! leave groups, report a vendor token (the same changes a device makes with
//! its own frames), rotate a device's token, and the device query by token
//! or by user. A change goes
//! to the shard that owns the token and is answered once it is durable; a
//! query by user asks every shard, because a user's devices live wherever
//! their tokens hash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::auth::AuthenticatedApp;
use super::result_code::{ApiError, ResultCode};
use super::{admit, ask, ask_all, error_response, record, resolve_app, ApiState};
use crate::delivery::{self, MAX_GROUPS_PER_DEVICE, MAX_GROUP_LEN, MAX_VENDOR_TOKEN_LEN, VENDOR_CHANNELS};
use crate::message::{owner_shard, Command, DeviceLookup, DeviceReport, RegistryChange, Rotation};

/// thirdChannel's values, for messages.
const CHANNELS: &str = "2 (Apple), 4 (Xiaomi), 5 (Huawei), 6 (FCM), 7 (OPPO) or 8 (vivo)";

/// Longest userId (the reference's tag tools allow 60 characters).
pub const MAX_USER_ID_CHARS: usize = delivery::MAX_USER_ID_CHARS;

/// A registry change as the API receives it. Strings only; a wrongly typed
/// field fails the whole body with 3028.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistryRequest {
    app_id: Option<String>,
    workspace_id: Option<String>,
    delivery_token: Option<String>,
    user_id: Option<String>,
    group_name: Option<String>,
    third_channel: Option<u32>,
    vendor_token: Option<String>,
}

/// Which registry change an endpoint makes.
#[derive(Clone, Copy, Debug)]
pub enum Operation {
    Bind,
    Unbind,
    JoinGroup,
    LeaveGroup,
    LeaveAllGroups,
    VendorToken,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Self::Bind,
        Self::Unbind,
        Self::JoinGroup,
        Self::LeaveGroup,
        Self::LeaveAllGroups,
        Self::VendorToken,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Bind => "user_bind",
            Self::Unbind => "user_unbind",
            Self::JoinGroup => "group_join",
            Self::LeaveGroup => "group_leave",
            Self::LeaveAllGroups => "group_leave_all",
            Self::VendorToken => "vendor_token",
        }
    }
}

/// Validates a registry request into (app, token, change).
pub fn parse_change(
    bytes: &[u8],
    caller: &AuthenticatedApp,
    operation: Operation,
) -> Result<(Arc<str>, String, RegistryChange), ApiError> {
    let req: RegistryRequest = super::json_body(bytes)?;
    let app = resolve_app(caller, req.app_id.as_deref(), req.workspace_id.as_deref())?;
    let token = req.delivery_token.unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::new(
            ResultCode::NeedDeliveryToken,
            "deliveryToken is required",
        ));
    }
    let user = || {
        let user = req.user_id.clone().unwrap_or_default();
        if user.is_empty() {
            return Err(ApiError::new(ResultCode::NeedUserId, "userId is required"));
        }
        if user.chars().count() > MAX_USER_ID_CHARS {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                format!("userId is at most {MAX_USER_ID_CHARS} characters"),
            ));
        }
        Ok(user.into_boxed_str())
    };
    let group = || match req.group_name.clone().filter(|g| !g.is_empty()) {
        Some(g) if g.len() > MAX_GROUP_LEN => Err(ApiError::new(
            ResultCode::InvalidParam,
            format!("groupName is {} bytes; at most {MAX_GROUP_LEN}", g.len()),
        )),
        Some(g) => Ok(g.into_boxed_str()),
        None => Err(ApiError::new(ResultCode::InvalidParam, "groupName is required")),
    };
    let change = match operation {
        Operation::Bind => RegistryChange::Bind(user()?),
        Operation::Unbind => RegistryChange::Unbind(user()?),
        Operation::JoinGroup => RegistryChange::JoinGroup(group()?),
        Operation::LeaveGroup => RegistryChange::LeaveGroup(group()?),
        Operation::LeaveAllGroups => RegistryChange::LeaveAllGroups,
        Operation::VendorToken => {
            // In the shard's order: the channel given, the token given,
            // the channel known, the token's length.
            let Some(channel) = req.third_channel else {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    format!("thirdChannel is required: {CHANNELS}"),
                ));
            };
            let vendor_token = req.vendor_token.unwrap_or_default();
            if vendor_token.is_empty() {
                return Err(ApiError::new(
                    ResultCode::NeedDeliveryToken,
                    "vendorToken is required",
                ));
            }
            if !VENDOR_CHANNELS.contains(&channel) {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    format!("thirdChannel {channel} is no vendor channel: give {CHANNELS}"),
                ));
            }
            if vendor_token.len() > MAX_VENDOR_TOKEN_LEN {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    format!(
                        "vendorToken is {} bytes; at most {MAX_VENDOR_TOKEN_LEN}",
                        vendor_token.len()
                    ),
                ));
            }
            RegistryChange::VendorToken(channel, vendor_token.into())
        }
    };
    Ok((app, token, change))
}

/// `POST /v1/users/bind` and its siblings: one registry change.
pub(super) async fn change(state: Arc<ApiState>, operation: Operation, request: Request) -> Response {
    let op = operation.name();
    let started = Instant::now();
    let result = async {
        let (caller, bytes) = admit(&state, request).await?;
        let (app_id, token, change) = parse_change(&bytes, &caller, operation)?;
        let shard = owner_shard(token.as_bytes(), state.shards.len());
        let code = ask(&state, shard, |reply| Command::Registry {
            app_id,
            token: token.into(),
            change,
            reply,
        })
        .await?
        .map_err(super::storage_error)?;
        refusal(operation, code).map_or(Ok(()), Err)
    }
    .await;
    match result {
        Ok(()) => {
            record(op, "OK", started);
            super::envelope(200, "OK", "", json!({"Success": true, "ResultMsg": ""}))
        }
        Err(e) => error_response(op, started, e),
    }
}

/// The shard's answer to a registry change as the API's: `None` for
/// success (100). `parse_change` has made every check the shard makes on the
/// request alone, so what is left to refuse is the device's state (no such
/// token, a join past the group limit); each code still gets the reason the
/// shard (`DeliveryCore::change_registry`) refuses with it for this operation.
fn refusal(operation: Operation, code: i32) -> Option<ApiError> {
    let (code, reason) = match (code, operation) {
        (100, _) => return None,
        (3001, _) => (
            ResultCode::NeedDeliveryToken,
            "vendorToken is required".to_string(),
        ),
        (3012, _) => (ResultCode::NeedUserId, "userId is required".to_string()),
        (3054, _) => (
            ResultCode::DeliveryTokenInvalid,
            "no device of this app holds this deliveryToken".to_string(),
        ),
        (3028, Operation::Bind) => (
            ResultCode::InvalidParam,
            format!("userId is at most {MAX_USER_ID_CHARS} characters"),
        ),
        (3028, Operation::JoinGroup) => (
            ResultCode::InvalidParam,
            format!("the device is in {MAX_GROUPS_PER_DEVICE} groups already, the most it may join"),
        ),
        (3028, Operation::VendorToken) => (
            ResultCode::InvalidParam,
            format!("thirdChannel must be {CHANNELS}, and vendorToken at most {MAX_VENDOR_TOKEN_LEN} bytes"),
        ),
        (code, _) => (
            ResultCode::InvalidParam,
            format!("the change was refused ({code})"),
        ),
    };
    Some(ApiError::new(code, reason))
}

/// A token rotation as the API receives it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RotateRequest {
    app_id: Option<String>,
    workspace_id: Option<String>,
    delivery_token: Option<String>,
}

/// Validates a token rotation request into (app, token).
pub fn parse_rotation(bytes: &[u8], caller: &AuthenticatedApp) -> Result<(Arc<str>, String), ApiError> {
    let req: RotateRequest = super::json_body(bytes)?;
    let app_id = resolve_app(caller, req.app_id.as_deref(), req.workspace_id.as_deref())?;
    let token = req.delivery_token.unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::new(
            ResultCode::NeedDeliveryToken,
            "deliveryToken is required",
        ));
    }
    Ok((app_id, token))
}

/// `POST /v1/devices/token-update`: gives the device a new token and
/// answers it once durable. Pushes, registry changes and queries with the
/// old token answer 3054 from then on; the device is sent a TokenUpdate
/// frame if online, and a Hello with the old token reaches it (and is told
/// the new one) until it presents the new token or
/// `delivery.token_redirect_secs` pass.
pub(super) async fn rotate(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    const OP: &str = "token_update";
    let started = Instant::now();
    let result = async {
        let (caller, bytes) = admit(&state, request).await?;
        let (app_id, token) = parse_rotation(&bytes, &caller)?;
        let shard = owner_shard(token.as_bytes(), state.shards.len());
        let rotation = ask(&state, shard, |reply| Command::RotateToken {
            app_id,
            token: token.into(),
            reply,
        })
        .await?
        .map_err(super::storage_error)?;
        match rotation {
            Rotation::Rotated {
                token,
                online,
                redirect_until_ms,
            } => Ok((token, online, redirect_until_ms)),
            Rotation::UnknownToken => Err(ApiError::new(
                ResultCode::DeliveryTokenInvalid,
                "no device of this app holds this deliveryToken (never issued, deleted, or already rotated)",
            )),
        }
    }
    .await;
    match result {
        Ok((token, online, redirect_until_ms)) => {
            record(OP, "OK", started);
            super::envelope(
                200,
                "OK",
                "",
                json!({
                    "Success": true, "ResultMsg": "",
                    "Data": {
                        "deliveryToken": token,
                        "online": online,
                        "redirectUntil": redirect_until_ms,
                    },
                }),
            )
        }
        Err(e) => error_response(OP, started, e),
    }
}

/// `GET /v1/devices?appId=…&workspaceId=…&userId=…` (or `&token=…`).
pub(super) async fn query(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "device_query";
    let started = Instant::now();
    let result = async {
        let (caller, _) = admit(&state, request).await?;
        let app_id = resolve_app(
            &caller,
            query.get("appId").map(String::as_str),
            query.get("workspaceId").map(String::as_str),
        )?;
        let by_user = query.get("userId").filter(|u| !u.is_empty());
        let by_token = query.get("token").filter(|t| !t.is_empty());
        let reports: Vec<DeviceReport> = match (by_user, by_token) {
            (Some(user), None) => {
                let lookup = DeviceLookup::User(user.as_str().into());
                ask_all(&state, |reply| Command::QueryDevices {
                    app_id: app_id.clone(),
                    lookup: lookup.clone(),
                    reply,
                })
                .await?
                .into_iter()
                .flatten()
                .collect()
            }
            (None, Some(token)) => {
                let shard = owner_shard(token.as_bytes(), state.shards.len());
                ask(&state, shard, |reply| Command::QueryDevices {
                    app_id,
                    lookup: DeviceLookup::Token(token.as_str().into()),
                    reply,
                })
                .await?
            }
            _ => {
                return Err(ApiError::new(
                    ResultCode::TokenOrUserIdNull,
                    "give exactly one of userId and token",
                ))
            }
        };
        Ok(reports)
    }
    .await;
    match result {
        Ok(reports) => {
            record(OP, "OK", started);
            let devices: Vec<serde_json::Value> = reports.iter().map(device_json).collect();
            super::envelope(
                200,
                "OK",
                "",
                json!({"Success": true, "ResultMsg": "", "Data": {"devices": devices}}),
            )
        }
        Err(e) => error_response(OP, started, e),
    }
}

fn device_json(d: &DeviceReport) -> serde_json::Value {
    json!({
        "deliveryToken": d.token,
        "platform": d.platform,
        "online": d.online,
        "lastSeen": d.last_seen_ms,
        "registeredAt": d.registered_at_ms,
        "userId": d.user_id,
        "groups": d.groups,
        "thirdChannel": d.vendor_token.as_ref().map(|(c, _)| *c),
        "vendorToken": d.vendor_token.as_ref().map(|(_, t)| t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{App, Config};

    fn caller() -> AuthenticatedApp {
        let mut config = Config::default();
        config.apps.push(App {
            allow_unsigned: true,
            ..App::new("demo", "ws")
        });
        let registry = super::super::auth::AppRegistry::new(&config.apps, 16).unwrap();
        AuthenticatedApp::unsigned(Arc::new(registry))
    }

    /// The refusal's code and reason, or "OK".
    fn answer(operation: Operation, fields: serde_json::Value) -> (i32, String) {
        let mut body = json!({"appId": "demo", "workspaceId": "ws", "deliveryToken": "t"});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        match parse_change(body.to_string().as_bytes(), &caller(), operation) {
            Ok(_) => (100, "OK".into()),
            Err(e) => (e.code.code(), e.reason),
        }
    }

    #[test]
    fn each_registry_refusal_says_its_own_reason() {
        let vendor = |channel: serde_json::Value, token: &str| {
            answer(
                Operation::VendorToken,
                json!({"thirdChannel": channel, "vendorToken": token}),
            )
        };
        assert_eq!(vendor(json!(6), "fcm").0, 100);
        let (code, reason) = vendor(json!(3), "fcm");
        assert_eq!(code, 3028);
        assert!(
            reason.starts_with("thirdChannel 3 is no vendor channel"),
            "{reason}"
        );
        let (code, reason) = vendor(json!(6), &"v".repeat(513));
        assert_eq!(
            (code, reason.as_str()),
            (3028, "vendorToken is 513 bytes; at most 512")
        );
        assert_eq!(vendor(json!(3), "").0, 3001, "the shard's order: the token first");
        let (code, reason) = answer(Operation::VendorToken, json!({"vendorToken": "x"}));
        assert_eq!(code, 3028);
        assert!(reason.starts_with("thirdChannel is required"), "{reason}");
        let (code, reason) = answer(Operation::JoinGroup, json!({"groupName": "g".repeat(65)}));
        assert_eq!(
            (code, reason.as_str()),
            (3028, "groupName is 65 bytes; at most 64")
        );
        assert_eq!(
            answer(Operation::JoinGroup, json!({"groupName": "g".repeat(64)})).0,
            100
        );
        for (operation, fields) in [
            (Operation::Bind, json!({"userId": "u"})),
            (Operation::JoinGroup, json!({"groupName": "g"})),
            (
                Operation::VendorToken,
                json!({"thirdChannel": 6, "vendorToken": "x"}),
            ),
        ] {
            assert_eq!(answer(operation, fields).0, 100);
            assert!(!refusal(operation, 3028)
                .unwrap()
                .reason
                .contains("group name is 1 to 64"));
        }
        // What only the shard knows: the device's groups.
        let full = refusal(Operation::JoinGroup, 3028).unwrap();
        assert_eq!(full.code, ResultCode::InvalidParam);
        assert!(
            full.reason.starts_with("the device is in 100 groups"),
            "{}",
            full.reason
        );
        assert!(refusal(Operation::Bind, 100).is_none());
        assert_eq!(
            refusal(Operation::LeaveGroup, 3054).unwrap().code,
            ResultCode::DeliveryTokenInvalid
        );
    }
}
