//! The commands: check the input, call the API, print the answer.
//!
//! Every command that submits a task builds and checks its request before it creates the
//! [`Client`], so invalid input exits 2 without any connection.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use wharf_protocol::{TaskPayload, Timestamp};
use wharf_sticker::{Keyring, Verification};
use zeroize::Zeroizing;

use super::args::{
    AgentCommand, AgentTokenCommand, AuditArgs, AuditLogArgs, AuditLogCommand, Cli, Command,
    ConnectionArgs, DeployArgs, OutputFormat, ReadArgs, RegistryCommand, StickerCommand,
    TaskCommand, TokenCommand,
};
use super::client::Client;
use super::error::{InvalidInput, EXIT_FAILED, EXIT_OK};
use super::output;
use super::request;
use super::wait::{follow, Display, Task};
use crate::engine::model::{SubmitRequest, TaskView};
use crate::queue::TaskState;

/// Writes to stdout; a closed pipe (`wharf task list | head`) is not an error.
pub fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// Prints one JSON document (pretty, with a final newline).
fn print_json(value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot render JSON")?;
    text.push('\n');
    print(&text)
}

/// Prints `json` for `--output json`, or the text `text` renders.
fn emit(format: OutputFormat, json: &Value, text: impl FnOnce() -> String) -> Result<()> {
    match format {
        OutputFormat::Json => print_json(json),
        OutputFormat::Text => print(&text()),
    }
}

