//! The protocol side of a vhost-user port: one thread ("vhost-ID") per port serves its
//! socket with rust-vmm's `vhost` message layer, keeps the device state the frontend
//! sets (features, memory table, vring addresses, kick and call eventfds), and starts
//! and stops each queue pair on its worker.
//!
//! ```text
//!  server: listen ─ accept ─┐            client: connect (again every `reconnect`) ─┐
//!                           ▼                                                         ▼
//!  poll(stop, socket, kicks) ── message ──► quiesce the pairs it touches (Stop, wait
//!        │                                 for their positions) ─ change ─ reconcile
//!        └─ a kick ──► wake that pair's worker       (Start every pair that is ready)
//!  disconnect: every pair stopped, guest memory unmapped, fds closed, carrier down
//! ```
//!
//! "Quiesce, change, reconcile" is the one rule: no ring is changed while a worker uses
//! it, whatever order the frontend sends its messages in. A ring is ready once it has
//! a size, addresses inside the memory table and a kick (its start, as the spec says),
//! and is enabled (rings start disabled once protocol features are acked); a
//! `GET_VRING_BASE` stops it and answers with where it stopped.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Backend as ReqBackend, BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::guest::{DirtyLog, GuestMem, RingAddrs};
use super::vring::{Mailbox, Memory, Order, QueuePair, Ring, Session, Stopped};
use super::VhostUserConfig;
use crate::error::Error;
use crate::nic::NicHandle;
use crate::sys;

/// The largest ring a frontend may ask for (virtio's limit).
const MAX_RING: u16 = 32768;
/// How long the thread waits for a worker to hand a pair back.
const STOP_WAIT: Duration = Duration::from_millis(50);
/// A frontend that sends half a message is dropped after this long.
const MSG_TIMEOUT: Duration = Duration::from_secs(5);
/// The thread's longest sleep in poll (the stop eventfd wakes it sooner).
const TICK_MS: i32 = 1000;

// The vhost-user message header (request, flags, size) and what we serve ourselves.
const HDR_LEN: usize = 12;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const REQ_SET_VRING_ENABLE: u32 = 18;
const REQ_SEND_RARP: u32 = 19;
const REQ_NET_SET_MTU: u32 = 20;

// Virtio feature bits (virtio 1.2, 5.1.3 and 6).
const F_CSUM: u64 = 1 << 0;
const F_MTU: u64 = 1 << 3;
const F_LOG_ALL: u64 = 1 << 26;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_GUEST_ANNOUNCE: u64 = 1 << 21;
const F_MQ: u64 = 1 << 22;
const F_INDIRECT_DESC: u64 = 1 << 28;
const F_EVENT_IDX: u64 = 1 << 29;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_VERSION_1: u64 = 1 << 32;
const F_STANDBY: u64 = 1 << 62;

/// Feature names for reports, by bit.
const FEATURE_NAMES: &[(u64, &str)] = &[
    (F_CSUM, "csum"),
    (F_MTU, "mtu"),
    (F_LOG_ALL, "log-all"),
    (F_MRG_RXBUF, "mrg-rxbuf"),
    (F_GUEST_ANNOUNCE, "guest-announce"),
    (F_MQ, "mq"),
    (F_INDIRECT_DESC, "indirect-desc"),
    (F_EVENT_IDX, "event-idx"),
    (F_PROTOCOL_FEATURES, "protocol-features"),
    (F_VERSION_1, "version-1"),
    (F_STANDBY, "standby"),
];

/// The names of the features in `bits` (those pollswitch offers).
pub fn feature_names(bits: u64) -> Vec<&'static str> {
    FEATURE_NAMES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|&(_, n)| n)
        .collect()
}

/// What the port tells the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VhostEvent {
    /// The frontend acked VIRTIO_NET_F_STANDBY (QAPI's FAILOVER_NEGOTIATED).
    FailoverNegotiated,
}

/// Where a port's events go: called on its device thread with the netdev id.
pub type Events = Arc<dyn Fn(&str, VhostEvent) + Send + Sync>;

/// A port's state, for stats and logs.
#[derive(Debug, Clone, Default)]
pub struct VhostInfo {
    /// A frontend is connected.
    pub connected: bool,
    /// Connections made so far.
    pub connects: u64,
    /// Virtio features the frontend acked (the last one, once it has gone).
    pub features: u64,
    /// vhost-user protocol features acked (likewise).
    pub protocol: u64,
    /// Queue pairs running on workers now.
    pub running: u16,
    /// Guest memory regions mapped now.
    pub regions: usize,
    /// Why the last connection ended (or the last connect failed).
    pub last_error: Option<String>,
}

