//! `user`: QEMU's user-mode network (NAT, DHCP, DNS, TFTP, port forwarding) through
//! libslirp, the library QEMU itself uses.
//!
//! ```text
//!  worker ── UserPort: DgramIo (io_uring recv/send) ══ seqpacket pair ══╗
//!                                                                        ║ one frame
//!  stack thread "slirp-ID": poll(2) on {its end, wake, libslirp's sockets}, timers
//!        frames in ──► slirp_input          send_packet ──► its end (never blocks)
//!        ◄── Cmd (hostfwd_add/remove, info usernet, stop) + a wake byte ── UserHandle
//! ```
//!
//! libslirp runs its own sockets, timers and (for `guestfwd=cmd:`, `smb=`) child
//! processes, and it may block on a guestfwd peer. None of that may stall the packet
//! path, so the stack lives on a thread of its own and meets the worker only through a
//! socket pair, exactly like any other datagram port: the worker never calls libslirp.
//! A seqpacket pair rather than a datagram one: a unix datagram queue holds only
//! `net.unix.max_dgram_qlen` (10 by default) frames, far too few for a burst.
//!
//! Frames the stack sends while the pair is full are dropped and counted (as on a
//! wire; TCP inside the stack sends again); frames from the switch wait in the pair
//! and then in the worker's send budget, where the switch counts what does not fit.

pub mod config;
mod stack;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

pub use self::config::{parse_hostfwd_remove, GuestTarget, HostFwd, UserArgs, UserConfig};
pub use self::stack::StackCounters;
use crate::error::Error;
use crate::io::{DgramConfig, DgramIo, DgramPort};

/// Send buffer asked for on each end of the pair (the kernel caps it at wmem_max).
const PAIR_BUFFER: usize = 4 << 20;
/// Frames taken from the switch per round before the stack's sockets get a turn.
const INPUT_BURST: usize = 256;
/// Longest sleep of the stack thread when nothing at all happens.
const IDLE_MS: i32 = 1000;
/// How long the control thread waits for the stack to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a guestfwd `tcp:` target may take to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame read from the pair (the switch never sends more than 64 KiB).
const MAX_INPUT: usize = 65536 + 64;

enum Cmd {
    AddHostfwd(HostFwd, mpsc::Sender<bool>),
    RemoveHostfwd(bool, SocketAddrV4, mpsc::Sender<bool>),
    Info(mpsc::Sender<String>),
    Stop,
}

/// The control thread's handle on a user network: hostfwd rules and `info usernet`.
#[derive(Clone)]
pub struct UserHandle {
    cmds: mpsc::Sender<Cmd>,
    wake: Arc<UnixStream>,
    counters: Arc<StackCounters>,
    info: String,
}

impl UserHandle {
    fn send(&self, cmd: Cmd) -> Result<(), Error> {
        self.cmds
            .send(cmd)
            .map_err(|_| Error::Config("the user mode network stack has stopped".into()))?;
        // One byte is enough: a full wake socket already has a wake-up pending.
        let _ = (&*self.wake).write(&[1]);
        Ok(())
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Cmd) -> Result<T, Error> {
        let (tx, rx) = mpsc::channel();
        self.send(make(tx))?;
        rx.recv_timeout(REPLY_TIMEOUT)
            .map_err(|_| Error::Config("the user mode network stack is not answering".into()))
    }

    /// Adds a host forwarding rule (HMP `hostfwd_add`), with QEMU's messages.
    pub fn hostfwd_add(&self, rule: &str) -> Result<(), Error> {
        let f = HostFwd::parse(rule)?;
        match self.ask(|tx| Cmd::AddHostfwd(f, tx))? {
            true => Ok(()),
            false => Err(Error::Config(format!(
                "Could not set up host forwarding rule '{rule}'"
            ))),
        }
    }

    /// Removes the rule listening on `host` (HMP `hostfwd_remove`): whether it was there.
    pub fn hostfwd_remove(&self, udp: bool, host: SocketAddrV4) -> Result<bool, Error> {
        self.ask(|tx| Cmd::RemoveHostfwd(udp, host, tx))
    }

    /// libslirp's connection table (HMP `info usernet`).
    pub fn connections(&self) -> Result<String, Error> {
        self.ask(Cmd::Info)
    }

    /// QEMU's description of the stack (`net=...,restrict=...`).
    pub fn info(&self) -> &str {
        &self.info
    }