/// The exit code of a task that ended: 0 if it succeeded, 1 otherwise.
pub fn outcome_code(state: TaskState) -> u8 {
    if state == TaskState::Succeeded {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

fn as_list(body: &Value) -> &[Value] {
    match body {
        Value::Array(items) => items,
        Value::Object(map) => ["agents", "tokens", "tasks", "entries", "items"]
            .iter()
            .find_map(|k| map.get(*k).and_then(Value::as_array))
            .map_or(&[], Vec::as_slice),
        _ => &[],
    }
}

/// Runs a parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    let format = cli.output;
    let conn = &cli.conn;
    match cli.command {
        Command::Agent(cmd) => agent(conn, format, cmd).await,
        Command::Token(cmd) => token(conn, format, cmd).await,
        Command::Registry(cmd) => registry(conn, format, cmd).await,
        Command::Deploy(args) => deploy(conn, format, &args).await,
        Command::Rollback(args) => {
            let req = request::rollback_request(&args)?;
            submit(conn, format, &req, args.wait).await
        }
        Command::Inspect(args) => read_task(conn, format, &args, TaskPayload::Inspect).await,
        Command::Health(args) => {
            let req = request::health_request(&args.target, &args.health)?;
            submit_and_read(conn, format, &req, args.no_wait).await
        }
        Command::Sticker(StickerCommand::Read(args)) => {
            read_task(conn, format, &args, TaskPayload::ReadSticker).await
        }
        Command::Task(cmd) => task(conn, format, cmd).await,
        Command::Compose(super::args::ComposeCommand::Deploy(args)) => {
            let req = request::compose_deploy_request(&args)?;
            submit(conn, format, &req, args.wait).await
        }
        Command::Compose(super::args::ComposeCommand::Rollback(args)) => {
            let req = request::compose_rollback_request(&args)?;
            submit(conn, format, &req, args.wait).await
        }
        Command::AuditLog(args) => audit_log(conn, format, args).await,
        Command::Audit(args) => audit(conn, format, args).await,
        Command::History(args) => history(conn, format, &args).await,
    }
}

async fn audit(conn: &ConnectionArgs, format: OutputFormat, args: AuditArgs) -> Result<u8> {
    let mut query = Vec::new();
    if let Some(agent) = args.agent {
        query.push(("agent", agent));
    }
    if let Some(wait) = args.wait {
        let parsed =
            super::parse::positive_duration(&wait).map_err(|r| InvalidInput::new("--wait", r))?;
        query.push(("wait", format!("{}ms", parsed.as_millis())));
    }
    let client = Client::new(conn)?;
    let answer = client
        .get(&["v1", "audit"], &query)
        .await
        .context("cannot run the fleet audit")?;
    let rows = as_list(&answer.body);
    let clean = rows
        .iter()
        .all(|r| r.get("status").and_then(Value::as_str) == Some("ok"));
    emit(format, &answer.body, || output::fleet_audit_table(rows))?;
    Ok(if clean { EXIT_OK } else { EXIT_FAILED })
}

async fn history(
    conn: &ConnectionArgs,
    format: OutputFormat,
    args: &super::args::HistoryArgs,
) -> Result<u8> {
    let (key, name) = match (&args.target, &args.project) {
        (Some(t), _) => ("target", t),
        (None, Some(p)) => ("project", p),
        (None, None) => {
            return Err(InvalidInput::new("--target", "give --target T or --project P").into())
        }
    };
    let client = Client::new(conn)?;
    let query = [("agent", args.agent.clone()), (key, name.clone())];
    let answer = client
        .get(&["v1", "history"], &query)
        .await
        .with_context(|| {
            format!(
                "cannot read the history of {key} `{name}` on `{}`",
                args.agent
            )
        })?;
    emit(format, &answer.body, || {
        let entries: Vec<crate::history::HistoryEntry> =
            serde_json::from_value(answer.body.clone()).unwrap_or_default();
        output::history_table(&entries)
    })?;
    Ok(EXIT_OK)
}

async fn agent(conn: &ConnectionArgs, format: OutputFormat, cmd: AgentCommand) -> Result<u8> {
    match cmd {
        AgentCommand::Token(AgentTokenCommand::Create { name, ttl }) => {
            let ttl = request::ttl_ms(ttl.as_ref())?;
            let client = Client::new(conn)?;
            let mut body = json!({ "name": name });
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl);
            }
            let answer = client
                .post(&["v1", "agents", "tokens"], &body)
                .await
                .with_context(|| format!("cannot create an enrollment token for agent `{name}`"))?;
            let b = &answer.body;
            let core = core_address(&client);
            emit(format, b, || {
                let token = output::cell(b.get("token"));
                let ca_hash = output::cell(b.get("ca_hash"));
                format!(
                    "Enrollment token for agent `{}` (one use, expires {}):\n  {token}\n\n\
                     Start the agent with it on its host:\n  \
                     wharf-agent-docker --core {core} --state-dir /var/lib/wharf-agent \
                     --token {token} --ca-hash {ca_hash}\n",
                    output::cell(b.get("name")),
                    output::cell(b.get("expires_at")),
                )
            })?;
            Ok(EXIT_OK)
        }
        AgentCommand::List => {
            let client = Client::new(conn)?;
            let answer = client
                .get(&["v1", "agents"], &[])
                .await
                .context("cannot list agents")?;
            emit(format, &answer.body, || {
                output::agents_table(as_list(&answer.body), Timestamp::now())
            })?;
            Ok(EXIT_OK)
        }
        AgentCommand::Revoke { name } => {
            let client = Client::new(conn)?;
            let answer = client
                .post(&["v1", "agents", &name, "revoke"], &json!({}))
                .await
                .with_context(|| format!("cannot revoke agent `{name}`"))?;
            let json = or_default(answer.body, json!({ "name": name, "revoked": true }));
            emit(format, &json, || {
                format!("Agent `{name}` is revoked: its connections are closed and its certificate is refused.\n")
            })?;
            Ok(EXIT_OK)
        }
    }
}

/// `json` unless it is `null` (an empty answer), then `default`.
fn or_default(json: Value, default: Value) -> Value {
    if json.is_null() {
        default
    } else {
        json
    }
}

/// `HOST:PORT` of core for the agents' `--core` (the QUIC port is the HTTPS port).
fn core_address(client: &Client) -> String {
    let url = client.base();
    let host = url.host_str().unwrap_or("CORE-HOST");
    format!("{host}:{}", url.port_or_known_default().unwrap_or(7443))
}

