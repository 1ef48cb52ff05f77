//! The takeover on the backup: from rebuilt repair-mode sockets to a live
//! service address, in the order DESIGN.md's promote sequence fixes.
//!
//! [`arm`] runs ahead of time, off the critical path: it opens the packet
//! socket for the gratuitous ARP and for incoming SYNs, the raw socket for
//! injected FINs and replayed SYN-ACKs, and (by default) installs the DROP
//! rule — harmless while the VIP is not local, since no VIP traffic reaches
//! the backup then. [`Armed::execute`] then:
//!
//! 1. DROP (never reject) TCP to the VIP on the service interface, unless armed;
//! 2. fill every placeholder / build every other socket ([`crate::tcpstate::build`]);
//! 3. add the VIP (one netlink request);
//! 4. send the gratuitous ARP from the packet socket opened in advance;
//! 5. open the DROP rule (add the VIP to its `open` set: an addition,
//!    ~2 ms, where deleting a rule costs an RCU grace period) and, in the
//!    same nft transaction, drop client SYNs of connections still in their
//!    handshake; the rule table is deleted later, off the critical path;
//! 6. release repair mode on every socket (the window probe is the nudge);
//! 7. per socket: inject the client's FIN (closing states); resend the
//!    bytes the primary had in flight from the raw socket (they sit in the
//!    send queue as sent, so the rebuilt `snd_nxt` is the primary's and a
//!    client ACK beyond our `snd_una` is not dropped as an ACK of unsent
//!    data); send one pure ACK at `snd_nxt` ([`TakeoverConfig::ack_after_release`]);
//!    write the rest of the tail as new data; `shutdown(SHUT_WR)` if the
//!    server had sent its FIN; replay the SYN-ACK of handshake connections
//!    once;
//!
//! and times each step into a [`TakeoverReport`]. Afterwards a
//! [`SynResponder`] answers retransmitted SYNs with the recorded SYN-ACK for
//! a while, and an [`OrphanKeeper`] owns orphans until they drain.
//!
//! Invariants: nothing is sent to a client before step 6 except the ARP;
//! a connection whose fill fails is reported and dropped while still in
//! repair mode (closing a repair-mode socket sends nothing) — the takeover
//! of the others goes on; the DROP rule is removed on every path out of
//! `execute`, also on error (the rule table itself is deleted in the
//! background, or by the SYN responder when it ends).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::aftercare::{OrphanKeeper, SynResponder, syn_filter};
use super::vip::{Rule, Vip, VipError, guard_install, guard_open, guard_remove, send_garp};
use crate::sys::SysError;
use crate::sys::packet::{PacketSocket, RawIpSocket};
use crate::tcpstate::FourTuple;
use crate::tcpstate::build::{self, BuildError, RepairPlan};
use crate::tcpstate::wire::fill_checksums;

