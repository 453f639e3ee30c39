//! Message templates (push-semantics.md §2, template and multiple push): per
//! app, named title, content and uri texts with `#placeholder#`s plus the
//! display fields a pushed message takes from its template; the rules a
//! template must pass (the reference's 3036–3042 and 3056); and their
//! durability. Each app's templates live in one file under
//! `durability.data_dir/templates/`, replaced atomically (temp file, fsync,
//! rename, directory fsync) before a change returns, and loaded at start; a
//! damaged file stops the start with a message naming it. Pushes read a
//! snapshot and never wait for a disk. Changes block on the disk, so the API
//! runs them on a blocking thread. The HTTP face is `api::templates`; the
//! placeholder syntax is `text`.

pub mod text;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{App, Config, FsyncMode};
use crate::framed_file;
use text::{is_name_char, Text};

/// Template name, in characters (the reference's console: 200).
pub const MAX_NAME_CHARS: usize = 200;
/// Description, in characters (the reference's console: 200).
pub const MAX_DESC_CHARS: usize = 200;
/// Title text, in bytes, placeholders included.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Content text, in bytes, placeholders included: a whole delivered message
/// is at most 2048 bytes.
pub const MAX_CONTENT_BYTES: usize = 2048;
/// The uri text, in bytes.
pub const MAX_URI_BYTES: usize = 1024;
/// `iconUrls` and `imageUrls`, each, in bytes.
pub const MAX_URLS_BYTES: usize = 1024;
/// Templates per app when `[[apps]]` gives no `maxTemplates` (the reference
/// has a limit, 3056, but does not say it).
pub const DEFAULT_MAX_TEMPLATES: usize = 100;
/// Largest `maxTemplates`: every change rewrites the app's file, so this
/// bounds that file (about 4 KiB per template at most).
pub const MAX_MAX_TEMPLATES: usize = 10_000;

const FILE_MAGIC: &str = "ringpush-templates";
const FILE_VERSION: u32 = 1;
const SUBDIR: &str = "templates";

/// What a caller gives to create or replace a template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Draft {
    pub name: String,
    pub desc: String,
    pub title: String,
    pub content: String,
    pub uri: String,
    pub silent: bool,
    /// 0 default, 1 big text, 2 picture.
    pub push_style: u32,
    /// 0 web URL, 1 in-app deep link.
    pub action: u32,
    /// JSON text, passed to the device as it is.
    pub icon_urls: String,
    pub image_urls: String,
}

/// A saved template, its texts parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub draft: Draft,
    pub title: Text,
    pub content: Text,
    pub uri: Text,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl Template {
    /// Distinct placeholder names, in order of first appearance in the
    /// title, the content, then the uri.
    pub fn placeholders(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for name in self
            .title
            .placeholders()
            .chain(self.content.placeholders())
            .chain(self.uri.placeholders())
        {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

/// Why a template change was refused. The API maps each to its result code.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("templateName is required")]
    NameNull,
    #[error("templateName {0}")]
    NameInvalid(String),
    #[error("templateDesc {0}")]
    DescInvalid(String),
    #[error("title {0}")]
    TitleInvalid(String),
    #[error("content {0}")]
    ContentInvalid(String),
    #[error("uri {0}")]
    UriInvalid(String),
    /// A display field out of range (pushStyle, pushAction, iconUrls …).
    #[error("{0}")]
    FieldInvalid(String),
    #[error("a template named {0:?} already exists in this app")]
    AlreadyExists(String),
    #[error("no template named {0:?} in this app")]
    NotFound(String),
    #[error("the app holds {limit} templates, its maxTemplates; delete one first")]
    TooMany { limit: usize },
    #[error("no such app")]
    UnknownApp,
    /// The change is not known to be on disk: it may or may not survive a
    /// restart, so the caller should retry it.
    #[error(
        "the change could not be saved to {path}: {source}; it may or may not survive a restart, so retry it"
    )]
    Io { path: PathBuf, source: std::io::Error },
}

