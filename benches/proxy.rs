//! Placeholder for the load benchmark (gateway against going direct); it
//! lands with the benchmark work of the gateway core.

fn main() {}