async fn token(conn: &ConnectionArgs, format: OutputFormat, cmd: TokenCommand) -> Result<u8> {
    let client = Client::new(conn)?;
    match cmd {
        TokenCommand::Create { role, name } => {
            let mut body = json!({ "role": role.as_str() });
            if let Some(name) = &name {
                body["name"] = json!(name);
            }
            let answer = client
                .post(&["v1", "tokens"], &body)
                .await
                .with_context(|| format!("cannot create a {role} token"))?;
            let b = &answer.body;
            emit(format, b, || {
                format!(
                    "API token `{}` (id {}, role {}); it is shown only this once:\n  {}\n",
                    output::cell(b.get("name")),
                    output::cell(b.get("id")),
                    output::cell(b.get("role")),
                    output::cell(b.get("token")),
                )
            })?;
        }
        TokenCommand::List => {
            let answer = client
                .get(&["v1", "tokens"], &[])
                .await
                .context("cannot list API tokens")?;
            emit(format, &answer.body, || {
                output::tokens_table(as_list(&answer.body), Timestamp::now())
            })?;
        }
        TokenCommand::Revoke { id } => {
            let answer = client
                .post(&["v1", "tokens", &id, "revoke"], &json!({}))
                .await
                .with_context(|| format!("cannot revoke API token {id}"))?;
            let json = or_default(answer.body, json!({ "id": id, "revoked": true }));
            emit(format, &json, || format!("API token {id} is revoked.\n"))?;
        }
    }
    Ok(EXIT_OK)
}

/// Reads a password from stdin: everything up to EOF, without the final line break.
fn read_password(mut input: impl Read) -> Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new(String::new());
    input
        .read_to_string(&mut buf)
        .map_err(|e| InvalidInput::new("--password-stdin", format!("cannot read stdin: {e}")))?;
    let trimmed = buf.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(InvalidInput::new(
            "--password-stdin",
            "stdin held no password: pipe it in, like `printf %s \"$PASS\" | wharf registry login ...`",
        )
        .into());
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

async fn registry(conn: &ConnectionArgs, format: OutputFormat, cmd: RegistryCommand) -> Result<u8> {
    let RegistryCommand::Login {
        host,
        username,
        password_stdin: _,
    } = cmd;
    let host = super::parse::registry_host(&host).map_err(|r| InvalidInput::new("HOST", r))?;
    if username.is_empty() || username.chars().any(char::is_control) {
        return Err(
            InvalidInput::new("--username", "give a user name without control characters").into(),
        );
    }
    let password = read_password(std::io::stdin().lock())?;
    let client = Client::new(conn)?;
    let body = json!({ "host": host, "username": username, "password": password.as_str() });
    let answer = client
        .post(&["v1", "registries"], &body)
        .await
        .with_context(|| format!("cannot store the credentials for {host}"))?;
    drop(body);
    let json = or_default(answer.body, json!({ "host": host, "username": username }));
    emit(format, &json, || {
        format!("Stored the credentials of `{username}` for {host}; agents get them sealed with each task that pulls from it.\n")
    })?;
    Ok(EXIT_OK)
}

async fn deploy(conn: &ConnectionArgs, format: OutputFormat, args: &DeployArgs) -> Result<u8> {
    let req = match &args.file {
        Some(path) => {
            let (name, text) = if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| InvalidInput::new("-f -", format!("cannot read stdin: {e}")))?;
                ("stdin".to_owned(), text)
            } else {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    InvalidInput::new(
                        format!("-f {}", path.display()),
                        format!("cannot read the deploy file: {e}"),
                    )
                })?;
                (path.display().to_string(), text)
            };
            request::deploy_request_from_yaml(&name, &text, args)?
        }
        None => request::deploy_request(args)?,
    };
    submit(conn, format, &req, args.wait).await
}

/// Submits a task; answers the existing task when the idempotency key was used already.
async fn post_task(client: &Client, req: &SubmitRequest) -> Result<Task> {
    let answer = client
        .post(&["v1", "tasks"], req)
        .await
        .with_context(|| format!("cannot submit the {} task", req.payload.kind()))?;
    let task = Task::from_json(answer.body)?;
    if answer.status == 200 {
        eprintln!(
            "Task {} already exists for idempotency key `{}` ({}); nothing new was submitted.",
            task.view.id,
            req.idempotency_key.as_deref().unwrap_or_default(),
            task.view.state
        );
    }
    Ok(task)
}

