//! The daemon: roles, failure detection, the promote sequence.

pub mod config;
