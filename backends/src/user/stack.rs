//! One libslirp stack, fenced: the only module of `user` that calls into C.
//!
//! ```text
//!   Stack (owns *mut Slirp, lives and dies on the stack thread)
//!     ├─ Shared (the callbacks' opaque, boxed so its address is fixed)
//!     │    data fd ──send_packet──► frames to the switch (MSG_DONTWAIT; full: dropped, counted)
//!     │    timers: slab; libslirp's timer handle is slot index + 1, never a pointer
//!     └─ guest links: boxed per guestfwd socket, their address the write callback's opaque
//! ```
//!
//! libslirp is single-threaded and calls back into us from inside `slirp_input`,
//! `slirp_pollfds_poll`, timer callbacks and `slirp_cleanup`. So the callbacks see
//! `Shared` only as `&Shared` (interior mutability, no borrow held across a call into
//! C), and `Stack` is neither `Send` nor `Sync`: it is built on the thread that runs it.
//! A callback must not unwind into C, so none of them can panic: slab access is checked,
//! `RefCell` borrows are never held while libslirp runs.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use libslirp_sys as sys;

use super::config::{HostFwd, HostSide, UserConfig};
use crate::error::Error;

/// `SlirpConfig` version we fill in: version 3 (up to `disable_dns`) is the newest whose
/// `SlirpCb` matches the bindings' struct (version 4 makes libslirp read two callbacks
/// the bindings do not declare).
const CONFIG_VERSION: u32 = 3;
/// Frames shorter than this are padded, as on a wire (libslirp's ARP replies are 42).
const MIN_WIRE_FRAME: usize = 60;

// In libslirp >= 4.5 but not in the bindings: forwarding rules for any address family,
// which `unix:` host sockets need.
extern "C" {
    fn slirp_add_hostxfwd(
        slirp: *mut sys::Slirp,
        haddr: *const libc::sockaddr,
        haddrlen: libc::socklen_t,
        gaddr: *const libc::sockaddr,
        gaddrlen: libc::socklen_t,
        flags: c_int,
    ) -> c_int;
    fn slirp_remove_hostxfwd(
        slirp: *mut sys::Slirp,
        haddr: *const libc::sockaddr,
        haddrlen: libc::socklen_t,
        flags: c_int,
    ) -> c_int;
}
const SLIRP_HOSTFWD_UDP: c_int = 1;

/// What the stack counts, read by the control thread.
#[derive(Debug, Default)]
pub struct StackCounters {
    /// Frames libslirp sent toward the switch.
    pub to_switch: AtomicU64,
    /// Of those, dropped because the channel to the switch was full.
    pub to_switch_full: AtomicU64,
    /// Frames from the switch handed to libslirp.
    pub from_switch: AtomicU64,
    /// Guest errors libslirp reported (malformed guest traffic).
    pub guest_errors: AtomicU64,
}

struct Timer {
    cb: sys::SlirpTimerCb,
    cb_opaque: *mut c_void,
    /// When it fires, in milliseconds of [`Shared::now_ms`].
    expire_ms: Option<i64>,
}

/// The callbacks' state.
struct Shared {
    data: RawFd,
    epoch: Instant,
    timers: RefCell<Vec<Option<Timer>>>,
    /// libslirp asked for another round without sleeping.
    notified: Cell<bool>,
    counters: Arc<StackCounters>,
}

impl Shared {
    fn now_ns(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(i64::MAX)
    }

    fn now_ms(&self) -> i64 {
        self.now_ns() / 1_000_000
    }
}

/// A guestfwd socket: libslirp writes the guest's bytes to it; what it reads back is
/// fed to the guest connection as libslirp has room.
struct GuestLink {
    sock: OwnedFd,
    server: Ipv4Addr,
    port: u16,
    open: bool,
}

/// The stack.
pub struct Stack {
    raw: NonNull<sys::Slirp>,
    shared: Box<Shared>,
    /// Boxed: libslirp holds each link's address, which a growing Vec would move.
    #[allow(clippy::vec_box)]
    links: Vec<Box<GuestLink>>,
}

fn in_addr(a: Ipv4Addr) -> sys::in_addr {
    sys::in_addr {
        s_addr: u32::from(a).to_be(),
    }
}

