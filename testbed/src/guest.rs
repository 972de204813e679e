//! A real guest for the tests: the Debian kernel and busybox initramfs that
//! `scripts/guest-image` builds, booted under QEMU TCG with the caller's netdevs and
//! devices (virtio-net), running one shell script and reporting its output and exit
//! status on the serial console.
//!
//! ```text
//!  Guest::spawn(netns, args, script)
//!    script ──► TempDir/script ──-fw_cfg name=opt/pollswitch/script──► guest /init
//!    qemu-system-x86_64 -accel tcg -M pc ... -serial stdio ... args
//!       stdout (ttyS0) ─► Process capture ─► wait_for(marker), console()
//!  guest /init: insmod virtio*, "POLLSWITCH-GUEST-READY", sh script,
//!               "POLLSWITCH-GUEST-EXIT rc=N", poweroff -f ──► QEMU exits (-no-reboot)
//!  Guest::finish(timeout) ─► GuestRun { console, exit_code, boot, elapsed }
//! ```
//!
//! Booting takes about 5 to 7 s here (TCG: this machine's KVM cannot run a guest). A
//! test that only needs the result calls [`Guest::run`]; one that changes the peer while
//! the guest runs (kills or restarts the switch, pings the guest from outside) calls
//! [`Guest::spawn`], waits for a line its script prints with [`Guest::wait_for`], and
//! collects the result with [`Guest::finish`]. vhost-user needs the guest's memory
//! shared with the backend: add [`shared_memory_args`].

use std::env;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cmd::{require, TempDir};
use crate::error::{Error, Result};
use crate::process::{Launch, Process};
use crate::{wait_until, Netns};

/// The environment variable naming the directory `scripts/guest-image` built into.
pub const GUEST_DIR_ENV: &str = "POLLSWITCH_GUEST_DIR";
/// Where `scripts/guest-image` builds when [`GUEST_DIR_ENV`] is not set.
pub const DEFAULT_GUEST_DIR: &str = "/var/cache/pollswitch/guest";
/// The line the guest's /init prints once its modules are loaded, before the script.
pub const READY_MARKER: &str = "POLLSWITCH-GUEST-READY";
/// What the guest's /init prints after the script, followed by its exit status.
pub const EXIT_MARKER: &str = "POLLSWITCH-GUEST-EXIT rc=";
/// The fw_cfg name the guest's /init reads its script from.
pub const SCRIPT_FW_CFG: &str = "opt/pollswitch/script";
/// Guest memory (`-m`), MiB; [`shared_memory_args`] backs exactly this much.
pub const MEMORY_MB: u32 = 256;
/// The kernel command line: the console on the first serial port, few kernel messages,
/// and a panic (init failing) reboots at once, which `-no-reboot` turns into an exit.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1";
/// How long QEMU may take to exit once the guest printed its exit status.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(10);

/// The kernel and initramfs a guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// `vmlinuz`.
    pub kernel: PathBuf,
    /// `initrd.gz`.
    pub initrd: PathBuf,
}

impl GuestImage {
    /// The directory the image is looked for in: `$POLLSWITCH_GUEST_DIR`, else
    /// [`DEFAULT_GUEST_DIR`].
    pub fn dir() -> PathBuf {
        env::var_os(GUEST_DIR_ENV)
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_GUEST_DIR), PathBuf::from)
    }

    /// The image in [`GuestImage::dir`].
    pub fn find() -> Result<GuestImage> {
        GuestImage::at(&GuestImage::dir())
    }

    /// The image in `dir`: an error naming the first file missing.
    pub fn at(dir: &Path) -> Result<GuestImage> {
        let image = GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.gz"),
        };
        for path in [&image.kernel, &image.initrd] {
            if !path.is_file() {
                return Err(Error::MissingGuestImage { path: path.clone() });
            }
        }
        Ok(image)
    }
}

/// The arguments that back the guest's memory with a shared memfd, as vhost-user
/// backends need to map it: `-object memory-backend-memfd,...,share=on -numa node,...`.
pub fn shared_memory_args() -> Vec<String> {
    vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={MEMORY_MB}M,share=on"),
        "-numa".into(),
        "node,memdev=mem".into(),
    ]
}

