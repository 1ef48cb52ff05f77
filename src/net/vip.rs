//! The service address on the backup: adding and removing the VIP (one
//! NETLINK_ROUTE request, no `ip` process), the gratuitous ARP that moves
//! the clients' neighbour entries, and the nftables rules that keep stray
//! VIP traffic from being reset while sockets are rebuilt.
//!
//! Invariants:
//! - every rule this module installs lives in its own nftables table
//!   [`TABLE`] (so removal is one `delete table` and never touches anyone
//!   else's rules) and carries the comment [`RULE_COMMENT`]; rules are only
//!   ever DROP, never REJECT (a takeover must never reset a client);
//! - commands run in the caller's network namespace (the backup's); `nft`
//!   is used rather than iptables-nft because one `nft -f` transaction
//!   costs ~2 ms here against 12–20 ms for iptables(-restore);
//! - the gratuitous ARP is built here and sent from a packet socket opened
//!   in advance (no `arping` process at takeover time).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::Duration;

use thiserror::Error;

use crate::sys::SysError;
use crate::sys::packet::{PacketSocket, netlink_route_request};

/// Comment attached to every rule installed by the takeover.
pub const RULE_COMMENT: &str = "ftnet-takeover";

/// Why a VIP or rule operation failed.
#[derive(Debug, Error)]
pub enum VipError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The call and errno.
        #[source]
        source: SysError,
    },
    /// A helper command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A helper command failed.
    #[error("{cmd} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
}

/// The service address on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// The address.
    pub addr: Ipv4Addr,
    /// Its prefix length on the interface.
    pub prefix_len: u8,
    /// The interface (e.g. `svc0`).
    pub ifname: String,
}

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

