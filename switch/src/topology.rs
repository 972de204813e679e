//! Who talks to whom: QEMU's net-client graph, and the flat forwarding table derived
//! from it for the workers.
//!
//! The control thread keeps a [`Graph`] of named clients, as QEMU does: a client is either
//! a port with I/O queues (tap, socket, nic, ...) or a hubport on a hub; any two clients
//! may be peers. A frame entering a port goes to its peer; a hubport passes it to every
//! other hubport of its hub (never back), and each of those to its own peer:
//!
//! ```text
//!   tap t0 ── peer ── hubport h0 ┐
//!                                ├── hub 0 ── frames from t0 go to s1 and u2, not t0
//!   sock s1 ── peer ── hubport h1┤
//!   udp u2 ── peer ── hubport h2 ┘
//! ```
//!
//! Each change computes a new immutable [`Topology`]: for every port, the list of
//! destination groups (one per destination netdev; a group holds the netdev's queues).
//! Workers receive it as an `Arc` and never lock anything to forward.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::SwitchError;
use crate::fdb::Fdb;
use crate::vlan::{PortVlans, VlanPort};

/// Global, never reused identifier of one port queue.
pub type PortId = u32;

/// A queue and the worker that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueRef {
    /// Owning worker.
    pub worker: u16,
    /// The queue's port id.
    pub port: PortId,
}

/// The queues of one destination netdev; a frame goes to exactly one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestGroup {
    /// The queues, in queue order.
    pub queues: Box<[QueueRef]>,
    /// Whether the port takes offload frames ([`crate::Backend::offloads`]).
    pub offloads: bool,
}

impl DestGroup {
    /// The queue a frame from `worker` goes to: the destination's queue on the same
    /// worker when it has one (no cross-core hop), else one chosen by `hash`.
    #[inline]
    pub fn pick(&self, worker: u16, hash: u32) -> QueueRef {
        if self.queues.len() == 1 {
            return self.queues[0];
        }
        match self.queues.iter().find(|q| q.worker == worker) {
            Some(q) => *q,
            None => self.queues[hash as usize % self.queues.len()],
        }
    }
}

/// What a port on a learning hub forwards by.
#[derive(Debug, Clone)]
pub struct Learn {
    /// The hub's table.
    pub fdb: Arc<Fdb>,
    /// This port's netdev, as the table names it (its first queue's id).
    pub me: PortId,
    /// Each other member of the hub and the index of its group in `dests`, by member.
    pub by_member: Box<[(PortId, u16)]>,
}

impl Learn {
    /// The index in `dests` of member `m`.
    #[inline]
    pub fn dest_of(&self, m: PortId) -> Option<usize> {
        self.by_member
            .binary_search_by_key(&m, |e| e.0)
            .ok()
            .map(|i| usize::from(self.by_member[i].1))
    }
}

impl PartialEq for Learn {
    fn eq(&self, o: &Learn) -> bool {
        Arc::ptr_eq(&self.fdb, &o.fdb) && self.me == o.me && self.by_member == o.by_member
    }
}

impl Eq for Learn {}

/// Forwarding facts about one port queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    /// Owning worker.
    pub worker: u16,
    /// False when the port's link is down: frames from it and to it are dropped.
    pub link_up: bool,
    /// Where its frames go.
    pub dests: Box<[DestGroup]>,
    /// On a learning hub: the table that picks one of `dests` for known addresses.
    pub learn: Option<Learn>,
    /// On a VLAN-aware hub: its own and its destinations' VLAN membership.
    pub vlans: Option<Arc<PortVlans>>,
    /// How many of `dests` take no offload frames (the forwarder cuts for them).
    pub plain: u32,
}

/// The table every worker forwards by, indexed by [`PortId`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Topology {
    ports: Vec<Option<PortEntry>>,
}

impl Topology {
    /// The entry of a port, if it exists in this version of the table.
    #[inline]
    pub fn get(&self, id: PortId) -> Option<&PortEntry> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }
}

/// What a client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKind {
    /// A port with I/O queues.
    Port {
        /// Its queues.
        queues: Vec<QueueRef>,
    },
    /// A hubport on a hub.
    HubPort {
        /// The hub's id.
        hub: i32,
    },
}

