//! memif's control plane: one thread ("memif") for every memif NIC of the process. It
//! listens on server sockets (several NICs may share one, told apart by interface id),
//! connects client NICs (again every [`RETRY`] while their peer is away), runs each
//! handshake, maps the peer's regions or makes our own, and hands a finished
//! connection ([`Conn`]) to the NIC's worker through its [`Link`]. It also watches the
//! receive rings' interrupt eventfds and wakes the worker when a peer signals.
//!
//! ```text
//!  register(cfg, link) ──cmd──► thread: poll(wake, listeners, channels, rx eventfds)
//!   server: accept → HELLO → INIT/ACK → ADD_REGION/ACK… → ADD_RING/ACK… → CONNECT/CONNECTED
//!   client: connect → HELLO → INIT → ACK → ADD_REGION → ACK → ADD_RING… → CONNECT → CONNECTED
//!   connected: Conn ──Link::next──► worker (rx/tx on the rings)
//!   channel closed / DISCONNECT / worker fault: Life::alive = false, worker woken, drops Conn
//! ```
//!
//! A handshake that does not finish within [`HANDSHAKE_TIMEOUT`] is closed, so a peer
//! that connects and says nothing holds no descriptor for long.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use socket2::{Domain, SockAddr, Socket, Type};

use super::queue::{Role, RxQueue, TxQueue};
use super::shm::{Desc, Region, Regions, RingView};
use super::wire::{
    ring_bytes, secret_matches, Msg, ADD_RING_C2S, MAX_LOG2_RING, MODE_ETHERNET, MSG_SIZE,
    SECRET_SIZE, VERSION,
};
use crate::error::Error;
use crate::sys;

/// How long a client NIC waits between attempts to reach its server.
pub const RETRY: Duration = Duration::from_millis(500);
/// Longest handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `register`/`unregister` wait for the thread.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The thread's longest sleep (client retries and handshake timeouts are checked then).
const TICK_MS: i32 = 50;
/// Ring indexes a peer may offer, per direction.
const MAX_RINGS: u16 = 256;
/// Regions a peer may offer.
const MAX_REGIONS: u16 = 256;

/// The switch's packet pool, given to a zero-copy client's peer as region 1.
#[derive(Debug, Clone)]
pub struct PoolShare {
    /// A copy of the pool's memfd.
    pub fd: Arc<OwnedFd>,
    /// The region's size.
    pub len: usize,
}

/// One memif NIC's settings.
#[derive(Debug, Clone)]
pub struct MemifConfig {
    /// The control socket.
    pub socket: PathBuf,
    /// Our role.
    pub role: Role,
    /// Interface id (several NICs on one socket differ by it).
    pub id: u32,
    /// Secret the peer must give (server) or that we give (client).
    pub secret: Option<[u8; SECRET_SIZE]>,
    /// Ring size as log2 (client: the rings we make; server: ignored, the client's).
    pub log2_ring: u8,
    /// Buffer size (client: our buffers; server: ignored).
    pub buffer_size: u32,
    /// Our interface name, as the peer sees it (the netdev id).
    pub name: String,
    /// Client only: frames cross in the switch's own pool buffers (region 1).
    pub zero_copy: Option<PoolShare>,
}

/// What ends a connection, shared by the worker and the thread.
#[derive(Debug, Default)]
pub struct Life {
    alive: AtomicBool,
    fault: Mutex<Option<String>>,
}

impl Life {
    /// Whether the connection still stands (the thread clears it).
    pub fn alive(&self) -> bool {
        // Acquire: pairs with the thread's Release when it ends the connection.
        self.alive.load(Ordering::Acquire)
    }
}

/// A connection, ready for the worker: rings, regions, and the eventfds that signal the
/// peer after a send.
pub struct Conn {
    /// Every region, by index.
    pub regions: Regions,
    /// Rings we receive from.
    pub rx: Vec<RxQueue>,
    /// Rings we send on (frames go to the first).
    pub tx: Vec<TxQueue>,
    /// The eventfd of each send ring.
    pub tx_irq: Vec<File>,
    /// Zero copy: the receive (s2c) and send (c2s) rings, whose buffers are the pool's
    /// (`rx` and `tx` are then empty).
    pub zc: Option<(RingView, RingView)>,
    /// Ends it.
    pub life: Arc<Life>,
    /// The peer's name and interface name (for logs and stats).
    pub peer: String,
    link: Arc<Link>,
}

