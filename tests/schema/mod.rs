//! A validator for the subset of OpenAPI 3.0 schema keywords that
//! `docs/openapi.yaml` uses, so the contract test needs no JSON-schema
//! crate: `type`, `properties`, `required`, `additionalProperties`, `items`,
//! `enum`, `oneOf`, `anyOf`, `allOf`, `not`, `$ref` (local), `minimum`,
//! `maximum`, `minLength`, `maxLength`, `minItems`, `maxItems`,
//! `minProperties`, `maxProperties` and `nullable`; annotations and `x-`
//! extensions are skipped. Any other keyword panics, so the spec cannot
//! start relying on one this validator would silently ignore;
//! `check_keywords` walks a whole schema for that without a value to
//! validate.

use serde_json::{Map, Value};

/// Keywords that constrain a value, and so need code here.
const ASSERTIONS: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "oneOf",
    "anyOf",
    "allOf",
    "not",
    "$ref",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "nullable",
];

/// Keywords that only describe (OpenAPI 3.0 §4.7.24): never a reason to refuse.
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "example",
    "default",
    "format",
    "readOnly",
    "writeOnly",
    "deprecated",
];

/// Validates `value` against `schema`, resolving `$ref`s in `root` (the
/// whole spec). Returns every violation found, each with its JSON path.
pub fn validate(root: &Value, schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    Validator { root }.check(schema, value, "$", &mut errors);
    errors
}

/// Panics on a keyword this module does not implement, anywhere in `schema`
/// (following `$ref`s once each).
pub fn check_keywords(root: &Value, schema: &Value, at: &str) {
    let mut seen = std::collections::HashSet::new();
    walk_keywords(root, schema, at, &mut seen);
}

fn walk_keywords(root: &Value, schema: &Value, at: &str, seen: &mut std::collections::HashSet<String>) {
    let Some(object) = schema.as_object() else {
        panic!("{at}: a schema must be an object, not {schema}");
    };
    for (key, sub) in object {
        known_keyword(key, object, at);
        let here = format!("{at}/{key}");
        match key.as_str() {
            "$ref" => {
                let target = sub
                    .as_str()
                    .unwrap_or_else(|| panic!("{here}: $ref must be a string"));
                if seen.insert(target.to_string()) {
                    walk_keywords(root, resolve(root, target), target, seen);
                }
            }
            "properties" => {
                for (name, property) in sub.as_object().expect("properties is an object") {
                    walk_keywords(root, property, &format!("{here}/{name}"), seen);
                }
            }
            "items" | "not" => walk_keywords(root, sub, &here, seen),
            "additionalProperties" if sub.is_object() => walk_keywords(root, sub, &here, seen),
            "oneOf" | "anyOf" | "allOf" => {
                for (i, branch) in sub.as_array().expect("a list of schemas").iter().enumerate() {
                    walk_keywords(root, branch, &format!("{here}/{i}"), seen);
                }
            }
            _ => {}
        }
    }
}

fn known_keyword(key: &str, schema: &Map<String, Value>, at: &str) {
    if key.starts_with("x-") || ANNOTATIONS.contains(&key) {
        return;
    }
    assert!(
        ASSERTIONS.contains(&key),
        "{at}: schema keyword {key:?} is not supported by tests/schema; implement it (with a unit test) or do not use it"
    );
    if key == "$ref" {
        let siblings: Vec<&String> = schema
            .keys()
            .filter(|k| *k != "$ref" && !k.starts_with("x-") && *k != "description")
            .collect();
        assert!(
            siblings.is_empty(),
            "{at}: {siblings:?} beside $ref are ignored in OpenAPI 3.0; put them in the referenced schema"
        );
    }
}

/// The schema a local `$ref` (`#/components/schemas/X`) points to.
pub fn resolve<'a>(root: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are supported, not {reference:?}"));
    root.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference:?} points at nothing"))
}

/// `schema` with `$ref`s followed until it is not one.
pub fn deref<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        schema = resolve(root, reference);
    }
    schema
}