/// One named client of the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// What it is.
    pub kind: ClientKind,
    /// Its peer, if any.
    pub peer: Option<String>,
    /// Link state (set_link).
    pub link_up: bool,
    /// Whether it is a NIC-like port (QEMU's set_link also changes a NIC peer's link).
    pub nic: bool,
    /// Whether the port takes offload frames ([`crate::Backend::offloads`]).
    pub offloads: bool,
}

/// The control thread's model of clients, hubs and peers.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    clients: BTreeMap<String, Client>,
    /// The tables of learning hubs, by hub id.
    learning: BTreeMap<i32, Arc<Fdb>>,
    /// The VLAN settings of hubports that have some, by hubport name.
    vlans: BTreeMap<String, VlanPort>,
}

impl Graph {
    /// Looks a client up.
    pub fn get(&self, name: &str) -> Option<&Client> {
        self.clients.get(name)
    }

    /// Client names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }

    /// Checks that `name` is free and `peer` (if any) exists and is unconnected.
    pub fn check_add(&self, name: &str, peer: Option<&str>) -> Result<(), SwitchError> {
        if self.clients.contains_key(name) {
            return Err(SwitchError::Duplicate(name.to_string()));
        }
        if let Some(p) = peer {
            let c = self
                .clients
                .get(p)
                .ok_or_else(|| SwitchError::PeerNotFound(p.to_string()))?;
            if let Some(user) = &c.peer {
                return Err(SwitchError::PeerInUse {
                    peer: p.to_string(),
                    user: user.clone(),
                });
            }
        }
        Ok(())
    }

    /// Adds a client, peering it with `peer` (both ways). Call [`Graph::check_add`] first.
    pub fn add(
        &mut self,
        name: &str,
        kind: ClientKind,
        peer: Option<&str>,
    ) -> Result<(), SwitchError> {
        self.check_add(name, peer)?;
        if let Some(p) = peer {
            if let Some(c) = self.clients.get_mut(p) {
                c.peer = Some(name.to_string());
            }
        }
        self.clients.insert(
            name.to_string(),
            Client {
                kind,
                peer: peer.map(str::to_string),
                link_up: true,
                nic: false,
                offloads: false,
            },
        );
        Ok(())
    }

    /// Removes a client; its peer is left without one.
    pub fn remove(&mut self, name: &str) -> Result<Client, SwitchError> {
        let c = self
            .clients
            .remove(name)
            .ok_or_else(|| SwitchError::NotFound(name.to_string()))?;
        if let Some(p) = &c.peer {
            if let Some(pc) = self.clients.get_mut(p) {
                pc.peer = None;
            }
        }
        self.vlans.remove(name);
        Ok(c)
    }

    /// Gives hubport `name` VLAN settings (`None`: none, a trunk of everything). A hub
    /// with a hubport that has some is VLAN-aware.
    pub fn set_vlan(&mut self, name: &str, vlan: Option<VlanPort>) -> Result<(), SwitchError> {
        match self.clients.get(name).map(|c| &c.kind) {
            Some(ClientKind::HubPort { .. }) => {}
            _ => return Err(SwitchError::NotFound(name.to_string())),
        }
        match vlan {
            Some(v) => self.vlans.insert(name.to_string(), v),
            None => self.vlans.remove(name),
        };
        Ok(())
    }

    /// The VLAN settings of hubport `name`, if it has some.
    pub fn vlan(&self, name: &str) -> Option<&VlanPort> {
        self.vlans.get(name)
    }

    /// Whether hub `hub` has a hubport with VLAN settings.
    pub fn vlan_aware(&self, hub: i32) -> bool {
        self.vlans.keys().any(|n| {
            matches!(self.clients.get(n).map(|c| &c.kind),
                Some(ClientKind::HubPort { hub: h }) if *h == hub)
        })
    }

