//! A memif application in Rust: one interface, either role, driven by the calling
//! thread. pollswitch's tests and `pollswitch-perf`'s memif engine use it to stand where
//! a DPDK or VPP application would. It shares everything below the worker with the
//! switch's own memif NICs: the control thread, the handshake, the ring code.
//!
//! ```text
//!  App::connect(cfg) ── register (client) ── handshake on the memif thread ── Conn
//!  app.send(frames) → ring (+ eventfd when the peer sleeps);  app.recv() ← ring
//! ```

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{register, Conn, Link, LinkInfo, MemifConfig, Registration};
use super::queue::{Push, Taken};
use crate::error::Error;

/// One memif interface of an application.
pub struct App {
    link: Arc<Link>,
    conn: Option<Conn>,
    buf: Vec<u8>,
    _reg: Registration,
}

impl App {
    /// Registers the interface (a server listens at once; a client starts connecting)
    /// and waits up to `wait` for a peer to connect.
    pub fn open(cfg: MemifConfig, wait: Duration) -> Result<App, Error> {
        let link = Link::new();
        let reg = register(cfg, link.clone())?;
        let mut app = App {
            link,
            conn: None,
            buf: vec![0u8; 65536],
            _reg: reg,
        };
        if !app.wait_connected(wait) {
            let why = app.link.info().last_reason;
            return Err(Error::Config(format!(
                "memif: no connection within {wait:?}{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" (last: {why})")
                }
            )));
        }
        Ok(app)
    }

    fn refresh(&mut self) {
        if self.conn.as_ref().is_some_and(|c| !c.life.alive()) {
            self.conn = None;
        }
        if let Some(c) = self.link.take() {
            self.conn = Some(c);
        }
    }

    /// Whether a peer is connected now.
    pub fn connected(&mut self) -> bool {
        self.refresh();
        self.conn.is_some()
    }

    /// Waits until a peer is connected (true) or `wait` passed.
    pub fn wait_connected(&mut self, wait: Duration) -> bool {
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if self.connected() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.connected()
    }

    /// Waits until the peer is gone (true) or `wait` passed.
    pub fn wait_disconnected(&mut self, wait: Duration) -> bool {
        let end = Instant::now() + wait;
        while Instant::now() < end {
            if !self.connected() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        !self.connected()
    }

    /// State and counters of the link.
    pub fn info(&self) -> LinkInfo {
        self.link.info()
    }

    /// Sends as many of `frames` as the ring takes now; returns how many.
    pub fn send<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> usize {
        self.refresh();
        let Some(c) = &mut self.conn else { return 0 };
        let Some(q) = c.tx.first_mut() else { return 0 };
        if q.begin().is_err() {
            return 0;
        }
        let mut n = 0;
        for f in frames {
            match q.push(&c.regions, f.as_ref()) {
                Push::Sent => n += 1,
                Push::Full | Push::BadBuffer => break,
            }
        }
        if n > 0 && q.commit() {
            if let Some(f) = c.tx_irq.first_mut() {
                let _ = f.write(&1u64.to_ne_bytes());
            }
        }
        n
    }

    /// Receives up to `max` frames waiting now (each as a new vector).
    pub fn recv(&mut self, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.recv_with(max, |f| out.push(f.to_vec()));
        out
    }

    /// Hands each of up to `max` frames waiting now to `f` (no allocation); returns how
    /// many there were.
    pub fn recv_with(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        self.refresh();
        let Some(c) = &mut self.conn else { return 0 };
        let mut n = 0;
        for q in &mut c.rx {
            if !matches!(q.begin(), Ok(1..)) {
                continue;
            }
            while n < max {
                match q.next_frame(&c.regions, &mut self.buf) {
                    Ok(Some(Taken::Frame(len))) => {
                        f(&self.buf[..len]);
                        n += 1;
                    }
                    Ok(Some(_)) => n += 1,
                    Ok(None) | Err(_) => break,
                }
            }
            q.finish();
        }
        n
    }

    /// Waits up to `wait` for one frame.
    pub fn recv_one(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + wait;
        loop {
            if let Some(f) = self.recv(1).pop() {
                return Some(f);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memif::wire::secret_field;
    use crate::memif::Role;
    use std::path::PathBuf;

    fn sock(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "pollswitch-memif-{}-{name}.sock",
            std::process::id()
        ))
    }

    fn cfg(path: &std::path::Path, role: Role, id: u32) -> MemifConfig {
        MemifConfig {
            socket: path.to_path_buf(),
            role,
            id,
            secret: None,
            log2_ring: 6,
            buffer_size: 256,
            name: format!("{role:?}{id}"),
            zero_copy: None,
        }
    }

    fn pair(name: &str, id: u32) -> (App, App) {
        let path = sock(name);
        let server = std::thread::spawn({
            let c = cfg(&path, Role::Server, id);
            move || App::open(c, Duration::from_secs(5))
        });
        // The server listens once registered; the client retries until it does.
        let client = App::open(cfg(&path, Role::Client, id), Duration::from_secs(5)).unwrap();
        (server.join().unwrap().unwrap(), client)
    }

    fn exchange(a: &mut App, b: &mut App, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut sent = 0;
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_secs(5);
        while got.len() < frames.len() && Instant::now() < end {
            sent += a.send(&frames[sent..]);
            got.extend(b.recv(64));
        }
        got
    }

    #[test]
    fn two_apps_of_ours_connect_and_exchange_frames_both_ways() {
        let (mut s, mut c) = pair("xchg", 3);
        let frames: Vec<Vec<u8>> = (0..500u32)
            .map(|i| {
                (0..(14 + i as usize % 600))
                    .map(|j| (i as usize + j) as u8)
                    .collect()
            })
            .collect();
        assert_eq!(exchange(&mut c, &mut s, &frames), frames, "client → server");
        assert_eq!(exchange(&mut s, &mut c, &frames), frames, "server → client");
        assert!(s.info().peer.contains("Client3"), "{}", s.info().peer);
        // The client goes: the server sees the link go down, with the reason.
        drop(c);
        assert!(s.wait_disconnected(Duration::from_secs(5)));
        let info = s.info();
        assert_eq!((info.connects, info.disconnects), (1, 1));
        assert!(
            info.last_reason.contains("interface deleted"),
            "{}",
            info.last_reason
        );
    }

    #[test]
    fn a_wrong_secret_or_id_is_refused_with_the_reason() {
        let path = sock("secret");
        let mut sc = cfg(&path, Role::Server, 1);
        sc.secret = secret_field("right");
        let server = std::thread::spawn(move || App::open(sc, Duration::from_secs(2)));
        let mut cc = cfg(&path, Role::Client, 1);
        cc.secret = secret_field("wrong");
        let err = App::open(cc, Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("Incorrect secret"), "{err}");
        let err = App::open(cfg(&path, Role::Client, 9), Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ID not found"), "{err}");
        assert!(server.join().unwrap().is_err(), "nobody got through");
    }

    #[test]
    fn one_socket_serves_several_interface_ids() {
        let path = sock("ids");
        let servers: Vec<_> = (0..3)
            .map(|id| {
                let c = cfg(&path, Role::Server, id);
                std::thread::spawn(move || App::open(c, Duration::from_secs(5)))
            })
            .collect();
        let mut clients: Vec<App> = (0..3)
            .map(|id| App::open(cfg(&path, Role::Client, id), Duration::from_secs(5)).unwrap())
            .collect();
        let mut servers: Vec<App> = servers
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        for (id, (c, s)) in clients.iter_mut().zip(servers.iter_mut()).enumerate() {
            let f = vec![vec![id as u8; 60]];
            assert_eq!(exchange(c, s, &f), f, "interface {id}");
        }
        drop(servers);
        drop(clients);
        assert!(!path.exists(), "the last server NIC removes the socket");
    }
}
