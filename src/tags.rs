//! User tags (push-semantics.md §1, the console's "user tags"): per app,
//! named sets of userIds that a tag push targets; the rules a tag must pass
//! (name 1–30 characters, unique in its app; 1–60-character userIds,
//! duplicates removed; `maxTags` per app and `maxTagUsers` per tag); and
//! their durability.
//!
//! A tag may hold 500,000 userIds (about 10 MB), so tags are not kept like
//! templates, in one file per app: each tag is its own file,
//! `durability.data_dir/tags/<appId>/<tagId>.tag`, so a change to one tag
//! rewrites only that tag. A change is on disk (temp file, fsync, rename,
//! directory fsync) before it returns; a damaged file stops the start with
//! a message naming it. In memory a tag is its name, times and the
//! `TagUsers` digest set (8 bytes a user) that tag pushes share; the
//! userIds themselves are read back from the file when asked for. Changes
//! block on the disk, so the API runs them on a blocking thread. The HTTP
//! face is `api::tags`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::{App, Config, FsyncMode};
use crate::framed_file;
use crate::message::{user_digest, TagUsers};

/// A tag's name, in characters (the reference's console: 30).
pub const MAX_NAME_CHARS: usize = 30;
/// A userId, in characters (the reference: longer ones are not taken).
pub const MAX_USER_ID_CHARS: usize = 60;
/// Tags per app when `[[apps]]` gives no `maxTags` (the reference does not
/// say).
pub const DEFAULT_MAX_TAGS: usize = 100;
/// Largest `maxTags`: every tag is loaded at start.
pub const MAX_MAX_TAGS: usize = 100_000;
/// userIds per tag when `[[apps]]` gives no `maxTagUsers` (the reference's
/// import limit).
pub const DEFAULT_MAX_TAG_USERS: usize = 500_000;
/// Largest `maxTagUsers`: a tag's request body and file grow with it.
pub const MAX_MAX_TAG_USERS: usize = 5_000_000;

const FILE_MAGIC: &str = "ringpush-tag";
const FILE_VERSION: u32 = 1;
const SUBDIR: &str = "tags";
const EXTENSION: &str = "tag";

/// A saved tag, as pushes and listings see it.
#[derive(Debug)]
pub struct Tag {
    /// Given at creation, never reused in its app; names its file.
    pub id: u64,
    pub name: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// userIds in the tag.
    pub user_count: usize,
    /// Their digests: a tag push's audience.
    pub users: Arc<TagUsers>,
}

/// Why a tag change was refused. The API maps each to its result code.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("tagName {0}")]
    NameInvalid(String),
    #[error("{field}[{index}] is empty")]
    UserIdEmpty { field: &'static str, index: usize },
    #[error("{field}[{index}] {reason}")]
    UserIdInvalid {
        field: &'static str,
        index: usize,
        reason: String,
    },
    #[error("userId {0:?} is both in addUserIds and in removeUserIds")]
    AddedAndRemoved(String),
    #[error("the tag would hold {count} userIds; this app's maxTagUsers is {limit}")]
    TooManyUsers { count: usize, limit: usize },
    #[error("a tag named {0:?} already exists in this app")]
    AlreadyExists(String),
    #[error("no tag named {0:?} in this app")]
    NotFound(String),
    #[error("the app holds {limit} tags, its maxTags; delete one first")]
    TooMany { limit: usize },
    #[error("no such app")]
    UnknownApp,
    /// The change is not known to be on disk: it may or may not survive a
    /// restart, so the caller should retry it.
    #[error(
        "the change could not be saved to {path}: {source}; it may or may not survive a restart, so retry it"
    )]
    Io { path: PathBuf, source: std::io::Error },
    /// A tag file could not be read back (for its userIds).
    #[error("{0}")]
    Unreadable(String),
}

