//! The statistics endpoints: the task list (`GET /v1/tasks`), one task
//! (`GET /v1/tasks/{taskId}`) and counts per minute, hour or day
//! (`GET /v1/statistics`). Each asks every shard (a task's devices are
//! spread over them) and merges the answers with `stats::merge_*`. The
//! parameter checks are pure functions of the query, the config and the
//! clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use serde_json::{json, Value};

use super::fields::Page;
use super::result_code::{ApiError, ResultCode};
use super::{admit, ask_all, resolve_app, respond, ApiState};
use crate::message::{unix_ms, Command};
use crate::stats::{self, Counts, Event, Granularity, PushType, TaskReport};

/// Buckets one statistics answer may hold: any 90 days by the hour (a
/// range not aligned to hours touches one more), or 36 hours by the minute.
pub const MAX_BUCKETS: u64 = 90 * 24 + 1;
pub const DEFAULT_PAGE_SIZE: usize = 20;
pub const MAX_PAGE_SIZE: usize = 100;

fn invalid(reason: impl Into<String>) -> ApiError {
    ApiError::new(ResultCode::InvalidParam, reason)
}

pub fn app_of(
    caller: &super::auth::AuthenticatedApp,
    query: &HashMap<String, String>,
) -> Result<Arc<str>, ApiError> {
    resolve_app(
        caller,
        query.get("appId").map(String::as_str),
        query.get("workspaceId").map(String::as_str),
    )
}

/// An optional non-negative integer parameter.
fn int_param(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| invalid(format!("{name} must be a non-negative integer"))),
    }
}

/// `startTime` and `endTime` (ms since the epoch), each optional here.
pub fn time_range(query: &HashMap<String, String>) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let start = int_param(query, "startTime")?;
    let end = int_param(query, "endTime")?;
    if let (Some(start), Some(end)) = (start, end) {
        if end < start {
            return Err(invalid("endTime is before startTime"));
        }
    }
    Ok((start, end))
}

/// A validated statistics query: checks in this order, each 3028 with its
/// reason: startTime and endTime present, end not before start, range at
/// most 90 days, granularity, platform, pushType, taskId, minute buckets
/// still kept and not asked per task, bucket count.
pub fn parse_query(
    query: &HashMap<String, String>,
    minute_retention_ms: u64,
    now_ms: u64,
) -> Result<stats::Query, ApiError> {
    let (start, end) = time_range(query)?;
    let (Some(start_ms), Some(end_ms)) = (start, end) else {
        return Err(invalid("startTime and endTime are required (ms since the epoch)"));
    };
    if end_ms - start_ms > stats::MAX_RANGE_MS {
        return Err(invalid("the range from startTime to endTime is over 90 days"));
    }
    let granularity = match query.get("granularity").map(String::as_str) {
        None | Some("") => Granularity::Hour,
        Some(name) => {
            Granularity::from_name(name).ok_or_else(|| invalid("granularity must be minute, hour or day"))?
        }
    };
    let platform = match int_param(query, "platform")? {
        None => None,
        Some(p @ (1 | 2 | 7)) => Some(p as u8),
        Some(_) => return Err(invalid("platform must be 1 (Android), 2 (iOS) or 7 (HarmonyOS)")),
    };
    let push_type = match query.get("pushType").map(String::as_str) {
        None | Some("") => None,
        Some(name) => Some(PushType::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = PushType::ALL.iter().map(|t| t.name()).collect();
            invalid(format!("pushType must be one of {}", names.join(", ")))
        })?),
    };
    let task_id = match int_param(query, "taskId")? {
        Some(0) => return Err(invalid("taskId must be a task id from a push answer")),
        other => other,
    };
    if granularity == Granularity::Minute {
        if task_id.is_some() {
            return Err(invalid(
                "a task's counts are kept per hour: use granularity hour or day",
            ));
        }
        if start_ms < now_ms.saturating_sub(minute_retention_ms) {
            return Err(invalid(format!(
                "minute buckets are kept for {} hours: use a later startTime or granularity hour or day",
                minute_retention_ms / stats::HOUR_MS
            )));
        }
    }
    let buckets = stats::bucket_count(start_ms, end_ms, granularity);
    if buckets > MAX_BUCKETS {
        return Err(invalid(format!(
            "{buckets} buckets: at most {MAX_BUCKETS} per answer; use a coarser granularity or a shorter range"
        )));
    }
    Ok(stats::Query {
        start_ms,
        end_ms,
        granularity,
        platform,
        push_type,
        task_id,
    })
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The counts' fields, as every answer shows them.
fn counts_json(counts: &Counts) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    out.insert("pushed".into(), counts.get(Event::Pushed).into());
    out.insert("succeeded".into(), counts.get(Event::Succeeded).into());
    out.insert("arrived".into(), counts.get(Event::Arrived).into());
    out.insert("opened".into(), counts.get(Event::Opened).into());
    out.insert("ignored".into(), counts.get(Event::Ignored).into());
    out.insert("openRate".into(), round4(counts.open_rate()).into());
    out.insert("ignoreRate".into(), round4(counts.ignore_rate()).into());
    out
}

