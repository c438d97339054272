//! The gateway under test, started in this process on a routing file the
//! test writes, and the temporary directories tests keep files in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use llmgate::config::Config;
use llmgate::proto::llm_service_client::LlmServiceClient;
use llmgate::proto::{CompleteRequest, CompleteResponse, Message, TokenChunk};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Status;
use tonic::transport::Channel;

use super::*;

/// A gateway running in this process.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The OpenAI-compatible HTTP front.
    pub http_addr: SocketAddr,
    /// Reloads the routing file, for gateways started on one.
    pub reloader: Option<Arc<llmgate::Reloader>>,
    /// The admin listener (metrics and probes), when started with one.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), llmgate::ServeError>>>,
}

/// How a test's gateway starts: the one place every variant is built, so a
/// test names only what differs (its environment, resolver, admin port or
/// routing file).
pub struct GatewayBuilder {
    config: Config,
    connectors: llmgate::Connectors,
    admin: bool,
    /// The routing file to reload from, and whether to watch it.
    file: Option<(std::path::PathBuf, bool)>,
    /// Threads serving connections, as `llmgate serve` has them; `None`
    /// serves on the test's runtime.
    serving_threads: Option<std::num::NonZeroUsize>,
}

impl GatewayBuilder {
    /// Upstreams resolve DNS names and connect through `connectors`.
    pub fn connectors(mut self, connectors: llmgate::Connectors) -> Self {
        self.connectors = connectors;
        self
    }

    /// With the admin listener (metrics and probes) on another port 0.
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Reloads from the routing file at `path` (on `POST /-/reload` with
    /// [`ADMIN_KEY`], and on change if `watch`); implies the admin port.
    pub fn reloading(mut self, path: &std::path::Path, watch: bool) -> Self {
        self.file = Some((path.to_path_buf(), watch));
        self.admin = true;
        self
    }

    /// Serves connections on `count` threads of their own, as
    /// `llmgate serve` does.
    pub fn serving_threads(mut self, count: usize) -> Self {
        self.serving_threads = std::num::NonZeroUsize::new(count);
        self
    }

    /// Starts it, on port 0 everywhere.
    pub async fn start(self) -> Gateway {
        let mut server = llmgate::Server::new(self.config, self.connectors).expect("table builds");
        if let Some(count) = self.serving_threads {
            server = server.serving_threads(count);
        }
        let mut watch = false;
        if let Some((path, watching)) = self.file {
            server = server
                .reload_from(path)
                .admin_key(llmgate::AdminKey::new(ADMIN_KEY));
            watch = watching;
        }
        Gateway::serve(server, watch, self.admin).await
    }
}

impl Gateway {
    /// A gateway on `config`, to adjust before it starts.
    pub fn builder(config: Config) -> GatewayBuilder {
        GatewayBuilder {
            config,
            connectors: llmgate::Connectors::default(),
            admin: false,
            file: None,
            serving_threads: None,
        }
    }

    /// Starts a gateway on `yaml` (its `listen:` is ignored: port 0 is used).
    pub async fn start(yaml: &str) -> Gateway {
        Self::start_with_env(yaml, &|_| None).await
    }

