//! Template management over HTTP: `POST /v1/templates` (create),
//! `GET /v1/templates` (list), and `GET`, `PUT`, `DELETE
//! /v1/templates/{name}` (read, replace, delete), each scoped to the app
//! named by appId and workspaceId, so one app never sees another's
//! templates. Decoding the request is pure (`parse_draft`); the rules and
//! the disk are `crate::templates`, whose changes run on a blocking thread
//! because they fsync before answering.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::AuthenticatedApp;
use super::fields::{self, flag_field, json_text_field, small_enum, string_field, Field, Page};
use super::result_code::{ApiError, ResultCode};
use super::{admit, resolve_app, respond, ApiState};
use crate::message::unix_ms;
use crate::templates::{Draft, Template, TemplateError, TemplateStore};

/// `GET /v1/templates` pages: `pageSize` defaults to this …
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// … and may be at most this.
pub const MAX_PAGE_SIZE: usize = 500;

/// A create or replace request. `Field` lets a wrongly typed field get its
/// own code (3028) rather than failing the whole body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TemplateRequest {
    app_id: Option<Field>,
    workspace_id: Option<Field>,
    template_name: Option<Field>,
    template_desc: Option<Field>,
    title: Option<Field>,
    content: Option<Field>,
    uri: Option<Field>,
    silent: Option<Field>,
    push_style: Option<Field>,
    push_action: Option<Field>,
    icon_urls: Option<Field>,
    image_urls: Option<Field>,
}

/// Decodes a create (`path_name` None) or replace (`path_name` the name in
/// the path) request into the app and the draft. The template rules
/// themselves (3037–3042) are checked by the store. A replace may repeat
/// the name in the body but not change it: templates are not renamed.
pub fn parse_draft(
    bytes: &[u8],
    caller: &AuthenticatedApp,
    path_name: Option<&str>,
) -> Result<(Arc<str>, Draft), ApiError> {
    let req: TemplateRequest = fields::decode(bytes)?;
    let app_id = string_field(&req.app_id, "appId")?.unwrap_or_default();
    let workspace_id = string_field(&req.workspace_id, "workspaceId")?.unwrap_or_default();
    let app = fields::app(caller, &app_id, &workspace_id)?;
    let body_name = string_field(&req.template_name, "templateName")?;
    let name = match (path_name, body_name) {
        (None, name) => name.unwrap_or_default(),
        (Some(path), Some(body)) if !body.is_empty() && body != path => {
            return Err(ApiError::new(
                ResultCode::InvalidParam,
                format!(
                    "templateName {body:?} differs from the path's {path:?}; a template cannot be renamed"
                ),
            ))
        }
        (Some(path), _) => path.to_owned(),
    };
    let draft = Draft {
        name,
        desc: string_field(&req.template_desc, "templateDesc")?.unwrap_or_default(),
        title: string_field(&req.title, "title")?.unwrap_or_default(),
        content: string_field(&req.content, "content")?.unwrap_or_default(),
        uri: string_field(&req.uri, "uri")?.unwrap_or_default(),
        silent: flag_field(&req.silent, "silent")?,
        push_style: small_enum(&req.push_style, "pushStyle", &[0, 1, 2])?,
        action: small_enum(&req.push_action, "pushAction", &[0, 1])?,
        icon_urls: json_text_field(req.icon_urls, "iconUrls")?,
        image_urls: json_text_field(req.image_urls, "imageUrls")?,
    };
    Ok((app, draft))
}

/// Each store refusal's result code.
fn api_error(e: TemplateError) -> ApiError {
    let code = match &e {
        TemplateError::NameNull => ResultCode::TemplateNameNull,
        TemplateError::NameInvalid(_) => ResultCode::TemplateNameInvalid,
        TemplateError::DescInvalid(_) => ResultCode::TemplateDescInfoInvalid,
        TemplateError::TitleInvalid(_) => ResultCode::TemplateTitleInvalid,
        TemplateError::ContentInvalid(_) => ResultCode::TemplateContentInvalid,
        TemplateError::UriInvalid(_) => ResultCode::TemplateUriInvalid,
        TemplateError::FieldInvalid(_) => ResultCode::InvalidParam,
        TemplateError::AlreadyExists(_) => ResultCode::TemplateAlreadyExist,
        TemplateError::NotFound(_) => ResultCode::TemplateNotExist,
        TemplateError::TooMany { .. } => ResultCode::TemplateNumTooMuch,
        TemplateError::UnknownApp => ResultCode::AppIdWrong,
        TemplateError::Io { .. } if e.is_disk_full() => ResultCode::StorageFull,
        TemplateError::Io { .. } => ResultCode::SystemError,
    };
    if let TemplateError::Io { .. } = &e {
        tracing::error!(error = %e, "a template change was not saved");
    }
    ApiError::new(code, e.to_string())
}

