//! Fuzz targets of the backends' wire formats: each takes arbitrary bytes and checks a
//! property, panicking when it fails. `fuzz/` drives them with libFuzzer
//! (coverage-guided, nightly); the tests replay the committed corpora on stable.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use switch::DropReason;

use crate::l2tpv3::Layout;
use crate::memif::wire::{Msg, MSG_SIZE};
use crate::sys::RawAddr;
use crate::tunnel::Tunnel;
use crate::vxlan::{self, header_vni, Remote, VxlanConfig};

/// memif control messages, as a peer may send them: whatever decodes encodes to bytes
/// that decode to a message which then survives encoding unchanged (names are text:
/// bytes that are not UTF-8 become U+FFFD on the first decode, and a name that fills
/// its whole field, with no NUL, loses its last byte once, as strlcpy would).
pub fn memif_msg(data: &[u8]) {
    let mut b = [0u8; MSG_SIZE];
    let n = data.len().min(MSG_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    if let Some(m) = Msg::parse(&b) {
        let once = Msg::parse(&m.emit()).expect("an emitted message parses");
        let twice = Msg::parse(&once.emit()).expect("an emitted message parses");
        assert_eq!(twice, once);
    }
}

/// L2TPv3 data headers: a layout (from the first byte) accepts the header it emits for
/// any session and cookie, and judges any other bytes without panicking.
pub fn l2tpv3(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let layout = Layout {
        udp: sel & 1 != 0,
        cookie_len: [0, 4, 8, 0][usize::from(sel >> 1 & 3)],
        counter: sel & 8 != 0,
        offset: usize::from(sel >> 4),
    };
    let word = |i: usize| {
        let mut w = [0u8; 8];
        for (k, b) in rest.iter().skip(i).take(8).enumerate() {
            w[k] = *b;
        }
        u64::from_be_bytes(w)
    };
    let (session, cookie, counter) = (word(0) as u32, word(4), word(12) as u32);
    let mut h = vec![0xa5u8; layout.len()];
    layout.emit(&mut h, session, cookie, counter);
    assert!(
        layout.accepts(&h, session, cookie),
        "{layout:?}: own header refused"
    );
    let _ = layout.accepts(rest, session, cookie);
    // A shorter buffer is left alone, never written past.
    let mut short = vec![0x5au8; layout.len() - 1];
    layout.emit(&mut short, session, cookie, counter);
    assert!(short.iter().all(|&b| b == 0x5a));
}

/// VXLAN: headers round-trip; a learning VTEP fed datagrams (header, source, inner
/// frame) from arbitrary bytes filters what is not its VNI, never learns more than its
/// table holds, and sends every frame to its group or to a VTEP it learned.
pub fn vxlan(data: &[u8]) {
    let vni = u32::from_be_bytes([0, *data.first().unwrap_or(&0), 0, 1]);
    let mut h = [0u8; vxlan::HDR_LEN];
    vxlan::emit_header(&mut h, vni);
    assert_eq!(header_vni(&h), Some(vni));
    let _ = header_vni(data);
    let group = Ipv4Addr::new(239, 1, 1, 1);
    let cfg = VxlanConfig {
        vni,
        remote: Remote::Group(group),
        local: Some(Ipv4Addr::new(10, 0, 0, 1).into()),
        port: vxlan::PORT,
        ttl: None,
        fdb_size: 4,
        ageing: Duration::from_secs(300),
    };
    let mut v = vxlan::Vtep::for_fuzzing(cfg);
    let mut learned = Vec::new();
    // Datagrams of 40 bytes: 8 of header, 2 selecting the source, 30 of frame.
    for d in data.chunks_exact(40).take(64) {
        let from = SocketAddr::new(
            Ipv4Addr::new(10, 0, 1, d[8]).into(),
            4789 + u16::from(d[9] & 1),
        );
        let (hdr, frame) = (&d[..8], &d[10..]);
        let verdict = v.accept(hdr, Some(from), frame);
        if header_vni(hdr) != Some(vni) {
            assert_eq!(verdict, Some(DropReason::Filtered));
        } else if verdict.is_none() {
            learned.push(from.ip());
        }
        let mut to = RawAddr::empty();
        let mut out = [0u8; vxlan::HDR_LEN];
        v.emit(&mut out, frame, 1, &mut to);
        assert_eq!(header_vni(&out), Some(vni));
        let to = to.to_std().expect("a destination");
        assert_eq!(to.port(), vxlan::PORT);
        assert!(
            to.ip() == std::net::IpAddr::from(group) || learned.contains(&to.ip()),
            "sent to {to}, neither the group nor a VTEP it heard from"
        );
        assert!(v.learned_count() <= 4, "the table grew past its bound");
    }
}

/// vde_switch's `sockaddr_un`: whatever reply decodes to a path encodes back to the
/// same path, and a path encodes to an address that decodes back to it.
pub fn vde(data: &[u8]) {
    use crate::vde::{sockaddr_un, sockaddr_un_path, SOCKADDR_UN_LEN};
    use std::os::unix::ffi::OsStrExt;
    let mut sa = [0u8; SOCKADDR_UN_LEN];
    let n = data.len().min(SOCKADDR_UN_LEN);
    sa[..n].copy_from_slice(&data[..n]);
    if let Some(p) = sockaddr_un_path(&sa) {
        // A path filling all 108 bytes (no NUL, as Linux allows) decodes, but cannot be
        // written back with its NUL: refused (a clear error where it is used), never cut.
        match sockaddr_un(&p) {
            Some(again) => assert_eq!(sockaddr_un_path(&again).as_deref(), Some(p.as_path())),
            None => assert_eq!(p.as_os_str().len(), SOCKADDR_UN_LEN - 2),
        }
    }
    let path: Vec<u8> = data.iter().copied().filter(|&b| b != 0).collect();
    let p = std::path::Path::new(std::ffi::OsStr::from_bytes(&path));
    if let Some(sa) = sockaddr_un(p) {
        let back = sockaddr_un_path(&sa);
        assert_eq!(back.as_deref(), (!path.is_empty()).then_some(p));
    }
}