/// `-netdev SPEC -device virtio-net-pci,netdev=ID,mac=MAC,romfile=`: the guest's eth0 on
/// netdev `spec` (which must carry `id=`). No option ROM: the guest boots from
/// `-kernel`, so iPXE would only cost time.
pub fn virtio_net_args(spec: &str, mac: &str) -> Result<Vec<String>> {
    let id = spec
        .split(',')
        .find_map(|kv| kv.strip_prefix("id="))
        .ok_or_else(|| Error::Invalid(format!("netdev spec without id=: {spec:?}")))?;
    Ok(vec![
        "-netdev".into(),
        spec.to_string(),
        "-device".into(),
        format!("virtio-net-pci,netdev={id},mac={mac},romfile="),
    ])
}

/// What a guest's run gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRun {
    /// The whole serial console (BIOS, kernel, init, the script), carriage returns and
    /// terminal escapes removed.
    pub console: String,
    /// The script's exit status.
    pub exit_code: i32,
    /// From QEMU's start until [`READY_MARKER`] appeared: the boot.
    pub boot: Duration,
    /// From QEMU's start until it exited.
    pub elapsed: Duration,
}

impl GuestRun {
    /// What the script printed: the console between the [`READY_MARKER`] line and the
    /// [`EXIT_MARKER`] (kernel messages printed meanwhile included).
    pub fn output(&self) -> &str {
        script_output(&self.console)
    }
}

/// What waiting on a test guest's console takes, shared by [`Guest`] (a QEMU of ours)
/// and [`crate::libvirt::GuestDomain`]: the ready line times the boot, and the script's
/// markers come after it.
pub trait Console {
    /// When the guest was started, and its boot time once the ready line was seen.
    fn clock(&mut self) -> (Instant, &mut Option<Duration>);

    /// Waits up to `timeout` for `marker` on the console; an error with what the guest
    /// said when it stops first or the time passes.
    fn wait_marker(&mut self, marker: &str, timeout: Duration) -> Result<()>;

    /// Waits until the console shows `marker` (a line the script prints); an error with
    /// the console when the guest stops first or `timeout` passes (it keeps running
    /// then). Notes the boot time on the way.
    fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // The script's lines come after the ready line: waiting for it first costs
        // nothing and times the boot.
        self.wait_ready(timeout)?;
        self.wait_marker(marker, deadline.saturating_duration_since(Instant::now()))
    }

    /// Waits until the guest's /init printed [`READY_MARKER`] (modules loaded, about to
    /// run the script); how long the boot took.
    fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        if let (_, Some(boot)) = self.clock() {
            return Ok(*boot);
        }
        self.wait_marker(READY_MARKER, timeout)?;
        let (started, boot) = self.clock();
        let b = started.elapsed();
        *boot = Some(b);
        Ok(b)
    }
}

impl Console for Guest {
    fn clock(&mut self) -> (Instant, &mut Option<Duration>) {
        (self.started, &mut self.boot)
    }

    fn wait_marker(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        if self.proc.wait_for(marker, timeout).is_ok() {
            return Ok(());
        }
        Err(match self.proc.try_wait() {
            Some(status) => self.failed(&format!("QEMU exited ({status}) before {marker:?}")),
            None => self.failed(&format!("no {marker:?} within {timeout:?}")),
        })
    }
}

/// A guest under QEMU, killed on drop with its temp files removed.
pub struct Guest {
    // Dropped in this order: the process, then the directory holding its script.
    proc: Process,
    dir: TempDir,
    started: Instant,
    boot: Option<Duration>,
}

impl Guest {
    /// Boots the image in [`GuestImage::dir`] with `args` (netdevs, devices: see
    /// [`virtio_net_args`], [`shared_memory_args`]) after the fixed ones, inside `netns`
    /// when given, to run `script` with `/bin/sh`; returns at once.
    pub fn spawn<S: AsRef<OsStr>>(
        netns: Option<&Netns>,
        args: &[S],
        script: &str,
    ) -> Result<Guest> {
        Guest::spawn_image(&GuestImage::find()?, netns, args, script)
    }

