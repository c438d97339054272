//! Test harness: a gateway started in process on a routing file written by
//! the test, and a fake OpenAI-compatible upstream whose every byte on the
//! wire the test scripts.

#![allow(dead_code)]

mod calls;
mod gateway;
mod pki;
mod raw;
mod sim;
mod upstream;
mod web;

pub use calls::*;
pub use gateway::*;
pub use pki::*;
pub use raw::*;
pub use sim::*;
pub use upstream::*;
pub use web::*;

use std::time::Duration;

/// The longest any test waits for something that should happen at once;
/// only a guard against hanging, never a measurement.
pub const PATIENCE: Duration = Duration::from_secs(10);
