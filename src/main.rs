//! The `llmgate` command line. Everything it runs lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use llmgate::AdminKey;
use llmgate::Connectors;
use llmgate::Listeners;
use llmgate::config::Config;
use llmgate::logging::{self, LogFormat};
use llmgate::sim::SimApi;
use llmgate::sim::SimSettings;
use tokio::net::TcpListener;

/// A cluster-wide LLM gateway: one gRPC endpoint (llm.v1.LLMService) in
/// front of vLLM and other OpenAI-compatible servers, Ollama, Anthropic and
/// simulated upstreams, routed by model name and balanced per call.
#[derive(Parser)]
#[command(name = "llmgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on a routing file. gRPC (with health and reflection)
    /// on listen.grpc; /metrics, /healthz and /readyz on listen.metrics.
    Serve {
        /// The routing file (see the shipped routing.yaml). Edits to it apply
        /// live, as does SIGHUP; a broken edit is logged and changes nothing.
        #[arg(long, short, env = "LLMGATE_CONFIG", default_value = "routing.yaml")]
        config: PathBuf,
        /// Do not watch the routing file for changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
        /// How log lines look: text for people, json (one object per line)
        /// for log pipelines. RUST_LOG filters either; one access line per
        /// call is logged at info under the target llmgate::access.
        #[arg(long, env = "LLMGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Threads serving connections (default: one per CPU). Each runs
        /// a single-threaded runtime and keeps every connection it is given,
        /// with its calls, on itself: on the benchmark that measured about
        /// a fifth less CPU per call and per token than one shared runtime.
        /// One connection thus gets at most one core.
        #[arg(long, env = "LLMGATE_THREADS")]
        threads: Option<std::num::NonZeroUsize>,
        /// Allows `POST /-/reload` on the admin port to requests sending this
        /// key as `authorization: Bearer <key>`; without one that endpoint
        /// is off (SIGHUP and file edits still reload). Prefer the
        /// environment variable: a flag shows in the process list.
        #[arg(long, env = "LLMGATE_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
    },
    /// Validate a routing file and print what it routes; exits 1 with
    /// file:line:column messages when it is broken. For CI pipelines.
    Check {
        /// The routing file to check.
        file: PathBuf,
    },
    /// Stream one completion from a running gateway to the terminal.
    Chat {
        /// The model name to ask for (a route or alias in the routing file).
        #[arg(long, short)]
        model: String,
        /// The gateway's gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: String,
        /// Cap on generated tokens (0: the upstream's default).
        #[arg(long, default_value_t = 0)]
        max_tokens: i32,
        /// Deadline for the whole call, sent as grpc-timeout.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// The API key to call with, when the gateway requires one (sent as
        /// `authorization: Bearer <key>`). Prefer the environment variable:
        /// a flag shows in the process list.
        #[arg(long, env = "LLMGATE_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// The user message.
        prompt: String,
    },
    /// Serve a simulated model over a real upstream's HTTP API, for trying
    /// routes and load tests without a GPU or a cloud account: vLLM's
    /// OpenAI-compatible API (/v1/chat/completions, /v1/models, /health),
    /// Ollama's (/api/chat, /api/tags, /api/version) or Anthropic's
    /// (/v1/messages).
    Sim {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// The API to speak: route to it with an upstream of the same kind.
        #[arg(long, value_enum, default_value_t = Api::Openai)]
        api: Api,
        /// Delay before the first token.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        ttft: Duration,
        /// Tokens per second after the first (0: as fast as possible).
        #[arg(long, default_value_t = 100.0)]
        tokens_per_second: f64,
        /// Tokens per answer unless max_tokens is smaller.
        #[arg(long, default_value_t = 64)]
        output_tokens: u32,
        /// Share of calls (0 to 1) answered 503, as an overloaded server.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
    },
}

