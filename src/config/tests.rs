use super::*;
use serde_saphyr::MessageFormatter as _;

fn show(name: &str, text: &str) {
    match serde_saphyr::from_str::<schema::RawConfig>(text) {
        Ok(_) => println!("== {name}: OK"),
        Err(e) => {
            let inner = e.without_snippet();
            println!(
                "== {name}: loc {:?}",
                e.location().map(|l| (l.line(), l.column()))
            );
            println!(
                "  default: {}",
                serde_saphyr::DefaultMessageFormatter.format_message(inner)
            );
            println!(
                "  user:    {}",
                serde_saphyr::UserMessageFormatter.format_message(inner)
            );
            println!("  display: {}", e.to_string().lines().next().unwrap_or(""));
        }
    }
}

#[test]
fn probe() {
    let base_routes = "routes:\n  - model: demo\n    pools:\n      - upstream: local\n";
    show(
        "unknown top",
        &format!("upstreams:\n  local:\n    kind: sim\n{base_routes}listn:\n  grpc: 127.0.0.1:1\n"),
    );
    show(
        "timout",
        &format!("upstreams:\n  local:\n    kind: sim\n    timout: 30s\n{base_routes}"),
    );
    show(
        "null routes",
        "upstreams:\n  local:\n    kind: sim\nroutes:\n",
    );
    show("missing routes", "upstreams:\n  local:\n    kind: sim\n");
    show(
        "tab",
        &format!("upstreams:\n  local:\n\tkind: sim\n{base_routes}"),
    );
    show(
        "unclosed",
        &format!(
            "upstreams:\n  local:\n    kind: openai\n    endpoints: [http://a:1\n{base_routes}"
        ),
    );
    show(
        "unclosed eof",
        &format!(
            "{base_routes}upstreams:\n  local:\n    kind: openai\n    endpoints: [http://a:1\n"
        ),
    );
    show(
        "dup",
        &format!("upstreams:\n  local:\n    kind: sim\n  local:\n    kind: sim\n{base_routes}"),
    );
    show(
        "neg weight",
        "upstreams:\n  local:\n    kind: sim\nroutes:\n  - model: demo\n    pools:\n      - upstream: local\n        weight: -1\n",
    );
    show(
        "str weight",
        "upstreams:\n  local:\n    kind: sim\nroutes:\n  - model: demo\n    pools:\n      - upstream: local\n        weight: heavy\n",
    );
    show("empty file", "");
    show(
        "alias",
        "upstreams:\n  local: &x\n    kind: sim\n    bogus: 1\n  other: *x\nroutes: []\n",
    );
    show(
        "kind list",
        "upstreams:\n  local:\n    kind: [sim]\nroutes: []\n",
    );
}