/// A template as the API shows it.
fn template_json(t: &Template) -> Value {
    let d = &t.draft;
    json!({
        "templateName": d.name,
        "templateDesc": d.desc,
        "title": d.title,
        "content": d.content,
        "uri": d.uri,
        "silent": u8::from(d.silent),
        "pushStyle": d.push_style,
        "pushAction": d.action,
        "iconUrls": d.icon_urls,
        "imageUrls": d.image_urls,
        "placeholders": t.placeholders(),
        "createdAt": t.created_at_ms,
        "updatedAt": t.updated_at_ms,
    })
}

/// Runs a store change on a blocking thread (it fsyncs).
async fn change(
    state: &ApiState,
    apply: impl FnOnce(&TemplateStore) -> Result<Arc<Template>, TemplateError> + Send + 'static,
) -> Result<Arc<Template>, ApiError> {
    let store = state.templates.clone();
    tokio::task::spawn_blocking(move || apply(&store))
        .await
        .map_err(|e| {
            ApiError::new(
                ResultCode::SystemError,
                format!("the template change failed: {e}"),
            )
        })?
        .map_err(api_error)
}

/// The app named by the query's appId and workspaceId.
pub fn query_app(caller: &AuthenticatedApp, query: &HashMap<String, String>) -> Result<Arc<str>, ApiError> {
    resolve_app(
        caller,
        query.get("appId").map(String::as_str),
        query.get("workspaceId").map(String::as_str),
    )
}

/// The `{name}` of the path; one that does not decode is no template's.
fn path_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(name)| name).map_err(|e| {
        ApiError::new(
            ResultCode::TemplateNameInvalid,
            format!("the template name in the path: {e}"),
        )
    })
}

/// `POST /v1/templates`.
pub(super) async fn create(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    const OP: &str = "template_create";
    let started = Instant::now();
    let result = async {
        let (caller, bytes) = admit(&state, request).await?;
        let (app, draft) = parse_draft(&bytes, &caller, None)?;
        change(&state, move |store| store.create(&app, draft, unix_ms())).await
    }
    .await;
    respond(OP, started, result.map(|template| template_json(&template)))
}

/// `PUT /v1/templates/{name}`: replaces every field; keeps `createdAt`.
pub(super) async fn update(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    const OP: &str = "template_update";
    let started = Instant::now();
    let result = async {
        let name = path_name(path)?;
        let (caller, bytes) = admit(&state, request).await?;
        let (app, draft) = parse_draft(&bytes, &caller, Some(&name))?;
        change(&state, move |store| store.update(&app, draft, unix_ms())).await
    }
    .await;
    respond(OP, started, result.map(|template| template_json(&template)))
}

/// `DELETE /v1/templates/{name}?appId=…&workspaceId=…`: answers with the
/// deleted template.
pub(super) async fn delete(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "template_delete";
    let started = Instant::now();
    let result = async {
        let name = path_name(path)?;
        let (caller, _) = admit(&state, request).await?;
        let app = query_app(&caller, &query)?;
        change(&state, move |store| store.delete(&app, &name)).await
    }
    .await;
    respond(OP, started, result.map(|template| template_json(&template)))
}

/// `GET /v1/templates/{name}?appId=…&workspaceId=…`.
pub(super) async fn read(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "template_read";
    let started = Instant::now();
    let result = async {
        let name = path_name(path)?;
        let (caller, _) = admit(&state, request).await?;
        let app = query_app(&caller, &query)?;
        state.templates.get(&app, &name).ok_or_else(|| {
            ApiError::new(
                ResultCode::TemplateNotExist,
                format!("no template named {name:?} in this app"),
            )
        })
    }
    .await;
    respond(OP, started, result.map(|template| template_json(&template)))
}

