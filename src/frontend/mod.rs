//! Front ends: where a wire protocol becomes a [`crate::chat::ChatRequest`]
//! and a token stream becomes the protocol's answer. Each front end is a
//! thin translation over the same [`crate::stack::ChatService`].

pub mod body;
pub mod grpc;
pub mod http;
pub mod web;
