//! AF_PACKET sockets (gratuitous ARP); built by the TCP takeover work.
