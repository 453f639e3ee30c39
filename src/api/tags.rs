//! Tag management over HTTP: `POST /v1/tags` (create), `GET /v1/tags`
//! (list), and `GET`, `PUT`, `PATCH`, `DELETE /v1/tags/{tagName}` (read
//! with a page of userIds, replace the userIds and/or rename, add and remove
//! userIds, delete), each scoped to the app named by appId and workspaceId,
//! so one app never sees another's tags. Decoding a request is pure
//! (`parse_request`); the rules and the disk are `crate::tags`. A tag's
//! body may be tens of MB (500,000 userIds), so decoding and the change run
//! on a blocking thread, never on the API's one thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::AuthenticatedApp;
use super::fields::{self, string_field, Field, Page};
use super::result_code::{ApiError, ResultCode};
use super::{admit, admit_up_to, resolve_app, respond, ApiState, MAX_BODY_BYTES};
use crate::config::App;
use crate::message::unix_ms;
use crate::tags::{Tag, TagError, TagStore, UsersChanged};

/// `GET /v1/tags` pages: `pageSize` defaults to this …
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// … and may be at most this.
pub const MAX_PAGE_SIZE: usize = 500;
/// `GET /v1/tags/{tagName}` pages of userIds: `pageSize` defaults to this …
pub const DEFAULT_USERS_PAGE_SIZE: usize = 1000;
/// … and may be at most this.
pub const MAX_USERS_PAGE_SIZE: usize = 10_000;
/// A userId in a JSON list: 60 characters of up to 4 bytes would be 240,
/// but ids are mostly ASCII; 64 bytes each (the id, quotes, a comma and
/// room for escapes) bounds a body of `maxTagUsers` typical ids.
const BODY_BYTES_PER_USER: usize = 64;

/// The largest tag request body the API reads: the largest `maxTagUsers` of
/// any app, at `BODY_BYTES_PER_USER`, plus the other fields.
pub fn body_limit(apps: &[App]) -> usize {
    let users = apps.iter().map(|a| a.max_tag_users).max().unwrap_or(0);
    users.saturating_mul(BODY_BYTES_PER_USER) + MAX_BODY_BYTES
}

/// A create, replace or add/remove request.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TagRequest {
    app_id: Option<Field>,
    workspace_id: Option<Field>,
    tag_name: Option<Field>,
    new_tag_name: Option<Field>,
    user_ids: Option<UserIds>,
    add_user_ids: Option<UserIds>,
    remove_user_ids: Option<UserIds>,
}

/// userIds as a JSON list of strings (or integers), or as one string of
/// ids separated by commas or newlines (the reference console's text box
/// and file import; blanks around ids and empty entries are dropped).
/// Decoded straight into strings: a 500,000-id list builds no JSON tree.
/// A value of another type is not a decoding error (which would blame the
/// whole body): it decodes to `Err` with what was found (` is an object`,
/// `[3] is null`), for `user_ids` to name the field.
#[derive(Debug, PartialEq)]
struct UserIds(Result<Vec<String>, String>);

/// What a JSON value of the wrong type is, for a message.
fn found(kind: &str) -> String {
    format!(" is {kind}")
}

/// Reads the rest of a list or object whose value is refused anyway.
fn drain_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map
        .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
        .is_some()
    {}
    Ok(())
}

