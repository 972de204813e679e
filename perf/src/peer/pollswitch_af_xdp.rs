//! pollswitch with `af-xdp` ports instead of taps: for each port of a tap topology a
//! veth pair in the system's namespace, the tool's end moved out as a tap would be, the
//! daemon's end driven through an AF_XDP socket (default mode: native on a veth).
//!
//! ```text
//!  netns gen              netns sut                               netns sink
//!  AF_PACKET ─► vethA ══ vethA' ─ af-xdp ─ pollswitch ─ af-xdp ─ vethB' ══ vethB ─► AF_PACKET
//! ```

use testbed::{unique, Netns};

use crate::error::{PerfError, Result};
use crate::peer::{pollswitch, Running, SutOptions, System, Topology};

/// Registry entry.
pub const SYSTEM: System = System {
    name: "pollswitch-af-xdp",
    about: "pollswitch daemon with af-xdp ports on veths (tap topologies only)",
    needs: &["taskset", "ip"],
    start,
};

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    let Topology::TapHub {
        sut_netns,
        ports,
        mtu,
    } = topology
    else {
        return Err(PerfError::Usage(
            "pollswitch-af-xdp: only tap topologies (tap-hub, af-xdp) are measured".into(),
        ));
    };
    let s = Netns::borrow(sut_netns);
    let mtu = mtu.to_string();
    let mut netdevs = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        // The tool's end carries the topology's name, so it is moved out as a tap is.
        let end = unique("pxe");
        s.ip(&[
            "link", "add", &p.ifname, "type", "veth", "peer", "name", &end,
        ])?;
        s.ip(&["link", "set", &end, "mtu", &mtu, "up"])?;
        // The tool's end hands XDP what its stack sends: with checksum offload on, TCP
        // and UDP checksums stay partial (nothing fills them in on a veth) and TSO
        // frames are larger than a UMEM frame. A NIC would do both on the wire.
        s.run(&[
            "ethtool", "-K", &p.ifname, "tx", "off", "tso", "off", "gso", "off",
        ])?;
        netdevs.push("-netdev".to_string());
        netdevs.push(format!("af-xdp,id=p{i},ifname={end}"));
        netdevs.push("-netdev".to_string());
        netdevs.push(format!("hubport,id=h{i},hubid=0,netdev=p{i}"));
    }
    pollswitch::launch(topology, opts, pollswitch::with_netdevs(netdevs, opts))
}
