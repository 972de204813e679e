//! Throwaway network namespaces and links, and the setup commands that make them.
//!
//! Every namespace and link has a name unique on the machine (prefix, our pid, a
//! counter) and is deleted on drop, processes inside killed first, so parallel runs and
//! aborted runs leave nothing behind. Traffic never leaves these namespaces or loopback.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{PerfError, Result};
use crate::sys;

/// Longest interface name Linux takes.
pub const IFNAME_MAX: usize = 15;

/// A name unique on this machine while this process lives: `prefix` (at most 4
/// characters), the pid in hex, `x`, a counter in hex.
pub fn unique(prefix: &str) -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}x{n:x}", std::process::id());
    debug_assert!(name.len() <= IFNAME_MAX, "{name} too long");
    name
}

/// Runs `program args` to completion; its stdout on success, an error with its stderr
/// otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let line = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| PerfError::Command {
            command: line.clone(),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(PerfError::Command {
            command: line,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// A network namespace, deleted on drop when this value made it.
#[derive(Debug)]
pub struct Netns {
    /// Its `ip netns` name.
    pub name: String,
    owned: bool,
}

impl Netns {
    /// Makes a namespace with a unique name from `prefix`, `lo` up and IPv6 off (router
    /// solicitations and DAD would otherwise add frames of their own).
    pub fn create(prefix: &str) -> Result<Netns> {
        let name = unique(prefix);
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name, owned: true };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        ns.exec(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])?;
        Ok(ns)
    }

    /// A handle on a namespace someone else made and will delete.
    pub fn borrow(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
        }
    }

    /// Runs `args` inside the namespace to completion.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Pids of the processes inside.
    pub fn pids(&self) -> Vec<u32> {
        run("ip", &["netns", "pids", &self.name])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Whether interface `ifname` exists inside.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.ip(&["link", "show", "dev", ifname]).is_ok()
    }

    /// Waits up to `timeout` for every interface of `ifnames` to exist inside.
    pub fn wait_links(&self, ifnames: &[String], timeout: Duration) -> bool {
        wait_until(timeout, || ifnames.iter().all(|i| self.has_link(i)))
    }

    /// Moves `ifname` from this namespace into `to`, sets its MTU and brings it up there.
    pub fn move_link(&self, ifname: &str, to: &Netns, mtu: u32) -> Result<()> {
        self.ip(&["link", "set", "dev", ifname, "netns", &to.name])?;
        to.ip(&["link", "set", "dev", ifname, "mtu", &mtu.to_string(), "up"])?;
        Ok(())
    }

    /// Kernel counters of `ifname` inside: (rx_packets, rx_dropped, tx_packets, tx_dropped).
    pub fn link_counters(&self, ifname: &str) -> Option<(u64, u64, u64, u64)> {
        let text = self.exec(&["cat", "/proc/net/dev"]).ok()?;
        link_counters_from(&text, ifname)
    }
}

/// Parses one interface's line of `/proc/net/dev`.
pub fn link_counters_from(text: &str, ifname: &str) -> Option<(u64, u64, u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{ifname}:")))?;
    let v: Vec<u64> = line
        .split_once(':')?
        .1
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    (v.len() >= 12).then(|| (v[1], v[3], v[9], v[11]))
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // A namespace with live processes outlives `ip netns del`, and so do its links.
        wait_until(Duration::from_secs(5), || {
            let pids: Vec<u32> = self.pids().into_iter().filter(|&p| sys::alive(p)).collect();
            for &p in &pids {
                sys::signal(p, libc::SIGKILL);
            }
            pids.is_empty()
        });
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("pollswitch-perf: warning: {e}");
        }
    }
}

/// A veth pair made in the tool's own namespace, deleted on drop if still there.
#[derive(Debug)]
pub struct VethPair {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
}

impl VethPair {
    /// Makes a pair with unique names from the two prefixes.
    pub fn create(pa: &str, pb: &str) -> Result<VethPair> {
        let (a, b) = (unique(pa), unique(pb));
        run(
            "ip",
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        )?;
        Ok(VethPair { a, b })
    }

    /// Moves end `a` into `na` and end `b` into `nb`, both up with `mtu`.
    pub fn move_ends(&self, na: &Netns, nb: &Netns, mtu: u32) -> Result<()> {
        for (end, ns) in [(&self.a, na), (&self.b, nb)] {
            run("ip", &["link", "set", "dev", end, "netns", &ns.name])?;
            ns.ip(&["link", "set", "dev", end, "mtu", &mtu.to_string(), "up"])?;
        }
        Ok(())
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // Moved ends go with their namespace; deleting one end deletes both.
        let _ = run("ip", &["link", "del", &self.a]);
    }
}

/// Polls `cond` until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit() {
        let a = unique("abcd");
        let b = unique("abcd");
        assert_ne!(a, b);
        assert!(a.len() <= IFNAME_MAX);
    }

    #[test]
    fn proc_net_dev_line_parses() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n \
   lo:  100 2 0 0 0 0 0 0 200 3 0 0 0 0 0 0\n\
 tapx1: 6400 100 0 7 0 0 0 0 1280 20 0 5 0 0 0 0\n";
        assert_eq!(link_counters_from(text, "tapx1"), Some((100, 7, 20, 5)));
        assert_eq!(link_counters_from(text, "lo"), Some((2, 0, 3, 0)));
        assert_eq!(link_counters_from(text, "tap"), None);
    }

    #[test]
    fn namespace_lives_and_goes() {
        let ns = Netns::create("ptn").unwrap();
        let name = ns.name.clone();
        assert!(ns.has_link("lo"));
        assert_eq!(
            ns.exec(&["sysctl", "-n", "net.ipv6.conf.all.disable_ipv6"])
                .unwrap()
                .trim(),
            "1"
        );
        drop(ns);
        let list = run("ip", &["netns", "list"]).unwrap();
        assert!(!list.split_whitespace().any(|n| n == name), "{list}");
    }
}
