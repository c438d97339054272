//! `upstreams:`: kinds, endpoints, keys, headers, timeouts, the simulator
//! and the kind-specific extras.

use std::time::Duration;

use super::*;
use crate::config::*;

#[test]
fn error_rate_bounds_zero_and_one_are_accepted() {
    for rate in ["0", "1", "1.0"] {
        let config = parse_ok(RoutingFile::with_upstream(
            "local",
            &[
                "kind: sim",
                &format!("sim: {{ error_rate: {rate}, tokens_per_second: 0 }}"),
            ],
        ));
        let sim = config.upstreams["local"].sim;
        assert_eq!(sim.error_rate, if rate == "0" { 0.0 } else { 1.0 });
        assert_eq!(sim.tokens_per_second, 0.0, "0 means no pacing");
    }
}

#[test]
fn typo_in_an_upstream_field_is_refused() {
    let problem = only_problem(RoutingFile::with_upstream(
        "local",
        &["kind: sim", "timout: 30s"],
    ));
    assert_at(&problem, 4, 5);
    assert_mentions(&problem, &["unknown field", "timout", "timeout"]);
    assert_no_position_in_message(&problem);
}

#[test]
fn endpoints_must_be_http_base_urls() {
    let found = problems(RoutingFile::with_upstream(
        "fleet",
        &[
            "kind: openai",
            "endpoints:",
            "  - http://10.0.0.5:8000",
            "  - 10.0.0.6:8000",
            "  - ftp://files.example.com",
            "  - not a url",
            "  - http://10.0.0.7:8000/?x=1",
        ],
    ));
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
    let text = RoutingFile::with_upstream(
        "cloud",
        &[
            "kind: openai",
            "endpoints: [https://api.openai.com/v1]",
            &format!("api_key_env: {UNSET_VAR}"),
        ],
    )
    .text();
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
fn openai_upstream_without_endpoints_is_refused() {
    for fields in [&["kind: openai"][..], &["kind: openai", "endpoints: []"]] {
        let problem = only_problem(RoutingFile::with_upstream("fleet", fields));
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
    let problem = only_problem(RoutingFile::with_upstream(
        "local",
        &["kind: sim", "endpoints: [http://127.0.0.1:8000]"],
    ));
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
    let problem = only_problem(RoutingFile::with_upstream(
        "fleet",
        &[
            "kind: openai",
            "endpoints: [http://10.0.0.5:8000]",
            "sim: { ttft: 10ms }",
        ],
    ));
    assert_at(&problem, 5, 10);
    assert_mentions(&problem, &["'fleet'", "kind sim only", "remove it"]);
}

#[test]
fn sim_rates_out_of_range_are_refused() {
    let found = problems(
        RoutingFile::with_upstream(
            "local",
            &[
                "kind: sim",
                "sim:",
                "  error_rate: 1.5",
                "  tokens_per_second: -3",
            ],
        )
        .upstream("other", &["kind: sim", "sim: { error_rate: -0.1 }"])
        .route(
            "demo",
            &["pools:", "  - upstream: local", "  - upstream: other"],
        ),
    );
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
fn a_simulated_model_may_answer_with_no_delay() {
    let config = parse_ok(RoutingFile::with_upstream(
        "instant",
        &["kind: sim", "sim: { ttft: 0s, tokens_per_second: 0 }"],
    ));
    assert_eq!(config.upstreams["instant"].sim.ttft, Duration::ZERO);
}

#[test]
fn ollama_anthropic_and_cloud_extras_are_read_field_by_field() {
    let text = RoutingFile::with_upstream(
        "cloud",
        &[
            "kind: openai",
            "endpoints: [https://api.openai.com/v1]",
            "api_key_env: CLOUD_KEY",
            "max_tokens_field: max_completion_tokens",
            "headers:",
            "  OpenAI-Organization: org-42",
            "  X-Project-Token: Token ${PROJECT_TOKEN}",
        ],
    )
    .upstream(
        "gpu-box",
        &[
            "kind: ollama",
            "endpoints: [http://10.0.0.7:11434]",
            "keep_alive: 30m",
        ],
    )
    .upstream(
        "claude",
        &[
            "kind: anthropic",
            "endpoints: [https://api.anthropic.com]",
            "api_key_env: ANTHROPIC_API_KEY",
            "default_max_tokens: 1024",
            "headers: { anthropic-beta: prompt-caching-2024-07-31 }",
        ],
    )
    .route(
        "demo",
        &[
            "pools:",
            "  - upstream: cloud",
            "  - upstream: gpu-box",
            "  - upstream: claude",
        ],
    )
    .text();
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
    let config = parse_ok(
        RoutingFile::with_upstream(
            "gpu-box",
            &["kind: ollama", "endpoints: [http://127.0.0.1:11434]"],
        )
        .upstream(
            "claude",
            &["kind: anthropic", "endpoints: [https://api.anthropic.com]"],
        )
        .route(
            "demo",
            &["pools:", "  - upstream: gpu-box", "  - upstream: claude"],
        ),
    );
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
        let config = parse_ok(RoutingFile::with_upstream(
            "gpu-box",
            &[
                "kind: ollama",
                "endpoints: [http://127.0.0.1:11434]",
                &format!("keep_alive: {written}"),
            ],
        ));
        assert_eq!(
            config.upstreams["gpu-box"].keep_alive,
            Some(expected),
            "{written}"
        );
    }

    let problem = only_problem(RoutingFile::with_upstream(
        "gpu-box",
        &[
            "kind: ollama",
            "endpoints: [http://127.0.0.1:11434]",
            "keep_alive: a while",
        ],
    ));
    assert_at(&problem, 5, 17);
    assert_mentions(&problem, &["'gpu-box'", "'a while'", "10m", "-1"]);
}

#[test]
fn kind_specific_keys_on_another_kind_are_refused_at_their_value() {
    let found = problems(
        RoutingFile::with_upstream(
            "a",
            &[
                "kind: ollama",
                "endpoints: [http://127.0.0.1:11434]",
                "max_tokens_field: max_tokens",
            ],
        )
        .upstream(
            "b",
            &[
                "kind: openai",
                "endpoints: [http://127.0.0.1:8000]",
                "default_max_tokens: 512",
            ],
        )
        .upstream(
            "c",
            &[
                "kind: anthropic",
                "endpoints: [https://api.anthropic.com]",
                "keep_alive: 5m",
            ],
        ),
    );
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
    let problem = only_problem(RoutingFile::with_upstream(
        "cloud",
        &[
            "kind: openai",
            "endpoints: [https://api.openai.com/v1]",
            "max_tokens_field: max_new_tokens",
        ],
    ));
    assert_at(&problem, 5, 23);
    assert_mentions(
        &problem,
        &["'max_new_tokens'", "max_tokens", "max_completion_tokens"],
    );
}

#[test]
fn default_max_tokens_zero_is_refused() {
    let problem = only_problem(RoutingFile::with_upstream(
        "claude",
        &[
            "kind: anthropic",
            "endpoints: [https://api.anthropic.com]",
            "default_max_tokens: 0",
        ],
    ));
    assert_at(&problem, 5, 25);
    assert_mentions(&problem, &["'claude'", "at least 1"]);
}

#[test]
fn ollama_and_anthropic_upstreams_need_endpoints() {
    for (kind, example) in [
        ("ollama", "http://127.0.0.1:11434"),
        ("anthropic", "https://api.anthropic.com"),
    ] {
        let problem = only_problem(RoutingFile::with_upstream(
            "far",
            &[&format!("kind: {kind}")],
        ));
        assert_at(&problem, 3, 5);
        assert_mentions(&problem, &["'far'", "endpoints: is empty", example]);
    }
}

#[test]
fn header_problems_are_each_reported_at_the_header() {
    let env = |name: &str| (name == "PRESENT").then(|| "value".to_string());
    let mut found = problems_with_env(
        RoutingFile::with_upstream(
            "cloud",
            &[
                "kind: openai",
                "endpoints: [https://api.example.com/v1]",
                "api_key_env: PRESENT",
                "headers:",
                "  Bad Name: x",
                "  Content-Type: text/plain",
                "  Authorization: Basic abc",
                "  X-Twice: one",
                "  x-twice: two",
                "  X-Missing: ${ABSENT_VAR}",
                "  X-Broken: ${not closed",
                "  X-Newline: \"a\\nb\"",
            ],
        ),
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
    let text = RoutingFile::with_upstream(
        "cloud",
        &[
            "kind: openai",
            "endpoints: [https://api.example.com/v1]",
            "headers: { Authorization: \"Token ${AZURE_TOKEN}\" }",
        ],
    )
    .text();
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
    let problem = only_problem(RoutingFile::with_upstream(
        "local",
        &["kind: sim", "headers: { X-A: b }"],
    ));
    assert_at(&problem, 4, 14);
    assert_mentions(&problem, &["'local'", "HTTP upstreams only"]);
}

#[test]
fn header_values_from_the_environment_never_appear_in_debug_or_describe() {
    const SECRET: &str = "hdr-secret-do-not-print-3e1f";
    let text = RoutingFile::with_upstream(
        "cloud",
        &[
            "kind: openai",
            "endpoints: [https://api.example.com/v1]",
            "headers:",
            "  X-Api-Key: ${PROVIDER_KEY}",
        ],
    )
    .text();
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

#[test]
fn sim_rates_too_slow_to_schedule_are_refused_at_their_value() {
    for rate in ["1e-300", "0.0005", ".nan", ".inf", "-1"] {
        let problem = only_problem(RoutingFile::with_upstream(
            "local",
            &[
                "kind: sim",
                &format!("sim: {{ tokens_per_second: {rate} }}"),
            ],
        ));
        assert_at(&problem, 4, 31);
        assert_mentions(&problem, &["'local'", "tokens_per_second", "0.001"]);
    }
    for (rate, read) in [("0", 0.0), ("0.001", 0.001), ("40", 40.0)] {
        let config = parse_ok(RoutingFile::with_upstream(
            "local",
            &[
                "kind: sim",
                &format!("sim: {{ tokens_per_second: {rate} }}"),
            ],
        ));
        assert_eq!(config.upstreams["local"].sim.tokens_per_second, read);
    }
}

#[test]
fn endpoint_urls_with_credentials_are_refused_without_quoting_them() {
    for url in [
        "http://admin:hunter2-pw@10.0.0.5:8000",
        "https://token-only-user@api.example.com/v1",
    ] {
        let problem = only_problem(RoutingFile::with_upstream(
            "fleet",
            &["kind: openai", &format!("endpoints: [{url}]")],
        ));
        assert_at(&problem, 4, 17);
        assert_mentions(&problem, &["'fleet'", "user:pass@host", "api_key_env"]);
        assert!(
            !problem.message.contains("hunter2") && !problem.message.contains("token-only"),
            "the credential leaked: {}",
            problem.message
        );
    }
    // An '@' in the path is not userinfo.
    parse_ok(RoutingFile::with_upstream(
        "fleet",
        &["kind: openai", "endpoints: [http://10.0.0.5:8000/v1/@team]"],
    ));
}

#[test]
fn literal_credential_headers_are_never_printed_and_are_warned_about() {
    const SECRET: &str = "sk-literal-header-never-print-4c1e";
    let config = Config::parse(
        &RoutingFile::with_upstream(
            "cloud",
            &[
                "kind: openai",
                "endpoints: [https://api.example.com]",
                "headers:",
                &format!("  authorization: Bearer {SECRET}"),
                &format!("  x-goog-api-key: {SECRET}-2"),
                "  x-org-token: ${ORG_TOKEN}",
                "  x-org: acme-corporation",
            ],
        )
        .text(),
        FILE,
        &|var| (var == "ORG_TOKEN").then(|| "org-token-from-env-93".to_string()),
    )
    .expect("valid");
    let cloud = &config.upstreams["cloud"];
    assert_eq!(
        cloud.literal_secret_headers,
        ["authorization", "x-goog-api-key"],
        "only credentials written in the file; not ones read from ${{VAR}}, not plain headers"
    );
    for name in ["authorization", "x-goog-api-key", "x-org-token"] {
        assert!(cloud.headers[name].is_sensitive(), "{name} is sensitive");
    }
    assert!(!cloud.headers["x-org"].is_sensitive(), "x-org is no secret");
    let warned = warnings(&config);
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(warned[0].contains("header 'authorization'"), "{warned:?}");
    assert!(warned[0].contains("${PROVIDER_KEY}"), "{warned:?}");
    let shown = [format!("{config:?}"), describe(&config), warned.join("\n")];
    for text in shown {
        assert!(!text.contains(SECRET), "a literal secret leaked:\n{text}");
        assert!(!text.contains("org-token-from-env-93"), "{text}");
    }
}

#[test]
fn continuation_defaults_to_what_each_kind_can_do() {
    for (lines, expected) in [
        (
            &["kind: openai", "endpoints: [http://10.0.0.5:8000]"][..],
            Continuation::Prefill,
        ),
        (
            &["kind: openai", "endpoints: [https://api.openai.com/v1]"][..],
            Continuation::Replay,
        ),
        (
            &["kind: anthropic", "endpoints: [https://api.anthropic.com]"][..],
            Continuation::Prefill,
        ),
        (
            &["kind: ollama", "endpoints: [http://10.0.0.6:11434]"][..],
            Continuation::Prefill,
        ),
        (&["kind: sim"][..], Continuation::Replay),
    ] {
        let config = parse_ok(RoutingFile::with_upstream("up", lines));
        assert_eq!(config.upstreams["up"].continuation, expected, "{lines:?}");
    }
}

#[test]
fn continuation_is_one_of_three_strategies() {
    let config = parse_ok(RoutingFile::with_upstream(
        "up",
        &[
            "kind: openai",
            "endpoints: [http://10.0.0.5:8000]",
            "continuation: none",
        ],
    ));
    assert_eq!(config.upstreams["up"].continuation, Continuation::None);
    let problem = only_problem(RoutingFile::with_upstream(
        "up",
        &[
            "kind: openai",
            "endpoints: [http://10.0.0.5:8000]",
            "continuation: resume",
        ],
    ));
    assert_at(&problem, 5, 19);
    assert_mentions(
        &problem,
        &["continuation 'resume'", "prefill", "replay", "none"],
    );
}
