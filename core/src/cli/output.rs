//! Text rendering of API answers (pure; `--output json` prints the answers as they are).

use std::fmt::Write as _;

use serde_json::Value;
use wharf_protocol::Timestamp;

use crate::engine::model::TaskView;

/// Lines of a failed task's log shown in the text summary.
pub const LOG_TAIL: usize = 20;

/// A table: the header row, then one row per entry, columns padded to fit; the last
/// column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON value as a table cell: strings as they are, `null` or missing as `-`, lists
/// joined by commas.
pub fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                "-".into()
            } else {
                items
                    .iter()
                    .map(|i| cell(Some(i)))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        }
        Some(other) => other.to_string(),
    }
}

/// How long ago an RFC 3339 time was (`12s ago`, `5m ago`, `3h ago`, `2d ago`); `never`
/// when absent; the text itself if it does not parse.
pub fn ago(v: Option<&Value>, now: Timestamp) -> String {
    let Some(Value::String(s)) = v else {
        return "never".into();
    };
    let Ok(t) = s.parse::<Timestamp>() else {
        return s.clone();
    };
    let secs = now.duration_since(t).as_millis() / 1000;
    match secs {
        0 => "just now".into(),
        1..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `wharf agent list`: NAME ID STATE TRANSPORT VERSION LAST SEEN.
pub fn agents_table(agents: &[Value], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                cell(a.get("name")),
                cell(a.get("id")),
                cell(a.get("state")),
                cell(a.get("transport")),
                cell(a.get("version")),
                ago(a.get("last_seen"), now),
            ]
        })
        .collect();
    table(
        &["NAME", "ID", "STATE", "TRANSPORT", "VERSION", "LAST SEEN"],
        &rows,
    )
}

/// `wharf token list`: ID NAME ROLE CREATED LAST USED REVOKED.
pub fn tokens_table(tokens: &[Value], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                cell(t.get("id")),
                cell(t.get("name")),
                cell(t.get("role")),
                cell(t.get("created_at")),
                ago(t.get("last_used"), now),
                cell(t.get("revoked_at")),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED"],
        &rows,
    )
}

/// `wharf audit-log`: SEQ AT ACTOR ACTION TARGET.
pub fn audit_table(entries: &[Value]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                cell(e.get("seq")),
                cell(e.get("at")),
                cell(e.get("actor")),
                cell(e.get("action")),
                cell(e.get("target")),
            ]
        })
        .collect();
    table(&["SEQ", "AT", "ACTOR", "ACTION", "TARGET"], &rows)
}

/// `wharf audit`: AGENT TARGET KIND STATUS DETAIL, then a count per status.
pub fn fleet_audit_table(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "No targets to audit: core has no record of a successful deploy on these \
                agents.\n"
            .into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                cell(r.get("agent")),
                cell(r.get("target")),
                cell(r.get("kind")),
                cell(r.get("status")).to_uppercase(),
                cell(r.get("detail")),
            ]
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for r in rows {
        *counts.entry(cell(r.get("status"))).or_insert(0u32) += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let noun = if rows.len() == 1 { "target" } else { "targets" };
    format!(
        "{}\n{} {noun}: {}\n",
        table(&["AGENT", "TARGET", "KIND", "STATUS", "DETAIL"], &cells).trim_end(),
        rows.len(),
        summary.join(", ")
    )
}

/// `sha256:` and the first 12 hex digits of a digest.
fn short_digest(digest: &str) -> String {
    digest
        .strip_prefix("sha256:")
        .map(|hex| format!("sha256:{}", hex.get(..12).unwrap_or(hex)))
        .unwrap_or_else(|| digest.to_owned())
}

/// `wharf history`: TASK KIND RELEASE DIGEST BY WHEN OUTCOME ROLLBACK, then the command
/// for each entry that can be rolled back to.
pub fn history_table(entries: &[crate::history::HistoryEntry]) -> String {
    if entries.is_empty() {
        return "No deploys or rollbacks of this target yet.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let digests: Vec<String> = e
                .components
                .iter()
                .map(|c| short_digest(&c.digest))
                .collect();
            let outcome = if e.rolled_back {
                format!("{} (rolled back)", e.state)
            } else {
                e.state.to_string()
            };
            let rollback = serde_json::to_value(e.rollback.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            vec![
                e.task_id.to_string(),
                e.kind.to_string(),
                e.release.clone().unwrap_or_else(|| "-".into()),
                if digests.is_empty() {
                    "-".into()
                } else {
                    digests.join(",")
                },
                e.requested_by.clone(),
                e.completed_at.unwrap_or(e.created_at).to_string(),
                outcome,
                format!("{rollback}: {}", e.rollback.detail),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "TASK", "KIND", "RELEASE", "DIGEST", "BY", "WHEN", "OUTCOME", "ROLLBACK",
        ],
        &rows,
    );
    for e in entries {
        if let Some(command) = &e.rollback.command {
            let _ = writeln!(out, "To go back to {}: {command}", e.task_id);
        }
    }
    out
}

/// `wharf task list`: ID KIND STATE AGENT TARGET ATTEMPT UPDATED.
pub fn tasks_table(tasks: &[TaskView]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.kind.to_string(),
                t.state.to_string(),
                t.agent.clone(),
                t.target.clone(),
                t.attempt.to_string(),
                t.updated_at.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "KIND", "STATE", "AGENT", "TARGET", "ATTEMPT", "UPDATED",
        ],
        &rows,
    )
}

