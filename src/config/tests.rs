//! The routing file as an operator meets it: what a valid file turns into,
//! and, for each mistake, the exact `line:column` reported and a message
//! that names the offending value and says how to fix it.
//!
//! Files are written as one string per line so line numbers can be read off
//! the array (the first string is line 1); columns are 1-based.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::sim::SimSettings;

/// The source name every test parses under.
const FILE: &str = "routing.yaml";

/// A variable name no environment has; the tests never read the process
/// environment anyway (the env closure is theirs), but a name like this
/// keeps that obvious.
const UNSET_VAR: &str = "LLMGATE_TEST_SURELY_UNSET_7F3A";

/// Joins `lines` into a file: `lines[0]` is line 1.
fn yaml(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// `head` (`head[0]` is line 1) followed by the smallest valid upstreams
/// and routes, for tests about what comes before them.
fn with_minimal_routes(head: &[&str]) -> String {
    let mut lines = head.to_vec();
    lines.extend([
        "upstreams:",
        "  local:",
        "    kind: sim",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]);
    yaml(&lines)
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_ok(text: &str) -> Config {
    match Config::parse(text, FILE, &no_env) {
        Ok(config) => config,
        Err(err) => panic!("expected the file to be valid, got:\n{err}"),
    }
}

fn problems_with_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    match Config::parse(text, FILE, env) {
        Ok(config) => panic!("expected the file to be rejected, but it parsed: {config:#?}"),
        Err(err) => {
            assert_eq!(err.source, FILE, "errors carry the file name given");
            err.problems
        }
    }
}

fn problems(text: &str) -> Vec<Problem> {
    problems_with_env(text, &no_env)
}

/// The single problem in `text`; fails if there are more or none.
fn only_problem(text: &str) -> Problem {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "expected exactly one problem, got {all:#?}");
    all.remove(0)
}

#[track_caller]
fn assert_at(problem: &Problem, line: u64, column: u64) {
    assert_eq!(
        (problem.line, problem.column),
        (line, column),
        "wrong position for {problem:?}"
    );
}

#[track_caller]
fn assert_mentions(problem: &Problem, needles: &[&str]) {
    for needle in needles {
        assert!(
            problem.message.contains(needle),
            "message {:?} should mention {needle:?}",
            problem.message
        );
    }
}

/// A YAML-level message must not repeat the position: the
/// `file:line:column:` prefix is the one place it appears.
#[track_caller]
fn assert_no_position_in_message(problem: &Problem) {
    let lower = problem.message.to_ascii_lowercase();
    assert!(
        !lower.contains("line ") && !lower.contains("column"),
        "message repeats a position: {:?}",
        problem.message
    );
}

// === valid files ===

#[test]
fn full_file_is_read_field_by_field() {
    const SECRET: &str = "sk-test-very-secret-4242";
    let text = yaml(&[
        "listen:",
        "  grpc: 0.0.0.0:6000",
        "  metrics: 0.0.0.0:6001",
        "auth: { mode: none }",
        "shutdown_grace: 2m",
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints: [http://10.0.0.11:8000, https://api.example.com/v1]",
        "    api_key_env: FLEET_KEY",
        "    timeout: 2m",
        "    first_token_timeout: 250ms",
        "    idle_timeout: 15s",
        "  simulated:",
        "    kind: sim",
        "    sim: { ttft: 50ms, tokens_per_second: 40, output_tokens: 48, error_rate: 0.25 }",
        "routes:",
        "  - model: llama",
        "    aliases: [llama-latest, llama-3]",
        "    pools:",
        "      - upstream: fleet",
        "        weight: 9",
        "        model: meta-llama/Llama-3.1-8B-Instruct",
        "      - upstream: simulated",
        "  - model: demo",
        "    pools:",
        "      - upstream: simulated",
        "        weight: 0",
        "      - upstream: fleet",
        "        weight: 3",
        "        model: gpt-4o-mini",
    ]);
    let asked = RefCell::new(Vec::new());
    let env = |name: &str| {
        asked.borrow_mut().push(name.to_string());
        (name == "FLEET_KEY").then(|| SECRET.to_string())
    };
    let config = match Config::parse(&text, FILE, &env) {
        Ok(config) => config,
        Err(err) => panic!("valid file rejected:\n{err}"),
    };

    let expected = Config {
        listen: ListenConfig {
            grpc: SocketAddr::from(([0, 0, 0, 0], 6000)),
            metrics: Some(SocketAddr::from(([0, 0, 0, 0], 6001))),
            tls: None,
            http: None,
        },
        shutdown_grace: Duration::from_secs(120),
        cors: CorsConfig::default(),
        upstreams: BTreeMap::from([
            (
                "fleet".to_string(),
                UpstreamConfig {
                    name: "fleet".into(),
                    kind: UpstreamKind::OpenAi,
                    discovery: Discovery::Static(vec![
                        http::Uri::from_static("http://10.0.0.11:8000"),
                        http::Uri::from_static("https://api.example.com/v1"),
                    ]),
                    policy: EndpointPolicy::default(),
                    api_key: Some(Secret::new(SECRET.into())),
                    timeouts: UpstreamTimeouts {
                        total: Duration::from_secs(120),
                        first_token: Some(Duration::from_millis(250)),
                        idle: Some(Duration::from_secs(15)),
                    },
                    sim: SimSettings::default(),
                    // Keys this file leaves out get their defaults.
                    headers: http::HeaderMap::new(),
                    max_tokens_field: MaxTokensField::MaxTokens,
                    default_max_tokens: DEFAULT_ANTHROPIC_MAX_TOKENS,
                    keep_alive: None,
                    tls_ca: None,
                },
            ),
            (
                "simulated".to_string(),
                UpstreamConfig {
                    name: "simulated".into(),
                    kind: UpstreamKind::Sim,
                    discovery: Discovery::Static(vec![]),
                    policy: EndpointPolicy::default(),
                    api_key: None,
                    timeouts: UpstreamTimeouts {
                        total: DEFAULT_UPSTREAM_TIMEOUT,
                        first_token: None,
                        idle: None,
                    },
                    sim: SimSettings {
                        ttft: Duration::from_millis(50),
                        tokens_per_second: 40.0,
                        output_tokens: 48,
                        error_rate: 0.25,
                    },
                    headers: http::HeaderMap::new(),
                    max_tokens_field: MaxTokensField::MaxTokens,
                    default_max_tokens: DEFAULT_ANTHROPIC_MAX_TOKENS,
                    keep_alive: None,
                    tls_ca: None,
                },
            ),
        ]),
        routes: vec![
            RouteConfig {
                model: "llama".into(),
                aliases: vec!["llama-latest".into(), "llama-3".into()],
                pools: vec![
                    PoolConfig {
                        upstream: "fleet".into(),
                        weight: 9,
                        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
                    },
                    // No weight: 1. No model: the route's own name.
                    PoolConfig {
                        upstream: "simulated".into(),
                        weight: 1,
                        model: "llama".into(),
                    },
                ],
                retry: RetryPolicy::default(),
                fallback: vec![],
                context_fallback: None,
                limits: CallerLimits::default(),
            },
            RouteConfig {
                model: "demo".into(),
                aliases: vec![],
                pools: vec![
                    // Weight 0 disables one pool; fine while another serves.
                    PoolConfig {
                        upstream: "simulated".into(),
                        weight: 0,
                        model: "demo".into(),
                    },
                    PoolConfig {
                        upstream: "fleet".into(),
                        weight: 3,
                        model: "gpt-4o-mini".into(),
                    },
                ],
                retry: RetryPolicy::default(),
                fallback: vec![],
                context_fallback: None,
                limits: CallerLimits::default(),
            },
        ],
        auth: AuthConfig::Off,
        limits: Limits::default(),
    };
    assert_eq!(config, expected);
    assert_eq!(
        asked.borrow().as_slice(),
        ["FLEET_KEY".to_string()],
        "the key is read through the env closure, and only the variable named"
    );

    let names: Vec<&str> = config.model_names().map(|(name, _)| name).collect();
    assert_eq!(names, ["llama", "llama-latest", "llama-3", "demo"]);
    for (name, route) in config.model_names() {
        let owner = if name == "demo" { "demo" } else { "llama" };
        assert_eq!(route.model, owner, "{name} routes to {owner}");
    }
}

#[test]
fn api_key_never_appears_in_debug_or_describe() {
    const SECRET: &str = "sk-test-do-not-print-9d2c";
    let text = yaml(&[
        "upstreams:",
        "  cloud:",
        "    kind: openai",
        "    endpoints: [https://api.openai.com/v1]",
        "    api_key_env: CLOUD_KEY",
        "routes:",
        "  - model: gpt",
        "    pools:",
        "      - upstream: cloud",
    ]);
    let env = |name: &str| (name == "CLOUD_KEY").then(|| SECRET.to_string());
    let config = match Config::parse(&text, FILE, &env) {
        Ok(config) => config,
        Err(err) => panic!("valid file rejected:\n{err}"),
    };
    let key = config.upstreams["cloud"]
        .api_key
        .as_ref()
        .expect("api key read from CLOUD_KEY");
    assert_eq!(key.expose(), SECRET);

    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        format!("{key:?}"),
        describe(&config),
    ] {
        assert!(!shown.contains(SECRET), "secret leaked in: {shown}");
    }
    assert!(format!("{config:?}").contains("Secret(***)"));
    assert!(describe(&config).contains("upstream cloud (openai) https://api.openai.com/v1"));
    assert!(describe(&config).contains(", with api key"));
}

