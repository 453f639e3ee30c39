//! Recall through the API: `POST /v1/push/recall` takes back one message by
//! msgKey and target (a device token, or with `deliveryType` 3 a userId),
//! `POST /v1/push/recall-task` every message of a multiple, broadcast,
//! group or tag push by its task id. A token's message is recalled by the
//! shard that owns the token; a user's or a task's messages by every shard,
//! since shared messages and a task's tokens live on all of them. The
//! answer says per message what happened; a message older than
//! `delivery.recall_window_secs` refuses the whole request with 3028.
//! Request parsing is pure; the handlers only route and gather.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::auth::AuthenticatedApp;
use super::fields::{self, int_field, string_field, Field};
use super::push::{MAX_MSG_KEY_CHARS, MAX_TOKEN_CHARS};
use super::result_code::{ApiError, ResultCode};
use super::{admit, ask, ask_all, envelope, error_response, record, storage_error, ApiState};
use crate::message::{
    owner_shard, unix_ms, Audience, Command, RecallAnswer, RecallOutcome, RecallResult, RecallTarget,
    RecalledFor,
};

/// Longest userId (as the registry allows).
const MAX_USER_ID_CHARS: usize = 60;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    app_id: Option<Field>,
    workspace_id: Option<Field>,
    msg_key: Option<Field>,
    target: Option<Field>,
    delivery_type: Option<Field>,
    task_id: Option<Field>,
}

/// A validated recall.
#[derive(Debug, PartialEq, Eq)]
pub struct RecallRequest {
    pub app_id: Arc<str>,
    pub target: RecallTarget,
}

/// The app, as every endpoint checks it: 3003, 8014, 3007.
fn app(body: &Body, caller: &AuthenticatedApp) -> Result<Arc<str>, ApiError> {
    let app_id = string_field(&body.app_id, "appId")?.unwrap_or_default();
    let workspace_id = string_field(&body.workspace_id, "workspaceId")?.unwrap_or_default();
    fields::app(caller, &app_id, &workspace_id)
}

/// Validates `POST /v1/push/recall`. Checks in order: the body (3031,
/// 3028), appId/workspaceId (3003, 8014, 3007), msgKey (3028),
/// deliveryType (3009), target (3021, then 3054 for a token or 3028 for a
/// userId that is too long).
pub fn parse_message(bytes: &[u8], caller: &AuthenticatedApp) -> Result<RecallRequest, ApiError> {
    let body: Body = fields::decode(bytes)?;
    let app_id = app(&body, caller)?;
    let msg_key = string_field(&body.msg_key, "msgKey")?.unwrap_or_default();
    if msg_key.is_empty() || msg_key.chars().count() > MAX_MSG_KEY_CHARS {
        return Err(ApiError::new(
            ResultCode::InvalidParam,
            format!("msgKey is required, 1 to {MAX_MSG_KEY_CHARS} characters"),
        ));
    }
    let to_user = match int_field(&body.delivery_type, "deliveryType")? {
        None | Some(1 | 2 | 7) => false,
        Some(3) => true,
        Some(_) => {
            return Err(ApiError::new(
                ResultCode::DeliveryTypeNotSupported,
                "deliveryType must be 1, 2 or 7 (target is a device token) or 3 (a userId)",
            ))
        }
    };
    let target = string_field(&body.target, "target")?.unwrap_or_default();
    if target.is_empty() {
        return Err(ApiError::new(
            ResultCode::TokenOrUserIdNull,
            "target (a device token, or a userId with deliveryType 3) is required",
        ));
    }
    let target = if to_user {
        if target.chars().count() > MAX_USER_ID_CHARS {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                format!("a userId is at most {MAX_USER_ID_CHARS} characters"),
            ));
        }
        RecallTarget::User {
            msg_key: msg_key.into(),
            user_id: target.into(),
        }
    } else {
        if target.len() > MAX_TOKEN_CHARS {
            return Err(ApiError::new(
                ResultCode::DeliveryTokenInvalid,
                "no device holds a token that long",
            ));
        }
        RecallTarget::Token {
            msg_key: msg_key.into(),
            token: target.into(),
        }
    };
    Ok(RecallRequest { app_id, target })
}

/// Validates `POST /v1/push/recall-task`: the body (3031, 3028),
/// appId/workspaceId (3003, 8014, 3007), taskId (3028: required, a positive
/// integer or a string holding one).
pub fn parse_task(bytes: &[u8], caller: &AuthenticatedApp) -> Result<RecallRequest, ApiError> {
    let body: Body = fields::decode(bytes)?;
    let app_id = app(&body, caller)?;
    let task_id = int_field(&body.task_id, "taskId")?
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .ok_or_else(|| ApiError::new(ResultCode::InvalidParam, "taskId is required, a positive integer"))?;
    Ok(RecallRequest {
        app_id,
        target: RecallTarget::Task(task_id),
    })
}