/// Follows a task with a display on stderr.
async fn wait_for(client: &Client, view: &TaskView) -> Result<Task> {
    let label = format!("{} {} on {}", view.kind, view.target, view.agent);
    let mut display = Display::for_stderr(&label);
    display.state(view.state);
    let result = follow(client, &view.id.to_string(), &mut display).await;
    display.finish();
    result
}

/// `deploy` and `rollback`: submit, then print the task or follow it.
async fn submit(
    conn: &ConnectionArgs,
    format: OutputFormat,
    req: &SubmitRequest,
    wait: bool,
) -> Result<u8> {
    let client = Client::new(conn)?;
    let task = post_task(&client, req).await?;
    if !wait {
        let id = task.view.id;
        emit(format, &task.json, || {
            format!(
                "Submitted {} task {id} ({}).\nFollow it with: wharf task wait {id}\n",
                task.view.kind, task.view.state
            )
        })?;
        return Ok(EXIT_OK);
    }
    eprintln!(
        "Following {} task {} (Ctrl-C stops following; the task goes on).",
        task.view.kind, task.view.id
    );
    let done = wait_for(&client, &task.view).await?;
    emit(format, &done.json, || output::task_summary(&done.view))?;
    Ok(outcome_code(done.view.state))
}

/// `inspect` and `sticker read`.
async fn read_task(
    conn: &ConnectionArgs,
    format: OutputFormat,
    args: &ReadArgs,
    payload: TaskPayload,
) -> Result<u8> {
    let req = request::simple_request(&args.target, payload)?;
    submit_and_read(conn, format, &req, args.no_wait).await
}

/// Submits a read-only task and, unless `no_wait`, prints its `result.outputs`.
async fn submit_and_read(
    conn: &ConnectionArgs,
    format: OutputFormat,
    req: &SubmitRequest,
    no_wait: bool,
) -> Result<u8> {
    let client = Client::new(conn)?;
    let task = post_task(&client, req).await?;
    if no_wait {
        let id = task.view.id;
        emit(format, &task.json, || {
            format!(
                "Submitted {} task {id}.\nRead its result with: wharf task wait {id}\n",
                task.view.kind
            )
        })?;
        return Ok(EXIT_OK);
    }
    let done = if task.view.state.is_terminal() {
        task
    } else {
        wait_for(&client, &task.view).await?
    };
    emit(format, &done.json, || {
        if done.view.state == TaskState::Succeeded {
            let outputs = output::outputs_text(&done.view);
            if outputs.is_empty() {
                format!("{}\n", output::task_headline(&done.view))
            } else {
                outputs
            }
        } else {
            output::task_summary(&done.view)
        }
    })?;
    Ok(outcome_code(done.view.state))
}

/// Reads a keyring file (`sticker.pub` of core's data dir) for `--key`.
fn read_keyring(path: &Path) -> Result<Keyring> {
    let what = || format!("--key {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| {
        InvalidInput::new(
            what(),
            format!("cannot read the key file: {e}; give sticker.pub from core's data dir"),
        )
    })?;
    let keyring = Keyring::parse(&text).map_err(|e| InvalidInput::new(what(), e.to_string()))?;
    if keyring.is_empty() {
        return Err(InvalidInput::new(
            what(),
            "the file holds no key; give sticker.pub from core's data dir",
        )
        .into());
    }
    Ok(keyring)
}