impl<'de> Deserialize<'de> for UserIds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// One list entry: a userId, or what was found instead.
        struct Id(Result<String, String>);
        impl<'de> Deserialize<'de> for Id {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct IdVisitor;
                impl<'de> serde::de::Visitor<'de> for IdVisitor {
                    type Value = Id;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a userId (a string)")
                    }
                    fn visit_str<E>(self, v: &str) -> Result<Id, E> {
                        Ok(Id(Ok(v.to_owned())))
                    }
                    fn visit_string<E>(self, v: String) -> Result<Id, E> {
                        Ok(Id(Ok(v)))
                    }
                    fn visit_i64<E>(self, v: i64) -> Result<Id, E> {
                        Ok(Id(Ok(v.to_string())))
                    }
                    fn visit_u64<E>(self, v: u64) -> Result<Id, E> {
                        Ok(Id(Ok(v.to_string())))
                    }
                    fn visit_f64<E>(self, v: f64) -> Result<Id, E> {
                        Ok(Id(Err(found(&format!("the number {v}")))))
                    }
                    fn visit_bool<E>(self, v: bool) -> Result<Id, E> {
                        Ok(Id(Err(found(&format!("{v}")))))
                    }
                    fn visit_unit<E>(self) -> Result<Id, E> {
                        Ok(Id(Err(found("null"))))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Id, A::Error> {
                        drain_seq(seq)?;
                        Ok(Id(Err(found("a list"))))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Id, A::Error> {
                        drain_map(map)?;
                        Ok(Id(Err(found("an object"))))
                    }
                }
                deserializer.deserialize_any(IdVisitor)
            }
        }
        struct IdsVisitor;
        impl<'de> serde::de::Visitor<'de> for IdsVisitor {
            type Value = UserIds;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of userIds, or a string of userIds separated by commas or newlines")
            }
            fn visit_str<E>(self, v: &str) -> Result<UserIds, E> {
                Ok(UserIds(Ok(v
                    .split([',', '\n'])
                    .map(str::trim)
                    .filter(|id| !id.is_empty())
                    .map(str::to_owned)
                    .collect())))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UserIds, A::Error> {
                // The body limit bounds the count; the hint is not trusted.
                let mut ids = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(Id(id)) = seq.next_element()? {
                    match id {
                        Ok(id) => ids.push(id),
                        Err(what) => {
                            drain_seq(seq)?;
                            return Ok(UserIds(Err(format!("[{}]{what}", ids.len()))));
                        }
                    }
                }
                Ok(UserIds(Ok(ids)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<UserIds, E> {
                Ok(UserIds(Err(found(&format!("the number {v}")))))
            }
            fn visit_u64<E>(self, v: u64) -> Result<UserIds, E> {
                Ok(UserIds(Err(found(&format!("the number {v}")))))
            }
            fn visit_f64<E>(self, v: f64) -> Result<UserIds, E> {
                Ok(UserIds(Err(found(&format!("the number {v}")))))
            }
            fn visit_bool<E>(self, v: bool) -> Result<UserIds, E> {
                Ok(UserIds(Err(found(&format!("{v}")))))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<UserIds, A::Error> {
                drain_map(map)?;
                Ok(UserIds(Err(found("an object"))))
            }
        }
        deserializer.deserialize_any(IdsVisitor)
    }
}

/// A userIds field's ids (`None` when absent or null), or 3028 naming the
/// field when it has the wrong type.
fn user_ids(ids: Option<UserIds>, field: &str) -> Result<Option<Vec<String>>, ApiError> {
    match ids {
        None => Ok(None),
        Some(UserIds(Ok(ids))) => Ok(Some(ids)),
        Some(UserIds(Err(what))) => Err(ApiError::new(
            ResultCode::InvalidParam,
            format!(
                "{field}{what}: give a list of userIds (strings), or one string of them separated by commas or newlines"
            ),
        )),
    }
}

/// A decoded tag request: the app, the tag it names and what to do.
#[derive(Debug, PartialEq)]
pub struct TagChange {
    pub app: Arc<str>,
    pub name: String,
    pub new_name: Option<String>,
    pub user_ids: Option<Vec<String>>,
    pub add: Vec<String>,
    pub remove: Vec<String>,
}

/// Which endpoint a body came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagOp {
    Create,
    Replace,
    ChangeUsers,
}

/// Decodes a create (`path_name` None), replace or add/remove request (the
/// name in the path). Checks, in order: the body (3031, 3028), appId and
/// workspaceId (3003, 8014, 3007), the tag name in the body (a replace or
/// add/remove may repeat the path's, not change it: renaming is
/// `newTagName`), then what the operation needs: create `userIds` (3021
/// when absent or empty); replace `userIds` (3021 when empty) and/or
/// `newTagName` (3028 when neither); add/remove `addUserIds` and/or
/// `removeUserIds` (3028 when neither). The userIds and names themselves
/// are checked by the store. Public for the fuzz target.
pub fn parse_request(
    bytes: &[u8],
    caller: &AuthenticatedApp,
    op: TagOp,
    path_name: Option<&str>,
) -> Result<TagChange, ApiError> {
    let req: TagRequest = fields::decode(bytes)?;
    let app_id = string_field(&req.app_id, "appId")?.unwrap_or_default();
    let workspace_id = string_field(&req.workspace_id, "workspaceId")?.unwrap_or_default();
    let app = fields::app(caller, &app_id, &workspace_id)?;
    let body_name = string_field(&req.tag_name, "tagName")?;
    let name = match (path_name, body_name) {
        (None, name) => name.unwrap_or_default(),
        (Some(path), Some(body)) if !body.is_empty() && body != path => {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                format!(
                    "tagName {body:?} differs from the path's {path:?}; to rename a tag, give newTagName"
                ),
            ))
        }
        (Some(path), _) => path.to_owned(),
    };
    let new_name = string_field(&req.new_tag_name, "newTagName")?.filter(|n| !n.is_empty() && *n != name);
    let no_users = || {
        ApiError::new(
            ResultCode::TokenOrUserIdNull,
            "userIds is required: a list of userIds, or a string of them separated by commas or newlines",
        )
    };
    let change = TagChange {
        app,
        name,
        new_name,
        user_ids: user_ids(req.user_ids, "userIds")?,
        add: user_ids(req.add_user_ids, "addUserIds")?.unwrap_or_default(),
        remove: user_ids(req.remove_user_ids, "removeUserIds")?.unwrap_or_default(),
    };
    match op {
        TagOp::Create => {
            if change.user_ids.as_ref().is_none_or(Vec::is_empty) {
                return Err(no_users());
            }
        }
        TagOp::Replace => {
            if change.user_ids.as_ref().is_some_and(Vec::is_empty) {
                return Err(no_users());
            }
            if change.user_ids.is_none() && change.new_name.is_none() {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    "give userIds (the tag's new users), newTagName (its new name), or both",
                ));
            }
        }
        TagOp::ChangeUsers => {
            if change.add.is_empty() && change.remove.is_empty() {
                return Err(ApiError::new(
                    ResultCode::InvalidParam,
                    "give addUserIds, removeUserIds, or both",
                ));
            }
        }
    }
    Ok(change)
}

