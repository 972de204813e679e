//! A vhost-user port driven byte by byte by a frontend of our own (rust-vmm's `vhost`
//! crate, frontend side): guest memory is a shared file the test reads and writes with
//! `pread`/`pwrite`, the rings are laid out by hand, so every field pollswitch writes
//! can be checked and every field a hostile guest could write can be tried.
//!
//! ```text
//!  test frontend ══ vhost-user (socket) ══ vA ─ hub 0 ─ udp a ── UdpEnd
//!   memory: one 1 MiB region at guest address 0, "mapped" at VA (never touched by us)
//!   vring 0 (guest RX) at 0x0000, vring 1 (guest TX) at 0x8000, buffers from 0x40000
//! ```

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{fd_count, mac, port_stats, Args, BCAST, ETH_EXP, WAIT};
use serde_json::{json, Value};
use tests::{frame, wait_until, QmpClient, TempDir, UdpEnd};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM: u64 = 1 << 20;
/// Where the frontend claims the memory is mapped (only translated, never used).
const VA: u64 = 0x7f00_0000_0000;
const QSIZE: u16 = 256;
const RING: [u64; 2] = [0x0, 0x8000];
const AVAIL_AT: u64 = 0x1000;
const USED_AT: u64 = 0x2000;
const TX_BUF: u64 = 0x40000;
const RX_BUF: u64 = 0x60000;
const HDR: usize = 12;

const F_CSUM: u64 = 1;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
const F_VERSION_1: u64 = 1 << 32;
const F_STANDBY: u64 = 1 << 62;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

/// The test's guest: its memory file, its rings' state, its eventfds.
struct Guest {
    mem: File,
    fe: Frontend,
    kick: [EventFd; 2],
    call: [EventFd; 2],
    avail: [u16; 2],
}

impl Guest {
    fn write(&self, at: u64, b: &[u8]) {
        self.mem.write_all_at(b, at).expect("write guest memory");
    }

    fn read(&self, at: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.mem
            .read_exact_at(&mut b, at)
            .expect("read guest memory");
        b
    }

    fn u16_at(&self, at: u64) -> u16 {
        let b = self.read(at, 2);
        u16::from_le_bytes([b[0], b[1]])
    }

    /// Writes descriptor `i` of vring `q`.
    fn desc(&self, q: usize, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        self.write(RING[q] + 16 * u64::from(i), &d);
    }

    /// Offers the chain starting at `head` on vring `q` and kicks.
    fn offer(&mut self, q: usize, head: u16) {
        let slot = u64::from(self.avail[q] % QSIZE);
        self.write(RING[q] + AVAIL_AT + 4 + 2 * slot, &head.to_le_bytes());
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.write(RING[q] + AVAIL_AT + 2, &self.avail[q].to_le_bytes());
        self.kick[q].write(1).expect("kick");
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.u16_at(RING[q] + USED_AT + 2)
    }

    /// Used element `n` of vring `q`: (id, len).
    fn used(&self, q: usize, n: u16) -> (u32, u32) {
        let b = self.read(RING[q] + USED_AT + 4 + 8 * u64::from(n % QSIZE), 8);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }

    fn wait_used(&self, q: usize, idx: u16, what: &str) {
        assert!(
            wait_until(WAIT, || self.used_idx(q) == idx),
            "{what}: used index of vring {q} is {}, not {idx}",
            self.used_idx(q)
        );
    }
}

