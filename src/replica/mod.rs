//! Syscall interception, the syscall table, the log, and the record and replay
//! engines.