#[test]
fn minimal_file_gets_the_documented_defaults() {
    let config = parse_ok(&with_minimal_routes(&[]));
    let default_grpc: SocketAddr = DEFAULT_GRPC_LISTEN.parse().expect("default address parses");
    assert_eq!(config.listen.grpc, default_grpc);
    let default_metrics: SocketAddr = DEFAULT_METRICS_LISTEN
        .parse()
        .expect("default address parses");
    assert_eq!(config.listen.metrics, Some(default_metrics));
    assert_eq!(default_metrics, SocketAddr::from(([127, 0, 0, 1], 9090)));
    assert_eq!(config.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    let local = &config.upstreams["local"];
    assert_eq!(local.kind, UpstreamKind::Sim);
    assert_eq!(local.timeouts.total, DEFAULT_UPSTREAM_TIMEOUT);
    assert_eq!(local.timeouts.first_token, None);
    assert_eq!(local.timeouts.idle, None);
    assert_eq!(local.sim, SimSettings::default());
    assert_eq!(
        config.routes[0].pools,
        [PoolConfig {
            upstream: "local".into(),
            weight: 1,
            model: "demo".into(),
        }]
    );
}

#[test]
fn error_rate_bounds_zero_and_one_are_accepted() {
    for rate in ["0", "1", "1.0"] {
        let config = parse_ok(&yaml(&[
            "upstreams:",
            "  local:",
            "    kind: sim",
            &format!("    sim: {{ error_rate: {rate}, tokens_per_second: 0 }}"),
            "routes:",
            "  - model: demo",
            "    pools:",
            "      - upstream: local",
        ]));
        let sim = config.upstreams["local"].sim;
        assert_eq!(sim.error_rate, if rate == "0" { 0.0 } else { 1.0 });
        assert_eq!(sim.tokens_per_second, 0.0, "0 means no pacing");
    }
}

#[test]
fn shipped_routing_file_parses_and_routes_demo() {
    let config = match Config::parse(include_str!("../../routing.yaml"), FILE, &no_env) {
        Ok(config) => config,
        Err(err) => panic!("the shipped routing.yaml is invalid:\n{err}"),
    };
    let names: Vec<&str> = config.model_names().map(|(name, _)| name).collect();
    assert_eq!(names, ["demo", "demo-latest"]);
    for (name, route) in config.model_names() {
        assert_eq!(route.model, "demo", "{name} routes to demo");
        assert_eq!(
            route.pools,
            [PoolConfig {
                upstream: "sim-local".into(),
                weight: 1,
                model: "demo".into(),
            }]
        );
    }
    let sim_local = &config.upstreams["sim-local"];
    assert_eq!(sim_local.kind, UpstreamKind::Sim);
    assert_eq!(sim_local.sim.ttft, Duration::from_millis(50));
    assert_eq!(sim_local.sim.output_tokens, 48);
    assert_eq!(
        config.listen.grpc,
        SocketAddr::from(([127, 0, 0, 1], 50051))
    );

    let summary = describe(&config);
    assert!(
        summary.contains("upstream sim-local (sim) in process"),
        "{summary}"
    );
    assert!(
        summary.contains("route demo (aliases: demo-latest)"),
        "{summary}"
    );
    assert!(
        summary.contains("  -> sim-local as 'demo', weight 1 (100%)"),
        "{summary}"
    );
}

// === unknown fields (deny_unknown_fields) ===

#[test]
fn unknown_top_level_field_is_refused_with_the_valid_ones_listed() {
    let problem = only_problem(&with_minimal_routes(&["listn:", "  grpc: 127.0.0.1:1"]));
    assert_at(&problem, 1, 1);
    assert_mentions(&problem, &["unknown field", "listn", "listen"]);
    assert_no_position_in_message(&problem);
}

#[test]
fn typo_in_an_upstream_field_is_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "    timout: 30s",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]));
    assert_at(&problem, 4, 5);
    assert_mentions(&problem, &["unknown field", "timout", "timeout"]);
    assert_no_position_in_message(&problem);
}

#[test]
fn typo_in_a_pool_field_is_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
        "        wieght: 2",
    ]));
    assert_at(&problem, 8, 9);
    assert_mentions(&problem, &["unknown field", "wieght", "weight"]);
    assert_no_position_in_message(&problem);
}

// === references between upstreams and routes ===

#[test]
fn pool_naming_an_undefined_upstream_lists_the_defined_ones() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  alpha:",
        "    kind: sim",
        "  beta:",
        "    kind: sim",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: alpha",
        "      - upstream: gamma",
    ]));
    assert_at(&problem, 10, 19);
    assert_mentions(
        &problem,
        &[
            "'demo'",
            "unknown upstream 'gamma'",
            "defined upstreams: alpha, beta",
        ],
    );
}

#[test]
fn unknown_kind_is_refused_and_its_pools_are_not_also_unknown() {
    // The upstream is defined, only broken: one problem, at the kind.
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: llama",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]));
    assert_at(&problem, 3, 11);
    assert_mentions(
        &problem,
        &[
            "'local'",
            "unknown kind 'llama'",
            "openai, ollama, anthropic or sim",
        ],
    );
}

#[test]
fn duplicate_names_point_at_the_second_use_and_name_the_first_line() {
    let found = problems(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "routes:",
        "  - model: demo",
        "    aliases: [demo-latest]",
        "    pools:",
        "      - upstream: local",
        "  - model: other",
        "    aliases: [demo]",
        "    pools:",
        "      - upstream: local",
        "  - model: demo-latest",
        "    pools:",
        "      - upstream: local",
    ]));
    assert_eq!(found.len(), 2, "{found:#?}");
    // An alias repeating an earlier model.
    assert_at(&found[0], 10, 15);
    assert_mentions(&found[0], &["'demo'", "already routed (line 5)", "once"]);
    // A model repeating an earlier alias.
    assert_at(&found[1], 13, 12);
    assert_mentions(
        &found[1],
        &["'demo-latest'", "already routed (line 6)", "once"],
    );
}

#[test]
fn route_whose_pools_all_have_weight_zero_is_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  a:",
        "    kind: sim",
        "  b:",
        "    kind: sim",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: a",
        "        weight: 0",
        "      - upstream: b",
        "        weight: 0",
    ]));
    assert_at(&problem, 7, 12);
    assert_mentions(&problem, &["'demo'", "weight 0", "positive weight"]);
}

#[test]
fn empty_routes_is_refused_at_the_routes_key() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "routes: []",
    ]));
    assert_at(&problem, 4, 9);
    assert_mentions(&problem, &["routes: is empty", "add at least one route"]);
}

#[test]
fn route_without_pools_is_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "routes:",
        "  - model: demo",
        "    pools: []",
    ]));
    // The start of the route's block.
    assert_at(&problem, 5, 5);
    assert_mentions(
        &problem,
        &["'demo'", "pools: is empty", "add at least one pool"],
    );
}

// === upstream settings ===

