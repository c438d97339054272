//! Choosing an endpoint for each call: power of two choices over live load,
//! per call, never per connection.
//!
//! In call order:
//! - [`upstream`]: what route calls; one upstream of the routing file, its
//!   time limits, and the balancer over its endpoints.
//! - [`p2c`]: the [`Balancer`], P2C over the endpoints, failing fast when
//!   none is ready.
//! - [`endpoint`]: one endpoint as a service; its load is calls in flight
//!   until the last token. It calls the backend's
//!   [`Dispatch`](crate::backend::Dispatch) for the endpoint, bound by the
//!   upstream's [`Backend`](crate::backend::Backend).
//!
//! Beside them: [`health`] (outlier ejection and the health verdicts),
//! [`probe`] (the active health-check loop) and [`discover`] (static lists
//! and DNS names as change streams).

pub mod discover;
pub mod endpoint;
pub mod health;
pub mod p2c;
pub mod probe;
pub mod upstream;

pub(crate) use p2c::AbortOnDrop;
pub use p2c::{Balancer, FailFast};
pub use upstream::{Connectors, Upstream};
