//! Setup commands (`ip`, `sysctl`, `bridge`, ...), the programs the test bed needs on
//! `PATH`, and temporary directories. Every command is spawned tracked
//! ([`crate::cleanup::spawn`]), so a signal during setup stops it before what it made is
//! removed.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::cleanup::{self, Guard, Item};
use crate::error::{chain, Error, Result};
use crate::unique;

/// How to install `program`, for the error that says it is missing.
fn hint(program: &str) -> &'static str {
    match program {
        "qemu-system-x86_64" => "run scripts/setup-host (QEMU 10 from bookworm-backports)",
        "vde_switch" => "apt-get install vde2 (scripts/setup-host)",
        "dpdk-testpmd" => "apt-get install dpdk-dev librte-net-tap23 librte-mempool-ring23",
        "ip" | "bridge" => "apt-get install iproute2",
        "taskset" => "apt-get install util-linux",
        "tshark" => "apt-get install tshark (scripts/setup-host)",
        "virsh" | "libvirtd" | "virtlogd" => {
            "apt-get install libvirt-daemon-system (scripts/setup-host)"
        }
        _ => {
            "run scripts/setup-host as root, which installs every peer the tests and \
              benchmarks use"
        }
    }
}

/// Where `program` is: itself when it names a path (it must exist), else the first
/// match on `PATH`; an error saying how to install it otherwise.
pub fn require(program: &str) -> Result<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::MissingTool {
                program: program.into(),
                hint: "no such file".into(),
            })
        };
    }
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingTool {
            program: program.into(),
            hint: hint(program).into(),
        })
}

/// Full path of the program `name` found on `PATH`.
///
/// # Panics
/// When it is not there, saying how to install it (usually `scripts/setup-host`, as
/// root, which installs every peer the tests use). Tests never skip for a missing tool.
pub fn require_tool(name: &str) -> PathBuf {
    require(name).unwrap_or_else(|e| panic!("{e}"))
}

/// `program args...` as one line, for messages.
pub fn line<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut l = program.to_string();
    for a in args {
        l.push(' ');
        l.push_str(&a.as_ref().to_string_lossy());
    }
    l
}

/// Runs `cmd` to completion (stdin from /dev/null), tracked while it runs, and returns
/// its output whatever its status; an error only when it cannot start.
pub fn output_of(cmd: &mut Command) -> Result<Output> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (child, _guard) = cleanup::spawn(cmd).map_err(|e| Error::Command {
        command: what.clone(),
        detail: format!("cannot start: {e}"),
    })?;
    child.wait_with_output().map_err(|e| Error::Command {
        command: what,
        detail: format!("wait: {e}"),
    })
}

/// Runs `program args...` to completion and returns its output whatever its status.
pub fn output(program: &str, args: &[&str]) -> Result<Output> {
    output_of(Command::new(program).args(args)).map_err(|e| match e {
        Error::Command { detail, .. } => Error::Command {
            command: line(program, args),
            detail,
        },
        e => e,
    })
}

/// Stdout of `out` as text when it succeeded; an error with its status and output
/// otherwise.
pub fn check(command: &str, out: Output) -> Result<String> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(Error::Command {
        command: command.to_string(),
        detail: format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
    })
}

/// Runs `program args...` to completion; its stdout when it succeeded, an error with
/// its status and stderr otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    check(&line(program, args), output(program, args)?)
}

/// Runs `program args...` to completion and returns its stdout as text.
///
/// # Panics
/// When it cannot be started or exits non-zero; the message has the command line, the
/// status and stderr.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{}", chain(&e)))
}

/// A directory under the system temp dir, unique to this process, removed with its
/// contents on drop (and by the signal handler). Paths inside stay short enough for unix
/// sockets (108 bytes).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    _guard: Guard,
}

impl TempDir {
    /// Creates `$TMPDIR/pollswitch-<unique>`.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new() -> TempDir {
        TempDir::create("pollswitch").unwrap_or_else(|e| panic!("create temp dir: {}", chain(&e)))
    }

    /// Creates `$TMPDIR/<prefix>-<unique>`.
    pub fn create(prefix: &str) -> Result<TempDir> {
        let path = env::temp_dir().join(format!("{prefix}-{}", unique("t")));
        let guard = cleanup::track(Item::Dir(path.clone()));
        fs::create_dir(&path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir {
            path,
            _guard: guard,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth a panic during unwinding.
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ok_reports_failure_with_stderr() {
        assert_eq!(run_ok("echo", &["hi"]), "hi\n");
        let err = std::panic::catch_unwind(|| run_ok("sh", &["-c", "echo oops >&2; exit 3"]))
            .expect_err("non-zero exit panics");
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("oops") && msg.contains("exit status: 3") && msg.contains("sh -c"),
            "{msg}"
        );
        let err = run("no-such-program-pollswitch", &[]).unwrap_err();
        assert!(err.to_string().contains("cannot start"), "{err}");
    }

    #[test]
    fn missing_programs_say_how_to_install() {
        let err = require("dpdk-testpmd-nonexistent").unwrap_err().to_string();
        assert!(
            err.contains("not found on PATH") && err.contains("scripts/setup-host"),
            "{err}"
        );
        assert!(require("sh").is_ok());
        assert!(require("/nonexistent/pollswitch").is_err());
        let err = std::panic::catch_unwind(|| require_tool("no-such-tool-pollswitch"))
            .expect_err("missing tool panics");
        assert!(err
            .downcast_ref::<String>()
            .unwrap()
            .contains("scripts/setup-host"));
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = TempDir::new();
        let path = dir.path().to_path_buf();
        assert!(path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pollswitch-"));
        fs::write(dir.join("f"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
