//! The QMP server: listeners, one reader and one writer thread per client, and the
//! control loop that owns the daemon.
//!
//! ```text
//!  unix/tcp listener ──accept──► client reader thread ──Msg──┐
//!                                client writer thread ◄─line─┤
//!  signal handler ──────────────────────────────────Msg──────┤
//!                                                            ▼
//!                                  control loop (one thread, owns the Daemon)
//!                                  commands → Daemon → switch workers (by message)
//!                                  announce timers, events to every client
//! ```
//!
//! Only the control loop touches the daemon, so commands from many clients are applied
//! one at a time, in arrival order. A client that sends garbage, an over-long request or
//! disappears mid-command affects its own threads only. What waits to be written to a
//! client is bounded ([`Outbox`]): while a client does not read its replies, its reader
//! thread stops reading its requests (as QEMU does), and events beyond a hard bound are
//! dropped for that client alone.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use serde_json::Value;

use super::announce::Announcer;
use super::commands;
use super::scm::recv_with_fds;
use super::wire::{self, Input, Splitter};
use crate::daemon::Daemon;
use crate::error::CtlError;

/// A client's number.
pub type ClientId = u64;

/// Bytes of unsent replies above which a client's requests are no longer read.
pub const OUT_SOFT: usize = 256 << 10;
/// Bytes of unsent output above which events for that client are dropped.
pub const OUT_HARD: usize = 4 << 20;

#[derive(Debug, Default)]
struct Queued {
    bytes: usize,
    closed: bool,
    dropped_events: u64,
}

/// A client's queue of lines to send, bounded in bytes: the control loop adds, the
/// client's writer thread takes, the client's reader waits for room before it reads.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: Sender<String>,
    state: Drain,
}

