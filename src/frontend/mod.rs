//! Front ends: where a wire protocol becomes a [`crate::chat::ChatRequest`]
//! and a token stream becomes the protocol's answer. Each front end is a
//! thin translation over the same [`crate::stack::ChatService`].
//!
//! What the fronts share is the [`edge`] (request id, key, deadline,
//! refusals, listings) and the [`body`] guard; the gRPC port's services sit
//! behind a [`door`] that applies both before tonic reads a body.

pub(crate) mod body;
pub(crate) mod door;
pub(crate) mod edge;
pub(crate) mod grpc;
pub(crate) mod http;
pub(crate) mod web;