fn task_json(t: &TaskReport) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("taskId".into(), t.task_id.to_string().into());
    out.insert("taskName".into(), t.name.as_ref().into());
    out.insert("pushType".into(), t.push_type.name().into());
    out.extend(counts_json(&t.counts));
    out.insert("startTime".into(), t.created_ms.into());
    // The start is stamped by the API's clock, arrivals by the shard's
    // (fixed to wall time when it started): they may disagree by a few
    // milliseconds, but an end is never before the start.
    let end = (t.last_arrived_ms != 0).then_some(t.last_arrived_ms.max(t.created_ms));
    out.insert("endTime".into(), end.into());
    out.insert(
        "duration".into(),
        end.map(|end| end.saturating_sub(t.created_ms)).into(),
    );
    Value::Object(out)
}

/// `GET /v1/tasks?appId&workspaceId[&startTime][&endTime][&pageNumber][&pageSize]`
pub(super) async fn list(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "task_list";
    let started = Instant::now();
    let result = async {
        let (caller, _) = admit(&state, request).await?;
        let app_id = app_of(&caller, &query)?;
        let (start, end) = time_range(&query)?;
        let page = Page::of_query(&query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let (from_ms, to_ms) = (start.unwrap_or(0), end.unwrap_or(u64::MAX));
        let answers = ask_all(&state, |reply| Command::QueryTasks {
            app_id: app_id.clone(),
            from_ms,
            to_ms,
            reply,
        })
        .await?;
        let tasks = stats::merge_tasks(answers);
        Ok(page.listing(&tasks, "tasks", task_json))
    }
    .await;
    respond(OP, started, result)
}

/// `GET /v1/tasks/{taskId}?appId&workspaceId`
pub(super) async fn detail(
    State(state): State<Arc<ApiState>>,
    path: Result<Path<String>, PathRejection>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "task_detail";
    let started = Instant::now();
    let result = async {
        let (caller, _) = admit(&state, request).await?;
        let app_id = app_of(&caller, &query)?;
        // Axum's own rejection (a path that is not UTF-8) would be plain
        // text, outside the envelope.
        let Path(task_id) = path.map_err(|e| invalid(format!("the taskId in the path: {e}")))?;
        let task_id: u64 = task_id
            .parse()
            .ok()
            .filter(|&id| id != 0)
            .ok_or_else(|| invalid("taskId must be a task id from a push answer"))?;
        let answers = ask_all(&state, |reply| Command::QueryTask {
            app_id: app_id.clone(),
            task_id,
            reply,
        })
        .await?;
        let merged = stats::merge_tasks(answers.into_iter().map(|a| a.into_iter().collect()));
        match merged.first() {
            Some(task) => Ok(task_json(task)),
            None => Err(invalid(format!("no task {task_id} in this app")).with_http_status(404)),
        }
    }
    .await;
    respond(OP, started, result)
}

/// `GET /v1/statistics?appId&workspaceId&startTime&endTime[&granularity][&platform][&pushType][&taskId]`
pub(super) async fn statistics(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    const OP: &str = "statistics";
    let started = Instant::now();
    let result = async {
        let (caller, _) = admit(&state, request).await?;
        let app_id = app_of(&caller, &query)?;
        let retention = state.config().stats.minute_retention_hours * stats::HOUR_MS;
        let q = parse_query(&query, retention, unix_ms())?;
        let answers = ask_all(&state, |reply| Command::QueryStats {
            app_id: app_id.clone(),
            query: q.clone(),
            reply,
        })
        .await?;
        let series = stats::merge_series(&q, answers);
        let mut total = Counts::default();
        let buckets: Vec<Value> = series
            .iter()
            .map(|(time, counts)| {
                total.add(counts);
                let mut bucket = serde_json::Map::new();
                bucket.insert("time".into(), (*time).into());
                bucket.extend(counts_json(counts));
                Value::Object(bucket)
            })
            .collect();
        let granularity = match q.granularity {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        };
        Ok(json!({
            "startTime": q.start_ms, "endTime": q.end_ms, "granularity": granularity,
            "platform": q.platform, "pushType": q.push_type.map(PushType::name),
            "taskId": q.task_id.map(|id| id.to_string()),
            "series": buckets, "total": Value::Object(counts_json(&total)),
        }))
    }
    .await;
    respond(OP, started, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn parse(pairs: &[(&str, &str)]) -> Result<stats::Query, String> {
        let query = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_query(&query, 48 * stats::HOUR_MS, NOW).map_err(|e| {
            assert_eq!(e.code, ResultCode::InvalidParam);
            e.reason
        })
    }

    #[test]
    fn a_query_is_checked_with_a_reason_for_each_fault() {
        let day = stats::DAY_MS;
        let start = (NOW - day).to_string();
        let end = NOW.to_string();
        let q = parse(&[("startTime", &start), ("endTime", &end)]).unwrap();
        assert_eq!(
            (q.granularity, q.platform, q.push_type, q.task_id),
            (Granularity::Hour, None, None, None)
        );
        let q = parse(&[
            ("startTime", &start),
            ("endTime", &end),
            ("granularity", "minute"),
            ("platform", "7"),
            ("pushType", "group"),
        ])
        .unwrap();
        assert_eq!(
            (q.granularity, q.platform, q.push_type),
            (Granularity::Minute, Some(7), Some(PushType::Group))
        );
        let long_ago = (NOW - 91 * day).to_string();
        let old = (NOW - 3 * day).to_string();
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![("endTime", &end)], "required"),
            (
                vec![("startTime", "x"), ("endTime", &end)],
                "non-negative integer",
            ),
            (vec![("startTime", &end), ("endTime", &start)], "before startTime"),
            (vec![("startTime", &long_ago), ("endTime", &end)], "over 90 days"),
            (
                vec![("startTime", &start), ("endTime", &end), ("granularity", "week")],
                "minute, hour or day",
            ),
            (
                vec![("startTime", &start), ("endTime", &end), ("platform", "3")],
                "platform",
            ),
            (
                vec![("startTime", &start), ("endTime", &end), ("pushType", "tagged")],
                "pushType",
            ),
            (
                vec![("startTime", &start), ("endTime", &end), ("taskId", "0")],
                "taskId",
            ),
            (
                vec![
                    ("startTime", &start),
                    ("endTime", &end),
                    ("granularity", "minute"),
                    ("taskId", "5"),
                ],
                "per hour",
            ),
            (
                vec![("startTime", &old), ("endTime", &end), ("granularity", "minute")],
                "kept for 48 hours",
            ),
            (
                vec![
                    ("startTime", &start),
                    ("endTime", &end),
                    ("granularity", "minute"),
                ],
                "",
            ),
        ];
        for (pairs, want) in cases {
            match parse(&pairs) {
                Err(reason) => assert!(reason.contains(want) && !want.is_empty(), "{pairs:?}: {reason}"),
                Ok(_) => assert!(want.is_empty(), "{pairs:?} was accepted"),
            }
        }
        // Too many buckets: 37 hours of minutes.
        let start37 = (NOW - 37 * stats::HOUR_MS).to_string();
        let reason = parse(&[
            ("startTime", &start37),
            ("endTime", &end),
            ("granularity", "minute"),
        ])
        .unwrap_err();
        assert!(reason.contains("at most 2161"), "{reason}");
        // 90 days exactly is allowed, by hour or day.
        let ninety = (NOW - 90 * day).to_string();
        assert!(parse(&[("startTime", &ninety), ("endTime", &end), ("granularity", "day")]).is_ok());
        assert!(parse(&[("startTime", &ninety), ("endTime", &end), ("granularity", "hour")]).is_ok());
    }

    #[test]
    fn a_task_shows_its_rates_and_duration() {
        let task = TaskReport {
            task_id: 12,
            name: "sale".into(),
            push_type: PushType::Multiple,
            created_ms: 1000,
            last_arrived_ms: 4500,
            counts: Counts([4, 4, 3, 1, 1]),
        };
        let json = task_json(&task);
        assert_eq!(json["taskId"], "12");
        assert_eq!(json["pushType"], "multiple");
        assert_eq!(json["openRate"], 0.3333);
        assert_eq!(
            (json["startTime"].as_u64(), json["endTime"].as_u64()),
            (Some(1000), Some(4500))
        );
        assert_eq!(json["duration"], 3500);
        let none = task_json(&TaskReport {
            last_arrived_ms: 0,
            ..task
        });
        assert!(none["endTime"].is_null() && none["duration"].is_null());
    }
}