/// Each store refusal's result code.
fn api_error(e: TagError) -> ApiError {
    let code = match &e {
        TagError::NameInvalid(_)
        | TagError::UserIdInvalid { .. }
        | TagError::AddedAndRemoved(_)
        | TagError::TooManyUsers { .. } => ResultCode::InvalidParam,
        TagError::UserIdEmpty { .. } => ResultCode::NeedUserId,
        TagError::AlreadyExists(_) => ResultCode::TagAlreadyExist,
        TagError::NotFound(_) => ResultCode::TagNotExist,
        TagError::TooMany { .. } => ResultCode::TagNumTooMuch,
        TagError::UnknownApp => ResultCode::AppIdWrong,
        TagError::Io { .. } if e.is_disk_full() => ResultCode::StorageFull,
        TagError::Io { .. } | TagError::Unreadable(_) => ResultCode::SystemError,
    };
    if matches!(e, TagError::Io { .. } | TagError::Unreadable(_)) {
        tracing::error!(error = %e, "a tag change or read failed");
    }
    ApiError::new(code, e.to_string())
}

/// A tag as the API shows it.
fn tag_json(t: &Tag) -> Value {
    json!({
        "tagId": t.id.to_string(),
        "tagName": t.name,
        "userCount": t.user_count,
        "createdAt": t.created_at_ms,
        "updatedAt": t.updated_at_ms,
    })
}

fn changed_json(t: &Tag, changed: UsersChanged) -> Value {
    let mut data = tag_json(t);
    data["added"] = changed.added.into();
    data["removed"] = changed.removed.into();
    data["duplicates"] = changed.duplicates.into();
    data
}

