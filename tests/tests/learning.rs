//! Learning hubs (`x-learning=on` on a hubport): known unicast goes to one port, the
//! table follows moves and ages, and `x-query-fdb` / `x-fdb-flush` show and empty it.
//! Three UDP ports on one hub stand for three hosts; frames carry MACs of our choosing.

mod common;

use std::time::Duration;

use common::{expect_frame, expect_nothing, mac, port_stats, udp_spec, Args, BCAST, ETH_EXP};
use serde_json::{json, Value};
use tests::{frame, TempDir, UdpEnd};

/// The ageing time the hub gets here.
const AGEING_MS: u64 = 2000;

fn fdb(c: &mut tests::QmpClient) -> Vec<(String, String)> {
    let r = c.execute_ok("x-query-fdb", json!({"hubid": 0}));
    let hub = &r[0];
    let mut v: Vec<(String, String)> = hub["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| {
            (
                e["mac"].as_str().unwrap().to_string(),
                e["port"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn known_unicast_goes_to_one_port_moves_are_followed_and_entries_age() {
    let (mut a, mut b, mut x) = (UdpEnd::new(), UdpEnd::new(), UdpEnd::new());
    let dir = TempDir::new();
    let (d, mut c) = Args::new()
        .netdev(&udp_spec("a", &mut a))
        .netdev(&format!(
            "hubport,id=hp-a,hubid=0,netdev=a,x-learning=on,x-fdb-ageing-ms={AGEING_MS}"
        ))
        .udp("b", 0, &mut b)
        .udp("x", 0, &mut x)
        .start_with_qmp(&dir);
    let (ma, mb) = (mac(0xa), mac(0xb));

    // Before anything is learned a unicast floods, as on any hub.
    let f = frame(mb, ma, ETH_EXP, 60, 1);
    a.send(&f);
    expect_frame(&b, &f, "unknown unicast to b");
    expect_frame(&x, &f, "unknown unicast also to x (flooded)");
    // b answers: a learned address, so only a gets it.
    let g = frame(ma, mb, ETH_EXP, 100, 2);
    b.send(&g);
    expect_frame(&a, &g, "b → a");
    expect_nothing(&x, "x, once a was learned");
    // And the other way: b's address is known now too.
    let h = frame(mb, ma, ETH_EXP, 1000, 3);
    a.send(&h);
    expect_frame(&b, &h, "a → b");
    expect_nothing(&x, "x, once b was learned");
    assert_eq!(
        fdb(&mut c),
        vec![(mac_text(ma), "a".into()), (mac_text(mb), "b".into())]
    );
    // Broadcast still floods.
    let bc = frame(BCAST, ma, ETH_EXP, 60, 4);
    a.send(&bc);
    expect_frame(&b, &bc, "broadcast to b");
    expect_frame(&x, &bc, "broadcast to x");
    // A frame to an address on its own port stays there (a bridge filters it).
    let own = frame(ma, mac(0xc), ETH_EXP, 60, 5);
    let before = port_stats(&mut c, "a")["drops"]["no-dest"]
        .as_u64()
        .unwrap();
    a.send(&own);
    expect_nothing(&b, "b: a frame for a's own segment");
    expect_nothing(&x, "x: a frame for a's own segment");
    assert_eq!(
        port_stats(&mut c, "a")["drops"]["no-dest"]
            .as_u64()
            .unwrap(),
        before + 1
    );

    // a's address moves to x (a VM migrated): followed on its first frame there.
    let moved = frame(BCAST, ma, ETH_EXP, 60, 6);
    x.send(&moved);
    expect_frame(&a, &moved, "x's broadcast to a");
    expect_frame(&b, &moved, "x's broadcast to b");
    let to_a = frame(ma, mb, ETH_EXP, 60, 7);
    b.send(&to_a);
    expect_frame(&x, &to_a, "b → the moved address, now at x");
    expect_nothing(&a, "a, after its address moved");
    let r = c.execute_ok("x-query-fdb", Value::Null);
    assert!(r[0]["moves"].as_u64().unwrap() >= 1, "{r}");

    // Ageing: with nothing from b for longer than the ageing time, b floods again.
    std::thread::sleep(Duration::from_millis(AGEING_MS + 300));
    assert!(
        fdb(&mut c).iter().all(|(m, _)| *m != mac_text(mb)),
        "b aged out: {:?}",
        fdb(&mut c)
    );
    let late = frame(mb, mac(0xd), ETH_EXP, 60, 8);
    a.send(&late);
    expect_frame(&b, &late, "aged-out b still gets it");
    expect_frame(&x, &late, "and x too (flooded again)");

    // x-fdb-flush of one port, then of the hub.
    b.send(&frame(BCAST, mb, ETH_EXP, 60, 9));
    let _ = (
        a.drain(Duration::from_millis(100)),
        x.drain(Duration::from_millis(100)),
    );
    assert!(fdb(&mut c)
        .iter()
        .any(|(m, p)| *m == mac_text(mb) && p == "b"));
    c.execute_ok("x-fdb-flush", json!({"hubid": 0, "port": "b"}));
    assert!(
        fdb(&mut c).iter().all(|(_, p)| p != "b"),
        "{:?}",
        fdb(&mut c)
    );
    c.execute_ok("x-fdb-flush", json!({"hubid": 0}));
    assert!(fdb(&mut c).is_empty());

    // Deleting a port forgets its addresses at once.
    b.send(&frame(BCAST, mb, ETH_EXP, 60, 10));
    let _ = (
        a.drain(Duration::from_millis(100)),
        x.drain(Duration::from_millis(100)),
    );
    assert!(fdb(&mut c).iter().any(|(_, p)| p == "b"));
    c.execute_ok("netdev_del", json!({"id": "hp-b"}));
    assert!(
        fdb(&mut c).iter().all(|(_, p)| p != "b"),
        "{:?}",
        fdb(&mut c)
    );

    // What contradicts the hub is refused, with why.
    let err = |c: &mut tests::QmpClient, args: Value| {
        let r = c.execute("netdev_add", args);
        r["error"]["desc"].as_str().unwrap_or_default().to_string()
    };
    c.execute_ok(
        "netdev_add",
        json!({"id": "y", "type": "socket", "udp": "127.0.0.1:9", "localaddr": "127.0.0.1:0"}),
    );
    assert!(err(
        &mut c,
        json!({"id": "hp-y", "type": "hubport", "hubid": 0, "netdev": "y", "x-learning": false})
    )
    .contains("is a learning hub"));
    assert!(err(
        &mut c,
        json!({"id": "hp-y", "type": "hubport", "hubid": 0, "netdev": "y", "x-fdb-ageing-ms": 5})
    )
    .contains("already learns"));
    assert!(err(
        &mut c,
        json!({"id": "hp-z", "type": "hubport", "hubid": 7, "x-fdb-size": 10})
    )
    .contains("need x-learning=on"));
    let r = c.execute("x-query-fdb", json!({"hubid": 7}));
    assert!(
        r["error"]["desc"]
            .as_str()
            .is_some_and(|d| d.contains("not a learning hub")),
        "{r}"
    );
    drop(c);
    d.stop_clean();
}
