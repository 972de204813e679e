//! The daemon's state: the running switch, the netdevs as they were configured, and the
//! NICs' receive filters. The command line and every QMP command go through these
//! methods, on the one control thread.

use std::collections::{BTreeSet, HashMap};

use backends::nic::{NicHandle, RxFilter};
use switch::topology::ClientKind;
use switch::wire::Mac;
use switch::{Backend, Switch, SwitchConfig};

use crate::error::CtlError;
use crate::netdev::{build, BuildEnv, FdSource};
use crate::qapi::{Netdev, NetdevOpts};

/// The control side of a NIC.
pub struct NicState {
    /// Talks to the port.
    pub handle: NicHandle,
    /// The filter as last set (query-rx-filter reports it).
    pub filter: RxFilter,
    /// Whether the next filter change emits NIC_RX_FILTER_CHANGED (re-armed by
    /// query-rx-filter, as QEMU does).
    pub notify: bool,
}

impl NicState {
    /// The NIC's address: the one a vhost-user guest was seen sending from, else the
    /// configured one.
    pub fn mac(&self) -> Mac {
        self.handle.learned_mac().unwrap_or(self.filter.main_mac)
    }

    /// The filter as reported, with the address the port learned.
    pub fn filter_now(&mut self) -> &RxFilter {
        self.filter.main_mac = self.mac();
        &self.filter
    }
}

/// A configured netdev.
pub struct NetdevEntry {
    /// The configuration, exactly as given (query-netdev returns it).
    pub config: Netdev,
    /// Present for NICs.
    pub nic: Option<NicState>,
    /// Present for user networks: their stack's control handle.
    pub user: Option<backends::user::UserHandle>,
    /// A capture of the port's frames, while one runs.
    pub capture: Option<switch::capture::Capture>,
    /// Present for VXLAN ports: what they count.
    pub vxlan: Option<std::sync::Arc<backends::vxlan::VxlanStats>>,
    /// Present for vhost-user ports: their state.
    pub vhost: Option<backends::vhost_user::VhostHandle>,
    /// Present for af-xdp ports: their mode and per-queue counters.
    pub af_xdp: Option<std::sync::Arc<backends::af_xdp::AfXdpStats>>,
}

/// The daemon.
pub struct Daemon {
    switch: Switch,
    netdevs: Vec<NetdevEntry>,
    macs: BTreeSet<Mac>,
    /// Socket chardevs (`-chardev`), by id: what vhost-user netdevs name.
    chardevs: HashMap<String, crate::chardev::Chardev>,
    /// Where backends' QMP events go (the control loop), once it runs.
    events: Option<std::sync::mpsc::Sender<crate::qmp::server::Msg>>,
}

/// QEMU's first default MAC address; later NICs count up from it.
const DEFAULT_MAC: Mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The pool once every port is gone: what came back of each buffer class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolAtExit {
    /// Ordinary buffers free.
    pub free: u32,
    /// Ordinary buffers in all.
    pub total: u32,
    /// GSO buffers free.
    pub gso_free: u32,
    /// GSO buffers in all.
    pub gso_total: u32,
}

impl PoolAtExit {
    /// Whether every buffer of both classes came back.
    pub fn all_back(&self) -> bool {
        self.free == self.total && self.gso_free == self.gso_total
    }
}

impl Daemon {
    /// Starts the data plane.
    pub fn start(cfg: &SwitchConfig) -> Result<Daemon, CtlError> {
        Ok(Daemon {
            switch: Switch::start(cfg)?,
            netdevs: Vec::new(),
            macs: BTreeSet::new(),
            chardevs: HashMap::new(),
            events: None,
        })
    }

    /// Adds a socket chardev; its id must be new.
    pub fn chardev_add(&mut self, c: crate::chardev::Chardev) -> Result<(), CtlError> {
        if self.chardevs.contains_key(&c.id) {
            return Err(CtlError::Invalid(format!(
                "attempt to add duplicate property '{}' to object (type 'container')",
                c.id
            )));
        }
        self.chardevs.insert(c.id.clone(), c);
        Ok(())
    }

    /// Removes a chardev no netdev uses.
    pub fn chardev_remove(&mut self, id: &str) -> Result<(), CtlError> {
        if !self.chardevs.contains_key(id) {
            return Err(CtlError::Invalid(format!("Chardev '{id}' not found")));
        }
        if self.chardev_user(id).is_some() {
            return Err(CtlError::Invalid(format!("Chardev '{id}' is busy")));
        }
        self.chardevs.remove(id);
        Ok(())
    }

    /// Socket chardevs, by id.
    pub fn chardevs(&self) -> &HashMap<String, crate::chardev::Chardev> {
        &self.chardevs
    }

    /// The netdev that uses chardev `id`.
    pub fn chardev_user(&self, id: &str) -> Option<&str> {
        self.netdevs.iter().find_map(|n| match &n.config.opts {
            NetdevOpts::VhostUser(o) if o.chardev == id => Some(n.config.id.as_str()),
            _ => None,
        })
    }