fn in6_addr(a: Ipv6Addr) -> sys::in6_addr {
    sys::in6_addr {
        s6_addr: a.octets(),
    }
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn sockaddr_un(path: &std::path::Path) -> Option<libc::sockaddr_un> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) value.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= sa.sun_path.len() {
        return None;
    }
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
        *d = *s as c_char;
    }
    Some(sa)
}

fn cstring(what: &str, s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Config(format!("'{what}' must not contain a NUL byte")))
}

fn shared_of<'a>(opaque: *mut c_void) -> &'a Shared {
    // SAFETY: every callback libslirp makes gets the opaque pointer given to slirp_new,
    // which is the address of the boxed Shared that Stack owns; Stack::drop runs
    // slirp_cleanup (the last call that can call back) before the box is freed. Only
    // shared references to it are ever made.
    unsafe { &*(opaque as *const Shared) }
}

unsafe extern "C" fn send_packet(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    let s = shared_of(opaque);
    let mut padded = [0u8; MIN_WIRE_FRAME];
    let (ptr, n) = if len < MIN_WIRE_FRAME {
        // SAFETY: libslirp passes `len` readable bytes at `buf`; len < 60 fits `padded`.
        unsafe { std::ptr::copy_nonoverlapping(buf as *const u8, padded.as_mut_ptr(), len) };
        (padded.as_ptr() as *const c_void, MIN_WIRE_FRAME)
    } else {
        (buf, len)
    };
    s.counters.to_switch.fetch_add(1, Ordering::Relaxed);
    // SAFETY: `ptr` points to `n` readable bytes (libslirp's buffer or `padded`); `data`
    // is a socket the stack's owner keeps open for the stack's whole life.
    let r = unsafe { libc::send(s.data, ptr, n, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if r < 0 {
        // Full (the switch is behind) or gone: the frame is lost, as on a wire; TCP in
        // the stack sends it again.
        s.counters.to_switch_full.fetch_add(1, Ordering::Relaxed);
    }
    len as isize
}

unsafe extern "C" fn guest_error(msg: *const c_char, opaque: *mut c_void) {
    let s = shared_of(opaque);
    s.counters.guest_errors.fetch_add(1, Ordering::Relaxed);
    if !msg.is_null() {
        // SAFETY: libslirp passes a NUL-terminated message, valid during the call.
        let m = unsafe { CStr::from_ptr(msg) };
        tracing::debug!("user: guest error: {}", m.to_string_lossy());
    }
}

unsafe extern "C" fn clock_get_ns(opaque: *mut c_void) -> i64 {
    shared_of(opaque).now_ns()
}

/// Timer handles are slot index + 1 (never null), not pointers.
fn timer_slot(timer: *mut c_void) -> Option<usize> {
    (timer as usize).checked_sub(1)
}

unsafe extern "C" fn timer_new(
    cb: sys::SlirpTimerCb,
    cb_opaque: *mut c_void,
    opaque: *mut c_void,
) -> *mut c_void {
    let s = shared_of(opaque);
    let Ok(mut timers) = s.timers.try_borrow_mut() else {
        return std::ptr::null_mut();
    };
    let t = Timer {
        cb,
        cb_opaque,
        expire_ms: None,
    };
    let slot = match timers.iter().position(Option::is_none) {
        Some(i) => {
            timers[i] = Some(t);
            i
        }
        None => {
            timers.push(Some(t));
            timers.len() - 1
        }
    };
    (slot + 1) as *mut c_void
}

unsafe extern "C" fn timer_free(timer: *mut c_void, opaque: *mut c_void) {
    let s = shared_of(opaque);
    if let (Some(i), Ok(mut timers)) = (timer_slot(timer), s.timers.try_borrow_mut()) {
        if let Some(t) = timers.get_mut(i) {
            *t = None;
        }
    }
}

unsafe extern "C" fn timer_mod(timer: *mut c_void, expire_time: i64, opaque: *mut c_void) {
    let s = shared_of(opaque);
    if let (Some(i), Ok(mut timers)) = (timer_slot(timer), s.timers.try_borrow_mut()) {
        if let Some(Some(t)) = timers.get_mut(i) {
            t.expire_ms = Some(expire_time);
        }
    }
}

// Every round polls what slirp_pollfds_fill lists, so there is nothing to register.
unsafe extern "C" fn register_poll_fd(_fd: c_int, _opaque: *mut c_void) {}
unsafe extern "C" fn unregister_poll_fd(_fd: c_int, _opaque: *mut c_void) {}

unsafe extern "C" fn notify(opaque: *mut c_void) {
    shared_of(opaque).notified.set(true);
}

unsafe extern "C" fn guest_write(buf: *const c_void, len: usize, opaque: *mut c_void) -> isize {
    // SAFETY: the opaque of a guestfwd is the address of its boxed GuestLink, which the
    // Stack keeps until after slirp_cleanup; libslirp gives `len` readable bytes.
    let (link, bytes) = unsafe {
        (
            &*(opaque as *const GuestLink),
            std::slice::from_raw_parts(buf as *const u8, len),
        )
    };
    // The forwarded stream is reliable: write it all (the socket blocks), as QEMU's
    // chardev does.
    let mut done = 0;
    while done < bytes.len() {
        let rest = &bytes[done..];
        // SAFETY: `rest` is valid for its length; the socket is the link's own.
        let n = unsafe {
            libc::send(
                link.sock.as_raw_fd(),
                rest.as_ptr() as *const c_void,
                rest.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        match n {
            1.. => done += n as usize,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return -1,
        }
    }
    len as isize
}

/// Translates libslirp's poll flags to poll(2)'s and back.
fn to_poll(ev: c_int) -> i16 {
    let mut r = 0;
    if ev & sys::SLIRP_POLL_IN != 0 {
        r |= libc::POLLIN;
    }
    if ev & sys::SLIRP_POLL_OUT != 0 {
        r |= libc::POLLOUT;
    }
    if ev & sys::SLIRP_POLL_PRI != 0 {
        r |= libc::POLLPRI;
    }
    r
}

fn from_poll(rev: i16) -> c_int {
    let mut r = 0;
    if rev & libc::POLLIN != 0 {
        r |= sys::SLIRP_POLL_IN;
    }
    if rev & libc::POLLOUT != 0 {
        r |= sys::SLIRP_POLL_OUT;
    }
    if rev & libc::POLLPRI != 0 {
        r |= sys::SLIRP_POLL_PRI;
    }
    if rev & libc::POLLERR != 0 {
        r |= sys::SLIRP_POLL_ERR;
    }
    if rev & libc::POLLHUP != 0 {
        r |= sys::SLIRP_POLL_HUP;
    }
    r
}

unsafe extern "C" fn add_poll(fd: c_int, events: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: the opaque of slirp_pollfds_fill is the &mut Vec<pollfd> that
    // Stack::poll lends for that call only.
    let fds = unsafe { &mut *(opaque as *mut Vec<libc::pollfd>) };
    fds.push(libc::pollfd {
        fd,
        events: to_poll(events),
        revents: 0,
    });
    (fds.len() - 1) as c_int
}

unsafe extern "C" fn get_revents(idx: c_int, opaque: *mut c_void) -> c_int {
    // SAFETY: as in add_poll, for slirp_pollfds_poll.
    let fds = unsafe { &*(opaque as *const Vec<libc::pollfd>) };
    usize::try_from(idx)
        .ok()
        .and_then(|i| fds.get(i))
        .map_or(0, |p| from_poll(p.revents))
}

static CALLBACKS: sys::SlirpCb = sys::SlirpCb {
    send_packet: Some(send_packet),
    guest_error: Some(guest_error),
    clock_get_ns: Some(clock_get_ns),
    timer_new: Some(timer_new),
    timer_free: Some(timer_free),
    timer_mod: Some(timer_mod),
    register_poll_fd: Some(register_poll_fd),
    unregister_poll_fd: Some(unregister_poll_fd),
    notify: Some(notify),
};

impl Stack {
    /// Makes the stack. Frames for the switch go to `data`, which the caller keeps open
    /// for longer than the stack.
    pub fn new(
        cfg: &UserConfig,
        data: &OwnedFd,
        counters: Arc<StackCounters>,
    ) -> Result<Stack, Error> {
        let opt =
            |what: &str, s: &Option<String>| s.as_deref().map(|v| cstring(what, v)).transpose();
        let hostname = opt("hostname", &cfg.hostname)?;
        let tftp_name = opt("tftp-server-name", &cfg.tftp_server_name)?;
        let tftp = cfg
            .tftp
            .as_ref()
            .map(|p| cstring("tftp", &p.to_string_lossy()))
            .transpose()?;
        let bootfile = opt("bootfile", &cfg.bootfile)?;
        let domain = opt("domainname", &cfg.domainname)?;
        let search = cfg
            .dnssearch
            .iter()
            .map(|s| cstring("dnssearch", s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut search_ptrs: Vec<*const c_char> = search.iter().map(|s| s.as_ptr()).collect();
        search_ptrs.push(std::ptr::null());
        let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        let config = sys::SlirpConfig {
            version: CONFIG_VERSION,
            restricted: c_int::from(cfg.restricted),
            in_enabled: cfg.ipv4,
            vnetwork: in_addr(cfg.net),
            vnetmask: in_addr(cfg.mask),
            vhost: in_addr(cfg.host),
            in6_enabled: cfg.ipv6,
            vprefix_addr6: in6_addr(cfg.prefix6),
            vprefix_len: cfg.prefix6_len,
            vhost6: in6_addr(cfg.host6),
            vhostname: ptr(&hostname),
            tftp_server_name: ptr(&tftp_name),
            tftp_path: ptr(&tftp),
            bootfile: ptr(&bootfile),
            vdhcp_start: in_addr(cfg.dhcp),
            vnameserver: in_addr(cfg.dns),
            vnameserver6: in6_addr(cfg.dns6),
            // Without search suffixes libslirp wants NULL, not an empty list.
            vdnssearch: if search.is_empty() {
                std::ptr::null_mut()
            } else {
                search_ptrs.as_mut_ptr()
            },
            vdomainname: ptr(&domain),
            if_mtu: 0,
            if_mru: 0,
            disable_host_loopback: false,
            enable_emu: false,
            outbound_addr: std::ptr::null(),
            outbound_addr6: std::ptr::null(),
            disable_dns: false,
            disable_dhcp: false,
        };
        let shared = Box::new(Shared {
            data: data.as_raw_fd(),
            epoch: Instant::now(),
            timers: RefCell::new(Vec::new()),
            notified: Cell::new(false),
            counters,
        });
        let opaque = &*shared as *const Shared as *mut c_void;
        // SAFETY: `config` and the strings it points to live until slirp_new returns
        // (libslirp copies what it keeps); CALLBACKS is static; `opaque` is the boxed
        // Shared, kept by the Stack for as long as the stack exists.
        let raw = unsafe { sys::slirp_new(&config, &CALLBACKS, opaque) };
        let raw = NonNull::new(raw).ok_or_else(|| {
            Error::Config("libslirp could not create the user network stack".into())
        })?;
        Ok(Stack {
            raw,
            shared,
            links: Vec::new(),
        })
    }

    /// Hands a frame from the switch to the stack.
    pub fn input(&mut self, frame: &[u8]) {
        let Ok(len) = c_int::try_from(frame.len()) else {
            return;
        };
        self.shared
            .counters
            .from_switch
            .fetch_add(1, Ordering::Relaxed);
        // SAFETY: `raw` is a live stack used only from this thread; the frame is valid
        // for `len` bytes during the call.
        unsafe { sys::slirp_input(self.raw.as_ptr(), frame.as_ptr(), len) };
    }

    /// Adds a host forwarding rule; `false` when libslirp refuses it (the port is
    /// taken, the address is not ours).
    pub fn add_hostfwd(&mut self, f: &HostFwd) -> bool {
        let guest = sockaddr_in(f.guest);
        let flags = if f.udp { SLIRP_HOSTFWD_UDP } else { 0 };
        let glen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let r = match &f.host {
            HostSide::Inet(a) => {
                let h = sockaddr_in(*a);
                // SAFETY: both addresses are valid for the lengths given during the call.
                unsafe {
                    slirp_add_hostxfwd(
                        self.raw.as_ptr(),
                        &h as *const _ as *const libc::sockaddr,
                        glen,
                        &guest as *const _ as *const libc::sockaddr,
                        glen,
                        flags,
                    )
                }
            }
            HostSide::Unix(path) => {
                // Replace a stale socket, never another kind of file (as QEMU).
                if let Ok(m) = std::fs::symlink_metadata(path) {
                    use std::os::unix::fs::FileTypeExt;
                    if !m.file_type().is_socket() || std::fs::remove_file(path).is_err() {
                        return false;
                    }
                }
                let Some(h) = sockaddr_un(path) else {
                    return false;
                };
                // SAFETY: as above.
                unsafe {
                    slirp_add_hostxfwd(
                        self.raw.as_ptr(),
                        &h as *const _ as *const libc::sockaddr,
                        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                        &guest as *const _ as *const libc::sockaddr,
                        glen,
                        flags,
                    )
                }
            }
        };
        r >= 0
    }

    /// Removes the rule listening on `host`; `false` when there is none.
    pub fn remove_hostfwd(&mut self, udp: bool, host: SocketAddrV4) -> bool {
        let h = sockaddr_in(host);
        // SAFETY: the address is valid for its length during the call.
        let r = unsafe {
            slirp_remove_hostxfwd(
                self.raw.as_ptr(),
                &h as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                if udp { SLIRP_HOSTFWD_UDP } else { 0 },
            )
        };
        r == 0
    }

    /// Guest connections to `server:port` run `cmd` (stdin/stdout the connection).
    pub fn add_exec(&mut self, cmd: &str, server: Ipv4Addr, port: u16) -> Result<(), Error> {
        let c = cstring("guestfwd", cmd)?;
        let mut addr = in_addr(server);
        // SAFETY: `c` and `addr` are valid during the call; libslirp copies the command.
        let r = unsafe {
            sys::slirp_add_exec(self.raw.as_ptr(), c.as_ptr(), &mut addr, c_int::from(port))
        };
        match r {
            0.. => Ok(()),
            _ => Err(Error::Config(format!(
                "Conflicting/invalid host:port in guest forwarding rule for {server}:{port}"
            ))),
        }
    }

    /// Guest connections to `server:port` are joined to `sock` (one stream, as a QEMU
    /// chardev is).
    pub fn add_guest_link(
        &mut self,
        sock: OwnedFd,
        server: Ipv4Addr,
        port: u16,
    ) -> Result<(), Error> {
        let link = Box::new(GuestLink {
            sock,
            server,
            port,
            open: true,
        });
        let opaque = &*link as *const GuestLink as *mut c_void;
        let mut addr = in_addr(server);
        // SAFETY: `opaque` is the boxed link, kept in `links` until after slirp_cleanup.
        let r = unsafe {
            sys::slirp_add_guestfwd(
                self.raw.as_ptr(),
                Some(guest_write),
                opaque,
                &mut addr,
                c_int::from(port),
            )
        };
        if r < 0 {
            return Err(Error::Config(format!(
                "Conflicting/invalid host:port in guest forwarding rule for {server}:{port}"
            )));
        }
        self.links.push(link);
        Ok(())
    }

    /// libslirp's table of connections, as `info usernet` shows it.
    pub fn connection_info(&self) -> String {
        // SAFETY: `raw` is live; the result is a malloc'd NUL-terminated string (glib's
        // g_malloc is the system allocator), ours to free.
        unsafe {
            let p = sys::slirp_connection_info(self.raw.as_ptr());
            if p.is_null() {
                return String::new();
            }
            let s = CStr::from_ptr(p).to_string_lossy().into_owned();
            libc::free(p as *mut c_void);
            s
        }
    }

    /// One round: sleep in poll(2) on `ours` (first in the set, their revents filled in
    /// on return) and on every socket of the stack, at most `cap_ms`; then let the stack
    /// handle what is ready, feed guestfwd links and fire due timers.
    pub fn poll(&mut self, ours: &mut [libc::pollfd], cap_ms: i32) {
        let mut fds: Vec<libc::pollfd> = ours.to_vec();
        let mut timeout: u32 = u32::try_from(cap_ms.max(0)).unwrap_or(0);
        let opaque = &mut fds as *mut Vec<libc::pollfd> as *mut c_void;
        // SAFETY: `fds` outlives the call and is only reached through `opaque` in it.
        unsafe { sys::slirp_pollfds_fill(self.raw.as_ptr(), &mut timeout, Some(add_poll), opaque) };
        let links_at = fds.len();
        for l in &self.links {
            // SAFETY: `raw` is live; plain values.
            let room = l.open
                && unsafe {
                    sys::slirp_socket_can_recv(
                        self.raw.as_ptr(),
                        in_addr(l.server),
                        c_int::from(l.port),
                    )
                } > 0;
            fds.push(libc::pollfd {
                fd: if room { l.sock.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let mut wait = i64::from(timeout).min(i64::from(cap_ms.max(0)));
        if let Some(next) = self.next_timer() {
            wait = wait.min((next - self.shared.now_ms()).max(0));
        }
        if self.shared.notified.replace(false) {
            wait = 0;
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait as c_int) };
        let opaque = &mut fds as *mut Vec<libc::pollfd> as *mut c_void;
        // SAFETY: as for the fill; the indexes libslirp asks for are those add_poll gave.
        unsafe {
            sys::slirp_pollfds_poll(
                self.raw.as_ptr(),
                c_int::from(n < 0),
                Some(get_revents),
                opaque,
            )
        };
        for (o, f) in ours.iter_mut().zip(&fds) {
            o.revents = f.revents;
        }
        for i in 0..self.links.len() {
            if fds[links_at + i].revents != 0 {
                self.feed_link(i);
            }
        }
        self.run_timers();
    }

    /// Reads what a guestfwd socket has, no more than the guest connection takes.
    fn feed_link(&mut self, i: usize) {
        let raw = self.raw.as_ptr();
        let l = &mut self.links[i];
        // SAFETY: `raw` is live; plain values.
        let room =
            unsafe { sys::slirp_socket_can_recv(raw, in_addr(l.server), c_int::from(l.port)) };
        let mut buf = [0u8; 4096];
        let want = room.min(buf.len());
        if want == 0 {
            return;
        }
        // SAFETY: `buf` has room for `want` bytes; the socket is ours.
        let n = unsafe {
            libc::recv(
                l.sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut c_void,
                want,
                libc::MSG_DONTWAIT,
            )
        };
        if n == 0
            || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
        {
            l.open = false;
            return;
        }
        if n > 0 {
            // SAFETY: `buf` holds `n` bytes just read.
            unsafe {
                sys::slirp_socket_recv(
                    raw,
                    in_addr(l.server),
                    c_int::from(l.port),
                    buf.as_ptr(),
                    n as c_int,
                )
            };
        }
    }

    fn next_timer(&self) -> Option<i64> {
        let timers = self.shared.timers.borrow();
        timers.iter().flatten().filter_map(|t| t.expire_ms).min()
    }

    /// Fires every due timer. Each is disarmed before its callback runs, with no borrow
    /// held: the callback may re-arm, free or make timers.
    fn run_timers(&mut self) {
        loop {
            let now = self.shared.now_ms();
            let due = {
                let mut timers = self.shared.timers.borrow_mut();
                timers.iter_mut().flatten().find_map(|t| match t.expire_ms {
                    Some(e) if e <= now => {
                        t.expire_ms = None;
                        Some((t.cb, t.cb_opaque))
                    }
                    _ => None,
                })
            };
            let Some((cb, cb_opaque)) = due else { break };
            if let Some(cb) = cb {
                // SAFETY: the callback and its opaque are the pair libslirp gave
                // timer_new for a timer it has not freed; called on the stack's thread.
                unsafe { cb(cb_opaque) };
            }
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: `raw` came from slirp_new and is cleaned up once; the callbacks it may
        // make meanwhile (timer_free, unregister) reach `shared`, freed only after this.
        unsafe { sys::slirp_cleanup(self.raw.as_ptr()) };
    }
}

/// The version of the libslirp linked in.
pub fn version() -> String {
    // SAFETY: returns a static NUL-terminated string.
    unsafe { CStr::from_ptr(sys::slirp_version_string()) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_flags_round_trip() {
        for ev in [sys::SLIRP_POLL_IN, sys::SLIRP_POLL_OUT, sys::SLIRP_POLL_PRI] {
            assert_eq!(from_poll(to_poll(ev)), ev);
        }
        assert_eq!(
            from_poll(libc::POLLHUP | libc::POLLERR),
            sys::SLIRP_POLL_HUP | sys::SLIRP_POLL_ERR
        );
    }

    #[test]
    fn timer_handles_are_never_null_and_map_back() {
        assert_eq!(timer_slot(std::ptr::null_mut()), None);
        assert_eq!(timer_slot(std::ptr::without_provenance_mut(1)), Some(0));
    }

    #[test]
    fn linked_libslirp_is_new_enough() {
        // hostxfwd (unix: host sockets) arrived in 4.5.
        let v = version();
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        assert!((major, minor) >= (4, 5), "libslirp {v}");
    }
}