impl TagError {
    /// Whether the disk was full (the API answers 9002 rather than 9000).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}

/// 1 to 30 characters, none of them control characters. Anything else is
/// allowed, as in the reference's console; the API takes a name in a path
/// percent-encoded.
pub fn check_name(name: &str) -> Result<(), TagError> {
    if name.is_empty() {
        return Err(TagError::NameInvalid("is required".into()));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(TagError::NameInvalid(format!(
            "is {chars} characters; at most {MAX_NAME_CHARS}"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(TagError::NameInvalid("holds a control character".into()));
    }
    Ok(())
}

/// 1 to 60 characters, none of them control characters (a tag file holds
/// one userId a line).
fn check_user_id(field: &'static str, index: usize, id: &str) -> Result<(), TagError> {
    if id.is_empty() {
        return Err(TagError::UserIdEmpty { field, index });
    }
    let chars = id.chars().count();
    if chars > MAX_USER_ID_CHARS {
        return Err(TagError::UserIdInvalid {
            field,
            index,
            reason: format!("is {chars} characters; at most {MAX_USER_ID_CHARS}"),
        });
    }
    if id.chars().any(char::is_control) {
        return Err(TagError::UserIdInvalid {
            field,
            index,
            reason: "holds a control character".into(),
        });
    }
    Ok(())
}

/// Checks every userId (in request order, so the error names the first bad
/// one) and sorts them, duplicates removed.
fn sorted_ids(field: &'static str, mut ids: Vec<String>) -> Result<Vec<String>, TagError> {
    for (index, id) in ids.iter().enumerate() {
        check_user_id(field, index, id)?;
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// What a change did to a tag's users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsersChanged {
    /// userIds given more than once (or already in the tag, for an add),
    /// kept once.
    pub duplicates: usize,
    pub added: usize,
    pub removed: usize,
}

type Tags = HashMap<String, Arc<Tag>>;

/// One app's tags.
struct AppTags {
    app_id: Arc<str>,
    max_tags: usize,
    max_users: usize,
    dir: PathBuf,
    /// What pushes and reads see; replaced whole after each saved change.
    snapshot: RwLock<Arc<Tags>>,
    /// Serialises changes (and their file writes) of this app.
    writer: Mutex<WriterState>,
    gauge: metrics::Gauge,
    tags_limit_hits: metrics::Counter,
    users_limit_hits: metrics::Counter,
}

struct WriterState {
    /// The last tag id given: ids increase, so none is reused.
    last_id: u64,
}

/// Every configured app's tags.
pub struct TagStore {
    fsync: bool,
    root: PathBuf,
    /// Written only when a reload adds apps (`add_apps`).
    apps: RwLock<HashMap<String, Arc<AppTags>>>,
}

pub fn describe_metrics() {
    metrics::describe_gauge!("ringpush_tags", "User tags stored, per app");
    metrics::describe_counter!(
        "ringpush_tag_limit_hits_total",
        "Tag changes refused by a limit, per app: limit=\"tags\" (maxTags, 3103) or \"users\" (maxTagUsers, 3028)"
    );
}

impl TagStore {
    /// Loads every configured app's tags from `durability.data_dir/tags/`.
    /// Call with the data directory's LOCK held (after `shard::start`).
    pub fn open(config: &Config) -> anyhow::Result<TagStore> {
        let fsync = config.durability.fsync != FsyncMode::Never;
        Self::open_in(&config.durability.data_dir, fsync, &config.apps)
    }

    /// `open` with the pieces of the config it needs.
    pub fn open_in(data_dir: &Path, fsync: bool, apps: &[App]) -> anyhow::Result<TagStore> {
        let root = data_dir.join(SUBDIR);
        create_dir(&root, data_dir, fsync)?;
        let store = TagStore {
            fsync,
            root: root.clone(),
            apps: RwLock::new(HashMap::new()),
        };
        let total = store.add_apps(apps)?;
        for entry in std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))? {
            let entry = entry.with_context(|| format!("listing {}", root.display()))?;
            if !store.apps.read().values().any(|a| a.dir == entry.path()) {
                warn!(dir = %entry.path().display(), "not the tag directory of a configured app: ignored");
            }
        }
        info!(tags = total, dir = %root.display(), "tags loaded");
        Ok(store)
    }

    /// Loads the tags of the apps in `apps` the store does not hold yet (at
    /// start: all; after a reload: the added ones, whose directory may be
    /// left from an earlier run). Returns how many tags it loaded.
    pub fn add_apps(&self, apps: &[App]) -> anyhow::Result<usize> {
        let mut total = 0;
        for app in apps {
            if self.apps.read().contains_key(&app.app_id) {
                continue;
            }
            let dir = self.root.join(dir_name(&app.app_id));
            create_dir(&dir, &self.root, self.fsync)?;
            let tags = load_dir(&dir, &app.app_id)?;
            if tags.len() > app.max_tags {
                warn!(
                    app = app.app_id,
                    tags = tags.len(),
                    max_tags = app.max_tags,
                    "the app holds more tags than its maxTags; new ones are refused until enough are deleted"
                );
            }
            total += tags.len();
            let last_id = tags.values().map(|t| t.id).max().unwrap_or(0);
            let gauge = metrics::gauge!("ringpush_tags", "app" => app.app_id.clone());
            gauge.set(tags.len() as f64);
            let hits = |limit: &'static str| metrics::counter!("ringpush_tag_limit_hits_total", "app" => app.app_id.clone(), "limit" => limit);
            self.apps.write().insert(
                app.app_id.clone(),
                Arc::new(AppTags {
                    app_id: Arc::from(app.app_id.as_str()),
                    max_tags: app.max_tags,
                    max_users: app.max_tag_users,
                    dir,
                    snapshot: RwLock::new(Arc::new(tags)),
                    writer: Mutex::new(WriterState { last_id }),
                    gauge,
                    tags_limit_hits: hits("tags"),
                    users_limit_hits: hits("users"),
                }),
            );
        }
        Ok(total)
    }

    fn app(&self, app_id: &str) -> Result<Arc<AppTags>, TagError> {
        self.apps.read().get(app_id).cloned().ok_or(TagError::UnknownApp)
    }

    pub fn get(&self, app_id: &str, name: &str) -> Option<Arc<Tag>> {
        self.app(app_id).ok()?.snapshot.read().get(name).cloned()
    }

    /// The app's tags, newest first (as the reference's console lists
    /// them; ids increase with creation, so they order tags made in the
    /// same millisecond).
    pub fn list(&self, app_id: &str) -> Vec<Arc<Tag>> {
        let Ok(app) = self.app(app_id) else {
            return Vec::new();
        };
        let snapshot = app.snapshot.read().clone();
        let mut all: Vec<Arc<Tag>> = snapshot.values().cloned().collect();
        all.sort_by_key(|t| std::cmp::Reverse((t.created_at_ms, t.id)));
        all
    }

    /// A tag and its userIds (sorted), read from its file.
    pub fn user_ids(&self, app_id: &str, name: &str) -> Result<(Arc<Tag>, Vec<String>), TagError> {
        let app = &*self.app(app_id)?;
        // The writer lock keeps the file and the snapshot in step.
        let _writer = app.writer.lock();
        let tag = self
            .get(app_id, name)
            .ok_or_else(|| TagError::NotFound(name.to_owned()))?;
        let ids = read_ids(&app.dir, &app.app_id, &tag)?;
        Ok((tag, ids))
    }

    /// Adds a tag; returns it once it is on disk.
    pub fn create(
        &self,
        app_id: &str,
        name: &str,
        ids: Vec<String>,
        now_ms: u64,
    ) -> Result<(Arc<Tag>, UsersChanged), TagError> {
        let app = &*self.app(app_id)?;
        check_name(name)?;
        let given = ids.len();
        let ids = self.within_limit(app, sorted_ids("userIds", ids)?)?;
        let mut writer = app.writer.lock();
        let tags = app.snapshot.read().clone();
        if tags.contains_key(name) {
            return Err(TagError::AlreadyExists(name.to_owned()));
        }
        if tags.len() >= app.max_tags {
            app.tags_limit_hits.increment(1);
            return Err(TagError::TooMany { limit: app.max_tags });
        }
        let id = now_ms.max(writer.last_id + 1);
        let tag = self.save(app, id, name, now_ms, now_ms, &ids)?;
        writer.last_id = id;
        let mut next = (*tags).clone();
        next.insert(name.to_owned(), tag.clone());
        self.publish(app, next);
        let changed = UsersChanged {
            duplicates: given - ids.len(),
            added: ids.len(),
            removed: 0,
        };
        Ok((tag, changed))
    }

    /// Renames a tag (`new_name`) and/or replaces all its userIds (`ids`);
    /// keeps its id and creation time.
    pub fn replace(
        &self,
        app_id: &str,
        name: &str,
        new_name: Option<&str>,
        ids: Option<Vec<String>>,
        now_ms: u64,
    ) -> Result<(Arc<Tag>, UsersChanged), TagError> {
        let app = &*self.app(app_id)?;
        if let Some(new_name) = new_name {
            check_name(new_name)?;
        }
        let new_ids = match ids {
            Some(ids) => {
                let given = ids.len();
                let ids = self.within_limit(app, sorted_ids("userIds", ids)?)?;
                Some((given - ids.len(), ids))
            }
            None => None,
        };
        let _writer = app.writer.lock();
        let tags = app.snapshot.read().clone();
        let old = tags
            .get(name)
            .cloned()
            .ok_or_else(|| TagError::NotFound(name.to_owned()))?;
        let new_name = new_name.unwrap_or(name);
        if new_name != name && tags.contains_key(new_name) {
            return Err(TagError::AlreadyExists(new_name.to_owned()));
        }
        let (changed, ids) = match new_ids {
            Some((duplicates, ids)) => {
                let old_ids = read_ids(&app.dir, &app.app_id, &old)?;
                let changed = UsersChanged {
                    duplicates,
                    added: count_missing(&ids, &old_ids),
                    removed: count_missing(&old_ids, &ids),
                };
                (changed, ids)
            }
            None => (UsersChanged::default(), read_ids(&app.dir, &app.app_id, &old)?),
        };
        let tag = self.save(app, old.id, new_name, old.created_at_ms, now_ms, &ids)?;
        let mut next = (*tags).clone();
        next.remove(name);
        next.insert(new_name.to_owned(), tag.clone());
        self.publish(app, next);
        Ok((tag, changed))
    }

    /// Adds and removes userIds (an id in both is refused, as ambiguous).
    pub fn change_users(
        &self,
        app_id: &str,
        name: &str,
        add: Vec<String>,
        remove: Vec<String>,
        now_ms: u64,
    ) -> Result<(Arc<Tag>, UsersChanged), TagError> {
        let app = &*self.app(app_id)?;
        let given = add.len();
        let add = sorted_ids("addUserIds", add)?;
        let remove = sorted_ids("removeUserIds", remove)?;
        if let Some(both) = add.iter().find(|id| remove.binary_search(id).is_ok()) {
            return Err(TagError::AddedAndRemoved(both.clone()));
        }
        let _writer = app.writer.lock();
        let tags = app.snapshot.read().clone();
        let old = tags
            .get(name)
            .cloned()
            .ok_or_else(|| TagError::NotFound(name.to_owned()))?;
        let old_ids = read_ids(&app.dir, &app.app_id, &old)?;
        let mut changed = UsersChanged {
            duplicates: given - add.len(),
            ..Default::default()
        };
        let mut ids = Vec::with_capacity(old_ids.len() + add.len());
        let (mut a, mut o) = (add.into_iter().peekable(), old_ids.into_iter().peekable());
        // A merge of two sorted lists: the old ids less the removed ones,
        // and the added ones not already there.
        loop {
            let next = match (a.peek(), o.peek()) {
                (Some(x), Some(y)) if x < y => a.next().inspect(|_| changed.added += 1),
                (Some(x), Some(y)) if x == y => {
                    changed.duplicates += 1;
                    a.next();
                    o.next()
                }
                (Some(_), None) => a.next().inspect(|_| changed.added += 1),
                (_, Some(_)) => o.next(),
                (None, None) => break,
            };
            let id = next.expect("peeked");
            if remove.binary_search(&id).is_ok() {
                changed.removed += 1;
            } else {
                ids.push(id);
            }
        }
        let ids = self.within_limit(app, ids)?;
        let tag = self.save(app, old.id, name, old.created_at_ms, now_ms, &ids)?;
        let mut next = (*tags).clone();
        next.insert(name.to_owned(), tag.clone());
        self.publish(app, next);
        Ok((tag, changed))
    }

    /// Removes a tag; returns it once its file is gone from the disk.
    /// Pushes already made to it still reach its users.
    pub fn delete(&self, app_id: &str, name: &str) -> Result<Arc<Tag>, TagError> {
        let app = &*self.app(app_id)?;
        let _writer = app.writer.lock();
        let tags = app.snapshot.read().clone();
        let tag = tags
            .get(name)
            .cloned()
            .ok_or_else(|| TagError::NotFound(name.to_owned()))?;
        let path = app.dir.join(file_name(tag.id));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TagError::Io { path, source }
        };
        std::fs::remove_file(&path).map_err(io(&path))?;
        if self.fsync {
            framed_file::sync_dir(&app.dir).map_err(io(&app.dir))?;
        }
        let mut next = (*tags).clone();
        next.remove(name);
        self.publish(app, next);
        Ok(tag)
    }

    fn within_limit(&self, app: &AppTags, ids: Vec<String>) -> Result<Vec<String>, TagError> {
        if ids.len() > app.max_users {
            app.users_limit_hits.increment(1);
            return Err(TagError::TooManyUsers {
                count: ids.len(),
                limit: app.max_users,
            });
        }
        Ok(ids)
    }

    fn publish(&self, app: &AppTags, tags: Tags) {
        app.gauge.set(tags.len() as f64);
        *app.snapshot.write() = Arc::new(tags);
    }

    /// Writes a tag's file (temp file, fsync, rename over the old one,
    /// directory fsync: a crash leaves the old file or the new one, whole)
    /// and builds what memory keeps of it.
    fn save(
        &self,
        app: &AppTags,
        id: u64,
        name: &str,
        created_at_ms: u64,
        updated_at_ms: u64,
        ids: &[String],
    ) -> Result<Arc<Tag>, TagError> {
        let tag = Tag {
            id,
            name: name.to_owned(),
            created_at_ms,
            updated_at_ms,
            user_count: ids.len(),
            users: TagUsers::new(ids.iter().map(|u| user_digest(&app.app_id, u)).collect()),
        };
        let bytes = encode_file(&app.app_id, &tag, ids);
        framed_file::replace(&app.dir, &app.dir.join(file_name(id)), &bytes, self.fsync).map_err(|e| {
            TagError::Io {
                path: e.path,
                source: e.source,
            }
        })?;
        Ok(Arc::new(tag))
    }
}

/// How many of `of` (sorted) are not in `among` (sorted).
fn count_missing(of: &[String], among: &[String]) -> usize {
    of.iter().filter(|id| among.binary_search(id).is_err()).count()
}

fn create_dir(dir: &Path, parent: &Path, fsync: bool) -> anyhow::Result<()> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if fsync {
            framed_file::sync_dir(parent).with_context(|| format!("syncing {}", parent.display()))?;
        }
    }
    Ok(())
}