    /// Sends backends' events to the control loop from now on.
    pub fn set_events(&mut self, tx: std::sync::mpsc::Sender<crate::qmp::server::Msg>) {
        self.events = Some(tx);
    }

    /// The data plane.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The data plane, to change (captures).
    pub fn switch_mut(&mut self) -> &mut Switch {
        &mut self.switch
    }

    /// Configured netdevs, in creation order.
    pub fn netdevs(&self) -> &[NetdevEntry] {
        &self.netdevs
    }

    /// One netdev.
    pub fn netdev(&self, id: &str) -> Option<&NetdevEntry> {
        self.netdevs.iter().find(|n| n.config.id == id)
    }

    /// One netdev, to change.
    pub fn netdev_mut(&mut self, id: &str) -> Option<&mut NetdevEntry> {
        self.netdevs.iter_mut().find(|n| n.config.id == id)
    }

    /// The first of 52:54:00:12:34:56, :57, ... that no NIC uses.
    fn free_mac(&self) -> Mac {
        let base = u32::from_be_bytes([0, DEFAULT_MAC[3], DEFAULT_MAC[4], DEFAULT_MAC[5]]);
        (0..0x0100_0000u32)
            .map(|i| {
                let [_, a, b, c] = (base.wrapping_add(i) & 0x00ff_ffff).to_be_bytes();
                [DEFAULT_MAC[0], DEFAULT_MAC[1], DEFAULT_MAC[2], a, b, c]
            })
            .find(|m| !self.macs.contains(m))
            .unwrap_or(DEFAULT_MAC)
    }

    /// Creates a netdev (the one path for `-netdev` and `netdev_add`).
    pub fn netdev_add(&mut self, nd: &Netdev, fds: &mut dyn FdSource) -> Result<(), CtlError> {
        // The order of QEMU's checks: the id first, then the peer, before anything opens.
        self.switch.graph().check_add(&nd.id, None)?;
        let peer = match &nd.opts {
            NetdevOpts::Hubport(o) => o.netdev.as_deref(),
            NetdevOpts::Nic(o) => o.netdev.as_deref(),
            _ => None,
        };
        if let Some(p) = peer {
            self.switch.graph().check_add(&nd.id, Some(p))?;
        }
        let learning = match &nd.opts {
            NetdevOpts::Hubport(o) => self.hub_learning(o)?,
            _ => None,
        };
        if let NetdevOpts::VhostUser(o) = &nd.opts {
            if let Some(user) = self.chardev_user(&o.chardev) {
                return Err(CtlError::Invalid(format!(
                    "chardev '{}' is already in use by netdev '{user}'",
                    o.chardev
                )));
            }
        }
        let built = build(
            nd,
            &mut BuildEnv {
                max_frame: self.switch.pool().max_frame(),
                pool: self.switch.pool(),
                fds,
                chardevs: &self.chardevs,
                events: self.events.clone().map(|tx| {
                    let tx = std::sync::Mutex::new(tx);
                    std::sync::Arc::new(move |id: &str, ev| {
                        let backends::vhost_user::device::VhostEvent::FailoverNegotiated = ev;
                        tracing::info!("netdev {id}: the frontend negotiated STANDBY (failover)");
                        if let Ok(tx) = tx.lock() {
                            let _ = tx.send(crate::qmp::server::Msg::Event {
                                name: "FAILOVER_NEGOTIATED",
                                data: serde_json::json!({ "device-id": id }),
                            });
                        }
                    }) as backends::vhost_user::Events
                }),
            },
            self.free_mac(),
        )?;
        self.switch.add(built.spec)?;
        if let Some((hub, fdb)) = learning {
            self.switch.set_learning(hub, Some(fdb))?;
            tracing::info!("hub {hub} learns MAC addresses (set by hubport {})", nd.id);
        }
        let nic = built.nic.map(|(handle, mac)| {
            self.macs.insert(mac);
            NicState {
                handle,
                filter: RxFilter::new(mac),
                notify: true,
            }
        });
        tracing::info!(
            "netdev {} added ({}{})",
            nd.id,
            nd.opts.type_name(),
            peer.map(|p| format!(", peer {p}")).unwrap_or_default()
        );
        self.netdevs.push(NetdevEntry {
            config: built.config,
            nic,
            user: built.user,
            capture: None,
            vxlan: built.vxlan,
            vhost: built.vhost,
            af_xdp: built.af_xdp,
        });
        Ok(())
    }

