//! The packet layer on the service address: NFQUEUE capture, VIP and
//! gratuitous ARP.

pub mod aftercare;
pub mod capture;
pub mod commit;
pub mod forward;
pub mod nfqueue;
pub mod queue;
pub mod receiver;
pub mod rules;
pub mod takeover;
pub mod verdict;
pub mod vip;
