//! `docs/openapi.yaml` against the server. Without a daemon: the spec's
//! paths and methods are exactly `api::ROUTES` and `admin::ROUTES` (the
//! routers' only source), its result code table is exactly
//! `ResultCode::ALL` with the same names and HTTP statuses, every
//! operation's codes and statuses agree with that table, and its schemas use
//! only keywords `schema` implements. Against the real daemon: every
//! method on every path is served or refused (405) as the spec says, and
//! every request example (its `x-example-tokens` replaced by the tokens of
//! two connected devices, its `x-example-times` by times relative to now,
//! its `x-example-task-id` by the task id of a push answered before), every
//! bad request derived from one (a required property missing, a value
//! breaking a `type`, `enum`, length, count or bound, also of the body's
//! `oneOf`/`anyOf` branches the example matches; a body mixing two `oneOf`
//! branches; a path naming nothing, by the parameter's `x-not-found`), an
//! unsigned request and an oversized body, gets an answer whose status and
//! body the spec's response schemas accept, with the result code the spec's
//! `x-result-code` (or `x-not-found`) names for that violation.

mod common;
mod schema;

use std::collections::{BTreeMap, BTreeSet};

use common::Daemon;
use ringpush::api::result_code::ResultCode;
use serde_json::{json, Map, Value};

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
/// The methods probed on every path (405 unless the spec has them).
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];
/// Keywords whose violation the test derives from an example's value; the
/// value of a property absent from the example is not varied, because the
/// server may read it only together with others (`bindPeriod` only with
/// `pushStatus` 0).
const LIMITS: [&str; 9] = [
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "enum",
];

/// Stands for a path parameter's value that is replaced by `%FF` once
/// encoded.
const NOT_UTF8: &str = "not-utf-8";

fn spec() -> Value {
    let text = std::fs::read_to_string(SPEC).expect("read docs/openapi.yaml");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("docs/openapi.yaml: {e}"))
}

/// One operation of the spec.
struct Operation<'a> {
    method: &'static str,
    path: &'a str,
    /// The path item (its parameters apply to every operation).
    item: &'a Value,
    op: &'a Value,
    /// On the admin listener: a path item with its own `servers`.
    admin: bool,
}

impl Operation<'_> {
    fn id(&self) -> &str {
        self.op["operationId"].as_str().unwrap_or("?")
    }

    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }
}

fn operations(spec: &Value) -> Vec<Operation<'_>> {
    let paths = spec["paths"].as_object().expect("paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                ops.push(Operation {
                    method,
                    path,
                    item,
                    op,
                    admin: item.get("servers").is_some(),
                });
            }
        }
    }
    ops
}

/// The result code table: code → (name, HTTP status, oversized-body status).
fn code_table(spec: &Value) -> Vec<(String, String, u16, Option<u16>)> {
    spec["components"]["schemas"]["ResultCode"]["x-result-codes"]
        .as_array()
        .expect("components.schemas.ResultCode.x-result-codes")
        .iter()
        .map(|entry| {
            let text = |key: &str| {
                entry[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("{entry}: {key}"))
                    .to_string()
            };
            let status = |key: &str| entry.get(key).map(|s| s.as_u64().expect("a status") as u16);
            (
                text("code"),
                text("name"),
                status("http-status").expect("http-status"),
                status("oversized-body-http-status"),
            )
        })
        .collect()
}

#[test]
fn the_spec_has_exactly_the_routes_served() {
    let spec = spec();
    let ops = operations(&spec);
    let set = |admin: bool| -> BTreeSet<(String, String)> {
        ops.iter()
            .filter(|o| o.admin == admin)
            .map(|o| (o.method.to_uppercase(), o.path.to_string()))
            .collect()
    };
    let api: BTreeSet<(String, String)> = ringpush::api::ROUTES
        .iter()
        .map(|r| (r.method.as_str().to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        api.len(),
        ringpush::api::ROUTES.len(),
        "api::ROUTES lists a route twice"
    );
    let admin: BTreeSet<(String, String)> = ringpush::admin::ROUTES
        .iter()
        .map(|path| ("GET".to_string(), path.to_string()))
        .collect();
    for (listener, served, described) in [("API", api, set(false)), ("admin", admin, set(true))] {
        let undocumented: Vec<_> = served.difference(&described).collect();
        let unserved: Vec<_> = described.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "{listener} listener: served but not in docs/openapi.yaml: {undocumented:?}; \
             in docs/openapi.yaml but not served: {unserved:?}"
        );
    }
    let ids: Vec<&str> = ops.iter().map(|o| o.id()).collect();
    let unique: BTreeSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "operationIds must be unique: {ids:?}");
}

