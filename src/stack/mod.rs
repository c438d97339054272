//! The tower layers every call passes through between a front end and the
//! router.
//!
//! Each concern is one small `Service` plus its `Layer`; the assembled stack
//! is type-erased into [`ChatService`] so front ends depend on nothing but
//! the request and response types.

pub mod deadline;
pub mod observe;
pub mod timeout;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::chat::{ChatRequest, ChatStream};
use crate::error::GatewayError;
use crate::route::Router;

/// The whole call path behind a front end, as one cloneable service.
pub type ChatService = BoxCloneSyncService<ChatRequest, ChatStream, GatewayError>;

/// Assembles the layers around the router, outermost first. Observation
/// is outermost so it times the whole call and records the code the caller
/// gets, the caller's deadline included.
pub fn build(router: Router) -> ChatService {
    let stack = ServiceBuilder::new()
        .layer(observe::ObserveLayer)
        .layer(deadline::DeadlineLayer)
        .service(router);
    BoxCloneSyncService::new(stack)
}
