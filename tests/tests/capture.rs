//! `x-netdev-capture`: a known flow's capture, read back by tshark, holds the same
//! frames in order (pcapng with directions, pcap, snap length, rotation).

mod common;

use std::path::Path;
use std::process::Command;

use common::{expect_frame, mac, port_stats, Args, BCAST, ETH_EXP};
use serde_json::json;
use tests::{frame, require_tool, TempDir, UdpEnd};

/// One line per frame from tshark: length, captured length, direction, payload hex.
fn tshark(file: &Path) -> Vec<(usize, usize, String, String)> {
    let out = Command::new(require_tool("tshark"))
        .args(["-r", &file.display().to_string(), "-T", "fields"])
        .args(["-e", "frame.len", "-e", "frame.cap_len"])
        .args(["-e", "frame.packet_flags_direction", "-e", "data.data"])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
            (
                n(0),
                n(1),
                f.get(2).unwrap_or(&"").to_string(),
                f.get(3).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_known_flow_reads_back_in_tshark_as_it_was_sent() {
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let dir = TempDir::new();
    let (d, mut c) = Args::new()
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start_with_qmp(&dir);
    let file = dir.join("b.pcapng");
    c.execute_ok(
        "x-netdev-capture",
        json!({"name": "b", "file": file.display().to_string()}),
    );
    let st = port_stats(&mut c, "b");
    assert_eq!(st["capture"]["file"], file.display().to_string(), "{st}");

    // 20 frames a → b (sent to b: outbound), 5 frames b → a (received by b: inbound).
    let sent: Vec<Vec<u8>> = (0..20u8)
        .map(|i| frame(BCAST, mac(1), ETH_EXP, 60 + usize::from(i) * 70, i))
        .collect();
    for f in &sent {
        a.send(f);
        expect_frame(&b, f, "a → b");
    }
    let back: Vec<Vec<u8>> = (0..5u8)
        .map(|i| frame(BCAST, mac(2), ETH_EXP, 100, 100 + i))
        .collect();
    for f in &back {
        b.send(f);
        expect_frame(&a, f, "b → a");
    }
    let r = c.execute_ok("x-netdev-capture", json!({"name": "b", "stop": true}));
    assert_eq!(r["frames"], 25, "{r}");
    assert_eq!(r["dropped"], 0, "{r}");

    let got = tshark(&file);
    assert_eq!(got.len(), 25, "{got:?}");
    for (k, f) in sent.iter().chain(&back).enumerate() {
        let (len, cap, dir, data) = &got[k];
        assert_eq!((*len, *cap), (f.len(), f.len()), "frame {k}");
        // Ethertype 0x88b5 is shown as data: the payload after the 14-byte header.
        assert_eq!(*data, hex(&f[14..]), "frame {k}'s bytes");
        let want = if k < 20 { "0x00000002" } else { "0x00000001" };
        assert_eq!(dir, want, "frame {k}: outbound (to b) or inbound (from b)");
    }

    // pcap, only what b receives, 40 bytes of each; rotation past 100 bytes.
    let p = dir.join("b.pcap");
    c.execute_ok(
        "x-netdev-capture",
        json!({"name": "b", "file": p.display().to_string(), "format": "pcap",
               "direction": "rx", "snaplen": 40, "max-size": 100, "max-files": 50}),
    );
    for f in &back {
        b.send(f);
        expect_frame(&a, f, "b → a, second capture");
    }
    a.send(&sent[0]);
    expect_frame(&b, &sent[0], "a → b, not captured (rx only)");
    let r = c.execute_ok("x-netdev-capture", json!({"name": "b", "stop": true}));
    assert_eq!(r["frames"], 5, "{r}");
    let files = r["files"].as_u64().unwrap();
    assert!(files >= 2, "rotated: {r}");
    let mut frames = Vec::new();
    for k in 0..files {
        let f = if k == 0 {
            p.clone()
        } else {
            dir.join(&format!("b.pcap.{k}"))
        };
        frames.extend(tshark(&f));
    }
    assert_eq!(frames.len(), 5, "{frames:?}");
    for (f, (len, cap, _, _)) in back.iter().zip(&frames) {
        assert_eq!((*len, *cap), (f.len(), 40), "cut to the snap length");
    }

    // Refusals say why.
    let desc = |c: &mut tests::QmpClient, args: serde_json::Value| {
        let r = c.execute("x-netdev-capture", args);
        r["error"]["desc"].as_str().unwrap_or_default().to_string()
    };
    assert!(desc(&mut c, json!({"name": "b", "stop": true})).contains("not being captured"));
    assert!(desc(&mut c, json!({"name": "hp-b", "file": "/tmp/x"})).contains("not a hubport"));
    assert!(
        desc(&mut c, json!({"name": "b", "file": "/nonexistent/dir/x"})).contains("could not open")
    );
    assert!(desc(
        &mut c,
        json!({"name": "b", "file": "/tmp/x", "direction": "up"})
    )
    .contains("rx, tx or both"));
    drop(c);
    d.stop_clean();
}
