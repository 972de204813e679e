//! Fuzz targets of the control plane's input: the QMP byte stream through the splitter
//! and the dispatcher, and the command line. Each takes arbitrary bytes and checks a
//! property, panicking when it fails. `fuzz/` drives them with libFuzzer
//! (coverage-guided, nightly); the tests replay the committed corpora on stable.

use std::sync::{Mutex, OnceLock};

use serde_json::Value;
use switch::SwitchConfig;

use crate::cli::DaemonArgs;
use crate::daemon::Daemon;
use crate::qapi::Netdev;
use crate::qmp::commands::execute;
use crate::qmp::server::{Control, Msg, Outbox};
use crate::qmp::wire::{Input, Splitter};

/// Netdev types whose creation touches nothing outside the daemon (no device, socket,
/// file, script or thread): the only ones a fuzzed `netdev_add` may create.
const CONTAINED_TYPES: &[&str] = &["hubport", "nic"];
/// Commands a fuzzed stream may not run: they write files the input names.
const REFUSED: &[&str] = &["x-netdev-capture", "chardev-add"];

/// A daemon (one unpinned worker, a small pool) behind a control loop with one
/// connected client (id 1), made once per process: for dispatching requests in tests and
/// fuzz targets without a socket.
pub fn control() -> &'static Mutex<Control> {
    static C: OnceLock<Mutex<Control>> = OnceLock::new();
    C.get_or_init(|| {
        let d = Daemon::start(&SwitchConfig {
            cores: vec![None],
            pool_size: 512,
            max_frame: 1514,
            gso_buffers: 0,
            default_poll_us: 0,
            ring_size: None,
        })
        .expect("a daemon");
        let mut c = Control::new(d);
        let (tx, _rx) = std::sync::mpsc::channel();
        c.handle(Msg::Connected {
            id: 1,
            out: Outbox::new(tx),
            pretty: false,
        });
        Mutex::new(c)
    })
}

/// Whether a fuzzed request may run here (see [`CONTAINED_TYPES`], [`REFUSED`]).
fn contained(req: &Value) -> bool {
    let cmd = req.get("execute").and_then(Value::as_str).unwrap_or("");
    if REFUSED.contains(&cmd) {
        return false;
    }
    if cmd == "netdev_add" {
        let ty = req
            .get("arguments")
            .and_then(|a| a.get("type"))
            .and_then(Value::as_str);
        return ty.is_none_or(|t| CONTAINED_TYPES.contains(&t));
    }
    true
}

/// The QMP input path: the bytes, cut into requests as a client's stream would be, each
/// request dispatched. Every value the splitter yields gets exactly one reply, `return`
/// or `error` with a class and a text, carrying the request's `id`; malformed bytes
/// become a JSON error. The daemon is emptied after each input.
pub fn qmp(data: &[u8]) {
    let mut s = Splitter::default();
    let mut c = control().lock().unwrap_or_else(|p| p.into_inner());
    for chunk in data.chunks(61) {
        s.push(chunk);
        for i in s.drain() {
            let req = match i {
                Input::Error(e) => {
                    assert!(e.starts_with("JSON "), "{e}");
                    continue;
                }
                Input::Value(v) => v,
            };
            if !contained(&req) {
                continue;
            }
            let reply = execute(&mut c, 1, req.clone()).expect("every request is answered");
            let o = reply.as_object().expect("a reply is an object");
            assert!(
                o.contains_key("return") ^ o.contains_key("error"),
                "{reply}"
            );
            assert_eq!(o.get("id"), req.get("id"), "{reply}");
            if let Some(e) = o.get("error") {
                assert!(e["class"].is_string() && e["desc"].is_string(), "{reply}");
            }
            c.quit = false;
        }
    }
    let ids: Vec<String> = c
        .daemon
        .netdevs()
        .iter()
        .map(|n| n.config.id.clone())
        .collect();
    for id in ids.iter().rev() {
        let _ = c.daemon.netdev_del(id);
    }
}

/// The command line: NUL-separated arguments. Whatever parses is kept as given: every
/// `-netdev` reads back from its QMP form to the same value.
pub fn cli(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    if let Ok(a) = DaemonArgs::parse(args) {
        for nd in &a.netdevs {
            let back = Netdev::from_qmp(&nd.to_qmp()).expect("a parsed netdev reads back");
            assert_eq!(&back, nd);
        }
    }
}