/// Connects a frontend to `sock`, acks `features`, shares the memory in `mem_path`
/// and starts both vrings.
fn attach(sock: &Path, mem_path: &Path, features: u64) -> Guest {
    let mem = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(mem_path)
        .expect("create the guest memory file");
    mem.set_len(MEM).expect("size the guest memory");
    let mut fe = Frontend::connect(sock, 2).expect("connect to the vhost-user socket");
    fe.set_owner().expect("SET_OWNER");
    let offered = fe.get_features().expect("GET_FEATURES");
    for (bit, name) in [
        (F_VERSION_1, "VERSION_1"),
        (F_MRG_RXBUF, "MRG_RXBUF"),
        (F_STANDBY, "STANDBY"),
    ] {
        assert!(offered & bit != 0, "{name} not offered: {offered:#x}");
    }
    assert!(offered & F_PROTOCOL_FEATURES != 0, "{offered:#x}");
    let proto = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    fe.set_protocol_features(
        proto & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK),
    )
    .expect("SET_PROTOCOL_FEATURES");
    fe.set_features(features | F_PROTOCOL_FEATURES)
        .expect("SET_FEATURES");
    fe.set_mem_table(&[VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM,
        userspace_addr: VA,
        mmap_offset: 0,
        mmap_handle: mem.as_raw_fd(),
    }])
    .expect("SET_MEM_TABLE");
    let efd = || EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let g = Guest {
        mem,
        fe,
        kick: [efd(), efd()],
        call: [efd(), efd()],
        avail: [0, 0],
    };
    for (q, ring) in RING.iter().enumerate() {
        g.fe.set_vring_num(q, QSIZE).expect("SET_VRING_NUM");
        g.fe.set_vring_addr(
            q,
            &VringConfigData {
                queue_max_size: QSIZE,
                queue_size: QSIZE,
                flags: 0,
                desc_table_addr: VA + ring,
                used_ring_addr: VA + ring + USED_AT,
                avail_ring_addr: VA + ring + AVAIL_AT,
                log_addr: None,
            },
        )
        .expect("SET_VRING_ADDR");
        g.fe.set_vring_base(q, 0).expect("SET_VRING_BASE");
        g.fe.set_vring_call(q, &g.call[q]).expect("SET_VRING_CALL");
        g.fe.set_vring_kick(q, &g.kick[q]).expect("SET_VRING_KICK");
    }
    let mut g = g;
    for q in 0..2 {
        g.fe.set_vring_enable(q, true).expect("SET_VRING_ENABLE");
    }
    g
}

/// An IPv4/UDP frame from `src` with `n` payload bytes and its UDP checksum filled in,
/// and the sum of its pseudo-header (what a sender leaves in the field with
/// NEEDS_CSUM).
fn udp_frame(src: [u8; 6], n: usize) -> (Vec<u8>, u16) {
    use switch::wire::checksum::{checksum, fold, sum};
    let (sip, dip) = ([10u8, 9, 0, 1], [10u8, 9, 0, 2]);
    let udp_len = 8 + n;
    let mut f = frame(BCAST, src, 0x0800, 14 + 20 + udp_len, 5);
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&sip);
    ip[16..20].copy_from_slice(&dip);
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&(udp_len as u16).to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&sip);
    pseudo.extend_from_slice(&dip);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let psum = fold(sum(&pseudo, 0));
    let c = !fold(sum(&f[34..], u64::from(psum)));
    f[40..42].copy_from_slice(&c.to_be_bytes());
    (f, psum)
}

fn drops(p: &Value, why: &str) -> u64 {
    p["drops"][why]
        .as_u64()
        .unwrap_or_else(|| panic!("no {why} in {p}"))
}

/// pollswitch with vhost-user port `vA` listening on `sock` and a UDP port `a` (talking
/// to the returned end) on hub 0.
fn switch_with_port(dir: &TempDir, sock: &Path) -> (tests::Daemon, QmpClient, UdpEnd) {
    let mut a = UdpEnd::new();
    let (d, c) = Args::new()
        .opt(
            "-chardev",
            &format!("socket,id=c0,path={},server=on", sock.display()),
        )
        .netdev("vhost-user,id=vA,chardev=c0")
        .on_hub("vA", 0)
        .udp("a", 0, &mut a)
        .start_with_qmp(dir);
    (d, c, a)
}

fn started(c: &mut QmpClient) {
    assert!(
        wait_until(WAIT, || port_stats(c, "vA")["vhost-user"]["queues-running"]
            == 1),
        "the queue pair did not start: {}",
        port_stats(c, "vA")
    );
}

