//! The `llmgate` command line. Everything it runs lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use llmgate::backend::Connectors;
use llmgate::config::Config;
use llmgate::sim::SimSettings;
use llmgate::sim::server::SimApi;
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
    /// Run the gateway on a routing file.
    Serve {
        /// The routing file (see the shipped routing.yaml). Edits to it apply
        /// live, as does SIGHUP; a broken edit is logged and changes nothing.
        #[arg(long, short, env = "LLMGATE_CONFIG", default_value = "routing.yaml")]
        config: PathBuf,
        /// Do not watch the routing file for changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Command::Check { file } = &cli.command {
        return check(file);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        } => {
            let config = Config::load(&path)?;
            let listener = TcpListener::bind(config.listen.grpc)
                .await
                .map_err(|err| format!("cannot listen on {}: {err}", config.listen.grpc))?;
            let http = match config.listen.http {
                Some(addr) => Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|err| format!("cannot listen on {addr}: {err}"))?,
                ),
                None => None,
            };
            let server =
                llmgate::server::Server::new(config, Connectors::default())?.reload_from(path);
            println!("llmgate: gRPC listening on {}", listener.local_addr()?);
            if let Some(http) = &http {
                println!(
                    "llmgate: HTTP (OpenAI API) listening on {}",
                    http.local_addr()?
                );
            }
            let listeners = llmgate::Listeners {
                grpc: listener,
                http,
            };
            server
                .serve_watching(listeners, !no_watch, shutdown_signal())
                .await?;
            Ok(())
        }
        Command::Chat {
            model,
            addr,
            max_tokens,
            timeout,
            prompt,
        } => {
            llmgate::client::chat(
                &addr,
                &model,
                &prompt,
                max_tokens,
                timeout,
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
            llmgate::sim::server::serve_api(listener, settings, api, shutdown_signal()).await?;
            Ok(())
        }
        Command::Check { file } => match check(&file) {
            ExitCode::SUCCESS => Ok(()),
            _ => Err("the routing file is invalid".into()),
        },
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    match Config::load(file) {
        Ok(config) => {
            print!("{}", llmgate::config::describe(&config));
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
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
