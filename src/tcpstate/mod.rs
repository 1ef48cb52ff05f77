//! Passive TCP connection tracking and TCP_REPAIR socket building.