/// The route tables are the routers' only source: a `.route(` added beside
/// the fold would serve an endpoint no test knows of.
#[test]
fn the_routers_are_built_from_the_route_tables_alone() {
    for file in ["src/api/mod.rs", "src/admin.rs"] {
        let text = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (call, want) in [
            (".route(", 1),
            (".route_service(", 0),
            (".nest(", 0),
            (".merge(", 0),
        ] {
            assert_eq!(
                code.matches(call).count(),
                want,
                "{file}: {call} appears other than in the fold over ROUTES; add routes to ROUTES (and docs/openapi.yaml) instead"
            );
        }
    }
}

#[test]
fn the_result_code_table_is_the_servers() {
    let spec = spec();
    let table = code_table(&spec);
    let server: Vec<(String, String, u16)> = ResultCode::ALL
        .iter()
        .map(|c| (c.code().to_string(), c.name().to_string(), c.http_status()))
        .collect();
    let described: Vec<(String, String, u16)> = table
        .iter()
        .map(|(c, n, s, _)| (c.clone(), n.clone(), *s))
        .collect();
    assert_eq!(
        described, server,
        "x-result-codes must list ResultCode::ALL in order, with its names and HTTP statuses"
    );
    let codes: Vec<Value> = table.iter().map(|(c, ..)| json!(c)).collect();
    assert_eq!(
        spec["components"]["schemas"]["ResultCode"]["enum"],
        Value::Array(codes),
        "ResultCode's enum must be the table's codes"
    );
    // Only the body limit's code answers with a second status: 413.
    let oversized: Vec<_> = table
        .iter()
        .filter_map(|(c, _, _, o)| o.map(|o| (c.as_str(), o)))
        .collect();
    assert_eq!(
        oversized,
        [(ResultCode::MsgPayloadTooLong.code().to_string().as_str(), 413)]
    );
}

