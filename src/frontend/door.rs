//! The door of every gRPC service on the port, before tonic reads a byte
//! of a request body.
//!
//! Each service's body is held to the configured size and idle limits
//! ([`crate::frontend::body`]). The door sits inside grpc-web translation,
//! so it sees the decoded gRPC frames of a browser's call, whether its body
//! came as binary or as base64 text, and a refusal reaches the browser as
//! the same gRPC status a native client gets.
//!
//! The gateway's own service also checks the caller's key here, from the
//! headers alone: tonic reads (and buffers) a unary call's whole message
//! before the service sees it, and a stranger must not make the gateway
//! hold megabytes for a call it will refuse. Health and reflection stay
//! open, as probes and `grpcurl` expect.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tower::Service;

use crate::chat::{CallContext, Caller};
use crate::frontend::body::{BodyRules, Framing};
use crate::frontend::edge::{self, Edge};
use crate::telemetry::REQUEST_ID;

/// The caller as the door admitted it, handed to the service in the
/// request's extensions so the key is not checked from scratch again.
#[derive(Clone)]
pub(crate) struct Admitted(pub Caller);

/// A gRPC service behind its door: bodies held to the body rules, and callers
/// checked by `keys` when the service needs a key.
#[derive(Clone)]
pub(crate) struct Door<S> {
    /// The service behind the door.
    inner: S,
    /// What each request body is held to.
    bodies: BodyRules,
    /// Checks the caller's key; `None` lets anyone in (health, reflection).
    keys: Option<Edge>,
}

// === impl Door ===

impl<S> Door<S> {
    /// `inner` open to anyone, its bodies held to `bodies`.
    pub(crate) fn open(inner: S, bodies: BodyRules) -> Self {
        Door {
            inner,
            bodies,
            keys: None,
        }
    }

    /// `inner` for callers `edge` admits, its bodies held to `bodies`.
    pub(crate) fn keyed(inner: S, bodies: BodyRules, edge: Edge) -> Self {
        Door {
            inner,
            bodies,
            keys: Some(edge),
        }
    }

    /// The refusal of a caller without a valid key, recorded like any
    /// call when it was one (listing models is not a call); an admitted
    /// caller is left in the request's extensions instead.
    ///
    /// The record has no model, and cannot have one cheaply: a gRPC
    /// call's model is a field of the protobuf message in its body, and
    /// gRPC has no header for it. Reading even the first frame would wait
    /// on bytes a stranger controls, which is what refusing at the
    /// headers exists to avoid, and the name would be the stranger's word
    /// anyway (the HTTP front records its keyless refusals the same way).
    /// The refusal is counted with the model label `unknown`, as any call
    /// the table does not route, and its access line carries its code and
    /// request id.
    fn refuse(edge: &Edge, req: &mut Request<Body>) -> Option<Response<Body>> {
        let caller = Caller::from_authorization(
            req.headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        );
        let err = match edge.admit(caller) {
            Ok(admitted) => {
                req.extensions_mut().insert(Admitted(admitted));
                return None;
            }
            Err(err) => err,
        };
        let request_id = edge::request_id(req.headers().get(REQUEST_ID).map(|v| v.as_bytes()));
        let path = req.uri().path();
        let stream = path.ends_with("/CompleteStream");
        if stream || path.ends_with("/Complete") || path.ends_with("/Embed") {
            edge.refused(CallContext::new(request_id.clone()), "", stream, &err);
        }
        let mut status = Status::from(err);
        if let Ok(value) = MetadataValue::try_from(request_id.as_str()) {
            status.metadata_mut().insert(REQUEST_ID, value);
        }
        Some(status.into_http())
    }
}

impl<S: NamedService> NamedService for Door<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for Door<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        if let Some(refusal) = self
            .keys
            .as_ref()
            .and_then(|edge| Self::refuse(edge, &mut req))
        {
            return Either::Right(ready(Ok(refusal)));
        }
        let bodies = &self.bodies;
        let req = req.map(|body| Body::new(bodies.guard(body, Framing::GrpcMessages)));
        Either::Left(self.inner.call(req))
    }
}
