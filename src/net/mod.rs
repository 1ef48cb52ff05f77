//! The packet layer on the service address: NFQUEUE capture, VIP and
//! gratuitous ARP.
