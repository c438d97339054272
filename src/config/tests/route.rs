//! `routes:`: pools, the upstreams they name, model names and weights.

use super::*;
use crate::config::warnings;

#[test]
fn typo_in_a_pool_field_is_refused() {
    let problem = only_problem(
        RoutingFile::new().route("demo", &["pools:", "  - upstream: local", "    wieght: 2"]),
    );
    assert_at(&problem, 8, 9);
    assert_mentions(&problem, &["unknown field", "wieght", "weight"]);
    assert_no_position_in_message(&problem);
}

#[test]
fn pool_naming_an_undefined_upstream_lists_the_defined_ones() {
    let problem = only_problem(
        RoutingFile::with_upstream("alpha", &["kind: sim"])
            .upstream("beta", &["kind: sim"])
            .route(
                "demo",
                &["pools:", "  - upstream: alpha", "  - upstream: gamma"],
            ),
    );
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
    let problem = only_problem(RoutingFile::with_upstream("local", &["kind: llama"]));
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
    let found = problems(
        RoutingFile::new()
            .route(
                "demo",
                &["aliases: [demo-latest]", "pools:", "  - upstream: local"],
            )
            .route(
                "other",
                &["aliases: [demo]", "pools:", "  - upstream: local"],
            )
            .route("demo-latest", &["pools:", "  - upstream: local"]),
    );
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
    let problem = only_problem(
        RoutingFile::with_upstream("a", &["kind: sim"])
            .upstream("b", &["kind: sim"])
            .route(
                "demo",
                &[
                    "pools:",
                    "  - upstream: a",
                    "    weight: 0",
                    "  - upstream: b",
                    "    weight: 0",
                ],
            ),
    );
    assert_at(&problem, 7, 12);
    assert_mentions(&problem, &["'demo'", "weight 0", "positive weight"]);
}

#[test]
fn empty_routes_is_refused_at_the_routes_key() {
    let problem = only_problem(yaml(&[
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
    let problem = only_problem(RoutingFile::new().route("demo", &["pools: []"]));
    // The start of the route's block.
    assert_at(&problem, 5, 5);
    assert_mentions(
        &problem,
        &["'demo'", "pools: is empty", "add at least one pool"],
    );
}

#[test]
fn a_route_with_an_anthropic_pool_is_warned_that_its_embeddings_are_refused() {
    let config = parse_ok(yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "  claude:",
        "    kind: anthropic",
        "    endpoints: [https://api.anthropic.com]",
        "routes:",
        "  - model: mixed",
        "    pools:",
        "      - upstream: local",
        "      - upstream: claude",
        "  - model: claude-only",
        "    pools:",
        "      - upstream: claude",
        "  - model: embedder",
        "    pools:",
        "      - upstream: local",
    ]));
    let warned = warnings(&config);
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert_mentions_all(
        &warned[0],
        &[
            "route 'mixed'",
            "'claude'",
            "no embeddings",
            "while others succeed",
        ],
    );
    assert_mentions_all(&warned[1], &["route 'claude-only'", "every embedding call"]);
}

#[track_caller]
fn assert_mentions_all(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
}
