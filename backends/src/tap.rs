//! The `tap` netdev: a Linux TAP device, one [`TapQueue`] per queue.
//!
//! ```text
//!  open /dev/net/tun ─ TUNSETIFF {ifname, IFF_TAP|IFF_NO_PI [|IFF_VNET_HDR] [|IFF_MULTI_QUEUE]}
//!     (creates the interface, or attaches to an existing persistent one)
//!  TUNSETOFFLOAD CSUM|TSO4|TSO6|TSO_ECN[|USO4|USO6]  with the header and GSO buffers:
//!     the kernel hands us 64 KiB super-frames and partial checksums, as it would a
//!     virtio NIC; 0 without: whole, checksummed frames only
//!  script ifname            when `script=` names one ("no" or absent: none)
//!  ... frames: the worker reads (non-blocking, until empty) and writes each frame
//!      itself; a multishot io_uring poll wakes it when the tap has frames ...
//!      (io_uring's own reads and writes of a tap go to kernel worker threads, since
//!      the tap driver cannot do them without blocking: a thread hop per frame, and
//!      frames reordered between parallel workers — measured, so not used)
//!  downscript ifname        when the port goes away
//! ```
//!
//! With the virtio-net header (`vnet_hdr=on`, the default for a tap pollswitch opens, as
//! QEMU's) each frame carries 10 bytes of offload metadata. With offloads on (the
//! pool has GSO buffers: `-gso-buffers`, default 256) a frame that needs one is marked
//! [`switch::Pkt::offload`] with its header kept in front of it: another tap takes it
//! as it is, any other destination gets it cut and checksummed by the forwarder
//! (`switch::offload`). QEMU turns a tap's offloads off when its peer is a hub; we
//! keep them, which is what lets a TCP stream cross the switch in 64 KiB frames.
//! Frames without offload go with a zero header. `vnet_hdr=off` (or `-gso-buffers 0`)
//! turns offloads off: then a frame announcing one is dropped as `offload`.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use crate::error::Error;
use crate::io::{DgramConfig, DgramIo, DgramPort, RxMode, TxMode};
use crate::sys::{self, IfReq};

/// Length of `struct virtio_net_hdr` (no mergeable buffers): the pool's, since an
/// offload frame keeps the tap's header in front of it.
pub use switch::pool::VNET_HDR_LEN;

/// A tap netdev's settings, resolved (descriptors already taken over).
#[derive(Debug, Default)]
pub struct TapConfig {
    /// Interface name; empty lets the kernel choose (`tapN`).
    pub ifname: Option<String>,
    /// Already open tap descriptors (`fd=` / `fds=`), instead of opening by name.
    pub fds: Vec<OwnedFd>,
    /// Script run with the interface name once it exists.
    pub script: Option<String>,
    /// Script run with the interface name when the port goes away.
    pub downscript: Option<String>,
    /// Kernel send buffer for the device (TUNSETSNDBUF).
    pub sndbuf: Option<u64>,
    /// Whether frames carry a virtio-net header (`None`: yes, for a tap we open).
    pub vnet_hdr: Option<bool>,
    /// Whether the switch can take super-frames (its pool has GSO buffers): with a
    /// header, the tap's offloads are turned on.
    pub offloads: bool,
    /// Number of queues (IFF_MULTI_QUEUE when more than 1).
    pub queues: u32,
    /// Busy-poll time.
    pub poll_us: Option<u32>,
}

/// Runs a network script as QEMU does: `script ifname`, failing on a non-zero status.
pub fn run_script(script: &str, ifname: &str) -> Result<(), Error> {
    let status = Command::new(script)
        .arg(ifname)
        .status()
        .map_err(|_| Error::Script {
            script: script.to_string(),
            status: -1,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Script {
            script: script.to_string(),
            status: status.code().unwrap_or(-1),
        })
    }
}

/// "no" and absent both mean: no script.
fn script_of(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty() && *s != "no")
}

/// What stays behind the queues of one tap netdev: its name, and the down-script to
/// run when the last queue is dropped.
#[derive(Debug)]
pub struct TapDevice {
    /// The interface name.
    pub ifname: String,
    /// Whether we created the interface (it disappears with its last descriptor).
    pub created: bool,
    downscript: Option<String>,
}

impl Drop for TapDevice {
    fn drop(&mut self) {
        if let Some(s) = &self.downscript {
            if let Err(e) = run_script(s, &self.ifname) {
                tracing::error!("tap {}: {e}", self.ifname);
            }
        }
    }
}

/// One queue of a tap device.
pub type TapQueue = DgramPort<std::sync::Arc<TapDevice>>;

fn open_queue(ifname: &str, flags: libc::c_short) -> Result<(OwnedFd, String), Error> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(Error::OpenTun)?;
    let fd: OwnedFd = f.into();
    let mut ifr = IfReq::new(ifname, flags);
    sys::ioctl_ifreq(fd.as_fd(), sys::TUNSETIFF, &mut ifr).map_err(|source| Error::TapIoctl {
        ifname: ifname.to_string(),
        what: "TUNSETIFF",
        source,
    })?;
    Ok((fd, ifr.name()))
}