/// One recalled message in the answer.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Recalled {
    /// The device token, the userId, the group or tag name, or "" for a
    /// broadcast.
    target: String,
    /// `token`, `user`, `group`, `tag` or `broadcast`.
    audience: &'static str,
    msg_key: String,
    message_id: String,
    result: &'static str,
    /// Devices (of a user, group, tag or broadcast) whose copy was withdrawn
    /// unseen, written a Revoke now, or owed one for their next connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    withdrawn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoke_sent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoke_queued: Option<u32>,
}

/// Merges the shards' outcomes: a shared message answers on every shard and
/// its counts add up; a token's message answers on its own shard only.
fn merge(answers: Vec<Vec<RecallOutcome>>) -> Vec<RecallOutcome> {
    let mut merged: Vec<RecallOutcome> = Vec::new();
    for outcome in answers.into_iter().flatten() {
        match merged.iter_mut().find(|m| m.message_id == outcome.message_id) {
            Some(m) => {
                if outcome.result == RecallResult::Recalled {
                    m.result = RecallResult::Recalled;
                }
                m.withdrawn += outcome.withdrawn;
                m.revoke_sent += outcome.revoke_sent;
                m.revoke_queued += outcome.revoke_queued;
            }
            None => merged.push(outcome),
        }
    }
    merged
}

fn describe(outcome: &RecallOutcome) -> Recalled {
    let base = |target: String, audience| Recalled {
        target,
        audience,
        msg_key: outcome.msg_key.to_string(),
        message_id: outcome.message_id.to_string(),
        result: "",
        withdrawn: None,
        revoke_sent: None,
        revoke_queued: None,
    };
    let not_now = match outcome.result {
        RecallResult::Recalled => None,
        RecallResult::AlreadyRecalled => Some("already_recalled"),
        RecallResult::Expired => Some("expired"),
        RecallResult::Dropped => Some("dropped"),
    };
    let (target, kind) = match &outcome.target {
        RecalledFor::Token(token) => {
            return Recalled {
                result: not_now.unwrap_or(if outcome.withdrawn > 0 {
                    "withdrawn"
                } else if outcome.revoke_sent > 0 {
                    "revoke_sent"
                } else {
                    "revoke_queued"
                }),
                ..base(token.to_string(), "token")
            }
        }
        RecalledFor::Shared(Audience::User(user)) => (user.to_string(), "user"),
        RecalledFor::Shared(Audience::Group(group)) => (group.to_string(), "group"),
        RecalledFor::Shared(Audience::Platform { .. }) => (String::new(), "broadcast"),
        RecalledFor::Shared(Audience::Tag { name, .. }) | RecalledFor::Tag(name) => (name.to_string(), "tag"),
    };
    Recalled {
        result: not_now.unwrap_or("recalled"),
        withdrawn: Some(outcome.withdrawn),
        revoke_sent: Some(outcome.revoke_sent),
        revoke_queued: Some(outcome.revoke_queued),
        ..base(target, kind)
    }
}

/// The window as people say it: "7 days", else seconds.
fn window_text(secs: u64) -> String {
    if secs.is_multiple_of(86_400) {
        format!("{} days", secs / 86_400)
    } else {
        format!("{secs} s")
    }
}

/// Sends the recall to the shards that hold what it names and gathers their
/// outcomes.
async fn run(state: &ApiState, request: RecallRequest) -> Result<Vec<RecallOutcome>, ApiError> {
    if let Some(refusal) = state.health.refusal() {
        return Err(storage_error(refusal));
    }
    let window = state.config().delivery.recall_window_secs;
    let not_before_ms = unix_ms().saturating_sub(window * 1000);
    let RecallRequest { app_id, target } = request;
    let answers = match &target {
        RecallTarget::Token { token, .. } => {
            let shard = owner_shard(token.as_bytes(), state.shards.len());
            vec![
                ask(state, shard, |reply| Command::Recall {
                    app_id,
                    target,
                    not_before_ms,
                    reply,
                })
                .await?,
            ]
        }
        RecallTarget::User { .. } | RecallTarget::Task(_) => {
            ask_all(state, |reply| Command::Recall {
                app_id: app_id.clone(),
                target: target.clone(),
                not_before_ms,
                reply,
            })
            .await?
        }
    };
    let mut done = Vec::with_capacity(answers.len());
    for answer in answers {
        match answer.map_err(storage_error)? {
            RecallAnswer::Done(outcomes) => done.push(outcomes),
            RecallAnswer::TooOld { accepted_at_ms } => {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    format!(
                        "only messages of the last {} can be recalled; this one was accepted at {accepted_at_ms} (Unix ms)",
                        window_text(window)
                    ),
                ))
            }
        }
    }
    Ok(merge(done))
}

