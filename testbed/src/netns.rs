//! Throwaway network namespaces and the links between them.
//!
//! A [`Netns`] is made with `ip netns add` under a [`unique`] name, gets `lo` up and
//! IPv6 disabled (router solicitations and DAD would otherwise add frames of their own),
//! and on drop has every process inside killed and is deleted. Links made by a test or a
//! benchmark (veth ends, taps a switch made) are moved in with [`move_link_into`] or
//! [`Netns::move_link`]; the kernel deletes them when the namespace goes.
//!
//! ```text
//!  this namespace            netns A                 netns B
//!  VethPair::create ──────►  a (moved, up) ═══════  b (moved, up)
//!  Netns::enter(f): f runs on a thread inside A; sockets it makes stay in A for life
//! ```

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

use crate::cleanup::{self, Guard, Item};
use crate::cmd::{check, output_of, require, run, run_ok};
use crate::error::{chain, Error, Result};
use crate::process::{alive, signal, Signal};
use crate::{unique, wait_until};

/// A network namespace, deleted on drop when this value made it.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name, as `ip netns` and `ip -n` take it.
    pub name: String,
    owned: bool,
    /// Whether a failed removal on drop panics (tests) or only warns (the tool).
    strict: bool,
    _guard: Option<Guard>,
}

impl Netns {
    /// Makes a namespace named [`unique`]`(prefix)`, brings `lo` up and disables IPv6 in
    /// it (`all` and `default`, so links moved in later have none either). A failure to
    /// remove it on drop is a warning on stderr.
    pub fn create(prefix: &str) -> Result<Netns> {
        require("ip")?;
        let name = unique(prefix);
        // Tracked before it exists: a signal during `ip netns add` still removes it.
        let guard = cleanup::track(Item::Netns(name.clone()));
        run("ip", &["netns", "add", &name])?;
        // From here on Drop deletes it, even if a later step fails.
        let ns = Netns {
            name,
            owned: true,
            strict: false,
            _guard: Some(guard),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.run(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])?;
        Ok(ns)
    }

    /// Like [`Netns::create`] with the tests' prefix `psn`; a failure to remove it on
    /// drop panics (unless the thread is panicking already).
    ///
    /// # Panics
    /// When `ip` is missing or any step fails (not root, no netns support).
    pub fn new() -> Netns {
        let mut ns = Netns::create("psn").unwrap_or_else(|e| panic!("{}", chain(&e)));
        ns.strict = true;
        ns
    }

    /// A handle on a namespace someone else made and will delete.
    pub fn borrow(name: &str) -> Netns {
        Netns {
            name: name.to_string(),
            owned: false,
            strict: false,
            _guard: None,
        }
    }

    /// A `Command` that runs `args` (program first) inside the namespace via
    /// `ip netns exec`, for callers that choose stdio themselves. `ip` execs the
    /// program, so the spawned child's pid is the program's.
    ///
    /// # Panics
    /// When `args` is empty.
    pub fn command(&self, args: &[&str]) -> Command {
        assert!(!args.is_empty(), "Netns::command needs a program");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `args` inside the namespace to completion; its output whatever its status.
    pub fn try_exec(&self, args: &[&str]) -> Result<Output> {
        output_of(&mut self.command(args))
    }

    /// Runs `args` inside the namespace to completion and returns its output, whatever
    /// its exit status.
    ///
    /// # Panics
    /// When `ip netns exec` cannot be started.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.try_exec(args)
            .unwrap_or_else(|e| panic!("{}", chain(&e)))
    }

