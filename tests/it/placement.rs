//! Placement that knows the engines: the engine's own load read from its
//! metrics page, and prefix affinity with bounded load, as a caller and an
//! operator see them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llmgate::proto::ListModelsRequest;
use prometheus_parse::Value;

use crate::support::*;

/// A vLLM-like upstream: its metrics page reports `waiting` queued
/// requests, and each chat call is recorded under `name` in `served`.
async fn engine(
    name: &'static str,
    waiting: u32,
    served: Arc<Mutex<Vec<(&'static str, String)>>>,
) -> FakeUpstream {
    FakeUpstream::start(move |received| {
        if received.path == "/metrics" {
            let page = format!(
                "# TYPE vllm:num_requests_waiting gauge\n\
                 vllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
                 # TYPE vllm:num_requests_running gauge\n\
                 vllm:num_requests_running{{model_name=\"m\"}} 1\n\
                 # TYPE vllm:kv_cache_usage_perc gauge\n\
                 vllm:kv_cache_usage_perc{{model_name=\"m\"}} 0.25\n"
            );
            return vec![
                Step::Head(200, "text/plain; version=0.0.4"),
                Step::Chunk(page.into_bytes()),
                Step::End,
            ];
        }
        let prompt = received.body["messages"][0]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let held = prompt.starts_with("hold") && received.body["stream"] == true;
        served.lock().expect("lock").push((name, prompt));
        if held {
            return vec![Step::Head(200, "text/event-stream"), Step::Hang];
        }
        paris_reply()
    })
    .await
}

/// How many chat calls each upstream served.
fn counts(served: &Mutex<Vec<(&'static str, String)>>) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (name, _) in served.lock().expect("lock").iter() {
        *counts.entry(*name).or_default() += 1;
    }
    counts
}

/// Waits until ListModels shows a fresh engine reading for every endpoint
/// of `model`'s first pool.
async fn wait_for_readings(gateway: &Gateway, model: &str, endpoints: usize) {
    let mut client = gateway.client().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let models = client
                .list_models(ListModelsRequest {})
                .await
                .expect("list")
                .into_inner()
                .models;
            let read = models
                .iter()
                .filter(|m| m.name == model)
                .flat_map(|m| m.pools.iter().flat_map(|p| p.endpoints.iter()))
                .filter(|e| e.engine_requests_waiting.is_some())
                .count();
            if read == endpoints {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every engine scraped within 5 s");
}

#[tokio::test]
async fn an_engine_with_a_long_queue_gets_few_calls_though_this_gateway_sent_it_none() {
    let served = Arc::new(Mutex::new(Vec::new()));
    let busy = engine("busy", 40, served.clone()).await;
    let idle = engine("idle", 0, served.clone()).await;
    let gateway = Gateway::start_with_admin(&format!(
        "upstreams:
  fleet:
    kind: openai
    endpoints: [{}, {}]
    load: {{ metrics: {{ interval: 50ms }} }}
routes:
  - model: engine-load
    pools: [{{ upstream: fleet }}]
",
        busy.url(),
        idle.url()
    ))
    .await;
    wait_for_readings(&gateway, "engine-load", 2).await;
    for i in 0..40 {
        gateway
            .complete(request("engine-load", &format!("q{i}")))
            .await
            .expect("served");
    }
    let counts = counts(&served);
    assert_eq!(counts.get("idle"), Some(&40), "{counts:?}");

    // The readings are on the gateway's own metrics too.
    let scrape = gateway.scrape().await;
    let waiting: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "llmgate_engine_requests_waiting")
        .filter(|s| {
            let endpoint = s.labels.get("endpoint").unwrap_or_default();
            endpoint.trim_end_matches('/') == busy.url().trim_end_matches('/')
        })
        .filter_map(|s| match s.value {
            Value::Gauge(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(waiting, [40.0]);
}

#[tokio::test]
async fn a_conversation_returns_to_its_endpoint_and_spills_when_that_one_is_loaded() {
    let served = Arc::new(Mutex::new(Vec::new()));
    let mut upstreams = Vec::new();
    for name in ["a", "b", "c"] {
        upstreams.push(engine(name, 0, served.clone()).await);
    }
    let urls: Vec<String> = upstreams.iter().map(FakeUpstream::url).collect();
    let gateway = Gateway::start_with_admin(&format!(
        "upstreams:
  fleet:
    kind: openai
    endpoints: [{}]
routes:
  - model: affine
    balance: {{ prefix_affinity: {{ chars: 16, max_load_factor: 1.25 }} }}
    pools: [{{ upstream: fleet }}]
",
        urls.join(", ")
    ))
    .await;
    // Twenty conversations, five turns each, one after the other: every
    // turn starts with the conversation's own opening.
    for turn in 0..5 {
        for conversation in 0..20 {
            let prompt = format!("conversation {conversation:02} opening; turn {turn}");
            gateway
                .complete(request("affine", &prompt))
                .await
                .expect("served");
        }
    }
    let mut homes: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for (name, prompt) in served.lock().expect("lock").iter() {
        let conversation = prompt.split(';').next().unwrap_or_default().to_string();
        homes.entry(conversation).or_default().insert(name);
    }
    assert_eq!(homes.len(), 20);
    let at_home = homes.values().filter(|h| h.len() == 1).count();
    assert!(at_home >= 18, "{homes:?}");
    let used: BTreeSet<&str> = homes.values().flatten().copied().collect();
    assert!(used.len() >= 2, "prefixes spread over the pool: {used:?}");

    // Load one conversation's endpoint with a call that stays open: the
    // next turn goes elsewhere rather than queue behind it.
    let opening = "hold conversation; turn";
    let mut client = gateway.client().await;
    let held_request = request("affine", &format!("{opening} 0"));
    // The upstream sends headers and no token: the call stays in flight.
    let held = tokio::spawn(async move { client.complete_stream(held_request).await });
    let home = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let found = served
                .lock()
                .expect("lock")
                .iter()
                .find(|(_, prompt)| prompt.starts_with("hold"))
                .map(|(name, _)| *name);
            if let Some(name) = found {
                return Some(name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the held call reached its endpoint");
    gateway
        .complete(request("affine", &format!("{opening} 1")))
        .await
        .expect("served");
    let next = served.lock().expect("lock").last().map(|(name, _)| *name);
    assert_ne!(home, next, "spilled from the loaded endpoint");
    let scrape = gateway.scrape().await;
    let spills: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "llmgate_prefix_affinity_total")
        .filter(|s| s.labels.get("route") == Some("affine"))
        .filter(|s| s.labels.get("outcome") == Some("spill"))
        .filter_map(|s| match s.value {
            Value::Counter(v) => Some(v),
            _ => None,
        })
        .sum();
    assert!(spills >= 1.0, "{spills}");
    held.abort();
}