/// The directory of an app: its appId with every byte outside
/// `[A-Za-z0-9_-]` written as `%XX`, so any appId is one safe name.
fn dir_name(app_id: &str) -> String {
    let mut name = String::with_capacity(app_id.len());
    for b in app_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            name.push(b as char);
        } else {
            let _ = write!(name, "%{b:02X}");
        }
    }
    name
}

fn file_name(id: u64) -> String {
    format!("{id}.{EXTENSION}")
}

/// Loads every tag file of an app's directory, removing temp files a crash
/// left behind.
fn load_dir(dir: &Path, app_id: &str) -> anyhow::Result<Tags> {
    let mut tags = Tags::new();
    let mut ids = HashSet::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            warn!(file = %path.display(), "not a tag file: ignored");
            continue;
        }
        let damaged = |reason: String| {
            anyhow::anyhow!(
                "{}: damaged tag file ({reason}); ringpush does not start with it: restore it from a backup, or move it away to start without that tag of app {app_id:?}",
                path.display()
            )
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let file = decode_file(&bytes, app_id).map_err(damaged)?;
        if file_name(file.meta.tag_id) != name {
            return Err(damaged(format!("it holds tag id {}", file.meta.tag_id)));
        }
        let tag = file.tag(app_id);
        if !ids.insert(tag.id) {
            return Err(damaged(format!("tag id {} appears twice", tag.id)));
        }
        if let Some(other) = tags.insert(tag.name.clone(), Arc::new(tag)) {
            return Err(damaged(format!("another file holds tag {:?} too", other.name)));
        }
    }
    Ok(tags)
}