/// Runs `work` (decoding and a store change or file read) on a blocking
/// thread: a 30 MB body or a 10 MB tag file must not stall the API thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(ResultCode::SystemError, format!("the tag operation failed: {e}")))?
}

/// The app named by the query's appId and workspaceId.
fn query_app(caller: &AuthenticatedApp, query: &HashMap<String, String>) -> Result<Arc<str>, ApiError> {
    resolve_app(
        caller,
        query.get("appId").map(String::as_str),
        query.get("workspaceId").map(String::as_str),
    )
}

/// The `{name}` of the path; one that does not decode is no tag's.
fn path_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(name)| name)
        .map_err(|e| ApiError::new(ResultCode::InvalidParam, format!("the tag name in the path: {e}")))
}

/// Reads and authenticates a body of up to the tag limit, then decodes it
/// and applies `apply` to the store, off the API thread.
async fn change(
    state: &Arc<ApiState>,
    request: Request,
    op: TagOp,
    path: Option<String>,
    apply: impl FnOnce(&TagStore, TagChange) -> Result<(Arc<Tag>, UsersChanged), TagError> + Send + 'static,
) -> Result<Value, ApiError> {
    // From the apps in force: a reload may add one with a larger maxTagUsers.
    let limit = body_limit(&state.config().apps);
    let (caller, bytes) = admit_up_to(state, request, limit).await?;
    let store = state.tags.clone();
    blocking(move || {
        let change = parse_request(&bytes, &caller, op, path.as_deref())?;
        drop(bytes);
        let (tag, changed) = apply(&store, change).map_err(api_error)?;
        Ok(changed_json(&tag, changed))
    })
    .await
}

/// `POST /v1/tags`: `{appId, workspaceId, tagName, userIds}`.
pub(super) async fn create(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    const OP: &str = "tag_create";
    let started = Instant::now();
    let result = change(&state, request, TagOp::Create, None, |store, c| {
        store.create(&c.app, &c.name, c.user_ids.unwrap_or_default(), unix_ms())
    })
    .await;
    respond(OP, started, result)
}

/// `PUT /v1/tags/{tagName}`: `{appId, workspaceId, userIds?, newTagName?}`
/// replaces every userId and/or renames; keeps the id and `createdAt`.
pub(super) async fn replace(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    const OP: &str = "tag_replace";
    let started = Instant::now();
    let result = async {
        let name = path_name(path)?;
        change(&state, request, TagOp::Replace, Some(name), |store, c| {
            store.replace(&c.app, &c.name, c.new_name.as_deref(), c.user_ids, unix_ms())
        })
        .await
    }
    .await;
    respond(OP, started, result)
}

/// `PATCH /v1/tags/{tagName}`: `{appId, workspaceId, addUserIds?,
/// removeUserIds?}`.
pub(super) async fn change_users(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    const OP: &str = "tag_change_users";
    let started = Instant::now();
    let result = async {
        let name = path_name(path)?;
        change(&state, request, TagOp::ChangeUsers, Some(name), |store, c| {
            store.change_users(&c.app, &c.name, c.add, c.remove, unix_ms())
        })
        .await
    }
    .await;
    respond(OP, started, result)
}

/// `DELETE /v1/tags/{tagName}?appId=…&workspaceId=…`: answers with the
/// deleted tag. Pushes already made to it still reach its users.
pub(super) async fn delete(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "tag_delete";
    let started = Instant::now();
    let result = async {
        let name = path_name(path)?;
        let (caller, _) = admit(&state, request).await?;
        let app = query_app(&caller, &query)?;
        let store = state.tags.clone();
        blocking(move || store.delete(&app, &name).map_err(api_error)).await
    }
    .await;
    respond(OP, started, result.map(|tag| tag_json(&tag)))
}

