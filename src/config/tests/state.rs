//! `state:`: the Redis that replicas share limits through, and the note
//! `llmgate check` gives a file with limits and no shared store.

use std::time::Duration;

use super::*;
use crate::config::*;

#[test]
fn state_redis_reads_its_url_prefix_timeout_policy_and_password_from_the_environment() {
    let env = |name: &str| (name == "REDIS_PASSWORD").then(|| "s3cret-pw".to_string());
    let text = RoutingFile::new()
        .head(&[
            "state:",
            "  redis:",
            "    url: rediss://redis.internal:6380/2",
            "    key_prefix: \"gw-a:\"",
            "    timeout: 20ms",
            "    on_error: deny",
            "    password_env: REDIS_PASSWORD",
        ])
        .text();
    let config = match Config::parse(&text, FILE, &env) {
        Ok(config) => config,
        Err(err) => panic!("valid file rejected:\n{err}"),
    };
    let redis = config.state.redis.as_ref().expect("state.redis");
    assert_eq!(redis.url, "rediss://redis.internal:6380/2");
    assert_eq!(redis.key_prefix, "gw-a:");
    assert_eq!(redis.timeout, Duration::from_millis(20));
    assert_eq!(redis.on_error, OnStoreError::Deny);
    assert_eq!(
        redis.password.as_ref().map(Secret::expose),
        Some("s3cret-pw")
    );
    let info = redis.connection_info().expect("a usable URL");
    assert_eq!(info.redis_settings().password(), Some("s3cret-pw"));
    assert_eq!(info.redis_settings().db(), 2);
    // The password is never shown, only where it comes from.
    for shown in [format!("{config:?}"), describe(&config)] {
        assert!(!shown.contains("s3cret-pw"), "password leaked: {shown}");
    }
    assert!(
        describe(&config).contains(
            "state: limits shared through rediss://redis.internal:6380/2 (keys under 'gw-a:', \
             timeout 20ms, on_error: deny, password from env REDIS_PASSWORD)"
        ),
        "{}",
        describe(&config)
    );
}

#[test]
fn state_redis_defaults_to_a_5ms_timeout_allow_and_the_llmgate_prefix() {
    let config = parse_ok(RoutingFile::new().head(&[
        "state:",
        "  redis:",
        "    url: redis://127.0.0.1:6379/0",
    ]));
    let redis = config.state.redis.expect("state.redis");
    assert_eq!(redis.timeout, Duration::from_millis(5));
    assert_eq!(redis.on_error, OnStoreError::Allow);
    assert_eq!(redis.key_prefix, "llmgate:");
    assert_eq!(redis.password, None);
}

#[test]
fn a_password_in_the_url_is_refused_without_repeating_it() {
    let problem = only_problem(RoutingFile::new().head(&[
        "state:",
        "  redis:",
        "    url: redis://:hunter2@redis:6379/0",
    ]));
    assert_at(&problem, 3, 10);
    assert_mentions(
        &problem,
        &["must not carry a user name or password", "password_env"],
    );
    assert!(!problem.message.contains("hunter2"), "{problem:?}");
}

#[test]
fn state_redis_problems_are_reported_where_they_are_written() {
    let all = problems(RoutingFile::new().head(&[
        "state:",
        "  redis:",
        "    url: http://redis:6379",
        "    timeout: 2s",
        "    on_error: maybe",
        &format!("    password_env: {UNSET_VAR}"),
    ]));
    assert_eq!(all.len(), 4, "{all:#?}");
    assert_at(&all[0], 3, 10);
    assert_mentions(&all[0], &["must be redis://host:port/db, or rediss://"]);
    assert_at(&all[1], 4, 14);
    assert_mentions(&all[1], &["too long", "at most 1s"]);
    assert_at(&all[2], 5, 15);
    assert_mentions(&all[2], &["'maybe' is not allow or deny"]);
    assert_at(&all[3], 6, 19);
    assert_mentions(&all[3], &[UNSET_VAR, "is not set"]);
}

#[test]
fn unknown_fields_under_state_are_refused() {
    let problem = only_problem(RoutingFile::new().head(&[
        "state:",
        "  redis:",
        "    url: redis://redis:6379/0",
        "    pasword_env: X",
    ]));
    assert_eq!(problem.line, 4, "{problem:?}");
    assert_mentions(&problem, &["pasword_env"]);
}

#[test]
fn without_state_a_file_with_limits_is_told_they_count_per_replica() {
    let limited = parse_ok(RoutingFile::new().route(
        "demo",
        &[
            "limits: { requests_per_minute: 60 }",
            "pools:",
            "  - upstream: local",
        ],
    ));
    assert!(
        describe(&limited).contains(
            "state: local; note: limits are counted by each replica alone, so N replicas \
             grant N times them; set state.redis to share them"
        ),
        "{}",
        describe(&limited)
    );
    assert!(warnings(&limited).is_empty(), "a note, not a warning");
    let unlimited = parse_ok(RoutingFile::new());
    assert!(describe(&unlimited).contains("state: local\n"));
    assert!(!describe(&unlimited).contains("note:"));
}

/// The README's scale-out section shows `state:`; it must stay valid.
#[test]
fn the_readme_state_example_is_valid() {
    let readme = include_str!("../../../README.md");
    let section = &readme[readme.find("## Scale-out").expect("the section")..];
    let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + section[start..].find("```").expect("its end");
    let lines: Vec<&str> = section[start..end].lines().collect();
    let env = |_: &str| Some("from-the-environment".to_string());
    let config = match Config::parse(&RoutingFile::new().head(&lines).text(), "README.md", &env) {
        Ok(config) => config,
        Err(err) => panic!("the README's state example is invalid:\n{err}"),
    };
    assert_eq!(
        config.state.redis.map(|r| r.url),
        Some("redis://llmgate-redis:6379/0".to_string())
    );
}