impl Conn {
    /// The worker found the peer breaking the ring protocol: the connection ends with
    /// `why` sent to the peer.
    pub fn fail(&self, why: String) {
        if let Ok(mut f) = self.life.fault.lock() {
            f.get_or_insert(why);
        }
        self.life.alive.store(false, Ordering::Release);
        self.link.poke_manager();
    }
}

/// Counters and state of one memif NIC, for stats.
#[derive(Debug, Default)]
pub struct LinkInfo {
    /// Connected right now.
    pub connected: bool,
    /// The peer (name from HELLO or INIT, interface name from CONNECT[ED]).
    pub peer: String,
    /// Connections made.
    pub connects: u64,
    /// Connections ended.
    pub disconnects: u64,
    /// Why the last one ended.
    pub last_reason: String,
}

/// What a NIC's worker port and the thread share.
pub struct Link {
    /// The next connection for the worker (at most one waits).
    next: ArrayQueue<Conn>,
    waker: OnceLock<switch::backend::Waker>,
    info: Mutex<LinkInfo>,
    manager: Mutex<Option<UnixStream>>,
    /// Times the peer signalled an idle worker.
    pub interrupts: AtomicU64,
}

impl Link {
    /// A link with nothing connected.
    pub fn new() -> Arc<Link> {
        Arc::new(Link {
            next: ArrayQueue::new(1),
            waker: OnceLock::new(),
            info: Mutex::new(LinkInfo::default()),
            manager: Mutex::new(None),
            interrupts: AtomicU64::new(0),
        })
    }

    /// The worker tells how to wake it.
    pub fn set_waker(&self, w: switch::backend::Waker) {
        let _ = self.waker.set(w);
    }

    /// A new connection, if the thread made one.
    pub fn take(&self) -> Option<Conn> {
        // `is_empty` first: an empty `pop` fences, and this is asked every burst.
        if self.next.is_empty() {
            return None;
        }
        self.next.pop()
    }

    fn offer(&self, c: Conn) {
        // A connection the worker never picked up is replaced (and closed here).
        drop(self.next.force_push(c));
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w.wake();
        }
    }

    fn poke_manager(&self) {
        if let Ok(g) = self.manager.lock() {
            if let Some(s) = &*g {
                let _ = (&*s).write(&[1]);
            }
        }
    }

    /// State and counters.
    pub fn info(&self) -> LinkInfo {
        let g = self.info.lock().unwrap_or_else(|e| e.into_inner());
        LinkInfo {
            connected: g.connected,
            peer: g.peer.clone(),
            connects: g.connects,
            disconnects: g.disconnects,
            last_reason: g.last_reason.clone(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut LinkInfo)) {
        let mut g = self.info.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }
}

/// A NIC registered with the thread; dropping it unregisters (closing its connection
/// and, for the last server NIC of a socket, the socket).
pub struct Registration {
    key: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let (tx, rx) = mpsc::channel();
        if manager().send(Cmd::Unregister(self.key, tx)).is_ok() {
            let _ = rx.recv_timeout(REPLY_TIMEOUT);
        }
    }
}

enum Cmd {
    Register(u64, MemifConfig, Arc<Link>, mpsc::Sender<Result<(), Error>>),
    Unregister(u64, mpsc::Sender<()>),
}

struct Manager {
    cmds: Mutex<mpsc::Sender<Cmd>>,
    wake: UnixStream,
    next_key: AtomicU64,
}

impl Manager {
    fn send(&self, c: Cmd) -> Result<(), ()> {
        self.cmds.lock().map_err(|_| ())?.send(c).map_err(|_| ())?;
        let _ = (&self.wake).write(&[1]);
        Ok(())
    }
}

fn manager() -> &'static Manager {
    static M: OnceLock<Manager> = OnceLock::new();
    M.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let (wake, wake_rx) = UnixStream::pair().expect("a socket pair for the memif thread");
        let _ = wake.set_nonblocking(true);
        let _ = wake_rx.set_nonblocking(true);
        let poke = wake.try_clone().expect("a copy of the memif wake socket");
        std::thread::Builder::new()
            .name("memif".into())
            .spawn(move || Thread::new(rx, wake_rx, poke).run())
            .expect("the memif control thread");
        Manager {
            cmds: Mutex::new(tx),
            wake,
            next_key: AtomicU64::new(1),
        }
    })
}