    /// Like [`Gateway::start`], with environment variables from `env`.
    pub async fn start_with_env(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Gateway {
        Self::builder(test_config(yaml, env)).start().await
    }

    /// Like [`Gateway::start`], serving connections on `threads` threads
    /// of their own as `llmgate serve` does.
    pub async fn start_on_threads(yaml: &str, threads: usize) -> Gateway {
        Self::builder(test_config(yaml, &|_| None))
            .serving_threads(threads)
            .start()
            .await
    }

    /// Starts a gateway on an already parsed config.
    pub async fn start_config(config: Config) -> Gateway {
        Self::builder(config).start().await
    }

    /// Starts a gateway whose upstreams resolve DNS names with `resolver`.
    pub async fn start_with_connectors(config: Config, connectors: llmgate::Connectors) -> Gateway {
        Self::builder(config).connectors(connectors).start().await
    }

    /// Like [`Gateway::start`], with the admin listener (metrics and
    /// probes) on another port 0.
    pub async fn start_with_admin(yaml: &str) -> Gateway {
        Self::start_with_admin_env(yaml, &|_| None).await
    }

    /// Like [`Gateway::start_with_admin`], with environment variables from
    /// `env`.
    pub async fn start_with_admin_env(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Gateway {
        Self::builder(test_config(yaml, env)).admin().start().await
    }

    /// Starts a gateway on the routing file at `path`, reloading it when it
    /// changes if `watch`.
    pub async fn start_file(
        path: &std::path::Path,
        connectors: llmgate::Connectors,
        watch: bool,
    ) -> Gateway {
        let config = match Config::load(path) {
            Ok(config) => config,
            Err(err) => panic!("test routing file is invalid:\n{err}"),
        };
        Self::builder(config)
            .connectors(connectors)
            .reloading(path, watch)
            .start()
            .await
    }

    async fn serve(server: llmgate::Server, watch: bool, with_admin: bool) -> Gateway {
        // The recorder is process-wide: install it before any test's first
        // call, or a call that starts before another test installs it and
        // ends after would count its end but not its start.
        llmgate::internals::metrics::install().expect("metrics recorder");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let admin = if with_admin {
            Some(TcpListener::bind("127.0.0.1:0").await.expect("bind admin"))
        } else {
            None
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr().expect("admin addr"));
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let http_addr = http.local_addr().expect("http addr");
        let listeners = llmgate::Listeners {
            grpc: listener,
            http: Some(http),
            admin,
        };
        let reloader = server.reloader();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(server.serve_watching(listeners, watch, async {
            let _ = stopped.await;
        }));
        Gateway {
            addr,
            http_addr,
            reloader,
            admin: admin_addr,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// `GET path` on the admin listener.
    pub async fn admin_get(&self, path: &str) -> HttpAnswer {
        let admin = self.admin.expect("gateway started with an admin listener");
        http_get(&format!("http://{admin}{path}")).await
    }

    /// Scrapes `/metrics` and parses it as Prometheus does.
    pub async fn scrape(&self) -> prometheus_parse::Scrape {
        let answer = self.admin_get("/metrics").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        prometheus_parse::Scrape::parse(answer.body.lines().map(|line| Ok(line.to_string())))
            .expect("the exposition format parses")
    }

    /// A client on a new HTTP/2 connection.
    pub async fn client(&self) -> LlmServiceClient<Channel> {
        LlmServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect to gateway")
    }

    /// One unary call on a new connection.
    pub async fn complete(&self, request: CompleteRequest) -> Result<CompleteResponse, Status> {
        Ok(self.client().await.complete(request).await?.into_inner())
    }

    /// One streamed call on a new connection, gathered.
    pub async fn stream(&self, request: CompleteRequest) -> Result<Vec<TokenChunk>, Status> {
        collect(&mut self.client().await, request).await
    }

    /// A new HTTP/2 connection to the gateway, for any gRPC client.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to gateway")
    }

    /// The URL of the gateway.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) -> Result<(), llmgate::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = self.done.take().expect("running");
        tokio::time::timeout(PATIENCE, done)
            .await
            .expect("gateway stops in time")
            .expect("gateway task")
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `run` to return after [`Gateway::begin_shutdown`].
    pub async fn stopped(mut self) -> Result<(), llmgate::ServeError> {
        let done = self.done.take().expect("running");
        tokio::time::timeout(PATIENCE, done)
            .await
            .expect("gateway stops in time")
            .expect("gateway task")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(done) = &self.done {
            done.abort();
        }
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "llmgate-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The admin key gateways started on a routing file allow `POST /-/reload`
/// with.
pub const ADMIN_KEY: &str = "test-admin-key";

/// A test's routing file, parsed; panics with the problems if it is broken.
fn test_config(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Config {
    match Config::parse(yaml, "test.yaml", env) {
        Ok(config) => config,
        Err(err) => panic!("test routing file is invalid:\n{err}"),
    }
}

/// Reads a stream to its end, failing on any error; returns the chunks.
pub async fn read_to_end(
    mut stream: tonic::Streaming<llmgate::proto::TokenChunk>,
) -> Vec<llmgate::proto::TokenChunk> {
    let mut chunks = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        chunks.push(chunk.expect("chunk"));
    }
    chunks
}

/// A request with one user message.
pub fn request(model: &str, prompt: &str) -> CompleteRequest {
    CompleteRequest {
        model: model.to_string(),
        messages: vec![Message {
            role: "user".into(),
            content: prompt.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A request with a `grpc-timeout`.
pub fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}