impl TemplateError {
    /// Whether the disk was full (the API answers 9002 rather than 9000).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// Checks a draft and parses its texts. The rules, in the order checked:
/// - name (3037 when empty, 3038 otherwise): 1 to 200 characters, each a
///   Unicode letter or digit or `_` (the reference: letters, digits and
///   underscores, no comma), so it also fits a URL path segment;
/// - desc (3041): at most 200 characters, no control characters (the
///   reference's console also refuses spaces and punctuation; a description
///   is never delivered, so we do not);
/// - title (3040): 1 to 1024 bytes, no control characters, valid
///   placeholders;
/// - content (3039): 1 to 2048 bytes, no control characters but newline,
///   carriage return and tab, valid placeholders;
/// - uri (3042): at most 1024 bytes, no whitespace or control characters,
///   valid placeholders;
/// - pushStyle 0–2, pushAction 0–1, iconUrls and imageUrls at most 1024
///   bytes each (3028).
pub fn validate(draft: Draft, now_ms: u64) -> Result<Template, TemplateError> {
    if draft.name.is_empty() {
        return Err(TemplateError::NameNull);
    }
    if draft.name.chars().count() > MAX_NAME_CHARS {
        return Err(TemplateError::NameInvalid(format!(
            "is over {MAX_NAME_CHARS} characters"
        )));
    }
    if let Some(c) = draft.name.chars().find(|&c| !is_name_char(c)) {
        return Err(TemplateError::NameInvalid(format!(
            "holds {c:?}: only letters, digits and _ are allowed"
        )));
    }
    if draft.desc.chars().count() > MAX_DESC_CHARS {
        return Err(TemplateError::DescInvalid(format!(
            "is over {MAX_DESC_CHARS} characters"
        )));
    }
    if draft.desc.chars().any(char::is_control) {
        return Err(TemplateError::DescInvalid("holds a control character".into()));
    }
    let title = text_field(&draft.title, MAX_TITLE_BYTES, true, |c| c.is_control())
        .map_err(TemplateError::TitleInvalid)?;
    let content = text_field(&draft.content, MAX_CONTENT_BYTES, true, |c| {
        c.is_control() && !matches!(c, '\n' | '\r' | '\t')
    })
    .map_err(TemplateError::ContentInvalid)?;
    let uri = text_field(&draft.uri, MAX_URI_BYTES, false, |c| {
        c.is_control() || c.is_whitespace()
    })
    .map_err(TemplateError::UriInvalid)?;
    if draft.push_style > 2 || draft.action > 1 {
        return Err(TemplateError::FieldInvalid(
            "pushStyle must be 0, 1 or 2 and pushAction 0 or 1".into(),
        ));
    }
    for (field, value) in [("iconUrls", &draft.icon_urls), ("imageUrls", &draft.image_urls)] {
        if value.len() > MAX_URLS_BYTES {
            return Err(TemplateError::FieldInvalid(format!(
                "{field} is over {MAX_URLS_BYTES} bytes"
            )));
        }
    }
    Ok(Template {
        draft,
        title,
        content,
        uri,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
    })
}

fn text_field(
    source: &str,
    max_bytes: usize,
    required: bool,
    refused: impl Fn(char) -> bool,
) -> Result<Text, String> {
    if required && source.trim().is_empty() {
        return Err("is required".into());
    }
    if source.len() > max_bytes {
        return Err(format!("is {} bytes; at most {max_bytes}", source.len()));
    }
    if let Some(c) = source.chars().find(|&c| refused(c)) {
        return Err(format!("holds {c:?}, which is not allowed here"));
    }
    Text::parse(source).map_err(|e| e.to_string())
}

type Templates = HashMap<String, Arc<Template>>;

/// One app's templates.
struct AppTemplates {
    app_id: Arc<str>,
    limit: usize,
    path: PathBuf,
    /// What pushes and reads see; replaced whole after each saved change.
    snapshot: RwLock<Arc<Templates>>,
    /// Serialises changes (and their file writes) of this app.
    writer: Mutex<()>,
    gauge: metrics::Gauge,
}

/// Every configured app's templates.
pub struct TemplateStore {
    dir: PathBuf,
    fsync: bool,
    /// Written only when a reload adds apps (`add_apps`).
    apps: RwLock<HashMap<String, Arc<AppTemplates>>>,
}

pub fn describe_metrics() {
    metrics::describe_gauge!("ringpush_templates", "Templates stored, per app");
}

impl TemplateStore {
    /// Loads every configured app's templates from
    /// `durability.data_dir/templates/`. Call with the data directory's LOCK
    /// held (after `shard::start`).
    pub fn open(config: &Config) -> anyhow::Result<TemplateStore> {
        let fsync = config.durability.fsync != FsyncMode::Never;
        Self::open_in(&config.durability.data_dir, fsync, &config.apps)
    }

