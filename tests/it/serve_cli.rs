//! The `llmgate` binary as an operator runs it: `serve`, `chat` against it,
//! and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::PATIENCE;

const BIN: &str = env!("CARGO_BIN_EXE_llmgate");

/// A child process killed if the test fails before it exits.
pub(crate) struct Running(Option<Child>);

impl Running {
    pub(crate) fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn routing_file(contents: &str) -> std::path::PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "llmgate-serve-{}-{}.yaml",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).expect("write routing file");
    path
}

/// Starts `llmgate serve` and returns it with the gRPC address it listens
/// on and, when the routing file enables it, the admin address.
fn serve(config: &std::path::Path) -> (Running, String, Option<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start llmgate serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut stdout = BufReader::new(stdout);
    let mut line = String::new();
    stdout
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = last_word(&line);
    line.clear();
    stdout.read_line(&mut line).expect("read the metrics line");
    let admin = (!line.contains(" off")).then(|| last_word(&line));
    (Running(Some(child)), addr, admin)
}

/// The address at the end of a "listening on ADDR" line.
fn last_word(line: &str) -> String {
    line.trim()
        .rsplit(' ')
        .next()
        .filter(|a| a.contains(':'))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}

/// Starts `llmgate serve --no-watch` and returns it with its output, for
/// tests that read the listening lines themselves.
pub(crate) fn serve_unwatched(
    config: &std::path::Path,
) -> (Running, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--no-watch", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start llmgate serve");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    (Running(Some(child)), stdout)
}

/// Waits for the child to exit, at most [`PATIENCE`] (then kills it).
fn wait_exit(mut running: Running) -> std::process::ExitStatus {
    let pid = running.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut child = running.0.take().expect("running");
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("llmgate did not exit in time");
        }
    }
}

/// `llmgate chat` succeeded and printed the simulator's 4-token answer.
#[track_caller]
fn assert_streamed_the_sim_answer(chat: &std::process::Output) {
    assert!(
        chat.status.success(),
        "{}",
        String::from_utf8_lossy(&chat.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&chat.stdout),
        "The gateway routes every\n"
    );
}

