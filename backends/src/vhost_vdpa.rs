//! `vhost-vdpa`: a vDPA device (a NIC, or a software device of the kernel's vDPA
//! simulator, that runs virtqueues in hardware) through `/dev/vhost-vdpa-N`.
//!
//! pollswitch would be the device's virtio *driver*: rings in the packet pool, mapped
//! for the device's DMA, filled and drained by a worker with the same split-ring views
//! the vhost-user port uses ([`crate::vhost_user::guest`]). That driver is not built:
//! these hosts have no vDPA bus (no module can be loaded here), so nothing could test
//! it. What is here finds out, and says, what a host lacks — the device node, the
//! `vhost_vdpa` character driver, the vDPA bus — so that a `netdev_add` on a host
//! without a device fails with a reason a person can act on.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// QEMU's default device.
pub const DEFAULT_DEVICE: &str = "/dev/vhost-vdpa-0";

/// Where the checks look (a test points them at a made-up tree).
#[derive(Debug, Clone)]
pub struct Host {
    /// `/sys`.
    pub sys: PathBuf,
}

impl Default for Host {
    fn default() -> Host {
        Host {
            sys: PathBuf::from("/sys"),
        }
    }
}

/// Why `device` cannot be used on `host`: always an error, as pollswitch does not
/// drive vDPA devices; the text says what is missing first.
pub fn open(device: &Path, host: &Host) -> Error {
    let bus = host.sys.join("bus/vdpa");
    let devices = std::fs::read_dir(bus.join("devices"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let driver = bus.join("drivers/vhost_vdpa").exists();
    let why = if device.exists() {
        format!(
            "{} exists, but pollswitch does not drive vDPA devices yet (it would be their \
             virtio driver); use vhost-user or a tap for this port",
            device.display()
        )
    } else if !bus.exists() {
        format!(
            "{} does not exist: this host has no vDPA bus ({} is missing: the vdpa and \
             vhost_vdpa modules are not loaded, or cannot be)",
            device.display(),
            bus.display()
        )
    } else if devices.is_empty() {
        format!(
            "{} does not exist: the vDPA bus has no devices (create one with `vdpa dev \
             add`, or load a vDPA NIC driver)",
            device.display()
        )
    } else if !driver {
        format!(
            "{} does not exist: vDPA device(s) {} are not bound to vhost_vdpa (load the \
             vhost_vdpa module)",
            device.display(),
            devices
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!(
            "{} does not exist (vhost_vdpa is loaded: is the device another number?)",
            device.display()
        )
    };
    Error::Config(format!("vhost-vdpa: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(parts: &[&str]) -> (PathBuf, Host) {
        let root = std::env::temp_dir().join(format!(
            "pollswitch-vdpa-{}-{}",
            std::process::id(),
            parts.len()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for p in parts {
            std::fs::create_dir_all(root.join(p)).expect("mkdir");
        }
        (root.clone(), Host { sys: root })
    }

    fn said(host: &Host) -> String {
        open(Path::new("/nonexistent/vhost-vdpa-0"), host).to_string()
    }

    #[test]
    fn each_missing_piece_is_named() {
        let (r0, h) = tree(&[]);
        assert!(said(&h).contains("no vDPA bus"), "{}", said(&h));
        let (r1, h) = tree(&["bus/vdpa/devices"]);
        assert!(said(&h).contains("has no devices"), "{}", said(&h));
        let (r2, h) = tree(&["bus/vdpa/devices/vdpa0", "bus/vdpa/drivers"]);
        assert!(said(&h).contains("vdpa0 are not bound"), "{}", said(&h));
        let (r3, h) = tree(&["bus/vdpa/devices/vdpa0", "bus/vdpa/drivers/vhost_vdpa", "x"]);
        assert!(said(&h).contains("another number"), "{}", said(&h));
        let e = open(&r3, &h).to_string();
        assert!(e.contains("does not drive vDPA devices"), "{e}");
        for r in [r0, r1, r2, r3] {
            let _ = std::fs::remove_dir_all(r);
        }
    }
}
