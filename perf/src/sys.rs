//! The kernel's clocks and counters the measurements read, and the socket tuning the
//! engines share: the monotonic clock the frames carry, CPU time per process and per
//! core, big socket buffers, the kernel's per-socket drop counter. Pinning, namespaces
//! and signals are the test bed's ([`testbed::cpu`], [`testbed::Netns`],
//! [`testbed::process`]).
//!
//! The only `unsafe` here reads `SO_MEMINFO`, which neither rustix nor socket2 wraps.

use std::fs;
use std::os::fd::{AsFd, AsRawFd};

use rustix::net::sockopt;
use rustix::time::{clock_gettime, ClockId, Timespec};

fn ns(ts: Timespec) -> u64 {
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock the frames carry.
pub fn monotonic_ns() -> u64 {
    ns(clock_gettime(ClockId::Monotonic))
}

/// Nanoseconds of CPU that process `pid` has used, all its live threads together
/// (`/proc/PID/task/*/schedstat`, nanosecond resolution). `None` when it is gone.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(total)
}

/// Nanoseconds of CPU the calling process has used (user and system, all threads).
pub fn self_cpu_ns() -> u64 {
    ns(clock_gettime(ClockId::ProcessCPUTime))
}

/// Busy and total jiffies of every CPU, from `/proc/stat` (index = core number).
/// Busy is everything but idle and iowait, so softirq work (bridge forwarding) counts.
pub fn core_times() -> Vec<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(idx) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
        if v.len() < 5 {
            continue;
        }
        let total: u64 = v.iter().take(8).sum();
        let idle = v[3] + v[4];
        if out.len() <= idx {
            out.resize(idx + 1, (0, 0));
        }
        out[idx] = (total - idle, total);
    }
    out
}

/// Percent busy per core between two [`core_times`] samples.
pub fn core_busy_pct(before: &[(u64, u64)], after: &[(u64, u64)]) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| {
            let total = a.1.saturating_sub(b.1);
            if total == 0 {
                0.0
            } else {
                100.0 * a.0.saturating_sub(b.0) as f64 / total as f64
            }
        })
        .collect()
}

/// Gives a socket a big receive buffer (and send buffer when `send` too):
/// `SO_*BUFFORCE` (root may exceed `rmem_max`), falling back to the capped `SO_*BUF`.
/// A big receive buffer keeps the sink's own socket from being where frames are lost.
pub fn big_buffers(fd: impl AsFd, bytes: usize, send: bool) {
    let fd = fd.as_fd();
    // Not root: the capped option still helps; failure leaves the default.
    if sockopt::set_socket_recv_buffer_size_force(fd, bytes).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(fd, bytes);
    }
    if send && sockopt::set_socket_send_buffer_size_force(fd, bytes).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(fd, bytes);
    }
}

/// Frames the kernel dropped at socket `fd` because its receive queue was full
/// (`SO_MEMINFO`, `SK_MEMINFO_DROPS`); works for UDP, AF_PACKET and unix sockets.
pub fn socket_drops(fd: impl AsFd) -> Option<u64> {
    const SK_MEMINFO_VARS: usize = 9;
    const SK_MEMINFO_DROPS: usize = libc::SK_MEMINFO_DROPS as usize;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize > SK_MEMINFO_DROPS * 4).then(|| u64::from(info[SK_MEMINFO_DROPS]))
}

/// Bytes each generator and sink socket asks for, both directions.
pub const SOCKET_BUFFER: usize = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use testbed::process::alive;

    #[test]
    fn clock_moves_forward() {
        let a = monotonic_ns();
        thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b - a >= 2_000_000, "{a} {b}");
    }

    #[test]
    fn cpu_of_a_spinning_thread_is_seen() {
        // A process of its own that only spins: the test harness's other threads (which
        // come and go, taking their schedstat with them) cannot blur its figure.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("spawn a spinning shell");
        let pid = child.id();
        let start = process_cpu_ns(pid).unwrap_or(0);
        let give_up = monotonic_ns() + 5_000_000_000;
        let mut used = 0;
        while monotonic_ns() < give_up {
            used = process_cpu_ns(pid).unwrap_or(0) - start;
            if used >= 30_000_000 {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(alive(pid));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            used >= 30_000_000,
            "a spinning process showed {used} ns of CPU in 5 s"
        );
        assert!(!alive(u32::MAX - 1));
        assert!(alive(std::process::id()));
        // This process's own clock moves too.
        let a = self_cpu_ns();
        let until = monotonic_ns() + 5_000_000;
        while monotonic_ns() < until {}
        assert!(self_cpu_ns() > a);
    }

    #[test]
    fn socket_drops_are_counted() {
        use std::net::UdpSocket;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        sockopt::set_socket_recv_buffer_size(&rx, 4096).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_drops(&rx), Some(0));
        for _ in 0..200 {
            tx.send_to(&[0u8; 512], rx.local_addr().unwrap()).unwrap();
        }
        assert!(socket_drops(&rx).unwrap() > 0);
        big_buffers(&rx, 1 << 20, true);
        assert!(sockopt::socket_recv_buffer_size(&rx).unwrap() >= 1 << 20);
    }

    #[test]
    fn core_times_cover_every_cpu() {
        let t = core_times();
        assert!(t.len() >= testbed::cpu::online());
        assert!(t.iter().all(|&(busy, total)| busy <= total && total > 0));
    }
}
