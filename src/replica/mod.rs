//! Syscall interception, the syscall table, the log, and the record and replay
//! engines.

pub mod digest;
pub mod filter;
pub mod log;
pub mod table;
