//! The daemon: roles, failure detection, the promote sequence.

mod backup;
pub mod config;
pub mod control;
pub mod daemon;
pub mod heartbeat;
pub mod lease;
pub mod linkmgr;
pub mod pipe;
mod primary;
pub mod shared;
pub mod takeover;