/// Ends the device thread when the last pair and the handle are gone.
pub struct Guard {
    stop: File,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = (&self.stop).write(&1u64.to_ne_bytes());
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// The control plane's side of a vhost-user port.
#[derive(Clone)]
pub struct VhostHandle {
    nic: NicHandle,
    info: Arc<Mutex<VhostInfo>>,
    pairs: Vec<Arc<Mailbox>>,
    log: Arc<Mutex<Option<Arc<DirtyLog>>>>,
    _keep: Arc<Guard>,
}

impl VhostHandle {
    /// The NIC side (announce-self injects through it; the guest's MAC shows there).
    pub fn nic(&self) -> NicHandle {
        self.nic.clone()
    }

    /// Partial checksums the port finished for its guest (checksum offload).
    pub fn checksums(&self) -> u64 {
        self.pairs.iter().map(|m| m.checksums()).sum()
    }

    /// Pages marked in the frontend's dirty-page log so far (`None`: it gave none).
    pub fn dirty_pages(&self) -> Option<u64> {
        self.log
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|l| l.marked()))
    }

    /// The port's state now.
    pub fn info(&self) -> VhostInfo {
        self.info.lock().map(|i| i.clone()).unwrap_or_default()
    }
}

/// Opens a vhost-user port: a server's socket listens when this returns; a client has
/// connected, or (with `reconnect`) keeps trying.
pub fn open(
    cfg: VhostUserConfig,
    events: Option<Events>,
) -> Result<(Vec<QueuePair>, VhostHandle), Error> {
    if cfg.queues == 0 || cfg.queues > super::MAX_QUEUES {
        return Err(Error::Config(format!(
            "vhost-user queues={} is outside 1..={}",
            cfg.queues,
            super::MAX_QUEUES
        )));
    }
    let path = cfg.socket.display().to_string();
    let sock_err = |what: &'static str| {
        let addr = path.clone();
        move |source| Error::Socket { what, addr, source }
    };
    let first = if cfg.server {
        // As QEMU's unix server sockets do: a stale socket file is replaced.
        if std::fs::symlink_metadata(&cfg.socket)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        {
            let _ = std::fs::remove_file(&cfg.socket);
        }
        let l = UnixListener::bind(&cfg.socket).map_err(sock_err("bind"))?;
        l.set_nonblocking(true).map_err(sock_err("listen"))?;
        Link::Listener(l)
    } else {
        match UnixStream::connect(&cfg.socket) {
            Ok(s) => Link::Stream(s),
            Err(e) if cfg.reconnect.is_none() => return Err(sock_err("connect")(e)),
            Err(e) => {
                tracing::info!(
                    "vhost-user {}: {path} not there yet ({e}); retrying every {:?}",
                    cfg.name,
                    cfg.reconnect.unwrap_or_default()
                );
                Link::None
            }
        }
    };
    let stop: File = sys::eventfd()
        .map_err(|e| Error::Config(format!("vhost-user {}: eventfd: {e}", cfg.name)))?
        .into();
    let stop_copy = stop
        .try_clone()
        .map_err(|e| Error::Config(format!("vhost-user {}: eventfd: {e}", cfg.name)))?;
    let nic = NicHandle::detached();
    let info = Arc::new(Mutex::new(VhostInfo::default()));
    let mailboxes: Vec<Arc<Mailbox>> = (0..cfg.queues)
        .map(|_| Arc::new(Mailbox::default()))
        .collect();
    let log = Arc::new(Mutex::new(None));
    let dev = Device::new(
        &cfg,
        mailboxes.clone(),
        info.clone(),
        events,
        nic.clone(),
        log.clone(),
    );
    let guard = Arc::new(Guard {
        stop,
        thread: Mutex::new(None),
    });
    let runner = Runner {
        cfg: cfg.clone(),
        dev: Arc::new(Mutex::new(dev)),
        stop: stop_copy,
        link: first,
        info: info.clone(),
    };
    let t = std::thread::Builder::new()
        .name(format!("vhost-{}", cfg.name))
        .spawn(move || runner.run())
        .map_err(|e| Error::Config(format!("vhost-user {}: thread: {e}", cfg.name)))?;
    if let Ok(mut slot) = guard.thread.lock() {
        *slot = Some(t);
    }
    let handles = mailboxes.clone();
    let pairs = mailboxes
        .into_iter()
        .enumerate()
        .map(|(i, mb)| QueuePair::new(mb, nic.clone(), i == 0, guard.clone()))
        .collect();
    Ok((
        pairs,
        VhostHandle {
            nic,
            info,
            pairs: handles,
            log,
            _keep: guard,
        },
    ))
}

