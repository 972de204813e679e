//! Stopping pollswitch-perf halfway: SIGTERM during `bench tap-hub --quick`, once its
//! namespaces and the daemon it measures exist, must leave nothing of that run behind —
//! no namespace, no link, no process — and end with a non-zero status.
//!
//! Every name the tool makes holds its pid in hex and an `x` after a short prefix
//! (`testbed::unique`), which is how what belongs to this run is told from what
//! belongs to anything else on the machine.
//!
//! Needs root (namespaces, taps), the peers of tap-hub (`scripts/setup-host`, plus
//! dpdk-testpmd), and `cargo build --workspace` first (the daemon lives beside the tool).

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use testbed::process::{alive, descendants, signal, start_time, Signal};
use testbed::{pid_marker, run_ok, wait_until};

const TOOL: &str = env!("CARGO_BIN_EXE_pollswitch-perf");

/// Prefixes of the namespaces tap-hub makes (the system's, the generator's, the sink's).
const NETNS_PREFIXES: [&str; 3] = ["pps", "ppg", "ppk"];
/// Prefixes of the links it makes (taps and veths, the bridge and its ends).
const LINK_PREFIXES: [&str; 4] = ["pta", "ptb", "pbe", "pbr"];
/// Prefixes of the names a run puts on command lines (links, namespaces, testpmd's
/// `--file-prefix`, temp dirs).
const ANY_PREFIXES: [&str; 9] = ["pps", "ppg", "ppk", "pta", "ptb", "pbe", "pbr", "pmd", "t"];

/// Whether `name` is one a process with `marker` made with one of `prefixes`.
fn ours(name: &str, marker: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        name.strip_prefix(p)
            .is_some_and(|rest| rest.starts_with(marker))
    })
}

fn namespaces(marker: &str) -> Vec<String> {
    run_ok("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| ours(n, marker, &NETNS_PREFIXES))
        .map(str::to_string)
        .collect()
}

fn links(marker: &str) -> Vec<String> {
    run_ok("ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| ours(n, marker, &LINK_PREFIXES))
        .collect()
}

/// Processes on the machine whose command line names something of this run.
fn processes_naming(marker: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
        let named = line
            .split(|c: char| " ,=/:-".contains(c))
            .any(|w| ours(w, marker, &ANY_PREFIXES));
        if named && alive(pid) {
            out.push((pid, line));
        }
    }
    out
}

/// The long-lived processes a system under test runs as.
fn is_peer(pid: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    [
        "pollswitch",
        "qemu-system-x86",
        "dpdk-testpmd",
        "vde_switch",
    ]
    .contains(&comm.trim())
}

#[test]
fn sigterm_during_a_benchmark_removes_everything_it_started() {
    let scratch = testbed::TempDir::create("pollswitch-perf-interrupt").unwrap();
    let out = scratch.join("out");
    let (log_out, log_err) = (scratch.join("stdout"), scratch.join("stderr"));
    let mut tool = Command::new(TOOL)
        .args(["bench", "tap-hub", "--quick", "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(File::create(&log_out).unwrap())
        .stderr(File::create(&log_err).unwrap())
        .spawn()
        .expect("run pollswitch-perf");
    let pid = tool.id();
    let marker = pid_marker(pid);
    let log = |p: &PathBuf| fs::read_to_string(p).unwrap_or_default();

    // Its three namespaces and a system under test running in one of them.
    let started = wait_until(Duration::from_secs(60), || {
        namespaces(&marker).len() == 3 && descendants(pid).into_iter().any(is_peer)
    });
    if !started {
        let _ = tool.kill();
        let _ = tool.wait();
        panic!(
            "no namespaces and daemon of pid {pid} within 60 s: namespaces {:?}\n--- stderr\n{}",
            namespaces(&marker),
            log(&log_err)
        );
    }
    let children: Vec<(u32, Option<u64>)> = descendants(pid)
        .into_iter()
        .map(|p| (p, start_time(p)))
        .collect();
    assert!(!children.is_empty());

    assert!(signal(pid, Signal::TERM), "SIGTERM to {pid}");
    let mut status = None;
    wait_until(Duration::from_secs(20), || {
        status = tool.try_wait().unwrap();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = tool.kill();
        let _ = tool.wait();
        panic!(
            "pollswitch-perf still running 20 s after SIGTERM:\n{}",
            log(&log_err)
        );
    };
    let stderr = log(&log_err);
    assert!(
        !status.success(),
        "exit status {status} after SIGTERM:\n{stderr}"
    );
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");

    // The kernel finishes tearing a namespace down in the background: a few seconds.
    let clean = wait_until(Duration::from_secs(5), || {
        namespaces(&marker).is_empty()
            && links(&marker).is_empty()
            && children
                .iter()
                .all(|&(p, t)| !alive(p) || start_time(p) != t)
            && processes_naming(&marker).is_empty()
    });
    assert!(
        clean,
        "left behind by pid {pid}: namespaces {:?}, links {:?}, children {:?}, processes {:?}\n\
         --- stderr\n{stderr}",
        namespaces(&marker),
        links(&marker),
        children
            .iter()
            .filter(|&&(p, t)| alive(p) && start_time(p) == t)
            .collect::<Vec<_>>(),
        processes_naming(&marker)
    );
}

#[test]
fn names_of_a_run_are_told_from_others() {
    assert!(ours("pps1a2bx0", "1a2bx", &NETNS_PREFIXES));
    assert!(!ours("pps11a2bx0", "1a2bx", &NETNS_PREFIXES), "another pid");
    assert!(
        !ours("psn1a2bx0", "1a2bx", &NETNS_PREFIXES),
        "another prefix"
    );
    assert!(ours("t1a2bx3", "1a2bx", &ANY_PREFIXES));
}