#[test]
fn frames_in_guest_memory_byte_for_byte_and_hostile_descriptors_are_contained() {
    let dir = TempDir::new();
    let sock = dir.join("v.sock");
    let (d, mut c, a) = switch_with_port(&dir, &sock);
    let fds0 = fd_count(d.pid());
    let mem_path = Path::new("/dev/shm").join(format!("pollswitch-vhost-{}", std::process::id()));
    let _ = std::fs::remove_file(&mem_path);
    let mut g = attach(
        &sock,
        &mem_path,
        F_VERSION_1 | F_CSUM | F_MRG_RXBUF | F_STANDBY,
    );
    let _ = std::fs::remove_file(&mem_path);

    // STANDBY acked: QAPI's FAILOVER_NEGOTIATED, naming the netdev.
    let ev = c
        .wait_event("FAILOVER_NEGOTIATED", WAIT)
        .unwrap_or_else(|| panic!("no FAILOVER_NEGOTIATED: {:?}", c.take_events()));
    assert_eq!(ev["data"], json!({"device-id": "vA"}), "{ev}");
    started(&mut c);
    let p = port_stats(&mut c, "vA");
    assert_eq!(p["carrier"], true, "{p}");
    assert_eq!(p["vhost-user"]["memory-regions"], 1, "{p}");
    let feats = p["vhost-user"]["features"].to_string();
    assert!(
        feats.contains("standby") && feats.contains("mrg-rxbuf"),
        "{p}"
    );

    // Guest TX: a 12-byte header and a 60-byte frame in one descriptor → at `a`, exact.
    let f = frame(BCAST, mac(7), ETH_EXP, 60, 3);
    g.write(TX_BUF, &[0u8; HDR]);
    g.write(TX_BUF + HDR as u64, &f);
    g.desc(1, 0, TX_BUF, (HDR + f.len()) as u32, 0, 0);
    g.offer(1, 0);
    let got = a.recv_timeout(WAIT).expect("the guest's frame at a");
    assert_eq!(got, f, "the guest's frame as sent");
    g.wait_used(1, 1, "after one frame");
    assert_eq!(
        g.used(1, 0),
        (0, 0),
        "a transmit chain comes back with length 0"
    );
    // The port is NIC-like: the guest's address, learned from that frame, is its MAC
    // for query-rx-filter and announce-self (a RARP from it, out towards its peers).
    let rf = c.execute_ok("query-rx-filter", json!({"name": "vA"}));
    assert_eq!(rf[0]["main-mac"], "02:50:53:00:00:07", "{rf}");
    c.execute_ok(
        "announce-self",
        json!({"initial": 0, "max": 0, "rounds": 1, "step": 0, "interfaces": ["vA"]}),
    );
    let r = a
        .recv_timeout(WAIT)
        .expect("a RARP from the guest's address at a");
    assert_eq!(&r[6..14], &[2, 0x50, 0x53, 0, 0, 7, 0x80, 0x35], "{r:02x?}");
    assert_eq!(&r[22..28], &mac(7)[..], "RARP sender: {r:02x?}");

    // The same split over two descriptors, header alone in the first.
    g.write(TX_BUF + 0x1000, &[0u8; HDR]);
    g.write(TX_BUF + 0x2000, &f);
    g.desc(1, 1, TX_BUF + 0x1000, HDR as u32, DESC_F_NEXT, 2);
    g.desc(1, 2, TX_BUF + 0x2000, f.len() as u32, 0, 0);
    g.offer(1, 1);
    assert_eq!(a.recv_timeout(WAIT).expect("split frame"), f, "split frame");
    g.wait_used(1, 2, "after the split frame");

    // Checksum offload (CSUM): a UDP datagram whose checksum field holds only the
    // pseudo-header's sum, the header saying NEEDS_CSUM from the UDP header on; it
    // arrives with the checksum finished. A GSO type (never offered) is refused.
    let (u, pseudo) = udp_frame(mac(7), 200);
    let mut partial = u.clone();
    partial[40..42].copy_from_slice(&pseudo.to_be_bytes());
    let mut h = [0u8; HDR];
    h[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the UDP header
    h[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: its checksum field
    g.write(TX_BUF + 0x3000, &h);
    g.write(TX_BUF + 0x3000 + HDR as u64, &partial);
    g.desc(1, 7, TX_BUF + 0x3000, (HDR + partial.len()) as u32, 0, 0);
    g.offer(1, 7);
    let got = a.recv_timeout(WAIT).expect("the checksummed frame");
    assert_eq!(got, u, "the checksum as a sender computing it would have");
    assert_eq!(
        port_stats(&mut c, "vA")["vhost-user"]["checksums-completed"],
        1
    );
    let off0 = drops(&port_stats(&mut c, "vA"), "offload");
    h[0] = 0;
    h[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
    g.write(TX_BUF + 0x3000, &h);
    g.offer(1, 7);
    g.wait_used(1, 4, "the GSO frame is consumed");
    assert_eq!(drops(&port_stats(&mut c, "vA"), "offload"), off0 + 1);

    // Hostile chains: outside memory; straddling its end; a device-writable buffer
    // offered for transmit; a chain that loops on itself (bounded by the ring size).
    let before = port_stats(&mut c, "vA");
    g.desc(1, 3, MEM + 0x1000, 100, 0, 0);
    g.desc(1, 4, MEM - 10, 100, 0, 0);
    g.desc(1, 5, TX_BUF, 72, DESC_F_WRITE, 0);
    g.desc(1, 6, TX_BUF, 4000, DESC_F_NEXT, 6);
    for head in 3..=6 {
        g.offer(1, head);
    }
    g.wait_used(1, 8, "hostile chains are consumed");
    let after = port_stats(&mut c, "vA");
    assert_eq!(
        drops(&after, "bad-length") - drops(&before, "bad-length"),
        3,
        "outside, straddling and writable chains: {after}"
    );
    assert_eq!(
        drops(&after, "oversize") - drops(&before, "oversize"),
        1,
        "the looping chain: {after}"
    );
    assert!(
        a.recv_timeout(Duration::from_millis(200)).is_none(),
        "nothing of them reaches a"
    );
    // And the port still works.
    g.offer(1, 0);
    assert_eq!(
        a.recv_timeout(WAIT)
            .expect("a frame after the hostile ones"),
        f
    );

    // Guest RX: one 2048-byte write-only buffer; a frame from a lands in it with the
    // header (num_buffers 1) and the used length says header + frame.
    g.write(RX_BUF, &[0xaa; 2048]);
    g.desc(0, 0, RX_BUF, 2048, DESC_F_WRITE, 0);
    g.offer(0, 0);
    let h = frame(BCAST, mac(8), ETH_EXP, 100, 9);
    let t = Instant::now();
    while g.used_idx(0) == 0 && t.elapsed() < WAIT {
        a.send(&h);
        std::thread::sleep(Duration::from_millis(50));
    }
    g.wait_used(0, 1, "a frame into the guest");
    assert_eq!(g.used(0, 0), (0, (HDR + h.len()) as u32), "used element");
    let mut want_hdr = [0u8; HDR];
    want_hdr[10] = 1;
    assert_eq!(
        g.read(RX_BUF, HDR),
        want_hdr,
        "virtio-net header, num_buffers 1"
    );
    assert_eq!(
        g.read(RX_BUF + HDR as u64, h.len()),
        h,
        "the frame in guest memory"
    );
    assert!(g.call[0].read().is_ok(), "the guest was interrupted");

    // The frontend goes: the port is down, the guest's memory let go, no fd kept.
    drop(g);
    assert!(
        wait_until(WAIT, || {
            let p = port_stats(&mut c, "vA");
            p["carrier"] == false && p["vhost-user"]["memory-regions"] == 0
        }),
        "{}",
        port_stats(&mut c, "vA")
    );
    assert!(
        wait_until(WAIT, || fd_count(d.pid()) == fds0),
        "fds {} after the frontend left, {fds0} before",
        fd_count(d.pid())
    );
    drop(c);
    d.stop_clean();
}

#[test]
fn a_guest_that_breaks_the_ring_protocol_is_disconnected() {
    let dir = TempDir::new();
    let sock = dir.join("v.sock");
    let (d, mut c, _a) = switch_with_port(&dir, &sock);
    let mem_path = Path::new("/dev/shm").join(format!("pollswitch-vhost-b{}", std::process::id()));
    let _ = std::fs::remove_file(&mem_path);
    let g = attach(&sock, &mem_path, F_VERSION_1 | F_MRG_RXBUF);
    let _ = std::fs::remove_file(&mem_path);
    started(&mut c);
    // An available index 600 ahead of a 256-entry ring: no guest can have offered that.
    g.write(RING[1] + AVAIL_AT + 2, &600u16.to_le_bytes());
    g.kick[1].write(1).expect("kick");
    assert!(
        wait_until(WAIT, || port_stats(&mut c, "vA")["vhost-user"]["connected"]
            == false),
        "still connected: {}",
        port_stats(&mut c, "vA")
    );
    let p = port_stats(&mut c, "vA");
    assert_eq!(p["carrier"], false, "{p}");
    assert!(
        p["vhost-user"]["last-error"]
            .as_str()
            .is_some_and(|e| e.contains("available index")),
        "{p}"
    );
    // The daemon goes on: another port on it still answers.
    assert!(c.execute_ok("query-netdev", Value::Null).is_array());
    drop(g);
    drop(c);
    d.stop_clean();
}