/// Registers a NIC: a server NIC's socket listens before this returns; a client NIC
/// starts connecting.
pub fn register(cfg: MemifConfig, link: Arc<Link>) -> Result<Registration, Error> {
    let m = manager();
    let key = m.next_key.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel();
    m.send(Cmd::Register(key, cfg, link, tx))
        .map_err(|_| Error::Config("memif: the control thread is gone".into()))?;
    rx.recv_timeout(REPLY_TIMEOUT)
        .map_err(|_| Error::Config("memif: the control thread is not answering".into()))??;
    Ok(Registration { key })
}

struct Iface {
    cfg: MemifConfig,
    link: Arc<Link>,
    /// The channel it is on (handshake or connected).
    chan: Option<u64>,
    /// The live connection's fate and its rx eventfds (the thread wakes the worker).
    life: Option<Arc<Life>>,
    rx_irq: Vec<File>,
    next_try: Instant,
}

enum Step {
    /// Server: HELLO sent, INIT awaited.
    AwaitInit,
    /// Server: taking regions and rings until CONNECT.
    Building,
    /// Client: connected, HELLO awaited.
    AwaitHello,
    /// Client: each message waits for an ACK; the last (CONNECT) for CONNECTED.
    Sending,
    /// Connected.
    Up,
}

struct Chan {
    sock: Socket,
    iface: Option<u64>,
    /// The listener it came from (server side).
    via: Option<PathBuf>,
    step: Step,
    since: Instant,
    peer_name: String,
    regions: Vec<Arc<Region>>,
    /// (c2s, index) → ring view and eventfd.
    rings: HashMap<(bool, u16), (RingView, File)>,
    /// Client: messages still to send, each after the previous one's ACK.
    outbox: VecDeque<(Msg, Option<OwnedFd>)>,
    /// Client: the connection being made (queues built on CONNECTED).
    setup: Option<ClientSetup>,
}

struct ClientSetup {
    region: Arc<Region>,
    c2s: RingView,
    s2c: RingView,
    c2s_bufs: Vec<Desc>,
    s2c_bufs: Vec<Desc>,
    c2s_irq: File,
    s2c_irq: File,
    zero_copy: bool,
}

struct Listener {
    sock: Socket,
}

struct Thread {
    cmds: mpsc::Receiver<Cmd>,
    wake: UnixStream,
    poke: UnixStream,
    ifaces: HashMap<u64, Iface>,
    listeners: HashMap<PathBuf, Listener>,
    chans: HashMap<u64, Chan>,
    next_chan: u64,
}

fn disconnect_msg(reason: &str) -> Msg {
    Msg::Disconnect {
        code: 0,
        reason: reason.to_string(),
    }
}

fn send(sock: &Socket, m: &Msg, fd: Option<std::os::fd::BorrowedFd<'_>>) -> bool {
    matches!(sys::send_with_fds(sock.as_fd(), &m.emit(), fd.as_slice()), Ok(n) if n == MSG_SIZE)
}

impl Thread {
    fn new(cmds: mpsc::Receiver<Cmd>, wake: UnixStream, poke: UnixStream) -> Thread {
        Thread {
            cmds,
            wake,
            poke,
            ifaces: HashMap::new(),
            listeners: HashMap::new(),
            chans: HashMap::new(),
            next_chan: 1,
        }
    }

    fn run(mut self) {
        loop {
            self.commands();
            self.housekeeping();
            // The poll set: wake, listeners, channels, rx eventfds.
            enum Src {
                Wake,
                Listener(PathBuf),
                Chan(u64),
                Irq(u64),
            }
            let mut fds = Vec::new();
            let mut srcs = Vec::new();
            let mut add = |fd: i32, s: Src| {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                srcs.push(s);
            };
            add(self.wake.as_raw_fd(), Src::Wake);
            for (p, l) in &self.listeners {
                add(l.sock.as_raw_fd(), Src::Listener(p.clone()));
            }
            for (k, c) in &self.chans {
                add(c.sock.as_raw_fd(), Src::Chan(*k));
            }
            for (k, i) in &self.ifaces {
                for f in &i.rx_irq {
                    add(f.as_raw_fd(), Src::Irq(*k));
                }
            }
            if sys::poll(&mut fds, TICK_MS).is_err() {
                std::thread::sleep(Duration::from_millis(TICK_MS as u64));
                continue;
            }
            for (p, s) in fds.iter().zip(srcs) {
                if p.revents == 0 {
                    continue;
                }
                match s {
                    Src::Wake => {
                        let mut b = [0u8; 64];
                        while matches!((&self.wake).read(&mut b), Ok(n) if n > 0) {}
                    }
                    Src::Listener(path) => self.accept(&path),
                    Src::Chan(k) => self.on_chan(k),
                    Src::Irq(k) => {
                        if let Some(i) = self.ifaces.get(&k) {
                            let mut b = [0u8; 8];
                            for f in &i.rx_irq {
                                let _ = (&*f).read(&mut b);
                            }
                            i.link.interrupts.fetch_add(1, Ordering::Relaxed);
                            i.link.wake();
                        }
                    }
                }
            }
        }
    }