fn answer(op: &'static str, started: Instant, data: String, outcomes: &[RecallOutcome]) -> Response {
    record(op, "OK", started);
    let targets: Vec<Recalled> = outcomes.iter().map(describe).collect();
    envelope(
        200,
        "OK",
        "",
        serde_json::json!({"Success": true, "ResultMsg": "", "Data": data, "Targets": targets}),
    )
}

/// `POST /v1/push/recall`.
pub(super) async fn message(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    const OP: &str = "recall";
    let started = Instant::now();
    let request = match admit(&state, request)
        .await
        .and_then(|(caller, bytes)| parse_message(&bytes, &caller))
    {
        Ok(r) => r,
        Err(e) => return error_response(OP, started, e),
    };
    let unknown = match &request.target {
        RecallTarget::Token { msg_key, token } => (token.to_string(), "token", msg_key.to_string()),
        RecallTarget::User { msg_key, user_id } => (user_id.to_string(), "user", msg_key.to_string()),
        RecallTarget::Task(_) => unreachable!("parse_message names a msgKey"),
    };
    match run(&state, request).await {
        Ok(outcomes) if outcomes.is_empty() => {
            // Nothing by that name: never pushed, another app's, or past
            // the status retention. Nothing changed.
            let (target, audience, msg_key) = unknown;
            record(OP, "OK", started);
            let targets = [Recalled {
                target,
                audience,
                msg_key,
                message_id: String::new(),
                result: "unknown",
                withdrawn: None,
                revoke_sent: None,
                revoke_queued: None,
            }];
            envelope(
                200,
                "OK",
                "",
                serde_json::json!({"Success": true, "ResultMsg": "", "Data": "", "Targets": targets}),
            )
        }
        Ok(outcomes) => answer(OP, started, String::new(), &outcomes),
        Err(e) => error_response(OP, started, e),
    }
}