#[test]
fn endpoints_must_be_http_base_urls() {
    let found = problems(&yaml(&[
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints:",
        "      - http://10.0.0.5:8000",
        "      - 10.0.0.6:8000",
        "      - ftp://files.example.com",
        "      - not a url",
        "      - http://10.0.0.7:8000/?x=1",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: fleet",
    ]));
    assert_eq!(found.len(), 4, "{found:#?}");
    assert_at(&found[0], 6, 9);
    assert_mentions(
        &found[0],
        &["'10.0.0.6:8000'", "needs a scheme", "http://10.0.0.5:8000"],
    );
    assert_at(&found[1], 7, 9);
    assert_mentions(
        &found[1],
        &[
            "'ftp://files.example.com'",
            "must start with http:// or https://",
        ],
    );
    assert_at(&found[2], 8, 9);
    assert_mentions(
        &found[2],
        &["'not a url'", "is not a URL", "such as http://"],
    );
    assert_at(&found[3], 9, 9);
    assert_mentions(
        &found[3],
        &[
            "'http://10.0.0.7:8000/?x=1'",
            "must not have a query string",
        ],
    );
}

#[test]
fn missing_api_key_variable_is_reported_at_its_name() {
    let text = yaml(&[
        "upstreams:",
        "  cloud:",
        "    kind: openai",
        "    endpoints: [https://api.openai.com/v1]",
        &format!("    api_key_env: {UNSET_VAR}"),
        "routes:",
        "  - model: gpt",
        "    pools:",
        "      - upstream: cloud",
    ]);
    // Unset, and set but empty: both are a missing key.
    let empty = |_: &str| Some(String::new());
    for found in [problems(&text), problems_with_env(&text, &empty)] {
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_at(&found[0], 5, 18);
        assert_mentions(
            &found[0],
            &[
                "'cloud'",
                UNSET_VAR,
                "not set",
                "export it",
                "remove api_key_env",
            ],
        );
    }
}

#[test]
fn bad_duration_is_reported_with_examples() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints: [http://10.0.0.5:8000]",
        "    timeout: 5 parsecs",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: fleet",
    ]));
    assert_at(&problem, 5, 14);
    assert_mentions(
        &problem,
        &["'5 parsecs'", "not a duration", "250ms, 30s or 2m"],
    );
}

#[test]
fn bad_durations_are_found_wherever_they_are() {
    let found = problems(&yaml(&[
        "shutdown_grace: soon",
        "upstreams:",
        "  local:",
        "    kind: sim",
        "    sim: { ttft: fast }",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]));
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_at(&found[0], 1, 17);
    assert_mentions(&found[0], &["'soon'", "not a duration"]);
    assert_at(&found[1], 5, 18);
    assert_mentions(&found[1], &["'fast'", "not a duration"]);
}

#[test]
fn zero_duration_is_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints: [http://10.0.0.5:8000]",
        "    idle_timeout: 0s",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: fleet",
    ]));
    assert_at(&problem, 5, 19);
    assert_mentions(&problem, &["'0s'", "more than zero"]);
}

#[test]
fn openai_upstream_without_endpoints_is_refused() {
    for body in [
        vec!["    kind: openai"],
        vec!["    kind: openai", "    endpoints: []"],
    ] {
        let mut lines = vec!["upstreams:", "  fleet:"];
        lines.extend(body);
        lines.extend([
            "routes:",
            "  - model: demo",
            "    pools:",
            "      - upstream: fleet",
        ]);
        let problem = only_problem(&yaml(&lines));
        // The start of the upstream's block.
        assert_at(&problem, 3, 5);
        assert_mentions(
            &problem,
            &["'fleet'", "endpoints: is empty", "http://127.0.0.1:8000"],
        );
    }
}

#[test]
fn sim_upstream_with_endpoints_is_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "    endpoints: [http://127.0.0.1:8000]",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]));
    assert_at(&problem, 4, 17);
    assert_mentions(
        &problem,
        &[
            "'local'",
            "takes no endpoints",
            "remove them",
            "kind openai",
        ],
    );
}

#[test]
fn sim_settings_on_an_openai_upstream_are_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints: [http://10.0.0.5:8000]",
        "    sim: { ttft: 10ms }",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: fleet",
    ]));
    assert_at(&problem, 5, 10);
    assert_mentions(&problem, &["'fleet'", "kind sim only", "remove it"]);
}

#[test]
fn sim_rates_out_of_range_are_refused() {
    let found = problems(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "    sim:",
        "      error_rate: 1.5",
        "      tokens_per_second: -3",
        "  other:",
        "    kind: sim",
        "    sim: { error_rate: -0.1 }",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
        "      - upstream: other",
    ]));
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_at(&found[0], 5, 19);
    assert_mentions(&found[0], &["'local'", "error_rate", "between 0 and 1"]);
    assert_at(&found[1], 6, 26);
    assert_mentions(
        &found[1],
        &["'local'", "tokens_per_second", "0 (no pacing) or more"],
    );
    assert_at(&found[2], 9, 24);
    assert_mentions(&found[2], &["'other'", "error_rate", "between 0 and 1"]);
}

#[test]
fn listen_address_must_be_ip_and_port() {
    let problem = only_problem(&with_minimal_routes(&[
        "listen:",
        "  grpc: localhost:50051",
    ]));
    assert_at(&problem, 2, 9);
    assert_mentions(&problem, &["'localhost:50051'", "ip:port", "0.0.0.0:50051"]);
}

#[test]
fn metrics_listener_can_be_moved_or_turned_off() {
    let with_listen = |listen: &str| with_minimal_routes(&["listen:", listen]);
    let moved = parse_ok(&with_listen("  metrics: 0.0.0.0:9100"));
    assert_eq!(
        moved.listen.metrics,
        Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
    );
    assert!(describe(&moved).contains("listen metrics 0.0.0.0:9100"));

    let off = parse_ok(&with_listen("  metrics: off"));
    assert_eq!(off.listen.metrics, None);
    assert!(describe(&off).contains("listen metrics off"));

    let problem = only_problem(&with_listen("  metrics: localhost:9090"));
    assert_at(&problem, 2, 12);
    assert_mentions(&problem, &["'localhost:9090'", "ip:port", "or off"]);
}

/// `head` (its first line is line 1) followed by the least a file needs
/// to be valid: one simulated upstream and one route to it.
fn before_minimal_routes(head: &[&str]) -> String {
    let mut all = head.to_vec();
    all.extend([
        "upstreams:",
        "  local:",
        "    kind: sim",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]);
    yaml(&all)
}

#[test]
fn http_listener_and_cors_origins_are_optional_and_read() {
    let off = parse_ok(&before_minimal_routes(&[]));
    assert_eq!(off.listen.http, None, "no HTTP front unless asked for");
    assert_eq!(off.cors, CorsConfig::default());
    assert!(!describe(&off).contains("listen http"));

    let on = parse_ok(&before_minimal_routes(&[
        "listen:",
        "  http: 0.0.0.0:8080",
        "cors:",
        "  allowed_origins: [https://app.example.com, HTTP://LOCALHOST:5173]",
    ]));
    assert_eq!(on.listen.http, Some(SocketAddr::from(([0, 0, 0, 0], 8080))));
    assert_eq!(
        on.cors.allowed_origins,
        ["https://app.example.com", "http://localhost:5173"],
        "origins are kept as browsers send them: lowercase"
    );
    let summary = describe(&on);
    assert!(summary.contains("listen http 0.0.0.0:8080"), "{summary}");
    assert!(summary.contains("https://app.example.com"), "{summary}");

    let any = parse_ok(&before_minimal_routes(&[
        "cors: { allowed_origins: ['*'] }",
    ]));
    assert_eq!(any.cors.allowed_origins, ["*"]);

    let problem = only_problem(&before_minimal_routes(&[
        "listen:",
        "  http: localhost:8080",
    ]));
    assert_at(&problem, 2, 9);
    assert_mentions(&problem, &["'localhost:8080'", "ip:port", "0.0.0.0:8080"]);
}