/// The APIs `llmgate sim` can speak, named as the routing file's kinds.
#[derive(Clone, Copy, ValueEnum)]
enum Api {
    /// vLLM's OpenAI-compatible API (kind: openai).
    Openai,
    /// Ollama's native API (kind: ollama).
    Ollama,
    /// Anthropic's Messages API (kind: anthropic).
    Anthropic,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of `main`: dropping it writes out the last lines.
    let _log = logging::init(match cli.command {
        Command::Serve { log_format, .. } => log_format,
        _ => LogFormat::Text,
    });
    if let Command::Check { file } = &cli.command {
        return check(file);
    }
    // `serve` serves connections on threads of their own (`--threads`);
    // its runtime accepts them and runs what lives across calls (health
    // probes, reloads, the admin port), which one thread does.
    let mut builder = match cli.command {
        Command::Serve { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("llmgate: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("llmgate: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Serve {
            config: path,
            no_watch,
            admin_key,
            threads,
            ..
        } => {
            let config = Config::load(&path)?;
            let shutdown = shutdown_signal();
            let grpc = bind(config.listen.grpc).await?;
            let http = match config.listen.http {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            };
            let admin = match config.listen.metrics {
                Some(addr) => Some(bind(addr).await?),
                None => None,
            };
            let admin_key = match admin_key.as_deref().map(AdminKey::new) {
                Some(None) => return Err("--admin-key (LLMGATE_ADMIN_KEY) is empty".into()),
                Some(key) => key,
                None => None,
            };
            let threads = threads
                .or_else(|| std::thread::available_parallelism().ok())
                .unwrap_or(std::num::NonZeroUsize::MIN);
            let server = llmgate::Server::new(config, Connectors::default())?
                .reload_from(path)
                .admin_key(admin_key)
                .serving_threads(threads);
            announce(&format!("gRPC listening on {}", grpc.local_addr()?));
            if let Some(http) = &http {
                announce(&format!(
                    "HTTP (OpenAI API) listening on {}",
                    http.local_addr()?
                ));
            }
            match &admin {
                Some(admin) => announce(&format!(
                    "metrics and probes on http://{}",
                    admin.local_addr()?
                )),
                None => announce("metrics and probes off (listen.metrics: off)"),
            }
            let listeners = Listeners { grpc, http, admin };
            server
                .serve_watching(listeners, !no_watch, shutdown)
                .await?;
            Ok(())
        }
        Command::Chat {
            model,
            addr,
            max_tokens,
            timeout,
            api_key,
            prompt,
        } => {
            llmgate::client::chat(
                &addr,
                &model,
                &prompt,
                max_tokens,
                timeout,
                api_key.as_deref(),
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            )
            .await
        }
        Command::Sim {
            listen,
            api,
            ttft,
            tokens_per_second,
            output_tokens,
            error_rate,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                return Err("--error-rate must be between 0 and 1".into());
            }
            let settings = SimSettings {
                ttft,
                tokens_per_second,
                output_tokens,
                error_rate,
            };
            let shutdown = shutdown_signal();
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|err| format!("cannot listen on {listen}: {err}"))?;
            let (api, name) = match api {
                Api::Openai => (SimApi::OpenAi, "openai"),
                Api::Ollama => (SimApi::Ollama, "ollama"),
                Api::Anthropic => (SimApi::Anthropic, "anthropic"),
            };
            println!(
                "llmgate: sim ({name} API) listening on {}",
                listener.local_addr()?
            );
            llmgate::sim::serve_api(listener, settings, api, shutdown).await?;
            Ok(())
        }
        Command::Check { file } => match check(&file) {
            ExitCode::SUCCESS => Ok(()),
            _ => Err("the routing file is invalid".into()),
        },
    }
}

/// Tells whoever started us where we listen (scripts read these lines). A
/// closed stdout is no reason to stop serving.
fn announce(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "llmgate: {line}");
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| format!("cannot listen on {addr}: {err}"))
}

fn check(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            print!("{}", llmgate::config::describe(&config));
            // Valid but worth a second look; CI pipelines still pass.
            for warning in llmgate::config::warnings(&config) {
                eprintln!("{}: warning: {warning}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            eprintln!(
                "{}: {} problem(s); nothing was changed",
                file.display(),
                err.problems.len()
            );
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
///
/// The handlers are installed when this is called, not when the future is
/// first polled: call it before announcing the listeners, so a signal sent
/// right after the announcement drains the gateway instead of killing the
/// process outright.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        let wait = |signal: Option<Signal>| async move {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        async move {
            tokio::select! {
                () = wait(term) => {}
                () = wait(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
