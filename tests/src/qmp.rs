//! A minimal blocking QMP client, good for QEMU and for pollswitch alike.
//!
//! QMP is one JSON object per line (QEMU ends lines with CRLF). On connect the server
//! sends a greeting; the client negotiates with `qmp_capabilities`; then each
//! `{"execute", "arguments"}` request gets one `return` or `error` reply, with
//! asynchronous `event` objects interleaved anywhere. This client keeps events aside in
//! arrival order and hands back the next reply.
//!
//! Replies are returned whole (`{"return": ...}` or `{"error": {"class", "desc"}}`, plus
//! `id` when one was sent) so tests can check error classes exactly;
//! [`QmpClient::execute_ok`] unwraps `return` for the common case.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a read waits for the server before the client panics.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(10);

trait Stream: Read + Write + Send {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

impl Stream for TcpStream {
    fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }
}

/// A connected QMP client. Dropping it closes the connection.
pub struct QmpClient {
    reader: BufReader<Box<dyn Stream>>,
    /// Bytes of a line not yet complete when a read timed out; kept for the next read.
    partial: Vec<u8>,
    events: VecDeque<Value>,
    /// The server's greeting, `{"QMP": {"version": ..., "capabilities": [...]}}`.
    pub greeting: Value,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("greeting", &self.greeting)
            .field("pending_events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl QmpClient {
    /// Connects to a unix socket and reads the greeting (not yet negotiated).
    pub fn connect_unix(path: impl AsRef<Path>) -> io::Result<QmpClient> {
        Self::from_stream(Box::new(UnixStream::connect(path)?))
    }

    /// Connects over TCP and reads the greeting (not yet negotiated).
    pub fn connect_tcp(addr: impl ToSocketAddrs) -> io::Result<QmpClient> {
        Self::from_stream(Box::new(TcpStream::connect(addr)?))
    }

    /// Connects to a unix socket and negotiates capabilities.
    ///
    /// # Panics
    /// When `qmp_capabilities` is refused.
    pub fn connect_unix_negotiated(path: impl AsRef<Path>) -> io::Result<QmpClient> {
        let mut c = Self::connect_unix(path)?;
        c.negotiate();
        Ok(c)
    }

    fn from_stream(stream: Box<dyn Stream>) -> io::Result<QmpClient> {
        stream.set_timeout(Some(QMP_TIMEOUT))?;
        let mut c = QmpClient {
            reader: BufReader::new(stream),
            partial: Vec::new(),
            events: VecDeque::new(),
            greeting: Value::Null,
        };
        c.greeting = c.read_message(QMP_TIMEOUT)?.ok_or_else(|| {
            io::Error::new(ErrorKind::TimedOut, "no QMP greeting within the timeout")
        })?;
        if c.greeting.get("QMP").is_none() {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("not a QMP greeting: {}", c.greeting),
            ));
        }
        Ok(c)
    }

    /// Sends `qmp_capabilities`.
    ///
    /// # Panics
    /// When the server answers with an error.
    pub fn negotiate(&mut self) {
        let r = self.execute("qmp_capabilities", Value::Null);
        assert!(r.get("return").is_some(), "qmp_capabilities refused: {r}");
    }

    /// Sends `{"execute": cmd, "arguments": args}` (no `arguments` when `args` is
    /// `Value::Null`) and returns the whole reply object.
    ///
    /// # Panics
    /// When the connection fails or no reply comes within [`QMP_TIMEOUT`].
    pub fn execute(&mut self, cmd: &str, args: Value) -> Value {
        self.try_execute(cmd, args)
            .unwrap_or_else(|e| panic!("QMP {cmd}: {e}"))
    }

    /// Like [`QmpClient::execute`], with I/O failures (closed connection, timeout, bad
    /// JSON) returned instead of panicking: for callers that add context to them.
    pub fn try_execute(&mut self, cmd: &str, args: Value) -> io::Result<Value> {
        let mut req = json!({ "execute": cmd });
        if !args.is_null() {
            req["arguments"] = args;
        }
        self.try_send_line(&req.to_string())?;
        self.try_reply()
    }

    /// Like [`QmpClient::execute`], returning the `return` member.
    ///
    /// # Panics
    /// Also when the reply is an error.
    pub fn execute_ok(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.execute(cmd, args);
        match r.get("return") {
            Some(v) => v.clone(),
            None => panic!("QMP {cmd} failed: {r}"),
        }
    }

    /// Writes `raw` and a newline as is: for malformed input and `id` tests.
    ///
    /// # Panics
    /// When the write fails.
    pub fn send_line(&mut self, raw: &str) {
        self.try_send_line(raw)
            .unwrap_or_else(|e| panic!("QMP write {raw:?}: {e}"));
    }

    fn try_send_line(&mut self, raw: &str) -> io::Result<()> {
        let s = self.reader.get_mut();
        s.write_all(raw.as_bytes())?;
        s.write_all(b"\n")?;
        s.flush()
    }

    /// The next reply (`return` or `error`), keeping events met on the way.
    ///
    /// # Panics
    /// When the connection fails or closes, or nothing comes within [`QMP_TIMEOUT`].
    pub fn reply(&mut self) -> Value {
        self.try_reply().unwrap_or_else(|e| panic!("QMP read: {e}"))
    }

    fn try_reply(&mut self) -> io::Result<Value> {
        loop {
            match self.read_message(QMP_TIMEOUT)? {
                Some(m) if m.get("event").is_some() => self.events.push_back(m),
                Some(m) => return Ok(m),
                None => {
                    return Err(io::Error::new(
                        ErrorKind::TimedOut,
                        format!("no QMP reply within {QMP_TIMEOUT:?}"),
                    ))
                }
            }
        }
    }

    /// The next event: one already received, or the first to arrive within `timeout`.
    /// Replies arriving meanwhile (there should be none) make it panic.
    ///
    /// # Panics
    /// When the connection fails or closes.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        match self.read_message(timeout) {
            Ok(Some(m)) if m.get("event").is_some() => Some(m),
            Ok(Some(m)) => panic!("unexpected QMP reply while waiting for an event: {m}"),
            Ok(None) => None,
            Err(e) => panic!("QMP read: {e}"),
        }
    }

    /// Events received so far and not yet taken, oldest first; they are removed.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// Reads one JSON line; `Ok(None)` on timeout (the partial line is kept), an error
    /// when the peer closed, sent bad JSON, or the socket failed.
    fn read_message(&mut self, timeout: Duration) -> io::Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.reader.get_ref().set_timeout(Some(left))?;
            // read_until appends what it consumed before an error, so a timeout in the
            // middle of a line loses nothing.
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "QMP server closed the connection",
                    ))
                }
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let line = std::mem::take(&mut self.partial);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return serde_json::from_slice(&line).map(Some).map_err(|e| {
                        io::Error::new(
                            ErrorKind::InvalidData,
                            format!("bad QMP JSON {:?}: {e}", String::from_utf8_lossy(&line)),
                        )
                    });
                }
                Ok(_) => {} // EOF mid-line comes back as Ok(0) next time
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