/// The first line about a task: `<kind> task <id> on <agent>/<target>: <state>`.
pub fn task_headline(t: &TaskView) -> String {
    format!(
        "{} task {} on {}/{}: {}",
        t.kind, t.id, t.agent, t.target, t.state
    )
}

/// An output value: JSON objects pretty-printed, other text as is, indented by `indent`.
fn push_value(out: &mut String, value: &str, indent: &str) {
    let pretty = serde_json::from_str::<Value>(value)
        .ok()
        .filter(|v| v.is_object() || v.is_array())
        .and_then(|v| serde_json::to_string_pretty(&v).ok());
    let text = pretty.as_deref().unwrap_or(value);
    for line in text.lines() {
        let _ = writeln!(out, "{indent}{line}");
    }
}

/// The outputs of a task's result (`key: value`; multi-line and JSON values below their
/// key).
pub fn outputs_text(t: &TaskView) -> String {
    let mut out = String::new();
    let Some(result) = &t.result else {
        return out;
    };
    for (key, value) in &result.outputs {
        if value.contains('\n') || value.trim_start().starts_with(['{', '[']) {
            let _ = writeln!(out, "{key}:");
            push_value(&mut out, value, "  ");
        } else {
            let _ = writeln!(out, "{key}: {value}");
        }
    }
    out
}

/// One line per hook that ran (from the agents' `pre_hook.*`/`post_hook.*` result
/// outputs, the same for Docker and Compose deploys): `pre-hook:     passed in 1234 ms:
/// MESSAGE`.
fn hooks_text(outputs: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut lines = Vec::new();
    for (prefix, name) in [("pre_hook", "pre-hook"), ("post_hook", "post-hook")] {
        let Some(ok) = outputs.get(&format!("{prefix}.ok")) else {
            continue;
        };
        let verdict = if ok == "true" { "passed" } else { "failed" };
        let took = outputs
            .get(&format!("{prefix}.duration_ms"))
            .map(|ms| format!(" in {ms} ms"))
            .unwrap_or_default();
        let message = outputs
            .get(&format!("{prefix}.message"))
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {}", m.lines().next().unwrap_or_default()))
            .unwrap_or_default();
        lines.push(format!(
            "{:<14}{verdict}{took}{message}",
            format!("{name}:")
        ));
    }
    lines
}