    /// Runs `args` inside the namespace to completion; its stdout, or an error with its
    /// status and stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        check(
            &format!("ip netns exec {} {}", self.name, args.join(" ")),
            self.try_exec(args)?,
        )
    }

    /// Like [`Netns::run`], returning stdout as text.
    ///
    /// # Panics
    /// When the command exits non-zero (the message has its stderr).
    pub fn exec_ok(&self, args: &[&str]) -> String {
        self.run(args).unwrap_or_else(|e| panic!("{}", chain(&e)))
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Starts `args` inside the namespace with stdin from /dev/null and stdout and
    /// stderr piped (read them, or a chatty child blocks). The process is killed when the
    /// namespace is dropped, if it is still running; wait for it to reap it.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?} in netns {}: {e}", self.name))
    }

    /// Runs `f` on a new thread that has entered the namespace (`setns`) and returns its
    /// result. Sockets and other kernel objects `f` makes belong to the namespace for
    /// their whole life, so they can be returned and used from any thread: this is how a
    /// UDP socket on the loopback of a namespace, or a raw socket on a link moved into it
    /// ([`crate::RawSock::open_in`]), is made. Only that thread switches; the caller stays
    /// where it is. Paths under `/sys` still show the namespace the process started in
    /// (nothing is remounted): ask the kernel (`if_nametoindex`, sockets) rather than
    /// sysfs from inside `f`. A panic of `f` is passed on.
    pub fn try_enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = Path::new("/run/netns").join(&self.name);
        let netns_err = |source| Error::Netns {
            name: self.name.clone(),
            source,
        };
        let ns = File::open(&path).map_err(netns_err)?;
        thread::scope(|s| {
            let t = s.spawn(|| -> Result<T> {
                // Changes this (new, short-lived) thread alone.
                move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                    .map_err(|e| netns_err(e.into()))?;
                Ok(f())
            });
            t.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Like [`Netns::try_enter`].
    ///
    /// # Panics
    /// When the namespace cannot be opened or entered (not root), or when `f` panics
    /// (the panic is passed on).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.try_enter(f)
            .unwrap_or_else(|e| panic!("{}", chain(&e)))
    }

    /// Ids of the processes inside the namespace (`ip netns pids`).
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

    /// Kernel counters of `ifname` inside: (rx_packets, rx_dropped, tx_packets,
    /// tx_dropped).
    pub fn link_counters(&self, ifname: &str) -> Option<(u64, u64, u64, u64)> {
        let text = self.run(&["cat", "/proc/net/dev"]).ok()?;
        link_counters_from(&text, ifname)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // Processes first: a namespace with live processes outlives `ip netns del`, and
        // its links (taps, veths) with it.
        let gone = wait_until(Duration::from_secs(5), || {
            let pids: Vec<u32> = self.pids().into_iter().filter(|&p| alive(p)).collect();
            for &pid in &pids {
                signal(pid, Signal::KILL);
            }
            pids.is_empty()
        });
        let del = run("ip", &["netns", "del", &self.name]);
        if self.strict && !thread::panicking() {
            assert!(gone, "processes still alive in netns {}", self.name);
            if let Err(e) = del {
                panic!("{}", chain(&e));
            }
        } else if let Err(e) = del {
            eprintln!("warning: {}", chain(&e));
        }
    }
}

/// Parses one interface's line of `/proc/net/dev`: (rx_packets, rx_dropped,
/// tx_packets, tx_dropped).
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

/// Moves link `ifname` (a veth end, a tap the switch made, ...) into `ns`, gives it
/// `addr_cidr` (e.g. `"10.11.0.1/24"`; `""` for no address) and sets it up.
///
/// # Panics
/// When any step fails, e.g. the link does not exist.
pub fn move_link_into(ifname: &str, ns: &Netns, addr_cidr: &str) {
    run_ok("ip", &["link", "set", "dev", ifname, "netns", &ns.name]);
    if !addr_cidr.is_empty() {
        run_ok(
            "ip",
            &["-n", &ns.name, "addr", "add", addr_cidr, "dev", ifname],
        );
    }
    run_ok("ip", &["-n", &ns.name, "link", "set", "dev", ifname, "up"]);
}

/// A veth pair made in this process's own namespace, deleted on drop if still there.
#[derive(Debug)]
pub struct VethPair {
    /// One end.
    pub a: String,
    /// The other end.
    pub b: String,
    _guard: Guard,
}

