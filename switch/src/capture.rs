//! Capturing one port's traffic to a pcapng (or pcap) file, as QEMU's `filter-dump`
//! does for one netdev, without slowing any other port.
//!
//! ```text
//!  worker (the captured port only): copy ≤ snaplen bytes + ns timestamp ─► Sink (bounded)
//!        full: the copy is dropped and counted, the frame itself goes on
//!  writer thread "capture-NAME": Sink ─► blocks of the file (rotated past max-size)
//! ```
//!
//! The worker never touches the file: a full queue costs a counted capture drop, not a
//! stall. Timestamps are nanoseconds since the Unix epoch (pcapng `if_tsresol` 9; pcap's
//! nanosecond magic `a1b23c4d`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;

/// Frames waiting for the writer at most.
pub const QUEUE: usize = 8192;
/// Default bytes kept of each frame.
pub const DEFAULT_SNAPLEN: u32 = 65535;
/// How often the writer looks for frames when it found none.
const IDLE: Duration = Duration::from_millis(5);

/// Which way of a port to capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Frames the port received (going into the switch).
    Rx,
    /// Frames sent to the port.
    Tx,
    /// Both.
    Both,
}

impl Direction {
    /// From the QMP name.
    pub fn from_name(s: &str) -> Option<Direction> {
        match s {
            "rx" => Some(Direction::Rx),
            "tx" => Some(Direction::Tx),
            "both" => Some(Direction::Both),
            _ => None,
        }
    }

    /// Whether received frames are captured.
    pub fn rx(self) -> bool {
        self != Direction::Tx
    }

    /// Whether sent frames are captured.
    pub fn tx(self) -> bool {
        self != Direction::Rx
    }
}

/// File format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// pcapng (the default): direction flags on every packet.
    Pcapng,
    /// Classic pcap, nanosecond timestamps.
    Pcap,
}

/// What to capture and where.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// The file (rotations add `.1`, `.2`, ...).
    pub path: PathBuf,
    /// Which way.
    pub direction: Direction,
    /// Bytes kept of each frame.
    pub snaplen: u32,
    /// Start the next file past this many bytes (0: never).
    pub max_size: u64,
    /// Files kept when rotating (the oldest is overwritten), at least 1.
    pub max_files: u32,
    /// File format.
    pub format: Format,
    /// The port's name (the pcapng interface name).
    pub name: String,
}

struct Frame {
    ns: u64,
    rx: bool,
    orig_len: u32,
    bytes: Vec<u8>,
}