impl Outbox {
    /// Wraps the sending end of the channel a writer drains.
    pub fn new(tx: Sender<String>) -> Outbox {
        Outbox {
            tx,
            state: Drain::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.state.lock()
    }

    /// Queues a reply (or the greeting): always, since the reader stops taking requests
    /// while the queue is over [`OUT_SOFT`], which bounds how many replies can wait.
    pub fn reply(&self, line: String) {
        self.lock().bytes += line.len();
        let _ = self.tx.send(line);
    }

    /// Queues an event unless the client already has [`OUT_HARD`] bytes unread; false
    /// when it was dropped.
    pub fn event(&self, line: String) -> bool {
        {
            let mut q = self.lock();
            if q.bytes + line.len() > OUT_HARD {
                q.dropped_events += 1;
                return false;
            }
            q.bytes += line.len();
        }
        let _ = self.tx.send(line);
        true
    }

    /// Events dropped so far for this client.
    pub fn dropped_events(&self) -> u64 {
        self.lock().dropped_events
    }

    /// Waits until everything queued was written (or the client is gone), at most
    /// until `deadline`; true when it was.
    fn wait_drained(&self, deadline: Instant) -> bool {
        let mut q = self.lock();
        while q.bytes > 0 && !q.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self
                .state
                .0
                 .1
                .wait_timeout(q, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }

    /// Reader side: waits while the client's unread replies are over [`OUT_SOFT`].
    fn wait_room(&self) {
        let mut q = self.lock();
        while q.bytes > OUT_SOFT && !q.closed {
            q = self.state.0 .1.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The count of an [`Outbox`]'s queued bytes, shared by the outbox and its writer
/// thread. The writer holds only this, never the channel's sending end: a writer holding
/// one would keep its own channel open and outlive its client with the connection's
/// descriptors (it did: two descriptors and a thread per client that ever connected).
#[derive(Debug, Clone, Default)]
struct Drain(Arc<(Mutex<Queued>, Condvar)>);

impl Drain {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer wrote `n` bytes.
    fn sent(&self, n: usize) {
        let mut q = self.lock();
        q.bytes = q.bytes.saturating_sub(n);
        if q.bytes <= OUT_SOFT {
            self.0 .1.notify_all();
        }
    }

    /// The writer stopped (the client is gone): nobody waits for room any more.
    fn close(&self) {
        self.lock().closed = true;
        self.0 .1.notify_all();
    }
}

/// What reaches the control loop.
pub enum Msg {
    /// An event a backend raised (FAILOVER_NEGOTIATED), for every client.
    Event {
        /// The QMP event name.
        name: &'static str,
        /// Its data.
        data: Value,
    },
    /// A client connected; `out` carries lines to its writer.
    Connected {
        /// The client.
        id: ClientId,
        /// Its writer's queue.
        out: Outbox,
        /// Whether its monitor pretty-prints (`-qmp-pretty`, `-mon ...,pretty=on`).
        pretty: bool,
    },
    /// A JSON value or a parse error from a client.
    Input {
        /// The client.
        id: ClientId,
        /// What it sent.
        input: Input,
    },
    /// Descriptors that came with a client's bytes (SCM_RIGHTS).
    Fds {
        /// The client.
        id: ClientId,
        /// The descriptors.
        fds: Vec<OwnedFd>,
    },
    /// A client went away.
    Gone {
        /// The client.
        id: ClientId,
    },
    /// SIGINT or SIGTERM: shut down.
    Signal,
    /// A metrics scrape: the text goes back on the channel ([`crate::metrics`]).
    Metrics(Sender<String>),
}

/// Per-client state kept by the control loop.
pub struct Client {
    out: Outbox,
    pretty: bool,
    /// Whether `qmp_capabilities` was executed (command mode).
    pub negotiated: bool,
    /// Descriptors named with `getfd`.
    pub fds: HashMap<String, OwnedFd>,
    /// Descriptors received but not yet named.
    pub pending_fds: Vec<OwnedFd>,
}

/// The control loop's state.
pub struct Control {
    /// The daemon (taken at shutdown).
    pub daemon: Daemon,
    /// Connected clients.
    pub clients: HashMap<ClientId, Client>,
    /// announce-self timers.
    pub announcer: Announcer,
    /// Set by `quit`.
    pub quit: bool,
    /// `-name`, for `query-name`.
    pub name: Option<String>,
}

/// A parsed `-qmp` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:PATH`.
    Unix(String),
    /// `tcp:HOST:PORT`.
    Tcp(String),
    /// A listening socket the daemon inherited (`-chardev socket,fd=N,server=on`).
    Fd(String),
}

/// A QMP monitor to serve: where, and how it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    /// Where it listens.
    pub at: Endpoint,
    /// Pretty-printed replies.
    pub pretty: bool,
}

/// Every monitor of the command line: `-qmp`, `-qmp-pretty`, and `-mon` on a
/// `-chardev`, checked before anything starts.
pub fn monitors(args: &crate::cli::DaemonArgs) -> Result<Vec<MonitorSpec>, CtlError> {
    use crate::chardev::ChardevAddr;
    let mut out = Vec::new();
    for (spec, pretty) in args
        .qmp
        .iter()
        .map(|s| (s, false))
        .chain(args.qmp_pretty.iter().map(|s| (s, true)))
    {
        out.push(MonitorSpec {
            at: parse_endpoint(spec)?,
            pretty,
        });
    }
    for m in &args.mons {
        let c = args
            .chardevs
            .iter()
            .find(|c| c.id == m.chardev)
            .ok_or_else(|| {
                CtlError::Invalid(format!(
                    "-mon chardev={}: chardev \"{}\" not found",
                    m.chardev, m.chardev
                ))
            })?;
        if !c.server {
            return Err(CtlError::Invalid(format!(
                "-mon chardev={}: pollswitch serves monitors only on listening chardevs: \
                 give the chardev server=on,wait=off",
                c.id
            )));
        }
        if c.wait {
            return Err(CtlError::Invalid(format!(
                "-mon chardev={}: wait=on (waiting for a client before starting) is not \
                 supported: give the chardev wait=off",
                c.id
            )));
        }
        let at = match &c.addr {
            ChardevAddr::Unix(p) => Endpoint::Unix(p.clone()),
            ChardevAddr::Tcp(a) => Endpoint::Tcp(a.clone()),
            ChardevAddr::Fd(f) => Endpoint::Fd(f.clone()),
        };
        out.push(MonitorSpec {
            at,
            pretty: m.pretty,
        });
    }
    Ok(out)
}

/// Parses QEMU's `-qmp unix:PATH,server=on,wait=off` / `tcp:HOST:PORT,server=on,wait=off`
/// (also the old spellings `server` and `nowait`).
pub fn parse_endpoint(spec: &str) -> Result<Endpoint, CtlError> {
    let mut parts = crate::cli::split_commas(spec).into_iter();
    let head = parts.next().unwrap_or_default();
    // Only a unix socket's path may hold bytes that are not UTF-8.
    let shown = crate::osarg::display(spec);
    if !head.starts_with("unix:") || parts.clone().any(|p| crate::osarg::has_raw(&p)) {
        crate::osarg::check_utf8("-qmp", spec)?;
    }
    let spec = shown.as_str();
    let (mut server, mut wait) = (false, true);
    for p in parts {
        match p.as_str() {
            "server" | "server=on" => server = true,
            "server=off" => server = false,
            "nowait" | "wait=off" => wait = false,
            "wait=on" => wait = true,
            other => {
                return Err(CtlError::Invalid(format!(
                    "-qmp {spec}: unknown option '{other}'"
                )));
            }
        }
    }
    if !server {
        return Err(CtlError::Invalid(format!(
            "-qmp {spec}: pollswitch only listens for QMP clients: add server=on"
        )));
    }
    if wait {
        return Err(CtlError::Invalid(format!(
            "-qmp {spec}: wait=on (waiting for a client before starting) is not supported: add wait=off"
        )));
    }
    if let Some(p) = head.strip_prefix("unix:") {
        Ok(Endpoint::Unix(p.to_string()))
    } else if let Some(a) = head.strip_prefix("tcp:") {
        // QEMU's `tcp::PORT` (no host) listens on every address, as QEMU does.
        match a.strip_prefix(':') {
            Some(port) => Ok(Endpoint::Tcp(format!("0.0.0.0:{port}"))),
            None => Ok(Endpoint::Tcp(a.to_string())),
        }
    } else {
        Err(CtlError::Invalid(format!(
            "-qmp {spec}: expected unix:PATH or tcp:HOST:PORT"
        )))
    }
}

static NEXT_CLIENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// An inherited listening socket, as the listener of its family.
enum Inherited {
    Unix(UnixListener),
    Tcp(TcpListener),
}

fn inherited_listener(name: &str) -> Result<Inherited, CtlError> {
    let fd = crate::netdev::inherited_fd(name)?;
    let sock = socket2::Socket::from(fd);
    let bad = |why: String| CtlError::Invalid(format!("-chardev socket,fd={name}: {why}"));
    let listening = sock
        .is_listener()
        .map_err(|e| bad(format!("not a socket ({e})")))?;
    if !listening {
        return Err(bad(
            "the descriptor is not a listening socket (server=on needs one)".into(),
        ));
    }
    let local = sock.local_addr().map_err(|e| bad(e.to_string()))?;
    let fd = OwnedFd::from(sock);
    Ok(if local.as_socket().is_some() {
        Inherited::Tcp(TcpListener::from(fd))
    } else {
        Inherited::Unix(UnixListener::from(fd))
    })
}

fn serve_unix(l: UnixListener, ctl: Sender<Msg>, pretty: bool) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            start_unix_client(s, ctl.clone(), pretty);
        }
    });
}