enum Link {
    None,
    Listener(UnixListener),
    Stream(UnixStream),
}

/// The thread: finds a frontend, serves it, and starts over.
struct Runner {
    cfg: VhostUserConfig,
    dev: Arc<Mutex<Device>>,
    stop: File,
    link: Link,
    info: Arc<Mutex<VhostInfo>>,
}

impl Runner {
    fn run(mut self) {
        self.serve_all();
        if self.cfg.server {
            // Our socket: it goes with the port, as QEMU's server chardevs' do.
            let _ = std::fs::remove_file(&self.cfg.socket);
        }
    }

    fn serve_all(&mut self) {
        // Serve only once every pair runs on a worker, so every Stop is answered.
        while !self.all_live() {
            if self.wait_stop(10) {
                return;
            }
        }
        let listener = match std::mem::replace(&mut self.link, Link::None) {
            Link::Listener(l) => Some(l),
            Link::Stream(s) => {
                if self.serve(s) {
                    return;
                }
                None
            }
            Link::None => None,
        };
        loop {
            let stream = match &listener {
                Some(l) => match self.accept(l) {
                    Some(s) => s,
                    None => return,
                },
                None => match self.cfg.reconnect {
                    None => {
                        tracing::warn!(
                            "vhost-user {}: the frontend is gone and reconnect is not set; \
                             the port stays down",
                            self.cfg.name
                        );
                        let _ = self.wait_stop(-1);
                        return;
                    }
                    Some(every) => match self.connect(every) {
                        Some(s) => s,
                        None => return,
                    },
                },
            };
            if self.serve(stream) {
                return;
            }
        }
    }

    fn all_live(&self) -> bool {
        self.dev
            .lock()
            .map(|d| d.pairs.iter().all(|m| m.live()))
            .unwrap_or(true)
    }

    /// Waits up to `ms` (-1: for ever) for the stop signal; true when it came.
    fn wait_stop(&self, ms: i32) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        matches!(sys::poll(&mut fds, ms), Ok(n) if n > 0)
    }

    fn accept(&self, l: &UnixListener) -> Option<UnixStream> {
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: self.stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let _ = sys::poll(&mut fds, TICK_MS);
            if fds[0].revents != 0 {
                return None;
            }
            match l.accept() {
                Ok((s, _)) => return Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!("vhost-user {}: accept: {e}", self.cfg.name);
                    if self.wait_stop(100) {
                        return None;
                    }
                }
            }
        }
    }

    fn connect(&self, every: Duration) -> Option<UnixStream> {
        loop {
            match UnixStream::connect(&self.cfg.socket) {
                Ok(s) => return Some(s),
                Err(e) => {
                    if let Ok(mut i) = self.info.lock() {
                        i.last_error = Some(format!("connect {}: {e}", self.cfg.socket.display()));
                    }
                }
            }
            if self.wait_stop(every.as_millis().clamp(1, i32::MAX as u128) as i32) {
                return None;
            }
        }
    }

    /// Serves one frontend until it goes or the port is deleted (then true).
    fn serve(&mut self, s: UnixStream) -> bool {
        let name = self.cfg.name.clone();
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(MSG_TIMEOUT));
        let sock_fd = s.as_raw_fd();
        tracing::info!(
            "vhost-user {name}: frontend connected on {}",
            self.cfg.socket.display()
        );
        if let Ok(mut i) = self.info.lock() {
            i.connected = true;
            i.connects += 1;
        }
        let own = match s.try_clone() {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("vhost-user {name}: a copy of the connection: {e}");
                return false;
            }
        };
        let mut h = BackendReqHandler::from_stream(s, self.dev.clone());
        let pollfd = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // The kick eventfds change only with a message: the poll set is made again
        // after each one, not on every wake-up.
        let mut kicks = Vec::new();
        let mut fds = Vec::new();
        let mut changed = true;
        let stopped = loop {
            if changed {
                kicks = self.dev.lock().map(|d| d.kicks()).unwrap_or_default();
                fds = [self.stop.as_raw_fd(), sock_fd]
                    .into_iter()
                    .chain(kicks.iter().map(|k| k.0.as_raw_fd()))
                    .map(pollfd)
                    .collect();
                changed = false;
            }
            for f in &mut fds {
                f.revents = 0;
            }
            let _ = sys::poll(&mut fds, TICK_MS);
            if fds[0].revents != 0 {
                break true;
            }
            let fault = self
                .dev
                .lock()
                .ok()
                .and_then(|d| d.pairs.iter().find_map(|m| m.take_fault()));
            if let Some(why) = fault {
                break self.dropped(why);
            }
            for (pfd, (f, mb)) in fds[2..].iter().zip(&kicks) {
                if pfd.revents != 0 {
                    drain_eventfd(f);
                    mb.wake();
                }
            }
            if fds[1].revents == 0 {
                continue;
            }
            changed = true;
            match take_own(&self.dev, &own) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => break self.dropped(e.to_string()),
            }
            match h.handle_request() {
                Ok(()) => {}
                Err(VuError::Disconnected) | Err(VuError::PartialMessage) => {
                    tracing::info!("vhost-user {name}: frontend disconnected");
                    self.note(None);
                    break false;
                }
                Err(e) => break self.dropped(e.to_string()),
            }
        };
        drop(h);
        if let Ok(mut d) = self.dev.lock() {
            d.disconnected();
        }
        if let Ok(mut i) = self.info.lock() {
            i.connected = false;
            i.running = 0;
            i.regions = 0;
        }
        stopped
    }

    /// Ends the connection because of `why` (logged and kept for stats); false: the
    /// port goes on.
    fn dropped(&self, why: String) -> bool {
        tracing::warn!("vhost-user {}: dropping the frontend: {why}", self.cfg.name);
        self.note(Some(why));
        false
    }

    fn note(&self, why: Option<String>) {
        if let Ok(mut i) = self.info.lock() {
            i.last_error = why.or_else(|| Some("the frontend closed the connection".into()));
        }
    }
}