/// Turns the tap's offloads on (checksum, TSO, and USO where the kernel has it) or off.
fn set_offloads(fd: std::os::fd::BorrowedFd<'_>, on: bool) -> std::io::Result<()> {
    if !on {
        return sys::ioctl_val(fd, sys::TUNSETOFFLOAD, 0);
    }
    let tso = sys::TUN_F_CSUM | sys::TUN_F_TSO4 | sys::TUN_F_TSO6 | sys::TUN_F_TSO_ECN;
    match sys::ioctl_val(
        fd,
        sys::TUNSETOFFLOAD,
        tso | sys::TUN_F_USO4 | sys::TUN_F_USO6,
    ) {
        // Before Linux 6.2 the USO bits are refused.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            sys::ioctl_val(fd, sys::TUNSETOFFLOAD, tso)
        }
        r => r,
    }
}

/// Opens (or takes over) a tap device and returns one backend per queue, plus its name.
pub fn open(cfg: TapConfig) -> Result<(Vec<TapQueue>, String), Error> {
    let mut fds = cfg.fds;
    let queues = if fds.is_empty() {
        cfg.queues.max(1)
    } else {
        fds.len() as u32
    };
    let mut vnet = cfg.vnet_hdr.unwrap_or(true);
    let mut ifname = cfg.ifname.clone().unwrap_or_default();
    let mut created = false;
    if fds.is_empty() {
        let exists = !ifname.is_empty() && Path::new("/sys/class/net").join(&ifname).exists();
        let mut flags = sys::IFF_TAP | sys::IFF_NO_PI;
        if vnet {
            flags |= sys::IFF_VNET_HDR;
        }
        if queues > 1 {
            flags |= sys::IFF_MULTI_QUEUE;
        }
        for _ in 0..queues {
            let (fd, name) = open_queue(&ifname, flags)?;
            ifname = name;
            fds.push(fd);
        }
        created = !exists;
    } else {
        // Descriptors passed in: ask the kernel what they are.
        for fd in &fds {
            let mut ifr = IfReq::new("", 0);
            sys::ioctl_ifreq(fd.as_fd(), sys::TUNGETIFF, &mut ifr).map_err(|_| Error::BadFd {
                fd: std::os::fd::AsRawFd::as_raw_fd(fd),
                why: "is not a tap device".into(),
            })?;
            if ifr.flags & sys::IFF_TAP == 0 {
                return Err(Error::BadFd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(fd),
                    why: "is a tun device, not a tap device".into(),
                });
            }
            let has_vnet = ifr.flags & sys::IFF_VNET_HDR != 0;
            if cfg.vnet_hdr == Some(true) && !has_vnet {
                return Err(Error::Config(
                    "vnet_hdr=1 requested, but no kernel support for IFF_VNET_HDR available".into(),
                ));
            }
            vnet = has_vnet;
            ifname = ifr.name();
            sys::set_blocking(fd.as_fd()).map_err(|source| Error::TapIoctl {
                ifname: ifname.clone(),
                what: "F_SETFL",
                source,
            })?;
        }
    }
    let offloads = vnet && cfg.offloads;
    for fd in &fds {
        let ioctl_err = |what: &'static str| {
            let ifname = ifname.clone();
            move |source| Error::TapIoctl {
                ifname,
                what,
                source,
            }
        };
        set_offloads(fd.as_fd(), offloads).map_err(ioctl_err("TUNSETOFFLOAD"))?;
        if vnet {
            let mut sz = VNET_HDR_LEN as libc::c_int;
            sys::ioctl_int(fd.as_fd(), sys::TUNSETVNETHDRSZ, &mut sz)
                .map_err(ioctl_err("TUNSETVNETHDRSZ"))?;
        }
        if let Some(sb) = cfg.sndbuf {
            let mut v = sb.min(i32::MAX as u64) as libc::c_int;
            sys::ioctl_int(fd.as_fd(), sys::TUNSETSNDBUF, &mut v)
                .map_err(ioctl_err("TUNSETSNDBUF"))?;
        }
    }
    if let Some(s) = script_of(&cfg.script) {
        run_script(s, &ifname)?;
    }
    let dev = std::sync::Arc::new(TapDevice {
        ifname: ifname.clone(),
        created,
        downscript: script_of(&cfg.downscript).map(str::to_string),
    });
    let dcfg = DgramConfig {
        rx: RxMode::ReadSync,
        tx: TxMode::WriteSync,
        vnet_hdr_len: if vnet { VNET_HDR_LEN } else { 0 },
        dest: None,
        ignore_src: None,
        gso: false,
        offload: offloads,
        gro: false,
    };
    let qs = fds
        .into_iter()
        .map(|fd| {
            DgramPort::new(
                "tap",
                DgramIo::new(fd, dcfg.clone()),
                cfg.poll_us,
                dev.clone(),
            )
        })
        .collect();
    Ok((qs, ifname))
}
