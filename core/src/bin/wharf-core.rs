//! `wharf-core`: the Wharf core server (design.md §3, §7).
//!
//! ```text
//! wharf-core serve --data-dir DIR [--listen 0.0.0.0:7443] [--name HOST]... [--config FILE]
//!                  [--long-poll 25s] [--poll-rate 20] [--poll-max-in-flight 20000]
//! ```
//!
//! Settings come from, in order of precedence: flags; the environment (`WHARF_DATA_DIR`,
//! `WHARF_LISTEN`, `WHARF_NAMES` comma-separated, `WHARF_MASTER_KEY`, `WHARF_CONFIG`);
//! a JSON or YAML file given by `--config` with the keys `data_dir`, `listen`, `names`,
//! `master_key`; defaults. They are logged once at start, the master key redacted.
//!
//! On start it opens (or creates) the data dir, prints the CA fingerprint, the first admin
//! token (first start only) and a block of `export` lines for the CLI, then serves HTTPS
//! on the TCP address and the agent QUIC transport on the same port over UDP, until
//! SIGINT or SIGTERM: then it stops accepting, lets in-flight requests finish (a few
//! seconds at most) and exits 0.
//!
//! Exit codes: 0 after a clean shutdown, 2 for invalid input (flags, environment,
//! configuration file), 1 for anything else (data dir held by another process, port in
//! use...).

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use wharf_core::api::{self, ApiState, Metrics};
use wharf_core::app::{files, App, AppConfig, MASTER_KEY_ENV};
use wharf_core::directory::MasterKey;
use wharf_core::engine::EngineConfig;
use wharf_core::pki::SecretString;
use wharf_core::transport::poll::{PollConfig, PollHub};

/// Default listen address (TCP for HTTPS, UDP for QUIC).
const DEFAULT_LISTEN: &str = "0.0.0.0:7443";

#[derive(Debug, Parser)]
#[command(
    name = "wharf-core",
    version,
    about = "Wharf core: durable task queue, agent PKI, agent transports and the operator API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the core: HTTPS (operator API, enrollment) on TCP and QUIC (agents) on UDP.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Data dir: CA, keys, store, admin.token (created 0700 on first start).
    #[arg(long, env = "WHARF_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on, TCP (HTTPS) and UDP (QUIC) on the same port [default: 0.0.0.0:7443].
    #[arg(long, env = "WHARF_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// A DNS name or IP address agents and operators reach core by; the server certificate
    /// covers it (besides localhost and 127.0.0.1). Repeat for several.
    #[arg(
        long = "name",
        env = "WHARF_NAMES",
        value_name = "HOST",
        value_delimiter = ','
    )]
    names: Vec<String>,
    /// A JSON or YAML file with any of the keys data_dir, listen, names, master_key; flags
    /// and the environment override it.
    #[arg(long, env = "WHARF_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Longest time a poll request of the polling transport is held waiting for a task
    /// (e.g. 25s, 500ms; at most 50s).
    #[arg(long, env = "WHARF_LONG_POLL", value_name = "DURATION", default_value = "25s", value_parser = parse_duration)]
    long_poll: Duration,
    /// Poll requests one agent may make per second (sustained; bursts of twice as many).
    #[arg(long, env = "WHARF_POLL_RATE", value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    poll_rate: u32,
    /// Poll requests in flight (held or being served) in total; more get 429.
    #[arg(long, env = "WHARF_POLL_MAX_IN_FLIGHT", value_name = "N", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    poll_max_in_flight: u64,
    /// How long finished read-only tasks (inspect, read-sticker, health-check, the fleet
    /// audit's among them) are kept before core forgets them (e.g. 24h, 7d); `0` keeps
    /// them forever. Deploys and rollbacks are always kept.
    #[arg(long, env = "WHARF_READ_TASK_RETENTION", value_name = "DURATION", default_value = "24h", value_parser = parse_retention)]
    read_task_retention: Retention,
}

/// `--read-task-retention`: a duration, or forever.
#[derive(Debug, Clone, Copy)]
struct Retention(Option<Duration>);

fn parse_retention(text: &str) -> Result<Retention, String> {
    if text.trim() == "0" {
        return Ok(Retention(None));
    }
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}: expected a duration such as 24h or 7d, or 0 for forever"))?;
    if d < Duration::from_secs(60) {
        return Err("must be at least 1m (or 0 to keep them forever)".into());
    }
    Ok(Retention(Some(d)))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}: expected a duration such as 25s or 500ms"))?;
    if d.is_zero() || d > wharf_core::transport::poll::MAX_LONG_POLL {
        return Err(format!(
            "must be more than 0 and at most {}",
            humantime::format_duration(wharf_core::transport::poll::MAX_LONG_POLL)
        ));
    }
    Ok(d)
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    #[serde(default)]
    names: Option<Vec<String>>,
    master_key: Option<String>,
}

