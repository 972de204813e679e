//! A small blocking QMP client, good for QEMU and for pollswitch alike.
//!
//! QMP is one JSON object per line (QEMU ends lines with CRLF). On connect the server
//! sends a greeting; the client negotiates with `qmp_capabilities`; then each
//! `{"execute", "arguments"}` request gets one `return` or `error` reply, with
//! asynchronous `event` objects interleaved anywhere (QEMU's `RESUME` can come before the
//! first reply). Every message is sorted by what it is, never by where it comes:
//!
//! ```text
//!  line ──► {"QMP": ...}              greeting: only first; once
//!       ──► {"event": ...}            kept in arrival order, handed out by next_event
//!       ──► {"return"|"error": ...}   the reply being waited for
//!       ──► anything else             an error: the stream is not QMP
//! ```
//!
//! Replies are returned whole (`{"return": ...}` or `{"error": {"class", "desc"}}`, plus
//! `id` when one was sent) so tests can check error classes exactly;
//! [`QmpClient::execute_ok`] unwraps `return` for the common case. Every read is bounded:
//! a reply must come within [`QMP_TIMEOUT`] however many events come first, a line may
//! have at most [`MAX_LINE`] bytes, and at most [`MAX_EVENTS`] events are kept unread.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long a greeting or a reply may take.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line read.
pub const MAX_LINE: usize = 16 << 20;
/// Most events kept unread.
pub const MAX_EVENTS: usize = 10_000;

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

/// What one line of QMP is.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": ...}`.
    Greeting(Value),
    /// `{"event": ...}`.
    Event(Value),
    /// `{"return": ...}` or `{"error": ...}`.
    Reply(Value),
}

