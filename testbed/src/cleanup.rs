//! What this process has made that must not outlive it, and the signal handler that
//! removes all of it when the process is stopped halfway (Ctrl-C, SIGTERM).
//!
//! ```text
//!  Netns::create ──┐                              SIGINT / SIGTERM / SIGHUP
//!  VethPair ───────┤                                     │ (ctrlc's thread)
//!  Process, cmd ───┼── track() ──► REGISTRY ◄──── lock it, and hold it until exit:
//!  VdeSwitch ──────┤   (a Guard: untracked          1. processes: SIGTERM, then SIGKILL
//!  libvirt Domain ─┤    again on drop)              2. libvirt domains: destroy, undefine
//!  TempDir ────────┘                                3. namespaces: processes inside, del
//!                                                   4. links  5. directories  6. exit 130
//! ```
//!
//! Everything is tracked *before* it exists (a namespace's name before `ip netns add`,
//! a pid file before the daemon writes it) or in the critical section that makes it (a
//! child is spawned with the registry locked), so a signal at any moment finds it: a setup
//! command still running is stopped first, and whatever it managed to make is then
//! removed by name. The handler keeps the lock until the process exits, so a thread that
//! goes on making things meanwhile blocks on its next [`track`] and ends with the exit.
//!
//! A tracked process is identified by its pid *and* its start time, so a pid the kernel
//! has handed to someone else since is never signalled.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::libvirt::URI;
use crate::process::{alive, signal, start_time, Signal};
use crate::wait_until;

/// Exit status of a process stopped by a signal once everything is removed.
pub const INTERRUPTED: i32 = 130;

/// How long tracked processes get to exit on SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// One thing to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A child process: its pid and its start time (clock ticks after boot, from
    /// `/proc/PID/stat`).
    Process {
        /// The pid.
        pid: u32,
        /// When it started, to tell it from a later process with the same pid.
        started: u64,
    },
    /// A daemon that forks away from us and writes its pid here.
    PidFile(PathBuf),
    /// A libvirt domain on [`crate::libvirt::URI`] (its name): its QEMU is libvirtd's
    /// child, not ours, so only libvirtd can stop it.
    Domain(String),
    /// A network namespace (`ip netns` name).
    Netns(String),
    /// A link in this process's own namespace (one end of a veth pair).
    Link(String),
    /// A directory, removed with its contents.
    Dir(PathBuf),
}

/// What a [`Registry::clean`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Processes that were still running.
    pub processes: usize,
    /// libvirt domains that were still defined.
    pub domains: usize,
    /// Namespaces that still existed.
    pub namespaces: usize,
    /// Links that still existed.
    pub links: usize,
    /// Directories that still existed.
    pub dirs: usize,
}

impl fmt::Display for Cleaned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} process(es), {} domain(s), {} namespace(s), {} link(s), {} dir(s)",
            self.processes, self.domains, self.namespaces, self.links, self.dirs
        )
    }
}

/// Everything alive now, by id.
#[derive(Debug, Default)]
pub struct Registry {
    next: u64,
    items: Vec<(u64, Item)>,
}

impl Registry {
    /// An empty registry.
    pub const fn new() -> Registry {
        Registry {
            next: 0,
            items: Vec::new(),
        }
    }

    /// Adds `item`; returns its id.
    pub fn add(&mut self, item: Item) -> u64 {
        self.next += 1;
        self.items.push((self.next, item));
        self.next
    }

    /// Forgets the item with `id` (it was removed by its owner).
    pub fn remove(&mut self, id: u64) {
        self.items.retain(|(i, _)| *i != id);
    }

    /// The items, oldest first.
    pub fn items(&self) -> Vec<Item> {
        self.items.iter().map(|(_, i)| i.clone()).collect()
    }

    /// Removes everything: processes first (a namespace with live processes outlives
    /// `ip netns del`, and a setup command such as `virsh define` must not make anything
    /// after its name was deleted), then libvirt domains, namespaces, links and
    /// directories. Forgets every item. Uses no
    /// tracked command, so it may run with the global registry locked.
    pub fn clean(&mut self) -> Cleaned {
        let items: Vec<Item> = self.items.drain(..).map(|(_, i)| i).collect();
        let mut done = Cleaned::default();
        let mut pids = Vec::new();
        for item in &items {
            match item {
                Item::Process { pid, started }
                    if alive(*pid) && start_time(*pid) == Some(*started) =>
                {
                    pids.push(*pid)
                }
                Item::PidFile(path) => pids.extend(read_pid(path).filter(|&p| alive(p))),
                _ => {}
            }
        }
        done.processes = stop_all(&pids);
        for item in &items {
            if let Item::Domain(name) = item {
                // Destroy fails for a domain that is shut off already; undefine says
                // whether there was one.
                quiet("virsh", &["-c", URI, "destroy", name]);
                if succeeds("virsh", &["-c", URI, "undefine", name]) {
                    done.domains += 1;
                }
            }
        }
        for item in &items {
            match item {
                Item::Netns(name) if Path::new("/run/netns").join(name).exists() => {
                    delete_netns(name);
                    done.namespaces += 1;
                }
                Item::Link(name) if Path::new("/sys/class/net").join(name).exists() => {
                    quiet("ip", &["link", "del", name]);
                    done.links += 1;
                }
                Item::Dir(path) if path.exists() => {
                    let _ = fs::remove_dir_all(path);
                    done.dirs += 1;
                }
                _ => {}
            }
        }
        done
    }
}

