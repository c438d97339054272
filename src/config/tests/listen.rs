//! `listen:` and `cors:`.

use std::net::SocketAddr;

use super::*;
use crate::config::*;

#[test]
fn listen_address_must_be_ip_and_port() {
    let problem = only_problem(RoutingFile::new().head(&["listen:", "  grpc: localhost:50051"]));
    assert_at(&problem, 2, 9);
    assert_mentions(&problem, &["'localhost:50051'", "ip:port", "0.0.0.0:50051"]);
}

#[test]
fn metrics_listener_can_be_moved_or_turned_off() {
    let with_listen = |listen: &str| RoutingFile::new().head(&["listen:", listen]).text();
    let moved = parse_ok(with_listen("  metrics: 0.0.0.0:9100"));
    assert_eq!(
        moved.listen.metrics,
        Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
    );
    assert!(describe(&moved).contains("listen metrics 0.0.0.0:9100"));

    let off = parse_ok(with_listen("  metrics: off"));
    assert_eq!(off.listen.metrics, None);
    assert!(describe(&off).contains("listen metrics off"));

    let problem = only_problem(with_listen("  metrics: localhost:9090"));
    assert_at(&problem, 2, 12);
    assert_mentions(&problem, &["'localhost:9090'", "ip:port", "or off"]);
}

#[test]
fn http_listener_and_cors_origins_are_optional_and_read() {
    let off = parse_ok(RoutingFile::new());
    assert_eq!(off.listen.http, None, "no HTTP front unless asked for");
    assert_eq!(off.cors, CorsConfig::default());
    assert!(!describe(&off).contains("listen http"));

    let on = parse_ok(RoutingFile::new().head(&[
        "listen:",
        "  http: 0.0.0.0:8080",
        "cors:",
        "  allowed_origins: [https://app.example.com, HTTP://LOCALHOST:5173]",
        "auth: { mode: none }",
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

    let any = parse_ok(RoutingFile::new().head(&["cors: { allowed_origins: ['*'] }"]));
    assert_eq!(any.cors.allowed_origins, ["*"]);

    let problem = only_problem(RoutingFile::new().head(&["listen:", "  http: localhost:8080"]));
    assert_at(&problem, 2, 9);
    assert_mentions(&problem, &["'localhost:8080'", "ip:port", "0.0.0.0:8080"]);
}

#[test]
fn cors_origins_that_no_browser_sends_are_refused_at_their_value() {
    let found = problems(RoutingFile::new().head(&[
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

    let problem = only_problem(
        RoutingFile::new().head(&["cors:", "  allowed_origins: [https://app.example.com, '*']"]),
    );
    assert_at(&problem, 2, 46);
    assert_mentions(&problem, &["'*'", "alone"]);

    let problem = only_problem(
        RoutingFile::new().head(&["cors:", "  allowed_orgins: [https://app.example.com]"]),
    );
    assert_at(&problem, 2, 3);
    assert_mentions(&problem, &["allowed_orgins"]);
}

#[test]
fn the_admin_listener_stays_on_loopback_unless_the_file_moves_it() {
    let config = parse_ok(RoutingFile::new());
    assert_eq!(
        config.listen.metrics,
        Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
    );
    assert!(warnings(&config).is_empty());
}