/// A task in full: state, attempt, who and when, error, rollback, outputs and the tail of
/// its logs.
pub fn task_summary(t: &TaskView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", task_headline(t));
    let _ = writeln!(out, "  state:        {} (attempt {})", t.state, t.attempt);
    let _ = writeln!(
        out,
        "  requested by: {} at {}",
        t.requested_by, t.created_at
    );
    let _ = writeln!(out, "  updated:      {}", t.updated_at);
    if let Some(key) = &t.idempotency_key {
        let _ = writeln!(out, "  idempotency:  {key}");
    }
    if t.cancel_requested && !t.state.is_terminal() {
        let _ = writeln!(out, "  cancel:       requested");
    }
    if let Some(error) = &t.error {
        let _ = writeln!(out, "  error:        {error}");
    }
    if let Some(r) = &t.result {
        if let Some(error) = &r.error {
            match r.error_type {
                Some(kind) => {
                    let _ = writeln!(out, "  error:        [{kind}] {error}");
                }
                None => {
                    let _ = writeln!(out, "  error:        {error}");
                }
            }
        }
        if !r.success {
            let _ = writeln!(
                out,
                "  rolled back:  {}",
                if r.rolled_back { "yes" } else { "no" }
            );
        }
        let m = &r.metrics;
        let timings: Vec<String> = [
            ("pull", m.pull_ms),
            ("deploy", m.deploy_ms),
            ("health", m.health_ms),
        ]
        .into_iter()
        .filter_map(|(name, ms)| ms.map(|ms| format!("{name} {ms} ms")))
        .collect();
        if !timings.is_empty() {
            let _ = writeln!(out, "  timings:      {}", timings.join(", "));
        }
        for line in hooks_text(&r.outputs) {
            let _ = writeln!(out, "  {line}");
        }
        let outputs = outputs_text(t);
        if !outputs.is_empty() {
            let _ = writeln!(out, "  outputs:");
            for line in outputs.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
        if !r.logs.is_empty() {
            let tail = &r.logs[r.logs.len().saturating_sub(LOG_TAIL)..];
            if tail.len() < r.logs.len() {
                let _ = writeln!(
                    out,
                    "  logs (last {} of {} lines):",
                    tail.len(),
                    r.logs.len()
                );
            } else {
                let _ = writeln!(out, "  logs:");
            }
            for line in tail {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;
    use uuid::Uuid;
    use wharf_protocol::{ErrorType, Priority, TaskKind, TaskResult};

    use crate::queue::TaskState;

    #[test]
    fn short_digests_never_cut_inside_a_character() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(short_digest(&d), "sha256:aaaaaaaaaaaa");
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
        // A bad answer from core: shown whole rather than a panic.
        assert_eq!(short_digest("sha256:aaaaaaaaaaaé"), "sha256:aaaaaaaaaaaé");
        assert_eq!(short_digest("latest"), "latest");
    }

    #[test]
    fn fleet_audit_table_has_a_row_per_target_and_counts() {
        let row = |target: &str, status: &str| {
            json!({"agent": "a", "target": target, "kind": "docker", "status": status,
                   "detail": format!("{target} detail")})
        };
        let text = fleet_audit_table(&[row("web", "ok"), row("api", "drift"), row("db", "ok")]);
        assert!(text.starts_with("AGENT"), "{text}");
        assert!(text.contains("DRIFT   api detail"), "{text}");
        assert!(text.ends_with("3 targets: 1 drift, 2 ok\n"), "{text}");
        assert!(fleet_audit_table(&[row("web", "ok")]).ends_with("1 target: 1 ok\n"));
        assert!(fleet_audit_table(&[]).starts_with("No targets to audit"));
    }

    fn view(state: TaskState, result: Option<TaskResult>) -> TaskView {
        TaskView {
            id: Uuid::nil(),
            kind: TaskKind::Deploy,
            state,
            agent: "web-1".into(),
            target: "web".into(),
            idempotency_key: Some("k".into()),
            attempt: 2,
            created_at: Timestamp(0),
            updated_at: Timestamp(1000),
            requested_by: "ci".into(),
            priority: Priority::Normal,
            expires_at: None,
            cancel_requested: false,
            error: None,
            result,
        }
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "LONG"],
            &[vec!["xyz".into(), "1".into()], vec!["a".into(), "".into()]],
        );
        assert_eq!(t, "A    LONG\nxyz  1\na\n");
    }

    #[test]
    fn agent_rows() {
        let now = Timestamp(10 * 86_400_000);
        let agents = [
            json!({"name": "web-1", "id": "u1", "state": "online", "transport": "quic",
                   "version": "0.1.0", "capabilities": ["docker"], "last_seen": "1970-01-10T23:59:48.000Z"}),
            json!({"name": "db", "id": "u2", "state": "revoked", "transport": null,
                   "version": "0.1.0", "last_seen": null}),
        ];
        let text = agents_table(&agents, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME   ID  STATE    TRANSPORT  VERSION  LAST SEEN"
        );
        assert_eq!(lines[1], "web-1  u1  online   quic       0.1.0    12s ago");
        assert_eq!(lines[2], "db     u2  revoked  -          0.1.0    never");
    }

    #[test]
    fn relative_times() {
        let now = Timestamp(100 * 86_400_000);
        let at = |ms: i64| json!(Timestamp(now.0 - ms).to_string());
        assert_eq!(ago(Some(&at(0)), now), "just now");
        assert_eq!(ago(Some(&at(90_000)), now), "1m ago");
        assert_eq!(ago(Some(&at(7_200_000)), now), "2h ago");
        assert_eq!(ago(Some(&at(3 * 86_400_000)), now), "3d ago");
        assert_eq!(ago(Some(&json!("yesterday")), now), "yesterday");
        assert_eq!(ago(None, now), "never");
    }

    #[test]
    fn other_tables() {
        let now = Timestamp(0);
        let t = tokens_table(
            &[json!({"id": "t1", "name": "ci", "role": "deployer", "created_at": "x"})],
            now,
        );
        assert!(
            t.lines()
                .nth(1)
                .unwrap()
                .starts_with("t1  ci    deployer  x"),
            "{t}"
        );
        let a = audit_table(&[
            json!({"seq": 3, "at": "t", "actor": "admin", "action": "token.create", "target": "ci"}),
        ]);
        assert_eq!(
            a.lines().nth(1).unwrap(),
            "3    t   admin  token.create  ci"
        );
        let l = tasks_table(&[view(TaskState::Queued, None)]);
        assert!(
            l.lines()
                .nth(1)
                .unwrap()
                .contains("deploy  queued  web-1  web     2"),
            "{l}"
        );
        assert_eq!(cell(Some(&json!(["a", "b"]))), "a,b");
        assert_eq!(cell(Some(&json!([]))), "-");
        assert_eq!(cell(Some(&json!(true))), "true");
    }

    #[test]
    fn failed_task_summary() {
        let mut r = TaskResult::failure(
            Uuid::nil(),
            2,
            Timestamp(0),
            ErrorType::HealthFailed,
            "not healthy after 60s",
        );
        r.rolled_back = true;
        r.logs = (1..=25).map(|i| format!("line {i}")).collect();
        r.metrics.pull_ms = Some(1200);
        let text = task_summary(&view(TaskState::Failed, Some(r)));
        assert!(text.starts_with(
            "deploy task 00000000-0000-0000-0000-000000000000 on web-1/web: failed\n"
        ));
        assert!(text.contains("state:        failed (attempt 2)"), "{text}");
        assert!(
            text.contains("error:        [health-failed] not healthy after 60s"),
            "{text}"
        );
        assert!(text.contains("rolled back:  yes"), "{text}");
        assert!(text.contains("timings:      pull 1200 ms"), "{text}");
        assert!(text.contains("logs (last 20 of 25 lines):"), "{text}");
        assert!(
            text.contains("    line 25\n") && !text.contains("line 5\n"),
            "{text}"
        );
    }

    #[test]
    fn outputs() {
        let mut r = TaskResult::success(Uuid::nil(), 1, Timestamp(0));
        r.outputs = BTreeMap::from([
            ("digest".to_owned(), "sha256:abc".to_owned()),
            (
                "sticker".to_owned(),
                r#"{"schema":"wharf.sticker/v1"}"#.to_owned(),
            ),
        ]);
        let text = outputs_text(&view(TaskState::Succeeded, Some(r)));
        assert_eq!(
            text,
            "digest: sha256:abc\nsticker:\n  {\n    \"schema\": \"wharf.sticker/v1\"\n  }\n"
        );
        assert_eq!(outputs_text(&view(TaskState::Queued, None)), "");
    }

    #[test]
    fn hook_outcomes_and_durations_for_both_deploy_kinds() {
        for kind in [TaskKind::Deploy, TaskKind::ComposeDeploy] {
            let mut r = TaskResult::failure(
                Uuid::nil(),
                1,
                Timestamp(0),
                ErrorType::HookFailed,
                "the post-deploy hook failed",
            );
            r.rolled_back = true;
            r.outputs = BTreeMap::from([
                ("pre_hook.ok".to_owned(), "true".to_owned()),
                (
                    "pre_hook.message".to_owned(),
                    "schema is current".to_owned(),
                ),
                ("pre_hook.duration_ms".to_owned(), "812".to_owned()),
                ("pre_hook.output.rows".to_owned(), "3".to_owned()),
                ("post_hook.ok".to_owned(), "false".to_owned()),
                (
                    "post_hook.message".to_owned(),
                    "smoke test: 502\nmore".to_owned(),
                ),
                ("post_hook.duration_ms".to_owned(), "40".to_owned()),
            ]);
            let mut v = view(TaskState::Failed, Some(r));
            v.kind = kind;
            let text = task_summary(&v);
            assert!(
                text.contains("  pre-hook:     passed in 812 ms: schema is current\n"),
                "{kind:?}: {text}"
            );
            assert!(
                text.contains("  post-hook:    failed in 40 ms: smoke test: 502\n"),
                "{kind:?}: {text}"
            );
            assert!(text.contains("    pre_hook.output.rows: 3\n"), "{text}");
            assert!(text.contains("    pre_hook.duration_ms: 812\n"), "{text}");
        }
        let text = task_summary(&view(
            TaskState::Succeeded,
            Some(TaskResult::success(Uuid::nil(), 1, Timestamp(0))),
        ));
        assert!(!text.contains("hook"), "{text}");
    }
}