/// Each API operation lists the codes it answers; its responses are then
/// exactly 200 and those codes' statuses.
#[test]
fn every_operation_documents_its_codes_and_their_statuses() {
    let spec = spec();
    let table: BTreeMap<String, (u16, Option<u16>)> = code_table(&spec)
        .into_iter()
        .map(|(c, _, s, o)| (c, (s, o)))
        .collect();
    for op in operations(&spec).iter().filter(|o| !o.admin) {
        let codes = op.op["x-result-codes"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: x-result-codes", op.name()));
        let mut statuses = BTreeSet::from(["200".to_string()]);
        for code in codes {
            let code = code
                .as_str()
                .unwrap_or_else(|| panic!("{}: codes are strings", op.name()));
            let (status, oversized) = table
                .get(code)
                .unwrap_or_else(|| panic!("{}: {code} is not in the result code table", op.name()));
            statuses.insert(status.to_string());
            statuses.extend(oversized.map(|s| s.to_string()));
        }
        // A path naming nothing: its code, with its own status if given.
        for p in parameters(&spec, op) {
            let Some(not_found) = p.get("x-not-found") else {
                continue;
            };
            let code = not_found["code"].as_str().expect("x-not-found.code");
            assert!(
                codes.contains(&json!(code)),
                "{}: x-not-found's {code} is not in its x-result-codes",
                op.name()
            );
            assert!(
                not_found["example"].is_string(),
                "{}: x-not-found.example",
                op.name()
            );
            if let Some(status) = not_found.get("http-status") {
                statuses.insert(status.as_u64().expect("a status").to_string());
            }
        }
        let described: BTreeSet<String> = op.op["responses"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            described,
            statuses,
            "{}: responses vs the statuses of its x-result-codes",
            op.name()
        );
        for must in ["-1", "3050", "8014"] {
            assert!(
                codes.contains(&json!(must)),
                "{}: every API operation can answer {must}",
                op.name()
            );
        }
        assert!(
            op.op["x-max-body-bytes"].is_u64(),
            "{}: x-max-body-bytes",
            op.name()
        );
    }
}

#[test]
fn the_spec_uses_only_supported_schema_keywords() {
    let spec = spec();
    fn walk(root: &Value, value: &Value, at: &str, found: &mut usize) {
        match value {
            Value::Object(map) => {
                for (key, sub) in map {
                    let here = format!("{at}/{key}");
                    if key == "schema" {
                        schema::check_keywords(root, sub, &here);
                        *found += 1;
                    } else {
                        walk(root, sub, &here, found);
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(root, item, &format!("{at}/{i}"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = 0;
    walk(&spec, &spec["paths"], "#/paths", &mut found);
    walk(
        &spec,
        &spec["components"]["responses"],
        "#/components/responses",
        &mut found,
    );
    walk(
        &spec,
        &spec["components"]["parameters"],
        "#/components/parameters",
        &mut found,
    );
    for (name, s) in spec["components"]["schemas"].as_object().unwrap() {
        schema::check_keywords(&spec, s, &format!("#/components/schemas/{name}"));
        found += 1;
    }
    assert!(found > 50, "only {found} schemas found: is the walk broken?");
}

/// What a request must get.
#[derive(Clone, Debug)]
enum Expect {
    /// HTTP 200, `ResultCode` "OK".
    Accepted,
    /// Refused with this code.
    Code(String),
    /// Refused, with any code the operation lists.
    Refused,
    /// Whatever the spec allows.
    Valid,
}

struct Request {
    what: String,
    method: String,
    target: String,
    body: String,
    signed: bool,
    expect: Expect,
    /// The status the answer must have instead of its code's own: an
    /// oversized body's, or a path's `x-not-found` `http-status`.
    status: Option<u16>,
}

/// The contract run: the daemon, the spec, and every failure found.
struct Run<'a> {
    d: &'a Daemon,
    spec: &'a Value,
    tokens: Vec<String>,
    example_tokens: Vec<String>,
    /// `x-example-times`: (the example's text, offset from now in ms).
    example_times: Vec<(String, i64)>,
    /// `x-example-task-id`, and the last task id a push answered.
    example_task_id: String,
    task_id: Option<String>,
    table: BTreeMap<String, (u16, Option<u16>)>,
    failures: Vec<String>,
    checked: usize,
}

#[test]
fn the_daemon_answers_as_the_spec_says() {
    // The API does not depend on the device I/O backend: one is enough.
    let d = Daemon::start("epoll", "");
    // One device online and one that has gone away, so that pushes answer
    // both `delivering` and `queued`.
    let online = d.device("");
    let offline = d.device("").token.clone();
    // The token-update example rotates this one's token away.
    let rotated = d.device("").token.clone();
    let spec = spec();
    let mut run = Run {
        d: &d,
        spec: &spec,
        tokens: vec![online.token.clone(), offline, rotated],
        example_tokens: spec["x-example-tokens"]
            .as_array()
            .expect("x-example-tokens")
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect(),
        example_times: spec["x-example-times"]
            .as_array()
            .expect("x-example-times")
            .iter()
            .map(|t| {
                let example = t["example"].as_u64().expect("x-example-times: example");
                let offset = t["offset-ms"].as_i64().expect("x-example-times: offset-ms");
                (example.to_string(), offset)
            })
            .collect(),
        example_task_id: spec["x-example-task-id"]
            .as_str()
            .expect("x-example-task-id")
            .to_string(),
        task_id: None,
        table: code_table(&spec)
            .into_iter()
            .map(|(c, _, s, o)| (c, (s, o)))
            .collect(),
        failures: Vec::new(),
        checked: 0,
    };
    assert_eq!(run.tokens.len(), run.example_tokens.len());
    let mut ops = operations(&spec);
    // What the examples name (the template `prize`, the tag `女性`) exists
    // from the first operations, its creates, to the last, its deletes; the
    // recalls come just before the deletes, once the messages and the task
    // their examples name have been pushed. The rest keep the order of
    // `paths` as read (by path: `/v1/push/…` before `/v1/statistics` and
    // `/v1/tasks…`).
    ops.sort_by_key(|o| {
        if o.id().ends_with("_create") {
            0
        } else if o.id().ends_with("_delete") {
            3
        } else if o.id().starts_with("recall") {
            2
        } else {
            1
        }
    });
    for op in &ops {
        let before = run.checked;
        for request in requests(&run, op) {
            run.send(op, request);
        }
        assert!(run.checked - before >= 1, "{}: no request checked", op.name());
    }
    run.probe_methods(&ops);
    println!("{} answers checked against docs/openapi.yaml", run.checked);
    assert!(
        run.failures.is_empty(),
        "{} answers differ from docs/openapi.yaml:\n{}",
        run.failures.len(),
        run.failures.join("\n")
    );
    drop(online);
}

/// The requests for one operation: derived bad requests, an unsigned one
/// and an oversized one first (they change nothing), then the examples as
/// written and with real tokens.
fn requests(run: &Run, op: &Operation) -> Vec<Request> {
    let spec = run.spec;
    let method = op.method.to_uppercase();
    let params = parameters(spec, op);
    let query_example: BTreeMap<&str, String> = params
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?, scalar_text(p.get("example")?))))
        .collect();
    let target = |values: &BTreeMap<&str, String>| url(op.path, &params, values);
    let mut out = Vec::new();
    let request = |what: String, target: String, body: String, expect: Expect| Request {
        what,
        method: method.clone(),
        target,
        body,
        signed: true,
        expect,
        status: None,
    };
    if op.admin {
        out.push(request(
            "as documented".into(),
            target(&query_example),
            String::new(),
            Expect::Valid,
        ));
        return out;
    }
    let examples: Vec<(String, Value)> =
        match op.op.pointer("/requestBody/content/application~1json/examples") {
            Some(examples) => examples
                .as_object()
                .unwrap()
                .iter()
                .map(|(name, e)| (name.clone(), e["value"].clone()))
                .collect(),
            None => vec![("parameters".to_string(), Value::Null)],
        };
    assert!(!examples.is_empty(), "{}: no request examples", op.name());
    let body_text = |body: &Value| {
        if body.is_null() {
            String::new()
        } else {
            body.to_string()
        }
    };
    let (from, to) = run.placeholders(op, &query_example);
    let real = |v: &Value| substitute(v, &from, &to);
    let real_query: BTreeMap<&str, String> = query_example
        .iter()
        .map(|(k, v)| {
            (
                *k,
                substitute(&json!(v), &from, &to).as_str().unwrap().to_string(),
            )
        })
        .collect();

    let mut derived = 0;
    // Parameter violations.
    for p in &params {
        let name = p["name"].as_str().unwrap();
        if p["in"] == "path" {
            // Percent-decoding must give UTF-8; the answer to one that does
            // not is still an envelope.
            let mut values = real_query.clone();
            values.insert(name, NOT_UTF8.to_string());
            let not_utf8 = target(&values).replace(&encode(NOT_UTF8), "%FF");
            out.push(request(
                format!("not UTF-8 ({name})"),
                not_utf8,
                String::new(),
                Expect::Refused,
            ));
            // A value naming nothing (with the first example's body, so
            // that only the path is wrong).
            if let Some(not_found) = p.get("x-not-found") {
                let mut values = real_query.clone();
                values.insert(name, scalar_text(&not_found["example"]));
                let body = examples
                    .first()
                    .map(|(_, e)| body_text(&real(e)))
                    .unwrap_or_default();
                out.push(Request {
                    status: not_found
                        .get("http-status")
                        .map(|s| s.as_u64().expect("a status") as u16),
                    ..request(
                        format!("naming nothing ({name})"),
                        target(&values),
                        body,
                        Expect::Code(not_found["code"].as_str().expect("x-not-found.code").into()),
                    )
                });
                derived += 1;
            }
        }
        let s = schema::deref(spec, &p["schema"]);
        let code = |kw: &str| {
            s.pointer(&format!("/x-result-code/{kw}"))
                .and_then(Value::as_str)
                .map(String::from)
        };
        let expect = |kw: &str| code(kw).map_or(Expect::Refused, Expect::Code);
        let mut vary = |what: String, value: Option<String>, expect: Expect| {
            let mut values = real_query.clone();
            match value {
                Some(v) => values.insert(name, v),
                None => values.remove(name),
            };
            out.push(request(
                format!("{what} ({name})"),
                target(&values),
                String::new(),
                expect,
            ));
            derived += 1;
        };
        if p["required"] == json!(true) && p["in"] == "query" {
            vary("missing".into(), None, expect("required"));
        }
        if !real_query.contains_key(name) || p["in"] != "query" {
            continue;
        }
        if s["type"] == "integer" {
            vary("not an integer".into(), Some("x".into()), expect("type"));
        }
        for kw in LIMITS {
            if let Some(bad) = schema_violation(spec, s, kw, &Value::Null) {
                vary(format!("{kw} broken: {bad}"), Some(scalar_text(&bad)), expect(kw));
            }
        }
    }
    // Body property violations.
    let body_schema = op
        .op
        .pointer("/requestBody/content/application~1json/schema")
        .map(|s| schema::deref(spec, s));
    if let Some(body_schema) = body_schema {
        let code = body_schema.pointer("/x-result-code/type").and_then(Value::as_str);
        for (what, body) in [
            ("a body that is not an object", "[1]"),
            ("a body that is not JSON", "{\"appId\":"),
        ] {
            let expect = code.map_or(Expect::Refused, |c| Expect::Code(c.to_string()));
            out.push(request(what.into(), target(&real_query), body.into(), expect));
            derived += 1;
        }
    }
    for (example_name, example) in &examples {
        let Some(body_schema) = body_schema else { break };
        let example = real(example);
        let errors = schema::validate(spec, body_schema, &example);
        assert!(
            errors.is_empty(),
            "{}: example {example_name:?} breaks its schema: {errors:?}",
            op.name()
        );
        let (properties, required) = body_properties(spec, body_schema, &example);
        for (name, property) in &properties {
            let s = schema::deref(spec, property);
            let code = |kw: &str| {
                s.pointer(&format!("/x-result-code/{kw}"))
                    .and_then(Value::as_str)
                    .map(String::from)
            };
            let expect = |kw: &str| code(kw).map_or(Expect::Refused, Expect::Code);
            let mut vary = |what: String, value: Option<Value>, expect: Expect| {
                let mut body = example.clone();
                let object = body.as_object_mut().unwrap();
                match value {
                    Some(v) => object.insert(name.clone(), v),
                    None => object.remove(name),
                };
                assert!(
                    !schema::validate(spec, body_schema, &body).is_empty(),
                    "{}: the test's {what} of {name} is valid by the spec",
                    op.name()
                );
                out.push(request(
                    format!("example {example_name:?}, {what} ({name})"),
                    target(&real_query),
                    body.to_string(),
                    expect,
                ));
                derived += 1;
            };
            // A property a branch requires may be missing if another
            // branch the example matches does not require it.
            let mut without = example.clone();
            without.as_object_mut().unwrap().remove(name);
            if required.contains(name) && !schema::validate(spec, body_schema, &without).is_empty() {
                vary("missing".into(), None, expect("required"));
            }
            if let Some(bad) = wrong_type(spec, s) {
                vary(format!("wrong type {bad}"), Some(bad), expect("type"));
            }
            let Some(value) = example.get(name) else { continue };
            for kw in LIMITS {
                if let Some(bad) = schema_violation(spec, s, kw, value) {
                    vary(format!("{kw} broken"), Some(bad), expect(kw));
                }
            }
        }
    }
    // A body that takes from two `oneOf` branches at once: an example with
    // the properties another example's branch requires (a title and content
    // with a templateName).
    let branches = body_schema.and_then(|s| Some((s, s.get("oneOf")?.as_array()?)));
    if let Some((body_schema, branches)) = branches {
        let expect = body_schema
            .pointer("/x-result-code/oneOf")
            .and_then(Value::as_str)
            .map_or(Expect::Refused, |c| Expect::Code(c.to_string()));
        for (name, example) in &examples {
            let example = real(example);
            for (other_name, other) in &examples {
                let other = real(other);
                for branch in branches.iter().map(|b| schema::deref(spec, b)) {
                    if !schema::validate(spec, branch, &other).is_empty()
                        || schema::validate(spec, branch, &example).is_empty()
                    {
                        continue;
                    }
                    let mut body = example.clone();
                    for key in branch["required"].as_array().into_iter().flatten() {
                        let key = key.as_str().expect("required lists names");
                        body[key] = other[key].clone();
                    }
                    assert!(
                        !schema::validate(spec, body_schema, &body).is_empty(),
                        "{}: example {name:?} with what {other_name:?} has is valid by the spec",
                        op.name()
                    );
                    out.push(request(
                        format!("example {name:?} with the properties of {other_name:?}"),
                        target(&real_query),
                        body.to_string(),
                        expect.clone(),
                    ));
                    derived += 1;
                }
            }
        }
    }
    assert!(
        body_schema.is_none() || derived > 0,
        "{}: nothing derived from its body",
        op.name()
    );

    let (first_name, first) = &examples[0];
    let first = real(first);
    out.push(Request {
        signed: false,
        ..request(
            format!("example {first_name:?} unsigned"),
            target(&real_query),
            body_text(&first),
            Expect::Code(ResultCode::SignatureMismatch.code().to_string()),
        )
    });
    let limit = op.op["x-max-body-bytes"].as_u64().expect("x-max-body-bytes") as usize;
    let mut padded = if first.is_object() {
        first.clone()
    } else {
        json!({})
    };
    padded["padding"] = json!("x".repeat(limit));
    let oversized = run
        .table
        .iter()
        .find_map(|(code, (_, o))| o.map(|o| (code.clone(), o)))
        .expect("a code for oversized bodies");
    out.push(Request {
        status: Some(oversized.1),
        ..request(
            format!("a body over {limit} bytes"),
            target(&real_query),
            padded.to_string(),
            Expect::Code(oversized.0),
        )
    });
    for (name, example) in &examples {
        let written = body_text(example);
        if run
            .example_tokens
            .iter()
            .any(|t| written.contains(t.as_str()) || target(&query_example).contains(t.as_str()))
        {
            out.push(request(
                format!("example {name:?} as written (no device holds its tokens)"),
                target(&query_example),
                written,
                Expect::Valid,
            ));
        }
        out.push(request(
            format!("example {name:?}"),
            target(&real_query),
            body_text(&real(example)),
            Expect::Accepted,
        ));
    }
    out
}

/// A body schema's properties and required ones, with those of each of its
/// `oneOf`/`anyOf` branches that `example` matches (a broadcast's
/// `FanoutLiteral` brings the display fields, read only with a title and
/// content); the body schema's own win on a name both have.
fn body_properties(spec: &Value, body_schema: &Value, example: &Value) -> (Map<String, Value>, Vec<String>) {
    let mut properties = body_schema["properties"]
        .as_object()
        .expect("a body schema has properties")
        .clone();
    let mut required = Vec::new();
    let mut add = |s: &Value, properties: &mut Map<String, Value>| {
        for (name, property) in s
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            properties.entry(name.clone()).or_insert_with(|| property.clone());
        }
        for name in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            let name = name.as_str().expect("required lists names").to_string();
            if !required.contains(&name) {
                required.push(name);
            }
        }
    };
    add(body_schema, &mut properties);
    for keyword in ["oneOf", "anyOf"] {
        for branch in body_schema
            .get(keyword)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let branch = schema::deref(spec, branch);
            if schema::validate(spec, branch, example).is_empty() {
                add(branch, &mut properties);
            }
        }
    }
    (properties, required)
}

/// The operation's parameters: the path item's, then its own.
fn parameters<'a>(spec: &'a Value, op: &Operation<'a>) -> Vec<&'a Value> {
    let listed = |v: &'a Value| -> Vec<&'a Value> {
        v.get("parameters")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().map(|p| schema::deref(spec, p)).collect())
            .unwrap_or_default()
    };
    let mut params = listed(op.item);
    params.extend(listed(op.op));
    params
}

