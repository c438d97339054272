//! Heap allocations per token on the paths `token_path` times: the same
//! cases (its code, included as a module), each run a few hundred times
//! under a counting allocator, printed as allocations (and reallocations)
//! per call and per token.
//!
//! A separate binary because counting costs atomics on every allocation,
//! which would skew `token_path`'s timings.
//!
//! ```text
//! cargo bench --bench token_allocs
//! ```

use std::alloc::System;

use llmgate::bench_support::{Gateway, OpenAiWire, install_metrics};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[allow(dead_code)]
#[path = "token_path.rs"]
mod cases;

use cases::{
    CHAT, CHAT_END, MESSAGES, MESSAGES_END, ROUTING, TOKENS, WORDS, decode, encode_grpc, grpc_call,
    http_call, read_openai, runtime, stack_call, vllm_stream,
};

/// Runs of each case counted.
const RUNS: usize = 200;

/// Allocations and reallocations per run of `case` (after one run to warm
/// caches and lazily built state).
fn count(mut case: impl FnMut() -> usize) -> (f64, f64) {
    std::hint::black_box(case());
    let region = Region::new(GLOBAL);
    for _ in 0..RUNS {
        std::hint::black_box(case());
    }
    let stats = region.change();
    (
        stats.allocations as f64 / RUNS as f64,
        stats.reallocations as f64 / RUNS as f64,
    )
}

fn row(name: &str, (allocs, reallocs): (f64, f64)) {
    let tokens = f64::from(TOKENS);
    println!(
        "{name:<34} {allocs:>9.1} {reallocs:>9.1} {:>10.2} {:>10.2}",
        allocs / tokens,
        reallocs / tokens
    );
}

fn main() {
    // `cargo test --benches` runs this with no `--bench`: nothing to count.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = runtime();
    println!(
        "{:<34} {:>9} {:>9} {:>10} {:>10}",
        "case (one 50-token answer)", "allocs", "reallocs", "allocs/tok", "reallocs/tok"
    );
    let stream = vllm_stream();
    let wire = OpenAiWire::new().expect("an adapter");
    row(
        "sse_decode/sse/whole",
        count(|| decode(&stream, stream.len())),
    );
    row("sse_decode/sse/7_byte_reads", count(|| decode(&stream, 7)));
    row(
        "sse_decode/openai_events/whole",
        count(|| read_openai(&wire, &stream, stream.len())),
    );
    row(
        "sse_decode/openai_events/7_byte",
        count(|| read_openai(&wire, &stream, 7)),
    );
    let tokens: Vec<String> = (0..TOKENS as usize)
        .map(|i| WORDS[i % WORDS.len()].to_string())
        .collect();
    row(
        "chunk_encode/grpc_token_chunk",
        count(|| encode_grpc(&tokens)),
    );
    let (canned, canned_one) = rt.block_on(async {
        (
            Gateway::canned(ROUTING, TOKENS).expect("a gateway"),
            Gateway::canned(ROUTING, 1).expect("a gateway"),
        )
    });
    for (name, gateway) in [("50_tokens", &canned), ("1_token", &canned_one)] {
        row(
            &format!("chunk_encode/grpc_front/{name}"),
            count(|| rt.block_on(grpc_call(gateway))),
        );
        row(
            &format!("chunk_encode/openai_front/{name}"),
            count(|| rt.block_on(http_call(gateway, "/v1/chat/completions", CHAT, CHAT_END))),
        );
        row(
            &format!("chunk_encode/messages_front/{name}"),
            count(|| rt.block_on(http_call(gateway, "/v1/messages", MESSAGES, MESSAGES_END))),
        );
    }
    let gateway = rt.block_on(async { Gateway::new(ROUTING).expect("a gateway") });
    row(
        "stack/sim/no_recorder",
        count(|| rt.block_on(stack_call(&gateway))),
    );
    install_metrics().expect("a recorder");
    row(
        "stack/sim/metrics",
        count(|| rt.block_on(stack_call(&gateway))),
    );
    row(
        "stack/sim/grpc_front",
        count(|| rt.block_on(grpc_call(&gateway))),
    );
    row(
        "stack/sim/openai_front",
        count(|| rt.block_on(http_call(&gateway, "/v1/chat/completions", CHAT, CHAT_END))),
    );
    row(
        "stack/sim/messages_front",
        count(|| rt.block_on(http_call(&gateway, "/v1/messages", MESSAGES, MESSAGES_END))),
    );
}