#[test]
fn cors_origins_that_no_browser_sends_are_refused_at_their_value() {
    let found = problems(&before_minimal_routes(&[
        "cors:",
        "  allowed_origins:",
        "    - https://ok.example.com",
        "    - https://app.example.com/",
        "    - app.example.com",
        "    - ftp://files.example.com",
        "    - https://user@app.example.com",
    ]));
    assert_eq!(found.len(), 4, "{found:#?}");
    assert_at(&found[0], 4, 7);
    assert_mentions(
        &found[0],
        &[
            "'https://app.example.com/'",
            "trailing slash",
            "scheme://host[:port]",
        ],
    );
    assert_at(&found[1], 5, 7);
    assert_mentions(&found[1], &["'app.example.com'", "no scheme"]);
    assert_at(&found[2], 6, 7);
    assert_mentions(&found[2], &["http or https"]);
    assert_at(&found[3], 7, 7);
    assert_mentions(&found[3], &["host"]);

    let problem = only_problem(&before_minimal_routes(&[
        "cors:",
        "  allowed_origins: [https://app.example.com, '*']",
    ]));
    assert_at(&problem, 2, 46);
    assert_mentions(&problem, &["'*'", "alone"]);

    let problem = only_problem(&before_minimal_routes(&[
        "cors:",
        "  allowed_orgins: [https://app.example.com]",
    ]));
    assert_at(&problem, 2, 3);
    assert_mentions(&problem, &["allowed_orgins"]);
}

// === YAML syntax ===

#[test]
fn tab_indentation_is_reported_on_its_line() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "\tkind: sim",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]));
    // The column is the parser's (just past the tab); the line is what an
    // operator needs.
    assert_eq!(problem.line, 3, "{problem:?}");
    assert!(problem.column <= 2, "{problem:?}");
    assert_mentions(&problem, &["tab"]);
    assert_no_position_in_message(&problem);
}

#[test]
fn unclosed_bracket_is_reported_at_the_bracket() {
    let problem = only_problem(&yaml(&[
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: fleet",
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints: [http://10.0.0.5:8000",
    ]));
    assert_at(&problem, 8, 16);
    assert_mentions(&problem, &["unclosed", "["]);
    assert_no_position_in_message(&problem);
}

#[test]
fn duplicate_upstream_key_is_an_error() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "  local:",
        "    kind: openai",
        "    endpoints: [http://10.0.0.5:8000]",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]));
    assert_at(&problem, 4, 3);
    assert_mentions(&problem, &["duplicate", "local"]);
    assert_no_position_in_message(&problem);
    assert!(
        !problem.message.contains("DuplicateKeyPolicy"),
        "library advice for programmers is not for operators: {:?}",
        problem.message
    );
}

// === many problems, one pass ===

#[test]
fn every_problem_is_reported_in_line_order() {
    let text = yaml(&[
        "listen:",
        "  grpc: nowhere",
        "upstreams:",
        "  zeta:",
        "    kind: openai",
        "    endpoints: [ftp://10.0.0.5]",
        &format!("    api_key_env: {UNSET_VAR}"),
        "  alpha:",
        "    kind: sim",
        "    sim: { ttft: 5 parsecs, error_rate: 2 }",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: nowhere",
        "  - model: demo",
        "    pools:",
        "      - upstream: alpha",
        "  - model: idle",
        "    pools:",
        "      - upstream: alpha",
        "        weight: 0",
    ]);
    let err = match Config::parse(&text, FILE, &no_env) {
        Ok(config) => panic!("expected the file to be rejected, but it parsed: {config:#?}"),
        Err(err) => err,
    };
    // Upstreams are checked alphabetically (alpha before zeta) but reported
    // in file order.
    let expected: [(u64, u64, &str); 8] = [
        (2, 9, "'nowhere' is not a listen address"),
        (6, 17, "endpoint 'ftp://10.0.0.5' must start with http://"),
        (7, 18, UNSET_VAR),
        (10, 18, "'5 parsecs' is not a duration"),
        (10, 41, "error_rate must be between 0 and 1"),
        (
            14,
            19,
            "unknown upstream 'nowhere'; defined upstreams: alpha, zeta",
        ),
        (15, 12, "model name 'demo' is already routed (line 12)"),
        (18, 12, "route 'idle': every pool has weight 0"),
    ];
    assert_eq!(err.problems.len(), expected.len(), "{err}");
    for (problem, (line, column, needle)) in err.problems.iter().zip(expected) {
        assert_at(problem, line, column);
        assert_mentions(problem, &[needle]);
    }

    // What `llmgate check` prints: one `file:line:column: message` line each.
    let shown = err.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{shown}");
    for (shown_line, (line, column, needle)) in lines.iter().zip(expected) {
        let prefix = format!("{FILE}:{line}:{column}: ");
        assert!(
            shown_line.starts_with(&prefix),
            "{shown_line:?} should start with {prefix:?}"
        );
        assert!(shown_line.contains(needle), "{shown_line:?}");
    }
}

#[test]
fn unreadable_file_is_reported_without_a_position() {
    let path = std::env::temp_dir().join(format!(
        "llmgate-config-test-{}-surely-missing.yaml",
        std::process::id()
    ));
    let err = match Config::load(&path) {
        Ok(config) => panic!("a missing file loaded: {config:#?}"),
        Err(err) => err,
    };
    assert_eq!(err.problems.len(), 1, "{err}");
    assert_eq!((err.problems[0].line, err.problems[0].column), (0, 0));
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("{}: cannot read the file: ", path.display())),
        "{shown}"
    );
}

#[test]
fn a_simulated_model_may_answer_with_no_delay() {
    let config = parse_ok(&yaml(&[
        "upstreams:",
        "  instant:",
        "    kind: sim",
        "    sim: { ttft: 0s, tokens_per_second: 0 }",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: instant",
    ]));
    assert_eq!(config.upstreams["instant"].sim.ttft, Duration::ZERO);
}

// === ollama, anthropic and the cloud extras ===

#[test]
fn ollama_anthropic_and_cloud_extras_are_read_field_by_field() {
    let text = yaml(&[
        "upstreams:",
        "  cloud:",
        "    kind: openai",
        "    endpoints: [https://api.openai.com/v1]",
        "    api_key_env: CLOUD_KEY",
        "    max_tokens_field: max_completion_tokens",
        "    headers:",
        "      OpenAI-Organization: org-42",
        "      X-Project-Token: Token ${PROJECT_TOKEN}",
        "  gpu-box:",
        "    kind: ollama",
        "    endpoints: [http://10.0.0.7:11434]",
        "    keep_alive: 30m",
        "  claude:",
        "    kind: anthropic",
        "    endpoints: [https://api.anthropic.com]",
        "    api_key_env: ANTHROPIC_API_KEY",
        "    default_max_tokens: 1024",
        "    headers: { anthropic-beta: prompt-caching-2024-07-31 }",
        "routes:",
        "  - model: chat",
        "    pools:",
        "      - upstream: cloud",
        "      - upstream: gpu-box",
        "      - upstream: claude",
    ]);
    let env = |name: &str| match name {
        "CLOUD_KEY" => Some("sk-cloud".to_string()),
        "PROJECT_TOKEN" => Some("pt-123".to_string()),
        "ANTHROPIC_API_KEY" => Some("sk-ant".to_string()),
        _ => None,
    };
    let config = match Config::parse(&text, FILE, &env) {
        Ok(config) => config,
        Err(err) => panic!("valid file rejected:\n{err}"),
    };

    let cloud = &config.upstreams["cloud"];
    assert_eq!(cloud.kind, UpstreamKind::OpenAi);
    assert_eq!(cloud.max_tokens_field, MaxTokensField::MaxCompletionTokens);
    assert_eq!(cloud.headers.len(), 2);
    let org = &cloud.headers["openai-organization"];
    assert_eq!(org, "org-42");
    assert!(
        !org.is_sensitive(),
        "a value written in the file is no secret"
    );
    let token = &cloud.headers["x-project-token"];
    assert_eq!(token, "Token pt-123");
    assert!(token.is_sensitive(), "a value read from the environment is");

    let ollama = &config.upstreams["gpu-box"];
    assert_eq!(ollama.kind, UpstreamKind::Ollama);
    assert_eq!(
        ollama.discovery,
        Discovery::Static(vec![http::Uri::from_static("http://10.0.0.7:11434")])
    );
    assert_eq!(
        ollama.keep_alive,
        Some(KeepAlive::For(Duration::from_secs(1800)))
    );
    assert_eq!(ollama.api_key, None);

    let claude = &config.upstreams["claude"];
    assert_eq!(claude.kind, UpstreamKind::Anthropic);
    assert_eq!(claude.default_max_tokens, 1024);
    assert_eq!(claude.api_key.as_ref().map(Secret::expose), Some("sk-ant"));
    assert_eq!(
        claude.headers["anthropic-beta"],
        "prompt-caching-2024-07-31"
    );

    let summary = describe(&config);
    assert!(
        summary.contains("upstream gpu-box (ollama) http://10.0.0.7:11434/"),
        "{summary}"
    );
    assert!(
        summary.contains("upstream claude (anthropic) https://api.anthropic.com/, with api key"),
        "{summary}"
    );
    assert!(
        summary.contains("headers: openai-organization, x-project-token"),
        "{summary}"
    );
}

