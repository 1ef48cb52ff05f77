//! TCP_REPAIR socket options; built by the TCP takeover work.