/// Takes the next message off the socket when it is one that the `vhost` crate's
/// dispatcher cannot serve, and serves it: `SET_VRING_ENABLE` before
/// `SET_FEATURES` (QEMU sends it while it sets the device up, and the crate refuses
/// it until protocol features are acked in `SET_FEATURES`), `SEND_RARP` and
/// `NET_SET_MTU` (vhost-user-net messages the crate does not know). True when it
/// took one.
fn take_own(dev: &Mutex<Device>, conn: &UnixStream) -> std::io::Result<bool> {
    use std::io::{Read, Write};
    let mut b = [0u8; HDR_LEN];
    match sys::peek(conn.as_fd(), &mut b) {
        Ok(HDR_LEN) => {}
        // Part of a header, nothing, or an error: the crate's dispatcher reads on.
        _ => return Ok(false),
    }
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (code, flags, size) = (word(0), word(4), word(8));
    let early_enable = code == REQ_SET_VRING_ENABLE
        && dev.lock().is_ok_and(|d| d.acked & F_PROTOCOL_FEATURES == 0);
    if !(early_enable || code == REQ_SEND_RARP || code == REQ_NET_SET_MTU) {
        return Ok(false);
    }
    if size != 8 {
        return Err(std::io::Error::other(format!(
            "message {code} with a {size}-byte body (8 expected)"
        )));
    }
    let mut msg = [0u8; HDR_LEN + 8];
    (&*conn).read_exact(&mut msg)?;
    let body = &msg[HDR_LEN..];
    let status: u64 = match dev.lock() {
        Ok(mut d) => match code {
            REQ_SET_VRING_ENABLE => {
                let index = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                let on = u32::from_le_bytes([body[4], body[5], body[6], body[7]]) != 0;
                u64::from(d.set_vring_enable(index, on).is_err())
            }
            REQ_SEND_RARP => {
                let mac = [body[0], body[1], body[2], body[3], body[4], body[5]];
                d.send_rarp(mac);
                0
            }
            _ => {
                let mtu = u64::from_le_bytes(body.try_into().unwrap_or([0; 8]));
                u64::from(!d.set_mtu(mtu))
            }
        },
        Err(_) => 1,
    };
    if flags & FLAG_NEED_REPLY != 0 {
        let mut reply = [0u8; HDR_LEN + 8];
        reply[..4].copy_from_slice(&code.to_le_bytes());
        reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
        reply[8..12].copy_from_slice(&8u32.to_le_bytes());
        reply[12..].copy_from_slice(&status.to_le_bytes());
        (&*conn).write_all(&reply)?;
    }
    Ok(true)
}

