//! `deploy/` read as an operator's tools read it: the manifests and the
//! dashboard as data, checked against the code they deploy (ports, probe
//! paths, the mounted routing file, metric names).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use llmgate::config::Config;
use llmgate::internals::metrics::{CATALOG, MetricKind};
use llmgate::internals::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};
use serde_json::Value;

use crate::support::*;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Every YAML document in a file under `deploy/`.
fn documents(relative: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(&read(relative))
        .unwrap_or_else(|err| panic!("deploy/{relative} is not YAML: {err}"))
}

fn kustomization() -> Value {
    documents("kustomization.yaml").remove(0)
}

/// Every resource `kubectl apply -k` would send, from the kustomization's
/// resource files.
fn resources() -> Vec<Value> {
    kustomization()["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|file| file.as_str().expect("a file name"))
        .flat_map(documents)
        .collect()
}

/// The one resource of `kind` named `name`.
fn resource(kind: &str, name: &str) -> Value {
    let mut found: Vec<Value> = resources()
        .into_iter()
        .filter(|r| r["kind"] == kind && r["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} named {name}");
    found.remove(0)
}

fn deployment() -> Value {
    resource("Deployment", "llmgate")
}

fn container() -> Value {
    deployment()["spec"]["template"]["spec"]["containers"][0].clone()
}

/// The container port named `name`.
fn container_port(name: &str) -> u16 {
    container()["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// deploy/routing.yaml as the gateway reads it.
fn routing() -> Config {
    match Config::parse(&read("routing.yaml"), "deploy/routing.yaml", &|_| None) {
        Ok(config) => config,
        Err(err) => panic!("deploy/routing.yaml is invalid:\n{err}"),
    }
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .expect("a label map")
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

#[test]
fn every_file_the_kustomization_names_exists_and_parses() {
    let kustomization = kustomization();
    assert_eq!(kustomization["kind"], "Kustomization");
    for file in kustomization["resources"].as_array().expect("resources") {
        let file = file.as_str().expect("a file name");
        for doc in documents(file) {
            for field in ["apiVersion", "kind"] {
                assert!(doc[field].is_string(), "{file}: {field} in {doc}");
            }
            assert!(doc["metadata"]["name"].is_string(), "{file}: a name");
        }
    }
    for generator in kustomization["configMapGenerator"]
        .as_array()
        .expect("generators")
    {
        for file in generator["files"].as_array().expect("files") {
            let file = file.as_str().expect("a file name");
            assert!(deploy_dir().join(file).is_file(), "{file} exists");
        }
    }
    let dashboard: Value =
        serde_json::from_str(&read("grafana/llmgate.json")).expect("the dashboard is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
}

#[test]
fn the_pods_listen_where_the_routing_file_and_the_image_say() {
    let config = routing();
    let grpc = config.listen.grpc;
    let metrics: SocketAddr = config.listen.metrics.expect("metrics on in the cluster");
    assert!(
        grpc.ip().is_unspecified() && metrics.ip().is_unspecified(),
        "a pod must listen on all addresses: {grpc}, {metrics}"
    );
    assert_eq!(container_port("grpc"), grpc.port());
    assert_eq!(container_port("metrics"), metrics.port());

    let dockerfile = read("Dockerfile");
    let exposed: BTreeSet<u16> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace().map(|p| p.parse().expect("a port")))
        .collect();
    assert_eq!(exposed, BTreeSet::from([grpc.port(), metrics.port()]));
    let stages = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "a multi-stage build");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the runtime image sets a user");
    assert!(
        !user.starts_with('0') && !user.starts_with("root"),
        "{user}"
    );
    let run_as = &deployment()["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(run_as["runAsNonRoot"], true);

    // Calls in flight get their whole grace period after the preStop pause.
    let spec = &deployment()["spec"]["template"]["spec"];
    let termination = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let pause = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        termination > pause + config.shutdown_grace.as_secs(),
        "{termination}s must exceed {pause}s + {:?}",
        config.shutdown_grace
    );
}

#[tokio::test]
async fn the_probes_ask_paths_the_gateway_answers() {
    let container = container();
    for (probe, path) in [
        ("readinessProbe", READYZ_PATH),
        ("livenessProbe", HEALTHZ_PATH),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "metrics", "{probe} asks the admin port");
    }
    // And the gateway answers them.
    let gateway = Gateway::start_with_admin(&read("routing.yaml")).await;
    for path in [READYZ_PATH, HEALTHZ_PATH, METRICS_PATH] {
        assert_eq!(gateway.admin_get(path).await.status, 200, "{path}");
    }
}

#[test]
fn the_routing_file_is_mounted_as_a_directory_the_config_flag_points_into() {
    let container = container();
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_flag = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("--config FILE");
    assert!(
        args.windows(2).any(|w| w == ["--log-format", "json"]),
        "{args:?}"
    );

    let mount = &container["volumeMounts"][0];
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let mount_path = mount["mountPath"].as_str().expect("mountPath");
    assert_eq!(*config_flag, format!("{mount_path}/routing.yaml"));

    let volume = &deployment()["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    let config_map = volume["configMap"]["name"].as_str().expect("configMap");
    let generator = kustomization()["configMapGenerator"]
        .as_array()
        .expect("generators")
        .iter()
        .find(|g| g["name"] == config_map)
        .cloned()
        .expect("the mounted ConfigMap is generated here");
    assert_eq!(generator["files"][0], "routing.yaml", "key routing.yaml");
    assert_eq!(
        generator["options"]["disableNameSuffixHash"], true,
        "updated in place, so the mounted file changes"
    );
}

#[test]
fn services_the_budget_and_the_monitor_select_the_gateway_pods() {
    let deployment = deployment();
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let pdb = resource("PodDisruptionBudget", "llmgate");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));

    let service = resource("Service", "llmgate");
    let headless = resource("Service", "llmgate-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    for svc in [&service, &headless] {
        assert!(selects(&svc["spec"]["selector"], pod_labels));
        for port in svc["spec"]["ports"].as_array().expect("ports") {
            let target = port["targetPort"].as_str().expect("a named target port");
            assert_eq!(
                port["port"].as_u64(),
                Some(u64::from(container_port(target))),
                "{port}"
            );
        }
    }

    let monitor = resource("ServiceMonitor", "llmgate");
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    assert!(selects(selector, &service["metadata"]["labels"]));
    assert!(
        !selects(selector, &headless["metadata"]["labels"]),
        "each pod is scraped once, not once per Service"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], METRICS_PATH);
    let port = endpoint["port"].as_str().expect("a named port");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == port),
        "the Service has the port {port}"
    );
}