fn serve_tcp(l: TcpListener, ctl: Sender<Msg>, pretty: bool) {
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            start_tcp_client(s, ctl.clone(), pretty);
        }
    });
}

fn spawn_writer<W: Write + Send + 'static>(
    mut w: W,
    on_error: impl FnOnce() + Send + 'static,
) -> Outbox {
    let (tx, rx) = channel::<String>();
    let out = Outbox::new(tx);
    let mine = out.state.clone();
    std::thread::spawn(move || {
        for line in rx {
            if w.write_all(line.as_bytes()).is_err() {
                break;
            }
            mine.sent(line.len());
        }
        mine.close();
        on_error();
    });
    out
}

/// Reads a client's bytes until it goes away; `recv` returns bytes read and any
/// descriptors that came with them.
fn reader_loop(
    id: ClientId,
    ctl: Sender<Msg>,
    out: Outbox,
    mut recv: impl FnMut(&mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)>,
) {
    let mut splitter = Splitter::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A client that does not read its replies is not read either.
        out.wait_room();
        let (n, fds) = match recv(&mut buf) {
            Ok((0, _)) | Err(_) => break,
            Ok(x) => x,
        };
        if !fds.is_empty() && ctl.send(Msg::Fds { id, fds }).is_err() {
            return;
        }
        splitter.push(&buf[..n]);
        for input in splitter.drain() {
            if ctl.send(Msg::Input { id, input }).is_err() {
                return;
            }
        }
    }
    let _ = ctl.send(Msg::Gone { id });
}