/// Empties an eventfd (a guest kick; non-blocking since SET_VRING_KICK).
fn drain_eventfd(mut f: &File) {
    use std::io::Read;
    let mut b = [0u8; 8];
    let _ = f.read(&mut b);
}

/// One vring's settings as the frontend gave them.
#[derive(Default)]
struct RingCfg {
    num: u16,
    /// Frontend virtual addresses (translated through the memory table).
    desc: u64,
    avail: u64,
    used: u64,
    addr_set: bool,
    base: u16,
    kick: Option<File>,
    call: Option<File>,
    /// Kicked (SET_VRING_KICK) and not stopped by GET_VRING_BASE since.
    started: bool,
    enabled: bool,
    /// The used ring's guest address for the dirty log (VHOST_VRING_F_LOG).
    log_used: Option<u64>,
}

impl RingCfg {
    fn clear(&mut self) {
        *self = RingCfg::default();
    }
}

/// One mapping of the memory table: frontend address range → guest address.
struct Map {
    va: u64,
    size: u64,
    gpa: u64,
}

/// The device state the frontend sets.
struct Device {
    name: String,
    pairs: Vec<Arc<Mailbox>>,
    /// Which rings of each pair run now (rx, tx).
    running: Vec<(bool, bool)>,
    offered: u64,
    acked: u64,
    protocol: u64,
    mem: Option<Arc<Memory>>,
    maps: Vec<Map>,
    rings: Vec<RingCfg>,
    info: Arc<Mutex<VhostInfo>>,
    events: Option<Events>,
    /// Where the frontend's RARP announcements go (out of the port, as the guest's).
    nic: NicHandle,
    /// The largest MTU the frontend may set (the switch's maximum frame less a
    /// VLAN-tagged Ethernet header).
    max_mtu: u64,
    /// The frontend's dirty-page log (live migration), and the handle's view of it.
    log: Option<Arc<DirtyLog>>,
    log_shared: Arc<Mutex<Option<Arc<DirtyLog>>>>,
}

fn invalid(what: &'static str) -> VuError {
    VuError::InvalidOperation(what)
}

impl Device {
    fn new(
        cfg: &VhostUserConfig,
        pairs: Vec<Arc<Mailbox>>,
        info: Arc<Mutex<VhostInfo>>,
        events: Option<Events>,
        nic: NicHandle,
        log_shared: Arc<Mutex<Option<Arc<DirtyLog>>>>,
    ) -> Device {
        let mut offered = F_VERSION_1
            | F_CSUM
            | F_MRG_RXBUF
            | F_INDIRECT_DESC
            | F_EVENT_IDX
            | F_GUEST_ANNOUNCE
            | F_MTU
            | F_STANDBY
            | F_LOG_ALL
            | F_PROTOCOL_FEATURES;
        if cfg.queues > 1 {
            offered |= F_MQ;
        }
        let n = pairs.len();
        Device {
            name: cfg.name.clone(),
            running: vec![(false, false); n],
            pairs,
            offered,
            acked: 0,
            protocol: 0,
            mem: None,
            maps: Vec::new(),
            rings: (0..2 * n).map(|_| RingCfg::default()).collect(),
            info,
            events,
            nic,
            max_mtu: cfg.max_frame.saturating_sub(18) as u64,
            log: None,
            log_shared,
        }
    }

    /// VHOST_USER_SEND_RARP: the guest moved here (migration) and cannot announce
    /// itself; we do it for it, as QEMU's own backends would.
    fn send_rarp(&mut self, mac: [u8; 6]) {
        tracing::info!(
            "vhost-user {}: RARP for {} (the frontend asked)",
            self.name,
            switch::wire::mac_to_string(&mac)
        );
        self.nic.learn(mac);
        let _ = self
            .nic
            .inject(switch::wire::arp::rarp_announce(&mac).to_vec());
    }

    /// VHOST_USER_NET_SET_MTU: false when the switch cannot carry frames that large.
    fn set_mtu(&mut self, mtu: u64) -> bool {
        let ok = (68..=self.max_mtu).contains(&mtu);
        if ok {
            tracing::info!("vhost-user {}: the guest's MTU is {mtu}", self.name);
        } else {
            tracing::warn!(
                "vhost-user {}: MTU {mtu} refused (at most {} here: raise -max-frame)",
                self.name,
                self.max_mtu
            );
        }
        ok
    }

