//! Limits shared by replicas through a real `redis-server` (Debian's
//! package; `.ci/run` installs it): each test starts its own on a free
//! port with a temp dir, and kills it at the end. Two gateways in one
//! process stand for two replicas: each has its own connection, its own
//! leases and its own replica id, as two pods would.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::support::*;

/// The key every test calls with.
const TEAM_KEY: &str = "sk-team-shared-5b2e9d1c";
/// Its SHA-256, as the routing file names it (so a file loaded from disk
/// needs no environment).
const TEAM_KEY_SHA256: &str = "c812427a67e794cd218bcb9e02163158888a42cee3f91a96e5e555325f5f4247";

/// A `redis-server` of the test's own.
struct Redis {
    /// Its port, kept across a restart.
    port: u16,
    /// Its working directory (nothing is saved there).
    dir: TempDir,
    /// The process, while it runs.
    child: Option<Child>,
}

impl Redis {
    /// Starts one on a free port and waits until it answers PING.
    async fn start() -> Redis {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Redis {
            port,
            dir: TempDir::new("redis"),
            child: None,
        };
        redis.launch().await;
        redis
    }

    /// Starts the server (again) on its port.
    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while !self.answers().await {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it answers PING.
    async fn answers(&self) -> bool {
        let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        conn.write_all(b"PING\r\n").await.is_ok()
            && conn.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// Kills it (as a crash would: no shutdown handshake).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `state:` for a gateway sharing limits through this server.
    fn state(&self, on_error: &str) -> String {
        format!(
            "state:\n  redis:\n    url: redis://127.0.0.1:{}/0\n    timeout: 100ms\n    \
             on_error: {on_error}\n",
            self.port
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A routing file: `state`, the key `team` with `limits`, and the route
/// `demo` on a fast simulator giving `output_tokens` tokens.
fn routing(state: &str, limits: &str, output_tokens: u32) -> String {
    format!(
        "{state}auth:
  keys:
    - {{ name: team, sha256: {TEAM_KEY_SHA256}, models: [\"*\"], limits: {{ {limits} }} }}
upstreams:
  fast:
    kind: sim
    sim: {{ ttft: 0ms, tokens_per_second: 0, output_tokens: {output_tokens} }}
routes:
  - model: demo
    pools:
      - upstream: fast
"
    )
}

/// Two gateways (replicas) on the same routing file.
async fn replicas(yaml: &str) -> [Gateway; 2] {
    [Gateway::start(yaml).await, Gateway::start(yaml).await]
}

/// One call as `team`, with how long it took.
async fn call(
    gateway: &Gateway,
) -> (
    Result<llmgate::proto::CompleteResponse, tonic::Status>,
    Duration,
) {
    let mut client = gateway.client().await;
    let start = Instant::now();
    let result = tokio::time::timeout(
        PATIENCE,
        client.complete(keyed(request("demo", "hi"), TEAM_KEY)),
    )
    .await
    .expect("no call hangs");
    (result.map(tonic::Response::into_inner), start.elapsed())
}

/// The retry-after seconds a refusal carried.
fn retry_after(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `n` calls alternating between `gateways`: the answers served, and the
/// refusals (each checked to be RESOURCE_EXHAUSTED with `retry-after`).
async fn spread(gateways: &[Gateway], n: usize) -> Vec<llmgate::proto::CompleteResponse> {
    let mut served = Vec::new();
    for i in 0..n {
        match call(&gateways[i % gateways.len()]).await.0 {
            Ok(answer) => served.push(answer),
            Err(status) => {
                assert_status(
                    &status,
                    Code::ResourceExhausted,
                    &["key 'team'", "per minute"],
                );
                let wait = retry_after(&status).expect("refusals carry retry-after");
                assert!((1..=60).contains(&wait), "retry-after {wait}");
            }
        }
    }
    served
}

#[tokio::test]
async fn two_replicas_sharing_one_redis_admit_a_keys_limit_once_not_twice() {
    let redis = Redis::start().await;
    let yaml = routing(&redis.state("allow"), "requests_per_minute: 60", 3);
    let gateways = replicas(&yaml).await;
    // Alone, each replica would admit 60: 120 in all.
    let served = spread(&gateways, 200).await.len();
    assert!((57..=63).contains(&served), "admitted {served} of 200");
}

#[tokio::test]
async fn a_token_limit_across_replicas_is_settled_by_what_calls_used() {
    let redis = Redis::start().await;
    let yaml = routing(&redis.state("allow"), "tokens_per_minute: 600", 40);
    let gateways = replicas(&yaml).await;
    let served = spread(&gateways, 60).await;
    let used: Vec<u32> = served
        .iter()
        .map(|a| {
            let usage = a.usage.expect("usage");
            u32::try_from(usage.input_tokens + usage.output_tokens).expect("non-negative")
        })
        .collect();
    let per_call = used.iter().copied().max().expect("some calls were served");
    let total: u32 = used.iter().sum();
    // Admitted on a prompt estimate of a few tokens, each call used
    // about 40 more: settled, the replicas together spend the minute's
    // 600 (give or take a call each, whose debt is settled when the next
    // one starts), where alone each would have spent 600.
    assert!(per_call >= 40, "{per_call}");
    assert!(
        total + 2 * per_call >= 600 && total <= 600 + 2 * per_call,
        "{} calls used {total} tokens",
        used.len()
    );
}

#[tokio::test]
async fn with_redis_killed_calls_flow_under_allow_and_are_refused_under_deny_never_hanging() {
    let mut redis = Redis::start().await;
    // A lease of one request: each call asks the store (with bigger
    // limits a replica first spends what it leased before the outage).
    let limits = "requests_per_minute: 100";
    let allow = Gateway::start(&routing(&redis.state("allow"), limits, 3)).await;
    let deny = Gateway::start(&routing(&redis.state("deny"), limits, 3)).await;
    assert!(call(&allow).await.0.is_ok());
    assert!(call(&deny).await.0.is_ok());
    redis.kill();
    for _ in 0..10 {
        let (served, took) = call(&allow).await;
        assert!(
            served.is_ok(),
            "allow serves while Redis is away: {served:?}"
        );
        // The store timeout is 100ms; a call never waits much past it.
        assert!(took < Duration::from_millis(600), "took {took:?}");
        let (refused, took) = call(&deny).await;
        let status = refused.expect_err("deny refuses while Redis is away");
        assert_status(
            &status,
            Code::Unavailable,
            &[
                "shared limit store (Redis) is not answering",
                "on_error: deny",
            ],
        );
        assert!(retry_after(&status).is_some());
        assert!(took < Duration::from_millis(600), "took {took:?}");
    }
    // Back: within two seconds the deny replica serves again.
    redis.launch().await;
    let back = Instant::now();
    loop {
        if call(&deny).await.0.is_ok() {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "still refusing 2s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shared_limits_apply_again_once_redis_is_back() {
    let mut redis = Redis::start().await;
    let yaml = routing(&redis.state("allow"), "requests_per_minute: 10", 3);
    let gateways = replicas(&yaml).await;
    redis.kill();
    // Under allow, each replica counts alone meanwhile.
    assert!(call(&gateways[0]).await.0.is_ok());
    assert!(call(&gateways[1]).await.0.is_ok());
    // A fresh Redis: an empty (so full) bucket of 10. Within two seconds
    // the replicas share it again: 10 in all, where counting alone they
    // would still admit 9 each.
    redis.launch().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let served = spread(&gateways, 30).await.len();
    assert!((10..=11).contains(&served), "admitted {served} of 30");
}

#[tokio::test]
async fn a_reload_keeps_the_counts_in_the_store() {
    let redis = Redis::start().await;
    let dir = TempDir::new("shared-reload");
    let path = dir.join("routing.yaml");
    let state = redis.state("allow");
    std::fs::write(&path, routing(&state, "requests_per_minute: 10", 3)).expect("write");
    let gateway = Gateway::start_file(&path, Default::default(), false).await;
    let served = spread(std::slice::from_ref(&gateway), 6).await.len();
    assert_eq!(served, 6);
    // A new limit: the local limiter starts afresh (12 more), the shared
    // bucket keeps what was spent (6 of 10 left 4), so only about 4 more
    // fit.
    std::fs::write(&path, routing(&state, "requests_per_minute: 12", 3)).expect("write");
    let reloader = gateway.reloader.clone().expect("a reloader");
    assert!(matches!(
        reloader.reload("test").await,
        llmgate::ReloadOutcome::Applied { .. }
    ));
    let served = spread(std::slice::from_ref(&gateway), 12).await.len();
    assert!(
        (4..=5).contains(&served),
        "admitted {served} of 12 after the reload"
    );
}

/// Sends one command to `redis` in RESP and returns the first line of the
/// answer.
async fn redis_command(redis: &Redis, args: &[&str]) -> String {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .expect("redis answers");
    let mut wire = format!("*{}\r\n", args.len());
    for arg in args {
        wire.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    conn.write_all(wire.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") {
        conn.read_exact(&mut byte).await.expect("an answer");
        answer.push(byte[0]);
    }
    String::from_utf8_lossy(&answer).trim_end().to_string()
}

/// Whether `gateway` admits a streamed call as `team`: its first token
/// arrives (the call is then dropped, which ends it), or the refusal.
async fn admits(gateway: &Gateway) -> Result<(), tonic::Status> {
    let mut client = gateway.client().await;
    let mut stream = client
        .complete_stream(keyed(request("demo", "hi"), TEAM_KEY))
        .await?
        .into_inner();
    match futures_util::StreamExt::next(&mut stream).await {
        Some(Ok(_)) => Ok(()),
        Some(Err(status)) => Err(status),
        None => Err(tonic::Status::unknown("ended without a token")),
    }
}

#[tokio::test]
async fn calls_in_flight_are_shared_and_a_dead_replicas_calls_are_released() {
    let redis = Redis::start().await;
    // Forty tokens at ten a second: a call streams for about four seconds.
    let yaml = routing(&redis.state("allow"), "max_in_flight: 1", 40)
        .replace("tokens_per_second: 0", "tokens_per_second: 10");
    let gateways = replicas(&yaml).await;
    let mut client = gateways[0].client().await;
    let mut streaming = client
        .complete_stream(keyed(request("demo", "hi"), TEAM_KEY))
        .await
        .expect("the first call fits")
        .into_inner();
    assert!(
        futures_util::StreamExt::next(&mut streaming)
            .await
            .is_some()
    );
    // Alone, the other replica would have room for one.
    let status = admits(&gateways[1])
        .await
        .expect_err("one in flight, on the other replica");
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["key 'team' is at its limit of 1 calls in flight across all replicas"],
    );
    assert!(retry_after(&status).is_some());
    // The first call ends (its caller leaves): its slot comes back.
    drop(streaming);
    let start = Instant::now();
    while admits(&gateways[1]).await.is_err() {
        assert!(start.elapsed() < PATIENCE, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A replica that died holding a call: its count stays in Redis, but
    // without its heartbeat it no longer counts.
    let key = "llmgate:key:team:in_flight";
    assert_eq!(
        redis_command(&redis, &["HSET", key, "dead-replica", "1"]).await,
        ":1"
    );
    // (The other replica's last call may still be releasing its slot: a
    // few tries, but a dead replica that counted would never let one in.)
    let start = Instant::now();
    while let Err(status) = admits(&gateways[0]).await {
        assert!(
            start.elapsed() < PATIENCE,
            "a dead replica's call still counts: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        redis_command(&redis, &["HEXISTS", key, "dead-replica"]).await,
        ":0"
    );
}

#[tokio::test]
async fn a_redis_that_stops_answering_holds_no_call_past_the_store_timeout() {
    let redis = Redis::start().await;
    let yaml = routing(&redis.state("allow"), "requests_per_minute: 100", 3);
    let gateway = Gateway::start(&yaml).await;
    assert!(call(&gateway).await.0.is_ok());
    let pid = redis.child.as_ref().expect("running").id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success());
    };
    // Frozen, not dead: connections stay open and nothing answers.
    signal("-STOP");
    for _ in 0..5 {
        let (served, took) = call(&gateway).await;
        assert!(served.is_ok(), "{served:?}");
        // The timeout is 100ms: the first call waits it out, the next ones
        // find the store marked down and do not wait at all.
        assert!(took < Duration::from_millis(600), "took {took:?}");
    }
    signal("-CONT");
}

#[tokio::test]
async fn a_routes_limit_is_shared_by_its_aliases_across_replicas() {
    let redis = Redis::start().await;
    let yaml = format!(
        "{}upstreams:
  fast:
    kind: sim
    sim: {{ ttft: 0ms, tokens_per_second: 0, output_tokens: 3 }}
routes:
  - model: demo
    aliases: [d]
    limits: {{ requests_per_minute: 20 }}
    pools:
      - upstream: fast
",
        redis.state("allow")
    );
    let gateways = replicas(&yaml).await;
    let mut served = 0;
    for i in 0..60 {
        let model = if i % 3 == 0 { "d" } else { "demo" };
        match gateways[i % 2].complete(request(model, "hi")).await {
            Ok(_) => served += 1,
            Err(status) => assert_status(
                &status,
                Code::ResourceExhausted,
                // Across replicas, or (once a replica's own bucket is
                // spent by the calls it saw) its own.
                &["is over its limit of 20 requests per minute"],
            ),
        }
    }
    // Alone, each replica would admit 20: 40 in all.
    assert!((19..=21).contains(&served), "admitted {served} of 60");
}