/// A tag's userIds, read back from its file.
fn read_ids(dir: &Path, app_id: &str, tag: &Tag) -> Result<Vec<String>, TagError> {
    let path = dir.join(file_name(tag.id));
    let bytes = std::fs::read(&path).map_err(|source| TagError::Io {
        path: path.clone(),
        source,
    })?;
    let file = decode_file(&bytes, app_id)
        .map_err(|reason| TagError::Unreadable(format!("{}: damaged tag file ({reason})", path.display())))?;
    Ok(file.ids.into_iter().map(str::to_owned).collect())
}

/// The first line after the header.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Meta {
    app_id: String,
    tag_id: u64,
    tag_name: String,
    created_at: u64,
    updated_at: u64,
    users: usize,
}

/// A decoded tag file, borrowing the bytes.
pub struct TagFile<'a> {
    meta: Meta,
    /// Sorted, distinct.
    pub ids: Vec<&'a str>,
}

impl TagFile<'_> {
    pub fn name(&self) -> &str {
        &self.meta.tag_name
    }

    fn tag(&self, app_id: &str) -> Tag {
        Tag {
            id: self.meta.tag_id,
            name: self.meta.tag_name.clone(),
            created_at_ms: self.meta.created_at,
            updated_at_ms: self.meta.updated_at,
            user_count: self.ids.len(),
            users: TagUsers::new(self.ids.iter().map(|u| user_digest(app_id, u)).collect()),
        }
    }
}

