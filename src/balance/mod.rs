//! Choosing an endpoint for each call: power of two choices over live load,
//! per call, never per connection.
//!
//! In call order:
//! - [`upstream`]: what route calls; one upstream of the routing file, its
//!   time limits, and the balancer over its endpoints.
//! - [`p2c`]: the [`Balancer`](p2c::Balancer), P2C over the endpoints ready for the
//!   call's model, failing fast when none is (or, in panic, the one out
//!   the longest).
//! - [`endpoint`]: one endpoint; its load is calls in flight until the
//!   last token. It calls the backend's
//!   [`Dispatch`](crate::backend::Dispatch) for the endpoint, bound by the
//!   upstream's [`Backend`](crate::backend::Backend).
//!
//! Beside them: [`health`] (outlier ejection per endpoint and per model on
//! it, and the health verdicts), [`engine`] (an engine's own load, read
//! from its metrics), [`probe`] (the background loops: active health
//! checks, the reconnect probe of an ejected endpoint, engine scrapes) and [`discover`] (static lists
//! and DNS names as change streams).

mod affinity;
mod clock;
pub(crate) mod discover;
pub(crate) mod endpoint;
pub(crate) mod engine;
pub(crate) mod health;
pub(crate) mod p2c;
pub(crate) mod probe;
pub(crate) mod upstream;

pub(crate) use affinity::prefix_key;
pub(crate) use health::SlotListener;
pub(crate) use p2c::AbortOnDrop;
pub(crate) use p2c::{Affinity, Pick};
pub(crate) use upstream::{Connectors, Upstream};
