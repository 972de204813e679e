//! Stream socket ports: `listen=`, `connect=` and stream `fd=`, and `-netdev stream`
//! (`server=on` or a client, TCP or unix, with `reconnect-ms`). Each frame travels as a
//! 4-byte big-endian length followed by the frame (QEMU's framing, [`super::framing`]).
//!
//! ```text
//!  rx: one recv at a time into the reassembler's room → cut frames → copy each into a
//!      pool buffer
//!      (a stream has no frame boundaries, so one copy is the price of reassembly)
//!  tx: frames are appended, with their prefixes, to a fill buffer; one send of a whole
//!      buffer is in flight at a time while the other fills (many frames per syscall)
//!  a length of 0 or over the maximum frame closes this connection only (counted as
//!  bad-length); a listening port then accepts the next one
//!  a client with a reconnect delay, once its connection is gone (or never made),
//!  connects again from housekeeping every delay until it succeeds (io_uring connect)
//! ```
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use switch::{Backend, DropReason, Io, Pkt};

use super::framing::{push_frame, Cut, OutOfStep, Reassembler};
use crate::error::Error;
use crate::sys::set_blocking;

const OP_ACCEPT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;
const OP_CANCEL_CONN: u8 = 4;
const OP_CANCEL_LISTEN: u8 = 5;
const OP_CONNECT: u8 = 6;

/// Bytes read per recv request (on top of room for one whole frame).
const RX_CHUNK: usize = 256 * 1024;
/// Frames waiting for rx_burst before we stop reading (TCP then pushes back).
const READY_MAX: usize = 512;
/// Bytes queued for sending before frames are refused (tx-full).
const TX_BUF_MAX: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// No connection (a listening port is accepting).
    None,
    /// Connected.
    Open,
    /// Cancelling this connection's requests before closing it.
    Closing,
}

/// A stream port queue.
pub struct StreamPort {
    listener: Option<OwnedFd>,
    conn: Option<OwnedFd>,
    state: Conn,
    accept_posted: bool,
    listen_inflight: usize,
    conn_inflight: usize,
    recv_posted: bool,
    /// The bytes received; a recv in flight writes into its room (`recv_posted`).
    rx: Reassembler,
    ready: VecDeque<Pkt>,
    sending: Vec<u8>,
    sent: usize,
    send_posted: bool,
    fill: Vec<u8>,
    stopping: bool,
    cancel_listen_sent: bool,
    poll_us: Option<u32>,
    /// A client that reconnects: where to, and how long to wait between attempts.
    reconnect: Option<Reconnect>,
    /// Connections accepted or made so far (for reports and tests).
    pub connections: u64,
}

/// The reconnect state of a client.
struct Reconnect {
    /// Boxed: an in-flight connect request points at it.
    addr: Box<SockAddr>,
    delay: Duration,
    /// When to try next (when not connected and no attempt is in flight).
    next: Instant,
    /// The socket of the attempt in flight.
    pending: Option<OwnedFd>,
}

/// A stream socket of `addr`'s family (TCP for inet).
fn stream_socket(addr: &SockAddr) -> Result<Socket, Error> {
    let proto = if addr.is_unix() {
        None
    } else {
        Some(Protocol::TCP)
    };
    Socket::new(addr.domain(), Type::STREAM.cloexec(), proto).map_err(|source| Error::Socket {
        what: "socket",
        addr: describe(addr),
        source,
    })
}

/// An address as messages show it: `host:port` or the unix path.
pub fn describe(addr: &SockAddr) -> String {
    if let Some(a) = addr.as_socket() {
        return a.to_string();
    }
    match addr.as_pathname() {
        Some(p) => p.display().to_string(),
        None => match addr.as_abstract_namespace() {
            Some(name) => format!("@{}", String::from_utf8_lossy(name)),
            None => "?".into(),
        },
    }
}

fn addr_err(what: &'static str, addr: &SockAddr) -> impl FnOnce(std::io::Error) -> Error {
    let addr = describe(addr);
    move |source| Error::Socket { what, addr, source }
}