#[test]
fn serve_answers_chat_and_exits_zero_on_sigterm() {
    let config = routing_file(
        "listen: { grpc: 127.0.0.1:0, metrics: 127.0.0.1:0 }
upstreams:
  sim: { kind: sim, sim: { ttft: 1ms, tokens_per_second: 0, output_tokens: 4 } }
routes:
  - model: demo
    pools: [{ upstream: sim }]
",
    );
    let (server, addr, admin) = serve(&config);
    let admin = admin.expect("the admin listener is announced");
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");

    let chat = Command::new(BIN)
        .args(["chat", "--model", "demo", "--addr", &addr, "hello"])
        .output()
        .expect("run llmgate chat");
    assert_streamed_the_sim_answer(&chat);
    let summary = String::from_utf8_lossy(&chat.stderr);
    assert!(summary.contains("finish stop"), "{summary}");
    assert!(summary.contains("2 tokens in, 4 out"), "{summary}");

    let unknown = Command::new(BIN)
        .args(["chat", "--model", "nope", "--addr", &addr, "hello"])
        .output()
        .expect("run llmgate chat");
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");

    let metrics = http_get(&format!("{admin}/metrics"));
    assert!(metrics.starts_with("HTTP/1.0 200"), "{metrics}");
    assert!(
        metrics.contains(r#"llmgate_calls_total{model="demo",route="demo",upstream="sim",endpoint="in-process",code="OK"} 1"#),
        "{metrics}"
    );
    assert!(http_get(&format!("{admin}/readyz")).starts_with("HTTP/1.0 200"));

    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(killed.success());
    let status = wait_exit(server);
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn serve_without_a_metrics_listener_announces_only_grpc() {
    let config = routing_file(
        "listen: { grpc: 127.0.0.1:0, metrics: off }
upstreams:
  sim: { kind: sim }
routes:
  - model: demo
    pools: [{ upstream: sim }]
",
    );
    let (server, _addr, admin) = serve(&config);
    assert_eq!(admin, None);
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(killed.success());
    assert!(wait_exit(server).success());
    let _ = std::fs::remove_file(config);
}

/// A blocking HTTP/1.0 GET (the test is synchronous), returning the raw
/// response.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the admin port");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

#[test]
fn serve_refuses_a_broken_routing_file_with_its_position() {
    let config =
        routing_file("upstreams: {}\nroutes:\n  - model: m\n    pools: [{ upstream: ghost }]\n");
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run llmgate serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(":4:"), "{stderr}");
    assert!(stderr.contains("unknown upstream 'ghost'"), "{stderr}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn sighup_reloads_the_routing_file_when_watching_is_off() {
    let routing = |model: &str| {
        format!(
            "listen: {{ grpc: 127.0.0.1:0, metrics: off }}
upstreams:
  sim: {{ kind: sim, sim: {{ ttft: 0s, tokens_per_second: 0, output_tokens: 1 }} }}
routes:
  - model: demo
    pools: [{{ upstream: sim, model: {model} }}]
"
        )
    };
    let config = routing_file(&routing("before"));
    let (server, mut stdout) = serve_unwatched(&config);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("listening line");
    let addr = line.trim().rsplit(' ').next().expect("address").to_string();
    let served_by = || {
        let chat = Command::new(BIN)
            .args(["chat", "--model", "demo", "--addr", &addr, "hi"])
            .output()
            .expect("run llmgate chat");
        String::from_utf8_lossy(&chat.stderr).to_string()
    };
    assert!(served_by().contains("[model before,"));

    std::fs::write(&config, routing("after")).expect("rewrite");
    assert!(
        served_by().contains("[model before,"),
        "not watching: nothing changes yet"
    );
    let hup = Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .expect("send SIGHUP");
    assert!(hup.success());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !served_by().contains("[model after,") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
    }
    let _ = std::fs::remove_file(config);
}

#[test]
fn chat_calls_with_the_api_key_from_the_environment() {
    const KEY: &str = "sk-gw-cli-chat-7d0e5b21";
    let digest: String = ring::digest::digest(&ring::digest::SHA256, KEY.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = routing_file(&format!(
        "listen: {{ grpc: 127.0.0.1:0, metrics: off }}
auth:
  keys: [{{ name: cli, sha256: {digest}, models: [demo] }}]
upstreams:
  sim: {{ kind: sim, sim: {{ ttft: 1ms, tokens_per_second: 0, output_tokens: 4 }} }}
routes:
  - model: demo
    pools: [{{ upstream: sim }}]
"
    ));
    let (_server, addr, _) = serve(&config);
    let chat = |key: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["chat", "--model", "demo", "--addr", &addr, "hello"])
            .env_remove("LLMGATE_API_KEY");
        if let Some(key) = key {
            command.env("LLMGATE_API_KEY", key);
        }
        command.output().expect("run llmgate chat")
    };
    let keyed = chat(Some(KEY));
    assert_streamed_the_sim_answer(&keyed);
    let anonymous = chat(None);
    assert!(!anonymous.status.success());
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    // The help never shows the variable's value.
    let help = Command::new(BIN)
        .args(["chat", "--help"])
        .env("LLMGATE_API_KEY", KEY)
        .output()
        .expect("run llmgate chat --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("LLMGATE_API_KEY"), "{help}");
    assert!(!help.contains(KEY), "{help}");
}

#[test]
fn serve_opens_the_http_front_when_the_file_asks_for_it() {
    use std::io::{Read, Write};
    let config = routing_file(
        "listen: { grpc: 127.0.0.1:0, http: 127.0.0.1:0, metrics: off }
upstreams:
  sim: { kind: sim }
routes:
  - model: demo
    pools: [{ upstream: sim }]
",
    );
    let (_server, mut stdout) = serve_unwatched(&config);
    let mut lines = [String::new(), String::new()];
    for line in &mut lines {
        stdout.read_line(line).expect("listening line");
    }
    assert!(lines[0].contains("gRPC listening on"), "{lines:?}");
    assert!(
        lines[1].contains("HTTP (OpenAI API) listening on"),
        "{lines:?}"
    );
    let addr = lines[1].trim().rsplit(' ').next().expect("address");

    let mut http = std::net::TcpStream::connect(addr).expect("connect to the HTTP front");
    http.set_read_timeout(Some(PATIENCE)).expect("timeout");
    http.write_all(b"GET /v1/models HTTP/1.1\r\nhost: llmgate\r\nconnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    http.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""id":"demo""#), "{answer}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn serve_on_a_single_threaded_runtime_answers_calls() {
    let config = routing_file(
        "listen: { grpc: 127.0.0.1:0, metrics: off }
upstreams:
  sim: { kind: sim, sim: { ttft: 0s, tokens_per_second: 0, output_tokens: 4 } }
routes:
  - model: demo
    pools: [{ upstream: sim }]
",
    );
    let mut child = Command::new(BIN)
        .args(["serve", "--threads", "1", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start llmgate serve");
    let stdout = child.stdout.take().expect("stdout");
    let _server = Running(Some(child));
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    let addr = line.trim().rsplit(' ').next().expect("address").to_string();
    let chat = Command::new(BIN)
        .args(["chat", "--model", "demo", "--addr", &addr, "hello"])
        .output()
        .expect("run llmgate chat");
    assert!(
        chat.status.success(),
        "{}",
        String::from_utf8_lossy(&chat.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&chat.stdout),
        "The gateway routes every\n"
    );
    let _ = std::fs::remove_file(config);
}