#[test]
fn new_keys_are_optional_with_documented_defaults() {
    let config = parse_ok(&yaml(&[
        "upstreams:",
        "  gpu-box:",
        "    kind: ollama",
        "    endpoints: [http://127.0.0.1:11434]",
        "  claude:",
        "    kind: anthropic",
        "    endpoints: [https://api.anthropic.com]",
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: gpu-box",
        "      - upstream: claude",
    ]));
    for up in config.upstreams.values() {
        assert!(up.headers.is_empty());
        assert_eq!(up.max_tokens_field, MaxTokensField::MaxTokens);
        assert_eq!(up.default_max_tokens, DEFAULT_ANTHROPIC_MAX_TOKENS);
        assert_eq!(up.keep_alive, None);
        assert_eq!(up.api_key, None, "a key is optional (local servers)");
    }
}

#[test]
fn keep_alive_takes_a_duration_zero_or_minus_one() {
    for (written, expected) in [
        ("10m", KeepAlive::For(Duration::from_secs(600))),
        ("1h", KeepAlive::For(Duration::from_secs(3600))),
        ("0", KeepAlive::For(Duration::ZERO)),
        ("-1", KeepAlive::Forever),
    ] {
        let config = parse_ok(&yaml(&[
            "upstreams:",
            "  gpu-box:",
            "    kind: ollama",
            "    endpoints: [http://127.0.0.1:11434]",
            &format!("    keep_alive: {written}"),
            "routes:",
            "  - model: m",
            "    pools:",
            "      - upstream: gpu-box",
        ]));
        assert_eq!(
            config.upstreams["gpu-box"].keep_alive,
            Some(expected),
            "{written}"
        );
    }

    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  gpu-box:",
        "    kind: ollama",
        "    endpoints: [http://127.0.0.1:11434]",
        "    keep_alive: a while",
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: gpu-box",
    ]));
    assert_at(&problem, 5, 17);
    assert_mentions(&problem, &["'gpu-box'", "'a while'", "10m", "-1"]);
}

#[test]
fn kind_specific_keys_on_another_kind_are_refused_at_their_value() {
    let found = problems(&yaml(&[
        "upstreams:",
        "  a:",
        "    kind: ollama",
        "    endpoints: [http://127.0.0.1:11434]",
        "    max_tokens_field: max_tokens",
        "  b:",
        "    kind: openai",
        "    endpoints: [http://127.0.0.1:8000]",
        "    default_max_tokens: 512",
        "  c:",
        "    kind: anthropic",
        "    endpoints: [https://api.anthropic.com]",
        "    keep_alive: 5m",
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: a",
    ]));
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_at(&found[0], 5, 23);
    assert_mentions(
        &found[0],
        &[
            "'a'",
            "max_tokens_field",
            "kind openai only",
            "ollama upstream",
        ],
    );
    assert_at(&found[1], 9, 25);
    assert_mentions(
        &found[1],
        &["'b'", "default_max_tokens", "kind anthropic only"],
    );
    assert_at(&found[2], 13, 17);
    assert_mentions(&found[2], &["'c'", "keep_alive", "kind ollama only"]);
}

#[test]
fn max_tokens_field_names_the_two_choices() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  cloud:",
        "    kind: openai",
        "    endpoints: [https://api.openai.com/v1]",
        "    max_tokens_field: max_new_tokens",
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: cloud",
    ]));
    assert_at(&problem, 5, 23);
    assert_mentions(
        &problem,
        &["'max_new_tokens'", "max_tokens", "max_completion_tokens"],
    );
}

#[test]
fn default_max_tokens_zero_is_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  claude:",
        "    kind: anthropic",
        "    endpoints: [https://api.anthropic.com]",
        "    default_max_tokens: 0",
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: claude",
    ]));
    assert_at(&problem, 5, 25);
    assert_mentions(&problem, &["'claude'", "at least 1"]);
}

#[test]
fn ollama_and_anthropic_upstreams_need_endpoints() {
    for (kind, example) in [
        ("ollama", "http://127.0.0.1:11434"),
        ("anthropic", "https://api.anthropic.com"),
    ] {
        let problem = only_problem(&yaml(&[
            "upstreams:",
            "  far:",
            &format!("    kind: {kind}"),
            "routes:",
            "  - model: m",
            "    pools:",
            "      - upstream: far",
        ]));
        assert_at(&problem, 3, 5);
        assert_mentions(&problem, &["'far'", "endpoints: is empty", example]);
    }
}

#[test]
fn header_problems_are_each_reported_at_the_header() {
    let env = |name: &str| (name == "PRESENT").then(|| "value".to_string());
    let mut found = problems_with_env(
        &yaml(&[
            "upstreams:",
            "  cloud:",
            "    kind: openai",
            "    endpoints: [https://api.example.com/v1]",
            "    api_key_env: PRESENT",
            "    headers:",
            "      Bad Name: x",
            "      Content-Type: text/plain",
            "      Authorization: Basic abc",
            "      X-Twice: one",
            "      x-twice: two",
            "      X-Missing: ${ABSENT_VAR}",
            "      X-Broken: ${not closed",
            "      X-Newline: \"a\\nb\"",
            "routes:",
            "  - model: m",
            "    pools:",
            "      - upstream: cloud",
        ]),
        &env,
    );
    found.sort_by_key(|p| (p.line, p.column));
    let at: Vec<(u64, u64)> = found.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(
        at,
        [
            (7, 7),
            (8, 7),
            (9, 7),
            (11, 7),
            (12, 18),
            (13, 17),
            (14, 18)
        ],
        "{found:#?}"
    );
    assert_mentions(&found[0], &["'Bad Name'", "not a valid HTTP header name"]);
    assert_mentions(&found[1], &["'Content-Type'", "written by the gateway"]);
    assert_mentions(&found[2], &["'Authorization'", "api_key_env"]);
    assert_mentions(&found[3], &["'x-twice'", "given twice"]);
    assert_mentions(&found[4], &["ABSENT_VAR", "x-missing", "not set"]);
    assert_mentions(&found[5], &["x-broken", "${PROVIDER_KEY}"]);
    assert_mentions(&found[6], &["x-newline", "not a valid header value"]);
}

#[test]
fn authorization_in_headers_is_fine_without_api_key_env() {
    // Some providers want another scheme than Bearer.
    let env = |name: &str| (name == "AZURE_TOKEN").then(|| "tok".to_string());
    let text = yaml(&[
        "upstreams:",
        "  cloud:",
        "    kind: openai",
        "    endpoints: [https://api.example.com/v1]",
        "    headers: { Authorization: \"Token ${AZURE_TOKEN}\" }",
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: cloud",
    ]);
    let config = match Config::parse(&text, FILE, &env) {
        Ok(config) => config,
        Err(err) => panic!("valid file rejected:\n{err}"),
    };
    assert_eq!(
        config.upstreams["cloud"].headers["authorization"],
        "Token tok"
    );
}

#[test]
fn headers_on_a_sim_upstream_are_refused() {
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "    headers: { X-A: b }",
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: local",
    ]));
    assert_at(&problem, 4, 14);
    assert_mentions(&problem, &["'local'", "HTTP upstreams only"]);
}

#[test]
fn header_values_from_the_environment_never_appear_in_debug_or_describe() {
    const SECRET: &str = "hdr-secret-do-not-print-3e1f";
    let text = yaml(&[
        "upstreams:",
        "  cloud:",
        "    kind: openai",
        "    endpoints: [https://api.example.com/v1]",
        "    headers:",
        "      X-Api-Key: ${PROVIDER_KEY}",
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: cloud",
    ]);
    let env = |name: &str| (name == "PROVIDER_KEY").then(|| SECRET.to_string());
    let config = match Config::parse(&text, FILE, &env) {
        Ok(config) => config,
        Err(err) => panic!("valid file rejected:\n{err}"),
    };
    assert_eq!(config.upstreams["cloud"].headers["x-api-key"], SECRET);
    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        describe(&config),
    ] {
        assert!(!shown.contains(SECRET), "secret leaked in: {shown}");
    }
    assert!(describe(&config).contains("headers: x-api-key"));
}

