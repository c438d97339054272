//! `routes[].queue:` and a key's `priority:`.

use std::time::Duration;

use super::*;
use crate::config::{AuthConfig, Priority, QueueConfig};

/// The skeleton with `queue` as the last lines of route `demo`.
fn route_with(queue: &[&str]) -> RoutingFile {
    RoutingFile::new().under_route(queue)
}

#[test]
fn an_empty_queue_takes_the_documented_defaults() {
    let config = parse_ok(route_with(&["queue: {}"]));
    assert_eq!(
        config.routes[0].queue,
        Some(QueueConfig {
            max_len: 256,
            timeout: Duration::from_secs(10),
            promote_after: Duration::from_secs(2),
        })
    );
    let without = parse_ok(route_with(&[]));
    assert_eq!(without.routes[0].queue, None);
}

#[test]
fn a_queue_of_zero_calls_is_refused_where_it_is_written() {
    let problem = only_problem(route_with(&["queue: { max_len: 0 }"]));
    assert_at(&problem, 8, 23);
    assert_mentions(&problem, &["'demo'", "queue.max_len 0", "between 1 and"]);
}

#[test]
fn an_absurd_queue_length_is_refused() {
    let problem = only_problem(route_with(&["queue: { max_len: 5000000 }"]));
    assert_at(&problem, 8, 23);
    assert_mentions(&problem, &["queue.max_len 5000000", "100000"]);
}

#[test]
fn a_zero_or_absurd_queue_timeout_is_refused() {
    let zero = only_problem(route_with(&["queue: { timeout: 0s }"]));
    assert_at(&zero, 8, 23);
    assert_mentions(&zero, &["more than zero"]);
    let long = only_problem(route_with(&["queue: { promote_after: 2h }"]));
    assert_at(&long, 8, 29);
    assert_mentions(&long, &["queue.promote_after 2h", "longer than an hour"]);
}

#[test]
fn a_typo_in_queue_is_refused() {
    let problem = only_problem(route_with(&["queue: { max_lenght: 3 }"]));
    assert_mentions(&problem, &["unknown field", "max_lenght"]);
}

const DIGEST: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

#[test]
fn a_key_has_a_class_and_may_be_let_choose_it() {
    let config = parse_ok(RoutingFile::new().head(&[
        "auth:",
        "  keys:",
        &format!(
            "    - {{ name: batch, sha256: {DIGEST}, models: ['*'], priority: low, priority_header: true }}"
        ),
    ]));
    let AuthConfig::Keys(keys) = &config.auth else {
        panic!("keys were declared: {:?}", config.auth);
    };
    assert_eq!(keys[0].priority, Priority::Low);
    assert!(keys[0].priority_header);
}

#[test]
fn an_unknown_class_is_refused_with_the_classes_there_are() {
    let problem = only_problem(RoutingFile::new().head(&[
        "auth:",
        "  keys:",
        &format!("    - {{ name: batch, sha256: {DIGEST}, models: ['*'], priority: urgent }}"),
    ]));
    assert_mentions(
        &problem,
        &["key 'batch'", "priority 'urgent'", "high, normal or low"],
    );
}

#[test]
fn llmgate_check_describes_the_queue_and_a_keys_class() {
    let config = parse_ok(
        RoutingFile::new()
            .head(&[
                "auth:",
                "  keys:",
                &format!("    - {{ name: batch, sha256: {DIGEST}, models: ['*'], priority: low }}"),
            ])
            .route(
                "demo",
                &[
                    "pools: [{ upstream: local }]",
                    "queue: { max_len: 8, timeout: 3s }",
                ],
            ),
    );
    let described = crate::config::describe(&config);
    assert!(
        described.contains("queue: up to 8 calls wait up to 3s for a slot"),
        "{described}"
    );
    assert!(described.contains("queue class: low"), "{described}");
}