    /// `open` with the pieces of the config it needs.
    pub fn open_in(data_dir: &Path, fsync: bool, apps: &[App]) -> anyhow::Result<TemplateStore> {
        let dir = data_dir.join(SUBDIR);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if fsync {
                framed_file::sync_dir(data_dir).with_context(|| format!("syncing {}", data_dir.display()))?;
            }
        }
        let store = TemplateStore {
            dir,
            fsync,
            apps: RwLock::new(HashMap::new()),
        };
        let total = store.add_apps(apps)?;
        store.tidy()?;
        info!(templates = total, dir = %store.dir.display(), "templates loaded");
        Ok(store)
    }

    /// Loads the templates of the apps in `apps` the store does not hold
    /// yet (at start: all; after a reload: the added ones, whose file may
    /// be left from an earlier run). Returns how many templates it loaded.
    pub fn add_apps(&self, apps: &[App]) -> anyhow::Result<usize> {
        let mut total = 0;
        for app in apps {
            if self.apps.read().contains_key(&app.app_id) {
                continue;
            }
            let path = self.dir.join(file_name(&app.app_id));
            let templates = load(&path, &app.app_id)?;
            if templates.len() > app.max_templates {
                warn!(
                    app = app.app_id,
                    templates = templates.len(),
                    max_templates = app.max_templates,
                    "the app holds more templates than its maxTemplates; new ones are refused until enough are deleted"
                );
            }
            total += templates.len();
            let gauge = metrics::gauge!("ringpush_templates", "app" => app.app_id.clone());
            gauge.set(templates.len() as f64);
            self.apps.write().insert(
                app.app_id.clone(),
                Arc::new(AppTemplates {
                    app_id: Arc::from(app.app_id.as_str()),
                    limit: app.max_templates,
                    path,
                    snapshot: RwLock::new(Arc::new(templates)),
                    writer: Mutex::new(()),
                    gauge,
                }),
            );
        }
        Ok(total)
    }