/// The file: one header line, `ringpush-tag 1 crc32=XXXXXXXX bytes=N`, then
/// N bytes whose CRC-32 the header holds: a line of JSON (app, id, name,
/// times, count), then the userIds in byte order, one a line. Text, so an
/// operator can read or export a tag with `tail -n +3`; compact (the ids
/// and a newline each: 500,000 20-character ids are 10.5 MB) and fast to
/// read (a split on newlines).
fn encode_file(app_id: &str, tag: &Tag, ids: &[String]) -> Vec<u8> {
    let meta = Meta {
        app_id: app_id.to_owned(),
        tag_id: tag.id,
        tag_name: tag.name.clone(),
        created_at: tag.created_at_ms,
        updated_at: tag.updated_at_ms,
        users: ids.len(),
    };
    let mut body = serde_json::to_vec(&meta).expect("tag metadata serialises");
    body.push(b'\n');
    body.reserve(ids.iter().map(|id| id.len() + 1).sum());
    for id in ids {
        body.extend_from_slice(id.as_bytes());
        body.push(b'\n');
    }
    framed_file::frame(FILE_MAGIC, FILE_VERSION, &body)
}

/// Decodes and checks a tag file of app `app_id`: framing, checksum, the
/// name and every userId against the rules, ids sorted and distinct, the
/// count. Public for the fuzz target.
pub fn decode_file<'a>(bytes: &'a [u8], app_id: &str) -> Result<TagFile<'a>, String> {
    let body = framed_file::unframe(bytes, FILE_MAGIC, FILE_VERSION)?;
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    let (meta, ids) = text.split_once('\n').ok_or("no metadata line")?;
    let meta: Meta = serde_json::from_str(meta).map_err(|e| format!("bad metadata: {e}"))?;
    if meta.app_id != app_id {
        return Err(format!("it holds a tag of app {:?}", meta.app_id));
    }
    check_name(&meta.tag_name).map_err(|e| e.to_string())?;
    let ids: Vec<&str> = match ids.strip_suffix('\n') {
        Some(ids) => ids.split('\n').collect(),
        None if ids.is_empty() => Vec::new(),
        None => return Err("the last userId has no newline".into()),
    };
    if ids.len() != meta.users {
        return Err(format!("{} userIds, the metadata says {}", ids.len(), meta.users));
    }
    for (index, id) in ids.iter().enumerate() {
        check_user_id("userIds", index, id).map_err(|e| e.to_string())?;
    }
    if !ids.windows(2).all(|w| w[0] < w[1]) {
        return Err("the userIds are not sorted and distinct".into());
    }
    Ok(TagFile { meta, ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apps(max_tags: usize, max_users: usize) -> Vec<App> {
        vec![
            App {
                max_tags,
                max_tag_users: max_users,
                ..App::new("demo", "default")
            },
            App {
                max_tags,
                max_tag_users: max_users,
                ..App::new("a/b c", "default")
            },
        ]
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringpush-tags-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn users_of(store: &TagStore, app: &str, name: &str) -> Vec<String> {
        store.user_ids(app, name).unwrap().1
    }

    #[test]
    fn names_and_user_ids_follow_the_rules() {
        assert!(check_name("女性 users, 3.8!").is_ok());
        assert!(check_name(&"n".repeat(30)).is_ok());
        assert!(matches!(check_name(""), Err(TagError::NameInvalid(_))));
        assert!(matches!(
            check_name(&"n".repeat(31)),
            Err(TagError::NameInvalid(_))
        ));
        assert!(matches!(check_name("a\nb"), Err(TagError::NameInvalid(_))));
        assert!(sorted_ids("userIds", ids(&["b", "a", "b"])).unwrap() == ["a", "b"]);
        assert!(sorted_ids("userIds", vec!["u".repeat(60)]).is_ok());
        assert!(matches!(
            sorted_ids("userIds", ids(&["ok", ""])),
            Err(TagError::UserIdEmpty { index: 1, .. })
        ));
        assert!(matches!(
            sorted_ids("userIds", vec!["ok".into(), "u".repeat(61)]),
            Err(TagError::UserIdInvalid { index: 1, .. })
        ));
        assert!(matches!(
            sorted_ids("userIds", ids(&["a\nb"])),
            Err(TagError::UserIdInvalid { index: 0, .. })
        ));
    }

    #[test]
    fn changes_follow_the_rules_and_survive_reopening() {
        let dir = scratch("reopen");
        let store = TagStore::open_in(&dir, true, &apps(2, 4)).unwrap();
        let (vip, changed) = store
            .create("demo", "vip", ids(&["carol", "alice", "alice"]), 10)
            .unwrap();
        assert_eq!((vip.user_count, changed.duplicates, changed.added), (2, 1, 2));
        assert!(matches!(
            store.create("demo", "vip", ids(&["x"]), 11),
            Err(TagError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.create("demo", "big", ids(&["a", "b", "c", "d", "e"]), 11),
            Err(TagError::TooManyUsers { count: 5, limit: 4 })
        ));
        store.create("demo", "new", ids(&["x"]), 12).unwrap();
        assert!(matches!(
            store.create("demo", "third", ids(&["x"]), 13),
            Err(TagError::TooMany { limit: 2 })
        ));
        // Add and remove; an id already there counts as a duplicate.
        let (after, changed) = store
            .change_users(
                "demo",
                "vip",
                ids(&["bob", "alice", "dave"]),
                ids(&["carol", "zed"]),
                20,
            )
            .unwrap();
        assert_eq!(
            changed,
            UsersChanged {
                duplicates: 1,
                added: 2,
                removed: 1
            }
        );
        assert_eq!(users_of(&store, "demo", "vip"), ["alice", "bob", "dave"]);
        assert_eq!(
            (after.id, after.created_at_ms, after.updated_at_ms),
            (vip.id, 10, 20)
        );
        assert!(matches!(
            store.change_users("demo", "vip", ids(&["e", "f"]), vec![], 21),
            Err(TagError::TooManyUsers { count: 5, limit: 4 })
        ));
        assert!(matches!(
            store.change_users("demo", "vip", ids(&["e"]), ids(&["e"]), 21),
            Err(TagError::AddedAndRemoved(_))
        ));
        // Replace the users, then rename; a taken name is refused.
        let (_, changed) = store
            .replace("demo", "vip", None, Some(ids(&["bob", "erin"])), 30)
            .unwrap();
        assert_eq!((changed.added, changed.removed), (1, 2));
        assert!(matches!(
            store.replace("demo", "vip", Some("new"), None, 31),
            Err(TagError::AlreadyExists(_))
        ));
        let (renamed, _) = store.replace("demo", "vip", Some("gold"), None, 32).unwrap();
        assert_eq!((renamed.id, renamed.user_count), (vip.id, 2));
        assert!(store.get("demo", "vip").is_none());
        assert!(matches!(
            store.replace("demo", "vip", None, Some(ids(&["x"])), 33),
            Err(TagError::NotFound(_))
        ));
        store.create("a/b c", "vip", ids(&["elsewhere"]), 40).unwrap();
        assert_eq!(store.get("demo", "gold").unwrap().users, renamed.users);
        let names =
            |s: &TagStore, app| -> Vec<String> { s.list(app).iter().map(|t| t.name.clone()).collect() };
        assert_eq!(names(&store, "demo"), ["new", "gold"], "newest first");
        drop(store);

        let store = TagStore::open_in(&dir, true, &apps(2, 4)).unwrap();
        assert_eq!(names(&store, "demo"), ["new", "gold"]);
        assert_eq!(users_of(&store, "demo", "gold"), ["bob", "erin"]);
        let gold = store.get("demo", "gold").unwrap();
        assert_eq!(
            (gold.id, gold.created_at_ms, gold.updated_at_ms),
            (vip.id, 10, 32)
        );
        assert!(
            Arc::ptr_eq(&gold.users, &renamed.users),
            "equal sets share one copy"
        );
        assert!(gold.users.contains(user_digest("demo", "erin")));
        assert!(!gold.users.contains(user_digest("a/b c", "erin")));
        assert_eq!(users_of(&store, "a/b c", "vip"), ["elsewhere"]);
        assert!(store.get("demo", "elsewhere").is_none(), "apps are separate");
        store.delete("demo", "gold").unwrap();
        assert!(matches!(store.delete("demo", "gold"), Err(TagError::NotFound(_))));
        // A new tag never takes a deleted tag's id.
        let (again, _) = store.create("demo", "gold", ids(&["x"]), 5).unwrap();
        assert!(again.id > vip.id);
        drop(store);
        let store = TagStore::open_in(&dir, true, &apps(2, 4)).unwrap();
        assert_eq!(users_of(&store, "demo", "gold"), ["x"]);
        assert!(dir.join("tags").join("a%2Fb%20c").is_dir());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_file_stops_opening_and_is_named() {
        let dir = scratch("damaged");
        let store = TagStore::open_in(&dir, false, &apps(10, 10)).unwrap();
        let (tag, _) = store.create("demo", "t", ids(&["a", "b"]), 1).unwrap();
        drop(store);
        let file = dir.join("tags").join("demo").join(file_name(tag.id));
        let good = std::fs::read(&file).unwrap();
        let reframed = |body: &str| {
            format!(
                "ringpush-tag 1 crc32={:08x} bytes={}\n{body}",
                crc32fast::hash(body.as_bytes()),
                body.len()
            )
            .into_bytes()
        };
        let body = String::from_utf8(good.clone())
            .unwrap()
            .split_once('\n')
            .unwrap()
            .1
            .to_string();
        let damages: Vec<(Vec<u8>, &str)> = vec![
            (
                {
                    let mut b = good.clone();
                    let i = b.len() - 2;
                    b[i] ^= 0x01;
                    b
                },
                "checksum mismatch",
            ),
            (good[..good.len() - 3].to_vec(), "bytes"),
            (b"{}".to_vec(), "no header line"),
            (b"something else\n{}".to_vec(), "unexpected header"),
            (reframed(&body.replace("a\nb\n", "b\na\n")), "not sorted"),
            (reframed(&body.replace("a\nb\n", "a\n")), "the metadata says"),
            (
                reframed(&body.replace("\"demo\"", "\"other\"")),
                "of app \"other\"",
            ),
        ];
        for (bytes, reason) in damages {
            std::fs::write(&file, &bytes).unwrap();
            let err = TagStore::open_in(&dir, false, &apps(10, 10))
                .err()
                .expect("refused")
                .to_string();
            assert!(err.contains(&file.display().to_string()), "{err}");
            assert!(err.contains(reason), "{reason}: {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_save_changes_nothing() {
        let dir = scratch("failed-save");
        let store = TagStore::open_in(&dir, true, &apps(10, 10)).unwrap();
        let (kept, _) = store.create("demo", "kept", ids(&["a"]), 1).unwrap();
        // The temp file's name is taken by a directory: the write fails.
        let blocker = dir
            .join("tags")
            .join("demo")
            .join(format!(".{}.tmp", file_name(kept.id)));
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let err = store
            .replace("demo", "kept", None, Some(ids(&["b"])), 2)
            .unwrap_err();
        assert!(matches!(err, TagError::Io { .. }), "{err}");
        assert!(!err.is_disk_full());
        assert_eq!(users_of(&store, "demo", "kept"), ["a"]);
        assert_eq!(store.get("demo", "kept").unwrap().updated_at_ms, 1);
        std::fs::remove_dir_all(&blocker).unwrap();
        drop(store);
        let store = TagStore::open_in(&dir, true, &apps(10, 10)).unwrap();
        assert_eq!(users_of(&store, "demo", "kept"), ["a"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = scratch("temp");
        drop(TagStore::open_in(&dir, false, &apps(10, 10)).unwrap());
        let temp = dir.join("tags").join("demo").join(".7.tag.tmp");
        std::fs::write(&temp, b"half a file").unwrap();
        drop(TagStore::open_in(&dir, false, &apps(10, 10)).unwrap());
        assert!(!temp.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_is_the_ids_one_a_line() {
        let tag = Tag {
            id: 5,
            name: "vip".into(),
            created_at_ms: 1,
            updated_at_ms: 2,
            user_count: 2,
            users: TagUsers::new(Vec::new()),
        };
        let bytes = encode_file("demo", &tag, &ids(&["alice", "bob"]));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.ends_with("}\nalice\nbob\n"), "{text}");
        let file = decode_file(&bytes, "demo").unwrap();
        assert_eq!(
            (file.name(), file.ids.as_slice()),
            ("vip", ["alice", "bob"].as_slice())
        );
        let empty = encode_file("demo", &tag, &[]);
        assert!(decode_file(&empty, "demo").unwrap().ids.is_empty());
    }
}
