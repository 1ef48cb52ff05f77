//! The iptables rules that send the VIP's TCP segments to an NFQUEUE queue,
//! in the network namespace of the calling process.
//!
//! Two chains of the `mangle` table per queue number `N`:
//!
//! ```text
//! -N FTNET-IN-qN
//! -N FTNET-OUT-qN
//! -A FTNET-IN-qN  -d VIP/32 -p tcp -m tcp --dport PORT -j NFQUEUE --queue-num N   (one per port)
//! -A FTNET-OUT-qN -s VIP/32 -p tcp -m tcp --sport PORT -j NFQUEUE --queue-num N   (one per port)
//! -I INPUT 1       -d VIP/32 -p tcp -j FTNET-IN-qN
//! -I POSTROUTING 1 -s VIP/32 -p tcp -j FTNET-OUT-qN
//! ```
//!
//! Why these hooks: `INPUT` sees only packets routed for local delivery (so
//! nothing merely forwarded through the host, and after reassembly);
//! `POSTROUTING` is the last hook every locally generated packet passes —
//! the server's data, the kernel's own ACKs, SYN-ACKs, FINs and RSTs —
//! after every `OUTPUT` rule could change it, which is where output commit
//! must hold segments. The jumps go first in their chains so no earlier
//! mangle rule can skip them. Both directions share one queue, so the
//! consumer sees them in hook order.
//!
//! Invariants:
//! - the rules never use `--queue-bypass`: with no consumer bound, a packet
//!   for the queue is dropped, never passed (fail closed);
//! - [`Rules::install`] is idempotent: it first removes every rule and chain
//!   this module could have left for the same queue number (e.g. by a
//!   process that was killed), then installs the whole set in one
//!   `iptables-restore --noflush` transaction, so the rules are all there or
//!   none are;
//! - [`Rules`] removes its rules when dropped (also while unwinding), and
//!   [`Rules::remove`] checks that nothing is left;
//! - only `mangle` rules whose chain is, or jumps to, `FTNET-IN-qN` or
//!   `FTNET-OUT-qN` are ever touched.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// How to build the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesConfig {
    /// The iptables command (`iptables`, `iptables-legacy`, `iptables-nft`);
    /// `<command>-restore` must exist beside it.
    pub iptables: String,
    /// The NFQUEUE queue number.
    pub queue: u16,
    /// The service address.
    pub vip: Ipv4Addr,
    /// The service's TCP ports (at least one).
    pub ports: Vec<u16>,
}

/// A failure to change or read the rules.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// No ports were given (the rules would capture nothing).
    #[error("iptables rules for queue {queue}: no service ports given")]
    NoPorts {
        /// The queue.
        queue: u16,
    },
    /// The command could not be started.
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command failed.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// Rules of the queue were still listed after removing them.
    #[error("iptables rules for queue {queue} still present after removal: {left:?}")]
    Leftover {
        /// The queue.
        queue: u16,
        /// The `iptables -S` lines left.
        left: Vec<String>,
    },
}

/// The inbound chain's name for `queue`.
pub fn in_chain(queue: u16) -> String {
    format!("FTNET-IN-q{queue}")
}

/// The outbound chain's name for `queue`.
pub fn out_chain(queue: u16) -> String {
    format!("FTNET-OUT-q{queue}")
}

/// The `iptables-restore --noflush` input that installs the rules.
pub fn install_script(cfg: &RulesConfig) -> String {
    let (cin, cout, q, vip) = (in_chain(cfg.queue), out_chain(cfg.queue), cfg.queue, cfg.vip);
    let mut s = format!("*mangle\n:{cin} - [0:0]\n:{cout} - [0:0]\n");
    for p in &cfg.ports {
        s += &format!("-A {cin} -d {vip}/32 -p tcp -m tcp --dport {p} -j NFQUEUE --queue-num {q}\n");
    }
    for p in &cfg.ports {
        s += &format!("-A {cout} -s {vip}/32 -p tcp -m tcp --sport {p} -j NFQUEUE --queue-num {q}\n");
    }
    s += &format!("-I INPUT 1 -d {vip}/32 -p tcp -j {cin}\n");
    s += &format!("-I POSTROUTING 1 -s {vip}/32 -p tcp -j {cout}\n");
    s += "COMMIT\n";
    s
}