/// The routing file ships its Ollama, Anthropic and cloud examples
/// commented out; an operator uncomments them, so they must be valid as
/// written.
#[test]
fn the_commented_examples_in_the_shipped_file_are_valid_when_uncommented() {
    let shipped = include_str!("../../routing.yaml");
    let uncommented: Vec<String> = shipped
        .lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            match line.trim_start().strip_prefix("# ") {
                Some(rest) if looks_like_yaml(rest) => format!("{}{rest}", &line[..indent]),
                _ => line.to_string(),
            }
        })
        .collect();
    let text = uncommented.join("\n");
    let env = |_: &str| Some("from-the-environment".to_string());
    let config = match Config::parse(&text, FILE, &env) {
        Ok(config) => config,
        Err(err) => {
            panic!("an example in routing.yaml is invalid once uncommented:\n{err}\n{text}")
        }
    };
    let kinds: Vec<UpstreamKind> = config.upstreams.values().map(|u| u.kind).collect();
    for kind in [
        UpstreamKind::OpenAi,
        UpstreamKind::Ollama,
        UpstreamKind::Anthropic,
        UpstreamKind::Sim,
    ] {
        assert!(kinds.contains(&kind), "no {kind:?} example in {kinds:?}");
    }
    let mixed = config
        .routes
        .iter()
        .find(|route| {
            let kinds: Vec<UpstreamKind> = route
                .pools
                .iter()
                .map(|p| config.upstreams[&p.upstream].kind)
                .collect();
            kinds.contains(&UpstreamKind::OpenAi)
                && kinds.contains(&UpstreamKind::Ollama)
                && kinds.contains(&UpstreamKind::Anthropic)
        })
        .expect("a route mixing vLLM, Ollama and a cloud provider");
    let weights: Vec<u32> = mixed.pools.iter().map(|p| p.weight).collect();
    assert!(
        weights.windows(2).any(|w| w[0] != w[1]),
        "the mixed route shows weights: {weights:?}"
    );
}

/// A commented line that is a YAML key or list item (`key: ...`,
/// `- key: ...`), not prose.
fn looks_like_yaml(text: &str) -> bool {
    let text = text.trim_start();
    let text = text.strip_prefix("- ").unwrap_or(text);
    text.split_once(':').is_some_and(|(key, _)| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

/// The README documents the schema with an example; it must stay valid.
#[test]
fn the_readme_routing_example_is_valid() {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("## The routing file").expect("the section")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + section[start..].find("```").expect("its end");
    let env = |_: &str| Some("from-the-environment".to_string());
    let config = match Config::parse(&section[start..end], "README.md", &env) {
        Ok(config) => config,
        Err(err) => panic!("the README's routing example is invalid:\n{err}"),
    };
    assert_eq!(config.upstreams.len(), 5);
    assert_eq!(config.routes[0].pools.len(), 3);
    assert_eq!(config.routes[0].fallback, ["llama-small"]);
}

// === access: tls, auth, limits ===

/// Files a test's routing file names (certificates, keys), in a directory
/// of their own that is removed on drop.
struct Files(std::path::PathBuf);

impl Files {
    fn new() -> Files {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llmgate-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        Files(dir)
    }

    /// Writes `contents` to `name` and returns its path as the file names it.
    fn write(&self, name: &str, contents: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path.to_str().expect("temp paths are UTF-8").to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, and a certificate for `localhost` it issued with its key, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A file routing `demo` (alias `d`) and `big` to the simulator, with
/// `head` before it and `route_extra` under the `demo` route.
fn guarded(head: &[&str], route_extra: &[&str]) -> String {
    let mut lines: Vec<&str> = head.to_vec();
    lines.extend([
        "upstreams:",
        "  local:",
        "    kind: sim",
        "routes:",
        "  - model: demo",
        "    aliases: [d]",
        "    pools:",
        "      - upstream: local",
    ]);
    lines.extend(route_extra);
    lines.extend(["  - model: big", "    pools:", "      - upstream: local"]);
    yaml(&lines)
}

#[test]
fn listen_tls_reads_the_certificate_key_and_client_ca() {
    let files = Files::new();
    let pki = pki();
    let cert = files.write("server.crt", pki.cert.as_bytes());
    let key = files.write("server.key", pki.key.as_bytes());
    let ca = files.write("clients.crt", pki.ca.as_bytes());
    let config = parse_ok(&guarded(
        &[
            "listen:",
            "  grpc: 0.0.0.0:6000",
            "  tls:",
            &format!("    cert: {cert}"),
            &format!("    key: {key}"),
            &format!("    client_ca: {ca}"),
        ],
        &[],
    ));
    let tls = config.listen.tls.as_ref().expect("tls");
    assert_eq!(tls.cert.path, std::path::Path::new(&cert));
    assert_eq!(tls.cert.contents(), pki.cert.as_bytes());
    assert_eq!(tls.key.contents(), pki.key.as_bytes());
    assert_eq!(
        tls.client_ca.as_ref().map(PemFile::contents),
        Some(pki.ca.as_bytes())
    );
    // Client certificates are an answer to "who may call": no auth: needed.
    assert_eq!(config.auth, AuthConfig::Unset);
    assert!(warnings(&config).is_empty(), "{:?}", warnings(&config));
    // The private key is never printed, only where it lives.
    for shown in [format!("{config:?}"), describe(&config)] {
        assert!(!shown.contains("PRIVATE KEY"), "key leaked: {shown}");
    }
    assert!(describe(&config).contains("client certificates required"));
}

#[test]
fn listen_tls_problems_are_reported_at_the_file_or_the_section() {
    let files = Files::new();
    let pki = pki();
    let other = self::pki();
    let cert = files.write("server.crt", pki.cert.as_bytes());
    let wrong_key = files.write("other.key", other.key.as_bytes());
    let not_pem = files.write("notes.txt", b"hello");
    let missing = files.0.join("missing.crt");
    let missing = missing.to_str().expect("UTF-8");

    let problem = only_problem(&guarded(
        &[
            "listen:",
            "  tls:",
            &format!("    cert: {missing}"),
            &format!("    key: {wrong_key}"),
        ],
        &[],
    ));
    assert_at(&problem, 3, 11);
    assert_mentions(&problem, &["listen.tls.cert", "cannot read", missing]);

    let problem = only_problem(&guarded(
        &[
            "listen:",
            "  tls:",
            &format!("    cert: {cert}"),
            &format!("    key: {wrong_key}"),
        ],
        &[],
    ));
    assert_at(&problem, 3, 5);
    assert_mentions(&problem, &["listen.tls", "does not fit the certificate"]);

    let problem = only_problem(&guarded(
        &[
            "listen:",
            "  tls:",
            &format!("    cert: {cert}"),
            &format!("    key: {not_pem}"),
        ],
        &[],
    ));
    assert_mentions(&problem, &["key holds no PEM private key"]);
    assert!(!problem.message.contains("hello"), "{problem:?}");

    let problem = only_problem(&guarded(
        &[
            "listen:",
            "  tls:",
            &format!("    cert: {cert}"),
            &format!("    key: {wrong_key}"),
            &format!("    client_ca: {not_pem}"),
            "    ciphers: all",
        ],
        &[],
    ));
    assert_at(&problem, 6, 5);
    assert_mentions(&problem, &["unknown field `ciphers`"]);
}

#[test]
fn an_upstream_ca_is_read_for_https_endpoints_only() {
    let files = Files::new();
    let pki = pki();
    let ca = files.write("fleet-ca.crt", pki.ca.as_bytes());
    let file = |endpoint: &str, kind: &str| {
        yaml(&[
            "upstreams:",
            "  fleet:",
            &format!("    kind: {kind}"),
            &format!("    endpoints: [{endpoint}]"),
            &format!("    tls: {{ ca: {ca} }}"),
            "routes:",
            "  - model: m",
            "    pools:",
            "      - upstream: fleet",
        ])
    };
    let config = parse_ok(&file("https://10.0.0.5:8443", "openai"));
    let fleet = &config.upstreams["fleet"];
    assert_eq!(
        fleet.tls_ca.as_ref().map(PemFile::contents),
        Some(pki.ca.as_bytes())
    );
    assert!(describe(&config).contains(&format!("trusts CA {ca} only")));

    let problem = only_problem(&file("http://10.0.0.5:8000", "openai"));
    assert_at(&problem, 5, 10);
    assert_mentions(&problem, &["upstream 'fleet'", "https://"]);

    let not_ca = files.write("junk.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n");
    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints: [https://10.0.0.5:8443]",
        &format!("    tls: {{ ca: {not_ca} }}"),
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: fleet",
    ]));
    assert_mentions(&problem, &["upstream 'fleet': tls.ca"]);

    let problem = only_problem(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        &format!("    tls: {{ ca: {ca} }}"),
        "routes:",
        "  - model: m",
        "    pools:",
        "      - upstream: local",
    ]));
    assert_at(&problem, 4, 10);
    assert_mentions(&problem, &["does not apply to kind sim"]);
}

