//! The few calls into the kernel that std does not wrap: the monotonic clock, CPU
//! affinity, entering a network namespace, per-process and per-core CPU time, signals,
//! and socket options. Every `unsafe` of the crate outside the engines lives here.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::thread;

use crate::error::{PerfError, Result};

/// Nanoseconds of `CLOCK_MONOTONIC`, the clock the frames carry.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux,
    // so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Pins the calling thread to `cores`.
pub fn pin_current_thread(cores: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data for which all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cores
        .iter()
        .filter(|&&c| c < 8 * std::mem::size_of::<libc::cpu_set_t>())
    {
        // SAFETY: CPU_SET writes bit `c` of `set`, and `c` is below the set's size in bits.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Number of CPUs online.
pub fn online_cpus() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `f` on a fresh thread that has entered network namespace `name`
/// (`/var/run/netns/NAME`, as `ip netns add` makes it) and returns its result. Sockets
/// `f` opens stay in that namespace for life, whichever thread uses them later; the
/// caller's own thread never changes namespace.
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new("/var/run/netns").join(name);
    let ns = File::open(&path).map_err(|source| PerfError::Netns {
        name: name.to_string(),
        source,
    })?;
    let owned = name.to_string();
    thread::spawn(move || {
        // SAFETY: `ns` is an open namespace file; setns changes only this thread, which
        // ends when `f` returns.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(PerfError::Netns {
                name: owned,
                source: io::Error::last_os_error(),
            });
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| Err(PerfError::Usage(format!("thread in netns {name} panicked"))))
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
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; this clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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

/// Sends signal `sig` to process `pid`; false when there is no such process.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill has no memory effects; a stale pid at worst gets ESRCH.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sets an integer socket option.
pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a live i32 whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Gives a socket a big receive buffer (and send buffer when `send` too):
/// `SO_*BUFFORCE` (root may exceed `rmem_max`), falling back to the capped `SO_*BUF`.
/// A big receive buffer keeps the sink's own socket from being where frames are lost.
pub fn big_buffers(fd: RawFd, bytes: i32, send: bool) {
    let both = [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ];
    for &(force, plain) in &both[..if send { 2 } else { 1 }] {
        if setsockopt_int(fd, libc::SOL_SOCKET, force, bytes).is_err() {
            // Not root: the capped option still helps; failure leaves the default.
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, bytes);
        }
    }
}

/// Frames the kernel dropped at socket `fd` because its receive queue was full
/// (`SO_MEMINFO`, `SK_MEMINFO_DROPS`); works for UDP, AF_PACKET and unix sockets.
pub fn socket_drops(fd: RawFd) -> Option<u64> {
    const SK_MEMINFO_VARS: usize = 9;
    const SK_MEMINFO_DROPS: usize = 8;
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize > SK_MEMINFO_DROPS * 4).then(|| u64::from(info[SK_MEMINFO_DROPS]))
}

/// Bytes each generator and sink socket asks for, both directions.
pub const SOCKET_BUFFER: i32 = 16 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_moves_forward() {
        let a = monotonic_ns();
        thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b - a >= 2_000_000, "{a} {b}");
    }

    #[test]
    fn cpu_of_a_spinning_thread_is_seen() {
        let me = std::process::id();
        let before = process_cpu_ns(me).unwrap();
        let until = monotonic_ns() + 30_000_000;
        let mut x = 0u64;
        while monotonic_ns() < until {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        let used = process_cpu_ns(me).unwrap() - before;
        assert!(used >= 20_000_000, "used {used} ns spinning 30 ms");
        assert!(!alive(u32::MAX - 1));
        assert!(alive(me));
    }

    #[test]
    fn socket_drops_are_counted() {
        use std::net::UdpSocket;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        setsockopt_int(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 4096).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(socket_drops(rx.as_raw_fd()), Some(0));
        for _ in 0..200 {
            tx.send_to(&[0u8; 512], rx.local_addr().unwrap()).unwrap();
        }
        assert!(socket_drops(rx.as_raw_fd()).unwrap() > 0);
        assert_eq!(socket_drops(-1), None);
    }

    #[test]
    fn core_times_cover_every_cpu() {
        let t = core_times();
        assert!(t.len() >= online_cpus());
        assert!(t.iter().all(|&(busy, total)| busy <= total && total > 0));
    }
}