fn sock_err(what: &'static str, addr: &SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    let addr = addr.to_string();
    move |source| Error::Socket { what, addr, source }
}

fn tcp_socket(addr: &SocketAddr) -> Result<Socket, Error> {
    Socket::new(
        Domain::for_address(*addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(sock_err("socket", addr))
}

/// A descriptor passed in, made blocking (io_uring waits for readiness itself).
fn blocking(fd: OwnedFd) -> Result<OwnedFd, Error> {
    set_blocking(std::os::fd::AsFd::as_fd(&fd)).map_err(|source| Error::Socket {
        what: "make blocking",
        addr: "fd".into(),
        source,
    })?;
    Ok(fd)
}

impl StreamPort {
    fn new(
        listener: Option<OwnedFd>,
        conn: Option<OwnedFd>,
        max_frame: usize,
        poll_us: Option<u32>,
    ) -> StreamPort {
        let state = if conn.is_some() {
            Conn::Open
        } else {
            Conn::None
        };
        StreamPort {
            listener,
            connections: u64::from(conn.is_some()),
            conn,
            state,
            accept_posted: false,
            listen_inflight: 0,
            conn_inflight: 0,
            recv_posted: false,
            rx: Reassembler::new(max_frame, RX_CHUNK),
            ready: VecDeque::new(),
            sending: Vec::with_capacity(TX_BUF_MAX),
            sent: 0,
            send_posted: false,
            fill: Vec::with_capacity(TX_BUF_MAX),
            stopping: false,
            cancel_listen_sent: false,
            poll_us,
            reconnect: None,
        }
    }

    /// `-netdev stream,server=on`: listens on `addr` (inet or unix) and accepts one
    /// connection at a time.
    pub fn listen_at(
        addr: &SockAddr,
        max_frame: usize,
        poll_us: Option<u32>,
    ) -> Result<StreamPort, Error> {
        let s = stream_socket(addr)?;
        if !addr.is_unix() {
            s.set_reuse_address(true)
                .map_err(addr_err("set SO_REUSEADDR on", addr))?;
        } else if let Some(p) = addr.as_pathname() {
            // As QEMU does: a stale socket file of an earlier run is replaced.
            let _ = std::fs::remove_file(p);
        }
        s.bind(addr).map_err(addr_err("bind", addr))?;
        s.listen(1).map_err(addr_err("listen on", addr))?;
        Ok(StreamPort::new(Some(s.into()), None, max_frame, poll_us))
    }

    /// `-netdev stream` client: connects to `addr` now. Without a reconnect delay a
    /// failure is an error; with one, the port starts unconnected and tries again every
    /// `reconnect`, as it does whenever the connection is lost.
    pub fn connect_to(
        addr: SockAddr,
        reconnect: Option<Duration>,
        max_frame: usize,
        poll_us: Option<u32>,
    ) -> Result<StreamPort, Error> {
        let conn = stream_socket(&addr)?;
        let conn = match conn.connect(&addr) {
            Ok(()) => {
                let _ = conn.set_tcp_nodelay(true);
                Some(OwnedFd::from(conn))
            }
            Err(e) if reconnect.is_none() => return Err(addr_err("connect to", &addr)(e)),
            Err(e) => {
                tracing::info!(
                    "socket stream: connect to {} failed ({e}), will retry",
                    describe(&addr)
                );
                None
            }
        };
        let mut port = StreamPort::new(None, conn, max_frame, poll_us);
        port.reconnect = reconnect.map(|delay| Reconnect {
            addr: Box::new(addr),
            delay,
            next: Instant::now() + delay,
            pending: None,
        });
        Ok(port)
    }

    /// Starts a connection attempt when one is due.
    fn post_connect(&mut self, io: &mut Io<'_>) {
        if self.state != Conn::None || self.stopping {
            return;
        }
        let Some(r) = &mut self.reconnect else { return };
        if r.pending.is_some() || Instant::now() < r.next {
            return;
        }
        r.next = Instant::now() + r.delay;
        let Ok(sock) = stream_socket(&r.addr) else {
            return;
        };
        let fd = OwnedFd::from(sock);
        let sqe = opcode::Connect::new(
            types::Fd(fd.as_raw_fd()),
            r.addr.as_ptr().cast(),
            r.addr.len(),
        )
        .build();
        // SAFETY: the address is boxed in `self.reconnect` and outlives the request: it
        // is dropped only with the port, after `stop` has seen every request complete.
        if unsafe { io.submit(sqe, OP_CONNECT, 0) } {
            r.pending = Some(fd);
            self.listen_inflight += 1;
        }
    }

    /// `listen=addr`: accepts one connection at a time.
    pub fn listen(
        addr: SocketAddr,
        max_frame: usize,
        poll_us: Option<u32>,
    ) -> Result<StreamPort, Error> {
        let s = tcp_socket(&addr)?;
        s.set_reuse_address(true)
            .map_err(sock_err("set SO_REUSEADDR on", &addr))?;
        s.bind(&addr.into()).map_err(sock_err("bind", &addr))?;
        s.listen(1).map_err(sock_err("listen on", &addr))?;
        Ok(StreamPort::new(Some(s.into()), None, max_frame, poll_us))
    }

    /// `connect=addr`: connects now; fails if nothing listens there.
    pub fn connect(
        addr: SocketAddr,
        max_frame: usize,
        poll_us: Option<u32>,
    ) -> Result<StreamPort, Error> {
        let s = tcp_socket(&addr)?;
        s.connect(&addr.into())
            .map_err(sock_err("connect to", &addr))?;
        let _ = s.set_tcp_nodelay(true);
        Ok(StreamPort::new(None, Some(s.into()), max_frame, poll_us))
    }

    /// A connected stream socket passed in.
    pub fn from_fd(
        fd: OwnedFd,
        max_frame: usize,
        poll_us: Option<u32>,
    ) -> Result<StreamPort, Error> {
        let fd = blocking(fd)?;
        Ok(StreamPort::new(None, Some(fd), max_frame, poll_us))
    }

    /// A listening stream socket passed in (`-netdev stream,server=on,addr.type=fd`).
    pub fn from_listener_fd(
        fd: OwnedFd,
        max_frame: usize,
        poll_us: Option<u32>,
    ) -> Result<StreamPort, Error> {
        let fd = blocking(fd)?;
        Ok(StreamPort::new(Some(fd), None, max_frame, poll_us))
    }

    /// The listening address, if listening (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        let fd = self.listener.as_ref()?;
        let s = socket2::SockRef::from(fd);
        s.local_addr().ok()?.as_socket()
    }

    fn post_accept(&mut self, io: &mut Io<'_>) {
        let Some(l) = &self.listener else { return };
        if self.accept_posted || self.stopping || self.state != Conn::None {
            return;
        }
        let sqe = opcode::Accept::new(
            types::Fd(l.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build();
        // SAFETY: no address buffers are passed.
        if unsafe { io.submit(sqe, OP_ACCEPT, 0) } {
            self.accept_posted = true;
            self.listen_inflight += 1;
        }
    }

    fn post_recv(&mut self, io: &mut Io<'_>) {
        if self.state != Conn::Open
            || self.recv_posted
            || self.stopping
            || self.ready.len() >= READY_MAX
        {
            return;
        }
        let Some(c) = &self.conn else { return };
        let room = self.rx.room();
        if room.is_empty() {
            // Only while whole frames wait for `ready` to drain (a recv of 0 bytes
            // would read as the peer closing).
            return;
        }
        let (ptr, len) = (room.as_mut_ptr(), room.len());
        let sqe = opcode::Recv::new(types::Fd(c.as_raw_fd()), ptr, len as u32).build();
        // SAFETY: the room is part of the reassembler's boxed buffer, owned by this port;
        // neither it nor the buffer's layout is touched until the recv completes
        // (recv_posted guards `room` and `parse`).
        if unsafe { io.submit(sqe, OP_RECV, 0) } {
            self.recv_posted = true;
            self.conn_inflight += 1;
        }
    }

    fn post_send(&mut self, io: &mut Io<'_>) {
        if self.state != Conn::Open || self.send_posted {
            return;
        }
        if self.sent == self.sending.len() {
            if self.fill.is_empty() {
                return;
            }
            std::mem::swap(&mut self.sending, &mut self.fill);
            self.fill.clear();
            self.sent = 0;
        }
        let Some(c) = &self.conn else { return };
        let rest = &self.sending[self.sent..];
        let sqe = opcode::Send::new(types::Fd(c.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: `sending` is not modified while send_posted is set.
        if unsafe { io.submit(sqe, OP_SEND, 0) } {
            self.send_posted = true;
            self.conn_inflight += 1;
        }
    }

    /// Starts closing the connection: cancel its requests; it is closed once none is left.
    fn close_conn(&mut self, io: &mut Io<'_>) {
        if self.state != Conn::Open {
            return;
        }
        if !self.stopping {
            tracing::info!("socket stream: peer disconnected");
            io.counters.set_carrier(false);
        }
        self.state = Conn::Closing;
        if self.conn_inflight > 0 {
            if let Some(c) = &self.conn {
                if io.cancel_all(std::os::fd::AsFd::as_fd(c), OP_CANCEL_CONN) {
                    self.conn_inflight += 1;
                }
            }
        }
        self.finish_close(io);
    }

    fn finish_close(&mut self, io: &mut Io<'_>) {
        if self.state != Conn::Closing || self.conn_inflight > 0 {
            return;
        }
        self.conn = None;
        self.state = Conn::None;
        self.rx.clear();
        self.sending.clear();
        self.sent = 0;
        self.fill.clear();
        if let Some(r) = &mut self.reconnect {
            r.next = Instant::now() + r.delay;
        }
        self.post_accept(io);
    }

    /// Cuts whole frames out of the receive buffer.
    fn parse(&mut self, io: &mut Io<'_>) {
        // At most READY_MAX frames wait (the port's share of the pool); the rest of the
        // bytes stay in the buffer until rx_burst makes room.
        while self.ready.len() < READY_MAX {
            match self.rx.next() {
                None => break,
                Some(Ok(Cut::Frame(f))) => {
                    if let Some(p) = io.receive_copy(f) {
                        self.ready.push_back(p);
                    }
                }
                // A frame the switch does not carry: its length is known, so just it is
                // skipped and the stream kept (QEMU forwards such frames; we count them).
                Some(Ok(Cut::Skipped(why))) => io.counters.count_drop(why, 1),
                Some(Err(OutOfStep)) => {
                    // Not a frame at all: the stream is out of step, and only a new
                    // connection can bring it back.
                    io.counters.count_drop(DropReason::BadLength, 1);
                    self.close_conn(io);
                    return;
                }
            }
        }
    }
}

impl Backend for StreamPort {
    fn kind(&self) -> &'static str {
        "socket"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        io.counters.set_carrier(self.state == Conn::Open);
        self.post_accept(io);
        self.post_recv(io);
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        let n = max.min(self.ready.len());
        out.extend(self.ready.drain(..n));
        if n > 0 {
            // Frames left in the buffer when `ready` was full; not while a receive
            // writes behind them.
            if self.rx.buffered() > 0 && !self.recv_posted {
                self.parse(io);
            }
            self.post_recv(io);
        }
        n
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        if self.state != Conn::Open {
            let n = pkts.len();
            io.drop_all(pkts, DropReason::NotConnected);
            return n;
        }
        let mut n = 0;
        let mut bytes = 0u64;
        let pool = io.pool();
        for p in pkts.iter() {
            let f = pool.bytes(p);
            if self.fill.len() + 4 + f.len() > TX_BUF_MAX {
                break;
            }
            push_frame(&mut self.fill, f);
            bytes += f.len() as u64;
            n += 1;
        }
        for p in pkts.drain(..n) {
            io.free(p);
        }
        io.counters.tx(n as u64, bytes);
        self.post_send(io);
        n
    }

    fn complete(&mut self, io: &mut Io<'_>, op: u8, _tag: u32, res: i32, _flags: u32) {
        match op {
            OP_ACCEPT => {
                self.listen_inflight -= 1;
                self.accept_posted = false;
                if res >= 0 {
                    // SAFETY: a successful accept returns a new descriptor we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(res) };
                    if self.stopping {
                        return;
                    }
                    let sock = socket2::SockRef::from(&fd);
                    let _ = sock.set_tcp_nodelay(true);
                    let peer = sock.peer_addr().ok().and_then(|a| a.as_socket());
                    tracing::info!(
                        "socket stream: peer {} connected",
                        peer.map_or("?".to_string(), |a| a.to_string())
                    );
                    self.conn = Some(fd);
                    self.state = Conn::Open;
                    self.connections += 1;
                    io.counters.set_carrier(true);
                    self.post_recv(io);
                    self.post_send(io);
                }
                // On error the next housekeeping posts a new accept.
            }
            OP_RECV => {
                self.conn_inflight -= 1;
                self.recv_posted = false;
                if self.state == Conn::Open {
                    if res > 0 {
                        self.rx.received(res as usize);
                        self.parse(io);
                        self.post_recv(io);
                    } else {
                        // 0: the peer closed; <0: the connection failed.
                        self.close_conn(io);
                    }
                }
            }
            OP_SEND => {
                self.conn_inflight -= 1;
                self.send_posted = false;
                if self.state == Conn::Open {
                    if res > 0 {
                        self.sent += res as usize;
                        self.post_send(io);
                    } else {
                        self.close_conn(io);
                    }
                }
            }
            OP_CONNECT => {
                self.listen_inflight -= 1;
                let fd = self.reconnect.as_mut().and_then(|r| r.pending.take());
                if let (Some(fd), true, false) = (fd, res == 0, self.stopping) {
                    let sock = socket2::SockRef::from(&fd);
                    let _ = sock.set_tcp_nodelay(true);
                    if let Some(r) = &self.reconnect {
                        tracing::info!("socket stream: connected to {}", describe(&r.addr));
                    }
                    self.conn = Some(fd);
                    self.state = Conn::Open;
                    self.connections += 1;
                    io.counters.set_carrier(true);
                    self.post_recv(io);
                    self.post_send(io);
                }
                // On failure the next attempt is due `delay` after this one started.
            }
            OP_CANCEL_CONN => self.conn_inflight -= 1,
            OP_CANCEL_LISTEN => self.listen_inflight -= 1,
            _ => {}
        }
        self.finish_close(io);
    }

    fn housekeeping(&mut self, io: &mut Io<'_>) {
        self.post_accept(io);
        self.post_connect(io);
        self.post_recv(io);
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        self.stopping = true;
        for p in self.ready.drain(..) {
            io.free(p);
        }
        self.close_conn(io);
        if self.listen_inflight > 0 && !self.cancel_listen_sent {
            let pending = self.reconnect.as_ref().and_then(|r| r.pending.as_ref());
            if let Some(l) = self.listener.as_ref().or(pending) {
                if io.cancel_all(std::os::fd::AsFd::as_fd(l), OP_CANCEL_LISTEN) {
                    self.listen_inflight += 1;
                    self.cancel_listen_sent = true;
                }
            }
        }
        self.finish_close(io);
        self.listen_inflight == 0 && self.conn_inflight == 0
    }

    fn max_held(&self, _pool: &switch::Pool) -> usize {
        // Frames cut out of the byte stream wait in `ready`; sends are copies.
        READY_MAX
    }

    fn poll_us(&self) -> Option<u32> {
        self.poll_us
    }
}