/// `GET /v1/tags/{tagName}?appId=…&workspaceId=…[&pageNumber=1][&pageSize=1000]`:
/// the tag and one page of its userIds, in byte order.
pub(super) async fn read(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "tag_read";
    let started = Instant::now();
    let result = async {
        let name = path_name(path)?;
        let (caller, _) = admit(&state, request).await?;
        let app = query_app(&caller, &query)?;
        let page = Page::of_query(&query, DEFAULT_USERS_PAGE_SIZE, MAX_USERS_PAGE_SIZE)?;
        let store = state.tags.clone();
        blocking(move || {
            let (tag, ids) = store.user_ids(&app, &name).map_err(api_error)?;
            let mut data = tag_json(&tag);
            data["pageNumber"] = page.number.into();
            data["pageSize"] = page.size.into();
            data["userIds"] = json!(page.of(&ids).collect::<Vec<_>>());
            Ok(data)
        })
        .await
    }
    .await;
    respond(OP, started, result)
}

/// `GET /v1/tags?appId=…&workspaceId=…[&pageNumber=1][&pageSize=100]`:
/// newest first.
pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "tag_list";
    let started = Instant::now();
    let result = async {
        let (caller, _) = admit(&state, request).await?;
        let app = query_app(&caller, &query)?;
        let page = Page::of_query(&query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        Ok::<_, ApiError>(page.listing(&state.tags.list(&app), "tags", |t| tag_json(t)))
    }
    .await;
    respond(OP, started, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn caller() -> AuthenticatedApp {
        let mut config = Config::default();
        config.apps.push(App {
            allow_unsigned: true,
            ..App::new("other", "ws")
        });
        let registry = crate::api::auth::AppRegistry::new(&config.apps, 16).unwrap();
        AuthenticatedApp::unsigned(Arc::new(registry))
    }

    fn parse(body: Value, op: TagOp, path: Option<&str>) -> Result<TagChange, i32> {
        parse_request(body.to_string().as_bytes(), &caller(), op, path).map_err(|e| e.code.code())
    }

    #[test]
    fn user_ids_come_as_a_list_or_as_text() {
        let base = json!({"appId": "other", "workspaceId": "ws", "tagName": "vip"});
        let with = |ids: Value| {
            let mut b = base.clone();
            b["userIds"] = ids;
            parse(b, TagOp::Create, None).map(|c| c.user_ids.unwrap())
        };
        assert_eq!(
            with(json!(["a", 7, "b"])),
            Ok(vec!["a".into(), "7".into(), "b".into()])
        );
        assert_eq!(
            with(json!("a, b\r\nc\n\n")),
            Ok(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(
            with(json!(["a", ""])).unwrap()[1],
            "",
            "the store refuses it (3012)"
        );
        assert_eq!(with(json!([])), Err(3021));
        assert_eq!(with(json!("")), Err(3021));
        assert_eq!(with(json!(null)), Err(3021));
        assert_eq!(with(json!([{"a": 1}])), Err(3028));
        assert_eq!(with(json!(5)), Err(3028));
    }

    #[test]
    fn a_wrongly_typed_user_id_list_is_named_not_the_body() {
        let reason = |field: &str, ids: Value, op: TagOp| {
            let mut body = json!({"appId": "other", "workspaceId": "ws", "tagName": "vip"});
            body[field] = ids;
            let e = parse_request(body.to_string().as_bytes(), &caller(), op, None).unwrap_err();
            assert_eq!(e.code, ResultCode::InvalidParam, "{}", e.reason);
            e.reason
        };
        let cases = [
            (
                "userIds",
                json!({"k": [1]}),
                TagOp::Create,
                "userIds is an object: give a list of userIds",
            ),
            ("userIds", json!(true), TagOp::Create, "userIds is true: "),
            (
                "userIds",
                json!(1.5),
                TagOp::Create,
                "userIds is the number 1.5: ",
            ),
            (
                "userIds",
                json!(["a", {"b": 1}, [2]]),
                TagOp::Create,
                "userIds[1] is an object: ",
            ),
            (
                "addUserIds",
                json!(["a", null]),
                TagOp::ChangeUsers,
                "addUserIds[1] is null: ",
            ),
            (
                "removeUserIds",
                json!({"k": "v"}),
                TagOp::ChangeUsers,
                "removeUserIds is an object: ",
            ),
            (
                "removeUserIds",
                json!([["x"]]),
                TagOp::ChangeUsers,
                "removeUserIds[0] is a list: ",
            ),
        ];
        for (field, ids, op, want) in cases {
            let got = reason(field, ids.clone(), op);
            assert!(got.starts_with(want), "{field} = {ids}: {got}");
            assert!(!got.contains("body"), "{got}");
        }
    }

    #[test]
    fn request_errors_have_their_codes() {
        let base = json!({"appId": "other", "workspaceId": "ws", "tagName": "vip", "userIds": ["a"]});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(
            parse(with("appId", json!(null)), TagOp::Create, None).unwrap_err(),
            3003
        );
        assert_eq!(
            parse(with("workspaceId", json!("x")), TagOp::Create, None).unwrap_err(),
            3007
        );
        assert_eq!(
            parse(with("appId", json!("nope")), TagOp::Create, None).unwrap_err(),
            8014
        );
        assert_eq!(
            parse(with("tagName", json!([1])), TagOp::Create, None).unwrap_err(),
            3028
        );
        assert_eq!(
            parse(base.clone(), TagOp::Replace, Some("gold")).unwrap_err(),
            3028,
            "no renames by tagName"
        );
        let renamed = parse(with("newTagName", json!("gold")), TagOp::Replace, Some("vip")).unwrap();
        assert_eq!(
            (renamed.name.as_str(), renamed.new_name.as_deref()),
            ("vip", Some("gold"))
        );
        let only_name = json!({"appId": "other", "workspaceId": "ws", "newTagName": "gold"});
        assert!(parse(only_name.clone(), TagOp::Replace, Some("vip"))
            .unwrap()
            .user_ids
            .is_none());
        let nothing = json!({"appId": "other", "workspaceId": "ws"});
        assert_eq!(
            parse(nothing.clone(), TagOp::Replace, Some("vip")).unwrap_err(),
            3028
        );
        assert_eq!(
            parse(nothing.clone(), TagOp::ChangeUsers, Some("vip")).unwrap_err(),
            3028
        );
        let add = json!({"appId": "other", "workspaceId": "ws", "addUserIds": "x,y"});
        assert_eq!(
            parse(add, TagOp::ChangeUsers, Some("vip")).unwrap().add,
            ["x", "y"]
        );
        let caller = caller();
        assert_eq!(
            parse_request(&[0xff], &caller, TagOp::Create, None)
                .unwrap_err()
                .code
                .code(),
            3031
        );
        assert_eq!(
            parse_request(b"[", &caller, TagOp::Create, None)
                .unwrap_err()
                .code
                .code(),
            3028
        );
    }

    #[test]
    fn store_errors_map_to_their_codes() {
        let cases = [
            (TagError::NameInvalid(String::new()), 3028),
            (
                TagError::UserIdEmpty {
                    field: "userIds",
                    index: 0,
                },
                3012,
            ),
            (
                TagError::UserIdInvalid {
                    field: "userIds",
                    index: 0,
                    reason: String::new(),
                },
                3028,
            ),
            (TagError::TooManyUsers { count: 2, limit: 1 }, 3028),
            (TagError::AddedAndRemoved(String::new()), 3028),
            (TagError::AlreadyExists(String::new()), 3101),
            (TagError::NotFound(String::new()), 3102),
            (TagError::TooMany { limit: 1 }, 3103),
            (
                TagError::Io {
                    path: "x".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                },
                9002,
            ),
            (TagError::Unreadable(String::new()), 9000),
        ];
        for (error, code) in cases {
            assert_eq!(api_error(error).code.code(), code);
        }
    }

    #[test]
    fn the_body_limit_follows_the_largest_app() {
        let small = App {
            max_tag_users: 10,
            ..App::new("a", "w")
        };
        let big = App {
            max_tag_users: 500_000,
            ..App::new("b", "w")
        };
        assert_eq!(body_limit(std::slice::from_ref(&small)), 640 + MAX_BODY_BYTES);
        assert_eq!(body_limit(&[small, big]), 32_000_000 + MAX_BODY_BYTES);
    }
}