/// Checks an evidence document; returns whether it is valid and the verdict as JSON and
/// as a line of text.
fn check_evidence(bytes: &[u8], keyring: &Keyring) -> (bool, Value, String) {
    let key_id = wharf_sticker::SignedEvidence::parse(bytes)
        .ok()
        .map(|s| s.signature.key_id);
    let verification = wharf_sticker::verify_evidence(bytes, keyring);
    let mut json = json!({
        "valid": verification.is_valid(),
        "verification": verification.as_str(),
        "key_id": key_id,
    });
    let text = match &verification {
        Verification::Valid(e) => {
            json["task_id"] = json!(e.task.id);
            format!(
                "Evidence verified: {} {} on {} ({}), task {}, signed by {}.\n",
                e.task.kind,
                e.task.target,
                e.task.agent,
                e.outcome.state,
                e.task.id,
                key_id.unwrap_or_default()
            )
        }
        Verification::BadSignature => "Evidence NOT verified: the signature does not match \
            the content; the record was changed after core signed it.\n"
            .to_string(),
        Verification::UnknownKey { key_id } => format!(
            "Evidence NOT verified: it is signed by {key_id}, which is not in the key file.\n"
        ),
        Verification::Malformed { reason } => {
            json["reason"] = json!(reason);
            format!("Evidence NOT verified: not a wharf.evidence/v1 document ({reason}).\n")
        }
    };
    (verification.is_valid(), json, text)
}

/// `wharf task verify-evidence FILE --key K`: offline, no connection.
fn verify_evidence_file(format: OutputFormat, file: &Path, key: &Path) -> Result<u8> {
    let keyring = read_keyring(key)?;
    let bytes = if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| InvalidInput::new("FILE -", format!("cannot read stdin: {e}")))?;
        bytes
    } else {
        std::fs::read(file).map_err(|e| {
            InvalidInput::new(
                file.display().to_string(),
                format!("cannot read the evidence file: {e}"),
            )
        })?
    };
    let (valid, json, text) = check_evidence(&bytes, &keyring);
    emit(format, &json, || text)?;
    Ok(if valid { EXIT_OK } else { EXIT_FAILED })
}

async fn task(conn: &ConnectionArgs, format: OutputFormat, cmd: TaskCommand) -> Result<u8> {
    if let TaskCommand::VerifyEvidence { file, key } = &cmd {
        return verify_evidence_file(format, file, key);
    }
    // Read before any connection: a bad key file is invalid input (exit 2).
    let evidence_keyring = match &cmd {
        TaskCommand::Evidence {
            verify: true,
            key: Some(key),
            ..
        } => Some(read_keyring(key)?),
        _ => None,
    };
    let client = Client::new(conn)?;
    match cmd {
        TaskCommand::Evidence { id, .. } => {
            let bytes = client
                .get_bytes(&["v1", "tasks", &id.to_string(), "evidence"])
                .await
                .with_context(|| format!("cannot read the evidence of task {id}"))?;
            // The document exactly as core signed it, so it can be saved and verified.
            print(&String::from_utf8_lossy(&bytes))?;
            let Some(keyring) = evidence_keyring else {
                return Ok(EXIT_OK);
            };
            let (valid, _, text) = check_evidence(&bytes, &keyring);
            eprint!("{text}");
            Ok(if valid { EXIT_OK } else { EXIT_FAILED })
        }
        TaskCommand::VerifyEvidence { file, key } => verify_evidence_file(format, &file, &key),
        TaskCommand::Show { id } => {
            let answer = client
                .get(&["v1", "tasks", &id.to_string()], &[])
                .await
                .with_context(|| format!("cannot show task {id}"))?;
            let task = Task::from_json(answer.body)?;
            emit(format, &task.json, || output::task_summary(&task.view))?;
            Ok(EXIT_OK)
        }
        TaskCommand::List {
            state,
            agent,
            target,
            limit,
        } => {
            let mut query = Vec::new();
            if let Some(s) = state {
                query.push(("state", s.as_str().to_owned()));
            }
            if let Some(a) = agent {
                query.push(("agent", a));
            }
            if let Some(t) = target {
                query.push(("target", t));
            }
            if let Some(n) = limit {
                query.push(("limit", n.to_string()));
            }
            let answer = client
                .get(&["v1", "tasks"], &query)
                .await
                .context("cannot list tasks")?;
            let list = as_list(&answer.body);
            emit(format, &answer.body, || {
                let views: Vec<TaskView> = list
                    .iter()
                    .filter_map(|t| serde_json::from_value(t.clone()).ok())
                    .collect();
                output::tasks_table(&views)
            })?;
            Ok(EXIT_OK)
        }
        TaskCommand::Wait { id } => {
            let answer = client
                .get(&["v1", "tasks", &id.to_string()], &[])
                .await
                .with_context(|| format!("cannot find task {id}"))?;
            let task = Task::from_json(answer.body)?;
            let done = if task.view.state.is_terminal() {
                task
            } else {
                wait_for(&client, &task.view).await?
            };
            emit(format, &done.json, || output::task_summary(&done.view))?;
            Ok(outcome_code(done.view.state))
        }
        TaskCommand::Cancel { id } => {
            let answer = client
                .post(&["v1", "tasks", &id.to_string(), "cancel"], &json!({}))
                .await
                .with_context(|| format!("cannot cancel task {id}"))?;
            let json = if answer.body.is_null() {
                client
                    .get(&["v1", "tasks", &id.to_string()], &[])
                    .await
                    .with_context(|| format!("cannot show task {id}"))?
                    .body
            } else {
                answer.body
            };
            let task = Task::from_json(json)?;
            emit(format, &task.json, || {
                let note = if task.view.state.is_terminal() {
                    String::new()
                } else {
                    format!(
                        "Cancel requested: the agent aborts at its next safe step and rolls back.\n\
                         Follow it with: wharf task wait {id}\n"
                    )
                };
                format!("{}\n{note}", output::task_headline(&task.view))
            })?;
            Ok(EXIT_OK)
        }
    }
}