    fn commands(&mut self) {
        while let Ok(c) = self.cmds.try_recv() {
            match c {
                Cmd::Register(key, cfg, link, reply) => {
                    let r = self.register(key, cfg, link);
                    let _ = reply.send(r);
                }
                Cmd::Unregister(key, reply) => {
                    self.unregister(key);
                    let _ = reply.send(());
                }
            }
        }
    }

    fn register(&mut self, key: u64, cfg: MemifConfig, link: Arc<Link>) -> Result<(), Error> {
        if self
            .ifaces
            .values()
            .any(|i| i.cfg.socket == cfg.socket && i.cfg.id == cfg.id && i.cfg.role == cfg.role)
        {
            return Err(Error::Config(format!(
                "memif: interface id {} is already taken on {} by a {} NIC",
                cfg.id,
                cfg.socket.display(),
                role_name(cfg.role)
            )));
        }
        if cfg.role == Role::Server && !self.listeners.contains_key(&cfg.socket) {
            let l = listen(&cfg.socket)?;
            self.listeners.insert(cfg.socket.clone(), l);
        }
        if let Ok(mut g) = link.manager.lock() {
            *g = self.poke.try_clone().ok();
        }
        self.ifaces.insert(
            key,
            Iface {
                cfg,
                link,
                chan: None,
                life: None,
                rx_irq: Vec::new(),
                next_try: Instant::now(),
            },
        );
        Ok(())
    }

    fn unregister(&mut self, key: u64) {
        let Some(i) = self.ifaces.get(&key) else {
            return;
        };
        if let Some(c) = i.chan {
            if let Some(ch) = self.chans.get(&c) {
                send(&ch.sock, &disconnect_msg("interface deleted"), None);
            }
            self.close_chan(c, "interface deleted");
        }
        let Some(i) = self.ifaces.remove(&key) else {
            return;
        };
        if i.cfg.role == Role::Server
            && !self
                .ifaces
                .values()
                .any(|o| o.cfg.role == Role::Server && o.cfg.socket == i.cfg.socket)
        {
            self.listeners.remove(&i.cfg.socket);
            // Channels still in their handshake on that socket go with it.
            let orphans: Vec<u64> = self
                .chans
                .iter()
                .filter(|(_, c)| c.via.as_deref() == Some(i.cfg.socket.as_path()))
                .map(|(k, _)| *k)
                .collect();
            for k in orphans {
                self.close_chan(k, "socket closed");
            }
            if abstract_name(&i.cfg.socket).is_none() {
                let _ = std::fs::remove_file(&i.cfg.socket);
            }
        }
    }