/// `POST /v1/push/recall-task`.
pub(super) async fn task(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    const OP: &str = "recall_task";
    let started = Instant::now();
    let request = match admit(&state, request)
        .await
        .and_then(|(caller, bytes)| parse_task(&bytes, &caller))
    {
        Ok(r) => r,
        Err(e) => return error_response(OP, started, e),
    };
    let RecallTarget::Task(task_id) = request.target else {
        unreachable!("parse_task names a task");
    };
    let window = state.config().delivery.recall_window_secs;
    match run(&state, request).await {
        Ok(outcomes) if outcomes.is_empty() => error_response(
            OP,
            started,
            ApiError::new(
                ResultCode::InvalidParam,
                format!(
                    "no message of task {task_id} in this app in the last {}",
                    window_text(window)
                ),
            ),
        ),
        Ok(outcomes) => answer(OP, started, task_id.to_string(), &outcomes),
        Err(e) => error_response(OP, started, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::auth::AppRegistry;
    use crate::config::Config;
    use serde_json::{json, Value};

    /// An unsigned caller: it may act for `demo` (allowUnsigned) only.
    fn caller() -> AuthenticatedApp {
        let registry = AppRegistry::new(&Config::default().apps, 16).unwrap();
        AuthenticatedApp::unsigned(Arc::new(registry))
    }

    fn code(result: Result<RecallRequest, ApiError>) -> i32 {
        result.unwrap_err().code.code()
    }

    fn base() -> Value {
        json!({"appId": "demo", "workspaceId": "default", "msgKey": "k1", "target": "tok"})
    }

    fn with(changes: Value) -> Vec<u8> {
        let mut body = base();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body.to_string().into_bytes()
    }

    #[test]
    fn a_message_is_named_by_msg_key_and_token_or_user() {
        let c = caller();
        let token = parse_message(&with(json!({})), &c).unwrap();
        assert_eq!(
            token.target,
            RecallTarget::Token {
                msg_key: "k1".into(),
                token: "tok".into()
            }
        );
        assert_eq!(&*token.app_id, "demo");
        let user = parse_message(&with(json!({"deliveryType": "3", "target": "alice"})), &c).unwrap();
        assert_eq!(
            user.target,
            RecallTarget::User {
                msg_key: "k1".into(),
                user_id: "alice".into()
            }
        );
        // A numeric msgKey is the same key as its text.
        let numeric = parse_message(&with(json!({"msgKey": 42})), &c).unwrap();
        assert!(matches!(numeric.target, RecallTarget::Token { ref msg_key, .. } if &**msg_key == "42"));
    }

    #[test]
    fn recall_checks_run_in_order_with_their_codes() {
        let c = caller();
        let cases: Vec<(Value, i32)> = vec![
            (json!({"appId": null}), 3003),
            (json!({"appId": "ghost"}), 8014),
            (json!({"workspaceId": "elsewhere"}), 3007),
            (json!({"msgKey": null, "target": null}), 3028),
            (json!({"msgKey": "k".repeat(65)}), 3028),
            (json!({"deliveryType": 9, "target": null}), 3009),
            (json!({"target": null}), 3021),
            (json!({"target": ""}), 3021),
            (json!({"target": "t".repeat(129)}), 3054),
            (json!({"deliveryType": 3, "target": "u".repeat(61)}), 3028),
            (json!({"target": [1]}), 3028),
        ];
        for (change, want) in cases {
            assert_eq!(code(parse_message(&with(change.clone()), &c)), want, "{change}");
        }
        assert_eq!(code(parse_message(&[0xFF], &c)), 3031);
        assert_eq!(code(parse_message(b"[]", &c)), 3028);
    }

    #[test]
    fn a_task_is_named_by_a_positive_task_id() {
        let c = caller();
        let body =
            |task: Value| json!({"appId": "demo", "workspaceId": "default", "taskId": task}).to_string();
        assert_eq!(
            parse_task(body(json!(77)).as_bytes(), &c).unwrap().target,
            RecallTarget::Task(77)
        );
        assert_eq!(
            parse_task(body(json!("78")).as_bytes(), &c).unwrap().target,
            RecallTarget::Task(78)
        );
        for bad in [json!(null), json!(0), json!(-5), json!("x"), json!(1.5)] {
            assert_eq!(code(parse_task(body(bad.clone()).as_bytes(), &c)), 3028, "{bad}");
        }
        let other = json!({"appId": "ghost", "workspaceId": "default", "taskId": 1}).to_string();
        assert_eq!(code(parse_task(other.as_bytes(), &c)), 8014);
    }

    fn outcome(id: u64, target: RecalledFor, result: RecallResult, counts: [u32; 3]) -> RecallOutcome {
        RecallOutcome {
            message_id: id,
            msg_key: format!("k{id}").into(),
            target,
            result,
            withdrawn: counts[0],
            revoke_sent: counts[1],
            revoke_queued: counts[2],
        }
    }

    #[test]
    fn shards_outcomes_merge_per_message_and_read_as_results() {
        let group = RecalledFor::Shared(Audience::Group("news".into()));
        let merged = merge(vec![
            vec![
                outcome(1, group.clone(), RecallResult::AlreadyRecalled, [0, 0, 0]),
                outcome(
                    2,
                    RecalledFor::Token("a".into()),
                    RecallResult::Recalled,
                    [1, 0, 0],
                ),
            ],
            vec![
                outcome(1, group.clone(), RecallResult::Recalled, [2, 3, 4]),
                outcome(
                    3,
                    RecalledFor::Token("b".into()),
                    RecallResult::Recalled,
                    [0, 0, 1],
                ),
            ],
        ]);
        assert_eq!(merged.len(), 3);
        let shared = describe(&merged[0]);
        assert_eq!(
            (shared.result, shared.audience, shared.target.as_str()),
            ("recalled", "group", "news")
        );
        assert_eq!(
            (shared.withdrawn, shared.revoke_sent, shared.revoke_queued),
            (Some(2), Some(3), Some(4))
        );
        assert_eq!(describe(&merged[1]).result, "withdrawn");
        assert_eq!(describe(&merged[2]).result, "revoke_queued");
        let sent = outcome(
            4,
            RecalledFor::Token("c".into()),
            RecallResult::Recalled,
            [0, 1, 0],
        );
        assert_eq!(describe(&sent).result, "revoke_sent");
        let expired = outcome(
            5,
            RecalledFor::Token("c".into()),
            RecallResult::Expired,
            [0, 0, 0],
        );
        assert_eq!(describe(&expired).result, "expired");
        assert_eq!(
            describe(&expired).withdrawn,
            None,
            "counts are for shared messages"
        );
        assert_eq!(window_text(604_800), "7 days");
        assert_eq!(window_text(90), "90 s");
    }
}