struct Validator<'a> {
    root: &'a Value,
}

impl Validator<'_> {
    fn check(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(schema) = schema.as_object() else {
            panic!("{at}: a schema must be an object, not {schema}");
        };
        for key in schema.keys() {
            known_keyword(key, schema, at);
        }
        if let Some(reference) = schema.get("$ref") {
            let target = resolve(self.root, reference.as_str().expect("$ref is a string"));
            return self.check(target, value, at, errors);
        }
        if value.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
            return;
        }
        let mut fail = |message: String| errors.push(format!("{at}: {message}"));
        if let Some(kind) = schema.get("type") {
            let kind = kind.as_str().expect("type is a string in OpenAPI 3.0");
            if !has_type(value, kind) {
                fail(format!("{} is not of type {kind}", short(value)));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum") {
            let allowed = allowed.as_array().expect("enum is a list");
            if !allowed.iter().any(|a| same(a, value)) {
                fail(format!(
                    "{} is not one of {}",
                    short(value),
                    Value::Array(allowed.clone())
                ));
            }
        }
        let bound = |name: &str| schema.get(name).map(|b| b.as_f64().expect("a numeric bound"));
        let count = |name: &str| {
            schema
                .get(name)
                .map(|b| b.as_u64().expect("a count is a non-negative integer") as usize)
        };
        if let Some(n) = value.as_f64() {
            if let Some(min) = bound("minimum").filter(|min| n < *min) {
                fail(format!("{n} is below the minimum {min}"));
            }
            if let Some(max) = bound("maximum").filter(|max| n > *max) {
                fail(format!("{n} is above the maximum {max}"));
            }
        }
        if let Some(text) = value.as_str() {
            // JSON Schema counts characters (code points), not bytes.
            let chars = text.chars().count();
            if let Some(min) = count("minLength").filter(|min| chars < *min) {
                fail(format!("{chars} characters, fewer than minLength {min}"));
            }
            if let Some(max) = count("maxLength").filter(|max| chars > *max) {
                fail(format!("{chars} characters, more than maxLength {max}"));
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(min) = count("minItems").filter(|min| items.len() < *min) {
                fail(format!("{} items, fewer than minItems {min}", items.len()));
            }
            if let Some(max) = count("maxItems").filter(|max| items.len() > *max) {
                fail(format!("{} items, more than maxItems {max}", items.len()));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    self.check(item_schema, item, &format!("{at}[{i}]"), errors);
                }
            }
        }
        if let Some(object) = value.as_object() {
            self.check_object(schema, object, at, errors);
        }
        if let Some(forbidden) = schema.get("not") {
            let mut ignored = Vec::new();
            self.check(forbidden, value, at, &mut ignored);
            if ignored.is_empty() {
                errors.push(format!("{at}: {} matches the schema under not", short(value)));
            }
        }
        for keyword in ["oneOf", "anyOf", "allOf"] {
            let Some(branches) = schema.get(keyword) else {
                continue;
            };
            let branches = branches.as_array().expect("a list of schemas");
            let results: Vec<Vec<String>> = branches
                .iter()
                .map(|branch| {
                    let mut branch_errors = Vec::new();
                    self.check(branch, value, at, &mut branch_errors);
                    branch_errors
                })
                .collect();
            let passed = results.iter().filter(|r| r.is_empty()).count();
            let ok = match keyword {
                "oneOf" => passed == 1,
                "anyOf" => passed >= 1,
                _ => passed == branches.len(),
            };
            if !ok {
                let reasons: Vec<String> = results.into_iter().flatten().collect();
                errors.push(format!(
                    "{at}: {} matches {passed} of {} {keyword} branches ({})",
                    short(value),
                    branches.len(),
                    reasons.join("; ")
                ));
            }
        }
    }

    fn check_object(
        &self,
        schema: &Map<String, Value>,
        object: &Map<String, Value>,
        at: &str,
        errors: &mut Vec<String>,
    ) {
        let properties = schema.get("properties").and_then(Value::as_object);
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name.as_str().expect("required lists names");
            if !object.contains_key(name) {
                errors.push(format!("{at}: required property {name:?} is missing"));
            }
        }
        let count = |name: &str| schema.get(name).and_then(Value::as_u64).map(|n| n as usize);
        if let Some(min) = count("minProperties").filter(|min| object.len() < *min) {
            errors.push(format!(
                "{at}: {} properties, fewer than minProperties {min}",
                object.len()
            ));
        }
        if let Some(max) = count("maxProperties").filter(|max| object.len() > *max) {
            errors.push(format!(
                "{at}: {} properties, more than maxProperties {max}",
                object.len()
            ));
        }
        for (name, value) in object {
            let here = format!("{at}.{name}");
            match (
                properties.and_then(|p| p.get(name)),
                schema.get("additionalProperties"),
            ) {
                (Some(property), _) => self.check(property, value, &here, errors),
                (None, Some(Value::Bool(false))) => {
                    errors.push(format!("{at}: property {name:?} is not in the schema"))
                }
                (None, Some(extra @ Value::Object(_))) => self.check(extra, value, &here, errors),
                (None, _) => {}
            }
        }
    }
}

