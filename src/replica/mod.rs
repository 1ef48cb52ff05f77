//! Syscall interception, the syscall table, the log, and the record and replay
//! engines.

pub mod digest;
pub mod elf;
pub mod engine;
pub mod filter;
pub mod launch;
pub mod log;
pub mod state;
pub mod table;
