//! VDE engine: a port of a `vde_switch`, spoken natively (no `vde_plug` in between).
//!
//! ```text
//!  stream ──request_v3{magic,3,port<<8,our dgram path,description}──► SOCK/ctl
//!         ◄──────────────────────── sockaddr_un of the port's data socket
//!  dgram  ══ one Ethernet frame per datagram, both ways ══ vde_switch
//! ```
//!
//! The control stream stays open for the port's life (closing it frees the port); our
//! datagram socket lives in a private temp dir removed on drop. `sock` is the switch
//! directory (`vde_switch -s`), `port` a port number (default: any free port).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::engine::mmsg::{self, RxBufs, TxErrors, MAX_BURST};
use crate::engine::{Engine, Port, Spec};
use crate::error::{PerfError, Result};
use crate::sys;
use crate::tally::Tally;

/// Registry entry.
pub const ENGINE: Engine = Engine {
    name: "vde",
    about: "a vde_switch port (request_v3 on SOCK/ctl, then one frame per unix datagram)",
    keys: &["sock", "port"],
    open,
};

const VDE_MAGIC: u32 = 0xfeed_face;
const VDE_VERSION: u32 = 3;
/// `struct sockaddr_un` as vde_switch reads and writes it: native u16 family, 108 bytes.
const SOCKADDR_UN_LEN: usize = 110;

/// One port of a vde_switch.
pub struct VdePort {
    _ctl: UnixStream,
    data: UnixDatagram,
    dir: PathBuf,
    rx: RxBufs,
    errors: TxErrors,
    spec: String,
}

fn sockaddr_un(path: &Path) -> Result<[u8; SOCKADDR_UN_LEN]> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= 108 {
        return Err(PerfError::Usage(format!(
            "unix socket path too long: {}",
            path.display()
        )));
    }
    let mut sa = [0u8; SOCKADDR_UN_LEN];
    sa[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    sa[2..2 + bytes.len()].copy_from_slice(bytes);
    Ok(sa)
}

fn open(spec: &Spec) -> Result<Box<dyn Port>> {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let sock = PathBuf::from(spec.require("sock")?);
    let port: u32 = match spec.get("port") {
        Some(p) => p
            .parse()
            .map_err(|_| PerfError::Usage(format!("{spec}: port={p}: not a number")))?,
        None => 0,
    };
    let sock_err = |what: String| move |source| PerfError::Socket { what, source };
    let dir = std::env::temp_dir().join(format!(
        "pollswitch-perf-vde-{}-{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).map_err(|source| PerfError::File {
        path: dir.clone(),
        source,
    })?;
    // From here the port (or this guard) removes the dir.
    let cleanup = DirGuard(Some(dir.clone()));
    let own = dir.join("port");
    let data =
        UnixDatagram::bind(&own).map_err(sock_err(format!("{spec}: bind {}", own.display())))?;
    let ctl_path = sock.join("ctl");
    let mut ctl = UnixStream::connect(&ctl_path)
        .map_err(sock_err(format!("{spec}: connect {}", ctl_path.display())))?;
    let mut req = Vec::new();
    req.extend_from_slice(&VDE_MAGIC.to_ne_bytes());
    req.extend_from_slice(&VDE_VERSION.to_ne_bytes());
    req.extend_from_slice(&(port << 8).to_ne_bytes());
    req.extend_from_slice(&sockaddr_un(&own)?);
    req.extend_from_slice(b"pollswitch-perf");
    ctl.write_all(&req)
        .map_err(sock_err(format!("{spec}: send request")))?;
    ctl.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(sock_err(format!("{spec}: read timeout")))?;
    let mut sa = [0u8; SOCKADDR_UN_LEN];
    ctl.read_exact(&mut sa)
        .map_err(sock_err(format!("{spec}: vde_switch refused the port")))?;
    let path = &sa[2..];
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    let remote = PathBuf::from(String::from_utf8_lossy(&path[..end]).into_owned());
    data.connect(&remote)
        .map_err(sock_err(format!("{spec}: connect {}", remote.display())))?;
    data.set_nonblocking(true)
        .map_err(sock_err(format!("{spec}: nonblocking")))?;
    sys::big_buffers(data.as_raw_fd(), sys::SOCKET_BUFFER, false);
    let mut cleanup = cleanup;
    cleanup.0 = None;
    Ok(Box::new(VdePort {
        _ctl: ctl,
        data,
        dir,
        rx: RxBufs::new(MAX_BURST),
        errors: TxErrors::default(),
        spec: spec.to_string(),
    }))
}

/// Removes a directory on drop unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = &self.0 {
            let _ = fs::remove_dir_all(d);
        }
    }
}

impl Drop for VdePort {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Port for VdePort {
    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize {
        mmsg::send_burst(self.data.as_raw_fd(), frames, &mut self.errors)
    }

    fn rx_burst(&mut self, tally: &mut Tally) -> usize {
        mmsg::recv_burst(self.data.as_raw_fd(), &mut self.rx, tally)
    }

    fn tx_errors(&self) -> (u64, Option<String>) {
        self.errors.get()
    }

    fn rx_drops(&self) -> Option<u64> {
        sys::socket_drops(self.data.as_raw_fd())
    }

    fn describe(&self) -> String {
        self.spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_address_is_packed_like_vde() {
        let sa = sockaddr_un(Path::new("/tmp/x")).unwrap();
        assert_eq!(&sa[..2], &(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(&sa[2..8], b"/tmp/x");
        assert!(sa[8..].iter().all(|&b| b == 0));
        assert!(sockaddr_un(Path::new(&"x".repeat(108))).is_err());
    }

    #[test]
    fn no_switch_is_an_error() {
        let err = match crate::engine::open("vde:sock=/nonexistent-vde-dir") {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("/nonexistent-vde-dir/ctl"), "{err}");
    }
}
