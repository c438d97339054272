//! Lets in only callers with a key the routing file declares, and only to
//! the models that key may call.
//!
//! The front end puts what the caller presented into
//! [`ChatRequest::caller`](crate::chat::ChatRequest::caller); this layer
//! checks it against the [`Guard`](super::guard::Guard) in force and
//! replaces it with the key's name, which is all the layers after it see.
//! No key → UNAUTHENTICATED; a model outside the key's list →
//! PERMISSION_DENIED, before anything is routed or counted.

use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use super::guard::SharedGuard;
use crate::chat::{Caller, ChatRequest, ChatStream};
use crate::error::GatewayError;

/// Wraps a chat service in [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    /// The policy in force.
    guard: SharedGuard,
}

/// Authenticates and authorizes each call before the inner service sees it.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    /// The policy in force.
    guard: SharedGuard,
}

// === impl AuthLayer ===

impl AuthLayer {
    /// Checks calls against `guard`.
    pub fn new(guard: SharedGuard) -> Self {
        AuthLayer { guard }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            guard: self.guard.clone(),
        }
    }
}

// === impl Auth ===

impl<S> Service<ChatRequest> for Auth<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = GatewayError>,
{
    type Response = ChatStream;
    type Error = GatewayError;
    type Future = Either<Ready<Result<ChatStream, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: ChatRequest) -> Self::Future {
        let checked = self.guard.load().authenticate(&req.caller).and_then(|key| {
            let Some(key) = key else {
                return Ok(None);
            };
            key.authorize(&req.model)?;
            Ok(Some(key.name.clone()))
        });
        match checked {
            Ok(Some(name)) => req.caller = Caller::Key(name),
            Ok(None) => {}
            Err(err) => return Either::Left(ready(Err(err))),
        }
        Either::Right(self.inner.call(req))
    }
}
