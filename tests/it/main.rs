//! Integration tests: the real gateway on 127.0.0.1:0, real tonic clients,
//! and real HTTP upstream servers started by each test. One test binary, so
//! linking happens once.

#![allow(unreachable_pub)]

mod access_log;
mod anthropic;
mod balance;
mod check;
mod connections;
mod deadline;
mod deploy;
mod doors;
mod embed;
mod gateway;
mod guard;
mod health;
mod http;
mod messages;
mod metrics;
mod mixed;
mod ollama;
mod openai;
mod placement;
mod properties;
mod queue;
mod reload;
mod resilience;
mod serve_cli;
mod shared;
mod support;
mod tools;
