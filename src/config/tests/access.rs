//! Access: `listen.tls` and upstream CAs, `auth:` keys and the exposure
//! rule, and `limits:`.

use std::time::Duration;

use super::*;
use crate::config::*;

#[test]
fn listen_tls_reads_the_certificate_key_and_client_ca() {
    let files = Files::new();
    let pki = pki();
    let cert = files.write("server.crt", pki.cert.as_bytes());
    let key = files.write("server.key", pki.key.as_bytes());
    let ca = files.write("clients.crt", pki.ca.as_bytes());
    let config = parse_ok(guarded().head(&[
        "listen:",
        "  grpc: 0.0.0.0:6000",
        "  tls:",
        &format!("    cert: {cert}"),
        &format!("    key: {key}"),
        &format!("    client_ca: {ca}"),
    ]));
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

    let problem = only_problem(guarded().head(&[
        "listen:",
        "  tls:",
        &format!("    cert: {missing}"),
        &format!("    key: {wrong_key}"),
    ]));
    assert_at(&problem, 3, 11);
    assert_mentions(&problem, &["listen.tls.cert", "cannot read", missing]);

    let problem = only_problem(guarded().head(&[
        "listen:",
        "  tls:",
        &format!("    cert: {cert}"),
        &format!("    key: {wrong_key}"),
    ]));
    assert_at(&problem, 3, 5);
    assert_mentions(&problem, &["listen.tls", "does not fit the certificate"]);

    let problem = only_problem(guarded().head(&[
        "listen:",
        "  tls:",
        &format!("    cert: {cert}"),
        &format!("    key: {not_pem}"),
    ]));
    assert_mentions(&problem, &["key holds no PEM private key"]);
    assert!(!problem.message.contains("hello"), "{problem:?}");

    let problem = only_problem(guarded().head(&[
        "listen:",
        "  tls:",
        &format!("    cert: {cert}"),
        &format!("    key: {wrong_key}"),
        &format!("    client_ca: {not_pem}"),
        "    ciphers: all",
    ]));
    assert_at(&problem, 6, 5);
    assert_mentions(&problem, &["unknown field `ciphers`"]);
}

#[test]
fn an_upstream_ca_is_read_for_https_endpoints_only() {
    let files = Files::new();
    let pki = pki();
    let ca = files.write("fleet-ca.crt", pki.ca.as_bytes());
    let file = |endpoint: &str, kind: &str| {
        RoutingFile::with_upstream(
            "fleet",
            &[
                &format!("kind: {kind}"),
                &format!("endpoints: [{endpoint}]"),
                &format!("tls: {{ ca: {ca} }}"),
            ],
        )
    };
    let config = parse_ok(file("https://10.0.0.5:8443", "openai"));
    let fleet = &config.upstreams["fleet"];
    assert_eq!(
        fleet.tls_ca.as_ref().map(PemFile::contents),
        Some(pki.ca.as_bytes())
    );
    assert!(describe(&config).contains(&format!("trusts CA {ca} only")));

    let problem = only_problem(file("http://10.0.0.5:8000", "openai"));
    assert_at(&problem, 5, 10);
    assert_mentions(&problem, &["upstream 'fleet'", "https://"]);

    let not_ca = files.write("junk.crt", b"-----BEGIN CERTIFICATE-----\nAAAA\n");
    let problem = only_problem(RoutingFile::with_upstream(
        "fleet",
        &[
            "kind: openai",
            "endpoints: [https://10.0.0.5:8443]",
            &format!("tls: {{ ca: {not_ca} }}"),
        ],
    ));
    assert_mentions(&problem, &["upstream 'fleet': tls.ca"]);

    let problem = only_problem(RoutingFile::with_upstream(
        "local",
        &["kind: sim", &format!("tls: {{ ca: {ca} }}")],
    ));
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
    let text = guarded()
        .head(&[
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
        ])
        .text();
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
    let config = parse_ok(guarded().head(&["auth:", "  mode: none"]));
    assert_eq!(config.auth, AuthConfig::Off);
    assert!(describe(&config).contains("auth: off (mode: none)"));

    let problem = only_problem(guarded().head(&[
        "auth:",
        "  mode: none",
        "  keys:",
        "    - { name: a, env: A, models: [demo] }",
    ]));
    assert_at(&problem, 4, 7);
    assert_mentions(&problem, &["mode: none", "remove the keys"]);

    let problem = only_problem(guarded().head(&["auth:", "  mode: open"]));
    assert_at(&problem, 2, 9);
    assert_mentions(&problem, &["mode 'open'", "keys", "none"]);

    let problem = only_problem(guarded().head(&["auth:", "  mode: keys"]));
    assert_at(&problem, 2, 3);
    assert_mentions(&problem, &["no keys", "mode: none"]);
}