#[test]
fn the_vllm_pools_are_headless_services_the_routing_file_discovers() {
    let config = routing();
    let discovered: Vec<String> = llmgate::internals::discovery(&config)
        .filter_map(|(_, discovery)| match discovery {
            llmgate::internals::Discovery::Dns { host, port, .. } => Some(format!("{host}:{port}")),
            llmgate::internals::Discovery::Static(_) => None,
        })
        .collect();
    let pools = documents("upstreams/vllm.yaml");
    assert!(!pools.is_empty());
    for pool in pools {
        let name = pool["metadata"]["name"].as_str().expect("a name");
        assert_eq!(pool["spec"]["clusterIP"], "None", "{name} is headless");
        let port = pool["spec"]["ports"][0]["port"].as_u64().expect("a port");
        let target = format!("{name}:{port}");
        assert!(
            discovered.contains(&target),
            "the routing file discovers {target} by DNS: {discovered:?}"
        );
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_one_the_gateway_exports() {
    let dashboard: Value =
        serde_json::from_str(&read("grafana/llmgate.json")).expect("the dashboard is JSON");
    let mut strings = Vec::new();
    collect_strings(&dashboard, &mut strings);
    let mut queried = BTreeSet::new();
    for text in strings {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("llmgate_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            queried.insert(name);
        }
    }
    let exported = |name: &str| {
        CATALOG.iter().any(|def| {
            def.name == name
                || (def.kind == MetricKind::Histogram
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name == format!("{}{suffix}", def.name)))
        })
    };
    let unknown: Vec<&String> = queried.iter().filter(|name| !exported(name)).collect();
    assert!(
        unknown.is_empty(),
        "not exported by the gateway: {unknown:?}"
    );
    // The dashboard shows the metrics operators watch first.
    for def in CATALOG {
        let used = queried.iter().any(|q| q.starts_with(def.name));
        assert!(used, "the dashboard never shows {}", def.name);
    }
    let ids: BTreeSet<u64> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    assert_eq!(
        ids.len(),
        dashboard["panels"].as_array().map_or(0, Vec::len),
        "panel ids are unique"
    );
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

#[test]
fn the_replicas_share_limits_through_the_redis_the_kustomization_deploys() {
    let config = routing();
    let redis = llmgate::internals::redis(&config)
        .expect("deploy/routing.yaml shares limits through state.redis");
    let service = resource("Service", "llmgate-redis");
    let port = service["spec"]["ports"][0]["port"]
        .as_u64()
        .expect("a port");
    assert_eq!(redis.url, format!("redis://llmgate-redis:{port}/0"));
    let server = resource("Deployment", "llmgate-redis");
    assert!(selects(
        &service["spec"]["selector"],
        &server["spec"]["template"]["metadata"]["labels"]
    ));
    // The HPA scales the gateway, from no fewer pods than it starts with.
    let hpa = resource("HorizontalPodAutoscaler", "llmgate");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "llmgate");
    assert!(hpa["spec"]["minReplicas"].as_u64() >= deployment()["spec"]["replicas"].as_u64());
}