    /// Removes temp files a crash left behind and warns about files of apps
    /// that are no longer configured (kept, not served).
    fn tidy(&self) -> anyhow::Result<()> {
        let entries =
            std::fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.dir.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            } else if !self.apps.read().values().any(|a| a.path == entry.path()) {
                warn!(file = %entry.path().display(), "not the template file of a configured app: ignored");
            }
        }
        Ok(())
    }

    fn app(&self, app_id: &str) -> Result<Arc<AppTemplates>, TemplateError> {
        self.apps
            .read()
            .get(app_id)
            .cloned()
            .ok_or(TemplateError::UnknownApp)
    }

    pub fn get(&self, app_id: &str, name: &str) -> Option<Arc<Template>> {
        self.app(app_id).ok()?.snapshot.read().get(name).cloned()
    }

    /// The app's templates, newest first (as the reference's console lists
    /// them), then by name.
    pub fn list(&self, app_id: &str) -> Vec<Arc<Template>> {
        let Ok(app) = self.app(app_id) else {
            return Vec::new();
        };
        let snapshot = app.snapshot.read().clone();
        let mut all: Vec<Arc<Template>> = snapshot.values().cloned().collect();
        all.sort_by(|a, b| {
            b.created_at_ms
                .cmp(&a.created_at_ms)
                .then_with(|| a.draft.name.cmp(&b.draft.name))
        });
        all
    }

    /// Adds a template; returns it once it is on disk.
    pub fn create(&self, app_id: &str, draft: Draft, now_ms: u64) -> Result<Arc<Template>, TemplateError> {
        let app = &*self.app(app_id)?;
        self.change(app, |templates| {
            let template = validate(draft, now_ms)?;
            if templates.contains_key(&template.draft.name) {
                return Err(TemplateError::AlreadyExists(template.draft.name));
            }
            if templates.len() >= app.limit {
                return Err(TemplateError::TooMany { limit: app.limit });
            }
            let template = Arc::new(template);
            templates.insert(template.draft.name.clone(), template.clone());
            Ok(template)
        })
    }

    /// Replaces the template named `draft.name`, keeping its creation time.
    pub fn update(&self, app_id: &str, draft: Draft, now_ms: u64) -> Result<Arc<Template>, TemplateError> {
        let app = &*self.app(app_id)?;
        self.change(app, |templates| {
            let mut template = validate(draft, now_ms)?;
            let Some(old) = templates.get(&template.draft.name) else {
                return Err(TemplateError::NotFound(template.draft.name));
            };
            template.created_at_ms = old.created_at_ms;
            let template = Arc::new(template);
            templates.insert(template.draft.name.clone(), template.clone());
            Ok(template)
        })
    }

    /// Removes a template; returns it once the removal is on disk.
    pub fn delete(&self, app_id: &str, name: &str) -> Result<Arc<Template>, TemplateError> {
        let app = &*self.app(app_id)?;
        self.change(app, |templates| {
            templates
                .remove(name)
                .ok_or_else(|| TemplateError::NotFound(name.to_owned()))
        })
    }

    /// Applies `edit` to a copy of the app's templates, saves the copy, and
    /// only then lets readers see it. A refused or unsaved change leaves
    /// memory as it was.
    fn change(
        &self,
        app: &AppTemplates,
        edit: impl FnOnce(&mut Templates) -> Result<Arc<Template>, TemplateError>,
    ) -> Result<Arc<Template>, TemplateError> {
        let _writer = app.writer.lock();
        let mut next: Templates = (**app.snapshot.read()).clone();
        let changed = edit(&mut next)?;
        self.save(app, &next)?;
        app.gauge.set(next.len() as f64);
        *app.snapshot.write() = Arc::new(next);
        Ok(changed)
    }

    /// Temp file, fsync, rename over the old file, fsync the directory: a
    /// crash at any point leaves the old file or the new one, whole.
    fn save(&self, app: &AppTemplates, templates: &Templates) -> Result<(), TemplateError> {
        let bytes = encode_file(&app.app_id, templates);
        framed_file::replace(&self.dir, &app.path, &bytes, self.fsync).map_err(|e| TemplateError::Io {
            path: e.path,
            source: e.source,
        })?;
        Ok(())
    }
}

/// The file of an app: its appId with every byte outside `[A-Za-z0-9_-]`
/// written as `%XX`, so any appId is one safe file name.
fn file_name(app_id: &str) -> String {
    let mut name = String::with_capacity(app_id.len() + 5);
    for b in app_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(b as char);
        } else {
            let _ = write!(name, "%{b:02X}");
        }
    }
    name.push_str(".json");
    name
}

/// A template as the file holds it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Record {
    template_name: String,
    template_desc: String,
    title: String,
    content: String,
    uri: String,
    silent: bool,
    push_style: u32,
    push_action: u32,
    icon_urls: String,
    image_urls: String,
    created_at: u64,
    updated_at: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileBody {
    app_id: String,
    templates: Vec<Record>,
}