    /// Sets a client's link state, and that of its peer when the peer is a NIC (QEMU's
    /// rule: a hubport or backend peer keeps its own state).
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), SwitchError> {
        let c = self
            .clients
            .get_mut(name)
            .ok_or_else(|| SwitchError::NotFound(name.to_string()))?;
        c.link_up = up;
        if let Some(p) = c.peer.clone() {
            if let Some(pc) = self.clients.get_mut(&p) {
                if pc.nic {
                    pc.link_up = up;
                }
            }
        }
        Ok(())
    }

    /// Makes hub `hub` a learning hub with table `fdb` (`None`: a plain hub again).
    pub fn set_learning(&mut self, hub: i32, fdb: Option<Arc<Fdb>>) {
        match fdb {
            Some(f) => self.learning.insert(hub, f),
            None => self.learning.remove(&hub),
        };
    }

    /// The table of learning hub `hub`.
    pub fn fdb(&self, hub: i32) -> Option<&Arc<Fdb>> {
        self.learning.get(&hub)
    }

    /// Learning hubs and their tables.
    pub fn learning_hubs(&self) -> impl Iterator<Item = (i32, &Arc<Fdb>)> {
        self.learning.iter().map(|(h, f)| (*h, f))
    }

    /// The hub client `name` (a port) is on through its hubport peer, if any.
    pub fn hub_of(&self, name: &str) -> Option<i32> {
        let peer = self.clients.get(name)?.peer.as_deref()?;
        match self.clients.get(peer)?.kind {
            ClientKind::HubPort { hub } => Some(hub),
            _ => None,
        }
    }

    /// The learning-hub table that knows client `name`'s addresses, and the port they
    /// are filed under: for a port, through its hubport; for a hubport, its peer's.
    pub fn learned_member(&self, name: &str) -> Option<(Arc<Fdb>, PortId)> {
        let c = self.clients.get(name)?;
        let (hub, port) = match c.kind {
            ClientKind::HubPort { hub } => (hub, c.peer.as_deref()?),
            ClientKind::Port { .. } => (self.hub_of(name)?, name),
        };
        Some((self.learning.get(&hub)?.clone(), self.member_id(port)?))
    }

    /// A port's id in a learning hub's table: its first queue's.
    pub fn member_id(&self, name: &str) -> Option<PortId> {
        match &self.clients.get(name)?.kind {
            ClientKind::Port { queues } => queues.first().map(|q| q.port),
            ClientKind::HubPort { .. } => None,
        }
    }

    /// Marks a client as NIC-like.
    pub fn set_nic(&mut self, name: &str) {
        if let Some(c) = self.clients.get_mut(name) {
            c.nic = true;
        }
    }

    /// Marks a port as taking offload frames.
    pub fn set_offloads(&mut self, name: &str) {
        if let Some(c) = self.clients.get_mut(name) {
            c.offloads = true;
        }
    }

    fn group_of(&self, name: &str) -> Option<DestGroup> {
        let c = self.clients.get(name)?;
        match &c.kind {
            ClientKind::Port { queues } if !queues.is_empty() => Some(DestGroup {
                queues: queues.clone().into_boxed_slice(),
                offloads: c.offloads,
            }),
            _ => None,
        }
    }

    /// Where frames entering client `name` go, each destination with its member id and,
    /// on a hub, the hubport it is reached through.
    fn dests_of(&self, name: &str) -> Vec<(PortId, DestGroup, Option<&str>)> {
        let Some(peer_name) = self.clients.get(name).and_then(|c| c.peer.as_deref()) else {
            return Vec::new();
        };
        let Some(peer) = self.clients.get(peer_name) else {
            return Vec::new();
        };
        let with_id = |p: &str| Some((self.member_id(p)?, self.group_of(p)?));
        match peer.kind {
            ClientKind::Port { .. } => with_id(peer_name)
                .map(|(m, g)| (m, g, None))
                .into_iter()
                .collect(),
            ClientKind::HubPort { hub } => {
                if !peer.link_up {
                    return Vec::new();
                }
                self.clients
                    .iter()
                    .filter(|(n, c)| {
                        n.as_str() != peer_name
                            && c.link_up
                            && matches!(c.kind, ClientKind::HubPort { hub: h } if h == hub)
                    })
                    .filter_map(|(hp, c)| Some((hp.as_str(), c.peer.as_deref()?)))
                    .filter_map(|(hp, p)| with_id(p).map(|(m, g)| (m, g, Some(hp))))
                    .collect()
            }
        }
    }

    /// Computes the forwarding table.
    pub fn topology(&self) -> Topology {
        let mut ports: Vec<Option<PortEntry>> = Vec::new();
        for (name, c) in &self.clients {
            let ClientKind::Port { queues } = &c.kind else {
                continue;
            };
            let with_ids = self.dests_of(name);
            let learn = self
                .hub_of(name)
                .and_then(|h| self.learning.get(&h))
                .zip(self.member_id(name))
                .map(|(fdb, me)| {
                    let mut by_member: Vec<(PortId, u16)> = with_ids
                        .iter()
                        .enumerate()
                        .map(|(i, (m, _, _))| (*m, i as u16))
                        .collect();
                    by_member.sort_unstable();
                    Learn {
                        fdb: fdb.clone(),
                        me,
                        by_member: by_member.into_boxed_slice(),
                    }
                });
            let vlans = self.port_vlans(name, &with_ids);
            let dests: Box<[DestGroup]> = with_ids.into_iter().map(|(_, g, _)| g).collect();
            let plain = dests.iter().filter(|g| !g.offloads).count() as u32;
            for q in queues {
                let i = q.port as usize;
                if ports.len() <= i {
                    ports.resize(i + 1, None);
                }
                ports[i] = Some(PortEntry {
                    worker: q.worker,
                    link_up: c.link_up,
                    dests: dests.clone(),
                    learn: learn.clone(),
                    vlans: vlans.clone(),
                    plain,
                });
            }
        }
        Topology { ports }
    }

    /// The VLAN facts of port `name` with destinations `dests`, when its hub is
    /// VLAN-aware.
    fn port_vlans(
        &self,
        name: &str,
        dests: &[(PortId, DestGroup, Option<&str>)],
    ) -> Option<Arc<PortVlans>> {
        let hub = self.hub_of(name)?;
        if !self.vlan_aware(hub) {
            return None;
        }
        let of = |hp: Option<&str>| {
            hp.and_then(|h| self.vlans.get(h))
                .cloned()
                .unwrap_or_default()
        };
        let me = of(self.clients.get(name)?.peer.as_deref());
        Some(Arc::new(PortVlans {
            me,
            dests: dests.iter().map(|(_, _, hp)| of(*hp)).collect(),
        }))
    }

    /// Hubport names of a hub, in name order.
    pub fn hub_members(&self, hub: i32) -> Vec<&str> {
        self.clients
            .iter()
            .filter(|(_, c)| matches!(c.kind, ClientKind::HubPort { hub: h } if h == hub))
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: PortId) -> ClientKind {
        ClientKind::Port {
            queues: vec![QueueRef {
                worker: 0,
                port: id,
            }],
        }
    }

    fn dest_ports(t: &Topology, id: PortId) -> Vec<PortId> {
        let mut v: Vec<PortId> = t
            .get(id)
            .unwrap()
            .dests
            .iter()
            .map(|g| g.queues[0].port)
            .collect();
        v.sort();
        v
    }

    fn hub_of_three() -> Graph {
        let mut g = Graph::default();
        for (i, n) in ["a", "b", "c"].iter().enumerate() {
            g.add(n, port(i as PortId), None).unwrap();
            g.add(&format!("h{n}"), ClientKind::HubPort { hub: 0 }, Some(n))
                .unwrap();
        }
        g
    }

    #[test]
    fn hub_floods_to_others_never_back() {
        let g = hub_of_three();
        let t = g.topology();
        assert_eq!(dest_ports(&t, 0), vec![1, 2]);
        assert_eq!(dest_ports(&t, 1), vec![0, 2]);
        assert_eq!(dest_ports(&t, 2), vec![0, 1]);
    }

    #[test]
    fn hubs_do_not_leak_into_each_other() {
        let mut g = hub_of_three();
        g.add("d", port(3), None).unwrap();
        g.add("hd", ClientKind::HubPort { hub: 1 }, Some("d"))
            .unwrap();
        let t = g.topology();
        assert_eq!(dest_ports(&t, 0), vec![1, 2]);
        assert!(dest_ports(&t, 3).is_empty());
    }

    #[test]
    fn direct_peers_and_removal() {
        let mut g = Graph::default();
        g.add("x", port(0), None).unwrap();
        g.add("y", port(1), Some("x")).unwrap();
        assert_eq!(dest_ports(&g.topology(), 0), vec![1]);
        assert_eq!(dest_ports(&g.topology(), 1), vec![0]);
        g.remove("y").unwrap();
        assert_eq!(g.get("x").unwrap().peer, None);
        assert!(dest_ports(&g.topology(), 0).is_empty());
        assert!(g.topology().get(1).is_none());
    }

    #[test]
    fn peer_rules_are_enforced() {
        let mut g = Graph::default();
        g.add("x", port(0), None).unwrap();
        g.add("h", ClientKind::HubPort { hub: 0 }, Some("x"))
            .unwrap();
        assert!(matches!(
            g.add("x", port(1), None),
            Err(SwitchError::Duplicate(_))
        ));
        assert!(matches!(
            g.add("h2", ClientKind::HubPort { hub: 0 }, Some("x")),
            Err(SwitchError::PeerInUse { .. })
        ));
        assert!(matches!(
            g.add("h3", ClientKind::HubPort { hub: 0 }, Some("nope")),
            Err(SwitchError::PeerNotFound(_))
        ));
        assert!(matches!(g.remove("zz"), Err(SwitchError::NotFound(_))));
    }

    #[test]
    fn link_down_hubport_cuts_its_path_and_port_entry_says_down() {
        let mut g = hub_of_three();
        g.set_link("hb", false).unwrap();
        let t = g.topology();
        assert_eq!(dest_ports(&t, 0), vec![2]);
        assert!(dest_ports(&t, 1).is_empty());
        g.set_link("hb", true).unwrap();
        g.set_link("c", false).unwrap();
        let t = g.topology();
        // A link-down port stays a destination; its owner drops and counts.
        assert_eq!(dest_ports(&t, 0), vec![1, 2]);
        assert!(!t.get(2).unwrap().link_up);
    }

    #[test]
    fn set_link_follows_qemu_for_nic_peers() {
        let mut g = Graph::default();
        g.add("be", port(0), None).unwrap();
        g.add("nic", port(1), Some("be")).unwrap();
        g.set_nic("nic");
        g.set_link("be", false).unwrap();
        assert!(
            !g.get("nic").unwrap().link_up,
            "a NIC peer follows its backend"
        );
        g.set_link("be", true).unwrap();
        g.set_link("nic", false).unwrap();
        assert!(
            g.get("be").unwrap().link_up,
            "a backend peer keeps its own state"
        );
    }

    #[test]
    fn a_hub_is_vlan_aware_once_a_hubport_has_settings() {
        let mut g = hub_of_three();
        assert!(g.topology().get(0).unwrap().vlans.is_none());
        g.set_vlan("hb", Some(VlanPort::access(10))).unwrap();
        assert!(
            g.set_vlan("a", Some(VlanPort::access(10))).is_err(),
            "not a hubport"
        );
        let t = g.topology();
        let v = t.get(0).unwrap().vlans.clone().unwrap();
        assert_eq!(v.me, VlanPort::default());
        let e = t.get(0).unwrap();
        let of_b = e.dests.iter().position(|d| d.queues[0].port == 1).unwrap();
        assert_eq!(v.dests[of_b], VlanPort::access(10));
        assert_eq!(
            t.get(1).unwrap().vlans.as_ref().unwrap().me,
            VlanPort::access(10)
        );
        g.remove("hb").unwrap();
        assert!(
            g.topology().get(0).unwrap().vlans.is_none(),
            "its settings go with it"
        );
    }

    #[test]
    fn multiqueue_group_prefers_the_local_queue() {
        let g = DestGroup {
            queues: vec![
                QueueRef {
                    worker: 0,
                    port: 10,
                },
                QueueRef {
                    worker: 1,
                    port: 11,
                },
            ]
            .into_boxed_slice(),
            offloads: false,
        };
        assert_eq!(g.pick(1, 0).port, 11);
        assert_eq!(g.pick(0, 7).port, 10);
        assert_eq!(g.pick(2, 1).port, 11);
    }
}