/// The lines of an `iptables -t mangle -S` listing that belong to `queue`'s
/// rules: its chains, their rules, and rules jumping to them.
pub fn owned_lines(listing: &str, queue: u16) -> Vec<String> {
    let ours = [in_chain(queue), out_chain(queue)];
    listing
        .lines()
        .filter(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            let defines = t.len() >= 2 && (t[0] == "-N" || t[0] == "-A") && ours.iter().any(|c| c == t[1]);
            let jumps = t.windows(2).any(|w| (w[0] == "-j" || w[0] == "-g") && ours.iter().any(|c| c == w[1]));
            defines || jumps
        })
        .map(str::to_string)
        .collect()
}

/// The `iptables-restore --noflush` input that removes what `listing` shows
/// of `queue`'s rules, or `None` if nothing is there.
pub fn removal_script(listing: &str, queue: u16) -> Option<String> {
    let ours = [in_chain(queue), out_chain(queue)];
    let lines = owned_lines(listing, queue);
    if lines.is_empty() {
        return None;
    }
    let mut s = String::from("*mangle\n");
    let mut chains = Vec::new();
    for l in &lines {
        let t: Vec<&str> = l.split_whitespace().collect();
        match t.as_slice() {
            ["-N", chain] => chains.push(chain.to_string()),
            ["-A", chain, rest @ ..] if !ours.iter().any(|c| c == chain) => {
                s += &format!("-D {chain} {}\n", rest.join(" "));
            }
            _ => {}
        }
    }
    for c in &chains {
        s += &format!("-F {c}\n-X {c}\n");
    }
    s += "COMMIT\n";
    Some(s)
}