/// The bound endpoints; dropping it removes the unix sockets it made.
#[derive(Debug, Default)]
pub struct Listeners {
    paths: Vec<std::path::PathBuf>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Binds a unix socket that is never accessible to others, not even for a moment: the
/// file is created under umask 0177 (mode 0600), and set to 0600 again in case the
/// path's directory or filesystem made it otherwise.
fn bind_private(path: &std::path::Path) -> std::io::Result<UnixListener> {
    let l = backends::sys::with_umask(0o177, || UnixListener::bind(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Binds every monitor and starts accepting clients in the background.
pub fn listen(monitors: &[MonitorSpec], ctl: &Sender<Msg>) -> Result<Listeners, CtlError> {
    let mut bound = Listeners::default();
    for m in monitors {
        let pretty = m.pretty;
        match &m.at {
            Endpoint::Fd(name) => match inherited_listener(name)? {
                Inherited::Unix(l) => serve_unix(l, ctl.clone(), pretty),
                Inherited::Tcp(l) => serve_tcp(l, ctl.clone(), pretty),
            },
            Endpoint::Unix(name) => {
                let path = crate::osarg::path(name);
                let _ = std::fs::remove_file(&path);
                let l = bind_private(&path).map_err(|e| {
                    CtlError::Invalid(format!(
                        "-qmp unix:{}: cannot listen: {e}",
                        crate::osarg::display(name)
                    ))
                })?;
                bound.paths.push(path);
                serve_unix(l, ctl.clone(), pretty);
            }
            Endpoint::Tcp(addr) => {
                let l = TcpListener::bind(addr.as_str()).map_err(|e| {
                    CtlError::Invalid(format!("-qmp tcp:{addr}: cannot listen: {e}"))
                })?;
                if l.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
                    tracing::warn!(
                        "QMP listens on tcp:{addr}, beyond loopback: anyone who can connect \
                         there controls the switch (QMP has no authentication)"
                    );
                }
                serve_tcp(l, ctl.clone(), pretty);
            }
        }
    }
    Ok(bound)
}

/// Registers a new client with the control loop: its writer thread (which shuts the
/// connection when writing fails) and its id. `None` when the control loop is gone.
fn register<W: Write + Send + 'static>(
    w: W,
    on_error: impl FnOnce() + Send + 'static,
    ctl: &Sender<Msg>,
    pretty: bool,
) -> Option<(ClientId, Outbox)> {
    let id = NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = spawn_writer(w, on_error);
    let connected = Msg::Connected {
        id,
        out: out.clone(),
        pretty,
    };
    ctl.send(connected).ok()?;
    Some((id, out))
}

fn start_unix_client(s: UnixStream, ctl: Sender<Msg>, pretty: bool) {
    let (Ok(w), Ok(closer)) = (s.try_clone(), s.try_clone()) else {
        return;
    };
    let on_error = move || {
        let _ = closer.shutdown(std::net::Shutdown::Both);
    };
    let Some((id, out)) = register(w, on_error, &ctl, pretty) else {
        return;
    };
    std::thread::spawn(move || reader_loop(id, ctl, out, |buf| recv_with_fds(s.as_fd(), buf, 0)));
}

fn start_tcp_client(s: TcpStream, ctl: Sender<Msg>, pretty: bool) {
    let _ = s.set_nodelay(true);
    let (Ok(w), Ok(closer), Ok(mut r)) = (s.try_clone(), s.try_clone(), s.try_clone()) else {
        return;
    };
    let on_error = move || {
        let _ = closer.shutdown(std::net::Shutdown::Both);
    };
    let Some((id, out)) = register(w, on_error, &ctl, pretty) else {
        return;
    };
    std::thread::spawn(move || {
        reader_loop(id, ctl, out, |buf| r.read(buf).map(|n| (n, Vec::new())))
    });
}

impl Control {
    /// Wraps the daemon.
    pub fn new(daemon: Daemon) -> Control {
        Control {
            daemon,
            clients: HashMap::new(),
            announcer: Announcer::default(),
            quit: false,
            name: None,
        }
    }

    /// Sends a line to one client.
    pub fn send(&self, id: ClientId, v: &Value) {
        if let Some(c) = self.clients.get(&id) {
            c.out.reply(if c.pretty {
                wire::pretty_line(v)
            } else {
                wire::line(v)
            });
        }
    }

    /// Sends an event to every client in command mode.
    pub fn broadcast(&self, name: &str, data: Option<Value>) {
        let ev = wire::event(name, data);
        let (plain, pretty) = (wire::line(&ev), wire::pretty_line(&ev));
        for c in self.clients.values().filter(|c| c.negotiated) {
            c.out.event(if c.pretty {
                pretty.clone()
            } else {
                plain.clone()
            });
        }
    }

    /// Handles one message; returns false when the loop should end.
    pub fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Connected { id, out, pretty } => {
                let g = wire::greeting();
                out.reply(if pretty {
                    wire::pretty_line(&g)
                } else {
                    wire::line(&g)
                });
                tracing::info!("QMP client {id} connected");
                self.clients.insert(
                    id,
                    Client {
                        out,
                        pretty,
                        negotiated: false,
                        fds: HashMap::new(),
                        pending_fds: Vec::new(),
                    },
                );
            }
            Msg::Fds { id, fds } => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.pending_fds.extend(fds);
                }
            }
            Msg::Input { id, input } => {
                let reply = match input {
                    Input::Value(v) => commands::execute(self, id, v),
                    Input::Error(desc) => Some(wire::error("GenericError", &desc, None)),
                };
                if let Some(r) = reply {
                    self.send(id, &r);
                }
                if self.quit {
                    self.broadcast(
                        "SHUTDOWN",
                        Some(serde_json::json!({"guest": false, "reason": "host-qmp-quit"})),
                    );
                    return false;
                }
            }
            Msg::Gone { id } => {
                if let Some(c) = self.clients.remove(&id) {
                    let n = c.out.dropped_events();
                    if n > 0 {
                        tracing::warn!(
                            "QMP client {id} left; {n} event(s) were dropped for it while it \
                             did not read its replies"
                        );
                    } else {
                        tracing::info!("QMP client {id} left");
                    }
                }
            }
            Msg::Event { name, data } => self.broadcast(name, Some(data)),
            Msg::Metrics(reply) => {
                let _ = reply.send(crate::metrics::render(self));
            }
            Msg::Signal => {
                self.broadcast(
                    "SHUTDOWN",
                    Some(serde_json::json!({"guest": false, "reason": "host-signal"})),
                );
                return false;
            }
        }
        true
    }

    /// Lets every client's writer finish what is queued (the SHUTDOWN event, the reply
    /// to `quit`) before the process exits, waiting at most `within` in all.
    pub fn flush(&self, within: std::time::Duration) {
        let deadline = Instant::now() + within;
        for c in self.clients.values() {
            c.out.wait_drained(deadline);
        }
    }

    /// Runs until `quit` or a signal, firing announce timers on time.
    pub fn run(&mut self, rx: &Receiver<Msg>) {
        loop {
            let next = self.announcer.next_deadline();
            let msg = match next {
                Some(t) => match rx.recv_timeout(t.saturating_duration_since(Instant::now())) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => return,
                },
            };
            if let Some(m) = msg {
                if !self.handle(m) {
                    return;
                }
            }
            self.announcer.fire_due(&self.daemon, Instant::now());
        }
    }
}
