//! Pure builders: parsed command-line arguments (or a deploy file) to the
//! [`SubmitRequest`] body of `POST /v1/tasks`.
//!
//! Everything is checked here, before any connection is made: a refused value is an
//! [`InvalidInput`] naming the flag (`--port`) or the file field (`deploy.yaml: ports[1]`,
//! with its line), and the command exits 2 with nothing submitted. The last check is core's
//! own [`validate`](crate::engine::model::validate), so what passes here is what core
//! accepts.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use wharf_protocol::{
    DeploySpec, DurationMs, HealthCheckSpec, HealthProbe, HealthSpec, HookSpec, PortMapping,
    Priority, ReleaseInfo, RestartPolicy, RollbackSpec, TaskPayload, VolumeMount,
};

use super::args::{DeployArgs, HealthArgs, RollbackArgs, SubmitArgs, TargetArgs};
use super::error::InvalidInput;
use super::parse::{self, Reason};
use crate::engine::model::{validate, InvalidSubmit, SubmitRequest};

/// Where the values of a request came from, for naming the field at fault.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// Command-line flags: fields are named `--flag-name`.
    Flags,
    /// A deploy file: fields are named `FILE: field`.
    File(&'a str),
}

impl Source<'_> {
    /// The name of a field (`snake_case`) in this source.
    fn name(self, field: &str) -> String {
        match self {
            Source::Flags => format!("--{}", field.replace('_', "-")),
            Source::File(file) => format!("{file}: {field}"),
        }
    }

    /// Maps core's validation error (whose field is a path in the request body) onto the
    /// operator's flag or file field.
    fn invalid(self, err: InvalidSubmit) -> InvalidInput {
        let InvalidSubmit::Field { field, reason } = err;
        let short = field
            .strip_prefix("payload.")
            .and_then(|rest| rest.split_once('.').map(|(_, f)| f))
            .unwrap_or(&field);
        InvalidInput::new(self.name(short), reason)
    }
}

/// Parses an optional flag value, naming the flag in the error.
fn flag<T>(
    name: &str,
    value: Option<&String>,
    parse: impl Fn(&str) -> Result<T, Reason>,
) -> Result<Option<T>, InvalidInput> {
    value
        .map(|v| parse(v).map_err(|reason| InvalidInput::new(format!("--{name}"), reason)))
        .transpose()
}