/// The pid written in `path`, if any.
pub fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// SIGTERM to every pid, SIGKILL to those still running after [`TERM_GRACE`]; returns
/// how many were signalled.
fn stop_all(pids: &[u32]) -> usize {
    let n = pids.iter().filter(|&&p| signal(p, Signal::TERM)).count();
    if !wait_until(TERM_GRACE, || pids.iter().all(|&p| !alive(p))) {
        for &p in pids.iter().filter(|&&p| alive(p)) {
            signal(p, Signal::KILL);
        }
        wait_until(Duration::from_secs(1), || pids.iter().all(|&p| !alive(p)));
    }
    n
}

/// Kills what runs inside namespace `name`, then deletes it.
fn delete_netns(name: &str) {
    wait_until(Duration::from_secs(2), || {
        let pids: Vec<u32> = quiet("ip", &["netns", "pids", name])
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| alive(p))
            .collect();
        for &p in &pids {
            signal(p, Signal::KILL);
        }
        pids.is_empty()
    });
    quiet("ip", &["netns", "del", name]);
}

/// Runs a command untracked; whether it exited 0.
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command untracked and returns its stdout (empty when it failed).
fn quiet(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry::new());

fn lock() -> MutexGuard<'static, Registry> {
    // Nothing panics while holding it; stay usable if something did.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps an item tracked while it lives; untracks it on drop (its owner removed it).
#[derive(Debug)]
#[must_use = "the item is untracked when the guard drops"]
pub struct Guard {
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        lock().remove(self.id);
    }
}

/// Tracks `item` until the returned guard drops. Blocks for good once the signal
/// handler has begun (the process is about to exit).
pub fn track(item: Item) -> Guard {
    Guard {
        id: lock().add(item),
    }
}

/// Spawns `cmd` with the registry locked and tracks the child, so that no signal can
/// come between the two.
pub fn spawn(cmd: &mut Command) -> io::Result<(Child, Guard)> {
    let mut reg = lock();
    let child = cmd.spawn()?;
    let pid = child.id();
    // Fixed at fork: readable even if the exec has not happened yet.
    let started = start_time(pid).unwrap_or(0);
    let id = reg.add(Item::Process { pid, started });
    Ok((child, Guard { id }))
}

/// What is tracked now, oldest first.
pub fn tracked() -> Vec<Item> {
    lock().items()
}

/// Installs the handler for SIGINT, SIGTERM and SIGHUP: it says so on stderr (as
/// `program: ...`), removes everything tracked ([`Registry::clean`]) and exits with
/// [`INTERRUPTED`]. Call it once, early.
pub fn exit_on_signal(program: &'static str) -> Result<()> {
    ctrlc::set_handler(move || {
        let mut reg = lock();
        eprintln!("{program}: interrupted: removing what this run made");
        let done = reg.clean();
        eprintln!("{program}: removed {done}; exiting");
        std::process::exit(INTERRUPTED);
    })
    .map_err(|e| Error::Invalid(format!("install the signal handler: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::tests::listed;
    use crate::{run_ok, unique};

    #[test]
    fn clean_stops_processes_and_removes_namespaces_links_and_dirs() {
        // A registry of its own: the global one holds what parallel tests made.
        let mut reg = Registry::new();
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        let pid = child.id();
        reg.add(Item::Process {
            pid,
            started: start_time(pid).unwrap(),
        });
        // Same pid, another start time: a process that only reuses the number.
        let mut other = Command::new("sleep").arg("600").spawn().unwrap();
        reg.add(Item::Process {
            pid: other.id(),
            started: start_time(other.id()).unwrap() + 1,
        });
        let ns = unique("tcn");
        reg.add(Item::Netns(ns.clone()));
        run_ok("ip", &["netns", "add", &ns]);
        let inside = Command::new("ip")
            .args(["netns", "exec", &ns, "sleep", "600"])
            .spawn()
            .unwrap();
        let link = unique("tcl");
        reg.add(Item::Link(link.clone()));
        let peer = unique("tcp");
        run_ok(
            "ip",
            &["link", "add", &link, "type", "veth", "peer", "name", &peer],
        );
        let dir = std::env::temp_dir().join(unique("tcd"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("f"), b"x").unwrap();
        reg.add(Item::Dir(dir.clone()));
        // Never made: nothing to count.
        reg.add(Item::Netns(unique("tcn")));

        let done = reg.clean();
        assert_eq!(
            done,
            Cleaned {
                processes: 1,
                domains: 0,
                namespaces: 1,
                links: 1,
                dirs: 1
            },
            "{done}"
        );
        assert!(reg.items().is_empty());
        assert!(!child.wait().unwrap().success());
        assert!(alive(other.id()), "a reused pid is left alone");
        other.kill().unwrap();
        other.wait().unwrap();
        let mut inside = inside;
        assert!(
            !inside.wait().unwrap().success(),
            "killed with its namespace"
        );
        assert!(!listed(&ns));
        assert!(!Path::new("/sys/class/net").join(&link).exists());
        assert!(!Path::new("/sys/class/net").join(&peer).exists());
        assert!(!dir.exists());
    }

    #[test]
    fn guards_untrack_and_spawn_tracks() {
        let path = PathBuf::from(format!("/nonexistent/{}", unique("g")));
        let g = track(Item::Dir(path.clone()));
        assert!(tracked().contains(&Item::Dir(path.clone())));
        drop(g);
        assert!(!tracked().contains(&Item::Dir(path)));
        let (mut child, g) = spawn(Command::new("sleep").arg("30")).unwrap();
        let pid = child.id();
        assert!(tracked()
            .iter()
            .any(|i| matches!(i, Item::Process { pid: p, .. } if *p == pid)));
        child.kill().unwrap();
        child.wait().unwrap();
        drop(g);
        assert!(!tracked()
            .iter()
            .any(|i| matches!(i, Item::Process { pid: p, .. } if *p == pid)));
    }
}
