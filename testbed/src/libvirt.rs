//! libvirt the way VM hosts run it: Debian's `libvirtd` (9.0) driving QEMU as
//! `libvirt-qemu:kvm`, with domains defined from XML. [`Libvirt::ensure`] makes sure
//! `virtlogd` and `libvirtd` run (this machine has no systemd to start them), a
//! [`Domain`] is a defined and started domain that is destroyed and undefined when
//! dropped (or by the signal handler), and a [`GuestDomain`] boots the test guest
//! (`scripts/guest-image`) as such a domain, the libvirt twin of [`crate::Guest`].
//!
//! ```text
//!  Libvirt::ensure()   virtlogd-sock accepts? ── no ─► virtlogd -d
//!                      virsh version answers? ── no ─► libvirtd -d    (logs: LOG_DIR)
//!                      └─ both within DAEMON_TIMEOUT, or an error with their logs
//!  GuestDomain::start(lv, image, script, devices)
//!     TempDir/ script, console.log, NAME.xml ──► Domain::start: track, define, start
//!     libvirtd ─► qemu-system-x86_64 (libvirt-qemu) -fw_cfg ... -serial file ─► console.log
//!     finish() ─► GuestRun (same markers as Guest)    drop ─► destroy, undefine, rm log
//! ```
//!
//! The daemons are host services, shared by every test process (and by anyone else on
//! the machine): they are started when missing and then left running, as systemd would
//! leave them, never tracked for removal. Everything a test makes with them (domains,
//! their XML, console and QEMU log files) is removed.
//!
//! QEMU runs as [`QEMU_USER`], not root: every file it opens itself must be reachable by
//! that user. The kernel, initramfs and script are world-readable in world-searchable
//! directories; the serial console file is opened by libvirtd and passed in; a
//! vhost-user socket QEMU connects to must be handed over with [`grant_qemu`].

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cleanup::{self, Guard, Item};
use crate::cmd::{check, line, output_of, require, run, TempDir};
use crate::error::{Error, Result};
use crate::guest::{
    clean_console, exit_code, Console, GuestImage, GuestRun, EXIT_MARKER, KERNEL_CMDLINE,
    MEMORY_MB, SCRIPT_FW_CFG,
};
use crate::wait_until;

/// The connection every call uses: the system QEMU driver (QEMU as [`QEMU_USER`]).
pub const URI: &str = "qemu:///system";
/// The user libvirt runs QEMU as (Debian's default for `qemu:///system`).
pub const QEMU_USER: &str = "libvirt-qemu";
/// virtlogd's socket: it listens here once it runs.
pub const VIRTLOGD_SOCK: &str = "/run/libvirt/virtlogd-sock";
/// Where the daemons this module starts write their logs (warnings and errors).
pub const LOG_DIR: &str = "/var/log/libvirt";
/// Where libvirtd writes each domain's QEMU command line and stderr (`NAME.log`).
pub const QEMU_LOG_DIR: &str = "/var/log/libvirt/qemu";
/// How long the daemons may take to answer once started (they take ~0.2 s here).
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a guest domain may take to stop once its script printed its exit status.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a wait for the console asks libvirtd whether the domain still runs.
const STATE_EVERY: Duration = Duration::from_millis(500);
/// Lines of a log an error shows.
const LOG_LINES: usize = 30;

/// Serialises starting the daemons between this process's threads. Other processes
/// need no lock: a second `libvirtd -d` fails on the first one's pid file and exits,
/// and both then see the first one answer.
static START: Mutex<()> = Mutex::new(());

/// A libvirtd that answered on [`URI`].
#[derive(Debug, Clone)]
pub struct Libvirt {
    virsh: PathBuf,
    version: String,
}

