//! ftnet: transparent failover for unmodified Linux TCP servers.
//!
//! The crate is laid out as `DESIGN.md` describes:
//!
//! - [`replica`]: syscall interception, the syscall table, the log, and the
//!   record and replay engines (one thread of the replica tree runs at a time).
//! - [`tcpstate`]: passive TCP connection tracking and TCP_REPAIR socket
//!   building.
//! - [`net`]: the packet layer on the service address (NFQUEUE capture, VIP and
//!   gratuitous ARP).
//! - [`sys`]: the only module allowed to use `unsafe`; every block carries a
//!   `// SAFETY:` line.
#![deny(unsafe_code)]

pub mod link;
pub mod net;
pub mod node;
pub mod replica;
#[allow(unsafe_code)]
pub mod sys;
pub mod tcpstate;
pub mod witness;
