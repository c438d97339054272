//! Choosing an endpoint for each call: power of two choices over live load,
//! per call, never per connection.
//!
//! In call order:
//! - [`upstream`]: what route calls; one upstream of the routing file, its
//!   time limits, and the balancer over its endpoints.
//! - [`p2c`]: the [`Balancer`], P2C over the endpoints ready for the
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
pub mod discover;
pub mod endpoint;
pub mod engine;
pub mod health;
pub mod p2c;
pub mod probe;
pub mod upstream;

pub use affinity::prefix_key;
pub use health::SlotListener;
pub(crate) use p2c::AbortOnDrop;
pub use p2c::{Affinity, Balancer, Pick};
pub use upstream::{Connectors, Upstream};