impl Message {
    /// Sorts `v` by its members; an error for an object QMP does not send.
    pub fn classify(v: Value) -> io::Result<Message> {
        if v.get("event").is_some() {
            Ok(Message::Event(v))
        } else if v.get("return").is_some() || v.get("error").is_some() {
            Ok(Message::Reply(v))
        } else if v.get("QMP").is_some() {
            Ok(Message::Greeting(v))
        } else {
            Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("not a QMP greeting, event or reply: {v}"),
            ))
        }
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

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        ErrorKind::TimedOut,
        format!("no QMP {what} within {QMP_TIMEOUT:?}"),
    )
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
    pub fn connect_unix_negotiated(path: impl AsRef<Path>) -> io::Result<QmpClient> {
        let mut c = Self::connect_unix(path)?;
        c.try_negotiate()?;
        Ok(c)
    }

    /// Connects to a unix socket that may not accept yet (a server starting), retrying
    /// until `timeout`, and negotiates capabilities.
    pub fn connect_unix_waiting(path: &Path, timeout: Duration) -> io::Result<QmpClient> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::connect_unix_negotiated(path) {
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                        && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(10))
                }
                r => return r,
            }
        }
    }

    fn from_stream(stream: Box<dyn Stream>) -> io::Result<QmpClient> {
        stream.set_timeout(Some(QMP_TIMEOUT))?;
        let mut c = QmpClient {
            reader: BufReader::new(stream),
            partial: Vec::new(),
            events: VecDeque::new(),
            greeting: Value::Null,
        };
        let deadline = Instant::now() + QMP_TIMEOUT;
        loop {
            match c.read_message(deadline)? {
                Some(Message::Greeting(g)) => {
                    c.greeting = g;
                    return Ok(c);
                }
                Some(Message::Event(e)) => c.keep_event(e)?,
                Some(Message::Reply(r)) => {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        format!("a QMP reply before the greeting: {r}"),
                    ))
                }
                None => return Err(timed_out("greeting")),
            }
        }
    }

    /// Sends `qmp_capabilities`; an error when the server refuses.
    pub fn try_negotiate(&mut self) -> io::Result<()> {
        let r = self.try_execute("qmp_capabilities", Value::Null)?;
        if r.get("return").is_some() {
            Ok(())
        } else {
            Err(io::Error::other(format!("qmp_capabilities refused: {r}")))
        }
    }

    /// Sends `qmp_capabilities`.
    ///
    /// # Panics
    /// When the server answers with an error.
    pub fn negotiate(&mut self) {
        self.try_negotiate()
            .unwrap_or_else(|e| panic!("QMP negotiation: {e}"));
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

    /// Runs `cmd` and returns its `return` member; an error reply is an error too.
    pub fn try_execute_ok(&mut self, cmd: &str, args: Value) -> io::Result<Value> {
        let r = self.try_execute(cmd, args)?;
        match r.get("return") {
            Some(v) => Ok(v.clone()),
            None => Err(io::Error::other(format!("{cmd} failed: {r}"))),
        }
    }

    /// Like [`QmpClient::execute`], returning the `return` member.
    ///
    /// # Panics
    /// Also when the reply is an error.
    pub fn execute_ok(&mut self, cmd: &str, args: Value) -> Value {
        self.try_execute_ok(cmd, args)
            .unwrap_or_else(|e| panic!("QMP {cmd}: {e}"))
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
        // One write: the daemon acts on a complete JSON object before its newline
        // arrives, and after `quit` it may be gone by the time a second write comes
        // (EPIPE: a CI run caught it).
        let mut line = Vec::with_capacity(raw.len() + 1);
        line.extend_from_slice(raw.as_bytes());
        line.push(b'\n');
        s.write_all(&line)?;
        s.flush()
    }

    /// The next reply (`return` or `error`), keeping events met on the way.
    ///
    /// # Panics
    /// When the connection fails or closes, or nothing comes within [`QMP_TIMEOUT`].
    pub fn reply(&mut self) -> Value {
        self.try_reply().unwrap_or_else(|e| panic!("QMP read: {e}"))
    }

    /// Like [`QmpClient::reply`], with failures returned.
    pub fn try_reply(&mut self) -> io::Result<Value> {
        // One deadline for the reply, however many events come before it.
        let deadline = Instant::now() + QMP_TIMEOUT;
        loop {
            match self.read_message(deadline)? {
                Some(Message::Reply(r)) => return Ok(r),
                Some(Message::Event(e)) => self.keep_event(e)?,
                Some(Message::Greeting(g)) => {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        format!("a second QMP greeting where a reply was due: {g}"),
                    ))
                }
                None => return Err(timed_out("reply")),
            }
        }
    }

    fn keep_event(&mut self, e: Value) -> io::Result<()> {
        if self.events.len() >= MAX_EVENTS {
            return Err(io::Error::other(format!(
                "more than {MAX_EVENTS} QMP events unread (take_events() them); the latest: {e}"
            )));
        }
        self.events.push_back(e);
        Ok(())
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
        match self.read_message(Instant::now() + timeout) {
            Ok(Some(Message::Event(e))) => Some(e),
            Ok(Some(m)) => panic!("unexpected QMP message while waiting for an event: {m:?}"),
            Ok(None) => None,
            Err(e) => panic!("QMP read: {e}"),
        }
    }

    /// The next event called `name` within `timeout`; other events met on the way are
    /// kept, in order, for [`QmpClient::next_event`] and [`QmpClient::take_events`].
    ///
    /// # Panics
    /// As [`QmpClient::next_event`].
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_message(deadline) {
                Ok(Some(Message::Event(e))) if e["event"] == name => return Some(e),
                Ok(Some(Message::Event(e))) => {
                    self.keep_event(e).unwrap_or_else(|e| panic!("QMP: {e}"))
                }
                Ok(Some(m)) => panic!("unexpected QMP message while waiting for {name}: {m:?}"),
                Ok(None) => return None,
                Err(e) => panic!("QMP read: {e}"),
            }
        }
    }

    /// Events received so far and not yet taken, oldest first; they are removed.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }

    /// Reads one message; `Ok(None)` when `deadline` passes first (a partial line is
    /// kept), an error when the peer closed, sent a line too long or not QMP, or the
    /// socket failed.
    fn read_message(&mut self, deadline: Instant) -> io::Result<Option<Message>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.reader.get_ref().set_timeout(Some(left))?;
            // Bounded: at most what is left of MAX_LINE is taken from the stream.
            let room = (MAX_LINE + 1).saturating_sub(self.partial.len()) as u64;
            let mut limited = (&mut self.reader).take(room);
            // read_until appends what it consumed before an error, so a timeout in the
            // middle of a line loses nothing.
            match limited.read_until(b'\n', &mut self.partial) {
                Ok(0) if room == 0 || self.partial.len() > MAX_LINE => {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        format!("a QMP line longer than {MAX_LINE} bytes"),
                    ))
                }
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
                    let v: Value = serde_json::from_slice(&line).map_err(|e| {
                        io::Error::new(
                            ErrorKind::InvalidData,
                            format!("bad QMP JSON {:?}: {e}", String::from_utf8_lossy(&line)),
                        )
                    })?;
                    return Message::classify(v).map(Some);
                }
                Ok(_) if self.partial.len() > MAX_LINE => {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        format!("a QMP line longer than {MAX_LINE} bytes"),
                    ))
                }
                Ok(_) => {} // EOF mid-line comes back as Ok(0) next time
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A server that writes `script` (lines) to the first client, then answers each
    /// request line with the next of `replies`.
    fn server(script: String, replies: Vec<String>) -> (crate::TempDir, std::path::PathBuf) {
        let dir = crate::TempDir::new();
        let path = dir.join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(script.as_bytes()).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for reply in &replies {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                s.write_all(reply.as_bytes()).unwrap();
            }
            thread::sleep(Duration::from_secs(1));
        });
        (dir, path)
    }

    const GREETING: &str = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n";
    const RESUME: &str =
        "{\"event\": \"RESUME\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n";

    #[test]
    fn events_are_never_taken_for_the_greeting_or_a_reply() {
        // RESUME before the greeting, and before each reply.
        let (_dir, path) = server(
            format!("{RESUME}{GREETING}"),
            vec![
                format!("{RESUME}{{\"return\": {{}}}}\r\n"),
                format!("{RESUME}{{\"return\": {{\"status\": \"running\"}}}}\r\n"),
            ],
        );
        let mut c = QmpClient::connect_unix_negotiated(&path).unwrap();
        assert!(c.greeting.get("QMP").is_some());
        assert_eq!(
            c.execute_ok("query-status", Value::Null)["status"],
            "running"
        );
        let events = c.take_events();
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(events.iter().all(|e| e["event"] == "RESUME"));
    }

    #[test]
    fn wait_event_keeps_the_others_in_order() {
        let (_dir, path) = server(
            format!("{GREETING}{RESUME}{{\"event\": \"STOP\"}}\r\n{{\"event\": \"SHUTDOWN\"}}\r\n"),
            Vec::new(),
        );
        let mut c = QmpClient::connect_unix(&path).unwrap();
        assert_eq!(
            c.wait_event("SHUTDOWN", Duration::from_secs(5)).unwrap()["event"],
            "SHUTDOWN"
        );
        assert_eq!(c.next_event(Duration::ZERO).unwrap()["event"], "RESUME");
        assert_eq!(
            c.wait_event("STOP", Duration::ZERO).unwrap()["event"],
            "STOP"
        );
        assert!(c.next_event(Duration::from_millis(50)).is_none());
    }

    #[test]
    fn a_reply_before_the_greeting_or_a_stranger_is_an_error() {
        let (_dir, path) = server("{\"return\": {}}\n".into(), Vec::new());
        let err = QmpClient::connect_unix(&path).unwrap_err();
        assert!(err.to_string().contains("before the greeting"), "{err}");
        let (_dir, path) = server("{\"hello\": 1}\n".into(), Vec::new());
        let err = QmpClient::connect_unix(&path).unwrap_err();
        assert!(err.to_string().contains("not a QMP"), "{err}");
        let (_dir, path) = server("{\"QMP\": {}}\n".into(), vec!["{\"QMP\": {}}\n".into()]);
        let mut c = QmpClient::connect_unix(&path).unwrap();
        let err = c.try_execute("x", Value::Null).unwrap_err();
        assert!(err.to_string().contains("second QMP greeting"), "{err}");
    }

    #[test]
    fn connecting_waits_for_a_server_that_starts_late() {
        let dir = crate::TempDir::new();
        let path = dir.join("late.sock");
        let p = path.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            let l = UnixListener::bind(&p).unwrap();
            let (mut s, _) = l.accept().unwrap();
            s.write_all(GREETING.as_bytes()).unwrap();
            let mut line = String::new();
            BufReader::new(s.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            s.write_all(b"{\"return\": {}}\n").unwrap();
            thread::sleep(Duration::from_millis(200));
        });
        let c = QmpClient::connect_unix_waiting(&path, Duration::from_secs(5)).unwrap();
        assert!(c.greeting.get("QMP").is_some());
        t.join().unwrap();
        let err = QmpClient::connect_unix_waiting(&dir.join("never"), Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }
}