/// The request target: path parameters filled in, query parameters that
/// have a value appended, in the spec's order.
fn url(path: &str, params: &[&Value], values: &BTreeMap<&str, String>) -> String {
    let mut target = path.to_string();
    let mut query = Vec::new();
    for p in params {
        let name = p["name"].as_str().unwrap();
        let Some(value) = values.get(name) else {
            assert!(p["in"] != "path", "{path}: path parameter {name} has no example");
            continue;
        };
        match p["in"].as_str() {
            Some("path") => target = target.replace(&format!("{{{name}}}"), &encode(value)),
            Some("query") => query.push(format!("{name}={}", encode(value))),
            other => panic!("{path}: parameters in {other:?} are not supported by this test"),
        }
    }
    if !query.is_empty() {
        target = format!("{target}?{}", query.join("&"));
    }
    target
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `value` with every example token (in strings and keys, also inside JSON
/// text) replaced by a real one.
fn substitute(value: &Value, from: &[String], to: &[String]) -> Value {
    let text = |s: &str| {
        from.iter()
            .zip(to)
            .fold(s.to_string(), |s, (f, t)| s.replace(f.as_str(), t))
    };
    match value {
        Value::String(s) => Value::String(text(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, from, to)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (text(k), substitute(v, from, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The schema (itself or a branch of it) that carries `keyword`.
fn with_keyword<'a>(spec: &'a Value, s: &'a Value, keyword: &str) -> Option<&'a Value> {
    let s = schema::deref(spec, s);
    if s.get(keyword).is_some() {
        return Some(s);
    }
    ["oneOf", "anyOf", "allOf"]
        .iter()
        .filter_map(|k| s.get(*k)?.as_array())
        .flatten()
        .find_map(|branch| with_keyword(spec, branch, keyword))
}

/// A value that breaks `keyword` of `s` and that `s` refuses, if the test
/// knows how to make one; `example` is the value being varied.
fn schema_violation(spec: &Value, s: &Value, keyword: &str, example: &Value) -> Option<Value> {
    let carrier = with_keyword(spec, s, keyword)?;
    let limit = &carrier[keyword];
    let n = limit.as_u64().map(|n| n as usize);
    let bad = match keyword {
        "minLength" => json!("x".repeat(n?.checked_sub(1)?)),
        "maxLength" => json!("x".repeat(n? + 1)),
        "minimum" => json!(limit.as_i64()? - 1),
        "maximum" => json!(limit.as_i64()? + 1),
        "minItems" => Value::Array(vec![example.as_array()?.first()?.clone(); n?.checked_sub(1)?]),
        "maxItems" => Value::Array(vec![example.as_array()?.first()?.clone(); n? + 1]),
        "minProperties" => entries(example, n?.checked_sub(1)?),
        "maxProperties" => entries(example, n? + 1),
        "enum" => {
            let allowed = limit.as_array()?;
            if allowed.iter().all(Value::is_i64) {
                json!(allowed.iter().filter_map(Value::as_i64).max()? + 1)
            } else if allowed.iter().all(Value::is_string) {
                json!("x-not-listed")
            } else {
                return None;
            }
        }
        other => panic!("no violation of {other} is known"),
    };
    let errors = schema::validate(spec, s, &bad);
    assert!(
        !errors.is_empty(),
        "the test's violation of {keyword} ({bad}) is valid by the spec"
    );
    Some(bad)
}

/// An object of `n` entries, each with the example's first value (or "v").
fn entries(example: &Value, n: usize) -> Value {
    let value = example
        .as_object()
        .and_then(|m| m.values().next().cloned())
        .unwrap_or_else(|| json!("v"));
    Value::Object(
        (0..n)
            .map(|i| (format!("extra-{i}"), value.clone()))
            .collect::<Map<_, _>>(),
    )
}

/// A value of a JSON type `s` does not accept at all (not merely out of
/// range), if `s` names its types.
fn wrong_type(spec: &Value, s: &Value) -> Option<Value> {
    fn types(spec: &Value, s: &Value, out: &mut BTreeSet<String>) {
        let s = schema::deref(spec, s);
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            out.insert(t.to_string());
        }
        for k in ["oneOf", "anyOf"] {
            for branch in s.get(k).and_then(Value::as_array).into_iter().flatten() {
                types(spec, branch, out);
            }
        }
    }
    let mut accepted = BTreeSet::new();
    types(spec, s, &mut accepted);
    if accepted.is_empty() {
        return None;
    }
    let candidates = [
        ("array", json!([1])),
        ("object", json!({"k": [1]})),
        ("boolean", json!(true)),
        ("number", json!(1.5)),
        ("string", json!("x")),
    ];
    let bad = candidates
        .into_iter()
        .find(|(kind, _)| !accepted.contains(*kind))
        .map(|(_, v)| v)?;
    assert!(
        !schema::validate(spec, s, &bad).is_empty(),
        "{bad} is valid by the spec"
    );
    Some(bad)
}

impl Run<'_> {
    /// What replaces the examples' placeholders for `op`'s requests: the
    /// example tokens, times (now plus their offsets) and, once a push has
    /// answered one, the task id.
    fn placeholders(
        &self,
        op: &Operation,
        query_example: &BTreeMap<&str, String>,
    ) -> (Vec<String>, Vec<String>) {
        let mut from = self.example_tokens.clone();
        let mut to = self.tokens.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for (example, offset) in &self.example_times {
            from.push(example.clone());
            to.push((now + offset).to_string());
        }
        let example_text = format!("{query_example:?} {}", op.op["requestBody"]);
        if example_text.contains(&self.example_task_id) {
            let task_id = self.task_id.clone().unwrap_or_else(|| {
                panic!(
                    "{}: its examples name a task, but no push answered a task id before it",
                    op.name()
                )
            });
            from.push(self.example_task_id.clone());
            to.push(task_id);
        }
        (from, to)
    }

    fn send(&mut self, op: &Operation, request: Request) {
        let addr = if op.admin { self.d.admin } else { self.d.api };
        let answer = if request.signed {
            common::try_raw_http(addr, &request.method, &request.target, &request.body)
        } else {
            common::send_http(addr, &request.method, &request.target, &[], &request.body)
        };
        self.checked += 1;
        let context = format!("{} {} [{}]", request.method, request.target, request.what);
        let (status, text) = match answer {
            Ok(answer) => answer,
            Err(e) => return self.failures.push(format!("{context}: {e}")),
        };
        if let Err(problem) = self.check(op, &request, status, &text) {
            let text: String = text.chars().take(300).collect();
            self.failures
                .push(format!("{context}: {problem}\n    got {status} {text}"));
        }
        // A push's task id, for the examples that name a task.
        let answer: Value = serde_json::from_str(&text).unwrap_or_default();
        if let (Some("OK"), Some(task_id)) = (
            answer["ResultCode"].as_str(),
            answer["PushResult"]["Data"].as_str(),
        ) {
            if !task_id.is_empty() && task_id.bytes().all(|b| b.is_ascii_digit()) {
                self.task_id = Some(task_id.to_string());
            }
        }
    }

    /// The answer against the operation's responses and the expectation.
    fn check(&self, op: &Operation, request: &Request, status: u16, text: &str) -> Result<(), String> {
        let response = op.op["responses"]
            .get(status.to_string())
            .or_else(|| op.op["responses"].get("default"))
            .map(|r| schema::deref(self.spec, r))
            .ok_or_else(|| format!("HTTP {status} is not a documented response"))?;
        let content = response["content"]
            .as_object()
            .ok_or("the response has no content")?;
        let (media, body_schema) = content.iter().next().ok_or("the response has no media type")?;
        let body: Value = if media == "application/json" {
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?
        } else {
            Value::String(text.to_string())
        };
        let errors = schema::validate(self.spec, &body_schema["schema"], &body);
        if !errors.is_empty() {
            return Err(format!("the body breaks the schema: {}", errors.join("; ")));
        }
        if op.admin {
            return Ok(());
        }
        let code = body["ResultCode"].as_str().ok_or("no ResultCode")?;
        if code == "OK" {
            if status != 200 {
                return Err(format!("OK with HTTP {status}"));
            }
        } else {
            if !op.op["x-result-codes"].as_array().unwrap().contains(&json!(code)) {
                return Err(format!("{code} is not in the operation's x-result-codes"));
            }
            let (own, _) = self.table[code];
            let want = request.status.unwrap_or(own);
            if status != want {
                return Err(format!("{code} is documented with HTTP {want}"));
            }
        }
        match (&request.expect, code) {
            (Expect::Accepted, "OK") | (Expect::Valid, _) => Ok(()),
            (Expect::Refused, code) if code != "OK" => Ok(()),
            (Expect::Code(want), code) if want == code => Ok(()),
            (expect, code) => Err(format!("wanted {expect:?}, got {code}")),
        }
    }

    /// Every method on every path: served (anything but 404 and 405) if the
    /// spec has it, else 405.
    fn probe_methods(&mut self, ops: &[Operation]) {
        let mut paths: BTreeMap<&str, (&Value, bool)> = BTreeMap::new();
        for op in ops {
            paths.insert(op.path, (op.item, op.admin));
        }
        for (path, (item, admin)) in paths {
            let params: Vec<&Value> = item
                .get("parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .collect();
            let values: BTreeMap<&str, String> = params
                .iter()
                .filter_map(|p| Some((p["name"].as_str()?, scalar_text(p.get("example")?))))
                .collect();
            let target = url(path, &params, &values);
            let addr = if admin { self.d.admin } else { self.d.api };
            for method in METHODS {
                let described = item.get(method).is_some();
                let method = method.to_uppercase();
                self.checked += 1;
                match common::send_http(addr, &method, &target, &[], "") {
                    Ok((status, _)) if described && status != 404 && status != 405 => {}
                    Ok((405, _)) if !described => {}
                    Ok((status, text)) => self.failures.push(format!(
                        "{method} {target}: {} by the spec, got {status} {text}",
                        if described { "served" } else { "405" }
                    )),
                    Err(e) => self.failures.push(format!("{method} {target}: {e}")),
                }
            }
        }
    }
}