    /// The stack's counters.
    pub fn counters(&self) -> &StackCounters {
        &self.counters
    }
}

/// The switch's side of a user network: the worker's end of the pair, keeping the
/// stack thread alive.
pub type UserPort = DgramPort<StackGuard>;

/// Stops and joins the stack thread when the port goes.
pub struct StackGuard {
    /// The stack thread's end too, so the worker never reads an end of file from the
    /// pair while the port exists, whatever becomes of the thread.
    _peer: OwnedFd,
    handle: UserHandle,
    thread: Option<JoinHandle<()>>,
}

fn pair_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Socket {
        what,
        addr: "user network socket pair".into(),
        source,
    }
}

/// Starts the stack thread, named after `id`, with `cfg`; returns once the stack exists
/// and every `hostfwd`/`guestfwd`/`smb` is in place, or with why it could not.
pub fn open(id: &str, cfg: UserConfig) -> Result<(UserPort, UserHandle), Error> {
    let (ours, theirs) = Socket::pair(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
        .map_err(pair_err("socketpair"))?;
    for s in [&ours, &theirs] {
        let _ = s.set_send_buffer_size(PAIR_BUFFER);
        let _ = s.set_recv_buffer_size(PAIR_BUFFER);
    }
    theirs
        .set_nonblocking(true)
        .map_err(pair_err("make non-blocking"))?;
    let keep: OwnedFd = theirs.try_clone().map_err(pair_err("duplicate"))?.into();
    let (wake_tx, wake_rx) = UnixStream::pair().map_err(pair_err("socketpair"))?;
    wake_tx
        .set_nonblocking(true)
        .map_err(pair_err("make non-blocking"))?;
    wake_rx
        .set_nonblocking(true)
        .map_err(pair_err("make non-blocking"))?;
    let counters = Arc::new(StackCounters::default());
    let (cmds, cmd_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = UserHandle {
        cmds,
        wake: Arc::new(wake_tx),
        counters: counters.clone(),
        info: cfg.info(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("slirp-{id}"))
        .spawn(move || {
            StackThread {
                data: theirs,
                wake: wake_rx,
                cmds: cmd_rx,
                smb_dir: None,
            }
            .run(cfg, counters, ready_tx)
        })
        .map_err(pair_err("start the stack thread for"))?;
    let guard = StackGuard {
        _peer: keep,
        handle: handle.clone(),
        thread: Some(thread),
    };
    let port = DgramPort::new(
        "user",
        DgramIo::new(ours.into(), DgramConfig::connected(false)),
        None,
        guard,
    );
    match ready_rx.recv_timeout(REPLY_TIMEOUT) {
        Ok(Ok(())) => Ok((port, handle)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::Config(
            "the user mode network stack did not start".into(),
        )),
    }
}

impl Drop for StackGuard {
    fn drop(&mut self) {
        let _ = self.handle.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            // The stack answers a wake-up within one round: joining here means every
            // socket, timer and child of the stack is gone when the port is.
            let _ = t.join();
        }
    }
}

/// The stack thread's own state (the stack itself is made on the thread: it is not
/// `Send`).
struct StackThread {
    data: Socket,
    wake: UnixStream,
    cmds: mpsc::Receiver<Cmd>,
    smb_dir: Option<PathBuf>,
}

impl StackThread {
    fn run(
        mut self,
        cfg: UserConfig,
        counters: Arc<StackCounters>,
        ready: mpsc::Sender<Result<(), Error>>,
    ) {
        let data: OwnedFd = match self.data.try_clone() {
            Ok(s) => s.into(),
            Err(e) => {
                let _ = ready.send(Err(pair_err("duplicate")(e)));
                return;
            }
        };
        let mut stack = match stack::Stack::new(&cfg, &data, counters) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if let Err(e) = self.install(&mut stack, &cfg) {
            drop(stack);
            self.remove_smb_dir();
            let _ = ready.send(Err(e));
            return;
        }
        let _ = ready.send(Ok(()));
        self.serve(&mut stack);
        drop(stack);
        self.remove_smb_dir();
    }

    /// Sets up the forwarding rules and the SMB server, QEMU's order and messages.
    fn install(&mut self, stack: &mut stack::Stack, cfg: &UserConfig) -> Result<(), Error> {
        for (rule, f) in &cfg.hostfwd {
            if !stack.add_hostfwd(f) {
                return Err(Error::Config(format!(
                    "Could not set up host forwarding rule '{rule}'"
                )));
            }
        }
        for g in &cfg.guestfwd {
            let device = || {
                format!(
                    "Could not open guest forwarding device 'guestfwd.tcp.{}'",
                    g.port
                )
            };
            let conflict = || {
                Error::Config(format!(
                    "Conflicting/invalid host:port in guest forwarding rule '{}'",
                    g.rule
                ))
            };
            match &g.target {
                GuestTarget::Cmd(cmd) => stack
                    .add_exec(cmd, g.server, g.port)
                    .map_err(|_| conflict())?,
                GuestTarget::Tcp(addr) => {
                    let to = addr
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or_else(|| {
                            Error::Config(format!("{}: bad address '{addr}'", device()))
                        })?;
                    let s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT)
                        .map_err(|e| Error::Config(format!("{}: {addr}: {e}", device())))?;
                    stack
                        .add_guest_link(s.into(), g.server, g.port)
                        .map_err(|_| conflict())?;
                }
                GuestTarget::Unix(path) => {
                    let s = UnixStream::connect(path).map_err(|e| {
                        Error::Config(format!("{}: {}: {e}", device(), path.display()))
                    })?;
                    stack
                        .add_guest_link(s.into(), g.server, g.port)
                        .map_err(|_| conflict())?;
                }
            }
        }
        if let Some((dir, server)) = &cfg.smb {
            self.start_smb(stack, dir, *server)?;
        }
        Ok(())
    }

    /// `smb=`: a private smbd configuration sharing `dir` as `\\SERVER\qemu`, run by
    /// libslirp for each connection to ports 139 and 445 (QEMU's arrangement).
    fn start_smb(
        &mut self,
        stack: &mut stack::Stack,
        dir: &std::path::Path,
        server: std::net::Ipv4Addr,
    ) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        let readable = std::fs::read_dir(dir).map_err(|e| {
            Error::Config(format!(
                "Error accessing shared directory '{}': {e}",
                dir.display()
            ))
        });
        readable?;
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        let tmp = std::env::temp_dir().join(format!(
            "pollswitch-smb.{}.{}",
            std::process::id(),
            std::thread::current().name().unwrap_or("user")
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| Error::Config(format!("Could not create samba server dir: {e}")))?;
        self.smb_dir = Some(tmp.clone());
        let t = tmp.display();
        let conf = tmp.join("smb.conf");
        let text = format!(
            "[global]\nprivate dir={t}\ninterfaces=127.0.0.1\nbind interfaces only=yes\n\
             pid directory={t}\nlock directory={t}\nstate directory={t}\ncache directory={t}\n\
             ncalrpc dir={t}/ncalrpc\nlog file={t}/log.smbd\nsmb passwd file={t}/smbpasswd\n\
             security = user\nmap to guest = Bad User\nload printers = no\nprinting = bsd\n\
             disable spoolss = yes\nusershare max shares = 0\n[qemu]\npath={}\nread only=no\n\
             guest ok=yes\nforce user={user}\n",
            dir.display()
        );
        std::fs::write(&conf, text).map_err(|e| {
            Error::Config(format!(
                "Could not create samba server configuration file '{}': {e}",
                conf.display()
            ))
        })?;
        let cmd = format!("{} -l {t} -s {}", config::SMBD, conf.display());
        for port in [139, 445] {
            stack
                .add_exec(&cmd, server, port)
                .map_err(|_| Error::Config("Conflicting/invalid smbserver address".into()))?;
        }
        Ok(())
    }

    fn remove_smb_dir(&mut self) {
        if let Some(d) = self.smb_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// Rounds until told to stop.
    fn serve(&mut self, stack: &mut stack::Stack) {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; MAX_INPUT];
        loop {
            let mut ours = [
                libc::pollfd {
                    fd: self.data.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            stack.poll(&mut ours, IDLE_MS);
            if ours[0].revents & libc::POLLIN != 0 {
                for _ in 0..INPUT_BURST {
                    match (&self.data).read(&mut buf) {
                        Ok(n) if n > 0 => stack.input(&buf[..n]),
                        _ => break,
                    }
                }
            }
            if ours[1].revents != 0 {
                while matches!((&self.wake).read(&mut buf[..64]), Ok(n) if n > 0) {}
            }
            loop {
                match self.cmds.try_recv() {
                    Ok(Cmd::AddHostfwd(f, reply)) => {
                        let _ = reply.send(stack.add_hostfwd(&f));
                    }
                    Ok(Cmd::RemoveHostfwd(udp, host, reply)) => {
                        let _ = reply.send(stack.remove_hostfwd(udp, host));
                    }
                    Ok(Cmd::Info(reply)) => {
                        let _ = reply.send(stack.connection_info());
                    }
                    Ok(Cmd::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
        }
    }
}

/// The libslirp version linked in.
pub fn libslirp_version() -> String {
    stack::version()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};
    use std::os::fd::AsFd;

    fn stack(args: UserArgs) -> (UserPort, UserHandle, UnixStream) {
        let cfg = UserConfig::parse(&args).unwrap();
        let (port, handle) = open("unit", cfg).unwrap();
        // The worker's end, used directly: one frame per read and write.
        let end = UnixStream::from(port.io().fd().as_fd().try_clone_to_owned().unwrap());
        end.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        (port, handle, end)
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&GUEST_MAC);
        f.extend_from_slice(&sender.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&target.octets());
        f
    }

    #[test]
    fn the_stack_answers_arp_for_the_host_address() {
        let (port, handle, end) = stack(UserArgs::default());
        (&end)
            .write_all(&arp_request(
                Ipv4Addr::new(10, 0, 2, 15),
                Ipv4Addr::new(10, 0, 2, 2),
            ))
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = (&end).read(&mut buf).expect("an ARP reply from the stack");
        let f = &buf[..n];
        // At least the wire's minimum; addressed to us, from libslirp's host MAC.
        assert!(n >= 60, "{n} bytes");
        assert_eq!(&f[..6], &GUEST_MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 2], "an ARP reply");
        assert_eq!(&f[28..32], &[10, 0, 2, 2], "for the host address");
        assert_eq!(
            &f[22..28],
            &[0x52, 0x55, 10, 0, 2, 2],
            "libslirp's MAC for it"
        );
        let k = handle.counters();
        assert_eq!(k.from_switch.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(k.to_switch.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(port);
    }

    #[test]
    fn host_forwarding_follows_add_remove_and_the_port() {
        let p1 = free_port();
        let (port, handle, _end) = stack(UserArgs {
            hostfwd: vec![format!("tcp:127.0.0.1:{p1}-:22")],
            ..UserArgs::default()
        });
        assert!(
            TcpStream::connect(("127.0.0.1", p1)).is_ok(),
            "rule from the options"
        );
        let p2 = free_port();
        handle
            .hostfwd_add(&format!("tcp:127.0.0.1:{p2}-:23"))
            .unwrap();
        assert!(TcpStream::connect(("127.0.0.1", p2)).is_ok(), "rule added");
        // The same host port twice: libslirp refuses, in QEMU's words.
        assert_eq!(
            handle
                .hostfwd_add(&format!("tcp:127.0.0.1:{p2}-:24"))
                .unwrap_err()
                .to_string(),
            format!("Could not set up host forwarding rule 'tcp:127.0.0.1:{p2}-:24'")
        );
        let at = SocketAddrV4::new(Ipv4Addr::LOCALHOST, p2);
        assert!(handle.hostfwd_remove(false, at).unwrap());
        assert!(!handle.hostfwd_remove(false, at).unwrap(), "already gone");
        assert!(
            TcpStream::connect(("127.0.0.1", p2)).is_err(),
            "rule removed"
        );
        assert!(handle.connections().unwrap().contains(&p1.to_string()));
        drop(port);
        // The stack went with the port: its listener is closed and the handle says so.
        assert!(TcpStream::connect(("127.0.0.1", p1)).is_err(), "stack gone");
        assert!(handle.connections().is_err());
    }

    #[test]
    fn a_rule_that_cannot_bind_fails_the_open() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = taken.local_addr().unwrap().port();
        let cfg = UserConfig::parse(&UserArgs {
            hostfwd: vec![format!("tcp:127.0.0.1:{p}-:22")],
            ..UserArgs::default()
        })
        .unwrap();
        let err = open("unit", cfg).err().expect("refused");
        assert_eq!(
            err.to_string(),
            format!("Could not set up host forwarding rule 'tcp:127.0.0.1:{p}-:22'")
        );
    }
}