    /// What a hubport's `x-learning`, `x-fdb-ageing-ms` and `x-fdb-size` ask of its hub:
    /// a new table to install (the hub becomes a learning hub), nothing, or a refusal
    /// when they contradict the hub as it is.
    fn hub_learning(
        &self,
        o: &crate::qapi::NetdevHubPortOptions,
    ) -> Result<Option<(i32, std::sync::Arc<switch::fdb::Fdb>)>, CtlError> {
        use std::time::Duration;
        use switch::fdb::{Fdb, DEFAULT_AGEING, DEFAULT_SIZE, MAX_SIZE};
        let hub = o.hubid;
        let current = self.switch.graph().fdb(hub);
        let ageing = o
            .x_fdb_ageing_ms
            .map(|ms| Duration::from_millis(u64::from(ms)));
        let size = o.x_fdb_size.map(|n| n as usize);
        if o.x_fdb_ageing_ms == Some(0) {
            return Err(CtlError::Invalid(
                "x-fdb-ageing-ms must be at least 1".into(),
            ));
        }
        if size.is_some_and(|n| n == 0 || n > MAX_SIZE) {
            return Err(CtlError::Invalid(format!(
                "x-fdb-size must be between 1 and {MAX_SIZE}"
            )));
        }
        match (o.x_learning, current) {
            (Some(false), Some(_)) => Err(CtlError::Invalid(format!(
                "hub {hub} is a learning hub: a hubport with x-learning=off cannot join it"
            ))),
            (_, Some(f)) => {
                if ageing.is_some_and(|a| a != f.ageing()) || size.is_some_and(|n| n != f.size()) {
                    return Err(CtlError::Invalid(format!(
                        "hub {hub} already learns with x-fdb-ageing-ms={} and x-fdb-size={}",
                        f.ageing().as_millis(),
                        f.size()
                    )));
                }
                Ok(None)
            }
            (Some(true), None) => Ok(Some((
                hub,
                std::sync::Arc::new(Fdb::new(
                    size.unwrap_or(DEFAULT_SIZE),
                    ageing.unwrap_or(DEFAULT_AGEING),
                )),
            ))),
            (_, None) if ageing.is_some() || size.is_some() => Err(CtlError::Invalid(
                "x-fdb-ageing-ms and x-fdb-size need x-learning=on (or a learning hub)".into(),
            )),
            (_, None) => Ok(None),
        }
    }

    /// Removes a netdev while traffic flows; returns its quiesced backends for the caller
    /// to drop (closing descriptors, running down-scripts).
    pub fn netdev_del(&mut self, id: &str) -> Result<Vec<Box<dyn Backend>>, CtlError> {
        let b = self.switch.remove(id)?;
        tracing::info!("netdev {id} removed");
        if let Some(pos) = self.netdevs.iter().position(|n| n.config.id == id) {
            let e = self.netdevs.remove(pos);
            if let Some(n) = e.nic {
                self.macs.remove(&n.filter.main_mac);
            }
        }
        Ok(b)
    }

    /// Changes hubport `name`'s VLAN settings (`x-vlan`, `x-trunks`) while traffic flows.
    pub fn set_vlan(
        &mut self,
        name: &str,
        vlan: Option<u16>,
        trunks: Option<&str>,
    ) -> Result<(), CtlError> {
        let Some(NetdevOpts::Hubport(o)) = self
            .netdevs
            .iter_mut()
            .find(|n| n.config.id == name)
            .map(|n| &mut n.config.opts)
        else {
            return Err(CtlError::Invalid(format!("'{name}' is not a hubport")));
        };
        let v = crate::netdev::hubport_vlan(vlan, trunks)?;
        let desc = v.as_ref().map_or("none".to_string(), ToString::to_string);
        self.switch.set_vlan(name, v)?;
        o.x_vlan = vlan;
        o.x_trunks = trunks.map(str::to_string);
        tracing::info!("hubport {name} VLAN settings now {desc}");
        Ok(())
    }

    /// Sets a netdev's link state (and a NIC peer's, as QEMU does).
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), CtlError> {
        self.switch.set_link(name, up)?;
        tracing::info!("netdev {name} link {}", if up { "up" } else { "down" });
        Ok(())
    }

    /// The peer of a client, if any.
    pub fn peer_of(&self, id: &str) -> Option<String> {
        self.switch.graph().get(id).and_then(|c| c.peer.clone())
    }

    /// Hub ids in use, ascending, with their hubport names.
    pub fn hubs(&self) -> Vec<(i32, Vec<String>)> {
        let mut hubs: HashMap<i32, Vec<String>> = HashMap::new();
        let g = self.switch.graph();
        for n in g.names() {
            if let Some(ClientKind::HubPort { hub }) = g.get(n).map(|c| &c.kind) {
                hubs.entry(*hub).or_default().push(n.to_string());
            }
        }
        let mut v: Vec<_> = hubs.into_iter().collect();
        v.sort_by_key(|(h, _)| *h);
        for (_, ports) in &mut v {
            ports.sort_by_key(|p| self.netdevs.iter().position(|n| &n.config.id == p));
        }
        v
    }

    /// Removes everything and stops the workers; returns the pool's free and total
    /// buffer counts once every port is gone.
    pub fn shutdown(self) -> Result<PoolAtExit, CtlError> {
        let pool = self.switch.pool().clone();
        let backends = self.switch.shutdown()?;
        drop(backends);
        Ok(PoolAtExit {
            free: pool.free_count(),
            total: pool.count(),
            gso_free: pool.gso_free_count(),
            gso_total: pool.gso_count(),
        })
    }
}