/// Why the takeover as a whole failed (single connections fail into
/// [`TakeoverReport::failed`] instead).
#[derive(Debug, Error)]
pub enum TakeoverError {
    /// Opening a socket in advance failed.
    #[error("arming the takeover: {what}: {source}")]
    Arm {
        /// Which socket.
        what: &'static str,
        /// The call and errno.
        #[source]
        source: SysError,
    },
    /// The VIP or a rule could not be changed.
    #[error("takeover: {0}")]
    Vip(#[from] VipError),
}

/// Takeover settings.
#[derive(Debug, Clone)]
pub struct TakeoverConfig {
    /// The service address and its interface.
    pub vip: Vip,
    /// Gratuitous ARP requests to send (one reply follows).
    pub garp_requests: u32,
    /// Install the DROP rule in [`arm`] rather than in `execute`.
    pub drop_rule_at_arm: bool,
    /// How long to answer retransmitted SYNs with the recorded SYN-ACK.
    pub syn_replay_for: Duration,
    /// How long the orphan keeper waits for an orphan to drain before
    /// closing it anyway (the kernel then goes on with it alone).
    pub orphan_timeout: Duration,
    /// At most this many in-flight bytes per connection are resent at once
    /// from the raw socket after release (0: leave them to the kernel's
    /// retransmission timer, 1 s on a fresh socket).
    pub resend_in_flight: usize,
    /// Send one pure ACK (`seq` = the rebuilt `snd_nxt`, so the client
    /// processes it; the release window probe is out of window for the
    /// client and carries no usable ACK). When the plan's receive queue
    /// holds client bytes the primary had not acknowledged yet, this ACK
    /// acknowledges them and the client's retransmission of the rest starts
    /// from its loss-probe timer instead of its RTO (measured: 34–74 ms
    /// instead of ~235 ms, bench/takeover/RESULTS.md).
    pub ack_after_release: bool,
}

impl TakeoverConfig {
    /// Defaults: 1 gratuitous ARP request, DROP rule at arm time, SYN
    /// replay for 5 s, orphans kept up to 120 s.
    pub fn new(vip: Vip) -> TakeoverConfig {
        TakeoverConfig {
            vip,
            garp_requests: 1,
            drop_rule_at_arm: true,
            syn_replay_for: Duration::from_secs(5),
            orphan_timeout: Duration::from_secs(120),
            resend_in_flight: 4 << 20,
            ack_after_release: true,
        }
    }
}

/// One connection to take over.
#[derive(Debug)]
pub struct Rebuild {
    /// What to rebuild.
    pub plan: RepairPlan,
    /// A placeholder to fill (the replica's fd); `None` builds a new socket.
    pub placeholder: Option<OwnedFd>,
    /// The recorded SYN-ACK (checksums may be unset) for a connection still
    /// in its handshake: replayed once at release and to every
    /// retransmitted SYN for [`TakeoverConfig::syn_replay_for`].
    pub syn_ack: Option<Vec<u8>>,
    /// The server already closed it: ftnet owns it until it drains.
    pub orphan: bool,
}

/// A connection that is live on the backup.
#[derive(Debug)]
pub struct Rebuilt {
    /// The connection.
    pub tuple: FourTuple,
    /// The socket (released, non-blocking), for the replica.
    pub fd: OwnedFd,
    /// Tail bytes written at takeover.
    pub tail_written: usize,
    /// Tail bytes that did not fit the send buffer: the caller writes them,
    /// then calls `shutdown(SHUT_WR)` if [`Rebuilt::shutdown_pending`].
    pub tail_rest: Vec<u8>,
    /// The server's FIN is still to be sent after `tail_rest`.
    pub shutdown_pending: bool,
}

/// Times (ns) and counts of one takeover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TakeoverReport {
    /// Connections handed in.
    pub connections: usize,
    /// Of which in their handshake.
    pub handshakes: usize,
    /// Of which orphans.
    pub orphans: usize,
    /// Installing the DROP rule (at arm time if [`TakeoverConfig::drop_rule_at_arm`]).
    pub drop_rule_ns: u64,
    /// The DROP rule was installed by [`arm`], off the critical path.
    pub drop_rule_at_arm: bool,
    /// Filling/building every socket.
    pub build_ns: u64,
    /// Adding the VIP.
    pub vip_ns: u64,
    /// Sending the gratuitous ARP.
    pub garp_ns: u64,
    /// Removing the DROP rule (+ adding SYN-drop rules), one `nft -f`.
    pub rule_remove_ns: u64,
    /// Releasing repair mode on every socket.
    pub release_ns: u64,
    /// FIN injection, tails, shutdowns, SYN-ACK replays.
    pub tail_ns: u64,
    /// `execute` from start to end (the critical path).
    pub total_ns: u64,
    /// Tail bytes written.
    pub tail_bytes: u64,
    /// Sockets whose `TCP_REPAIR_WINDOW` the kernel rejected (re-learnt by the probe).
    pub window_rejected: usize,
    /// Connections that could not be taken over, and why.
    pub failed: Vec<(FourTuple, String)>,
}

impl TakeoverReport {
    /// Rule changes on the critical path (insert if not armed, plus removal).
    pub fn rules_ns(&self) -> u64 {
        self.rule_remove_ns + if self.drop_rule_at_arm { 0 } else { self.drop_rule_ns }
    }
}

/// Sockets and rules prepared ahead of a takeover.
#[derive(Debug)]
pub struct Armed {
    config: TakeoverConfig,
    arp: PacketSocket,
    syns: Option<PacketSocket>,
    raw: Option<RawIpSocket>,
    drop_rule: Rule,
    drop_installed: bool,
    drop_rule_ns: u64,
}

/// Prepares a takeover: opens the packet and raw sockets and, if
/// configured, installs the DROP rule. Dropping the result without
/// executing removes the rule again.
pub fn arm(config: TakeoverConfig) -> Result<Armed, TakeoverError> {
    let ifname = config.vip.ifname.clone();
    let arp = PacketSocket::open(&ifname, libc::ETH_P_ARP as u16)
        .map_err(|source| TakeoverError::Arm { what: "ARP packet socket", source })?;
    let syns = PacketSocket::open(&ifname, libc::ETH_P_IP as u16)
        .map_err(|source| TakeoverError::Arm { what: "SYN packet socket", source })?;
    let arm_err = |source| TakeoverError::Arm { what: "SYN packet socket", source };
    syns.attach_filter(&syn_filter()).map_err(arm_err)?;
    syns.ignore_outgoing().map_err(arm_err)?;
    let raw = RawIpSocket::open().map_err(|source| TakeoverError::Arm { what: "raw IP socket", source })?;
    let drop_rule = Rule::drop_vip(config.vip.addr, &ifname);
    let mut armed =
        Armed { config, arp, syns: Some(syns), raw: Some(raw), drop_rule, drop_installed: false, drop_rule_ns: 0 };
    if armed.config.drop_rule_at_arm {
        armed.install_drop()?;
    }
    Ok(armed)
}

