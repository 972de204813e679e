//! Throwaway network namespaces.
//!
//! A [`Netns`] is made with `ip netns add`, gets `lo` up and IPv6 disabled (router
//! solicitations would otherwise pollute captures), and on drop has every process inside
//! killed and is deleted. Links created by a test (veth ends, taps made by the switch) are
//! moved in with [`move_link_into`]; the kernel deletes or returns them when the namespace
//! goes.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{check_output, pid_alive, require_tool, run, run_ok, signal, unique, wait_until};

/// A network namespace named `name`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name, as `ip netns` and `ip -n` take it.
    pub name: String,
}

impl Netns {
    /// Creates a namespace with a unique name, brings `lo` up and disables IPv6 in it
    /// (`all` and `default`, so links moved in later have none either).
    ///
    /// # Panics
    /// When `ip` is missing or any step fails (not root, no netns support).
    pub fn new() -> Netns {
        require_tool("ip");
        let name = unique("psn");
        run_ok("ip", &["netns", "add", &name]);
        // From here on Drop deletes it, even if a later step panics.
        let ns = Netns { name };
        run_ok("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns.exec_ok(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        ns
    }

    /// A `Command` that runs `args` (program first) inside the namespace via
    /// `ip netns exec`, for callers that want to choose stdio themselves. `ip` execs the
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

    /// Runs `args` inside the namespace to completion and returns its output, whatever
    /// its exit status.
    ///
    /// # Panics
    /// When `ip netns exec` cannot be started.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.name))
    }

    /// Like [`Netns::exec`], returning stdout as text.
    ///
    /// # Panics
    /// When the command exits non-zero (the message has its stderr).
    pub fn exec_ok(&self, args: &[&str]) -> String {
        check_output(
            &format!("ip netns exec {} {}", self.name, args.join(" ")),
            self.exec(args),
        )
    }

    /// Starts `args` inside the namespace with stdin from /dev/null and stdout and stderr
    /// piped (read them, or a chatty child blocks). The process is killed when the
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

    /// Runs `f` on a new thread that has entered the namespace (`setns`), and returns
    /// its result. Sockets and other kernel objects that `f` creates belong to the
    /// namespace for their whole life, so they can be returned and used from any thread:
    /// this is how a test gets a UDP socket on the loopback of a namespace, or a raw
    /// socket on a link moved into it ([`crate::RawSock::open_in`]). Only that thread
    /// switches; the test process stays where it is. Paths under `/sys` still show the
    /// namespace the process started in (nothing is remounted): ask the kernel
    /// (`if_nametoindex`, sockets) rather than sysfs from inside `f`.
    ///
    /// # Panics
    /// When the namespace cannot be opened or entered (not root), or when `f` panics
    /// (the panic is passed on).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                // SAFETY: setns only reads the descriptor, which `ns` keeps open for the
                // duration of the call; it changes this (new, short-lived) thread alone.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    panic!(
                        "setns into netns {}: {}",
                        self.name,
                        std::io::Error::last_os_error()
                    );
                }
                f()
            });
            t.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Ids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<u32> {
        let out = run("ip", &["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes first: a namespace with live processes outlives `ip netns del`, and
        // its links (taps, veths) with it.
        let gone = wait_until(Duration::from_secs(5), || {
            let pids: Vec<u32> = self.pids().into_iter().filter(|&p| pid_alive(p)).collect();
            for &pid in &pids {
                signal(pid, "KILL");
            }
            pids.is_empty()
        });
        let del = run("ip", &["netns", "del", &self.name]);
        if !std::thread::panicking() {
            assert!(gone, "processes still alive in netns {}", self.name);
            assert!(
                del.status.success(),
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&del.stderr)
            );
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str) -> bool {
        run_ok("ip", &["netns", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }

    #[test]
    fn netns_is_created_configured_and_removed() {
        let ns = Netns::new();
        let name = ns.name.clone();
        assert!(listed(&name));
        let links = ns.exec_ok(&["ip", "-o", "link"]);
        assert!(links.contains("lo:"), "{links}");
        assert!(links.contains("UP"), "lo is up: {links}");
        assert_eq!(links.lines().count(), 1, "only lo inside: {links}");
        let v6 = ns.exec_ok(&["sysctl", "-n", "net.ipv6.conf.all.disable_ipv6"]);
        assert_eq!(v6.trim(), "1");
        assert!(!ns.exec(&["false"]).status.success());
        drop(ns);
        assert!(!listed(&name));
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
        assert!(!run("ip", &["link", "show", "dev", &va]).status.success());
    }
}
