//! A child process of a system under test: started under `taskset` (and `ip netns exec`
//! when it belongs in a namespace), its stdout and stderr copied into one buffer by two
//! reader threads so that it never blocks on a full pipe, and killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{PerfError, Result};
use crate::peer::{require, SutOptions};
use crate::sys;

/// Most bytes of output kept (the tail).
const KEEP: usize = 256 << 10;

/// A running child process.
pub struct Process {
    child: Child,
    system: String,
    command: String,
    out: Arc<Mutex<String>>,
}

impl Process {
    /// Starts `program args` confined to `cores` (no confinement when empty), inside
    /// namespace `netns` if given.
    pub fn spawn(
        system: &str,
        program: &Path,
        args: &[String],
        netns: Option<&str>,
        cores: &[usize],
    ) -> Result<Process> {
        let mut words: Vec<String> = Vec::new();
        if !cores.is_empty() {
            words.push(require("taskset")?.display().to_string());
            words.push("-c".into());
            words.push(SutOptions::core_list(cores));
        }
        if let Some(ns) = netns {
            words.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        words.push(program.display().to_string());
        words.extend(args.iter().cloned());
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        let command = words.join(" ");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| PerfError::peer(system, format!("spawn `{command}`: {e}")))?;
        let out = Arc::new(Mutex::new(String::new()));
        let pipes: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ];
        for pipe in pipes.into_iter().flatten() {
            let out = Arc::clone(&out);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                    if o.len() > KEEP {
                        let mut cut = o.len() - KEEP / 2;
                        while !o.is_char_boundary(cut) {
                            cut += 1;
                        }
                        o.drain(..cut);
                    }
                }
            });
        }
        Ok(Process {
            child,
            system: system.to_string(),
            command,
            out,
        })
    }

    /// Its pid (taskset and `ip netns exec` exec the program, so it is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// What it has printed so far (the tail).
    pub fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until its output contains `needle`; an error with its output when it
    /// exits first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the readers catch the last lines.
                thread::sleep(Duration::from_millis(50));
                return Err(self.failed(&format!("exited ({status}) before {needle:?}")));
            }
            if Instant::now() >= deadline {
                return Err(self.failed(&format!("no {needle:?} within {timeout:?}")));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// An error naming the system, `what` happened, its command and its output.
    pub fn failed(&self, what: &str) -> PerfError {
        PerfError::peer(
            &self.system,
            format!(
                "{what}\n  command: {}\n  output:\n{}",
                self.command,
                indent(&self.output())
            ),
        )
    }

    /// Sends `sig` and waits up to `timeout` for it to exit. An error when it had
    /// already exited, when it does not exit in time (it is then killed), or when it
    /// exits unsuccessfully unless `any_status`.
    pub fn stop(&mut self, sig: i32, timeout: Duration, any_status: bool) -> Result<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(self.failed(&format!("had already exited ({status}) before the stop")));
        }
        sys::signal(self.pid(), sig);
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    thread::sleep(Duration::from_millis(20));
                    if status.success() || any_status {
                        return Ok(status);
                    }
                    return Err(self.failed(&format!("exited with {status} when stopped")));
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return Err(self.failed(&format!(
                        "did not exit within {timeout:?} of signal {sig}; killed"
                    )));
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn indent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(40)..];
    tail.iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_captured_and_stop_reports_status() {
        let sh = require("sh").unwrap();
        let args = vec![
            "-c".to_string(),
            "echo hello; echo err >&2; exec sleep 30".to_string(),
        ];
        let mut p = Process::spawn("test", &sh, &args, None, &[0]).unwrap();
        p.wait_for("hello", Duration::from_secs(5)).unwrap();
        p.wait_for("err", Duration::from_secs(5)).unwrap();
        assert!(p.running());
        // sleep dies of SIGTERM: not a success unless any status is fine.
        assert!(p
            .stop(libc::SIGTERM, Duration::from_secs(5), false)
            .is_err());
        assert!(
            p.stop(libc::SIGTERM, Duration::from_secs(1), true).is_err(),
            "already gone"
        );
    }

    #[test]
    fn early_exit_is_an_error_with_output() {
        let sh = require("sh").unwrap();
        let args = vec!["-c".to_string(), "echo boom; exit 3".to_string()];
        let mut p = Process::spawn("test", &sh, &args, None, &[0]).unwrap();
        let err = p
            .wait_for("ready", Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("boom") && err.contains("exited"), "{err}");
    }
}
