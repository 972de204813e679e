//! The sampled in-switch latency per port (`latency-ns` in `x-query-stats`, the
//! `LAT P50/P99` column of `pollswitch-ctl x-query-stats`).

mod common;

use common::{expect_frame, mac, port_stats, Args, BCAST, ETH_EXP};
use tests::{frame, TempDir, UdpEnd};

#[test]
fn frames_sent_to_a_port_have_their_time_in_the_switch_sampled() {
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let dir = TempDir::new();
    let (d, mut c) = Args::new()
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start_with_qmp(&dir);
    let none = port_stats(&mut c, "b");
    assert_eq!(none["latency-ns"]["samples"], 0, "{none}");
    // One frame per breath (each waits for the last): one breath in 64 is sampled.
    for i in 0..640u32 {
        let f = frame(BCAST, mac(1), ETH_EXP, 60, i as u8);
        a.send(&f);
        expect_frame(&b, &f, "a → b");
    }
    let p = port_stats(&mut c, "b");
    let l = &p["latency-ns"];
    let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{k}: {p}"));
    assert!(n("samples") >= 5, "{p}");
    assert!(
        n("min") <= n("p50") && n("p50") <= n("p99") && n("p99") <= n("max"),
        "{p}"
    );
    assert!(n("max") < 50_000_000, "under 50 ms in the switch: {p}");
    // a received nothing: nothing sampled for it.
    assert_eq!(port_stats(&mut c, "a")["latency-ns"]["samples"], 0);
    // pollswitch-ctl shows it.
    let out = std::process::Command::new(tests::bin_path("pollswitch-ctl"))
        .args([
            "-s",
            &dir.join("qmp.sock").display().to_string(),
            "x-query-stats",
        ])
        .output()
        .expect("run pollswitch-ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("LAT P50/P99"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("b "))
        .unwrap_or_default();
    assert!(row.contains("µs"), "b's row: {row}\n{text}");
    drop(c);
    d.stop_clean();
}