    /// The kick eventfds of running transmit rings (copies), with the mailbox to wake.
    fn kicks(&self) -> Vec<(File, Arc<Mailbox>)> {
        self.running
            .iter()
            .enumerate()
            .filter(|(_, r)| r.1)
            .filter_map(|(p, _)| {
                self.rings[2 * p + 1]
                    .kick
                    .as_ref()
                    .and_then(|k| k.try_clone().ok())
                    .map(|k| (k, self.pairs[p].clone()))
            })
            .collect()
    }

    fn ring(&mut self, index: u32) -> VuResult<&mut RingCfg> {
        self.rings
            .get_mut(index as usize)
            .ok_or(invalid("no such vring"))
    }

    /// Stops pair `p` on its worker and keeps where its rings stopped.
    fn quiesce(&mut self, p: usize) {
        if self.running[p] == (false, false) {
            return;
        }
        let mb = &self.pairs[p];
        let (tx, rx) = mpsc::sync_channel(1);
        let mut st = Stopped::default();
        if mb.send(Order::Stop(tx)) {
            loop {
                match rx.recv_timeout(STOP_WAIT) {
                    Ok(s) => {
                        st = s;
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) if mb.live() => {}
                    Err(_) => {
                        // No worker runs the pair (it is being deleted): take the
                        // orders back ourselves.
                        while let Some(o) = mb.take_back() {
                            if let Order::Start(s) = o {
                                st.rx = s.rx.as_ref().map(|r| r.next_avail);
                                st.tx = s.tx.as_ref().map(|r| r.next_avail);
                            }
                        }
                        break;
                    }
                }
            }
        }
        if let Some(b) = st.rx {
            self.rings[2 * p].base = b;
        }
        if let Some(b) = st.tx {
            self.rings[2 * p + 1].base = b;
        }
        self.running[p] = (false, false);
        self.report();
    }

    fn quiesce_all(&mut self) {
        for p in 0..self.pairs.len() {
            self.quiesce(p);
        }
    }

    fn ready(&self, index: usize) -> bool {
        let r = &self.rings[index];
        self.mem.is_some() && r.addr_set && r.num > 0 && r.started && r.enabled
    }

    fn va_to_gpa(&self, va: u64) -> Option<u64> {
        self.maps
            .iter()
            .find(|m| va >= m.va && va - m.va < m.size)
            .map(|m| m.gpa + (va - m.va))
    }