#[test]
fn a_listener_other_hosts_reach_must_say_who_may_call() {
    let problem = only_problem(guarded().head(&["listen:", "  grpc: 0.0.0.0:50051"]));
    assert_at(&problem, 2, 9);
    assert_mentions(
        &problem,
        &["0.0.0.0:50051", "auth:", "client_ca", "mode: none"],
    );

    // Loopback needs nothing: only this host can reach it.
    let config = parse_ok(guarded().head(&["listen:", "  grpc: 127.0.0.1:50051"]));
    assert_eq!(config.auth, AuthConfig::Unset);
    assert!(warnings(&config).is_empty());

    // Turned off explicitly: valid, and `llmgate check` warns.
    let config =
        parse_ok(guarded().head(&["listen:", "  grpc: 0.0.0.0:50051", "auth: { mode: none }"]));
    let warned = warnings(&config);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("auth is off"), "{warned:?}");

    // Keys over plain text: valid, and a warning that they travel in clear.
    let text = guarded()
        .head(&[
            "listen:",
            "  grpc: 0.0.0.0:50051",
            "auth:",
            "  keys: [{ name: a, env: A, models: [demo] }]",
        ])
        .text();
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
    let text = guarded()
        .head(&[
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
        ])
        .text();
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
    let text = guarded()
        .head(&[
            "auth:",
            "  keys:",
            "    - { name: a, env: A, models: [demo] }",
            "    - { name: a, env: B, models: [demo] }",
            "    - { name: c, env: SAME, models: [demo] }",
            "    - { name: d, env: SAME_TOO, models: [demo] }",
        ])
        .text();
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
    let text = guarded()
        .head(&["auth:", "  keys: [{ name: a, env: A, models: [demo] }]"])
        .text();
    let env = |_: &str| Some("sk has spaces".to_string());
    let problem = problems_with_env(&text, &env).remove(0);
    assert_mentions(&problem, &["printable ASCII", "authorization header"]);
    assert!(!problem.message.contains("sk has spaces"), "{problem:?}");
}

#[test]
fn limits_read_sizes_counts_and_durations() {
    let config = parse_ok(guarded().head(&[
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
        "  max_buffered_bytes: 8MiB",
        "  max_connections: 1000",
    ]));
    assert_eq!(
        config.limits,
        Limits {
            max_request_size: 1024 * 1024,
            max_messages: 64,
            max_content_length: Some(512 * 1024),
            max_in_flight: std::num::NonZeroU32::new(100),
            max_buffered_bytes: 8 * 1024 * 1024,
            connection: ConnectionLimits {
                keepalive_interval: Duration::from_secs(20),
                keepalive_timeout: Duration::from_secs(5),
                handshake_timeout: Duration::from_secs(3),
                request_idle_timeout: Duration::from_secs(15),
                max_streams: 50,
                max_connections: 1000,
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
        let config =
            parse_ok(guarded().head(&["limits:", &format!("  max_request_size: {written}")]));
        assert_eq!(config.limits.max_request_size, bytes, "{written}");
    }
}

#[test]
fn limits_have_documented_defaults() {
    let config = parse_ok(guarded());
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
    let all = problems(guarded().head(&[
        "limits:",
        "  max_request_size: 4 parsecs",
        "  max_messages: 0",
        "  max_content_length: 0",
        "  max_in_flight: 0",
        "  keepalive_interval: soon",
        "  request_idle_timeout: 0s",
        "  max_streams_per_connection: 0",
    ]));
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
    let problem = only_problem(guarded().head(&["limits:", "  max_request_size: 100"]));
    assert_mentions(&problem, &["between 1 KiB and 1024 MiB"]);
}

#[test]
fn route_limits_are_read_and_checked() {
    let config = parse_ok(guarded().under_route(&[
        "limits: { requests_per_minute: 120, tokens_per_minute: 50000, max_in_flight: 16 }",
    ]));
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

    let problem = only_problem(guarded().under_route(&["limits: { tokens_per_minute: 0 }"]));
    assert_at(&problem, 9, 34);
    assert_mentions(
        &problem,
        &["route 'demo': limits: tokens_per_minute must be 1 or more"],
    );
    let problem = only_problem(guarded().under_route(&["limits: { requests_per_hour: 5 }"]));
    assert_mentions(&problem, &["unknown field `requests_per_hour`"]);
}

#[test]
fn an_http_listener_other_hosts_reach_must_say_who_may_call_like_grpc() {
    let problem = only_problem(guarded().head(&["listen:", "  http: 0.0.0.0:8080"]));
    assert_at(&problem, 2, 9);
    assert_mentions(
        &problem,
        &[
            "listen.http 0.0.0.0:8080",
            "auth:",
            "client_ca",
            "mode: none",
        ],
    );

    // Both exposed: each is reported at its own address.
    let found =
        problems(guarded().head(&["listen:", "  grpc: 0.0.0.0:50051", "  http: '[::]:8080'"]));
    let at: Vec<(u64, u64)> = found.iter().map(|p| (p.line, p.column)).collect();
    assert_eq!(at, [(2, 9), (3, 9)], "{found:#?}");
    assert_mentions(&found[1], &["listen.http [::]:8080"]);

    // Turned off explicitly: valid, and a warning names the HTTP listener.
    let config =
        parse_ok(guarded().head(&["listen:", "  http: 0.0.0.0:8080", "auth: { mode: none }"]));
    let warned = warnings(&config);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].starts_with("listen.http 0.0.0.0:8080"),
        "{warned:?}"
    );
    assert!(warned[0].contains("auth is off"), "{warned:?}");

    // Loopback HTTP beside it needs nothing.
    parse_ok(guarded().head(&["listen:", "  http: 127.0.0.1:8080"]));
}
