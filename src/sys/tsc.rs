//! The time-stamp counter, read on the primary to answer a replica's trapped
//! `rdtsc`/`rdtscp`.

/// Reads the TSC (and `TSC_AUX` for rdtscp).
pub fn read() -> (u64, u32) {
    let mut aux = 0u32;
    // SAFETY: rdtscp only reads the counter and TSC_AUX into `aux`; it is
    // available on every x86_64 CPU ftnet supports (checked at start).
    let tsc = unsafe { core::arch::x86_64::__rdtscp(&mut aux) };
    (tsc, aux)
}