    fn build_ring(&self, index: usize, mem: &Memory) -> Result<Ring, String> {
        let r = &self.rings[index];
        let gpa = |va: u64, what: &str| {
            self.va_to_gpa(va).ok_or_else(|| {
                format!("vring {index}: its {what} address {va:#x} is outside guest memory")
            })
        };
        let addrs = RingAddrs {
            size: r.num,
            desc: gpa(r.desc, "descriptor table")?,
            avail: gpa(r.avail, "available ring")?,
            used: gpa(r.used, "used ring")?,
        };
        // virtio-queue's own checks (sizes, alignment, each part inside memory).
        let mut q = Queue::new(MAX_RING).map_err(|e| e.to_string())?;
        q.try_set_size(r.num)
            .map_err(|e| format!("vring {index}: size {}: {e}", r.num))?;
        q.try_set_desc_table_address(GuestAddress(addrs.desc))
            .map_err(|e| format!("vring {index}: {e}"))?;
        q.try_set_avail_ring_address(GuestAddress(addrs.avail))
            .map_err(|e| format!("vring {index}: {e}"))?;
        q.try_set_used_ring_address(GuestAddress(addrs.used))
            .map_err(|e| format!("vring {index}: {e}"))?;
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(format!("vring {index} does not fit in guest memory"));
        }
        // Where the used index really is (after a reconnect, what we last wrote).
        let used = q
            .used_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|e| format!("vring {index}: used index: {e}"))?;
        let call = match &r.call {
            Some(c) => Some(
                c.try_clone()
                    .map_err(|e| format!("vring {index}: call fd: {e}"))?,
            ),
            None => None,
        };
        Ok(Ring {
            addrs,
            next_avail: r.base,
            next_used: used.0,
            event_idx: self.acked & F_EVENT_IDX != 0,
            call,
            log_used: r.log_used,
        })
    }

    /// Starts every pair whose ready rings differ from what runs.
    fn reconcile(&mut self) {
        for p in 0..self.pairs.len() {
            let want = (self.ready(2 * p), self.ready(2 * p + 1));
            if want == self.running[p] {
                continue;
            }
            self.quiesce(p);
            if want == (false, false) {
                continue;
            }
            let Some(mem) = self.mem.clone() else {
                continue;
            };
            let build = |i: usize, on: bool| -> Result<Option<Ring>, String> {
                if on {
                    self.build_ring(i, &mem).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (rx, tx) = match (build(2 * p, want.0), build(2 * p + 1, want.1)) {
                (Ok(rx), Ok(tx)) => (rx, tx),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!("vhost-user {}: queue pair {p} not started: {e}", self.name);
                    if let Ok(mut i) = self.info.lock() {
                        i.last_error = Some(e);
                    }
                    continue;
                }
            };
            let mrg = self.acked & F_MRG_RXBUF != 0;
            let hdr_len = if mrg || self.acked & F_VERSION_1 != 0 {
                12
            } else {
                10
            };
            let log = match (&self.log, self.acked & F_LOG_ALL != 0) {
                (Some(l), true) => Some(l.clone()),
                _ => None,
            };
            let s = Session {
                log,
                mem: GuestMem::new(mem),
                rx,
                tx,
                hdr_len,
                mrg,
            };
            if self.pairs[p].send(Order::Start(Box::new(s))) {
                self.running[p] = want;
            }
        }
        self.report();
    }

    fn report(&self) {
        if let Ok(mut i) = self.info.lock() {
            // Kept after a disconnect: what the last frontend negotiated.
            if self.acked != 0 {
                i.features = self.acked;
            }
            if self.protocol != 0 {
                i.protocol = self.protocol;
            }
            i.running = self
                .running
                .iter()
                .filter(|r| **r != (false, false))
                .count() as u16;
            i.regions = self.maps.len();
        }
    }

    /// The frontend went away: every pair stops, memory and fds are let go.
    fn disconnected(&mut self) {
        self.quiesce_all();
        self.reset_state();
    }

    fn reset_state(&mut self) {
        for r in &mut self.rings {
            r.clear();
        }
        self.log = None;
        if let Ok(mut l) = self.log_shared.lock() {
            *l = None;
        }
        self.mem = None;
        self.maps.clear();
        self.acked = 0;
        self.protocol = 0;
        self.report();
    }

    /// The pair a vring index belongs to.
    fn pair_of(&self, index: u32) -> VuResult<usize> {
        let p = index as usize / 2;
        if p < self.pairs.len() {
            Ok(p)
        } else {
            Err(invalid("no such vring"))
        }
    }

    /// Quiesce the pair of `index`, change its ring, reconcile.
    fn change_ring(&mut self, index: u32, f: impl FnOnce(&mut RingCfg)) -> VuResult<()> {
        let p = self.pair_of(index)?;
        self.quiesce(p);
        f(self.ring(index)?);
        self.reconcile();
        Ok(())
    }
}

