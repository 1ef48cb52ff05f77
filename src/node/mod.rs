//! The daemon: roles, failure detection, the promote sequence.

pub mod config;
pub mod control;
pub mod daemon;
pub mod heartbeat;
pub mod linkmgr;
pub mod pipe;
pub mod shared;
pub mod takeover;