impl Libvirt {
    /// Makes sure virtlogd and libvirtd run: starts each (`-d`, logging to
    /// [`LOG_DIR`]) when it does not answer, and waits up to [`DAEMON_TIMEOUT`] for it.
    /// An error with the daemon's log when it does not come up.
    pub fn ensure() -> Result<Libvirt> {
        let _one = START.lock().unwrap_or_else(|p| p.into_inner());
        let virsh = require("virsh")?;
        // libvirtd connects to virtlogd for every domain it starts (QEMU's stderr goes
        // through it): it must run first.
        if UnixStream::connect(VIRTLOGD_SOCK).is_err() {
            let started = start_daemon("virtlogd")?;
            if !wait_until(DAEMON_TIMEOUT, || {
                UnixStream::connect(VIRTLOGD_SOCK).is_ok()
            }) {
                return Err(started.failed(&format!("{VIRTLOGD_SOCK} accepts no connection")));
            }
        }
        let version = |virsh: &Path| {
            let out = output_of(Command::new(virsh).args(["-c", URI, "version"]))?;
            check(&format!("virsh -c {URI} version"), out)
        };
        if let Ok(v) = version(&virsh) {
            return Ok(Libvirt { virsh, version: v });
        }
        let started = start_daemon("libvirtd")?;
        let mut last = None;
        let up = wait_until(DAEMON_TIMEOUT, || {
            last = Some(version(&virsh));
            matches!(last, Some(Ok(_)))
        });
        match last {
            Some(Ok(v)) if up => Ok(Libvirt { virsh, version: v }),
            Some(Err(e)) => Err(started.failed(&e.to_string())),
            _ => Err(started.failed("no answer")),
        }
    }

    /// What `virsh version` said (library, API and hypervisor versions).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Runs `virsh -c URI args...` (tracked) and returns its output whatever its status.
    pub fn virsh_output(&self, args: &[&str]) -> Result<Output> {
        output_of(Command::new(&self.virsh).args(["-c", URI]).args(args))
    }

    /// Runs `virsh -c URI args...`; its stdout, or an error with its status and stderr.
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        let out = self.virsh_output(args)?;
        check(&line(&format!("virsh -c {URI}"), args), out)
    }
}

/// A daemon this module started: what its start command said, and where its log was
/// when it started (what it logged since is what an error shows).
#[derive(Debug)]
struct Started {
    daemon: &'static str,
    report: String,
    log: PathBuf,
    log_from: u64,
}

/// Starts `daemon -d` with its log in [`LOG_DIR`]. The start command's status is not an
/// error by itself: one that lost a race with another starter exits 1 ("Unable to
/// obtain pidfile") while the other one comes up; the wait that follows decides.
fn start_daemon(daemon: &'static str) -> Result<Started> {
    let program = require(daemon)?;
    let log = Path::new(LOG_DIR).join(format!("{daemon}.log"));
    fs::create_dir_all(LOG_DIR).map_err(|source| Error::File {
        path: LOG_DIR.into(),
        source,
    })?;
    let log_from = fs::metadata(&log).map_or(0, |m| m.len());
    // `-d` forks into the background with its stdio on /dev/null: the pipes close when
    // the starting parent exits, once the daemon reported its start-up.
    let out = output_of(
        Command::new(&program)
            .arg("-d")
            .env("LIBVIRT_LOG_OUTPUTS", format!("3:file:{}", log.display())),
    )?;
    let report = format!(
        "`{} -d` exited with {}: {}{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(Started {
        daemon,
        report,
        log,
        log_from,
    })
}

impl Started {
    /// The error for a daemon that did not answer within [`DAEMON_TIMEOUT`] (`what`
    /// says how it was asked), with what it logged since it was started.
    fn failed(&self, what: &str) -> Error {
        let logged = fs::read(&self.log).map_or_else(
            |e| format!("({}: {e})", self.log.display()),
            |all| {
                let from = usize::try_from(self.log_from).map_or(0, |f| f.min(all.len()));
                let text = String::from_utf8_lossy(&all[from..]).into_owned();
                let lines: Vec<&str> = text.lines().collect();
                match lines.len() {
                    0 => "(nothing)".to_string(),
                    n => lines[n.saturating_sub(LOG_LINES)..].join("\n"),
                }
            },
        );
        Error::Libvirt {
            what: format!(
                "{} did not come up within {DAEMON_TIMEOUT:?} ({what}); {}; what it \
                 logged to {}",
                self.daemon,
                self.report,
                self.log.display()
            ),
            log: logged,
        }
    }
}

