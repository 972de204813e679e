//! The daemon's state: the running switch plus the netdevs as they were configured.
//! The command line and every QMP command go through these methods.

use switch::{Backend, Switch, SwitchConfig};

use crate::error::CtlError;
use crate::netdev::{build, BuildEnv, FdSource};
use crate::qapi::{Netdev, NetdevOpts};

/// A configured netdev.
#[derive(Debug, Clone)]
pub struct NetdevEntry {
    /// The configuration, exactly as given (query-netdev returns it).
    pub config: Netdev,
}

/// The daemon.
pub struct Daemon {
    switch: Switch,
    netdevs: Vec<NetdevEntry>,
}

impl Daemon {
    /// Starts the data plane.
    pub fn start(cfg: &SwitchConfig) -> Result<Daemon, CtlError> {
        Ok(Daemon {
            switch: Switch::start(cfg)?,
            netdevs: Vec::new(),
        })
    }

    /// The data plane.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Configured netdevs, in creation order.
    pub fn netdevs(&self) -> &[NetdevEntry] {
        &self.netdevs
    }

    /// Creates a netdev (the one path for `-netdev` and `netdev_add`).
    pub fn netdev_add(&mut self, nd: &Netdev, fds: &mut dyn FdSource) -> Result<(), CtlError> {
        if let NetdevOpts::Hubport(o) = &nd.opts {
            // Checked before anything is opened, with QEMU's words where it has them.
            if let Some(p) = &o.netdev {
                if self.switch.graph().get(p).is_none() {
                    return Err(switch::SwitchError::PeerNotFound(p.clone()).into());
                }
            }
        }
        self.switch.graph().check_add(&nd.id, None)?;
        let spec = build(
            nd,
            &mut BuildEnv {
                max_frame: self.switch.pool().max_frame(),
                fds,
            },
        )?;
        self.switch.add(spec)?;
        self.netdevs.push(NetdevEntry { config: nd.clone() });
        Ok(())
    }

    /// Removes a netdev while traffic flows; returns its quiesced backends for the caller
    /// to drop (closing descriptors, running down-scripts).
    pub fn netdev_del(&mut self, id: &str) -> Result<Vec<Box<dyn Backend>>, CtlError> {
        let b = self.switch.remove(id)?;
        self.netdevs.retain(|n| n.config.id != id);
        Ok(b)
    }

    /// Sets a netdev's link state.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), CtlError> {
        Ok(self.switch.set_link(name, up)?)
    }

    /// Removes everything and stops the workers; returns the pool's free and total
    /// buffer counts once every port is gone.
    pub fn shutdown(self) -> Result<(u32, u32), CtlError> {
        let pool = self.switch.pool().clone();
        let backends = self.switch.shutdown()?;
        drop(backends);
        Ok((pool.free_count(), pool.count()))
    }
}