/// `GET /v1/templates?appId=…&workspaceId=…[&pageNumber=1][&pageSize=100]`:
/// newest first.
pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "template_list";
    let started = Instant::now();
    let result = async {
        let (caller, _) = admit(&state, request).await?;
        let app = query_app(&caller, &query)?;
        let page = Page::of_query(&query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        Ok::<_, ApiError>(page.listing(&state.templates.list(&app), "templates", |t| template_json(t)))
    }
    .await;
    respond(OP, started, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{App, Config};

    /// An unsigned caller; both apps take unsigned requests.
    fn caller() -> AuthenticatedApp {
        let mut config = Config::default();
        config.apps.push(App {
            max_templates: 1,
            allow_unsigned: true,
            ..App::new("other", "ws")
        });
        let registry = crate::api::auth::AppRegistry::new(&config.apps, 16).unwrap();
        AuthenticatedApp::unsigned(Arc::new(registry))
    }

    fn parse(body: Value, path: Option<&str>) -> Result<(Arc<str>, Draft), i32> {
        parse_draft(body.to_string().as_bytes(), &caller(), path).map_err(|e| e.code.code())
    }

    #[test]
    fn a_create_request_becomes_a_draft() {
        let (app, draft) = parse(
            json!({
                "appId": "other", "workspaceId": "ws", "templateName": "prize",
                "templateDesc": "d", "title": "Hi #name#", "content": "c", "uri": "u",
                "silent": "1", "pushStyle": 2, "pushAction": "1",
                "iconUrls": {"default": "https://i"}, "imageUrls": "{}",
            }),
            None,
        )
        .unwrap();
        assert_eq!(&*app, "other");
        assert_eq!(
            draft,
            Draft {
                name: "prize".into(),
                desc: "d".into(),
                title: "Hi #name#".into(),
                content: "c".into(),
                uri: "u".into(),
                silent: true,
                push_style: 2,
                action: 1,
                icon_urls: r#"{"default":"https://i"}"#.into(),
                image_urls: "{}".into(),
            }
        );
    }

    #[test]
    fn request_errors_have_their_codes() {
        let base = json!({"appId": "demo", "workspaceId": "default", "templateName": "t", "title": "a", "content": "b"});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(parse(with("appId", json!(null)), None).unwrap_err(), 3003);
        assert_eq!(parse(with("workspaceId", json!("ws")), None).unwrap_err(), 3007);
        assert_eq!(parse(with("title", json!({"a": 1})), None).unwrap_err(), 3028);
        assert_eq!(parse(with("pushStyle", json!(5)), None).unwrap_err(), 3028);
        assert_eq!(parse(with("silent", json!("yes")), None).unwrap_err(), 3028);
        assert_eq!(
            parse(base.clone(), Some("other")).unwrap_err(),
            3028,
            "no renames"
        );
        assert_eq!(parse(base.clone(), Some("t")).unwrap().1.name, "t");
        assert_eq!(
            parse(with("templateName", json!(null)), Some("p"))
                .unwrap()
                .1
                .name,
            "p"
        );
        let caller = caller();
        assert_eq!(parse_draft(&[0xff], &caller, None).unwrap_err().code.code(), 3031);
        assert_eq!(parse_draft(b"[", &caller, None).unwrap_err().code.code(), 3028);
    }

    #[test]
    fn store_errors_map_to_the_reference_codes() {
        let cases = [
            (TemplateError::NameNull, 3037),
            (TemplateError::NameInvalid(String::new()), 3038),
            (TemplateError::ContentInvalid(String::new()), 3039),
            (TemplateError::TitleInvalid(String::new()), 3040),
            (TemplateError::DescInvalid(String::new()), 3041),
            (TemplateError::UriInvalid(String::new()), 3042),
            (TemplateError::AlreadyExists(String::new()), 3036),
            (TemplateError::NotFound(String::new()), 3022),
            (TemplateError::TooMany { limit: 1 }, 3056),
            (
                TemplateError::Io {
                    path: "x".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                },
                9002,
            ),
            (
                TemplateError::Io {
                    path: "x".into(),
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                },
                9000,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(api_error(error).code.code(), code);
        }
    }
}