async fn audit_log(conn: &ConnectionArgs, format: OutputFormat, args: AuditLogArgs) -> Result<u8> {
    let client = Client::new(conn)?;
    match args.command {
        Some(AuditLogCommand::Verify) => {
            let answer = client
                .get(&["v1", "audit-log", "verify"], &[])
                .await
                .context("cannot verify the audit log")?;
            let b = &answer.body;
            let ok = b.get("ok").and_then(Value::as_bool) == Some(true);
            emit(format, b, || {
                if ok {
                    format!(
                        "Audit log intact: {} entries, hash chain verified.\n",
                        output::cell(b.get("entries"))
                    )
                } else {
                    format!(
                        "Audit log BROKEN at entry {}: {}\n",
                        output::cell(b.get("broken_at")),
                        output::cell(b.get("reason"))
                    )
                }
            })?;
            Ok(if ok { EXIT_OK } else { EXIT_FAILED })
        }
        None => {
            let mut query = Vec::new();
            if let Some(after) = args.after {
                query.push(("after", after.to_string()));
            }
            if let Some(limit) = args.limit {
                query.push(("limit", limit.to_string()));
            }
            let answer = client
                .get(&["v1", "audit-log"], &query)
                .await
                .context("cannot read the audit log")?;
            emit(format, &answer.body, || {
                output::audit_table(as_list(&answer.body))
            })?;
            Ok(EXIT_OK)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_from_stdin() {
        assert_eq!(read_password(&b"s3cret\n"[..]).unwrap().as_str(), "s3cret");
        assert_eq!(read_password(&b"a b\r\n"[..]).unwrap().as_str(), "a b");
        let err = read_password(&b"\n"[..]).unwrap_err();
        assert_eq!(
            super::super::error::exit_code_of(&err),
            super::super::error::EXIT_INVALID
        );
    }

    #[test]
    fn lists_and_outcomes() {
        assert_eq!(as_list(&json!([1, 2])).len(), 2);
        assert_eq!(as_list(&json!({"agents": [1]})).len(), 1);
        assert!(as_list(&json!({"x": 1})).is_empty());
        assert_eq!(outcome_code(TaskState::Succeeded), EXIT_OK);
        for s in [TaskState::Failed, TaskState::Expired, TaskState::Cancelled] {
            assert_eq!(outcome_code(s), EXIT_FAILED);
        }
    }
}