/// What the worker hands captured frames to.
#[derive(Debug)]
pub struct Sink {
    queue: ArrayQueue<Frame>,
    direction: Direction,
    snaplen: u32,
    /// Frames captured (queued for the file).
    pub captured: AtomicU64,
    /// Frames not captured because the writer was behind.
    pub dropped: AtomicU64,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({} bytes)", self.bytes.len())
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Sink {
    /// Which way it captures.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Queues a copy of `frame` (`rx`: received by the port), or counts a drop.
    pub fn capture(&self, frame: &[u8], rx: bool) {
        let n = frame.len().min(self.snaplen as usize);
        let f = Frame {
            ns: now_ns(),
            rx,
            orig_len: frame.len() as u32,
            bytes: frame[..n].to_vec(),
        };
        if self.queue.push(f).is_ok() {
            self.captured.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running capture: its sink (given to the port's worker) and its writer thread,
/// which writes what is queued and closes the file when the capture is dropped.
pub struct Capture {
    sink: Arc<Sink>,
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<std::io::Result<Written>>>,
    spec: CaptureSpec,
}

/// What a capture wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Frames written.
    pub frames: u64,
    /// Files started (1 + rotations).
    pub files: u64,
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// The file of rotation `k` (0: the path itself).
fn rotated(path: &Path, k: u32) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{k}"));
    PathBuf::from(s)
}

/// Writes the blocks of one format.
struct Out {
    w: BufWriter<File>,
    bytes: u64,
    format: Format,
}

impl Out {
    fn open(path: &Path, spec: &CaptureSpec) -> std::io::Result<Out> {
        let mut o = Out {
            w: BufWriter::new(File::create(path)?),
            bytes: 0,
            format: spec.format,
        };
        match spec.format {
            Format::Pcapng => o.pcapng_header(spec)?,
            Format::Pcap => o.pcap_header(spec.snaplen)?,
        }
        Ok(o)
    }

    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.bytes += b.len() as u64;
        Ok(())
    }

    fn pcap_header(&mut self, snaplen: u32) -> std::io::Result<()> {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&0xa1b2_3c4du32.to_le_bytes()); // nanosecond timestamps
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        b.extend_from_slice(&0i32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&snaplen.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
        self.put(&b)
    }

    /// A pcapng block: type, total length, body, total length.
    fn block(&mut self, ty: u32, body: &[u8]) -> std::io::Result<()> {
        let total = (12 + body.len()) as u32;
        let mut b = Vec::with_capacity(total as usize);
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&total.to_le_bytes());
        b.extend_from_slice(body);
        b.extend_from_slice(&total.to_le_bytes());
        self.put(&b)
    }

    fn option(body: &mut Vec<u8>, code: u16, value: &[u8]) {
        body.extend_from_slice(&code.to_le_bytes());
        body.extend_from_slice(&(value.len() as u16).to_le_bytes());
        body.extend_from_slice(value);
        body.resize(pad4(body.len()), 0);
    }

    fn pcapng_header(&mut self, spec: &CaptureSpec) -> std::io::Result<()> {
        // Section Header Block: byte-order magic, version 1.0, section length unknown.
        let mut shb = Vec::new();
        shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        Out::option(&mut shb, 4, b"pollswitch"); // shb_userappl
        Out::option(&mut shb, 0, &[]);
        self.block(0x0a0d_0d0a, &shb)?;
        // Interface Description Block: Ethernet, snaplen, name, nanosecond timestamps.
        let mut idb = Vec::new();
        idb.extend_from_slice(&1u16.to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&spec.snaplen.to_le_bytes());
        Out::option(&mut idb, 2, spec.name.as_bytes()); // if_name
        Out::option(&mut idb, 9, &[9]); // if_tsresol: 10^-9
        Out::option(&mut idb, 0, &[]);
        self.block(1, &idb)
    }

    fn frame(&mut self, f: &Frame) -> std::io::Result<()> {
        match self.format {
            Format::Pcap => {
                let mut b = Vec::with_capacity(16 + f.bytes.len());
                b.extend_from_slice(&((f.ns / 1_000_000_000) as u32).to_le_bytes());
                b.extend_from_slice(&((f.ns % 1_000_000_000) as u32).to_le_bytes());
                b.extend_from_slice(&(f.bytes.len() as u32).to_le_bytes());
                b.extend_from_slice(&f.orig_len.to_le_bytes());
                b.extend_from_slice(&f.bytes);
                self.put(&b)
            }
            Format::Pcapng => {
                // Enhanced Packet Block, with epb_flags: inbound (1) or outbound (2).
                let mut epb = Vec::with_capacity(32 + f.bytes.len());
                epb.extend_from_slice(&0u32.to_le_bytes());
                epb.extend_from_slice(&((f.ns >> 32) as u32).to_le_bytes());
                epb.extend_from_slice(&(f.ns as u32).to_le_bytes());
                epb.extend_from_slice(&(f.bytes.len() as u32).to_le_bytes());
                epb.extend_from_slice(&f.orig_len.to_le_bytes());
                epb.extend_from_slice(&f.bytes);
                epb.resize(pad4(epb.len()), 0);
                let flags: u32 = if f.rx { 1 } else { 2 };
                Out::option(&mut epb, 2, &flags.to_le_bytes());
                Out::option(&mut epb, 0, &[]);
                self.block(6, &epb)
            }
        }
    }
}

impl Capture {
    /// Opens the file and starts the writer.
    pub fn start(spec: CaptureSpec) -> std::io::Result<Capture> {
        let out = Out::open(&spec.path, &spec)?;
        let sink = Arc::new(Sink {
            queue: ArrayQueue::new(QUEUE),
            direction: spec.direction,
            snaplen: spec.snaplen.max(1),
            captured: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (sink, stop, spec) = (sink.clone(), stop.clone(), spec.clone());
            std::thread::Builder::new()
                .name(format!("capture-{}", spec.name))
                .spawn(move || write_loop(out, &sink, &stop, &spec))?
        };
        Ok(Capture {
            sink,
            stop,
            writer: Some(writer),
            spec,
        })
    }

    /// The sink for the port's worker.
    pub fn sink(&self) -> &Arc<Sink> {
        &self.sink
    }

    /// What it was started with.
    pub fn spec(&self) -> &CaptureSpec {
        &self.spec
    }

    /// Stops: writes what is still queued, closes the file, says what was written.
    pub fn finish(mut self) -> std::io::Result<Written> {
        self.stop.store(true, Ordering::Release);
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(std::io::Error::other("the capture writer panicked")),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_loop(
    mut out: Out,
    sink: &Sink,
    stop: &AtomicBool,
    spec: &CaptureSpec,
) -> std::io::Result<Written> {
    let mut done = Written {
        frames: 0,
        files: 1,
    };
    let mut file_no = 0u32;
    loop {
        // Acquire: everything queued before the stop is seen by the last drain.
        let stopping = stop.load(Ordering::Acquire);
        let mut any = false;
        while let Some(f) = sink.queue.pop() {
            any = true;
            if spec.max_size > 0 && out.bytes >= spec.max_size {
                out.w.flush()?;
                file_no = (file_no + 1) % spec.max_files.max(1);
                out = Out::open(&rotated(&spec.path, file_no), spec)?;
                done.files += 1;
            }
            out.frame(&f)?;
            done.frames += 1;
        }
        if stopping {
            out.w.flush()?;
            return Ok(done);
        }
        if !any {
            out.w.flush()?;
            std::thread::sleep(IDLE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, format: Format, max_size: u64) -> CaptureSpec {
        CaptureSpec {
            path: dir.join("c.pcapng"),
            direction: Direction::Both,
            snaplen: 100,
            max_size,
            max_files: 3,
            format,
            name: "p0".into(),
        }
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "pollswitch-capture-{}-{}",
            std::process::id(),
            now_ns()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn pcapng_blocks_are_laid_out_as_the_format_says() {
        let d = tmp();
        let c = Capture::start(spec(&d, Format::Pcapng, 0)).unwrap();
        c.sink().capture(&[0xaa; 60], true);
        c.sink().capture(&[0xbb; 300], false);
        let w = c.finish().unwrap();
        assert_eq!(
            w,
            Written {
                frames: 2,
                files: 1
            }
        );
        let b = std::fs::read(d.join("c.pcapng")).unwrap();
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        // SHB, IDB, then two EPBs, each block's length repeated at its end.
        let mut at = 0;
        let mut types = Vec::new();
        while at < b.len() {
            let (ty, len) = (u32_at(at), u32_at(at + 4) as usize);
            assert_eq!(len % 4, 0);
            assert_eq!(u32_at(at + len - 4) as usize, len, "trailing length");
            types.push(ty);
            if ty == 6 {
                let (cap, orig) = (u32_at(at + 20), u32_at(at + 24));
                assert!(cap <= 100 && (orig == 60 || orig == 300), "{cap} {orig}");
            }
            at += len;
        }
        assert_eq!(types, [0x0a0d_0d0a, 1, 6, 6]);
        assert_eq!(u32_at(8), 0x1a2b_3c4d, "byte-order magic");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn pcap_and_rotation() {
        let d = tmp();
        let c = Capture::start(spec(&d, Format::Pcap, 500)).unwrap();
        for i in 0..20u8 {
            c.sink().capture(&[i; 80], true);
        }
        let w = c.finish().unwrap();
        assert_eq!(w.frames, 20);
        assert!(w.files > 3, "{w:?}");
        // Three files kept (the oldest overwritten), each a pcap file of its own.
        for k in 0..3 {
            let f = std::fs::read(rotated(&d.join("c.pcapng"), k)).unwrap();
            assert_eq!(&f[..4], &0xa1b2_3c4du32.to_le_bytes());
        }
        assert!(!rotated(&d.join("c.pcapng"), 3).exists());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_full_queue_drops_copies_not_frames() {
        let d = tmp();
        let c = Capture::start(spec(&d, Format::Pcapng, 0)).unwrap();
        // The writer drains meanwhile, so at least QUEUE fit; the rest may not.
        for _ in 0..(QUEUE * 3) {
            c.sink().capture(&[1; 60], true);
        }
        let (cap, drop) = (
            c.sink().captured.load(Ordering::Relaxed),
            c.sink().dropped.load(Ordering::Relaxed),
        );
        assert_eq!(cap + drop, (QUEUE * 3) as u64);
        let w = c.finish().unwrap();
        assert_eq!(w.frames, cap);
        let _ = std::fs::remove_dir_all(d);
    }
}
