//! The gRPC contract every side of the ern network shares: package `ern.v1`, generated
//! from `proto/ern/v1/ern.proto` at build time (no system protoc needed).
//!
//! The `.proto` file is the documentation of every message and field; clients in other
//! languages are generated from it, or discovered through server reflection with
//! [`FILE_DESCRIPTOR_SET`].
//!
//! # Trust boundary
//! Nothing here decides anything: it is the shape of what crosses the wire. Every side
//! checks what it receives with its own rules (the node its approvals and questions, the
//! coordinator its callers and answers).
//!
//! # Layout
//! - [`v1`]: the generated messages, clients and servers.
//! - [`approval`]: the one approval type, from the steward's signature to the node's
//!   check, with its conversions to and from the wire.
//! - [`arrow_ipc`]: tables as Arrow IPC bytes.
//! - [`failure`]: the names of the failure categories nodes report.
//! - [`transport`]: the client transport rule (TLS with the pinned CA; plaintext only to
//!   loopback) and bearer tokens.

pub mod approval;
pub mod arrow_ipc;
pub mod failure;
pub mod transport;

/// Package `ern.v1`: messages, clients (`*_client`) and servers (`*_server`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    tonic::include_proto!("ern.v1");
}

/// The encoded `FileDescriptorSet` of `ern.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ern_descriptor.bin"));