fn ns_since(t: Instant) -> u64 {
    t.elapsed().as_nanos() as u64
}

impl Armed {
    /// The configuration.
    pub fn config(&self) -> &TakeoverConfig {
        &self.config
    }

    /// The raw IP socket (for callers' own crafted packets, e.g. nudges).
    pub fn raw(&self) -> Option<&RawIpSocket> {
        self.raw.as_ref()
    }

    fn install_drop(&mut self) -> Result<(), TakeoverError> {
        let t = Instant::now();
        guard_install(std::slice::from_ref(&self.drop_rule))?;
        self.drop_installed = true;
        self.drop_rule_ns = ns_since(t);
        Ok(())
    }

    /// Runs the takeover (module docs, steps 1-7) for `conns`. Returns the
    /// live sockets of the non-orphans, the report, a SYN responder if any
    /// connection was in its handshake, and an orphan keeper if any was
    /// an orphan.
    pub fn execute(mut self, conns: Vec<Rebuild>) -> Result<Takeover, TakeoverError> {
        let start = Instant::now();
        let mut report = TakeoverReport {
            connections: conns.len(),
            drop_rule_at_arm: self.config.drop_rule_at_arm,
            ..TakeoverReport::default()
        };
        if !self.drop_installed {
            self.install_drop()?;
        }
        report.drop_rule_ns = self.drop_rule_ns;

        // 2. Fill or build every socket (repair mode, nothing sent).
        let t = Instant::now();
        let mut filled = Vec::with_capacity(conns.len());
        for c in conns {
            let tuple = c.plan.tuple;
            let res = match c.placeholder {
                Some(fd) => build::fill(fd.as_fd(), &c.plan).map(|r| (fd, r)),
                None => build::build(&c.plan),
            };
            match res {
                Ok((fd, r)) => {
                    report.window_rejected += usize::from(r.window_rejected.is_some());
                    report.handshakes += usize::from(c.syn_ack.is_some());
                    report.orphans += usize::from(c.orphan);
                    filled.push((fd, c.plan, c.syn_ack, c.orphan));
                }
                Err(e) => report.failed.push((tuple, e.to_string())),
            }
        }
        report.build_ns = ns_since(t);

        // 3.-5. VIP, gratuitous ARP, rules. The DROP rule goes on any error.
        let network = self.go_live(&mut report, &filled);
        if let Err(e) = network {
            if self.drop_installed && guard_remove().is_ok() {
                self.drop_installed = false;
            }
            return Err(e);
        }

        // 6. Release.
        let t = Instant::now();
        let mut released = Vec::with_capacity(filled.len());
        for (fd, plan, syn_ack, orphan) in filled {
            match build::release(fd.as_fd(), plan.tuple) {
                Ok(()) => released.push((fd, plan, syn_ack, orphan)),
                Err(e) => report.failed.push((plan.tuple, e.to_string())),
            }
        }
        report.release_ns = ns_since(t);

        // 7. FINs, tails, shutdowns, SYN-ACK replays.
        let t = Instant::now();
        let mut live = Vec::new();
        let mut orphans = Vec::new();
        let mut syn_acks = Vec::new();
        for (fd, plan, syn_ack, orphan) in released {
            match self.after_release(&fd, &plan, syn_ack.as_deref()) {
                Ok(written) => {
                    report.tail_bytes += written as u64;
                    let rest = plan.tail.get(written..).unwrap_or(&[]).to_vec();
                    let shutdown_pending = plan.server_fin && !rest.is_empty();
                    if let Some(s) = syn_ack {
                        syn_acks.push((plan.tuple, s));
                    }
                    let r = Rebuilt { tuple: plan.tuple, fd, tail_written: written, tail_rest: rest, shutdown_pending };
                    if orphan { orphans.push(r) } else { live.push(r) }
                }
                Err(e) => report.failed.push((plan.tuple, e.to_string())),
            }
        }
        report.tail_ns = ns_since(t);
        report.total_ns = ns_since(start);

        let responder = match (self.syns.take(), self.raw.take()) {
            (Some(syns), Some(raw)) if !syn_acks.is_empty() => {
                Some(SynResponder::spawn(syns, raw, syn_acks, self.config.syn_replay_for))
            }
            _ => None,
        };
        if responder.is_none() {
            // Deleting the table waits for an RCU grace period: not on the critical path.
            std::thread::spawn(guard_remove);
        }
        let keeper =
            if orphans.is_empty() { None } else { Some(OrphanKeeper::spawn(orphans, self.config.orphan_timeout)) };
        Ok(Takeover { live, report, responder, keeper })
    }

