//! Live reloads: edits apply to the next call, broken files change nothing,
//! ConfigMap symlink swaps are seen, and no call in flight fails.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use llmgate::ReloadOutcome;
use serde_json::json;

use crate::support::*;

/// A file with route `m` served by a simulator pool named `model`.
fn sim_routes(model: &str) -> String {
    format!(
        "upstreams:
  sim: {{ kind: sim, sim: {{ ttft: 0s, tokens_per_second: 0, output_tokens: 2 }} }}
routes:
  - model: m
    pools: [{{ upstream: sim, model: {model} }}]
"
    )
}

/// Replaces `path` the way editors save: write a new file, rename it over.
fn save(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn served_model(gateway: &Gateway) -> String {
    gateway
        .client()
        .await
        .complete(request("m", "hi"))
        .await
        .expect("call")
        .into_inner()
        .model
}

/// Calls until the model answering `m` is `want`, at most [`PATIENCE`].
async fn until_served_by(gateway: &Gateway, want: &str) {
    tokio::time::timeout(PATIENCE, async {
        while served_model(gateway).await != want {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the gateway never switched to {want}"));
}

#[tokio::test]
async fn an_edited_file_serves_the_next_calls() {
    let dir = TempDir::new("reload-edit");
    let path = dir.join("routing.yaml");
    std::fs::write(&path, sim_routes("first")).expect("write");
    let gateway = Gateway::start_file(&path, Default::default(), true).await;
    assert_eq!(served_model(&gateway).await, "first");

    save(&path, &sim_routes("second"));
    until_served_by(&gateway, "second").await;

    // A plain write in place is seen too.
    std::fs::write(&path, sim_routes("third")).expect("write");
    until_served_by(&gateway, "third").await;
}

#[tokio::test]
async fn a_broken_file_changes_nothing_and_names_its_line() {
    let dir = TempDir::new("reload-broken");
    let path = dir.join("routing.yaml");
    std::fs::write(&path, sim_routes("good")).expect("write");
    let gateway = Gateway::start_file(&path, Default::default(), false).await;
    let reloader = gateway.reloader.clone().expect("reloader");
    let generation = reloader.generation();

    save(
        &path,
        &sim_routes("good").replace("upstream: sim", "upstream: ghost"),
    );
    let ReloadOutcome::Rejected(err) = reloader.reload("test").await else {
        panic!("a broken file must be rejected");
    };
    let text = err.to_string();
    assert!(text.contains(":5:"), "names the line: {text}");
    assert!(text.contains("unknown upstream 'ghost'"), "{text}");
    assert_eq!(reloader.generation(), generation);
    assert_eq!(served_model(&gateway).await, "good", "the old table serves");

    save(&path, "routes: [\n");
    assert!(matches!(
        reloader.reload("test").await,
        ReloadOutcome::Rejected(_)
    ));
    assert_eq!(served_model(&gateway).await, "good");

    save(&path, &sim_routes("fixed"));
    assert!(matches!(
        reloader.reload("test").await,
        ReloadOutcome::Applied { .. }
    ));
    assert_eq!(served_model(&gateway).await, "fixed");
    assert!(matches!(
        reloader.reload("test").await,
        ReloadOutcome::Unchanged
    ));
}

#[tokio::test]
async fn a_changed_listen_address_is_reported_as_needing_a_restart() {
    let dir = TempDir::new("reload-listen");
    let path = dir.join("routing.yaml");
    std::fs::write(&path, sim_routes("a")).expect("write");
    let gateway = Gateway::start_file(&path, Default::default(), false).await;
    let reloader = gateway.reloader.clone().expect("reloader");
    save(
        &path,
        &format!("listen: {{ grpc: 127.0.0.1:1 }}\n{}", sim_routes("b")),
    );
    let ReloadOutcome::Applied { needs_restart, .. } = reloader.reload("test").await else {
        panic!("the rest of the file applies");
    };
    assert!(
        needs_restart.iter().any(|n| n.contains("restart")),
        "{needs_restart:?}"
    );
    assert_eq!(served_model(&gateway).await, "b");
}

#[tokio::test]
#[cfg(unix)]
async fn a_configmap_style_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    // The layout kubelet gives a mounted ConfigMap: routing.yaml ->
    // ..data/routing.yaml, ..data -> ..<timestamp>/; an update writes a new
    // timestamped directory and renames a new ..data link over the old one.
    let dir = TempDir::new("reload-configmap");
    let v1 = dir.join("..2026_11_25_v1");
    std::fs::create_dir(&v1).expect("mkdir");
    std::fs::write(v1.join("routing.yaml"), sim_routes("v1")).expect("write");
    symlink("..2026_11_25_v1", dir.join("..data")).expect("link");
    symlink("..data/routing.yaml", dir.join("routing.yaml")).expect("link");
    let gateway = Gateway::start_file(&dir.join("routing.yaml"), Default::default(), true).await;
    assert_eq!(served_model(&gateway).await, "v1");

    let v2 = dir.join("..2026_11_25_v2");
    std::fs::create_dir(&v2).expect("mkdir");
    std::fs::write(v2.join("routing.yaml"), sim_routes("v2")).expect("write");
    symlink("..2026_11_25_v2", dir.join("..data_tmp")).expect("link");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap");
    std::fs::remove_dir_all(&v1).expect("old version removed");
    until_served_by(&gateway, "v2").await;
}

/// Generation `i` of a busy routing file: `probe` names the generation;
/// `steady` moves between upstreams and weights; `temp` and upstream
/// `extra` come and go.
fn generation(i: usize) -> String {
    let extra = if i.is_multiple_of(2) {
        "  extra: { kind: sim, sim: { ttft: 0s, tokens_per_second: 0, output_tokens: 1 } }\n"
    } else {
        ""
    };
    let temp = if i.is_multiple_of(2) {
        "  - model: temp\n    pools: [{ upstream: extra }]\n"
    } else {
        ""
    };
    let streamer_speed = 400 + i % 3;
    format!(
        "upstreams:
  a: {{ kind: sim, sim: {{ ttft: 0s, tokens_per_second: 0, output_tokens: 1 }} }}
  b: {{ kind: sim, sim: {{ ttft: 0s, tokens_per_second: 0, output_tokens: 1 }} }}
  streamer: {{ kind: sim, sim: {{ ttft: 1ms, tokens_per_second: {streamer_speed}, output_tokens: 20 }} }}
{extra}routes:
  - model: probe
    pools: [{{ upstream: a, model: gen-{i} }}]
  - model: steady
    pools:
      - {{ upstream: a, weight: {wa} }}
      - {{ upstream: b, weight: {wb} }}
  - model: long
    pools: [{{ upstream: streamer }}]
{temp}",
        wa = 1 + i % 4,
        wb = 4 - i % 4,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_call_and_apply_to_calls_after_them() {
    let dir = TempDir::new("reload-load");
    let path = dir.join("routing.yaml");
    std::fs::write(&path, generation(0)).expect("write");
    let gateway = Gateway::start_file(&path, Default::default(), false).await;
    let reloader = gateway.reloader.clone().expect("reloader");
    let client = gateway.client().await; // one connection for all the load
    let stop = Arc::new(tokio::sync::Notify::new());
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));

    let mut load = Vec::new();
    for worker in 0..200 {
        let mut client = client.clone();
        let stop = stop.clone();
        let done = done.clone();
        let failures = failures.clone();
        load.push(tokio::spawn(async move {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let call = async {
                    if worker % 2 == 0 {
                        let mut stream = client
                            .complete_stream(request("long", "hi"))
                            .await?
                            .into_inner();
                        let mut last = None;
                        while let Some(chunk) = stream.next().await {
                            last = Some(chunk?);
                        }
                        if !last.is_some_and(|c| c.done) {
                            return Err(tonic::Status::internal("stream ended without done"));
                        }
                    } else {
                        client.complete(request("steady", "hi")).await?;
                    }
                    Ok::<_, tonic::Status>(())
                };
                tokio::select! {
                    result = call => {
                        if let Err(status) = result {
                            failures.lock().expect("lock").push(status.to_string());
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    () = &mut stopped => return,
                }
            }
        }));
    }

    let mut probe = client.clone();
    for i in 1..=50 {
        save(&path, &generation(i));
        let outcome = reloader.reload("test").await;
        assert!(
            matches!(outcome, ReloadOutcome::Applied { .. }),
            "reload {i}: {outcome:?}"
        );
        let answer = probe
            .complete(request("probe", "hi"))
            .await
            .expect("probe call")
            .into_inner();
        assert_eq!(
            answer.model,
            format!("gen-{i}"),
            "a call after reload {i} sees it"
        );
        let temp = probe.complete(request("temp", "hi")).await;
        assert_eq!(
            temp.is_ok(),
            i.is_multiple_of(2),
            "route temp exists in even generations only"
        );
    }
    stop.notify_waiters();
    for task in load {
        task.await.expect("load task");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} failed calls: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(done.load(Ordering::Relaxed) > 200, "the load ran");
}

/// A resolver whose answer is fixed and whose lookups are counted per name.
#[derive(Clone, Default)]
struct CountingResolver {
    answer: Arc<Mutex<Vec<SocketAddr>>>,
    lookups: Arc<Mutex<HashMap<String, usize>>>,
}

impl CountingResolver {
    fn lookups(&self, host: &str) -> usize {
        self.lookups
            .lock()
            .expect("lock")
            .get(host)
            .copied()
            .unwrap_or(0)
    }
}

impl llmgate::Resolve for CountingResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>
    {
        *self
            .lookups
            .lock()
            .expect("lock")
            .entry(host.to_string())
            .or_insert(0) += 1;
        let answer: Vec<SocketAddr> = self
            .answer
            .lock()
            .expect("lock")
            .iter()
            .map(|a| SocketAddr::new(a.ip(), port))
            .collect();
        Box::pin(async move { Ok(answer) })
    }
}

/// Counts health probes, and answers chat calls with a stream that stays
/// open after its first token.
async fn probed_server() -> FakeUpstream {
    FakeUpstream::start(|received| {
        if received.path == "/health" {
            json_reply(200, &json!({}))
        } else {
            vec![
                Step::Head(200, "text/event-stream"),
                Step::Chunk(sse_token("still here").into_bytes()),
                Step::Hang,
            ]
        }
    })
    .await
}

fn probes(server: &FakeUpstream) -> usize {
    server
        .received()
        .iter()
        .filter(|r| r.path == "/health")
        .count()
}

/// Waits until `server` has been probed `more` more times.
async fn more_probes(server: &FakeUpstream, more: usize) {
    let target = probes(server) + more;
    tokio::time::timeout(PATIENCE, async {
        while probes(server) < target {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the probes go on");
}

#[tokio::test]
async fn a_removed_upstream_drains_its_last_call_then_stops_its_background_tasks() {
    let going_server = probed_server().await;
    let staying_server = probed_server().await;
    let resolver = CountingResolver::default();
    let upstream = |name: &str, server: &FakeUpstream| {
        format!(
            "  {name}:\n    kind: openai\n    discover: {{ dns: {name}.svc:{}, interval: 10ms }}\n    health_check: {{ interval: 10ms }}\n",
            server.addr.port()
        )
    };
    let routes = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| format!("  - model: {n}\n    pools: [{{ upstream: {n} }}]\n"))
            .collect()
    };
    *resolver.answer.lock().expect("lock") = vec!["127.0.0.1:0".parse().expect("addr")];
    // Both names resolve to 127.0.0.1; the port comes from the file.
    let both = format!(
        "upstreams:\n{}{}routes:\n{}",
        upstream("going", &going_server),
        upstream("staying", &staying_server),
        routes(&["going", "staying"])
    );
    let dir = TempDir::new("reload-drain");
    let path = dir.join("routing.yaml");
    std::fs::write(&path, &both).expect("write");
    let connectors = llmgate::Connectors::with_resolver(Arc::new(resolver.clone()));
    let gateway = Gateway::start_file(&path, connectors, false).await;
    let reloader = gateway.reloader.clone().expect("reloader");
    let mut client = gateway.client().await;
    // Wait for discovery, then open a stream through `going` that stays open.
    let mut stream = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Ok(response) = client.complete_stream(request("going", "hi")).await {
                break response.into_inner();
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("going serves");
    assert_eq!(
        stream.next().await.expect("token").expect("token").token,
        "still here"
    );
    let going = Arc::downgrade(&llmgate::internals::upstream(&reloader, "going").expect("going"));

    save(
        &path,
        &format!(
            "upstreams:\n{}routes:\n{}",
            upstream("staying", &staying_server),
            routes(&["staying"])
        ),
    );
    assert!(matches!(
        reloader.reload("test").await,
        ReloadOutcome::Applied { .. }
    ));
    // The removed upstream's balancer and DNS loop go with the old table...
    tokio::time::timeout(PATIENCE, async {
        while going.upgrade().is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the removed upstream is dropped");
    let lookups = resolver.lookups("going.svc");
    // ...while the call in flight on it goes on, its endpoint still probed.
    more_probes(&going_server, 2).await;

    drop(stream); // the last call ends: the endpoint's tasks must stop
    more_probes(&staying_server, 3).await;
    let after_drain = probes(&going_server);
    more_probes(&staying_server, 5).await;
    assert_eq!(probes(&going_server), after_drain, "no health check leaked");
    assert_eq!(resolver.lookups("going.svc"), lookups, "no DNS loop leaked");
}

#[tokio::test]
async fn an_unchanged_upstream_keeps_its_state_and_a_changed_one_is_rebuilt() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let file = |weight: u32, timeout: &str| {
        format!(
            "upstreams:
  flaky:
    kind: openai
    endpoints: [http://{dead}]
    timeout: {timeout}
    outlier: {{ consecutive_failures: 1, base_ejection: 1h }}
  sim: {{ kind: sim }}
routes:
  - model: m
    retry: {{ attempts: 1 }}
    pools: [{{ upstream: flaky, weight: {weight} }}, {{ upstream: sim, weight: 0 }}]
"
        )
    };
    let dir = TempDir::new("reload-carry");
    let path = dir.join("routing.yaml");
    std::fs::write(&path, file(1, "60s")).expect("write");
    let gateway = Gateway::start_file(&path, Default::default(), false).await;
    let reloader = gateway.reloader.clone().expect("reloader");
    let mut client = gateway.client().await;
    // One refused connection ejects the only endpoint for an hour.
    let _ = client.complete(request("m", "hi")).await;
    let before = llmgate::internals::upstream(&reloader, "flaky").expect("flaky");
    assert_eq!(before.endpoints("m")[0].state, "ejected");

    save(&path, &file(2, "60s"));
    assert!(matches!(
        reloader.reload("test").await,
        ReloadOutcome::Applied { .. }
    ));
    let kept = llmgate::internals::upstream(&reloader, "flaky").expect("flaky");
    assert!(
        Arc::ptr_eq(&before, &kept),
        "same definition: the same upstream"
    );
    assert_eq!(
        kept.endpoints("m")[0].state,
        "ejected",
        "its health state carried over"
    );

    save(&path, &file(2, "30s"));
    assert!(matches!(
        reloader.reload("test").await,
        ReloadOutcome::Applied { .. }
    ));
    let rebuilt = llmgate::internals::upstream(&reloader, "flaky").expect("flaky");
    assert!(
        !Arc::ptr_eq(&before, &rebuilt),
        "a changed definition is rebuilt"
    );
    assert_eq!(rebuilt.endpoints("m")[0].state, "up");
}

/// The value of the counter sample `name{labels}` in a scrape, 0 if absent.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_admin_reload_endpoint_is_off_without_an_admin_key() {
    let gateway = Gateway::start_with_admin(&sim_routes("one")).await;
    let admin = gateway.admin.expect("admin listener");
    let answer = http_post(&format!("http://{admin}/-/reload")).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(
        answer.body.contains("LLMGATE_ADMIN_KEY"),
        "says how to turn it on: {}",
        answer.body
    );
}

#[tokio::test]
async fn the_admin_reload_endpoint_applies_or_rejects_and_counts_it() {
    let dir = TempDir::new("reload-admin");
    let path = dir.join("routing.yaml");
    std::fs::write(&path, sim_routes("one")).expect("write");
    let gateway = Gateway::start_file(&path, Default::default(), false).await;
    let admin = gateway.admin.expect("admin listener");
    let metrics_url = format!("http://{admin}/metrics");
    let failures = r#"llmgate_config_reloads_total{result="failure"}"#;
    let before = sample(&http_get(&metrics_url).await.body, failures);

    save(&path, "upstreams: {}\nroutes: []\n");
    let reload_url = format!("http://{admin}/-/reload");
    let anonymous = http_post(&reload_url).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let wrong = http_post_with_key(&reload_url, "not-the-key").await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(served_model(&gateway).await, "one", "nothing reloaded");

    let answer = http_post_with_key(&reload_url, ADMIN_KEY).await;
    let (status, body) = (answer.status, answer.body);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("routing.yaml:2:9"), "names the place: {body}");
    assert_eq!(served_model(&gateway).await, "one", "the old table stays");
    let after = sample(&http_get(&metrics_url).await.body, failures);
    assert!(
        after >= before + 1.0,
        "a failed reload is counted: {before} -> {after}"
    );

    save(&path, &sim_routes("two"));
    let answer = http_post_with_key(&reload_url, ADMIN_KEY).await;
    let (status, body) = (answer.status, answer.body);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("applied"), "{body}");
    assert_eq!(served_model(&gateway).await, "two");
}
