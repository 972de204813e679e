//! Receiving file descriptors over a unix socket (SCM_RIGHTS), for QMP `getfd`: the
//! client sends the descriptor with the bytes of its command. The calls are the
//! backends' (memif and the bridge helper pass descriptors the same way).

pub use backends::sys::{recv_with_fds, send_with_fds};

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn descriptors_travel_with_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (p, _q) = UnixStream::pair().unwrap();
        send_with_fds(a.as_fd(), b"hello", &[p.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        assert_ne!(fds[0].as_raw_fd(), p.as_raw_fd());
    }
}
