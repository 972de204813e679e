//! Cores, in one place: lists as people write them (`1-3,5`), pinning the calling
//! thread, the `taskset` prefix that confines a child (and every thread it makes), and
//! the hex masks sysfs takes (`rps_cpus`).
//!
//! ```text
//!  "1-3,5" ──parse_list──► [1, 2, 3, 5] ──list──► "1,2,3,5"   (taskset -c, -cores)
//!                                        ──hex_mask──► "0000002e" (rps_cpus)
//!                                        ──pin_current_thread──► sched_setaffinity
//! ```

use std::io;
use std::thread;

use rustix::thread::{sched_setaffinity, CpuSet};

/// CPUs this process may run on (its affinity mask; at least 1).
pub fn online() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Parses a core list: `1`, `0,2`, `1-3,5`. The message says what is wrong.
pub fn parse_list(text: &str) -> Result<Vec<usize>, String> {
    let number = |s: &str| -> Result<usize, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a core number"))
    };
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b {
                    return Err(format!("range {a}-{b} is backwards"));
                }
                out.extend(a..=b);
            }
            None => out.push(number(part)?),
        }
    }
    Ok(out)
}

/// `cores` as `taskset -c` and pollswitch's `-cores` take them: `1,2,5`.
pub fn list(cores: &[usize]) -> String {
    cores
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `cores` as the hex CPU mask sysfs takes (`rps_cpus`): groups of 32 CPUs, most
/// significant first, comma separated, as the kernel prints them.
pub fn hex_mask(cores: &[usize]) -> String {
    let top = cores.iter().copied().max().unwrap_or(0);
    let mut words = vec![0u32; top / 32 + 1];
    for &c in cores {
        words[c / 32] |= 1 << (c % 32);
    }
    words
        .iter()
        .rev()
        .map(|x| format!("{x:08x}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Pins the calling thread to `cores` (cores the kernel's set cannot hold are left
/// out).
pub fn pin_current_thread(cores: &[usize]) -> io::Result<()> {
    let mut set = CpuSet::new();
    for &c in cores.iter().filter(|&&c| c < CpuSet::MAX_CPU) {
        set.set(c);
    }
    sched_setaffinity(None, &set).map_err(io::Error::from)
}

/// The words that confine a command to `cores`: `taskset -c LIST`, or nothing when
/// `cores` is empty. `taskset` execs the command, so the pid stays the command's.
pub fn taskset(cores: &[usize]) -> crate::Result<Vec<String>> {
    if cores.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec![
        crate::require("taskset")?.display().to_string(),
        "-c".into(),
        list(cores),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print() {
        assert_eq!(parse_list("1").unwrap(), [1]);
        assert_eq!(parse_list("0,2").unwrap(), [0, 2]);
        assert_eq!(parse_list("1-3,5").unwrap(), [1, 2, 3, 5]);
        assert!(parse_list("3-1").unwrap_err().contains("backwards"));
        assert!(parse_list("x").unwrap_err().contains("not a core"));
        assert!(parse_list("").is_err());
        assert_eq!(list(&[3, 5, 7]), "3,5,7");
    }

    #[test]
    fn masks_are_sysfs_hex() {
        assert_eq!(hex_mask(&[1]), "00000002");
        assert_eq!(hex_mask(&[0, 3]), "00000009");
        assert_eq!(hex_mask(&[33]), "00000002,00000000");
    }

    #[test]
    fn a_pinned_thread_runs_where_it_was_told() {
        let allowed = thread::spawn(|| {
            pin_current_thread(&[0]).unwrap();
            std::fs::read_to_string("/proc/thread-self/status").unwrap()
        })
        .join()
        .unwrap();
        let line = allowed
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .unwrap();
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        assert_eq!(taskset(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(taskset(&[0, 1]).unwrap()[1..], ["-c", "0,1"]);
    }
}