fn retries(s: &str) -> Result<u32, Reason> {
    match s.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}` is not a retry count: give a whole number of at least 1"
        )),
    }
}

fn network(s: &str) -> Result<String, Reason> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a network name: use letters, digits, `_`, `.` and `-`"
        ))
    }
}

/// The health settings of the flags, over [`HealthSpec::default`] (Docker's own
/// HEALTHCHECK, every 2 s, 3 retries, 60 s overall).
pub fn health_spec(h: &HealthArgs) -> Result<HealthSpec, InvalidInput> {
    let mut spec = HealthSpec::default();
    if let Some(probe) = flag("health-http", h.health_http.as_ref(), parse::health_http)? {
        spec.probe = probe;
    }
    if let Some(probe) = flag("health-tcp", h.health_tcp.as_ref(), parse::health_tcp)? {
        spec.probe = probe;
    }
    if let Some(probe) = flag("health-cmd", h.health_cmd.as_ref(), parse::health_cmd)? {
        spec.probe = probe;
    }
    if h.health_none {
        spec.probe = HealthProbe::None;
    }
    if let Some(d) = flag(
        "health-timeout",
        h.health_timeout.as_ref(),
        parse::positive_duration,
    )? {
        spec.deadline = d;
    }
    if let Some(d) = flag(
        "health-interval",
        h.health_interval.as_ref(),
        parse::positive_duration,
    )? {
        spec.interval = d;
    }
    if let Some(n) = flag("health-retries", h.health_retries.as_ref(), retries)? {
        spec.retries = n;
    }
    if let Some(d) = flag(
        "health-start-period",
        h.health_start_period.as_ref(),
        parse::duration,
    )? {
        spec.start_period = d;
    }
    Ok(spec)
}

fn has_health_flags(h: &HealthArgs) -> bool {
    h.health_http.is_some()
        || h.health_tcp.is_some()
        || h.health_cmd.is_some()
        || h.health_none
        || h.health_timeout.is_some()
        || h.health_interval.is_some()
        || h.health_retries.is_some()
        || h.health_start_period.is_some()
}

/// Queueing options of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SubmitOptions {
    idempotency_key: Option<String>,
    priority: Option<Priority>,
    expires_in: Option<DurationMs>,
    timeout: Option<DurationMs>,
}

fn submit_options(s: &SubmitArgs) -> Result<SubmitOptions, InvalidInput> {
    Ok(SubmitOptions {
        idempotency_key: s.idempotency_key.clone(),
        priority: flag("priority", s.priority.as_ref(), |p| {
            p.parse::<Priority>().map_err(|e| e.to_string())
        })?,
        expires_in: flag(
            "expires-in",
            s.expires_in.as_ref(),
            parse::positive_duration,
        )?,
        timeout: flag("timeout", s.timeout.as_ref(), parse::positive_duration)?,
    })
}

impl SubmitOptions {
    /// These options, with those of `over` taking precedence.
    fn overridden_by(self, over: SubmitOptions) -> SubmitOptions {
        SubmitOptions {
            idempotency_key: over.idempotency_key.or(self.idempotency_key),
            priority: over.priority.or(self.priority),
            expires_in: over.expires_in.or(self.expires_in),
            timeout: over.timeout.or(self.timeout),
        }
    }

    fn request(self, agent: String, target: String, payload: TaskPayload) -> SubmitRequest {
        SubmitRequest {
            agent,
            target,
            payload,
            priority: self.priority.unwrap_or_default(),
            idempotency_key: self.idempotency_key,
            expires_at: None,
            expires_in: self.expires_in,
            timeout: self.timeout,
            max_attempts: None,
        }
    }
}

/// Everything of a deploy, parsed, from flags or a file.
#[derive(Debug, Clone)]
struct DeployFields {
    agent: String,
    target: String,
    image: String,
    release: Option<ReleaseInfo>,
    ports: Vec<PortMapping>,
    env: BTreeMap<String, String>,
    volumes: Vec<VolumeMount>,
    networks: Vec<String>,
    restart: Option<RestartPolicy>,
    memory_bytes: Option<u64>,
    nano_cpus: Option<u64>,
    stop_grace: Option<DurationMs>,
    health: HealthSpec,
    pre_hook: Option<String>,
    post_hook: Option<String>,
    options: SubmitOptions,
}

impl DeployFields {
    fn into_request(self, source: Source<'_>) -> Result<SubmitRequest, InvalidInput> {
        let mut spec = DeploySpec::new(self.image);
        spec.release = self.release.unwrap_or_default();
        spec.env = self.env;
        spec.ports = self.ports;
        spec.volumes = self.volumes;
        spec.networks = self.networks;
        if let Some(restart) = self.restart {
            spec.restart = restart;
        }
        spec.memory_bytes = self.memory_bytes;
        spec.nano_cpus = self.nano_cpus;
        if let Some(grace) = self.stop_grace {
            spec.stop_grace = grace;
        }
        spec.health = self.health;
        spec.pre_hook = self.pre_hook.map(HookSpec::image);
        spec.post_hook = self.post_hook.map(HookSpec::image);
        let req = self
            .options
            .request(self.agent, self.target, TaskPayload::Deploy(spec));
        validate(&req).map_err(|e| source.invalid(e))?;
        Ok(req)
    }
}

fn required<'a>(name: &str, value: Option<&'a String>) -> Result<&'a String, InvalidInput> {
    value.ok_or_else(|| InvalidInput::new(format!("--{name}"), "is required"))
}

/// The `POST /v1/tasks` body of `wharf deploy` given by flags (without `-f`).
pub fn deploy_request(args: &DeployArgs) -> Result<SubmitRequest, InvalidInput> {
    if args.file.is_some() {
        return Err(InvalidInput::new(
            "--file",
            "read the file with deploy_request_from_yaml",
        ));
    }
    let image = required("image", args.image.as_ref())?;
    let image = parse::pinned_image(image).map_err(|r| InvalidInput::new("--image", r))?;
    let list = |name: &str, values: &[String], p: fn(&str) -> Result<_, Reason>| {
        values
            .iter()
            .map(|v| p(v).map_err(|r| InvalidInput::new(format!("--{name}"), r)))
            .collect::<Result<Vec<_>, _>>()
    };
    let fields = DeployFields {
        agent: required("agent", args.agent.as_ref())?.clone(),
        target: required("target", args.target.as_ref())?.clone(),
        image,
        release: flag("release", args.release.as_ref(), parse::release)?,
        ports: list("port", &args.ports, parse::port)?,
        env: parse::env_map(args.env.iter().map(String::as_str))
            .map_err(|r| InvalidInput::new("--env", r))?,
        volumes: args
            .volumes
            .iter()
            .map(|v| parse::volume(v).map_err(|r| InvalidInput::new("--volume", r)))
            .collect::<Result<_, _>>()?,
        networks: args
            .networks
            .iter()
            .map(|v| network(v).map_err(|r| InvalidInput::new("--network", r)))
            .collect::<Result<_, _>>()?,
        restart: flag("restart", args.restart.as_ref(), parse::restart)?,
        memory_bytes: flag("memory", args.memory.as_ref(), parse::memory)?,
        nano_cpus: flag("cpus", args.cpus.as_ref(), parse::cpus)?,
        stop_grace: flag("stop-grace", args.stop_grace.as_ref(), parse::duration)?,
        health: health_spec(&args.health)?,
        pre_hook: flag("pre-hook", args.pre_hook.as_ref(), parse::pinned_image)?,
        post_hook: flag("post-hook", args.post_hook.as_ref(), parse::pinned_image)?,
        options: submit_options(&args.submit)?,
    };
    fields.into_request(Source::Flags)
}

/// The `POST /v1/tasks` body of `wharf deploy -f FILE`: the YAML `text` of the file named
/// `file` (see the operator guide for the schema). Queueing flags given on the command
/// line (`--idempotency-key`, `--priority`, `--expires-in`, `--timeout`) override the
/// file's; health flags are refused (write them in the file).
pub fn deploy_request_from_yaml(
    file: &str,
    text: &str,
    args: &DeployArgs,
) -> Result<SubmitRequest, InvalidInput> {
    if has_health_flags(&args.health) {
        return Err(InvalidInput::new(
            "--health-*",
            format!("with -f, write the health settings in {file} under `health:`"),
        ));
    }
    let overrides = submit_options(&args.submit)?;
    let doc: DeployFile = parse_yaml(file, text)?;
    let source = Source::File(file);
    let health = doc.health.unwrap_or_default().into_spec(source)?;
    let fields = DeployFields {
        agent: doc.agent,
        target: doc.target,
        image: doc.image.0,
        release: doc.release.map(|r| r.0),
        ports: doc.ports.into_iter().map(|p| p.0).collect(),
        env: doc.env.into_iter().map(|(k, v)| (k.0, v.0)).collect(),
        volumes: doc.volumes.into_iter().map(|v| v.0).collect(),
        networks: doc.networks.into_iter().map(|n| n.0).collect(),
        restart: doc.restart.map(|r| r.0),
        memory_bytes: doc.memory.map(|m| m.0),
        nano_cpus: doc.cpus.map(|c| c.0),
        stop_grace: doc.stop_grace.map(|d| d.0),
        health,
        pre_hook: doc.pre_hook.map(|h| h.0),
        post_hook: doc.post_hook.map(|h| h.0),
        options: SubmitOptions {
            idempotency_key: doc.idempotency_key,
            priority: doc.priority,
            expires_in: doc.expires_in.map(|d| d.0),
            timeout: doc.timeout.map(|d| d.0),
        }
        .overridden_by(overrides),
    };
    fields.into_request(source)
}

/// Deserializes YAML, naming the field path and the line of the first error.
fn parse_yaml<T: for<'de> Deserialize<'de>>(file: &str, text: &str) -> Result<T, InvalidInput> {
    let de = serde_norway::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        if path.is_empty() || path == "." {
            InvalidInput::new(file, message)
        } else {
            let reason = strip_path_prefix(&message, &path).to_owned();
            InvalidInput::new(format!("{file}: {path}"), reason)
        }
    })
}

/// The YAML library starts some messages with the path of the enclosing node (`env: ...`);
/// the field is named already, so that prefix is dropped.
fn strip_path_prefix<'a>(message: &'a str, path: &str) -> &'a str {
    let mut candidate = path;
    loop {
        if let Some(rest) = message
            .strip_prefix(candidate)
            .and_then(|r| r.strip_prefix(": "))
        {
            return rest;
        }
        match candidate.rfind(['.', '[']) {
            Some(i) if i > 0 => candidate = &candidate[..i],
            _ => return message,
        }
    }
}

/// The `POST /v1/tasks` body of `wharf rollback`.
pub fn rollback_request(args: &RollbackArgs) -> Result<SubmitRequest, InvalidInput> {
    let spec = RollbackSpec {
        to: flag("to", args.to.as_ref(), parse::digest)?,
        health: health_spec(&args.health)?,
        sticker: None,
    };
    let req = submit_options(&args.submit)?.request(
        args.target.agent.clone(),
        args.target.target.clone(),
        TaskPayload::Rollback(spec),
    );
    validate(&req).map_err(|e| Source::Flags.invalid(e))?;
    Ok(req)
}

/// The `POST /v1/tasks` body of `wharf compose deploy`: the lock and files are read,
/// and the expected digests taken from the lock, which must pin every service.
pub fn compose_deploy_request(
    args: &super::args::ComposeDeployArgs,
) -> Result<SubmitRequest, InvalidInput> {
    use wharf_protocol::compose::{expected_digests, is_compose_file_name, ComposeLock};
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| {
            InvalidInput::new(
                what.to_string(),
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    let lock = read("--lock", &args.lock)?;
    let mut locks = vec![ComposeLock::parse(&args.lock.display().to_string(), &lock)
        .map_err(|e| InvalidInput::new("--lock", e.to_string()))?];
    let mut files = Vec::new();
    for path in &args.files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let content = read("--file", path)?;
        if is_compose_file_name(&name) {
            locks.push(
                ComposeLock::parse(&name, &content)
                    .map_err(|e| InvalidInput::new("--file", e.to_string()))?,
            );
        }
        files.push(wharf_protocol::ComposeFile { name, content });
    }
    let expected =
        expected_digests(&locks).map_err(|e| InvalidInput::new("--lock", e.to_string()))?;
    let spec = wharf_protocol::ComposeDeploySpec {
        project: args.project.clone(),
        lock,
        files,
        expected_digests: expected,
        release: flag("release", args.release.as_ref(), parse::release)?.unwrap_or_default(),
        health_timeout: flag(
            "health-timeout",
            args.health_timeout.as_ref(),
            parse::duration,
        )?
        .unwrap_or_default(),
        pre_hook: flag("pre-hook", args.pre_hook.as_ref(), parse::pinned_image)?
            .map(HookSpec::image),
        post_hook: flag("post-hook", args.post_hook.as_ref(), parse::pinned_image)?
            .map(HookSpec::image),
        sticker: None,
    };
    let req = submit_options(&args.submit)?.request(
        args.agent.clone(),
        args.project.clone(),
        TaskPayload::ComposeDeploy(spec),
    );
    validate(&req).map_err(|e| Source::Flags.invalid(e))?;
    Ok(req)
}

/// The `POST /v1/tasks` body of `wharf compose rollback`.
pub fn compose_rollback_request(
    args: &super::args::ComposeRollbackArgs,
) -> Result<SubmitRequest, InvalidInput> {
    let req = submit_options(&args.submit)?.request(
        args.agent.clone(),
        args.project.clone(),
        TaskPayload::ComposeRollback(wharf_protocol::ComposeRollbackSpec {
            project: args.project.clone(),
        }),
    );
    validate(&req).map_err(|e| Source::Flags.invalid(e))?;
    Ok(req)
}

/// The `POST /v1/tasks` body of `wharf health`.
pub fn health_request(
    target: &TargetArgs,
    health: &HealthArgs,
) -> Result<SubmitRequest, InvalidInput> {
    let spec = HealthCheckSpec {
        health: health_spec(health)?,
    };
    simple_request(target, TaskPayload::HealthCheck(spec))
}

/// The `POST /v1/tasks` body of a task without options (`inspect`, `read-sticker`).
pub fn simple_request(
    target: &TargetArgs,
    payload: TaskPayload,
) -> Result<SubmitRequest, InvalidInput> {
    let req =
        SubmitOptions::default().request(target.agent.clone(), target.target.clone(), payload);
    validate(&req).map_err(|e| Source::Flags.invalid(e))?;
    Ok(req)
}

/// The enrollment token TTL in milliseconds (`--ttl 1h`).
pub fn ttl_ms(ttl: Option<&String>) -> Result<Option<u64>, InvalidInput> {
    Ok(flag("ttl", ttl, parse::positive_duration)?.map(DurationMs::as_millis))
}

// ---------------------------------------------------------------------------------------
// The deploy file.

/// `wharf deploy -f FILE`: the flags of `wharf deploy` as YAML fields (snake_case).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployFile {
    agent: String,
    target: String,
    image: Image,
    #[serde(default)]
    release: Option<Release>,
    #[serde(default)]
    ports: Vec<Port>,
    #[serde(default)]
    env: BTreeMap<EnvKey, Scalar>,
    #[serde(default)]
    volumes: Vec<Volume>,
    #[serde(default)]
    networks: Vec<Network>,
    #[serde(default)]
    restart: Option<Restart>,
    #[serde(default)]
    memory: Option<Memory>,
    #[serde(default)]
    cpus: Option<Cpus>,
    #[serde(default)]
    stop_grace: Option<Duration>,
    #[serde(default)]
    health: Option<HealthFile>,
    #[serde(default)]
    pre_hook: Option<Image>,
    #[serde(default)]
    post_hook: Option<Image>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    priority: Option<Priority>,
    #[serde(default)]
    expires_in: Option<PositiveDuration>,
    #[serde(default)]
    timeout: Option<PositiveDuration>,
}

/// The `health:` section of a deploy file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    #[serde(default)]
    http: Option<HttpProbe>,
    #[serde(default)]
    tcp: Option<TcpProbe>,
    #[serde(default)]
    cmd: Option<Command>,
    #[serde(default)]
    none: bool,
    #[serde(default)]
    timeout: Option<PositiveDuration>,
    #[serde(default)]
    interval: Option<PositiveDuration>,
    #[serde(default)]
    retries: Option<Retries>,
    #[serde(default)]
    start_period: Option<Duration>,
}

impl HealthFile {
    fn into_spec(self, source: Source<'_>) -> Result<HealthSpec, InvalidInput> {
        let mut spec = HealthSpec::default();
        let probes = [
            self.http.map(|p| p.0),
            self.tcp.map(|p| p.0),
            self.cmd.map(|c| HealthProbe::Exec { cmd: c.0 }),
            self.none.then_some(HealthProbe::None),
        ];
        let mut given = probes.into_iter().flatten();
        if let Some(probe) = given.next() {
            spec.probe = probe;
        }
        if given.next().is_some() {
            return Err(InvalidInput::new(
                source.name("health"),
                "give only one probe of http, tcp, cmd and none",
            ));
        }
        if let Some(d) = self.timeout {
            spec.deadline = d.0;
        }
        if let Some(d) = self.interval {
            spec.interval = d.0;
        }
        if let Some(n) = self.retries {
            spec.retries = n.0;
        }
        if let Some(d) = self.start_period {
            spec.start_period = d.0;
        }
        Ok(spec)
    }
}

/// Accepts any YAML scalar (string, number, boolean), as written, and parses its text
/// with a [`parse`] function. The parse runs inside the visitor so that a refusal carries
/// the line and column of the value.
struct ParseVisitor<F> {
    expecting: &'static str,
    parse: F,
}

impl<T, F: FnOnce(&str) -> Result<T, Reason>> Visitor<'_> for ParseVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

/// A field whose YAML scalar is checked by one of the [`parse`] functions.
macro_rules! parsed_field {
    ($(#[$doc:meta])* $name:ident($ty:ty) = $parse:expr, $expecting:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        struct $name($ty);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(ParseVisitor {
                    expecting: $expecting,
                    parse: $parse,
                })
                .map($name)
            }
        }
    };
}

parsed_field!(
    /// A digest-pinned image reference.
    Image(String) = parse::pinned_image, "an image reference REPO@sha256:DIGEST"
);
parsed_field!(
    /// `NAME@VERSION`.
    Release(ReleaseInfo) = parse::release, "a release NAME@VERSION"
);
parsed_field!(
    /// `[IP:]HOST:CONTAINER[/PROTO]`.
    Port(PortMapping) = parse::port, "a port mapping HOST:CONTAINER"
);
parsed_field!(
    /// `SOURCE:DEST[:ro]`.
    Volume(VolumeMount) = parse::volume, "a mount SOURCE:DEST[:ro]"
);
parsed_field!(
    /// A Docker network name.
    Network(String) = network, "a network name"
);
parsed_field!(
    /// A restart policy.
    Restart(RestartPolicy) = parse::restart, "a restart policy"
);
parsed_field!(
    /// A memory size like `256m`.
    Memory(u64) = parse::memory, "a memory size like 256m"
);
parsed_field!(
    /// A CPU count like `0.5`.
    Cpus(u64) = parse::cpus, "a number of CPUs like 0.5"
);
parsed_field!(
    /// A duration like `60s`.
    Duration(DurationMs) = parse::duration, "a duration like 60s"
);
parsed_field!(
    /// A duration above zero.
    PositiveDuration(DurationMs) = parse::positive_duration, "a duration like 60s"
);
parsed_field!(
    /// A retry count.
    Retries(u32) = retries, "a retry count"
);
parsed_field!(
    /// `PORT/PATH`.
    HttpProbe(HealthProbe) = parse::health_http, "PORT/PATH like 8080/healthz"
);
parsed_field!(
    /// A container port.
    TcpProbe(HealthProbe) = parse::health_tcp, "a container port"
);
parsed_field!(
    /// An environment variable name.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    EnvKey(String) = |k: &str| parse::env_key(k).map(|()| k.to_owned()), "a variable name"
);
parsed_field!(
    /// An environment variable value (any scalar, as text).
    Scalar(String) = |v: &str| {
        if v.contains('\0') {
            Err("the value holds a NUL character".to_owned())
        } else {
            Ok(v.to_owned())
        }
    },
    "a string"
);

/// A health command: a string split like a shell would, or a list of words.
#[derive(Debug)]
struct Command(Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command: a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match parse::health_cmd(v).map_err(E::custom)? {
                    HealthProbe::Exec { cmd } => Ok(cmd),
                    _ => Err(E::custom("not a command")),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut words = Vec::new();
                while let Some(w) = seq.next_element::<String>()? {
                    words.push(w);
                }
                if words.is_empty() {
                    return Err(de::Error::custom(
                        "the health command is empty: give a program and its arguments",
                    ));
                }
                Ok(words)
            }
        }
        d.deserialize_any(V).map(Command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{Cli, Command as CliCommand};
    use clap::Parser;
    use wharf_protocol::PortProtocol;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn image() -> String {
        format!("127.0.0.1:5000/team/web:1.4@sha256:{D}")
    }

    fn deploy_args(extra: &[&str]) -> DeployArgs {
        let image = image();
        let mut argv = vec![
            "wharf", "deploy", "--agent", "web-1", "--target", "web", "--image", &image,
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).expect("parses").command {
            CliCommand::Deploy(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    fn deploy_spec(req: &SubmitRequest) -> &DeploySpec {
        match &req.payload {
            TaskPayload::Deploy(spec) => spec,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn minimal_deploy_has_defaults() {
        let req = deploy_request(&deploy_args(&[])).unwrap();
        assert_eq!((req.agent.as_str(), req.target.as_str()), ("web-1", "web"));
        assert_eq!(req.priority, Priority::Normal);
        assert_eq!(req.idempotency_key, None);
        assert_eq!((req.timeout, req.expires_in), (None, None));
        let spec = deploy_spec(&req);
        assert_eq!(spec, &DeploySpec::new(image()));
    }

    #[test]
    fn every_deploy_flag() {
        let hook = format!("hooks/migrate@sha256:{D}");
        let req = deploy_request(&deploy_args(&[
            "--release",
            "web@1.4.2",
            "--port",
            "8080:80",
            "-p",
            "127.0.0.1:5353:53/udp",
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--volume",
            "/srv/web:/data:ro",
            "-v",
            "cache:/cache",
            "--network",
            "front",
            "--network",
            "back",
            "--restart",
            "on-failure:3",
            "--memory",
            "256m",
            "--cpus",
            "0.5",
            "--stop-grace",
            "30s",
            "--health-http",
            "8080/healthz",
            "--health-timeout",
            "90s",
            "--health-interval",
            "1s",
            "--health-retries",
            "5",
            "--health-start-period",
            "10s",
            "--pre-hook",
            &hook,
            "--post-hook",
            &hook,
            "--idempotency-key",
            "ci-123",
            "--priority",
            "high",
            "--expires-in",
            "10m",
            "--timeout",
            "15m",
        ]))
        .unwrap();
        assert_eq!(req.priority, Priority::High);
        assert_eq!(req.idempotency_key.as_deref(), Some("ci-123"));
        assert_eq!(req.expires_in, Some(DurationMs::from_mins(10)));
        assert_eq!(req.timeout, Some(DurationMs::from_mins(15)));
        let spec = deploy_spec(&req);
        assert_eq!(
            (spec.release.name.as_str(), spec.release.version.as_str()),
            ("web", "1.4.2")
        );
        assert_eq!(spec.ports.len(), 2);
        assert_eq!(spec.ports[1].protocol, PortProtocol::Udp);
        assert_eq!(spec.env["B"], "x=y");
        assert!(spec.volumes[0].read_only && !spec.volumes[1].read_only);
        assert_eq!(spec.networks, ["front", "back"]);
        assert_eq!(spec.restart, RestartPolicy::OnFailure { max_retries: 3 });
        assert_eq!(spec.memory_bytes, Some(256 << 20));
        assert_eq!(spec.nano_cpus, Some(500_000_000));
        assert_eq!(spec.stop_grace, DurationMs::from_secs(30));
        assert_eq!(
            spec.health,
            HealthSpec {
                probe: HealthProbe::Http {
                    port: 8080,
                    path: "/healthz".into()
                },
                interval: DurationMs::from_secs(1),
                timeout: DurationMs::from_secs(5),
                retries: 5,
                start_period: DurationMs::from_secs(10),
                deadline: DurationMs::from_secs(90),
            }
        );
        assert_eq!(spec.pre_hook, Some(HookSpec::image(hook.clone())));
        assert_eq!(spec.post_hook, Some(HookSpec::image(hook)));
    }

    #[test]
    fn health_flags_to_spec() {
        let probe = |flags: &[&str]| {
            deploy_spec(&deploy_request(&deploy_args(flags)).unwrap())
                .health
                .probe
                .clone()
        };
        assert_eq!(probe(&[]), HealthProbe::DockerHealthcheck);
        assert_eq!(
            probe(&["--health-tcp", "5432"]),
            HealthProbe::Tcp { port: 5432 }
        );
        assert_eq!(probe(&["--health-none"]), HealthProbe::None);
        assert_eq!(
            probe(&["--health-cmd", "curl -f http://localhost/"]),
            HealthProbe::Exec {
                cmd: vec!["curl".into(), "-f".into(), "http://localhost/".into()]
            }
        );
        for (flags, what) in [
            (&["--health-timeout", "0s"][..], "--health-timeout"),
            (&["--health-interval", "x"][..], "--health-interval"),
            (&["--health-retries", "0"][..], "--health-retries"),
            (
                &["--health-start-period", "1y"][..],
                "--health-start-period",
            ),
            (&["--health-http", "x"][..], "--health-http"),
            (&["--health-cmd", "'"][..], "--health-cmd"),
        ] {
            let err = deploy_request(&deploy_args(flags)).unwrap_err();
            assert_eq!(err.what, what, "{err}");
        }
    }

    #[test]
    fn bad_flags_name_the_flag() {
        for (flags, what, needle) in [
            (&["--port", "80"][..], "--port", "names one port"),
            (&["--env", "A"][..], "--env", "KEY=VALUE"),
            (&["--env", "A=1", "--env", "A=2"][..], "--env", "twice"),
            (&["--volume", "data"][..], "--volume", "no destination"),
            (&["--network", "a b"][..], "--network", "not a network name"),
            (
                &["--restart", "maybe"][..],
                "--restart",
                "unknown restart policy",
            ),
            (&["--memory", "256"][..], "--memory", "minimum"),
            (&["--cpus", "0"][..], "--cpus", "above 0"),
            (&["--release", "web"][..], "--release", "NAME@VERSION"),
            (
                &["--pre-hook", "hook:latest"][..],
                "--pre-hook",
                "not pinned",
            ),
            (
                &["--priority", "urgent"][..],
                "--priority",
                "unknown priority",
            ),
            (&["--expires-in", "0s"][..], "--expires-in", "above zero"),
            (&["--timeout", "later"][..], "--timeout", "not a duration"),
            (
                &["--stop-grace", "later"][..],
                "--stop-grace",
                "not a duration",
            ),
            (
                &["--idempotency-key", ""][..],
                "--idempotency-key",
                "printable",
            ),
        ] {
            let err = deploy_request(&deploy_args(flags)).unwrap_err();
            assert_eq!(err.what, what, "{flags:?}: {err}");
            assert!(err.reason.contains(needle), "{flags:?}: {err}");
        }
    }

    #[test]
    fn unpinned_image_has_the_library_message() {
        let mut args = deploy_args(&[]);
        args.image = Some("web:latest".into());
        let err = deploy_request(&args).unwrap_err();
        assert_eq!(err.what, "--image");
        assert_eq!(
            err.reason,
            wharf_protocol::ImageRef::parse("web:latest")
                .unwrap_err()
                .to_string()
        );
    }

    #[test]
    fn core_validation_names_the_flag() {
        let mut args = deploy_args(&[]);
        args.target = Some("bad/name".into());
        let err = deploy_request(&args).unwrap_err();
        assert_eq!(err.what, "--target", "{err}");
        args.target = Some("web".into());
        args.agent = Some(String::new());
        assert_eq!(deploy_request(&args).unwrap_err().what, "--agent");
    }

    fn yaml(text: &str) -> Result<SubmitRequest, InvalidInput> {
        deploy_request_from_yaml("deploy.yaml", text, &DeployArgs::default())
    }

    #[test]
    fn yaml_equals_flags() {
        let hook = format!("hooks/migrate@sha256:{D}");
        let text = format!(
            r#"
agent: web-1
target: web
image: {image}
release: web@1.4.2
ports: ["8080:80", "127.0.0.1:5353:53/udp"]
env:
  A: 1
  B: x=y
volumes:
  - /srv/web:/data:ro
  - cache:/cache
networks: [front, back]
restart: on-failure:3
memory: 256m
cpus: 0.5
stop_grace: 30s
health:
  http: 8080/healthz
  timeout: 90s
  interval: 1s
  retries: 5
  start_period: 10s
pre_hook: {hook}
post_hook: {hook}
idempotency_key: ci-123
priority: high
expires_in: 10m
timeout: 15m
"#,
            image = image()
        );
        let from_file = yaml(&text).unwrap();
        let from_flags = deploy_request(&deploy_args(&[
            "--release",
            "web@1.4.2",
            "--port",
            "8080:80",
            "-p",
            "127.0.0.1:5353:53/udp",
            "--env",
            "A=1",
            "-e",
            "B=x=y",
            "--volume",
            "/srv/web:/data:ro",
            "-v",
            "cache:/cache",
            "--network",
            "front",
            "--network",
            "back",
            "--restart",
            "on-failure:3",
            "--memory",
            "256m",
            "--cpus",
            "0.5",
            "--stop-grace",
            "30s",
            "--health-http",
            "8080/healthz",
            "--health-timeout",
            "90s",
            "--health-interval",
            "1s",
            "--health-retries",
            "5",
            "--health-start-period",
            "10s",
            "--pre-hook",
            &hook,
            "--post-hook",
            &hook,
            "--idempotency-key",
            "ci-123",
            "--priority",
            "high",
            "--expires-in",
            "10m",
            "--timeout",
            "15m",
        ]))
        .unwrap();
        assert_eq!(from_file, from_flags);
    }

    #[test]
    fn yaml_minimal_and_scalars() {
        let req = yaml(&format!("agent: a\ntarget: web\nimage: {}\n", image())).unwrap();
        assert_eq!(deploy_spec(&req), &DeploySpec::new(image()));
        // Scalars keep their text: a version-like value is not turned into a float.
        let req = yaml(&format!(
            "agent: a\ntarget: web\nimage: {}\nenv:\n  V: 1.10\n  T: true\ncpus: 0.50\nmemory: 1G\n",
            image()
        ))
        .unwrap();
        let spec = deploy_spec(&req);
        assert_eq!(spec.env["V"], "1.10");
        assert_eq!(spec.env["T"], "true");
        assert_eq!(spec.nano_cpus, Some(500_000_000));
        assert_eq!(spec.memory_bytes, Some(1 << 30));
    }

    #[test]
    fn yaml_health_forms() {
        let base = format!("agent: a\ntarget: web\nimage: {}\n", image());
        let probe = |h: &str| {
            deploy_spec(&yaml(&format!("{base}health:\n{h}")).unwrap())
                .health
                .probe
                .clone()
        };
        assert_eq!(probe("  tcp: 5432\n"), HealthProbe::Tcp { port: 5432 });
        assert_eq!(probe("  none: true\n"), HealthProbe::None);
        assert_eq!(
            probe("  cmd: pg_isready -U app\n"),
            HealthProbe::Exec {
                cmd: vec!["pg_isready".into(), "-U".into(), "app".into()]
            }
        );
        assert_eq!(
            probe("  cmd: [sh, -c, 'test -f /ready']\n"),
            HealthProbe::Exec {
                cmd: vec!["sh".into(), "-c".into(), "test -f /ready".into()]
            }
        );
        let err = yaml(&format!("{base}health:\n  tcp: 1\n  http: 1/x\n")).unwrap_err();
        assert_eq!(err.what, "deploy.yaml: health");
        assert!(err.reason.contains("only one probe"), "{err}");
    }

    #[test]
    fn yaml_errors_name_field_and_line() {
        let base = format!("agent: a\ntarget: web\nimage: {}\n", image());
        let check = |text: &str, what: &str, needles: &[&str]| {
            let err = yaml(text).unwrap_err();
            assert_eq!(err.what, what, "{err}");
            for n in needles {
                assert!(err.reason.contains(n), "{n}: {err}");
            }
        };
        check(
            "agent: a\ntarget: web\nimage: web:latest\n",
            "deploy.yaml: image",
            &["is not pinned", "line 3"],
        );
        check(
            &format!("{base}ports:\n  - 8080:80\n  - \"80\"\n"),
            "deploy.yaml: ports[1]",
            &["names one port", "line 6"],
        );
        check(
            &format!("{base}imgae: x\n"),
            "deploy.yaml: imgae",
            &["unknown field `imgae`", "line 4"],
        );
        check(
            &format!("{base}health:\n  htp: 1\n"),
            "deploy.yaml: health.htp",
            &["unknown field `htp`", "line 5"],
        );
        check(
            &format!("{base}memory: 12\n"),
            "deploy.yaml: memory",
            &["minimum", "line 4"],
        );
        check(
            &format!("{base}cpus: lots\n"),
            "deploy.yaml: cpus",
            &["not a number"],
        );
        check(
            &format!("{base}env:\n  A B: 1\n"),
            "deploy.yaml: env.A B",
            &["may not hold", "line 5"],
        );
        let err = yaml(&format!("{base}env:\n  A B: 1\n")).unwrap_err();
        assert!(err.reason.starts_with("environment variable name"), "{err}");
        check(
            &format!("{base}restart: later\n"),
            "deploy.yaml: restart",
            &["unknown restart policy"],
        );
        check(
            &format!("{base}volumes: [data]\n"),
            "deploy.yaml: volumes[0]",
            &["no destination"],
        );
        check(
            &format!("{base}priority: urgent\n"),
            "deploy.yaml: priority",
            &["unknown variant `urgent`"],
        );
        check(
            &format!("{base}timeout: 0s\n"),
            "deploy.yaml: timeout",
            &["above zero"],
        );
        check(
            &format!("{base}release: web\n"),
            "deploy.yaml: release",
            &["NAME@VERSION"],
        );
        check(
            &format!("{base}health:\n  retries: 0\n"),
            "deploy.yaml: health.retries",
            &["at least 1"],
        );
        check(
            &format!("{base}health:\n  cmd: []\n"),
            "deploy.yaml: health.cmd",
            &["empty"],
        );
        check(
            "agent: a\ntarget: web\n",
            "deploy.yaml",
            &["missing field `image`"],
        );
        check("agent: a\n\tbad: 1\n", "deploy.yaml: agent", &["line 2"]);
        check(
            &format!("agent: a\ntarget: b/c\nimage: {}\n", image()),
            "deploy.yaml: target",
            &[],
        );
    }

    #[test]
    fn yaml_overrides_and_refusals() {
        let text = format!(
            "agent: a\ntarget: web\nimage: {}\nidempotency_key: file\npriority: low\n",
            image()
        );
        let mut args = DeployArgs::default();
        args.submit.idempotency_key = Some("cli".into());
        let req = deploy_request_from_yaml("d.yaml", &text, &args).unwrap();
        assert_eq!(req.idempotency_key.as_deref(), Some("cli"));
        assert_eq!(req.priority, Priority::Low);
        args.health.health_none = true;
        let err = deploy_request_from_yaml("d.yaml", &text, &args).unwrap_err();
        assert!(err.reason.contains("under `health:`"), "{err}");
    }

    #[test]
    fn rollback_health_and_read_requests() {
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).expect("parses").command;
        let CliCommand::Rollback(args) =
            parse(&["wharf", "rollback", "--agent", "a", "--target", "web"])
        else {
            panic!()
        };
        let req = rollback_request(&args).unwrap();
        assert_eq!(req.payload, TaskPayload::Rollback(RollbackSpec::default()));
        let to = format!("sha256:{D}");
        let CliCommand::Rollback(args) = parse(&[
            "wharf",
            "rollback",
            "--agent",
            "a",
            "--target",
            "web",
            "--to",
            &to,
            "--health-tcp",
            "80",
        ]) else {
            panic!()
        };
        let TaskPayload::Rollback(spec) = rollback_request(&args).unwrap().payload else {
            panic!()
        };
        assert_eq!(spec.to.as_deref(), Some(to.as_str()));
        assert_eq!(spec.health.probe, HealthProbe::Tcp { port: 80 });
        let CliCommand::Rollback(args) = parse(&[
            "wharf", "rollback", "--agent", "a", "--target", "web", "--to", "abc",
        ]) else {
            panic!()
        };
        let err = rollback_request(&args).unwrap_err();
        assert_eq!(err.what, "--to");

        let CliCommand::Health(args) =
            parse(&["wharf", "health", "--agent", "a", "--target", "web"])
        else {
            panic!()
        };
        let req = health_request(&args.target, &args.health).unwrap();
        assert_eq!(
            req.payload,
            TaskPayload::HealthCheck(HealthCheckSpec::default())
        );

        let target = TargetArgs {
            agent: "a".into(),
            target: "web".into(),
        };
        assert_eq!(
            simple_request(&target, TaskPayload::Inspect)
                .unwrap()
                .payload,
            TaskPayload::Inspect
        );
        let bad = TargetArgs {
            agent: "a".into(),
            target: "../etc".into(),
        };
        assert_eq!(
            simple_request(&bad, TaskPayload::ReadSticker)
                .unwrap_err()
                .what,
            "--target"
        );
    }

    #[test]
    fn ttl() {
        assert_eq!(ttl_ms(Some(&"1h".to_owned())).unwrap(), Some(3_600_000));
        assert_eq!(ttl_ms(None).unwrap(), None);
        assert_eq!(ttl_ms(Some(&"0s".to_owned())).unwrap_err().what, "--ttl");
    }

    #[test]
    fn compose_deploy_takes_the_expected_digests_from_the_lock_and_refuses_an_unpinned_one() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock.yml");
        let over = dir.path().join("override.yml");
        std::fs::write(
            &lock,
            format!("services:\n  web:\n    image: r/web@sha256:{D}\n  api:\n    image: r/api@sha256:{D}\n"),
        )
        .unwrap();
        std::fs::write(&over, "services:\n  web:\n    environment: {A: b}\n").unwrap();
        let args = |lock: &std::path::Path| compose_args(lock, &over, &[]);
        let req = compose_deploy_request(&args(&lock)).unwrap();
        let TaskPayload::ComposeDeploy(spec) = &req.payload else {
            panic!("compose payload expected");
        };
        assert_eq!(req.target, "shop");
        assert_eq!(spec.expected_digests.len(), 2);
        assert_eq!(spec.expected_digests["web"], format!("sha256:{D}"));
        assert_eq!(spec.files[0].name, "override.yml");
        assert_eq!(spec.release.version, "3");

        std::fs::write(&lock, "services:\n  web:\n    image: r/web:latest\n").unwrap();
        let err = compose_deploy_request(&args(&lock)).unwrap_err();
        assert_eq!(err.what, "--lock");
        assert!(err.reason.contains("`web`"), "{err:?}");
        std::fs::write(&lock, "services:\n  web:\n    build: .\n").unwrap();
        assert!(compose_deploy_request(&args(&lock)).is_err());
    }

    /// `wharf compose deploy --agent a --project shop --lock LOCK --file OVER --release
    /// shop@3` and `extra`.
    fn compose_args(
        lock: &std::path::Path,
        over: &std::path::Path,
        extra: &[&str],
    ) -> crate::cli::args::ComposeDeployArgs {
        let mut argv = vec![
            "wharf",
            "compose",
            "deploy",
            "--agent",
            "a",
            "--project",
            "shop",
            "--lock",
            lock.to_str().unwrap(),
            "--file",
            over.to_str().unwrap(),
            "--release",
            "shop@3",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).unwrap();
        let CliCommand::Compose(crate::cli::args::ComposeCommand::Deploy(args)) = cli.command
        else {
            panic!("compose deploy expected");
        };
        args
    }

    #[test]
    fn compose_deploy_takes_pinned_hooks_and_refuses_unpinned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock.yml");
        let over = dir.path().join("override.yml");
        std::fs::write(
            &lock,
            format!("services:\n  web:\n    image: r/web@sha256:{D}\n"),
        )
        .unwrap();
        std::fs::write(&over, "services:\n  web:\n    environment: {A: b}\n").unwrap();
        let pre = format!("hooks/migrate@sha256:{D}");
        let post = format!("hooks/smoke@sha256:{D}");
        let req = compose_deploy_request(&compose_args(
            &lock,
            &over,
            &["--pre-hook", &pre, "--post-hook", &post],
        ))
        .unwrap();
        let TaskPayload::ComposeDeploy(spec) = &req.payload else {
            panic!("compose payload expected");
        };
        assert_eq!(spec.pre_hook, Some(HookSpec::image(pre.clone())));
        assert_eq!(spec.post_hook, Some(HookSpec::image(post)));
        let req = compose_deploy_request(&compose_args(&lock, &over, &[])).unwrap();
        let TaskPayload::ComposeDeploy(spec) = &req.payload else {
            panic!("compose payload expected");
        };
        assert_eq!((&spec.pre_hook, &spec.post_hook), (&None, &None));

        for (flag, value) in [
            ("--pre-hook", "hooks/migrate:latest"),
            ("--post-hook", "hooks/smoke"),
            ("--post-hook", "hooks/smoke@sha256:abc"),
        ] {
            let err =
                compose_deploy_request(&compose_args(&lock, &over, &[flag, value])).unwrap_err();
            assert_eq!(err.what, flag, "{err}");
            assert!(err.reason.contains("sha256"), "{err}");
        }
    }
}