    fn go_live(
        &mut self,
        report: &mut TakeoverReport,
        filled: &[(OwnedFd, RepairPlan, Option<Vec<u8>>, bool)],
    ) -> Result<(), TakeoverError> {
        let t = Instant::now();
        self.config.vip.add()?;
        report.vip_ns = ns_since(t);
        let t = Instant::now();
        send_garp(&self.arp, self.config.vip.addr, self.config.garp_requests)?;
        report.garp_ns = ns_since(t);
        let t = Instant::now();
        let syn_rules: Vec<Rule> = filled
            .iter()
            .filter(|f| f.2.is_some())
            .map(|f| Rule::drop_syn(f.1.tuple.client, f.1.tuple.server, &self.config.vip.ifname))
            .collect();
        guard_open(self.config.vip.addr, &syn_rules)?;
        self.drop_installed = false;
        report.rule_remove_ns = ns_since(t);
        Ok(())
    }

    fn after_release(&self, fd: &OwnedFd, plan: &RepairPlan, syn_ack: Option<&[u8]>) -> Result<usize, BuildError> {
        let tuple = plan.tuple;
        let sys = |step, source| BuildError::Step { tuple, step, source };
        let no_raw =
            || sys(build::Step::Release, SysError::new("send", "raw socket gone", crate::sys::Errno(libc::EBADF)));
        if plan.client_fin {
            let fin = plan.client_fin_packet()?;
            self.raw
                .as_ref()
                .ok_or_else(no_raw)?
                .send(&fin, *tuple.server.ip())
                .map_err(|e| sys(build::Step::Release, e))?;
        }
        // In-flight bytes: resend at once from the raw socket (the rebuilt
        // socket would wait for its 1 s initial RTO), then new data.
        if plan.sent_len > 0 && self.config.resend_in_flight > 0 {
            let ts = crate::sys::tcp_repair::get_timestamp(fd.as_fd()).ok();
            let raw = self.raw.as_ref().ok_or_else(no_raw)?;
            for p in plan.resend_packets(ts, self.config.resend_in_flight)? {
                raw.send(&p, *tuple.client.ip()).map_err(|e| sys(build::Step::Tail, e))?;
            }
        }
        if self.config.ack_after_release && plan.syn_ack_free() {
            let ts = crate::sys::tcp_repair::get_timestamp(fd.as_fd()).ok();
            let raw = self.raw.as_ref().ok_or_else(no_raw)?;
            let ack = plan.ack_from_snd_nxt(ts)?;
            raw.send(&ack, *tuple.client.ip()).map_err(|e| sys(build::Step::Tail, e))?;
        }
        let unsent = plan.tail.get(plan.sent_len..).unwrap_or(&[]);
        let written = plan.sent_len + build::write_tail(fd.as_fd(), tuple, unsent)?;
        if plan.server_fin && written == plan.tail.len() {
            build::shutdown_write(fd.as_fd(), tuple)?;
        }
        if let Some(s) = syn_ack {
            let mut pkt = s.to_vec();
            if fill_checksums(&mut pkt).is_ok() {
                self.raw
                    .as_ref()
                    .ok_or_else(no_raw)?
                    .send(&pkt, *tuple.client.ip())
                    .map_err(|e| sys(build::Step::Release, e))?;
            }
        }
        let _ = crate::sys::tcp_repair::unlock_buffers(fd.as_fd());
        Ok(written)
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if self.drop_installed {
            let _ = guard_remove();
        }
    }
}

/// The outcome of [`Armed::execute`].
#[derive(Debug)]
pub struct Takeover {
    /// Live sockets for the replica (everything but orphans).
    pub live: Vec<Rebuilt>,
    /// Times and counts.
    pub report: TakeoverReport,
    /// Answers retransmitted SYNs of handshake connections, then removes
    /// their SYN-drop rules.
    pub responder: Option<SynResponder>,
    /// Owns the orphans until they drain.
    pub keeper: Option<OrphanKeeper>,
}

/// The VIP as an address on `ifname`, for [`TakeoverConfig::new`].
pub fn vip(addr: Ipv4Addr, prefix_len: u8, ifname: &str) -> Vip {
    Vip { addr, prefix_len, ifname: ifname.to_string() }
}
