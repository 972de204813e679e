//! QMP on the wire: splitting a client's byte stream into JSON values, and the shapes of
//! what the server sends (greeting, return, error, event), each one line ending CRLF.

use serde_json::{json, Map, Value};

/// What the splitter found in the input.
#[derive(Debug, PartialEq)]
pub enum Input {
    /// A complete JSON value.
    Value(Value),
    /// Bytes that are not JSON; the text is the error `desc` for the client.
    Error(String),
}

/// Cuts a client's byte stream into requests exactly as QEMU does ([`super::json`]):
/// one value or one error per group of tokens, so every request gets one reply.
#[derive(Debug, Default)]
pub struct Splitter {
    stream: super::json::Stream,
}

impl Splitter {
    /// Adds bytes read from the client.
    pub fn push(&mut self, data: &[u8]) {
        self.stream.push(data);
    }

    /// Bytes held that do not yet form a value (bounded by [`super::json::MAX_GROUP`]
    /// plus one read).
    pub fn pending(&self) -> usize {
        self.stream.pending()
    }

    /// Takes every complete value (and error) now available.
    pub fn drain(&mut self) -> Vec<Input> {
        self.stream
            .drain()
            .into_iter()
            .map(|i| match i {
                super::json::Item::Value(v) => Input::Value(v),
                super::json::Item::Error(e) => Input::Error(e),
            })
            .collect()
    }
}

/// Serialises one message as a line.
pub fn line(v: &Value) -> String {
    let mut s = v.to_string();
    s.push_str("\r\n");
    s
}

/// Serialises one message as QEMU's pretty monitors do: four-space indents, CRLF line
/// ends, an empty object or list opened and closed on two lines.
pub fn pretty_line(v: &Value) -> String {
    fn put(v: &Value, depth: usize, out: &mut String) {
        let pad = |d: usize, out: &mut String| out.push_str(&"    ".repeat(d));
        match v {
            Value::Object(m) => {
                out.push('{');
                for (i, (k, x)) in m.iter().enumerate() {
                    out.push_str(if i == 0 { "\r\n" } else { ",\r\n" });
                    pad(depth + 1, out);
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push_str(": ");
                    put(x, depth + 1, out);
                }
                out.push_str("\r\n");
                pad(depth, out);
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    out.push_str(if i == 0 { "\r\n" } else { ",\r\n" });
                    pad(depth + 1, out);
                    put(x, depth + 1, out);
                }
                out.push_str("\r\n");
                pad(depth, out);
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    put(v, 0, &mut s);
    s.push_str("\r\n");
    s
}

/// The greeting: version and capabilities.
pub fn greeting() -> Value {
    let (major, minor, micro) = version();
    json!({"QMP": {
        "version": {
            "qemu": {"micro": micro, "minor": minor, "major": major},
            "package": format!("pollswitch {}", env!("CARGO_PKG_VERSION")),
        },
        "capabilities": [],
    }})
}

/// What `version.qemu` says: the QEMU release whose QMP behaviour pollswitch follows
/// (its net commands, error texts and JSON reading are checked against QEMU 10 in the
/// tests), so clients that gate on a QEMU version (libvirt does) accept it. pollswitch's
/// own version is in `package` ("pollswitch X.Y.Z").
pub const QEMU_COMPAT: (u64, u64, u64) = (10, 0, 0);

/// The version triple of the greeting and `query-version`.
pub fn version() -> (u64, u64, u64) {
    QEMU_COMPAT
}

fn with_id(mut m: Map<String, Value>, id: Option<&Value>) -> Value {
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    Value::Object(m)
}

/// A success reply.
pub fn ret(v: Value, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), v);
    with_id(m, id)
}

/// An error reply.
pub fn error(class: &str, desc: &str, id: Option<&Value>) -> Value {
    let mut m = Map::new();
    m.insert("error".into(), json!({"class": class, "desc": desc}));
    with_id(m, id)
}

/// An event with the current time.
pub fn event(name: &str, data: Option<Value>) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut m = Map::new();
    m.insert(
        "timestamp".into(),
        json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()}),
    );
    m.insert("event".into(), Value::String(name.into()));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_values_across_reads_and_lines() {
        let mut s = Splitter::default();
        s.push(b"{\"execute\": \"a\"}{\"exe");
        assert_eq!(s.drain(), vec![Input::Value(json!({"execute": "a"}))]);
        s.push(b"cute\":\n \"b\"}\r\n");
        assert_eq!(s.drain(), vec![Input::Value(json!({"execute": "b"}))]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn garbage_costs_one_reply_per_group() {
        let mut s = Splitter::default();
        s.push(b"foo bar\n{\"execute\": \"c\"}\n");
        let got = s.drain();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(matches!(&got[0], Input::Error(e) if e.ends_with("'foo'")));
        assert!(matches!(&got[1], Input::Error(e) if e.ends_with("'bar'")));
        assert_eq!(got[2], Input::Value(json!({"execute": "c"})));
    }

    #[test]
    fn pretty_as_qemu_prints_it() {
        // Recorded from QEMU 10's -qmp-pretty.
        assert_eq!(
            pretty_line(&json!({"return": {}})),
            "{\r\n    \"return\": {\r\n    }\r\n}\r\n"
        );
        assert_eq!(
            pretty_line(&json!({"id": [1, {"a": []}]})),
            "{\r\n    \"id\": [\r\n        1,\r\n        {\r\n            \"a\": [\r\n            ]\r\n        }\r\n    ]\r\n}\r\n"
        );
    }

    #[test]
    fn shapes() {
        assert_eq!(
            line(&ret(json!({}), Some(&json!(7)))),
            "{\"return\":{},\"id\":7}\r\n"
        );
        let e = error("GenericError", "x", None);
        assert_eq!(e, json!({"error": {"class": "GenericError", "desc": "x"}}));
        let ev = event("SHUTDOWN", Some(json!({"guest": false})));
        assert!(ev["timestamp"]["seconds"].as_u64().unwrap() > 0);
        assert!(greeting()["QMP"]["version"]["package"]
            .as_str()
            .unwrap()
            .starts_with("pollswitch "));
    }
}