#[test]
fn keys_come_from_a_digest_a_variable_or_a_file_and_only_digests_are_kept() {
    const FROM_ENV: &str = "sk-gw-from-env-2f4b9c";
    const FROM_FILE: &str = "sk-gw-from-file-81ad0e";
    let files = Files::new();
    let key_file = files.write("ci.key", format!("{FROM_FILE}\n").as_bytes());
    // SHA-256 of "sk-gw-literal" (printf %s sk-gw-literal | sha256sum).
    let digest = "51258bd5599dbd8fe8a78e1032f7edf1d2d549a64110b53c65817f23da802a11";
    let text = guarded(
        &[
            "auth:",
            "  keys:",
            "    - name: search",
            &format!("      sha256: {digest}"),
            "      models: [demo]",
            "      limits: { requests_per_minute: 600, tokens_per_minute: 90000, max_in_flight: 8 }",
            "    - name: batch",
            "      env: BATCH_KEY",
            "      models: [\"*\"]",
            "    - name: ci",
            &format!("      file: {key_file}"),
            "      models: [d, big]",
        ],
        &[],
    );
    let env = |name: &str| (name == "BATCH_KEY").then(|| FROM_ENV.to_string());
    let config = match Config::parse(&text, FILE, &env) {
        Ok(config) => config,
        Err(err) => panic!("valid file rejected:\n{err}"),
    };
    let AuthConfig::Keys(keys) = &config.auth else {
        panic!("keys expected, got {:?}", config.auth);
    };
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["search", "batch", "ci"]);
    assert_eq!(keys[0].digest, KeyDigest::from_hex(digest).expect("hex"));
    assert_eq!(keys[0].digest, KeyDigest::of(b"sk-gw-literal"));
    assert_eq!(keys[0].source, KeySource::Digest);
    assert_eq!(
        keys[0].limits,
        CallerLimits {
            requests_per_minute: std::num::NonZeroU32::new(600),
            tokens_per_minute: std::num::NonZeroU32::new(90000),
            max_in_flight: std::num::NonZeroU32::new(8),
        }
    );
    assert_eq!(keys[1].digest, KeyDigest::of(FROM_ENV.as_bytes()));
    assert_eq!(keys[1].source, KeySource::Env("BATCH_KEY".into()));
    assert_eq!(keys[1].models, ModelGrant::All);
    // The file's trailing newline is not part of the key.
    assert_eq!(keys[2].digest, KeyDigest::of(FROM_FILE.as_bytes()));
    // An alias grants its whole route, and a route all its aliases.
    assert!(keys[0].models.allows("demo") && keys[0].models.allows("d"));
    assert!(!keys[0].models.allows("big"));
    assert!(keys[2].models.allows("demo") && keys[2].models.allows("big"));
    assert!(!keys[2].models.allows("unrouted"));
    for shown in [
        format!("{config:?}"),
        format!("{config:#?}"),
        describe(&config),
    ] {
        for secret in [FROM_ENV, FROM_FILE, digest] {
            assert!(!shown.contains(secret), "{secret} leaked in: {shown}");
        }
    }
    let described = describe(&config);
    assert!(described.contains("auth: 3 API key(s)"), "{described}");
    assert!(
        described.contains(
            "  key search (sha256 digest): demo; 600 requests/min, 90000 tokens/min, 8 in flight"
        ),
        "{described}"
    );
    assert!(described.contains("  key batch (from env BATCH_KEY): every model; unlimited"));
    assert!(described.contains(&format!("  key ci (from file {key_file}): d, big")));
}

#[test]
fn the_digest_of_a_key_is_its_sha256() {
    // The well-known SHA-256 of "abc".
    assert_eq!(
        KeyDigest::of(b"abc"),
        KeyDigest::from_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
            .expect("hex")
    );
    assert_eq!(
        KeyDigest::from_hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"),
        Some(KeyDigest::of(b"abc")),
        "upper case hex is the same digest"
    );
    assert_eq!(KeyDigest::from_hex("ba78"), None);
    assert_eq!(KeyDigest::from_hex(&"g".repeat(64)), None);
}

#[test]
fn auth_mode_none_is_explicit_and_keys_beside_it_are_refused() {
    let config = parse_ok(&guarded(&["auth:", "  mode: none"], &[]));
    assert_eq!(config.auth, AuthConfig::Off);
    assert!(describe(&config).contains("auth: off (mode: none)"));

    let problem = only_problem(&guarded(
        &[
            "auth:",
            "  mode: none",
            "  keys:",
            "    - { name: a, env: A, models: [demo] }",
        ],
        &[],
    ));
    assert_at(&problem, 4, 7);
    assert_mentions(&problem, &["mode: none", "remove the keys"]);

    let problem = only_problem(&guarded(&["auth:", "  mode: open"], &[]));
    assert_at(&problem, 2, 9);
    assert_mentions(&problem, &["mode 'open'", "keys", "none"]);

    let problem = only_problem(&guarded(&["auth:", "  mode: keys"], &[]));
    assert_at(&problem, 2, 3);
    assert_mentions(&problem, &["no keys", "mode: none"]);
}

#[test]
fn a_listener_other_hosts_reach_must_say_who_may_call() {
    let problem = only_problem(&guarded(&["listen:", "  grpc: 0.0.0.0:50051"], &[]));
    assert_at(&problem, 2, 9);
    assert_mentions(
        &problem,
        &["0.0.0.0:50051", "auth:", "client_ca", "mode: none"],
    );

    // Loopback needs nothing: only this host can reach it.
    let config = parse_ok(&guarded(&["listen:", "  grpc: 127.0.0.1:50051"], &[]));
    assert_eq!(config.auth, AuthConfig::Unset);
    assert!(warnings(&config).is_empty());

    // Turned off explicitly: valid, and `llmgate check` warns.
    let config = parse_ok(&guarded(
        &["listen:", "  grpc: 0.0.0.0:50051", "auth: { mode: none }"],
        &[],
    ));
    let warned = warnings(&config);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("auth is off"), "{warned:?}");

    // Keys over plain text: valid, and a warning that they travel in clear.
    let text = guarded(
        &[
            "listen:",
            "  grpc: 0.0.0.0:50051",
            "auth:",
            "  keys: [{ name: a, env: A, models: [demo] }]",
        ],
        &[],
    );
    let config = Config::parse(&text, FILE, &|_| Some("sk-a-123".into())).expect("valid");
    let warned = warnings(&config);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("clear text"), "{warned:?}");
}