fn has_type(value: &Value, kind: &str) -> bool {
    match kind {
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "number" => value.is_number(),
        // 2.0 is an integer to JSON Schema; serde_json keeps it an f64.
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        other => panic!("type {other:?} is not an OpenAPI 3.0 type (use nullable for null)"),
    }
}

/// JSON equality, with numbers compared by value (1 and 1.0 are equal).
fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 80 {
        format!("{}…", text.chars().take(80).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(schema: Value, value: Value) -> Vec<String> {
        let root = json!({"components": {"schemas": {"Name": {"type": "string", "maxLength": 3}}}});
        validate(&root, &schema, &value)
    }

    fn ok(schema: Value, value: Value) {
        let found = errors(schema.clone(), value.clone());
        assert!(found.is_empty(), "{value} against {schema}: {found:?}");
    }

    fn bad(schema: Value, value: Value, needle: &str) {
        let found = errors(schema.clone(), value.clone());
        assert!(
            found.iter().any(|e| e.contains(needle)),
            "{value} against {schema}: wanted {needle:?} in {found:?}"
        );
    }

    #[test]
    fn types() {
        ok(json!({"type": "integer"}), json!(3));
        ok(json!({"type": "integer"}), json!(3.0));
        bad(json!({"type": "integer"}), json!(3.5), "not of type integer");
        bad(json!({"type": "integer"}), json!("3"), "not of type integer");
        ok(json!({"type": "number"}), json!(3.5));
        ok(json!({"type": "string"}), json!(""));
        bad(json!({"type": "string"}), json!(null), "not of type string");
        ok(json!({"type": "string", "nullable": true}), json!(null));
        bad(json!({"type": "boolean"}), json!(0), "not of type boolean");
        bad(json!({"type": "object"}), json!([]), "not of type object");
        bad(json!({"type": "array"}), json!({}), "not of type array");
    }

    #[test]
    fn bounds_and_enums() {
        let schema = json!({"type": "integer", "minimum": 1, "maximum": 10});
        ok(schema.clone(), json!(1));
        ok(schema.clone(), json!(10));
        bad(schema.clone(), json!(0), "below the minimum");
        bad(schema, json!(11), "above the maximum");
        let schema = json!({"type": "string", "minLength": 1, "maxLength": 2});
        ok(schema.clone(), json!("éé"));
        bad(schema.clone(), json!(""), "fewer than minLength");
        bad(schema, json!("abc"), "more than maxLength");
        ok(json!({"enum": [0, 1]}), json!(1.0));
        bad(json!({"enum": ["a", "b"]}), json!("c"), "not one of");
    }

    #[test]
    fn objects() {
        let schema = json!({
            "type": "object", "required": ["a"], "additionalProperties": false,
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
        });
        ok(schema.clone(), json!({"a": "x", "b": 1}));
        bad(schema.clone(), json!({"b": 1}), "\"a\" is missing");
        bad(
            schema.clone(),
            json!({"a": "x", "c": 1}),
            "\"c\" is not in the schema",
        );
        bad(schema, json!({"a": 1}), "$.a: 1 is not of type string");
        let map = json!({"type": "object", "minProperties": 1, "maxProperties": 2, "additionalProperties": {"type": "string"}});
        ok(map.clone(), json!({"k": "v"}));
        bad(map.clone(), json!({}), "fewer than minProperties");
        bad(
            map.clone(),
            json!({"a": "1", "b": "2", "c": "3"}),
            "more than maxProperties",
        );
        bad(map, json!({"k": 1}), "$.k: 1 is not of type string");
        // Without additionalProperties, unknown properties are allowed.
        ok(json!({"type": "object", "properties": {}}), json!({"any": [1]}));
    }

    #[test]
    fn arrays() {
        let schema = json!({"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer"}});
        ok(schema.clone(), json!([1, 2]));
        bad(schema.clone(), json!([]), "fewer than minItems");
        bad(schema.clone(), json!([1, 2, 3]), "more than maxItems");
        bad(schema, json!([1, "x"]), "$[1]: \"x\" is not of type integer");
    }

    #[test]
    fn combinators_and_refs() {
        let one_of = json!({"oneOf": [{"type": "integer"}, {"type": "number"}]});
        bad(one_of.clone(), json!(1), "matches 2 of 2 oneOf");
        ok(one_of.clone(), json!(1.5));
        bad(one_of, json!("x"), "matches 0 of 2 oneOf");
        let any_of = json!({"anyOf": [{"type": "integer"}, {"type": "number"}]});
        ok(any_of.clone(), json!(1));
        bad(any_of, json!(true), "matches 0 of 2 anyOf");
        let all_of = json!({"allOf": [{"type": "integer"}, {"minimum": 2}]});
        ok(all_of.clone(), json!(2));
        bad(all_of, json!(1), "matches 1 of 2 allOf");
        let not = json!({"type": "object", "not": {"anyOf": [{"required": ["a"]}, {"required": ["b"]}]}});
        ok(not.clone(), json!({"c": 1}));
        bad(not.clone(), json!({"b": 1}), "matches the schema under not");
        // Only the first branch: the second's not refuses "a".
        ok(
            json!({"oneOf": [{"required": ["a"]}, {"required": ["b"], "not": {"required": ["a"]}}]}),
            json!({"a": 1, "b": 2}),
        );
        let reference = json!({"$ref": "#/components/schemas/Name"});
        ok(reference.clone(), json!("abc"));
        bad(reference, json!("abcd"), "more than maxLength 3");
    }

    #[test]
    fn annotations_and_extensions_are_skipped() {
        ok(
            json!({"type": "string", "description": "d", "example": 5, "format": "f", "x-result-code": {"type": "3028"}}),
            json!("s"),
        );
    }

    #[test]
    #[should_panic(expected = "schema keyword \"pattern\" is not supported")]
    fn an_unsupported_keyword_panics_when_validating() {
        errors(json!({"type": "string", "pattern": "^a$"}), json!("a"));
    }

    #[test]
    #[should_panic(expected = "schema keyword \"uniqueItems\" is not supported")]
    fn an_unsupported_keyword_panics_in_a_branch_never_taken() {
        let root = json!({});
        check_keywords(
            &root,
            &json!({"oneOf": [{"type": "string"}, {"not": {"type": "array", "uniqueItems": true}}]}),
            "$",
        );
    }

    #[test]
    #[should_panic(expected = "beside $ref are ignored")]
    fn a_sibling_of_ref_panics() {
        errors(
            json!({"$ref": "#/components/schemas/Name", "maxLength": 1}),
            json!("a"),
        );
    }
}