/// The file: one header line, `ringpush-templates 1 crc32=XXXXXXXX
/// bytes=N`, then N bytes of JSON whose CRC-32 the header holds, so damage
/// that still parses as JSON is caught too.
fn encode_file(app_id: &str, templates: &Templates) -> Vec<u8> {
    let mut records: Vec<&Arc<Template>> = templates.values().collect();
    records.sort_by(|a, b| (a.created_at_ms, &a.draft.name).cmp(&(b.created_at_ms, &b.draft.name)));
    let body = FileBody {
        app_id: app_id.to_owned(),
        templates: records
            .into_iter()
            .map(|t| {
                let d = &t.draft;
                Record {
                    template_name: d.name.clone(),
                    template_desc: d.desc.clone(),
                    title: d.title.clone(),
                    content: d.content.clone(),
                    uri: d.uri.clone(),
                    silent: d.silent,
                    push_style: d.push_style,
                    push_action: d.action,
                    icon_urls: d.icon_urls.clone(),
                    image_urls: d.image_urls.clone(),
                    created_at: t.created_at_ms,
                    updated_at: t.updated_at_ms,
                }
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&body).expect("templates serialise");
    framed_file::frame(FILE_MAGIC, FILE_VERSION, &json)
}

/// Reads an app's template file; no file is no templates.
fn load(path: &Path, app_id: &str) -> anyhow::Result<Templates> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Templates::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    decode_file(&bytes, app_id).map_err(|reason| {
        anyhow::anyhow!(
            "{}: damaged template file ({reason}); ringpush does not start with it: restore it from a backup, or move it away to start with no templates for app {app_id:?}",
            path.display()
        )
    })
}

fn decode_file(bytes: &[u8], app_id: &str) -> Result<Templates, String> {
    let json = framed_file::unframe(bytes, FILE_MAGIC, FILE_VERSION)?;
    let body: FileBody = serde_json::from_slice(json).map_err(|e| format!("bad JSON: {e}"))?;
    if body.app_id != app_id {
        return Err(format!("it holds the templates of app {:?}", body.app_id));
    }
    let mut templates = Templates::new();
    for r in body.templates {
        let draft = Draft {
            name: r.template_name,
            desc: r.template_desc,
            title: r.title,
            content: r.content,
            uri: r.uri,
            silent: r.silent,
            push_style: r.push_style,
            action: r.push_action,
            icon_urls: r.icon_urls,
            image_urls: r.image_urls,
        };
        let name = draft.name.clone();
        let mut template = validate(draft, r.created_at).map_err(|e| format!("template {name:?}: {e}"))?;
        template.updated_at_ms = r.updated_at;
        if templates.insert(name.clone(), Arc::new(template)).is_some() {
            return Err(format!("template {name:?} appears twice"));
        }
    }
    Ok(templates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(name: &str) -> Draft {
        Draft {
            name: name.into(),
            title: "Hi #name#".into(),
            content: "You won #money#".into(),
            ..Default::default()
        }
    }

    fn apps(limit: usize) -> Vec<App> {
        vec![
            App {
                max_templates: limit,
                ..App::new("demo", "default")
            },
            App {
                max_templates: limit,
                ..App::new("a/b c", "default")
            },
        ]
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringpush-templates-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// The outcome of validating `draft`, as the variant's name.
    fn code(draft: Draft) -> &'static str {
        match validate(draft, 0) {
            Ok(_) => "ok",
            Err(TemplateError::NameNull) => "NameNull",
            Err(TemplateError::NameInvalid(_)) => "NameInvalid",
            Err(TemplateError::DescInvalid(_)) => "DescInvalid",
            Err(TemplateError::TitleInvalid(_)) => "TitleInvalid",
            Err(TemplateError::ContentInvalid(_)) => "ContentInvalid",
            Err(TemplateError::UriInvalid(_)) => "UriInvalid",
            Err(TemplateError::FieldInvalid(_)) => "FieldInvalid",
            Err(other) => panic!("validation does not return {other:?}"),
        }
    }

    #[test]
    fn every_rule_has_its_error() {
        let with = |change: fn(&mut Draft)| {
            let mut d = draft("t");
            change(&mut d);
            code(d)
        };
        assert_eq!(with(|_| {}), "ok");
        assert_eq!(with(|d| d.name = "测试模板_1".into()), "ok");
        assert_eq!(with(|d| d.name.clear()), "NameNull");
        assert_eq!(with(|d| d.name = "a,b".into()), "NameInvalid");
        assert_eq!(with(|d| d.name = "a b".into()), "NameInvalid");
        assert_eq!(with(|d| d.name = "x".repeat(200)), "ok");
        assert_eq!(with(|d| d.name = "x".repeat(201)), "NameInvalid");
        assert_eq!(with(|d| d.desc = "a description, with spaces".into()), "ok");
        assert_eq!(with(|d| d.desc = "d".repeat(201)), "DescInvalid");
        assert_eq!(with(|d| d.desc = "a\u{0}".into()), "DescInvalid");
        assert_eq!(with(|d| d.title = " ".into()), "TitleInvalid");
        assert_eq!(with(|d| d.title = "50# off".into()), "TitleInvalid");
        assert_eq!(with(|d| d.title = "a\nb".into()), "TitleInvalid");
        assert_eq!(with(|d| d.title = "t".repeat(1025)), "TitleInvalid");
        assert_eq!(with(|d| d.content.clear()), "ContentInvalid");
        assert_eq!(with(|d| d.content = "line\nline\t#x#".into()), "ok");
        assert_eq!(with(|d| d.content = "#unclosed".into()), "ContentInvalid");
        assert_eq!(with(|d| d.content = "c".repeat(2049)), "ContentInvalid");
        assert_eq!(with(|d| d.uri = "https://x/#p#?a=1##top".into()), "ok");
        assert_eq!(with(|d| d.uri = "https://x/#p".into()), "UriInvalid");
        assert_eq!(with(|d| d.uri = "https://x/a b".into()), "UriInvalid");
        assert_eq!(with(|d| d.uri = "u".repeat(1025)), "UriInvalid");
        assert_eq!(with(|d| d.push_style = 3), "FieldInvalid");
        assert_eq!(with(|d| d.icon_urls = "i".repeat(1025)), "FieldInvalid");
    }

    #[test]
    fn placeholders_are_listed_once_in_order() {
        let mut d = draft("t");
        d.uri = "app://prize/#money#/#id#".into();
        let t = validate(d, 0).unwrap();
        assert_eq!(t.placeholders(), ["name", "money", "id"]);
    }

    #[test]
    fn changes_follow_the_rules_and_survive_reopening() {
        let dir = scratch("reopen");
        let store = TemplateStore::open_in(&dir, true, &apps(2)).unwrap();
        store.create("demo", draft("first"), 10).unwrap();
        assert!(matches!(
            store.create("demo", draft("first"), 11),
            Err(TemplateError::AlreadyExists(_))
        ));
        store.create("demo", draft("second"), 12).unwrap();
        assert!(matches!(
            store.create("demo", draft("third"), 13),
            Err(TemplateError::TooMany { limit: 2 })
        ));
        let mut changed = draft("first");
        changed.title = "Hello #name#".into();
        let updated = store.update("demo", changed, 20).unwrap();
        assert_eq!((updated.created_at_ms, updated.updated_at_ms), (10, 20));
        assert!(matches!(
            store.update("demo", draft("nope"), 21),
            Err(TemplateError::NotFound(_))
        ));
        store.create("a/b c", draft("elsewhere"), 30).unwrap();
        assert!(store.get("demo", "elsewhere").is_none(), "apps are separate");
        store.delete("demo", "second").unwrap();
        assert!(matches!(
            store.delete("demo", "second"),
            Err(TemplateError::NotFound(_))
        ));
        let names = |s: &TemplateStore, app| -> Vec<String> {
            s.list(app).iter().map(|t| t.draft.name.clone()).collect()
        };
        assert_eq!(names(&store, "demo"), ["first"]);
        drop(store);

        let store = TemplateStore::open_in(&dir, true, &apps(2)).unwrap();
        assert_eq!(names(&store, "demo"), ["first"]);
        assert_eq!(names(&store, "a/b c"), ["elsewhere"]);
        let first = store.get("demo", "first").unwrap();
        assert_eq!(first.draft.title, "Hello #name#");
        assert_eq!((first.created_at_ms, first.updated_at_ms), (10, 20));
        assert!(dir.join("templates").join("a%2Fb%20c.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_list_is_newest_first() {
        let dir = scratch("list");
        let store = TemplateStore::open_in(&dir, false, &apps(10)).unwrap();
        for (name, at) in [("b", 1), ("c", 3), ("a", 3), ("d", 2)] {
            store.create("demo", draft(name), at).unwrap();
        }
        let names: Vec<String> = store.list("demo").iter().map(|t| t.draft.name.clone()).collect();
        assert_eq!(names, ["a", "c", "d", "b"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_file_stops_opening_and_is_named() {
        let dir = scratch("damaged");
        let store = TemplateStore::open_in(&dir, false, &apps(10)).unwrap();
        store.create("demo", draft("t"), 1).unwrap();
        drop(store);
        let file = dir.join("templates").join("demo.json");
        let good = std::fs::read(&file).unwrap();
        let damages: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut b = good.clone();
                    let i = b.len() - 10;
                    b[i] ^= 0x01;
                    b
                },
                "checksum mismatch",
            ),
            (good[..good.len() - 3].to_vec(), "bytes"),
            (b"{}".to_vec(), "no header line"),
            (b"something else\n{}".to_vec(), "unexpected header"),
        ];
        for (bytes, reason) in damages {
            std::fs::write(&file, &bytes).unwrap();
            let err = TemplateStore::open_in(&dir, false, &apps(10))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(reason), "{reason}: {err}");
        }
        // Valid framing around an invalid template is damage too.
        let text = String::from_utf8(good).unwrap();
        let json = text.split_once('\n').unwrap().1.replace("Hi #name#", "Hi #name");
        let header = format!(
            "ringpush-templates 1 crc32={:08x} bytes={}\n",
            crc32fast::hash(json.as_bytes()),
            json.len()
        );
        std::fs::write(&file, header + &json).unwrap();
        let err = TemplateStore::open_in(&dir, false, &apps(10))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("template \"t\"") && err.contains("title"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_save_changes_nothing() {
        let dir = scratch("failed-save");
        let store = TemplateStore::open_in(&dir, true, &apps(10)).unwrap();
        store.create("demo", draft("kept"), 1).unwrap();
        // The temp file's name is taken by a directory: the write fails.
        let blocker = dir.join("templates").join(".demo.json.tmp");
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let err = store.create("demo", draft("lost"), 2).unwrap_err();
        assert!(matches!(err, TemplateError::Io { .. }), "{err}");
        assert!(!err.is_disk_full());
        assert!(store.get("demo", "lost").is_none());
        assert_eq!(store.list("demo").len(), 1);
        std::fs::remove_dir_all(&blocker).unwrap();
        drop(store);
        let store = TemplateStore::open_in(&dir, true, &apps(10)).unwrap();
        assert_eq!(store.list("demo").len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = scratch("temp");
        drop(TemplateStore::open_in(&dir, false, &apps(10)).unwrap());
        let temp = dir.join("templates").join(".demo.json.tmp");
        std::fs::write(&temp, b"half a file").unwrap();
        drop(TemplateStore::open_in(&dir, false, &apps(10)).unwrap());
        assert!(!temp.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_names_are_safe_for_any_app_id() {
        assert_eq!(file_name("demo"), "demo.json");
        assert_eq!(file_name("ONEX_57-0"), "ONEX_57-0.json");
        assert_eq!(file_name("../x"), "%2E%2E%2Fx.json");
        assert_eq!(file_name("应用"), "%E5%BA%94%E7%94%A8.json");
    }
}