/// Runs `cmd args` (with `stdin` piped in, if any) and returns its stdout.
fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, RulesError> {
    let line = format!("{cmd} {}", args.join(" "));
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RulesError::Spawn { cmd: line.clone(), source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as the command's failure below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| RulesError::Spawn { cmd: line.clone(), source })?;
    if !out.status.success() {
        return Err(RulesError::Failed {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables -t mangle -S` in this namespace.
pub fn listing(iptables: &str) -> Result<String, RulesError> {
    run(iptables, &["-w", "5", "-t", "mangle", "-S"], None)
}

/// The listing lines of `queue`'s rules present now.
pub fn installed(iptables: &str, queue: u16) -> Result<Vec<String>, RulesError> {
    Ok(owned_lines(&listing(iptables)?, queue))
}

/// Removes every rule and chain of `queue` (whoever left them) and checks
/// that none is left.
pub fn remove_all(iptables: &str, queue: u16) -> Result<(), RulesError> {
    if let Some(script) = removal_script(&listing(iptables)?, queue) {
        run(&format!("{iptables}-restore"), &["-w", "5", "--noflush"], Some(&script))?;
    }
    let left = installed(iptables, queue)?;
    if left.is_empty() { Ok(()) } else { Err(RulesError::Leftover { queue, left }) }
}

/// Installed rules; removed on drop.
#[derive(Debug)]
pub struct Rules {
    config: RulesConfig,
    removed: bool,
}

impl Rules {
    /// Removes any earlier rules of the same queue, then installs the set
    /// for `config` in one transaction.
    pub fn install(config: RulesConfig) -> Result<Rules, RulesError> {
        if config.ports.is_empty() {
            return Err(RulesError::NoPorts { queue: config.queue });
        }
        remove_all(&config.iptables, config.queue)?;
        let restore = format!("{}-restore", config.iptables);
        run(&restore, &["-w", "5", "--noflush"], Some(&install_script(&config)))?;
        Ok(Rules { config, removed: false })
    }

    /// The configuration.
    pub fn config(&self) -> &RulesConfig {
        &self.config
    }

    /// Removes the rules now, reporting failure.
    pub fn remove(mut self) -> Result<(), RulesError> {
        self.removed = true;
        remove_all(&self.config.iptables, self.config.queue)
    }
}

impl Drop for Rules {
    fn drop(&mut self) {
        if !self.removed {
            self.removed = true;
            if let Err(e) = remove_all(&self.config.iptables, self.config.queue) {
                tracing::error!("removing NFQUEUE rules: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RulesConfig {
        RulesConfig { iptables: "iptables".into(), queue: 5, vip: Ipv4Addr::new(10, 77, 0, 100), ports: vec![80, 443] }
    }

    #[test]
    fn install_script_has_both_directions_and_no_bypass() {
        let s = install_script(&cfg());
        assert_eq!(
            s,
            "*mangle\n:FTNET-IN-q5 - [0:0]\n:FTNET-OUT-q5 - [0:0]\n\
             -A FTNET-IN-q5 -d 10.77.0.100/32 -p tcp -m tcp --dport 80 -j NFQUEUE --queue-num 5\n\
             -A FTNET-IN-q5 -d 10.77.0.100/32 -p tcp -m tcp --dport 443 -j NFQUEUE --queue-num 5\n\
             -A FTNET-OUT-q5 -s 10.77.0.100/32 -p tcp -m tcp --sport 80 -j NFQUEUE --queue-num 5\n\
             -A FTNET-OUT-q5 -s 10.77.0.100/32 -p tcp -m tcp --sport 443 -j NFQUEUE --queue-num 5\n\
             -I INPUT 1 -d 10.77.0.100/32 -p tcp -j FTNET-IN-q5\n\
             -I POSTROUTING 1 -s 10.77.0.100/32 -p tcp -j FTNET-OUT-q5\nCOMMIT\n"
        );
        assert!(!s.contains("bypass"));
    }

    #[test]
    fn removal_touches_only_our_queue() {
        let listing = "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n\
            -N FTNET-IN-q5\n-N FTNET-IN-q50\n-N FTNET-OUT-q5\n\
            -A INPUT -d 10.77.0.100/32 -p tcp -j FTNET-IN-q5\n\
            -A INPUT -d 10.77.0.100/32 -p tcp -j FTNET-IN-q5\n\
            -A INPUT -j FTNET-IN-q50\n\
            -A INPUT -p udp -j ACCEPT\n\
            -A POSTROUTING -s 10.77.0.100/32 -p tcp -j FTNET-OUT-q5\n\
            -A FTNET-IN-q5 -d 10.77.0.100/32 -p tcp -m tcp --dport 80 -j NFQUEUE --queue-num 5\n\
            -A FTNET-IN-q50 -j NFQUEUE --queue-num 50\n";
        assert_eq!(owned_lines(listing, 5).len(), 6);
        assert_eq!(
            removal_script(listing, 5).unwrap(),
            "*mangle\n-D INPUT -d 10.77.0.100/32 -p tcp -j FTNET-IN-q5\n\
             -D INPUT -d 10.77.0.100/32 -p tcp -j FTNET-IN-q5\n\
             -D POSTROUTING -s 10.77.0.100/32 -p tcp -j FTNET-OUT-q5\n\
             -F FTNET-IN-q5\n-X FTNET-IN-q5\n-F FTNET-OUT-q5\n-X FTNET-OUT-q5\nCOMMIT\n"
        );
        assert_eq!(removal_script("-P INPUT ACCEPT\n-A INPUT -j FTNET-IN-q50\n", 5), None);
    }

    #[test]
    fn no_ports_is_an_error_before_running_anything() {
        let mut c = cfg();
        c.ports.clear();
        c.iptables = "/nonexistent/iptables".into();
        assert!(matches!(Rules::install(c), Err(RulesError::NoPorts { queue: 5 })));
    }
}