    /// Like [`Guest::spawn`], booting `image`.
    pub fn spawn_image<S: AsRef<OsStr>>(
        image: &GuestImage,
        netns: Option<&Netns>,
        args: &[S],
        script: &str,
    ) -> Result<Guest> {
        let qemu = require("qemu-system-x86_64")?;
        let dir = TempDir::create("pollswitch-guest")?;
        let path = dir.join("script");
        // QEMU's option parser splits at commas (a doubled one escapes it); refuse
        // rather than pass a path QEMU would read as another option.
        for p in [&path, &image.kernel, &image.initrd] {
            if p.to_string_lossy().contains(',') {
                return Err(Error::Invalid(format!(
                    "guest file {} has a comma in its path",
                    p.display()
                )));
            }
        }
        fs::write(&path, script).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        let launch = Launch::new("guest", &qemu)
            .args(["-accel", "tcg", "-M", "pc", "-m"])
            .arg(MEMORY_MB.to_string())
            .args(["-smp", "1", "-nodefaults", "-nographic", "-serial", "stdio"])
            .args(["-no-reboot", "-kernel"])
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", KERNEL_CMDLINE, "-fw_cfg"])
            .arg(format!("name={SCRIPT_FW_CFG},file={}", path.display()))
            .args(args)
            .netns(netns.map(|n| n.name.as_str()));
        let started = Instant::now();
        let proc = launch.spawn()?;
        Ok(Guest {
            proc,
            dir,
            started,
            boot: None,
        })
    }

    /// Boots a guest (as [`Guest::spawn`]) and waits up to `timeout` for its script to
    /// finish and QEMU to exit (as [`Guest::finish`]).
    pub fn run<S: AsRef<OsStr>>(
        netns: Option<&Netns>,
        args: &[S],
        script: &str,
        timeout: Duration,
    ) -> Result<GuestRun> {
        Guest::spawn(netns, args, script)?.finish(timeout)
    }

    /// Says that this QEMU takes over a guest that booted in another (it was started
    /// with `-incoming`, for a live migration): its console begins in the middle of the
    /// script, so the waits below do not look for the ready line.
    pub fn migrated_in(&mut self) {
        self.boot.get_or_insert(Duration::ZERO);
    }

    /// Waits up to `timeout` (from now) for the script to finish and QEMU to power off;
    /// the console and the script's exit status. On a timeout QEMU is killed and the
    /// error carries the console.
    pub fn finish(mut self, timeout: Duration) -> Result<GuestRun> {
        let deadline = Instant::now() + timeout;
        let waited = self.wait_ready(timeout).and_then(|boot| {
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_marker(EXIT_MARKER, left).map(|()| boot)
        });
        let boot = match waited {
            Ok(boot) => boot,
            Err(e) => {
                self.proc.kill();
                return Err(match e {
                    Error::Guest { what, .. } => self.failed(&format!("{what}; QEMU killed")),
                    e => e,
                });
            }
        };
        // The exit status follows the marker on its line; the power-off ends QEMU, and
        // once its pipes close every byte of the console is in.
        if !wait_until(POWEROFF_TIMEOUT, || !self.proc.running()) {
            self.proc.kill();
            return Err(self.failed(&format!(
                "printed its exit status but QEMU still ran {POWEROFF_TIMEOUT:?} later (killed)"
            )));
        }
        let elapsed = self.started.elapsed();
        self.proc.wait_closed(Duration::from_secs(2));
        let status = self.proc.try_wait();
        if !status.is_some_and(|s| s.success()) {
            return Err(self.failed(&format!("QEMU exited with {status:?} after the script")));
        }
        let console = self.console();
        let Some(exit_code) = exit_code(&console) else {
            return Err(self.failed("no exit status after the end marker"));
        };
        Ok(GuestRun {
            console,
            exit_code,
            boot,
            elapsed,
        })
    }

