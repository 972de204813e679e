//! The Linux bridge as a peer: a bridge in the system's namespace, one veth pair per
//! port (the bridge's end enslaved, the other end moved to the tool's namespace), and a
//! static FDB entry for each port's MAC so that it forwards known unicast to one port,
//! as a learning switch does once it has learned.
//!
//! ```text
//!  netns A: vethA ══ bA ─┐ bridge (netns S) ┌─ bB ══ vethB :netns B
//!                        └── RPS: softirq on the system's cores ──┘
//! ```
//!
//! The bridge has no process: its work runs in softirq on whichever core receives the
//! frame. Left alone, that is the generator's core (veth delivers on the sender's CPU),
//! so the bridge would share the generator's core while every other system has its own.
//! Receive packet steering on the bridge's veth ends moves that work to the system's
//! cores instead, which makes the comparison like for like.

use testbed::{unique, Netns};

use crate::error::{PerfError, Result};
use crate::peer::{mac_text, move_taps_out, require, Running, SutOptions, System, Topology};

/// Registry entry.
pub const SYSTEM: System = System {
    name: "bridge",
    about: "Linux bridge on veth pairs, static FDB, softirq steered to the system's cores (RPS)",
    needs: &["ip", "bridge"],
    start,
};

struct Bridge {
    netns: String,
    bridge: String,
    ends: Vec<String>,
    endpoints: Vec<String>,
    commands: Vec<String>,
}

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    let Topology::TapHub {
        sut_netns,
        ports,
        mtu,
    } = topology
    else {
        return Err(PerfError::Usage(
            "bridge: only the tap topology (tap-hub) is measured".into(),
        ));
    };
    require("ip")?;
    require("bridge")?;
    let s = Netns::borrow(sut_netns);
    let mut b = Bridge {
        netns: sut_netns.clone(),
        bridge: unique("pbr"),
        ends: Vec::new(),
        endpoints: topology.endpoints(),
        commands: Vec::new(),
    };
    let mtu_s = mtu.to_string();
    let mask = testbed::cpu::hex_mask(&opts.cores);
    let ip = |b: &mut Bridge, args: &[&str]| -> Result<()> {
        b.commands
            .push(format!("ip -n {} {}", b.netns, args.join(" ")));
        Ok(s.ip(args).map(|_| ())?)
    };
    let br = b.bridge.clone();
    ip(
        &mut b,
        &["link", "add", &br, "type", "bridge", "stp_state", "0"],
    )?;
    ip(&mut b, &["link", "set", &br, "mtu", &mtu_s, "up"])?;
    for p in ports {
        let end = unique("pbe");
        b.ends.push(end.clone());
        ip(
            &mut b,
            &[
                "link", "add", &p.ifname, "type", "veth", "peer", "name", &end,
            ],
        )?;
        ip(
            &mut b,
            &["link", "set", &end, "mtu", &mtu_s, "master", &br, "up"],
        )?;
        let fdb = [
            "-n",
            sut_netns.as_str(),
            "fdb",
            "add",
            &mac_text(p.mac),
            "dev",
            &end,
            "master",
            "static",
        ];
        b.commands.push(format!("bridge {}", fdb.join(" ")));
        testbed::run("bridge", &fdb)?;
        let rps = format!("echo {mask} > /sys/class/net/{end}/queues/rx-0/rps_cpus");
        b.commands
            .push(format!("ip netns exec {sut_netns} sh -c '{rps}'"));
        s.run(&["sh", "-c", &rps])?;
    }
    move_taps_out("bridge", topology, || true)?;
    Ok(Box::new(b))
}

impl Running for Bridge {
    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        Vec::new()
    }

    fn command(&self) -> String {
        self.commands.join("; ")
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        let s = Netns::borrow(&self.netns);
        // Deleting one end of a pair deletes both, wherever the other end is.
        for end in &self.ends {
            s.ip(&["link", "del", end])?;
        }
        s.ip(&["link", "del", &self.bridge])?;
        self.ends.clear();
        Ok(Vec::new())
    }
}