impl VhostUserBackendReqHandlerMut for Device {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.quiesce_all();
        self.reset_state();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.reset_owner()
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.offered)
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.offered != 0 {
            return Err(invalid("features not offered"));
        }
        self.quiesce_all();
        let newly = features & !self.acked;
        self.acked = features;
        if features & F_PROTOCOL_FEATURES == 0 {
            // Without protocol features a ring is enabled as soon as it starts.
            for r in &mut self.rings {
                r.enabled = true;
            }
        }
        tracing::info!(
            "vhost-user {}: features {}",
            self.name,
            feature_names(features).join(",")
        );
        if newly & F_STANDBY != 0 {
            if let Some(ev) = &self.events {
                ev(&self.name, VhostEvent::FailoverNegotiated);
            }
        }
        self.reconcile();
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        self.quiesce_all();
        let mut regions = Vec::with_capacity(ctx.len());
        let mut maps = Vec::with_capacity(ctx.len());
        for (r, f) in ctx.iter().zip(files) {
            let m = r.mmap_region::<()>(f)?;
            let g = GuestRegionMmap::new(m, GuestAddress(r.guest_phys_addr))
                .ok_or(invalid("memory region wraps around"))?;
            regions.push(g);
            maps.push(Map {
                va: r.user_addr,
                size: r.memory_size,
                gpa: r.guest_phys_addr,
            });
        }
        let mem = GuestMemoryMmap::from_regions(regions)
            .map_err(|_| invalid("memory regions overlap"))?;
        tracing::info!(
            "vhost-user {}: {} guest memory region(s), {} MiB",
            self.name,
            maps.len(),
            maps.iter().map(|m| m.size).sum::<u64>() >> 20
        );
        self.mem = Some(Arc::new(mem));
        self.maps = maps;
        self.reconcile();
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        if num == 0 || num > u32::from(MAX_RING) || !num.is_power_of_two() {
            return Err(invalid("vring size"));
        }
        self.change_ring(index, |r| r.num = num as u16)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> VuResult<()> {
        let log_used = flags
            .contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG)
            .then_some(log);
        self.change_ring(index, |r| {
            r.desc = descriptor;
            r.used = used;
            r.avail = available;
            r.log_used = log_used;
            r.addr_set = true;
        })
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.change_ring(index, |r| r.base = base as u16)
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let p = self.pair_of(index)?;
        self.quiesce(p);
        let r = self.ring(index)?;
        r.started = false;
        let base = r.base;
        self.reconcile();
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        if let Some(f) = &fd {
            sys::set_nonblocking(f.as_fd()).map_err(VuError::ReqHandlerError)?;
        }
        self.change_ring(u32::from(index), |r| {
            r.kick = fd;
            r.started = true;
        })
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.change_ring(u32::from(index), |r| r.call = fd)
    }

    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::RARP
            | VhostUserProtocolFeatures::MTU
            | VhostUserProtocolFeatures::LOG_SHMFD)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.protocol = features;
        self.report();
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.pairs.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.change_ring(index, |r| r.enabled = enable)
    }

    fn get_config(
        &mut self,
        _offset: u32,
        _size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        Err(invalid("config space is the frontend's"))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        Err(invalid("config space is the frontend's"))
    }

    fn set_backend_req_fd(&mut self, _backend: ReqBackend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(invalid("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(invalid("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> VuResult<(VhostUserInflight, File)> {
        Err(invalid("no inflight tracking"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(invalid("no inflight tracking"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(invalid("no memory slots"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(invalid("no memory slots"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(invalid("no memory slots"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(invalid("no device state transfer"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(invalid("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(invalid("no shared memory regions"))
    }

    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> VuResult<()> {
        self.quiesce_all();
        let l = DirtyLog::map(file, log.mmap_offset, log.mmap_size)
            .map_err(VuError::ReqHandlerError)?;
        tracing::info!(
            "vhost-user {}: dirty-page log of {} KiB (live migration)",
            self.name,
            log.mmap_size >> 10
        );
        let l = Arc::new(l);
        if let Ok(mut slot) = self.log_shared.lock() {
            *slot = Some(l.clone());
        }
        self.log = Some(l);
        self.reconcile();
        Ok(())
    }
}

/// A frontend's byte stream, whatever it holds, through the dispatcher (ours first,
/// then the `vhost` crate's) into a device with two queue pairs and no worker: nothing
/// panics, the stream is consumed until it ends or a message is refused, and the
/// device's rings stay within their pairs. (No descriptors come with the bytes, so
/// memory is never mapped and no pair starts.)
pub(crate) fn fuzz_messages(data: &[u8]) {
    use std::io::Write;
    let Ok((mut ours, theirs)) = UnixStream::pair() else {
        return;
    };
    // Bounded by the socket buffer: the whole input is written before any is read.
    let data = &data[..data.len().min(64 * 1024)];
    if ours.write_all(data).is_err() {
        return;
    }
    let _ = ours.shutdown(std::net::Shutdown::Write);
    let cfg = VhostUserConfig {
        socket: std::path::PathBuf::from("/nonexistent"),
        server: true,
        reconnect: None,
        queues: 2,
        name: "fuzz".into(),
        max_frame: 9216,
    };
    let pairs: Vec<Arc<Mailbox>> = (0..2).map(|_| Arc::new(Mailbox::default())).collect();
    let info = Arc::new(Mutex::new(VhostInfo::default()));
    let dev = Arc::new(Mutex::new(Device::new(
        &cfg,
        pairs,
        info,
        None,
        NicHandle::detached(),
        Arc::new(Mutex::new(None)),
    )));
    let Ok(own) = theirs.try_clone() else { return };
    let mut h = BackendReqHandler::from_stream(theirs, dev.clone());
    // Each message takes at least a header: no more rounds than that.
    for _ in 0..=data.len() / HDR_LEN {
        match take_own(&dev, &own) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(_) => break,
        }
        if h.handle_request().is_err() {
            break;
        }
    }
    let d = dev.lock().expect("device lock");
    assert_eq!(d.rings.len(), 4);
    assert!(
        d.running.iter().all(|r| *r == (false, false)),
        "a pair started without memory"
    );
    assert!(d.mem.is_none(), "memory without descriptors");
}