    /// Timeouts, client retries, faults the workers reported.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let stale: Vec<u64> = self
            .chans
            .iter()
            .filter(|(_, c)| {
                !matches!(c.step, Step::Up) && now.duration_since(c.since) > HANDSHAKE_TIMEOUT
            })
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(c) = self.chans.get(&k) {
                send(&c.sock, &disconnect_msg("handshake timed out"), None);
            }
            self.close_chan(k, "handshake timed out");
        }
        let faulted: Vec<(u64, String)> = self
            .ifaces
            .values()
            .filter_map(|i| {
                let life = i.life.as_ref()?;
                let why = life.fault.lock().ok()?.clone()?;
                Some((i.chan?, why))
            })
            .collect();
        for (c, why) in faulted {
            if let Some(ch) = self.chans.get(&c) {
                send(&ch.sock, &disconnect_msg(&why), None);
            }
            self.close_chan(c, &why);
        }
        let due: Vec<u64> = self
            .ifaces
            .iter()
            .filter(|(_, i)| i.cfg.role == Role::Client && i.chan.is_none() && now >= i.next_try)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            self.connect(k, now);
        }
    }

    fn new_chan(
        &mut self,
        sock: Socket,
        iface: Option<u64>,
        via: Option<PathBuf>,
        step: Step,
    ) -> u64 {
        let k = self.next_chan;
        self.next_chan += 1;
        self.chans.insert(
            k,
            Chan {
                sock,
                iface,
                via,
                step,
                since: Instant::now(),
                peer_name: String::new(),
                regions: Vec::new(),
                rings: HashMap::new(),
                outbox: VecDeque::new(),
                setup: None,
            },
        );
        k
    }

    fn accept(&mut self, path: &Path) {
        let Some(l) = self.listeners.get(path) else {
            return;
        };
        let Ok((sock, _)) = l.sock.accept() else {
            return;
        };
        let _ = sock.set_nonblocking(true);
        let hello = Msg::Hello {
            name: "pollswitch".into(),
            min_version: VERSION,
            max_version: VERSION,
            max_region: MAX_REGIONS - 1,
            max_s2c_ring: MAX_RINGS - 1,
            max_c2s_ring: MAX_RINGS - 1,
            max_log2_ring_size: MAX_LOG2_RING,
        };
        if send(&sock, &hello, None) {
            self.new_chan(sock, None, Some(path.to_path_buf()), Step::AwaitInit);
        }
    }

    fn connect(&mut self, key: u64, now: Instant) {
        let Some(i) = self.ifaces.get_mut(&key) else {
            return;
        };
        i.next_try = now + RETRY;
        let Ok(sock) = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None) else {
            return;
        };
        let Ok(addr) = socket_addr(&i.cfg.socket) else {
            return;
        };
        if sock.connect(&addr).is_err() {
            return;
        }
        let _ = sock.set_nonblocking(true);
        let c = self.new_chan(sock, Some(key), None, Step::AwaitHello);
        if let Some(i) = self.ifaces.get_mut(&key) {
            i.chan = Some(c);
        }
    }

    fn on_chan(&mut self, k: u64) {
        // Every message waiting, one record each.
        loop {
            let Some(c) = self.chans.get(&k) else { return };
            let mut b = [0u8; MSG_SIZE];
            match sys::recv_with_fd(c.sock.as_fd(), &mut b, libc::MSG_DONTWAIT) {
                Ok((0, _)) => return self.close_chan(k, "peer closed the connection"),
                Ok((n, fd)) if n == MSG_SIZE => {
                    let Some(m) = Msg::parse(&b) else {
                        return self.refuse(k, "Unknown message type");
                    };
                    if let Err(why) = self.handle(k, m, fd) {
                        return self.refuse(k, &why);
                    }
                }
                Ok(_) => return self.refuse(k, "Invalid message size"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => return self.close_chan(k, &format!("control socket: {e}")),
            }
        }
    }

    /// Sends DISCONNECT with `why` and closes the channel.
    fn refuse(&mut self, k: u64, why: &str) {
        if let Some(c) = self.chans.get(&k) {
            send(&c.sock, &disconnect_msg(why), None);
        }
        self.close_chan(k, why);
    }

    fn close_chan(&mut self, k: u64, why: &str) {
        let Some(c) = self.chans.remove(&k) else {
            return;
        };
        let Some(key) = c.iface else { return };
        let Some(i) = self.ifaces.get_mut(&key) else {
            return;
        };
        if i.chan == Some(k) {
            i.chan = None;
        }
        i.rx_irq.clear();
        // Why a handshake failed is worth knowing too (a wrong secret, an unknown id).
        i.link.update(|l| l.last_reason = why.to_string());
        if let Some(life) = i.life.take() {
            // Release: pairs with the worker's Acquire in Life::alive.
            life.alive.store(false, Ordering::Release);
            i.link.update(|l| {
                l.connected = false;
                l.disconnects += 1;
                l.last_reason = why.to_string();
            });
            i.link.wake();
            tracing::info!("memif {}: disconnected ({why})", i.cfg.name);
        }
        if i.cfg.role == Role::Client {
            i.next_try = Instant::now() + RETRY;
        }
    }

    fn handle(&mut self, k: u64, m: Msg, fd: Option<OwnedFd>) -> Result<(), String> {
        let step = match self.chans.get(&k) {
            Some(c) => std::mem::discriminant(&c.step),
            None => return Ok(()),
        };
        if let Msg::Disconnect { reason, .. } = &m {
            let why = format!("peer disconnected: {reason}");
            self.close_chan(k, &why);
            return Ok(());
        }
        if step == std::mem::discriminant(&Step::AwaitInit) {
            return self.on_init(k, m);
        }
        if step == std::mem::discriminant(&Step::Building) {
            return self.on_building(k, m, fd);
        }
        if step == std::mem::discriminant(&Step::AwaitHello) {
            return self.on_hello(k, m);
        }
        if step == std::mem::discriminant(&Step::Sending) {
            return self.on_client_reply(k, m);
        }
        Err("Unexpected message".into())
    }

    fn on_init(&mut self, k: u64, m: Msg) -> Result<(), String> {
        let Msg::Init {
            version,
            id,
            mode,
            secret,
            name,
        } = m
        else {
            return Err("Unexpected message".into());
        };
        if version != VERSION {
            return Err("Incompatible memif version".into());
        }
        let via = self.chans.get(&k).and_then(|c| c.via.clone());
        let found = self.ifaces.iter_mut().find(|(_, i)| {
            i.cfg.role == Role::Server && Some(&i.cfg.socket) == via.as_ref() && i.cfg.id == id
        });
        let Some((&key, i)) = found else {
            return Err("ID not found".into());
        };
        if i.chan.is_some() {
            return Err("Already connected".into());
        }
        if mode != MODE_ETHERNET {
            return Err("Only ethernet mode supported".into());
        }
        if let Some(ours) = &i.cfg.secret {
            if secret[0] == 0 {
                return Err("Secret required".into());
            }
            if !secret_matches(ours, &secret) {
                return Err("Incorrect secret".into());
            }
        }
        i.chan = Some(k);
        let c = self.chans.get_mut(&k).ok_or("gone")?;
        c.iface = Some(key);
        c.peer_name = name;
        c.step = Step::Building;
        if !send(&c.sock, &Msg::Ack, None) {
            return Err("send failed".into());
        }
        Ok(())
    }

    fn on_building(&mut self, k: u64, m: Msg, fd: Option<OwnedFd>) -> Result<(), String> {
        let c = self.chans.get_mut(&k).ok_or("gone")?;
        match m {
            Msg::AddRegion { index, size } => {
                let fd = fd.ok_or("Missing region fd")?;
                if index >= MAX_REGIONS || usize::from(index) != c.regions.len() {
                    return Err("Invalid region index".into());
                }
                let r = Region::map(fd, size).map_err(|e| format!("region {index}: {e}"))?;
                c.regions.push(Arc::new(r));
            }
            Msg::AddRing {
                flags,
                index,
                region,
                offset,
                log2_ring_size,
                private_hdr_size,
            } => {
                let fd = fd.ok_or("Missing interrupt fd")?;
                if index >= MAX_RINGS {
                    return Err("Invalid ring index".into());
                }
                if private_hdr_size != 0 {
                    return Err("private headers are not supported".into());
                }
                let r = c
                    .regions
                    .get(usize::from(region))
                    .ok_or("Invalid ring region")?
                    .clone();
                let view = RingView::new(r, offset as usize, log2_ring_size)
                    .ok_or("ring does not fit its region")?;
                c.rings
                    .insert((flags & ADD_RING_C2S != 0, index), (view, File::from(fd)));
            }
            Msg::Connect { if_name } => {
                return self.server_connect(k, if_name);
            }
            _ => return Err("Unexpected message".into()),
        }
        if !send(&c.sock, &Msg::Ack, None) {
            return Err("send failed".into());
        }
        Ok(())
    }

    /// Server: CONNECT came; the rings become queues and go to the worker.
    fn server_connect(&mut self, k: u64, if_name: String) -> Result<(), String> {
        let c = self.chans.get_mut(&k).ok_or("gone")?;
        let key = c.iface.ok_or("no interface")?;
        let mut rings: Vec<_> = c.rings.drain().collect();
        rings.sort_by_key(|((c2s, i), _)| (!*c2s, *i));
        let mut rx = Vec::new();
        let mut tx = Vec::new();
        let mut tx_irq = Vec::new();
        let mut rx_irq = Vec::new();
        for ((c2s, _), (view, irq)) in rings {
            if view.cookie() != super::wire::COOKIE {
                return Err("Wrong ring".into());
            }
            view.head().store(0, Ordering::Relaxed);
            view.tail().store(0, Ordering::Relaxed);
            if c2s {
                rx.push(RxQueue::new(view, Role::Server, Vec::new()));
                rx_irq.push(irq);
            } else {
                tx.push(TxQueue::new(view, Role::Server, Vec::new()));
                tx_irq.push(irq);
            }
        }
        if rx.is_empty() || tx.is_empty() {
            return Err("a ring in each direction is needed".into());
        }
        let regions = Regions(std::mem::take(&mut c.regions));
        let peer = format!("{} ({if_name})", c.peer_name);
        c.step = Step::Up;
        let sock_ok = {
            let i = self.ifaces.get(&key).ok_or("gone")?;
            send(
                &c.sock,
                &Msg::Connected {
                    if_name: i.cfg.name.clone(),
                },
                None,
            )
        };
        if !sock_ok {
            return Err("send failed".into());
        }
        self.go_up(key, regions, rx, tx, None, tx_irq, rx_irq, peer);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn go_up(
        &mut self,
        key: u64,
        regions: Regions,
        rx: Vec<RxQueue>,
        tx: Vec<TxQueue>,
        zc: Option<(RingView, RingView)>,
        tx_irq: Vec<File>,
        rx_irq: Vec<File>,
        peer: String,
    ) {
        let Some(i) = self.ifaces.get_mut(&key) else {
            return;
        };
        let life = Arc::new(Life {
            alive: AtomicBool::new(true),
            fault: Mutex::new(None),
        });
        i.rx_irq = rx_irq;
        i.life = Some(life.clone());
        i.link.update(|l| {
            l.connected = true;
            l.connects += 1;
            l.peer = peer.clone();
        });
        tracing::info!("memif {}: connected to {peer}", i.cfg.name);
        i.link.offer(Conn {
            regions,
            rx,
            tx,
            tx_irq,
            zc,
            life,
            peer,
            link: i.link.clone(),
        });
    }

    /// Client: HELLO came; make our region and rings, queue the messages that give
    /// them.
    fn on_hello(&mut self, k: u64, m: Msg) -> Result<(), String> {
        let Msg::Hello {
            name,
            min_version,
            max_version,
            max_log2_ring_size,
            ..
        } = m
        else {
            return Err("Unexpected message".into());
        };
        if min_version > VERSION || max_version < VERSION {
            return Err("Incompatible memif version".into());
        }
        let c = self.chans.get_mut(&k).ok_or("gone")?;
        let key = c.iface.ok_or("no interface")?;
        let i = self.ifaces.get(&key).ok_or("gone")?;
        let log2 = i.cfg.log2_ring.min(max_log2_ring_size);
        let slots = 1usize << log2;
        let bsize = i.cfg.buffer_size as usize;
        let rb = ring_bytes(log2);
        let zc = i.cfg.zero_copy.clone();
        // Zero copy: region 0 holds only the rings, the buffers are the pool's.
        let len = if zc.is_some() {
            2 * rb
        } else {
            2 * rb + 2 * slots * bsize
        };
        let region = Arc::new(
            Region::create(&format!("memif-{}", i.cfg.name), len)
                .map_err(|e| format!("region: {e}"))?,
        );
        let c2s = RingView::new(region.clone(), 0, log2).ok_or("ring layout")?;
        let s2c = RingView::new(region.clone(), rb, log2).ok_or("ring layout")?;
        c2s.init(0);
        s2c.init(0);
        let bufs = |first: usize| -> Vec<Desc> {
            (0..slots)
                .map(|j| Desc {
                    flags: 0,
                    region: 0,
                    length: bsize as u32,
                    offset: (2 * rb + (first + j) * bsize) as u32,
                })
                .collect()
        };
        let irq = || sys::eventfd().map_err(|e| format!("eventfd: {e}"));
        let (c2s_irq, s2c_irq) = (File::from(irq()?), File::from(irq()?));
        let dup = |f: &File| f.try_clone().map(OwnedFd::from).map_err(|e| e.to_string());
        let mut out = VecDeque::new();
        out.push_back((
            Msg::Init {
                version: VERSION,
                id: i.cfg.id,
                mode: MODE_ETHERNET,
                secret: i.cfg.secret.unwrap_or([0; SECRET_SIZE]),
                name: "pollswitch".into(),
            },
            None,
        ));
        out.push_back((
            Msg::AddRegion {
                index: 0,
                size: len as u64,
            },
            Some(
                region
                    .fd()
                    .try_clone_to_owned()
                    .map_err(|e| e.to_string())?,
            ),
        ));
        if let Some(pool) = &zc {
            out.push_back((
                Msg::AddRegion {
                    index: super::zc::POOL_REGION,
                    size: pool.len as u64,
                },
                Some(pool.fd.try_clone().map_err(|e| e.to_string())?),
            ));
        }
        for (c2s_dir, f) in [(true, &c2s_irq), (false, &s2c_irq)] {
            out.push_back((
                Msg::AddRing {
                    flags: if c2s_dir { ADD_RING_C2S } else { 0 },
                    index: 0,
                    region: 0,
                    offset: if c2s_dir { 0 } else { rb as u32 },
                    log2_ring_size: log2,
                    private_hdr_size: 0,
                },
                Some(dup(f)?),
            ));
        }
        out.push_back((
            Msg::Connect {
                if_name: i.cfg.name.clone(),
            },
            None,
        ));
        c.setup = Some(ClientSetup {
            region,
            c2s,
            s2c,
            c2s_bufs: bufs(0),
            s2c_bufs: bufs(slots),
            c2s_irq,
            s2c_irq,
            zero_copy: zc.is_some(),
        });
        c.peer_name = name;
        c.outbox = out;
        c.step = Step::Sending;
        Self::send_next(c)
    }

    fn send_next(c: &mut Chan) -> Result<(), String> {
        if let Some((m, fd)) = c.outbox.pop_front() {
            if !send(&c.sock, &m, fd.as_ref().map(|f| f.as_fd())) {
                return Err("send failed".into());
            }
        }
        Ok(())
    }

    fn on_client_reply(&mut self, k: u64, m: Msg) -> Result<(), String> {
        let c = self.chans.get_mut(&k).ok_or("gone")?;
        match m {
            Msg::Ack if !c.outbox.is_empty() => Self::send_next(c),
            Msg::Ack => Ok(()), // CONNECT is answered by CONNECTED, not ACK
            Msg::Connected { if_name } => {
                let key = c.iface.ok_or("no interface")?;
                let s = c.setup.take().ok_or("Unexpected message")?;
                c.step = Step::Up;
                let peer = format!("{} ({if_name})", c.peer_name);
                for r in [&s.c2s, &s.s2c] {
                    r.head().store(0, Ordering::Relaxed);
                    r.tail().store(0, Ordering::Relaxed);
                }
                // Zero copy: the worker posts pool buffers itself.
                let (rx, tx, zc) = if s.zero_copy {
                    (Vec::new(), Vec::new(), Some((s.s2c, s.c2s)))
                } else {
                    (
                        vec![RxQueue::new(s.s2c, Role::Client, s.s2c_bufs)],
                        vec![TxQueue::new(s.c2s, Role::Client, s.c2s_bufs)],
                        None,
                    )
                };
                self.go_up(
                    key,
                    Regions(vec![s.region]),
                    rx,
                    tx,
                    zc,
                    vec![s.c2s_irq],
                    vec![s.s2c_irq],
                    peer,
                );
                Ok(())
            }
            _ => Err("Unexpected message".into()),
        }
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Server => "server",
        Role::Client => "client",
    }
}

/// The abstract-namespace name of `@NAME` (DPDK's `socket-abstract=yes`, its default in
/// 22.11), `None` for a filesystem path.
pub fn abstract_name(path: &Path) -> Option<&[u8]> {
    path.as_os_str().as_encoded_bytes().strip_prefix(b"@")
}

/// The address of memif socket `path`; an abstract name as DPDK 22.11 binds it (a NUL,
/// then the name, no padding).
fn socket_addr(path: &Path) -> std::io::Result<SockAddr> {
    let Some(name) = abstract_name(path) else {
        return SockAddr::unix(path);
    };
    let mut b = Vec::with_capacity(name.len() + 1);
    b.push(0);
    b.extend_from_slice(name);
    use std::os::unix::ffi::OsStrExt;
    SockAddr::unix(std::ffi::OsStr::from_bytes(&b))
}

/// A listening memif socket at `path`, private to our user (mode 0600: whoever can
/// connect can put frames into the switch); a stale socket there is replaced, any
/// other file is left alone and the NIC refused. `@NAME` listens in the abstract
/// namespace instead, which has no file and no permissions: anyone in the network
/// namespace may connect.
fn listen(path: &Path) -> Result<Listener, Error> {
    let addr = path.display().to_string();
    let err = |what: &'static str| {
        let addr = addr.clone();
        move |source| Error::Socket { what, addr, source }
    };
    let in_fs = abstract_name(path).is_none();
    if let (true, Ok(m)) = (in_fs, std::fs::symlink_metadata(path)) {
        use std::os::unix::fs::FileTypeExt;
        if !m.file_type().is_socket() {
            return Err(Error::Config(format!(
                "memif: {} exists and is not a socket",
                path.display()
            )));
        }
        let _ = std::fs::remove_file(path);
    }
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None).map_err(err("socket"))?;
    let sa = socket_addr(path).map_err(err("address"))?;
    if in_fs {
        // Private from the moment the file exists.
        sys::with_umask(0o177, || sock.bind(&sa)).map_err(err("bind"))?;
    } else {
        sock.bind(&sa).map_err(err("bind"))?;
    }
    sock.listen(16).map_err(err("listen on"))?;
    sock.set_nonblocking(true).map_err(err("listen on"))?;
    Ok(Listener { sock })
}
