//! Whole files: what a valid file turns into, the shipped examples, YAML
//! syntax errors, durations wherever they appear, and one pass reporting
//! every problem in line order.

use std::cell::RefCell;
use std::net::SocketAddr;

use super::*;
use crate::config::*;
use crate::sim::SimSettings;

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
                    literal_secret_headers: Vec::new(),
                    max_tokens_field: MaxTokensField::MaxTokens,
                    default_max_tokens: DEFAULT_ANTHROPIC_MAX_TOKENS,
                    keep_alive: None,
                    tls_ca: None,
                    continuation: Continuation::Prefill,
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
                    literal_secret_headers: Vec::new(),
                    max_tokens_field: MaxTokensField::MaxTokens,
                    default_max_tokens: DEFAULT_ANTHROPIC_MAX_TOKENS,
                    keep_alive: None,
                    tls_ca: None,
                    continuation: Continuation::Replay,
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
                prefix_affinity: None,
                queue: None,
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
                prefix_affinity: None,
                queue: None,
            },
        ],
        auth: AuthConfig::Off,
        limits: Limits::default(),
        state: Default::default(),
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
    let text = RoutingFile::with_upstream(
        "cloud",
        &[
            "kind: openai",
            "endpoints: [https://api.openai.com/v1]",
            "api_key_env: CLOUD_KEY",
        ],
    )
    .text();
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
    let config = parse_ok(RoutingFile::new());
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
fn shipped_routing_file_parses_and_routes_demo() {
    let config = match Config::parse(include_str!("../../../routing.yaml"), FILE, &no_env) {
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

#[test]
fn unknown_top_level_field_is_refused_with_the_valid_ones_listed() {
    let problem = only_problem(RoutingFile::new().head(&["listn:", "  grpc: 127.0.0.1:1"]));
    assert_at(&problem, 1, 1);
    assert_mentions(&problem, &["unknown field", "listn", "listen"]);
    assert_no_position_in_message(&problem);
}

#[test]
fn bad_duration_is_reported_with_examples() {
    let problem = only_problem(RoutingFile::with_upstream(
        "fleet",
        &[
            "kind: openai",
            "endpoints: [http://10.0.0.5:8000]",
            "timeout: 5 parsecs",
        ],
    ));
    assert_at(&problem, 5, 14);
    assert_mentions(
        &problem,
        &["'5 parsecs'", "not a duration", "250ms, 30s or 2m"],
    );
}

#[test]
fn bad_durations_are_found_wherever_they_are() {
    let found = problems(yaml(&[
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
    let problem = only_problem(RoutingFile::with_upstream(
        "fleet",
        &[
            "kind: openai",
            "endpoints: [http://10.0.0.5:8000]",
            "idle_timeout: 0s",
        ],
    ));
    assert_at(&problem, 5, 19);
    assert_mentions(&problem, &["'0s'", "more than zero"]);
}

#[test]
fn tab_indentation_is_reported_on_its_line() {
    let problem = only_problem(yaml(&[
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
    let problem = only_problem(yaml(&[
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
    let problem = only_problem(yaml(&[
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

/// The routing file ships its Ollama, Anthropic and cloud examples
/// commented out; an operator uncomments them, so they must be valid as
/// written.
#[test]
fn the_commented_examples_in_the_shipped_file_are_valid_when_uncommented() {
    let shipped = include_str!("../../../routing.yaml");
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
    let readme = include_str!("../../../README.md");
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

#[test]
fn durations_over_a_week_are_refused_wherever_they_are() {
    let found = problems(yaml(&[
        "shutdown_grace: 8d",
        "upstreams:",
        "  fleet:",
        "    kind: ollama",
        "    endpoints: [http://10.0.0.5:11434]",
        "    timeout: 300000000000y",
        "    keep_alive: 30d",
        "    health_check: { interval: 7d }",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: fleet",
        "    retry: { backoff: 604801s }",
    ]));
    let at: Vec<(u64, u64)> = found.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(at, [(1, 17), (6, 14), (7, 17), (13, 23)], "{found:#?}");
    for problem in &found {
        assert_mentions(problem, &["longer than 7days"]);
    }
    assert_eq!(MAX_DURATION, Duration::from_secs(7 * 24 * 3600));
}
