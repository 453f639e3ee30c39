//! Decoding request fields the way the reference's callers send them:
//! integers as numbers or numeric strings, maps and lists as JSON or as
//! strings holding JSON, and a wrongly typed field answered with its own
//! result code rather than a parse error. Shared by the push and template
//! request parsers; pure.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::auth::AuthenticatedApp;
use super::result_code::{ApiError, ResultCode};

/// The body as JSON of type `T`: 3031 when it is not UTF-8, 3028 when it is
/// not the expected JSON.
pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::new(ResultCode::RequestShouldBeUtf8, "the request body must be UTF-8"))?;
    serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            ResultCode::InvalidParam,
            format!("the body is not a JSON object: {e}"),
        )
    })
}

/// The app named by appId and workspaceId, if the caller may act for it:
/// 3003 when either is missing, 8014 (or -1, 3032) from `check_app` when the
/// caller may not act for that app, 3007 when the app is in another
/// workspace.
pub(super) fn app(caller: &AuthenticatedApp, app_id: &str, workspace_id: &str) -> Result<Arc<str>, ApiError> {
    if app_id.is_empty() || workspace_id.is_empty() {
        return Err(ApiError::new(
            ResultCode::NeedAppIdWorkspaceId,
            "appId and workspaceId are required",
        ));
    }
    let app = caller.check_app(app_id)?;
    if *app.workspace_id != *workspace_id {
        return Err(ApiError::new(
            ResultCode::AppIdWrong,
            "no such appId in that workspaceId",
        ));
    }
    Ok(app.id.clone())
}

/// The reference's SDKs send maps either as JSON objects or as strings that
/// hold one; both are accepted. `Err(())` when present but neither.
pub(super) fn map_or_json_string(field: Option<Field>) -> Result<Option<Vec<(String, Field)>>, ()> {
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

/// A list, or a string holding one. `Err(())` when present but neither.
pub(super) fn list_or_json_string(field: Option<Field>) -> Result<Option<Vec<Field>>, ()> {
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::List(items)) => Ok(Some(items)),
        Some(Field::Str(s)) if s.trim().is_empty() => Ok(None),
        Some(Field::Str(s)) => match serde_json::from_str(&s) {
            Ok(Field::List(items)) => Ok(Some(items)),
            _ => Err(()),
        },
        Some(_) => Err(()),
    }
}

/// A map of strings (numbers and booleans are written as text), as
/// `extendedParams` and `templateKeyValue` are. `Err(())` when the field is
/// not a map, or a value is null, a list or a map.
pub(super) fn string_map(field: Option<Field>) -> Result<HashMap<String, String>, ()> {
    let Some(map) = map_or_json_string(field)? else {
        return Ok(HashMap::new());
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Field::Str(s) => Ok((k, s)),
            Field::Int(n) => Ok((k, n.to_string())),
            Field::Float(n) => Ok((k, n.to_string())),
            Field::Bool(b) => Ok((k, b.to_string())),
            _ => Err(()),
        })
        .collect()
}