impl Vip {
    /// The RTM_NEWADDR / RTM_DELADDR message for this address on `ifindex`.
    pub fn netlink_message(&self, add: bool, ifindex: i32) -> Vec<u8> {
        let (ty, flags) = if add {
            (RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        } else {
            (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK)
        };
        let mut m = Vec::with_capacity(40);
        m.extend_from_slice(&40u32.to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
        // struct ifaddrmsg { family, prefixlen, flags, scope, index }
        m.extend_from_slice(&[libc::AF_INET as u8, self.prefix_len, 0, 0]);
        m.extend_from_slice(&(ifindex as u32).to_ne_bytes());
        for attr in [IFA_LOCAL, IFA_ADDRESS] {
            m.extend_from_slice(&8u16.to_ne_bytes());
            m.extend_from_slice(&attr.to_ne_bytes());
            m.extend_from_slice(&self.addr.octets());
        }
        m
    }

    /// Adds the address to the interface (fails with EEXIST if present).
    pub fn add(&self) -> Result<(), VipError> {
        self.change(true)
    }

    /// Removes the address from the interface.
    pub fn remove(&self) -> Result<(), VipError> {
        self.change(false)
    }

    fn change(&self, add: bool) -> Result<(), VipError> {
        let what =
            format!("{} {}/{} on {}", if add { "add" } else { "remove" }, self.addr, self.prefix_len, self.ifname);
        let sys = |source| VipError::Sys { what: what.clone(), source };
        let index = crate::sys::packet::ifindex(&self.ifname).map_err(sys)?;
        netlink_route_request(&self.netlink_message(add, index), &what, Duration::from_secs(2)).map_err(sys)
    }
}

/// A gratuitous ARP frame (60 bytes, padded) announcing `ip` at `mac`:
/// a broadcast request (`reply = false`) or reply with sender = target = `ip`.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr, reply: bool) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&(if reply { 2u16 } else { 1 }).to_be_bytes());
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    if reply {
        f[32..38].copy_from_slice(&mac);
    }
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends `count` gratuitous ARP requests, then one reply, for `ip` from `sock`.
pub fn send_garp(sock: &PacketSocket, ip: Ipv4Addr, count: u32) -> Result<(), VipError> {
    let sys = |source| VipError::Sys { what: format!("gratuitous ARP for {ip}"), source };
    for _ in 0..count {
        sock.send(&garp_frame(sock.mac(), ip, false)).map_err(sys)?;
    }
    sock.send(&garp_frame(sock.mac(), ip, true)).map_err(sys)
}

/// The nftables table that holds every takeover rule (and nothing else).
pub const TABLE: &str = "ftnet_takeover";

/// One nftables rule (the statement text) of the takeover's input chain.
/// Every constructor ends in `drop`: the takeover never rejects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(String);

impl Rule {
    /// DROP every TCP segment to the VIP arriving on `ifname` until the
    /// VIP is in the table's `open` set ([`guard_open`]).
    pub fn drop_vip(vip: Ipv4Addr, ifname: &str) -> Rule {
        Rule(format!(
            "iifname \"{ifname}\" ip daddr {vip} ip daddr != @open meta l4proto tcp drop comment \"{RULE_COMMENT}\""
        ))
    }

    /// DROP client SYNs of one four-tuple (its SYN-ACK is replayed instead;
    /// the rebuilt socket would answer a SYN with a challenge ACK).
    pub fn drop_syn(client: SocketAddrV4, server: SocketAddrV4, ifname: &str) -> Rule {
        Rule(format!(
            "iifname \"{ifname}\" ip saddr {} ip daddr {} tcp sport {} tcp dport {} tcp flags & (syn|ack|rst) == syn drop comment \"{RULE_COMMENT}\"",
            client.ip(),
            server.ip(),
            client.port(),
            server.port()
        ))
    }

    /// The rule text.
    pub fn text(&self) -> &str {
        &self.0
    }
}

/// Creates [`TABLE`]: an input chain hooked before the filter table
/// (priority -10), an empty address set `open`, and `rules` (one `nft -f`
/// transaction). Rules made with [`Rule::drop_vip`] drop until the VIP is
/// added to `open` by [`guard_open`].
pub fn guard_install(rules: &[Rule]) -> Result<(), VipError> {
    let mut script = format!(
        "add table ip {TABLE}\nadd chain ip {TABLE} input {{ type filter hook input priority -10; policy accept; }}\n\
         add set ip {TABLE} open {{ type ipv4_addr; }}\nflush chain ip {TABLE} input\nflush set ip {TABLE} open\n"
    );
    for r in rules {
        script.push_str(&format!("add rule ip {TABLE} input {}\n", r.0));
    }
    nft(&script)
}

/// Lets VIP traffic through and adds `more` rules, in one transaction made
/// of additions only: removing a rule or element waits for an RCU grace
/// period (~13 ms here), adding one does not (~2 ms).
pub fn guard_open(vip: Ipv4Addr, more: &[Rule]) -> Result<(), VipError> {
    let mut script = format!("add element ip {TABLE} open {{ {vip} }}\n");
    for r in more {
        script.push_str(&format!("add rule ip {TABLE} input {}\n", r.0));
    }
    nft(&script)
}

/// The nftables table that fences a node (and holds nothing else).
pub const FENCE_TABLE: &str = "ftnet_fence";

/// Fences this host: every TCP segment from `vip` is dropped on output
/// (hook priority -10, before any other filter), so sockets that still
/// exist cannot speak for a service another node now serves. Idempotent.
pub fn fence_install(vip: Ipv4Addr) -> Result<(), VipError> {
    nft(&format!(
        "add table ip {FENCE_TABLE}\nadd chain ip {FENCE_TABLE} output {{ type filter hook output priority -10; policy accept; }}\n\
         flush chain ip {FENCE_TABLE} output\nadd rule ip {FENCE_TABLE} output ip saddr {vip} meta l4proto tcp drop\n"
    ))
}

/// Gates this host's VIP output on a lease the kernel times out: every TCP
/// segment from `vip` is dropped on output unless `vip` is in the table's
/// `lease` set, whose one element expires `valid_for` after it is added
/// (rounded down to whole ms). A node whose main loop stalls, or that is
/// frozen with data still queued in its sockets, falls silent when its
/// lease runs out, not when it next gets to run. Replaces a fence.
pub fn gate_install(vip: Ipv4Addr, valid_for: Duration) -> Result<(), VipError> {
    nft(&format!(
        "add table ip {FENCE_TABLE}\nadd chain ip {FENCE_TABLE} output {{ type filter hook output priority -10; policy accept; }}\n\
         add set ip {FENCE_TABLE} lease {{ type ipv4_addr; flags timeout; }}\nflush chain ip {FENCE_TABLE} output\n\
         {}add rule ip {FENCE_TABLE} output ip saddr {vip} meta l4proto tcp ip saddr != @lease drop\n",
        lease_element(vip, valid_for)
    ))
}

/// Sets [`gate_install`]'s lease to end `valid_for` from now, longer or
/// shorter than before.
pub fn gate_renew(vip: Ipv4Addr, valid_for: Duration) -> Result<(), VipError> {
    nft(&lease_element(vip, valid_for))
}

/// The nft line that (re)adds the gate's element, empty when less than a
/// millisecond is left (the gate then drops everything). It names the
/// expiry as well as the timeout: re-adding an element with the timeout it
/// already has leaves its expiry where it was (measured on 6.18), which
/// would close the gate in the middle of a renewed lease.
fn lease_element(vip: Ipv4Addr, valid_for: Duration) -> String {
    match valid_for.as_millis() {
        0 => String::new(),
        ms => format!("add element ip {FENCE_TABLE} lease {{ {vip} timeout {ms}ms expires {ms}ms }}\n"),
    }
}

/// Lifts [`fence_install`] or [`gate_install`] (no error if neither is
/// installed).
pub fn fence_remove() -> Result<(), VipError> {
    nft(&format!("add table ip {FENCE_TABLE}\ndelete table ip {FENCE_TABLE}\n"))
}

/// Sends `count` gratuitous ARP requests and one reply for `ip` on `ifname`.
pub fn announce(ifname: &str, ip: Ipv4Addr, count: u32) -> Result<(), VipError> {
    let sock = PacketSocket::open(ifname, libc::ETH_P_ARP as u16)
        .map_err(|source| VipError::Sys { what: format!("ARP socket on {ifname}"), source })?;
    send_garp(&sock, ip, count)
}

/// Deletes [`TABLE`] and every rule in it (slow: do it off the critical path).
pub fn guard_remove() -> Result<(), VipError> {
    nft(&format!("delete table ip {TABLE}\n"))
}

/// Runs one `nft -f -` transaction.
fn nft(script: &str) -> Result<(), VipError> {
    let cmd = "nft -f -".to_string();
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| VipError::Spawn { cmd: cmd.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|source| VipError::Spawn { cmd: cmd.clone(), source })?;
    }
    let out = child.wait_with_output().map_err(|source| VipError::Spawn { cmd: cmd.clone(), source })?;
    if !out.status.success() {
        return Err(VipError::Command {
            cmd: format!("{cmd} <<< {script:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_request_and_reply_announce_the_vip() {
        let mac = [2, 0x77, 0, 0, 0, 2];
        let ip = Ipv4Addr::new(10, 77, 0, 100);
        let req = garp_frame(mac, ip, false);
        assert_eq!(&req[..6], &[0xff; 6]);
        assert_eq!(&req[6..12], &mac);
        assert_eq!(&req[12..14], &[8, 6]);
        assert_eq!(&req[20..22], &[0, 1]);
        assert_eq!(&req[28..32], &ip.octets());
        assert_eq!(&req[38..42], &ip.octets());
        let rep = garp_frame(mac, ip, true);
        assert_eq!(&rep[20..22], &[0, 2]);
        assert_eq!(&rep[32..38], &mac, "a gratuitous reply has tha = sha");
    }

    #[test]
    fn netlink_address_message_layout() {
        let v = Vip { addr: Ipv4Addr::new(10, 77, 0, 100), prefix_len: 24, ifname: "svc0".into() };
        let m = v.netlink_message(true, 5);
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 40);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        assert_eq!(m[17], 24);
        assert_eq!(u32::from_ne_bytes([m[20], m[21], m[22], m[23]]), 5);
        assert_eq!(&m[28..32], &[10, 77, 0, 100]);
        assert_eq!(u16::from_ne_bytes([v.netlink_message(false, 5)[4], 0]), RTM_DELADDR);
    }

    #[test]
    fn the_gate_element_carries_the_lease_and_none_when_it_is_gone() {
        let vip = Ipv4Addr::new(10, 77, 0, 100);
        assert_eq!(
            lease_element(vip, Duration::from_micros(250_900)),
            "add element ip ftnet_fence lease { 10.77.0.100 timeout 250ms expires 250ms }\n"
        );
        assert_eq!(lease_element(vip, Duration::from_micros(999)), "", "under a ms left: no element, all dropped");
    }

    #[test]
    fn rules_only_drop() {
        let c = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 10), 4000);
        let s = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 100), 7000);
        for r in [Rule::drop_vip(*s.ip(), "svc0"), Rule::drop_syn(c, s, "svc0")] {
            assert!(r.text().contains(" drop comment"), "{}", r.text());
            assert!(!r.text().contains("reject"));
        }
    }
}
