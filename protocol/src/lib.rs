//! Kiln's wire protocol: the versioned messages that the roles (CLI,
//! coordinator, evaluator, builder) exchange, their routes, and the
//! [`Transport`] trait that carries them.
//!
//! Roles never share memory: every message is encoded with `rmp-serde`
//! ([`codec`]) before it leaves a role, even on the in-process
//! [`memory::MemoryTransport`], so the embedded default exercises exactly the
//! bytes a queue transport would carry.

pub mod amqp;
pub mod codec;
pub mod memory;
pub mod message;
pub mod route;
pub mod transport;

pub use codec::{decode, encode, CodecError, Envelope, PROTOCOL_VERSION};
pub use message::*;
pub use route::{Fanout, Route};
pub use transport::{Delivery, Leadership, Subscription, Transport, TransportError};