#[test]
fn each_key_problem_is_reported_at_its_value() {
    let files = Files::new();
    let blank = files.write("blank.key", b"\n");
    let missing = files.0.join("nope.key");
    let missing = missing.to_str().expect("UTF-8");
    let text = guarded(
        &[
            "auth:",
            "  keys:",
            "    - { name: a, sha256: abc, models: [demo] }",
            &format!("    - {{ name: b, env: {UNSET_VAR}, models: [demo] }}"),
            &format!("    - {{ name: c, file: {missing}, models: [demo] }}"),
            &format!("    - {{ name: d, file: {blank}, models: [demo] }}"),
            "    - { name: e, models: [demo] }",
            "    - { name: f, env: F, file: /x, models: [demo] }",
            "    - { name: g, env: G, models: [] }",
            "    - { name: h, env: H, models: [nope] }",
            "    - { name: i, env: I, models: [\"*\", demo] }",
            "    - { name: 'j k', env: J, models: [demo] }",
            "    - { name: l, env: L, models: [demo], limits: { requests_per_minute: 0 } }",
        ],
        &[],
    );
    let env = |name: &str| (name.len() == 1).then(|| format!("sk-{name}-0123456789"));
    let all = problems_with_env(&text, &env);
    let expect: [(u64, u64, &[&str]); 11] = [
        (3, 26, &["key 'a'", "64 hex digits"]),
        (4, 23, &["key 'b'", UNSET_VAR, "not set"]),
        (5, 24, &["key 'c'", "cannot read", missing]),
        (6, 24, &["key 'd'", "is empty"]),
        (7, 7, &["key 'e' has no secret", "sha256:", "env:", "file:"]),
        (8, 7, &["key 'f'", "exactly one"]),
        (9, 34, &["key 'g'", "models: is empty", "\"*\""]),
        (
            10,
            35,
            &["key 'h'", "model 'nope' is not routed", "big, d, demo"],
        ),
        (11, 34, &["key 'i'", "\"*\" already allows every model"]),
        (12, 15, &["key name 'j k'", "letters, digits"]),
        (
            13,
            73,
            &["key 'l'", "requests_per_minute must be 1 or more"],
        ),
    ];
    assert_eq!(all.len(), expect.len(), "{all:#?}");
    for (problem, (line, column, needles)) in all.iter().zip(expect) {
        assert_at(problem, line, column);
        assert_mentions(problem, needles);
    }
}

#[test]
fn keys_need_their_own_names_and_their_own_secrets() {
    let text = guarded(
        &[
            "auth:",
            "  keys:",
            "    - { name: a, env: A, models: [demo] }",
            "    - { name: a, env: B, models: [demo] }",
            "    - { name: c, env: SAME, models: [demo] }",
            "    - { name: d, env: SAME_TOO, models: [demo] }",
        ],
        &[],
    );
    let env = |name: &str| {
        Some(if name.starts_with("SAME") {
            "sk-shared-secret-1".to_string()
        } else {
            format!("sk-{name}-distinct")
        })
    };
    let all = problems_with_env(&text, &env);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_at(&all[0], 4, 15);
    assert_mentions(&all[0], &["key name 'a' is already used (line 3)"]);
    assert_at(&all[1], 6, 15);
    assert_mentions(&all[1], &["key 'd' has the same secret as key 'c'"]);
    for problem in &all {
        assert!(!problem.message.contains("sk-"), "secret in {problem:?}");
    }
}

#[test]
fn a_key_that_no_client_could_send_is_refused_without_quoting_it() {
    let text = guarded(
        &["auth:", "  keys: [{ name: a, env: A, models: [demo] }]"],
        &[],
    );
    let env = |_: &str| Some("sk has spaces".to_string());
    let problem = problems_with_env(&text, &env).remove(0);
    assert_mentions(&problem, &["printable ASCII", "authorization header"]);
    assert!(!problem.message.contains("sk has spaces"), "{problem:?}");
}

#[test]
fn limits_read_sizes_counts_and_durations() {
    let config = parse_ok(&guarded(
        &[
            "limits:",
            "  max_request_size: 1MiB",
            "  max_messages: 64",
            "  max_content_length: 512KiB",
            "  max_in_flight: 100",
            "  keepalive_interval: 20s",
            "  keepalive_timeout: 5s",
            "  handshake_timeout: 3s",
            "  request_idle_timeout: 15s",
            "  max_streams_per_connection: 50",
        ],
        &[],
    ));
    assert_eq!(
        config.limits,
        Limits {
            max_request_size: 1024 * 1024,
            max_messages: 64,
            max_content_length: Some(512 * 1024),
            max_in_flight: std::num::NonZeroU32::new(100),
            connection: ConnectionLimits {
                keepalive_interval: Duration::from_secs(20),
                keepalive_timeout: Duration::from_secs(5),
                handshake_timeout: Duration::from_secs(3),
                request_idle_timeout: Duration::from_secs(15),
                max_streams: 50,
            },
        }
    );
    assert!(
        describe(&config)
            .contains("limits: requests up to 1 MiB, 64 messages, 512 KiB of content; 100 calls")
    );
    for (written, bytes) in [
        ("65536", 65536),
        ("2MB", 2_000_000),
        ("3 MiB", 3 * 1024 * 1024),
        ("4096B", 4096),
        ("8KB", 8000),
    ] {
        let config = parse_ok(&guarded(
            &["limits:", &format!("  max_request_size: {written}")],
            &[],
        ));
        assert_eq!(config.limits.max_request_size, bytes, "{written}");
    }
}

#[test]
fn limits_have_documented_defaults() {
    let config = parse_ok(&guarded(&[], &[]));
    assert_eq!(config.limits, Limits::default());
    // gRPC's own default receive limit.
    assert_eq!(config.limits.max_request_size, 4 * 1024 * 1024);
    assert_eq!(config.limits.max_messages, DEFAULT_MAX_MESSAGES);
    assert_eq!(config.limits.max_content_length, None);
    assert_eq!(
        config.limits.max_in_flight.map(std::num::NonZeroU32::get),
        Some(DEFAULT_MAX_IN_FLIGHT)
    );
    let connection = config.limits.connection;
    assert_eq!(connection.keepalive_interval, Duration::from_secs(30));
    assert_eq!(connection.keepalive_timeout, Duration::from_secs(10));
    assert_eq!(connection.handshake_timeout, Duration::from_secs(10));
    assert_eq!(connection.request_idle_timeout, Duration::from_secs(30));
    assert_eq!(connection.max_streams, 256);
    assert!(config.routes.iter().all(|r| r.limits.is_unlimited()));
}

#[test]
fn each_limits_problem_is_reported_at_its_value() {
    let all = problems(&guarded(
        &[
            "limits:",
            "  max_request_size: 4 parsecs",
            "  max_messages: 0",
            "  max_content_length: 0",
            "  max_in_flight: 0",
            "  keepalive_interval: soon",
            "  request_idle_timeout: 0s",
            "  max_streams_per_connection: 0",
        ],
        &[],
    ));
    let expect: [(u64, u64, &[&str]); 7] = [
        (2, 21, &["max_request_size is not a size", "4MiB"]),
        (3, 17, &["max_messages must be 1 or more"]),
        (4, 23, &["max_content_length must be more than 0"]),
        (5, 18, &["max_in_flight must be 1 or more"]),
        (6, 23, &["'soon' is not a duration"]),
        (7, 25, &["must be more than zero"]),
        (8, 31, &["max_streams_per_connection must be 1 or more"]),
    ];
    assert_eq!(all.len(), expect.len(), "{all:#?}");
    for (problem, (line, column, needles)) in all.iter().zip(expect) {
        assert_at(problem, line, column);
        assert_mentions(problem, needles);
    }
    let problem = only_problem(&guarded(&["limits:", "  max_request_size: 100"], &[]));
    assert_mentions(&problem, &["between 1 KiB and 1024 MiB"]);
}

#[test]
fn route_limits_are_read_and_checked() {
    let config = parse_ok(&guarded(
        &[],
        &["    limits: { requests_per_minute: 120, tokens_per_minute: 50000, max_in_flight: 16 }"],
    ));
    assert_eq!(
        config.routes[0].limits,
        CallerLimits {
            requests_per_minute: std::num::NonZeroU32::new(120),
            tokens_per_minute: std::num::NonZeroU32::new(50000),
            max_in_flight: std::num::NonZeroU32::new(16),
        }
    );
    assert!(config.routes[1].limits.is_unlimited());
    assert!(describe(&config).contains(
        "route demo (aliases: d)\n  limits: 120 requests/min, 50000 tokens/min, 16 in flight\n"
    ));

    let problem = only_problem(&guarded(&[], &["    limits: { tokens_per_minute: 0 }"]));
    assert_at(&problem, 9, 34);
    assert_mentions(
        &problem,
        &["route 'demo': limits: tokens_per_minute must be 1 or more"],
    );
    let problem = only_problem(&guarded(&[], &["    limits: { requests_per_hour: 5 }"]));
    assert_mentions(&problem, &["unknown field `requests_per_hour`"]);
}