    /// The serial console so far, carriage returns and terminal escapes removed.
    pub fn console(&self) -> String {
        clean_console(&self.proc.stdout())
    }

    /// What QEMU itself wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// The boot time, once a wait saw [`READY_MARKER`].
    pub fn boot(&self) -> Option<Duration> {
        self.boot
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// QEMU's command line.
    pub fn command(&self) -> &str {
        self.proc.command()
    }

    /// A temp directory removed with the guest: a place for the sockets its netdevs use.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether QEMU still runs.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// Kills QEMU (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// An error saying `what` happened, with QEMU's command, its stderr and the console.
    pub fn failed(&self, what: &str) -> Error {
        Error::Guest {
            what: what.to_string(),
            command: self.proc.command().to_string(),
            stderr: self.proc.stderr(),
            console: self.console(),
        }
    }
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest")
            .field("pid", &self.proc.pid())
            .field("dir", &self.dir.path())
            .field("boot", &self.boot)
            .finish_non_exhaustive()
    }
}

/// `text` without carriage returns and terminal escape sequences (SeaBIOS clears the
/// screen and sets modes; Linux ends serial lines with CRLF).
pub fn clean_console(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            // ESC and the character after it (ESC c: reset); after ESC [ (CSI) also the
            // parameters, up to a final byte in @..~.
            '\u{1b}' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The exit status after the last [`EXIT_MARKER`] in `console`, when its digits are
/// complete (a line end follows).
pub fn exit_code(console: &str) -> Option<i32> {
    let (_, rest) = console.rsplit_once(EXIT_MARKER)?;
    let (digits, _) = rest.split_once('\n')?;
    digits.trim().parse().ok()
}

/// The part of `console` between the [`READY_MARKER`] line and the [`EXIT_MARKER`]
/// (to the end when the script has not finished; empty before the ready line).
pub fn script_output(console: &str) -> &str {
    let Some(at) = console.find(READY_MARKER) else {
        return "";
    };
    let after = &console[at..];
    let after = after.split_once('\n').map_or("", |(_, rest)| rest);
    match after.rfind(EXIT_MARKER) {
        Some(end) => &after[..end],
        None => after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: Duration = Duration::from_secs(60);

    #[test]
    fn console_text_loses_escapes_and_carriage_returns() {
        let raw = "\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS\r\nBooting from ROM..\u{1b}c\
                   \u{1b}[?7l\u{1b}[2JPOLLSWITCH-GUEST-READY kernel=6.1\r\nhi\r\n";
        assert_eq!(
            clean_console(raw),
            "SeaBIOS\nBooting from ROM..POLLSWITCH-GUEST-READY kernel=6.1\nhi\n"
        );
    }

    #[test]
    fn exit_status_and_script_output_are_found() {
        let console = "BIOS\nPOLLSWITCH-GUEST-READY kernel=x\nline 1\nline 2\n\
                       POLLSWITCH-GUEST-EXIT rc=42\n[ 2.1] reboot: Power down\n";
        assert_eq!(exit_code(console), Some(42));
        assert_eq!(script_output(console), "line 1\nline 2\n");
        // The digits are not complete until their line ends.
        assert_eq!(exit_code("POLLSWITCH-GUEST-EXIT rc=4"), None);
        assert_eq!(exit_code("no marker\n"), None);
        assert_eq!(script_output("BIOS only\n"), "");
        assert_eq!(
            script_output("POLLSWITCH-GUEST-READY k\nstill running\n"),
            "still running\n"
        );
    }

    #[test]
    fn a_missing_image_is_an_error_saying_how_to_build_it() {
        let dir = TempDir::new();
        let err = GuestImage::at(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("vmlinuz") && err.contains("scripts/guest-image"),
            "{err}"
        );
        fs::write(dir.join("vmlinuz"), b"").unwrap();
        let err = GuestImage::at(dir.path()).unwrap_err().to_string();
        assert!(err.contains("initrd.gz"), "{err}");
        fs::write(dir.join("initrd.gz"), b"").unwrap();
        let image = GuestImage::at(dir.path()).unwrap();
        assert_eq!(image.kernel, dir.join("vmlinuz"));
        assert!(virtio_net_args("user", "02:00:00:00:00:01").is_err());
        assert_eq!(
            virtio_net_args("user,id=n0", "02:00:00:00:00:01").unwrap()[3],
            "virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01,romfile="
        );
    }

    #[test]
    fn a_guest_runs_its_script_and_reports_output_and_status() {
        // Shared memory too: QEMU must accept what vhost-user ports will need.
        let mut args = shared_memory_args();
        args.extend(virtio_net_args("user,id=n0,restrict=on", "02:50:53:00:00:42").unwrap());
        let script = "echo out-$((6 * 7))\necho err >&2\nip -o link show eth0\nexit 3\n";
        let run = Guest::run(None, &args, script, BOOT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.exit_code, 3, "{}", run.console);
        let out = run.output();
        assert!(out.contains("out-42\n") && out.contains("err\n"), "{out}");
        assert!(
            out.contains("eth0:") && out.contains("02:50:53:00:00:42"),
            "the guest has its virtio-net eth0: {out}"
        );
        assert!(run.boot > Duration::ZERO && run.boot <= run.elapsed);
        eprintln!(
            "guest booted in {:.1?}, ran in {:.1?}",
            run.boot, run.elapsed
        );
    }

    #[test]
    fn a_guest_in_a_namespace_pings_its_tap_there() {
        let ns = Netns::new();
        let tap = crate::unique("pgq");
        let spec = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
        let args = virtio_net_args(&spec, "02:50:53:00:00:44").unwrap();
        // The tap gets its address once QEMU made it: ping until the path works.
        let script = "ip addr add 10.81.0.2/24 dev eth0\nip link set eth0 up\n\
                      i=0; until ping -c 1 -W 1 10.81.0.1 >/dev/null; do\n\
                      i=$((i + 1)); [ $i -lt 30 ] || exit 9; done\n\
                      ping -c 3 -W 2 10.81.0.1\n";
        let g = Guest::spawn(Some(&ns), &args, script).unwrap_or_else(|e| panic!("{e}"));
        assert!(g.command().contains(&ns.name), "{}", g.command());
        assert!(
            ns.wait_links(std::slice::from_ref(&tap), BOOT),
            "QEMU made no tap {tap} in netns {}",
            ns.name
        );
        ns.ip(&["addr", "add", "10.81.0.1/24", "dev", &tap])
            .unwrap();
        ns.ip(&["link", "set", "dev", &tap, "up"]).unwrap();
        let run = g.finish(BOOT).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            run.output()
                .contains("3 packets transmitted, 3 packets received"),
            "{}",
            run.console
        );
        assert_eq!(run.exit_code, 0, "{}", run.console);
    }

    #[test]
    fn a_guest_past_its_timeout_is_killed_with_its_console() {
        let mut g = Guest::spawn(None, &[] as &[&str], "echo waiting-forever\nsleep 600\n")
            .unwrap_or_else(|e| panic!("{e}"));
        g.wait_for("waiting-forever", BOOT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(g.boot().is_some());
        let pid = g.pid();
        let err = g.finish(Duration::from_millis(200)).unwrap_err();
        assert!(!crate::process::alive(pid), "QEMU was killed");
        let Error::Guest { what, console, .. } = &err else {
            panic!("a guest error: {err}");
        };
        assert!(
            what.contains("POLLSWITCH-GUEST-EXIT") && what.contains("killed"),
            "{what}"
        );
        assert!(console.contains("waiting-forever"), "{console}");
    }

    #[test]
    fn a_guest_whose_qemu_fails_says_so_with_its_stderr() {
        let mut g = Guest::spawn(None, &["-device", "nosuch-nic"], "true")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = g.wait_for("never", BOOT).unwrap_err().to_string();
        assert!(
            err.contains("QEMU exited") && err.contains("nosuch-nic"),
            "{err}"
        );
    }
}