pub(super) fn string_field(field: &Option<Field>, name: &str) -> Result<Option<String>, ApiError> {
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
pub(super) fn int_field(field: &Option<Field>, name: &str) -> Result<Option<i64>, ApiError> {
    let invalid = || ApiError::new(ResultCode::InvalidParam, format!("{name} must be an integer"));
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Int(n)) => Ok(Some(*n)),
        Some(Field::Str(s)) if s.trim().is_empty() => Ok(None),
        Some(Field::Str(s)) => s.trim().parse().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

/// One of `allowed`; absent is 0.
pub(super) fn small_enum(field: &Option<Field>, name: &str, allowed: &[u32]) -> Result<u32, ApiError> {
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

/// `silent`: a boolean, or 0 / 1.
pub(super) fn flag_field(field: &Option<Field>, name: &str) -> Result<bool, ApiError> {
    match field {
        Some(Field::Bool(b)) => Ok(*b),
        other => Ok(small_enum(other, name, &[0, 1])? == 1),
    }
}

/// `imageUrls`/`iconUrls`: a JSON string (as the reference sends) or an
/// object, passed to the device as JSON text.
pub(super) fn json_text_field(field: Option<Field>, name: &str) -> Result<String, ApiError> {
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
pub(super) enum Field {
    Null,
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Map(Vec<(String, Field)>),
    List(Vec<Field>),
}

impl Field {
    fn into_json(self) -> serde_json::Value {
        match self {
            Field::Null => serde_json::Value::Null,
            Field::Str(s) => s.into(),
            Field::Int(n) => n.into(),
            Field::Float(n) => n.into(),
            Field::Bool(b) => b.into(),
            Field::Map(m) => {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k, v.into_json())).collect())
            }
            Field::List(items) => serde_json::Value::Array(items.into_iter().map(Field::into_json).collect()),
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
            // Bounded by the request body limit (and serde_json's nesting
            // limit), like every other field.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Field, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4).min(128));
                while let Some(item) = seq.next_element::<Field>()? {
                    items.push(item);
                }
                Ok(Field::List(items))
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

/// A positive integer query parameter, at most `max` (3028 otherwise;
/// `usize::MAX` for no limit of its own).
pub(super) fn page_param(
    query: &HashMap<String, String>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().ok().filter(|n| (1..=max).contains(n)).ok_or_else(|| {
            let reason = if max == usize::MAX {
                format!("{name} must be a positive integer")
            } else {
                format!("{name} must be an integer from 1 to {max}")
            };
            ApiError::new(ResultCode::InvalidParam, reason)
        }),
    }
}

/// Which page of a list a request asks for: `pageNumber` from 1,
/// `pageSize` at most a limit of the list's own (3028 otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Page {
    pub number: usize,
    pub size: usize,
}

impl Page {
    pub fn of_query(
        query: &HashMap<String, String>,
        default_size: usize,
        max_size: usize,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            number: page_param(query, "pageNumber", 1, usize::MAX)?,
            size: page_param(query, "pageSize", default_size, max_size)?,
        })
    }

    /// This page of `all`.
    pub fn of<'a, T>(&self, all: &'a [T]) -> impl Iterator<Item = &'a T> {
        all.iter()
            .skip((self.number - 1).saturating_mul(self.size))
            .take(self.size)
    }

    /// The answer to a list request: `total`, the page, and this page of
    /// `all` as JSON under `name`.
    pub fn listing<T>(
        &self,
        all: &[T],
        name: &str,
        to_json: impl Fn(&T) -> serde_json::Value,
    ) -> serde_json::Value {
        let mut data = serde_json::json!({
            "total": all.len(), "pageNumber": self.number, "pageSize": self.size,
        });
        data[name] = self.of(all).map(to_json).collect();
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(json: &str) -> Option<Field> {
        Some(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn maps_and_lists_may_come_as_strings() {
        let map = string_map(field(r#""{\"a\":\"1\",\"n\":2,\"b\":true}""#)).unwrap();
        assert_eq!(
            (map["a"].as_str(), map["n"].as_str(), map["b"].as_str()),
            ("1", "2", "true")
        );
        assert_eq!(string_map(field(r#"{"a":{"b":1}}"#)), Err(()));
        assert_eq!(string_map(field(r#""not json""#)), Err(()));
        assert_eq!(string_map(None), Ok(HashMap::new()));
        assert_eq!(
            list_or_json_string(field(r#""[1,\"x\"]""#)),
            Ok(Some(vec![Field::Int(1), Field::Str("x".into())]))
        );
        assert_eq!(list_or_json_string(field("[]")), Ok(Some(vec![])));
        assert_eq!(list_or_json_string(field("{}")), Err(()));
    }

    #[test]
    fn integers_and_flags() {
        assert_eq!(int_field(&field(r#"" 42 ""#), "n"), Ok(Some(42)));
        assert_eq!(int_field(&field("1.5"), "n").unwrap_err().code.code(), 3028);
        assert_eq!(flag_field(&field("true"), "silent"), Ok(true));
        assert_eq!(flag_field(&field("\"1\""), "silent"), Ok(true));
        assert_eq!(flag_field(&None, "silent"), Ok(false));
        assert!(flag_field(&field("2"), "silent").is_err());
    }

    #[test]
    fn page_parameters() {
        let q = |v: &str| HashMap::from([("pageSize".to_string(), v.to_string())]);
        assert_eq!(page_param(&HashMap::new(), "pageSize", 100, 500), Ok(100));
        assert_eq!(page_param(&q("500"), "pageSize", 100, 500), Ok(500));
        assert!(page_param(&q("0"), "pageSize", 100, 500).is_err());
        assert!(page_param(&q("501"), "pageSize", 100, 500).is_err());
        assert!(page_param(&q("x"), "pageSize", 100, 500).is_err());
        let reason = |v: &str, max| page_param(&q(v), "pageSize", 1, max).unwrap_err().reason;
        assert_eq!(reason("0", 500), "pageSize must be an integer from 1 to 500");
        assert_eq!(reason("x", usize::MAX), "pageSize must be a positive integer");
        assert_eq!(reason("-1", usize::MAX), "pageSize must be a positive integer");
    }

    #[test]
    fn a_page_of_a_list() {
        let q = HashMap::from([
            ("pageNumber".to_string(), "2".to_string()),
            ("pageSize".to_string(), "2".to_string()),
        ]);
        let page = Page::of_query(&q, 10, 100).unwrap();
        assert_eq!(page.of(&[1, 2, 3, 4, 5]).collect::<Vec<_>>(), [&3, &4]);
        let data = page.listing(&[1, 2, 3], "n", |n| (*n).into());
        assert_eq!(
            data,
            serde_json::json!({"total": 3, "pageNumber": 2, "pageSize": 2, "n": [3]})
        );
        assert_eq!(
            Page::of_query(&HashMap::new(), 10, 100).unwrap(),
            Page { number: 1, size: 10 }
        );
    }
}