impl VethPair {
    /// Makes a pair named [`unique`]`(pa)` and [`unique`]`(pb)`.
    pub fn create(pa: &str, pb: &str) -> Result<VethPair> {
        let (a, b) = (unique(pa), unique(pb));
        let guard = cleanup::track(Item::Link(a.clone()));
        run(
            "ip",
            &["link", "add", &a, "type", "veth", "peer", "name", &b],
        )?;
        Ok(VethPair {
            a,
            b,
            _guard: guard,
        })
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
        if Path::new("/sys/class/net").join(&self.a).exists() {
            let _ = run("ip", &["link", "del", &self.a]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Whether `ip netns list` names `name` (the cleanup tests ask it too).
    pub(crate) fn listed(name: &str) -> bool {
        run_ok("ip", &["netns", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }

    #[test]
    fn netns_is_created_configured_and_removed() {
        let ns = Netns::new();
        let name = ns.name.clone();
        assert!(listed(&name));
        assert!(cleanup::tracked().contains(&Item::Netns(name.clone())));
        let links = ns.exec_ok(&["ip", "-o", "link"]);
        assert!(links.contains("lo:"), "{links}");
        assert!(links.contains("UP"), "lo is up: {links}");
        assert_eq!(links.lines().count(), 1, "only lo inside: {links}");
        let v6 = ns.exec_ok(&["sysctl", "-n", "net.ipv6.conf.all.disable_ipv6"]);
        assert_eq!(v6.trim(), "1");
        assert!(!ns.exec(&["false"]).status.success());
        assert!(ns.run(&["false"]).is_err());
        assert!(ns.has_link("lo") && !ns.has_link("nosuch0"));
        drop(ns);
        assert!(!listed(&name));
        assert!(!cleanup::tracked().contains(&Item::Netns(name)));
    }

    #[test]
    fn drop_kills_processes_inside() {
        let ns = Netns::new();
        let mut child = ns.spawn(&["sleep", "600"]);
        assert!(wait_until(Duration::from_secs(5), || ns
            .pids()
            .contains(&child.id())));
        drop(ns);
        let status = child.wait().unwrap();
        assert!(!status.success(), "sleep was killed: {status}");
    }

    #[test]
    fn sockets_made_inside_belong_to_the_namespace() {
        let ns = Netns::new();
        let inside = ns.enter(|| std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        let port = inside.local_addr().unwrap().port();
        inside
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // The same address on this namespace's loopback is not the socket made inside.
        let outside = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        outside.send_to(b"out", ("127.0.0.1", port)).unwrap();
        let sender = ns.enter(|| std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        sender.send_to(b"in", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 8];
        let (n, _) = inside.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"in");
        assert!(inside.recv_from(&mut buf).is_err(), "nothing else arrives");
        // A link made inside is visible to a thread inside only.
        let links = ns.enter(|| run_ok("ip", &["-o", "link"]));
        assert_eq!(links.lines().count(), 1, "only lo inside: {links}");
        let err = std::panic::catch_unwind(|| ns.enter(|| panic!("boom inside")))
            .expect_err("a panic inside is passed on");
        assert_eq!(err.downcast_ref::<&str>(), Some(&"boom inside"));
        assert!(Netns::borrow("psnnosuch").try_enter(|| ()).is_err());
    }

    #[test]
    fn veth_ends_moved_into_two_namespaces_talk() {
        let (a, b) = (Netns::new(), Netns::new());
        let (va, vb) = (unique("va"), unique("vb"));
        run_ok(
            "ip",
            &["link", "add", &va, "type", "veth", "peer", "name", &vb],
        );
        move_link_into(&va, &a, "10.211.0.1/24");
        move_link_into(&vb, &b, "10.211.0.2/24");
        let addrs = a.exec_ok(&["ip", "-o", "addr", "show", "dev", &va]);
        assert!(addrs.contains("10.211.0.1/24"), "{addrs}");
        let ping = b.exec_ok(&["busybox", "ping", "-c", "1", "-W", "2", "10.211.0.1"]);
        assert!(ping.contains("1 packets received"), "{ping}");
        drop(a);
        drop(b);
        // Deleting a namespace deletes the veth pair in it.
        assert!(run("ip", &["link", "show", "dev", &va]).is_err());
    }

    #[test]
    fn a_veth_pair_moves_out_and_goes_with_its_namespaces() {
        let (a, b) = (
            Netns::create("ptva").unwrap(),
            Netns::create("ptvb").unwrap(),
        );
        let pair = VethPair::create("pva", "pvb").unwrap();
        assert!(Path::new("/sys/class/net").join(&pair.a).exists());
        pair.move_ends(&a, &b, 9000).unwrap();
        assert!(a.has_link(&pair.a) && b.has_link(&pair.b));
        let (rx, _, _, _) = a.link_counters(&pair.a).unwrap();
        assert_eq!(rx, 0);
        let (ea, eb) = (pair.a.clone(), pair.b.clone());
        // Moved ends belong to their namespaces now: dropping the pair leaves them.
        drop(pair);
        assert!(a.has_link(&ea) && b.has_link(&eb));
        drop(a);
        assert!(wait_until(Duration::from_secs(5), || !b.has_link(&eb)));
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
}