/// An error in what the operator gave (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InputError(String);

fn input(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError(message.into()))
}

#[derive(Debug, Clone, Copy)]
enum Source {
    Flag,
    Env,
    File,
    Default,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env => "env",
            Source::File => "config file",
            Source::Default => "default",
        }
    }
}

/// The settings once every source was consulted.
struct Settings {
    data_dir: (PathBuf, Source),
    listen: (SocketAddr, Source),
    names: (Vec<String>, Source),
    master_key: Option<(SecretString, Source)>,
    config_file: Option<PathBuf>,
    poll: PollConfig,
    read_task_retention: Option<Duration>,
}

fn source_of(matches: &ArgMatches, id: &str) -> Option<Source> {
    match matches.value_source(id) {
        Some(ValueSource::CommandLine) => Some(Source::Flag),
        Some(ValueSource::EnvVariable) => Some(Source::Env),
        _ => None,
    }
}

fn resolve(args: ServeArgs, matches: &ArgMatches) -> Result<Settings> {
    let poll = PollConfig {
        long_poll: args.long_poll,
        max_requests_per_sec: args.poll_rate,
        burst: args.poll_rate.saturating_mul(2),
        max_in_flight: usize::try_from(args.poll_max_in_flight).unwrap_or(usize::MAX),
        ..PollConfig::default()
    };
    let file = match &args.config {
        None => FileConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                input(format!(
                    "cannot read the configuration file {}: {e}",
                    path.display()
                ))
            })?;
            serde_norway::from_str::<FileConfig>(&text).map_err(|e| {
                input(format!(
                    "the configuration file {} is not valid (JSON or YAML with the keys data_dir, listen, names, master_key): {e}",
                    path.display()
                ))
            })?
        }
    };
    let file_dir = args
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();

    let data_dir =
        match (args.data_dir, file.data_dir) {
            (Some(dir), _) => (dir, source_of(matches, "data_dir").unwrap_or(Source::Flag)),
            // A relative path in the file is relative to the file.
            (None, Some(dir)) => (file_dir.join(dir), Source::File),
            (None, None) => return Err(input(
                "no data dir: pass --data-dir DIR (or set WHARF_DATA_DIR, or data_dir in --config)",
            )),
        };
    if data_dir.0.as_os_str().is_empty() {
        return Err(input("the data dir is empty: pass --data-dir DIR"));
    }

    let (listen_text, listen_source) = match (args.listen, file.listen) {
        (Some(text), _) => (text, source_of(matches, "listen").unwrap_or(Source::Flag)),
        (None, Some(text)) => (text, Source::File),
        (None, None) => (DEFAULT_LISTEN.to_string(), Source::Default),
    };
    let listen: SocketAddr = listen_text.trim().parse().map_err(|_| {
        input(format!(
            "invalid listen address {listen_text:?}: expected IP:PORT, e.g. 0.0.0.0:7443 or [::]:7443"
        ))
    })?;

    let names_flag: Vec<String> = args
        .names
        .into_iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    let names = if !names_flag.is_empty() {
        (
            names_flag,
            source_of(matches, "names").unwrap_or(Source::Flag),
        )
    } else if let Some(names) = file.names {
        (names, Source::File)
    } else {
        (Vec::new(), Source::Default)
    };

    let master_key = match std::env::var(MASTER_KEY_ENV) {
        Ok(key) if !key.trim().is_empty() => Some((SecretString::new(key), Source::Env)),
        _ => file
            .master_key
            .map(|key| (SecretString::new(key), Source::File)),
    };
    if let Some((key, source)) = &master_key {
        MasterKey::parse(key.expose().trim()).map_err(|_| {
            input(format!(
                "the master key from the {} is not a 256-bit key in hex (64 hex digits)",
                source.as_str()
            ))
        })?;
    }
    Ok(Settings {
        data_dir,
        listen: (listen, listen_source),
        names,
        master_key: master_key.map(|(k, s)| (SecretString::new(k.expose().trim().to_string()), s)),
        config_file: args.config,
        poll,
        read_task_retention: args.read_task_retention.0,
    })
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing();
    let Command::Serve(args) = cli.command;
    let serve_matches = matches
        .subcommand_matches("serve")
        .cloned()
        .unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("wharf-core: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result =
        resolve(args, &serve_matches).and_then(|settings| runtime.block_on(serve(settings)));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wharf-core: error: {error:#}");
            if error.chain().any(|e| e.is::<InputError>()) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(settings: Settings) -> Result<()> {
    let (data_dir, data_dir_from) = settings.data_dir;
    let (listen, listen_from) = settings.listen;
    let (names, names_from) = settings.names;
    let master_key = settings.master_key.as_ref().map_or_else(
        || format!("from {}", files::MASTER_KEY),
        |(_, source)| format!("[redacted] (from {})", source.as_str()),
    );
    tracing::info!(
        data_dir = %data_dir.display(),
        data_dir_from = data_dir_from.as_str(),
        listen = %listen,
        listen_from = listen_from.as_str(),
        names = ?names,
        names_from = names_from.as_str(),
        master_key = %master_key,
        config = ?settings.config_file,
        long_poll = ?settings.poll.long_poll,
        poll_rate = settings.poll.max_requests_per_sec,
        poll_max_in_flight = settings.poll.max_in_flight,
        read_task_retention = ?settings.read_task_retention,
        version = env!("CARGO_PKG_VERSION"),
        "wharf-core configuration"
    );

    let (app, boot) = App::open(AppConfig {
        data_dir: data_dir.clone(),
        server_names: names.clone(),
        master_key: settings.master_key.map(|(key, _)| key),
        engine: EngineConfig {
            read_task_retention: settings.read_task_retention,
            ..EngineConfig::default()
        },
    })
    .await?;
    // Absolute, so that the printed exports work from any directory.
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    let fingerprint = app.ca_fingerprint();
    println!(
        "wharf-core: CA fingerprint {fingerprint} (agents pin it with --ca-hash {fingerprint})"
    );
    if let Some(token) = &boot.admin_token {
        println!(
            "wharf-core: first start: admin API token (shown once; also in {}): {}",
            data_dir.join(files::ADMIN_TOKEN).display(),
            token.expose()
        );
    }
    drop(boot);

    let tls = api::tls_config(&app)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (tcp)"))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = watch::channel(false);

    // QUIC on the same port number over UDP.
    let quic_addr = SocketAddr::new(local.ip(), local.port());
    let quic_server = wharf_core::transport::QuicServer::bind(
        app.clone(),
        wharf_core::transport::QuicConfig::default(),
        metrics.quic(),
        quic_addr,
    )
    .with_context(|| format!("cannot listen on {quic_addr} (udp)"))?;
    let quic = tokio::spawn(quic_server.run(stopped.clone()));

    let poll_hub = PollHub::new(app.clone(), settings.poll.clone());
    let router = api::router_with_poll(
        ApiState {
            app: app.clone(),
            metrics: metrics.clone(),
            shutdown: stopped.clone(),
        },
        poll_hub,
    );
    let https = tokio::spawn(api::serve_https(
        listener,
        tls,
        router,
        metrics.clone(),
        stopped.clone(),
    ));
    println!("wharf-core: listening on https://{local} (tcp) and quic://{quic_addr} (udp)");
    let host = names
        .first()
        .map_or_else(|| "127.0.0.1".to_string(), |name| url_host(name));
    println!("export WHARF_URL=https://{host}:{}", local.port());
    println!(
        "export WHARF_TOKEN=$(cat {})",
        data_dir.join(files::ADMIN_TOKEN).display()
    );
    println!("export WHARF_CA={}", data_dir.join(files::CA_PEM).display());
    tracing::info!(%local, "wharf-core ready");

    let signal = wait_for_signal().await?;
    tracing::info!(
        signal,
        "shutting down: no new connections; in-flight requests get a few seconds"
    );
    let _ = stop.send(true);
    let https_result = https
        .await
        .map_err(|e| anyhow!("the HTTPS listener panicked: {e}"))?;
    let quic_result = quic
        .await
        .map_err(|e| anyhow!("the QUIC listener panicked: {e}"))?;
    https_result.context("the HTTPS listener failed")?;
    quic_result.context("the QUIC listener failed")?;
    // Last-seen times are written in batches; write what is left (a kill -9 loses at most
    // the last interval's times, which are no acknowledged state).
    match app.directory.persist_last_seen().await {
        Ok(agents) => tracing::info!(agents, "last-seen times written"),
        Err(error) => tracing::warn!(%error, "could not write the agents' last-seen times"),
    }
    tracing::info!("wharf-core stopped");
    Ok(())
}

/// A host for a URL: IPv6 literals in brackets.
fn url_host(name: &str) -> String {
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => name.to_string(),
    }
}

async fn wait_for_signal() -> Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}