/// `text` safe inside an XML attribute value or element (either quote style).
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// [`QEMU_USER`]'s uid and primary gid (through NSS, as libvirtd looks it up).
pub fn qemu_ids() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = run("id", &[flag, QEMU_USER])?;
        out.trim().parse().map_err(|_| {
            Error::Invalid(format!(
                "`id {flag} {QEMU_USER}` printed {out:?}, not a number"
            ))
        })
    };
    Ok((id("-u")?, id("-g")?))
}

/// Hands `path` (a unix socket a backend listens on, which QEMU connects to) to
/// [`QEMU_USER`] and its group. Connecting needs write permission on the socket, which
/// a root backend's socket (0755 under umask 022) gives only to root; the owner keeps
/// the socket's own mode, so only QEMU (and root) may connect.
pub fn grant_qemu(path: &Path) -> Result<()> {
    let (uid, gid) = qemu_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| Error::File {
        path: path.to_path_buf(),
        source,
    })
}

/// A domain defined and started on [`URI`]; destroyed and undefined on drop, its QEMU
/// log removed.
#[derive(Debug)]
pub struct Domain {
    lv: Libvirt,
    name: String,
    _guard: Guard,
}

impl Domain {
    /// Defines the domain `xml` describes (whose `<name>` is `name`) from file
    /// `xml_path`, and starts it. Tracked before it is defined, so a signal at any
    /// point removes it. A leftover domain of the same name (a killed run whose pid this
    /// process has now) is removed first. On a failed start the domain is undefined
    /// again and the error has QEMU's log.
    pub fn start(lv: &Libvirt, name: &str, xml: &str, xml_path: &Path) -> Result<Domain> {
        let dom = Domain {
            lv: lv.clone(),
            name: name.to_string(),
            _guard: cleanup::track(Item::Domain(name.to_string())),
        };
        if dom.state().is_some() {
            dom.remove();
        }
        fs::write(xml_path, xml).map_err(|source| Error::File {
            path: xml_path.to_path_buf(),
            source,
        })?;
        lv.virsh(&["define", &xml_path.to_string_lossy()])?;
        if let Err(e) = lv.virsh(&["start", name]) {
            return Err(Error::Libvirt {
                what: format!("start domain {name}: {e}"),
                log: dom.qemu_log(),
            });
        }
        Ok(dom)
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `virsh domstate` (`running`, `shut off`, ...); `None` when there is no such
    /// domain (or libvirtd does not answer).
    pub fn state(&self) -> Option<String> {
        let out = self.lv.virsh_output(&["domstate", &self.name]).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Whether the domain runs (or is paused, starting, ...: anything but shut off).
    pub fn active(&self) -> bool {
        self.state().is_some_and(|s| s != "shut off")
    }

    /// `/var/log/libvirt/qemu/NAME.log`: QEMU's command line and stderr.
    pub fn qemu_log_path(&self) -> PathBuf {
        Path::new(QEMU_LOG_DIR).join(format!("{}.log", self.name))
    }

    /// The whole QEMU log so far (empty when there is none yet).
    pub fn qemu_log(&self) -> String {
        fs::read_to_string(self.qemu_log_path()).unwrap_or_default()
    }

    /// Destroys (when active) and undefines the domain, when it is still there; best
    /// effort.
    fn remove(&self) {
        let Some(state) = self.state() else {
            return;
        };
        if state != "shut off" {
            let _ = self.lv.virsh(&["destroy", &self.name]);
        }
        if let Err(e) = self.lv.virsh(&["undefine", &self.name]) {
            eprintln!("testbed: undefine domain {}: {e}", self.name);
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        self.remove();
        // Named after this process's unique name: nobody else's log.
        let _ = fs::remove_file(self.qemu_log_path());
    }
}

/// The test guest booted as a libvirt domain under TCG: direct kernel boot of
/// [`GuestImage`], the script in fw_cfg ([`SCRIPT_FW_CFG`]), the serial console in a
/// file, memory a shared memfd (vhost-user backends map it; nothing else notices).
#[derive(Debug)]
pub struct GuestDomain {
    // Dropped in this order: the domain, then the directory with its files.
    dom: Domain,
    dir: TempDir,
    console: PathBuf,
    started: Instant,
    boot: Option<Duration>,
}

impl GuestDomain {
    /// Boots `image` as domain `name` with `devices` (XML inside `<devices>`: the
    /// guest's interfaces) to run `script` with `/bin/sh`; returns once libvirtd started
    /// it. `devices` must be valid XML with escaped values ([`xml_escape`]).
    pub fn start(
        lv: &Libvirt,
        image: &GuestImage,
        name: &str,
        script: &str,
        devices: &str,
    ) -> Result<GuestDomain> {
        let dir = TempDir::create("pollswitch-domain")?;
        let script_path = dir.join("script");
        fs::write(&script_path, script).map_err(|source| Error::File {
            path: script_path.clone(),
            source,
        })?;
        let console = dir.join("console.log");
        let xml = domain_xml(name, image, &script_path, &console, devices);
        let started = Instant::now();
        let dom = Domain::start(lv, name, &xml, &dir.join("domain.xml"))?;
        Ok(GuestDomain {
            dom,
            dir,
            console,
            started,
            boot: None,
        })
    }

    /// The domain.
    pub fn domain(&self) -> &Domain {
        &self.dom
    }

    /// The directory holding its script, console and XML (removed with it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The serial console so far, carriage returns and terminal escapes removed.
    pub fn console(&self) -> String {
        clean_console(&String::from_utf8_lossy(
            &fs::read(&self.console).unwrap_or_default(),
        ))
    }

    /// Waits up to `timeout` (from now) for the script to finish and the domain to shut
    /// off (the guest powers off; `on_poweroff` destroy); the console and the script's
    /// exit status. The domain is still defined afterwards (until dropped).
    pub fn finish(&mut self, timeout: Duration) -> Result<GuestRun> {
        let deadline = Instant::now() + timeout;
        let boot = self.wait_ready(timeout)?;
        let left = deadline.saturating_duration_since(Instant::now());
        // The status digits are complete once their line ends.
        self.wait_marker(EXIT_MARKER, left)?;
        let complete = wait_until(left, || exit_code(&self.console()).is_some());
        if !wait_until(POWEROFF_TIMEOUT, || !self.dom.active()) {
            return Err(self.failed(&format!(
                "printed its exit status but still ran {POWEROFF_TIMEOUT:?} later"
            )));
        }
        let elapsed = self.started.elapsed();
        let console = self.console();
        let Some(exit_code) = exit_code(&console).filter(|_| complete) else {
            return Err(self.failed("no exit status after the end marker"));
        };
        Ok(GuestRun {
            console,
            exit_code,
            boot,
            elapsed,
        })
    }

    /// An error saying `what` happened, with QEMU's log (command line, stderr) and the
    /// console.
    pub fn failed(&self, what: &str) -> Error {
        Error::Guest {
            what: format!("domain {}: {what}", self.dom.name()),
            command: format!("virsh -c {URI} start {}", self.dom.name()),
            stderr: self.dom.qemu_log(),
            console: self.console(),
        }
    }
}

impl Console for GuestDomain {
    fn clock(&mut self) -> (Instant, &mut Option<Duration>) {
        (self.started, &mut self.boot)
    }

    fn wait_marker(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut asked = Instant::now();
        loop {
            if self.console().contains(marker) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failed(&format!("no {marker:?} within {timeout:?}")));
            }
            // Asking libvirtd costs a virsh run: now and then.
            if asked.elapsed() >= STATE_EVERY {
                asked = Instant::now();
                if !self.dom.active() && !self.console().contains(marker) {
                    return Err(self.failed(&format!("the domain stopped before {marker:?}")));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The domain XML of a [`GuestDomain`]. `<acpi/>`: without it libvirt 9.0 passes
/// `-no-acpi`, which QEMU 10 no longer has. No USB controller, balloon or option ROMs:
/// the guest uses none, and TCG would only spend time on them.
pub fn domain_xml(
    name: &str,
    image: &GuestImage,
    script: &Path,
    console: &Path,
    devices: &str,
) -> String {
    let path = |p: &Path| xml_escape(&p.to_string_lossy());
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{MEMORY_MB}</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{KERNEL_CMDLINE}</cmdline>
  </os>
  <sysinfo type='fwcfg'>
    <entry name='{SCRIPT_FW_CFG}' file='{script}'/>
  </sysinfo>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
{devices}
    <memballoon model='none'/>
  </devices>
</domain>
",
        name = xml_escape(name),
        kernel = path(&image.kernel),
        initrd = path(&image.initrd),
        script = path(script),
        console = path(console),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_in_the_domain_xml() {
        assert_eq!(xml_escape(r#"a&b<c>'d""#), "a&amp;b&lt;c&gt;&apos;d&quot;");
        let image = GuestImage {
            kernel: "/k/vmlinuz".into(),
            initrd: "/k/initrd.gz".into(),
        };
        let xml = domain_xml(
            "n",
            &image,
            Path::new("/t/it's"),
            Path::new("/t/c.log"),
            "<x/>",
        );
        assert!(xml.contains("file='/t/it&apos;s'"), "{xml}");
        assert!(xml.contains("<kernel>/k/vmlinuz</kernel>"), "{xml}");
        assert!(xml.contains("<acpi/>") && xml.contains("\n<x/>\n"), "{xml}");
    }

    fn listed(lv: &Libvirt, name: &str) -> bool {
        let all = lv.virsh(&["list", "--all", "--name"]).unwrap();
        all.lines().any(|l| l.trim() == name)
    }

    #[test]
    fn a_domain_that_cannot_start_is_undefined_and_says_why() {
        let lv = Libvirt::ensure().unwrap_or_else(|e| panic!("{e}"));
        assert!(lv.version().contains("QEMU"), "{}", lv.version());
        let image = GuestImage::find().unwrap_or_else(|e| panic!("{e}"));
        let name = crate::unique("pslv");
        // Nobody listens there: QEMU's chardev cannot connect and QEMU exits.
        let nic = "<interface type='vhostuser'><mac address='02:50:53:00:00:47'/>\
                   <source type='unix' path='/nonexistent/pollswitch.sock' mode='client'/>\
                   <model type='virtio'/></interface>";
        let err = GuestDomain::start(&lv, &image, &name, "true", nic).unwrap_err();
        let Error::Libvirt { what, log } = &err else {
            panic!("a libvirt error: {err}");
        };
        assert!(
            what.contains(&name) && what.contains("/nonexistent/pollswitch.sock"),
            "{err}"
        );
        assert!(log.contains("qemu-system-x86_64"), "QEMU's command: {err}");
        assert!(!listed(&lv, &name), "{name} is undefined again");
    }

    #[test]
    fn a_tracked_domain_is_removed_by_the_cleanup() {
        let lv = Libvirt::ensure().unwrap_or_else(|e| panic!("{e}"));
        let image = GuestImage::find().unwrap_or_else(|e| panic!("{e}"));
        let name = crate::unique("pslv");
        let mut g = GuestDomain::start(&lv, &image, &name, "echo up-$((6 * 7))\nsleep 600\n", "")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(g.dir().join("domain.xml").is_file());
        g.wait_for("up-42", Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(g.domain().active() && listed(&lv, &name));
        // What the signal handler does, on a registry of its own.
        let mut reg = cleanup::Registry::new();
        reg.add(Item::Domain(name.clone()));
        reg.add(Item::Domain(crate::unique("pslv")));
        let done = reg.clean();
        assert_eq!(done.domains, 1, "{done}");
        assert!(!listed(&lv, &name), "{name} destroyed and undefined");
        let log = g.domain().qemu_log_path();
        drop(g);
        assert!(!log.exists(), "{} removed", log.display());
    }
}
