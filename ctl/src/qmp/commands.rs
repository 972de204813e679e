//! QMP dispatch and the command handlers, one table.
//!
//! Dispatch checks a request the way QEMU's `qmp-dispatch.c` does (object, `execute`,
//! `arguments`, unexpected members, negotiation state) before a handler sees it; each
//! handler reads its arguments through the schema's struct, so argument errors carry
//! QEMU's texts.

use std::os::fd::OwnedFd;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::server::{ClientId, Control};
use super::wire;
use crate::daemon::NetdevEntry;
use crate::error::CtlError;
use crate::netdev::{inherited_fd, FdSource};
use crate::qapi::commands::{
    AnnounceParameters, CapabilitiesArgs, FdbFlushArgs, GetfdArgs, HmpArgs, NetdevCaptureArgs,
    NetdevDelArgs, QueryFdbArgs, QueryRxFilterArgs, SetLinkArgs, SetRxFilterArgs, SetVlanArgs,
};
use crate::qapi::{Netdev, NetdevOpts, QapiError, QapiStruct};
use backends::nic::{RxFilter, RxState};
use switch::wire::{mac_to_string, parse_mac};

/// An error reply.
#[derive(Debug)]
pub struct QmpError {
    /// QMP error class.
    pub class: &'static str,
    /// Human-readable text.
    pub desc: String,
}

impl QmpError {
    fn generic(desc: impl Into<String>) -> QmpError {
        QmpError {
            class: "GenericError",
            desc: desc.into(),
        }
    }
}

impl From<CtlError> for QmpError {
    fn from(e: CtlError) -> Self {
        QmpError {
            class: e.class(),
            desc: e.to_string(),
        }
    }
}

impl From<QapiError> for QmpError {
    fn from(e: QapiError) -> Self {
        QmpError {
            class: e.class(),
            desc: e.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, QmpError>;
type Handler = fn(&mut Control, ClientId, &Map<String, Value>) -> Result<Value>;

/// Every command, by name.
pub const COMMANDS: &[(&str, Handler)] = &[
    ("qmp_capabilities", qmp_capabilities),
    ("query-commands", query_commands),
    ("query-version", query_version),
    ("query-name", query_name),
    ("query-qmp-schema", query_qmp_schema),
    ("quit", quit),
    ("netdev_add", netdev_add),
    ("netdev_del", netdev_del),
    ("set_link", set_link),
    ("query-netdev", query_netdev),
    ("query-rx-filter", query_rx_filter),
    ("announce-self", announce_self),
    ("getfd", getfd),
    ("closefd", closefd),
    ("human-monitor-command", human_monitor_command),
    ("x-query-stats", x_query_stats),
    ("x-set-rx-filter", x_set_rx_filter),
    ("x-query-fdb", x_query_fdb),
    ("x-netdev-capture", x_netdev_capture),
    ("x-fdb-flush", x_fdb_flush),
    ("x-set-vlan", x_set_vlan),
    ("chardev-add", chardev_add),
    ("chardev-remove", chardev_remove),
    ("query-chardev", query_chardev),
];

/// Checks and runs one request; returns the reply (always one, for QMP requests).
pub fn execute(ctl: &mut Control, client: ClientId, req: Value) -> Option<Value> {
    let Value::Object(req) = req else {
        return Some(wire::error(
            "GenericError",
            "QMP input must be a JSON object",
            None,
        ));
    };
    let id = req.get("id").cloned();
    let reply = dispatch(ctl, client, &req);
    Some(match reply {
        Ok(v) => wire::ret(v, id.as_ref()),
        Err(e) => wire::error(e.class, &e.desc, id.as_ref()),
    })
}

fn dispatch(ctl: &mut Control, client: ClientId, req: &Map<String, Value>) -> Result<Value> {
    let name = match req.get("execute") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'execute' must be a string",
            ))
        }
        None => return Err(QmpError::generic("QMP input lacks member 'execute'")),
    };
    for k in req.keys() {
        if !matches!(k.as_str(), "execute" | "arguments" | "id") {
            return Err(QmpError::generic(format!(
                "QMP input member '{k}' is unexpected"
            )));
        }
    }
    let empty = Map::new();
    let args = match req.get("arguments") {
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(QmpError::generic(
                "QMP input member 'arguments' must be an object",
            ))
        }
        None => &empty,
    };
    let negotiated = ctl.clients.get(&client).is_some_and(|c| c.negotiated);
    if !negotiated && name != "qmp_capabilities" {
        return Err(QmpError {
            class: "CommandNotFound",
            desc: "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
        });
    }
    if negotiated && name == "qmp_capabilities" {
        return Err(QmpError {
            class: "CommandNotFound",
            desc: "Capabilities negotiation is already complete, command ignored".into(),
        });
    }
    let Some((_, handler)) = COMMANDS.iter().find(|(n, _)| *n == name) else {
        return Err(QmpError {
            class: "CommandNotFound",
            desc: format!("The command {name} has not been found"),
        });
    };
    handler(ctl, client, args)
}

/// Commands without arguments refuse any member.
fn no_args(args: &Map<String, Value>) -> Result<()> {
    match args.keys().next() {
        Some(k) => Err(QapiError::Unexpected(k.clone()).into()),
        None => Ok(()),
    }
}

fn qmp_capabilities(
    ctl: &mut Control,
    client: ClientId,
    args: &Map<String, Value>,
) -> Result<Value> {
    let a = CapabilitiesArgs::from_qmp(args)?;
    if let Some(cap) = a.enable.unwrap_or_default().into_iter().next() {
        return Err(match cap.as_str() {
            "oob" => QmpError::generic("Capability 'oob' not available"),
            _ => QapiError::BadEnumValue {
                name: "enable".into(),
                value: cap,
            }
            .into(),
        });
    }
    if let Some(c) = ctl.clients.get_mut(&client) {
        c.negotiated = true;
    }
    Ok(json!({}))
}

fn query_commands(_: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    no_args(args)?;
    Ok(Value::Array(
        COMMANDS.iter().map(|(n, _)| json!({"name": n})).collect(),
    ))
}

fn query_version(_: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    no_args(args)?;
    Ok(wire::greeting()["QMP"]["version"].clone())
}

fn query_qmp_schema(_: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    no_args(args)?;
    let names: Vec<&str> = COMMANDS.iter().map(|(n, _)| *n).collect();
    Ok(super::schema::schema(&names))
}

fn query_name(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    no_args(args)?;
    Ok(match &ctl.name {
        Some(n) => json!({"name": n}),
        None => json!({}),
    })
}

fn quit(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    no_args(args)?;
    ctl.quit = true;
    Ok(json!({}))
}

/// The descriptors a client named with `getfd`; numbers fall back to inherited
/// descriptors as on the command line.
struct ClientFds<'a>(Option<&'a mut std::collections::HashMap<String, OwnedFd>>);

impl FdSource for ClientFds<'_> {
    fn take(&mut self, name: &str) -> std::result::Result<OwnedFd, CtlError> {
        if let Some(fd) = self.0.as_mut().and_then(|m| m.remove(name)) {
            return Ok(fd);
        }
        if name.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            return inherited_fd(name);
        }
        Err(CtlError::Invalid(format!(
            "File descriptor named '{name}' has not been found"
        )))
    }
}

fn netdev_add(ctl: &mut Control, client: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let nd = Netdev::from_qmp(args)?;
    let fds = ctl.clients.get_mut(&client).map(|c| &mut c.fds);
    ctl.daemon.netdev_add(&nd, &mut ClientFds(fds))?;
    Ok(json!({}))
}

fn netdev_del(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = NetdevDelArgs::from_qmp(args)?;
    let backends = ctl.daemon.netdev_del(&a.id)?;
    // Closing descriptors and running down-scripts happens here, after the workers let go.
    drop(backends);
    Ok(json!({}))
}

fn set_link(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = SetLinkArgs::from_qmp(args)?;
    ctl.daemon.set_link(&a.name, a.up)?;
    Ok(json!({}))
}

fn query_netdev(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    no_args(args)?;
    let mut out = Vec::new();
    for e in ctl.daemon.netdevs() {
        if matches!(e.config.opts, NetdevOpts::Nic(_) | NetdevOpts::Hubport(_)) {
            continue;
        }
        let mut m = Map::new();
        for (k, v) in e.config.to_qmp() {
            m.insert(k.clone(), v);
            if k == "type" {
                if let Some(p) = ctl.daemon.peer_of(&e.config.id) {
                    m.insert("peer-id".into(), Value::String(p));
                }
            }
        }
        out.push(Value::Object(m));
    }
    Ok(Value::Array(out))
}

fn filter_info(name: &str, f: &RxFilter) -> Value {
    json!({
        "name": name,
        "promiscuous": f.promiscuous,
        "multicast": f.multicast.as_str(),
        "unicast": f.unicast.as_str(),
        "vlan": f.vlan.as_str(),
        "broadcast-allowed": f.broadcast_allowed,
        "multicast-overflow": f.multicast_overflow,
        "unicast-overflow": f.unicast_overflow,
        "main-mac": mac_to_string(&f.main_mac),
        "vlan-table": f.vlan_table,
        "unicast-table": f.unicast_table.iter().map(mac_to_string).collect::<Vec<_>>(),
        "multicast-table": f.multicast_table.iter().map(mac_to_string).collect::<Vec<_>>(),
    })
}

fn query_rx_filter(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = QueryRxFilterArgs::from_qmp(args)?;
    if let Some(name) = &a.name {
        if ctl.daemon.switch().graph().get(name).is_none() {
            return Err(QmpError::generic(format!(
                "invalid net client name: {name}"
            )));
        }
        let Some(nic) = ctl.daemon.netdev_mut(name).and_then(|e| e.nic.as_mut()) else {
            return Err(QmpError::generic(format!("net client({name}) isn't a NIC")));
        };
        nic.notify = true;
        return Ok(json!([filter_info(name, nic.filter_now())]));
    }
    let names: Vec<String> = ctl
        .daemon
        .netdevs()
        .iter()
        .filter(|e| e.nic.is_some())
        .map(|e| e.config.id.clone())
        .collect();
    let mut out = Vec::new();
    for n in names {
        if let Some(nic) = ctl.daemon.netdev_mut(&n).and_then(|e| e.nic.as_mut()) {
            nic.notify = true;
            out.push(filter_info(&n, nic.filter_now()));
        }
    }
    Ok(Value::Array(out))
}

fn announce_self(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let p = AnnounceParameters::from_qmp(args)?;
    for (name, v) in [("initial", p.initial), ("max", p.max), ("step", p.step)] {
        if v < 0 {
            return Err(QmpError::generic(format!(
                "Parameter '{name}' must not be negative"
            )));
        }
    }
    if p.rounds < 1 {
        return Err(QmpError::generic("Parameter 'rounds' must be at least 1"));
    }
    ctl.announcer.start(&ctl.daemon, p, Instant::now());
    Ok(json!({}))
}

fn getfd(ctl: &mut Control, client: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = GetfdArgs::from_qmp(args)?;
    if a.fdname.chars().next().is_some_and(|c| c.is_ascii_digit()) {
        return Err(QmpError::generic(
            "Parameter 'fdname' expects a name not starting with a digit",
        ));
    }
    let c = ctl
        .clients
        .get_mut(&client)
        .ok_or_else(|| QmpError::generic("client gone"))?;
    let fd = c
        .pending_fds
        .pop()
        .ok_or_else(|| QmpError::generic("No file descriptor supplied via SCM_RIGHTS"))?;
    // Older unclaimed descriptors are closed, as QEMU keeps only the latest.
    c.pending_fds.clear();
    c.fds.insert(a.fdname, fd);
    Ok(json!({}))
}

fn closefd(ctl: &mut Control, client: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = GetfdArgs::from_qmp(args)?;
    let c = ctl
        .clients
        .get_mut(&client)
        .ok_or_else(|| QmpError::generic("client gone"))?;
    match c.fds.remove(&a.fdname) {
        Some(_) => Ok(json!({})),
        None => Err(QmpError::generic(format!(
            "File descriptor named '{}' not found",
            a.fdname
        ))),
    }
}

/// `key=value` of the options a netdev was created with, as `info network` shows them.
fn info_str(e: &NetdevEntry) -> String {
    if let Some(u) = &e.user {
        return u.info().to_string();
    }
    if let (NetdevOpts::Nic(o), Some(n)) = (&e.config.opts, &e.nic) {
        return format!(
            "model={},macaddr={}",
            o.model.as_deref().unwrap_or("memif"),
            mac_to_string(&n.filter.main_mac)
        );
    }
    e.config
        .to_qmp()
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "id" | "type" | "netdev"))
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn client_line(ctl: &Control, name: &str) -> String {
    match ctl.daemon.netdev(name) {
        Some(e) => format!(
            "{}: index=0,type={},{}\r\n",
            name,
            e.config.opts.type_name(),
            info_str(e)
        ),
        None => format!("{name}\r\n"),
    }
}

/// `info network`: hubs with their ports and peers, then everything else, as QEMU
/// prints it.
fn info_network(ctl: &Control) -> String {
    let mut s = String::new();
    let mut on_hub = std::collections::HashSet::new();
    for (hub, ports) in ctl.daemon.hubs() {
        s.push_str(&format!("hub {hub}\r\n"));
        for p in ports {
            on_hub.insert(p.clone());
            s.push_str(&format!(" \\ {p}"));
            match ctl.daemon.peer_of(&p) {
                Some(peer) => {
                    on_hub.insert(peer.clone());
                    s.push_str(": ");
                    s.push_str(&client_line(ctl, &peer));
                }
                None => s.push_str("\r\n"),
            }
        }
    }
    for e in ctl.daemon.netdevs() {
        let name = &e.config.id;
        if on_hub.contains(name) {
            continue;
        }
        let peer = ctl.daemon.peer_of(name);
        let is_nic = e.nic.is_some();
        if peer.is_none() || is_nic {
            s.push_str(&client_line(ctl, name));
        }
        if let (Some(p), true) = (peer, is_nic) {
            s.push_str(" \\ ");
            s.push_str(&client_line(ctl, &p));
        }
    }
    s
}

fn human_monitor_command(
    ctl: &mut Control,
    _: ClientId,
    args: &Map<String, Value>,
) -> Result<Value> {
    let a = HmpArgs::from_qmp(args)?;
    let words: Vec<&str> = a.command_line.split_whitespace().collect();
    let out = match words.as_slice() {
        ["info", "network"] => info_network(ctl),
        ["info", "usernet"] => info_usernet(ctl),
        ["hostfwd_add", rest @ ..] => hostfwd(ctl, "hostfwd_add", rest),
        ["hostfwd_remove", rest @ ..] => hostfwd(ctl, "hostfwd_remove", rest),
        [] => String::new(),
        [cmd, ..] => format!("unknown command: '{}'\r\n", cmd),
    };
    Ok(Value::String(out))
}

/// The user network `id` names (or the first one), as HMP's hostfwd commands find it:
/// `Err` is what they print instead.
fn user_stack<'a>(
    ctl: &'a Control,
    id: Option<&str>,
) -> std::result::Result<&'a backends::user::UserHandle, String> {
    match id {
        Some(id) => match ctl.daemon.netdev(id) {
            None => Err(format!("unrecognized netdev id '{id}'\r\n")),
            Some(e) => e
                .user
                .as_ref()
                .ok_or_else(|| "invalid device specified\r\n".to_string()),
        },
        None => ctl
            .daemon
            .netdevs()
            .iter()
            .find_map(|e| e.user.as_ref())
            .ok_or_else(|| "user mode network stack not in use\r\n".to_string()),
    }
}

/// HMP `hostfwd_add [netdev_id] RULE` and `hostfwd_remove [netdev_id] RULE`, with
/// QEMU's output.
fn hostfwd(ctl: &Control, cmd: &str, args: &[&str]) -> String {
    let (id, rule) = match args {
        [rule] => (None, *rule),
        [id, rule] => (Some(*id), *rule),
        [] => return format!("{cmd}: missing argument\r\n"),
        _ => return format!("{cmd}: too many arguments\r\n"),
    };
    let stack = match user_stack(ctl, id) {
        Ok(s) => s,
        Err(msg) => return msg,
    };
    if cmd == "hostfwd_add" {
        return match stack.hostfwd_add(rule) {
            Ok(()) => String::new(),
            Err(e) => format!("{e}\r\n"),
        };
    }
    let Some((udp, host)) = backends::user::parse_hostfwd_remove(rule) else {
        return "invalid format\r\n".into();
    };
    match stack.hostfwd_remove(udp, host) {
        Ok(found) => format!(
            "host forwarding rule for {rule} {}\r\n",
            if found { "removed" } else { "not found" }
        ),
        Err(e) => format!("{e}\r\n"),
    }
}

/// HMP `info usernet`: each user network's hub and connection table.
fn info_usernet(ctl: &Control) -> String {
    let hubs = ctl.daemon.hubs();
    let mut s = String::new();
    for e in ctl.daemon.netdevs() {
        let Some(u) = &e.user else { continue };
        let id = &e.config.id;
        let hub = hubs
            .iter()
            .find(|(_, ports)| {
                ports
                    .iter()
                    .any(|p| ctl.daemon.peer_of(p).as_deref() == Some(id))
            })
            .map_or(-1, |(h, _)| *h);
        let table = u.connections().unwrap_or_else(|e| format!("{e}\n"));
        s.push_str(&format!("Hub {hub} ({id}):\r\n"));
        s.push_str(&table.replace('\n', "\r\n"));
    }
    s
}

fn x_query_stats(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    no_args(args)?;
    let sw = ctl.daemon.switch();
    let pool = sw.pool();
    let workers: Vec<Value> = sw
        .workers()
        .iter()
        .map(|w| {
            let uring: Map<String, Value> = w
                .uring
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            json!({
                "id": w.id, "core": w.core, "ports": w.ports,
                "busy-ns": w.busy_ns, "idle-ns": w.idle_ns, "gone-drops": w.gone_drops,
                "io-uring": uring,
            })
        })
        .collect();
    let mut ports = Vec::new();
    for e in ctl.daemon.netdevs() {
        let Ok(Some(c)) = sw.counters(&e.config.id) else {
            continue;
        };
        let drops: Map<String, Value> = switch::DropReason::ALL
            .iter()
            .map(|d| (d.name().to_string(), json!(c.dropped(*d))))
            .collect();
        let link_up = sw.graph().get(&e.config.id).is_some_and(|c| c.link_up);
        let mut port = json!({
            "name": e.config.id, "type": e.config.opts.type_name(), "link-up": link_up,
            "carrier": c.carrier,
            "rx-packets": c.rx_packets, "rx-bytes": c.rx_bytes,
            "tx-packets": c.tx_packets, "tx-bytes": c.tx_bytes,
            "drops": drops,
            "offloads": {
                "gso-cut": c.gso_cut, "gso-segments": c.gso_segments,
                "csum-finished": c.csum_finished,
                "gro-batches": c.gro_batches, "gro-segments": c.gro_segments,
            },
        });
        if let Ok(Some(qs)) = sw.per_queue(&e.config.id) {
            if qs.len() > 1 {
                port["queues"] = qs
                    .iter()
                    .map(|(w, c)| {
                        json!({
                            "worker": w, "rx-packets": c.rx_packets, "tx-packets": c.tx_packets,
                            "drops": c.total_drops(),
                        })
                    })
                    .collect();
            }
        }
        if let Ok(Some(l)) = sw.latency(&e.config.id) {
            port["latency-ns"] = json!({
                "samples": l.count, "min": l.min, "p50": l.p50, "p90": l.p90, "p99": l.p99,
                "p999": l.p999, "max": l.max,
            });
        }
        if let Some(cap) = &e.capture {
            use std::sync::atomic::Ordering::Relaxed;
            port["capture"] = json!({
                "file": cap.spec().path.display().to_string(),
                "captured": cap.sink().captured.load(Relaxed),
                "dropped": cap.sink().dropped.load(Relaxed),
            });
        }
        if let Some(m) = e.nic.as_ref().and_then(|n| n.handle.memif()) {
            port["memif"] = json!({
                "connected": m.connected, "peer": m.peer, "connects": m.connects,
                "disconnects": m.disconnects, "last-reason": m.last_reason,
            });
        }
        if let Some(u) = &e.user {
            use std::sync::atomic::Ordering::Relaxed;
            let k = u.counters();
            port["user-stack"] = json!({
                "frames-in": k.from_switch.load(Relaxed),
                "frames-out": k.to_switch.load(Relaxed),
                "frames-out-dropped": k.to_switch_full.load(Relaxed),
                "guest-errors": k.guest_errors.load(Relaxed),
            });
        }
        if let Some(h) = &e.vhost {
            let i = h.info();
            port["vhost-user"] = json!({
                "connected": i.connected, "connects": i.connects,
                "queues-running": i.running, "memory-regions": i.regions,
                "features": backends::vhost_user::device::feature_names(i.features),
                "protocol-features": i.protocol,
                "guest-mac": h.nic().learned_mac().map(|m| mac_to_string(&m)),
                "dirty-pages-logged": h.dirty_pages(),
                "checksums-completed": h.checksums(),
                "last-error": i.last_error,
            });
        }
        if let Some(x) = &e.af_xdp {
            use std::sync::atomic::Ordering::Relaxed;
            let queues: Vec<Value> = x
                .queues
                .iter()
                .map(|q| {
                    json!({
                        "queue": q.queue.load(Relaxed), "zero-copy": q.zero_copy.load(Relaxed),
                        "rx-frames": q.rx_frames.load(Relaxed),
                        "tx-frames": q.tx_frames.load(Relaxed),
                        "bad-descs": q.bad_descs.load(Relaxed),
                        "rx-dropped": q.rx_dropped.load(Relaxed),
                        "rx-invalid-descs": q.rx_invalid_descs.load(Relaxed),
                        "tx-invalid-descs": q.tx_invalid_descs.load(Relaxed),
                        "rx-ring-full": q.rx_ring_full.load(Relaxed),
                        "rx-fill-ring-empty-descs": q.rx_fill_ring_empty_descs.load(Relaxed),
                        "tx-ring-empty-descs": q.tx_ring_empty_descs.load(Relaxed),
                    })
                })
                .collect();
            port["af-xdp"] = json!({
                "mode": x.mode.map(|m| m.as_str()),
                "queues": queues,
            });
        }
        if let Some(v) = &e.vxlan {
            use std::sync::atomic::Ordering::Relaxed;
            port["vxlan"] = json!({
                "vteps": v.vteps.load(Relaxed), "learned": v.learned.load(Relaxed),
                "overflow": v.overflow.load(Relaxed), "to-vtep": v.to_vtep.load(Relaxed),
            });
        }
        ports.push(port);
    }
    Ok(json!({
        "pool": {
            "buffers": pool.count(), "free": pool.free_count(), "buffer-size": pool.buf_size(),
            "max-frame": pool.max_frame(),
            "huge-pages": pool.pages() == switch::pool::PageKind::Huge,
            "reserved": pool.reserved(), "refused-handles": pool.misuse_count(),
            "gso-buffers": pool.gso_count(), "gso-free": pool.gso_free_count(),
            "gso-buffer-size": pool.gso_buf_size(),
        },
        "workers": workers,
        "ports": ports,
        "announce-timers": ctl.announcer.running(),
    }))
}

fn rx_state(member: &str, v: &Option<String>, old: RxState) -> Result<RxState> {
    match v {
        None => Ok(old),
        Some(s) => RxState::from_name(s).ok_or_else(|| {
            QapiError::BadEnumValue {
                name: member.into(),
                value: s.clone(),
            }
            .into()
        }),
    }
}

fn macs(member: &str, v: &[String]) -> Result<Vec<switch::wire::Mac>> {
    v.iter()
        .map(|m| {
            parse_mac(m).ok_or_else(|| {
                QmpError::generic(format!(
                    "Parameter '{member}' has an invalid MAC address '{m}'"
                ))
            })
        })
        .collect()
}

fn x_netdev_capture(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    use switch::capture::{Capture, CaptureSpec, Direction, Format, DEFAULT_SNAPLEN};
    let a = NetdevCaptureArgs::from_qmp(args)?;
    let is_port = ctl.daemon.switch().graph().member_id(&a.name).is_some();
    if ctl.daemon.netdev(&a.name).is_none() || !is_port {
        return Err(QmpError::generic(format!(
            "invalid net client name: {} (a port, not a hubport)",
            a.name
        )));
    }
    if a.stop == Some(true) {
        ctl.daemon
            .switch_mut()
            .set_capture(&a.name, None)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        let Some(c) = ctl
            .daemon
            .netdev_mut(&a.name)
            .and_then(|e| e.capture.take())
        else {
            return Err(QmpError::generic(format!(
                "{} is not being captured",
                a.name
            )));
        };
        let dropped = c.sink().dropped.load(std::sync::atomic::Ordering::Relaxed);
        let w = c
            .finish()
            .map_err(|e| QmpError::generic(format!("capture of {}: {e}", a.name)))?;
        return Ok(json!({"frames": w.frames, "files": w.files, "dropped": dropped}));
    }
    let Some(file) = &a.file else {
        return Err(QmpError::generic("Parameter 'file' is missing"));
    };
    if ctl
        .daemon
        .netdev(&a.name)
        .is_some_and(|e| e.capture.is_some())
    {
        return Err(QmpError::generic(format!(
            "{} is already being captured (stop it first)",
            a.name
        )));
    }
    let direction = match a.direction.as_deref() {
        None => Direction::Both,
        Some(d) => Direction::from_name(d).ok_or_else(|| {
            QmpError::generic(format!(
                "Parameter 'direction' does not accept value '{d}' (rx, tx or both)"
            ))
        })?,
    };
    let format = match a.format.as_deref() {
        None | Some("pcapng") => Format::Pcapng,
        Some("pcap") => Format::Pcap,
        Some(f) => {
            return Err(QmpError::generic(format!(
                "Parameter 'format' does not accept value '{f}' (pcapng or pcap)"
            )))
        }
    };
    let spec = CaptureSpec {
        path: crate::osarg::path(file),
        direction,
        snaplen: a.snaplen.unwrap_or(DEFAULT_SNAPLEN).max(1),
        max_size: a.max_size.unwrap_or(0),
        max_files: a.max_files.unwrap_or(2).max(1),
        format,
        name: a.name.clone(),
    };
    let cap = Capture::start(spec)
        .map_err(|e| QmpError::generic(format!("could not open {file}: {e}")))?;
    let sink = cap.sink().clone();
    ctl.daemon
        .switch_mut()
        .set_capture(&a.name, Some(sink))
        .map_err(|e| QmpError::generic(e.to_string()))?;
    if let Some(e) = ctl.daemon.netdev_mut(&a.name) {
        e.capture = Some(cap);
    }
    Ok(json!({}))
}

/// The netdev a learning hub's table files addresses under (its first queue's id).
fn member_name(g: &switch::topology::Graph, member: u32) -> Option<String> {
    g.names()
        .find(|n| g.member_id(n) == Some(member))
        .map(str::to_string)
}

fn x_query_fdb(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = QueryFdbArgs::from_qmp(args)?;
    let g = ctl.daemon.switch().graph();
    if let Some(h) = a.hubid {
        if g.fdb(h).is_none() {
            return Err(QmpError::generic(format!("hub {h} is not a learning hub")));
        }
    }
    let now = Instant::now();
    let mut out = Vec::new();
    for (hub, fdb) in g.learning_hubs() {
        if a.hubid.is_some_and(|h| h != hub) {
            continue;
        }
        let mut entries: Vec<Value> = fdb
            .entries(now)
            .into_iter()
            .map(|e| {
                json!({
                    "mac": mac_to_string(&e.mac),
                    "port": member_name(g, e.member),
                    "vlan": e.vlan,
                    "age-ms": e.age.as_millis() as u64,
                })
            })
            .collect();
        entries.sort_by(|x, y| x["mac"].as_str().cmp(&y["mac"].as_str()));
        out.push(json!({
            "hubid": hub, "size": fdb.size(), "ageing-ms": fdb.ageing().as_millis() as u64,
            "overflow": fdb.overflow(), "moves": fdb.moves(), "entries": entries,
        }));
    }
    Ok(Value::Array(out))
}

fn x_fdb_flush(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = FdbFlushArgs::from_qmp(args)?;
    let g = ctl.daemon.switch().graph();
    let Some(fdb) = g.fdb(a.hubid) else {
        return Err(QmpError::generic(format!(
            "hub {} is not a learning hub",
            a.hubid
        )));
    };
    match &a.port {
        None => fdb.flush(),
        Some(p) => match g.learned_member(p) {
            Some((f, m)) if std::sync::Arc::ptr_eq(&f, fdb) => f.flush_member(m),
            _ => {
                return Err(QmpError::generic(format!(
                    "'{p}' is not a port of learning hub {}",
                    a.hubid
                )))
            }
        },
    }
    Ok(json!({}))
}

fn x_set_vlan(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = SetVlanArgs::from_qmp(args)?;
    ctl.daemon.set_vlan(&a.name, a.vlan, a.trunks.as_deref())?;
    Ok(json!({}))
}

fn x_set_rx_filter(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    let a = SetRxFilterArgs::from_qmp(args)?;
    if ctl.daemon.switch().graph().get(&a.name).is_none() {
        return Err(QmpError::generic(format!(
            "invalid net client name: {}",
            a.name
        )));
    }
    let Some(nic) = ctl.daemon.netdev_mut(&a.name).and_then(|e| e.nic.as_mut()) else {
        return Err(QmpError::generic(format!(
            "net client({}) isn't a NIC",
            a.name
        )));
    };
    let mut f = nic.filter.clone();
    f.promiscuous = a.promiscuous.unwrap_or(f.promiscuous);
    f.multicast = rx_state("multicast", &a.multicast, f.multicast)?;
    f.unicast = rx_state("unicast", &a.unicast, f.unicast)?;
    f.vlan = rx_state("vlan", &a.vlan, f.vlan)?;
    f.broadcast_allowed = a.broadcast_allowed.unwrap_or(f.broadcast_allowed);
    if let Some(m) = &a.main_mac {
        f.main_mac = macs("main-mac", std::slice::from_ref(m))?[0];
    }
    if let Some(t) = &a.vlan_table {
        f.vlan_table = t
            .iter()
            .map(|v| u16::try_from(*v).ok().filter(|v| *v < 4096))
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| QmpError::generic("Parameter 'vlan-table' expects VLAN ids 0..4095"))?;
    }
    if let Some(t) = &a.unicast_table {
        f.unicast_table = macs("unicast-table", t)?;
    }
    if let Some(t) = &a.multicast_table {
        f.multicast_table = macs("multicast-table", t)?;
    }
    if f == nic.filter {
        return Ok(json!({}));
    }
    nic.handle.set_filter(f.clone());
    nic.filter = f;
    let notify = std::mem::replace(&mut nic.notify, false);
    if notify {
        let name = a.name.clone();
        ctl.broadcast(
            "NIC_RX_FILTER_CHANGED",
            Some(json!({"name": name, "path": format!("/machine/peripheral/{name}")})),
        );
    }
    Ok(json!({}))
}

/// Member `key` of `m`, which must be a string (`where` names its container).
fn str_member<'a>(m: &'a Map<String, Value>, at: &str, key: &str) -> Result<&'a str> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{at}{key}', expected: string"
        ))),
        None => Err(QmpError::generic(format!(
            "Parameter '{at}{key}' is missing"
        ))),
    }
}

/// Member `key` of `m`, which must be an object.
fn obj_member<'a>(
    m: &'a Map<String, Value>,
    at: &str,
    key: &str,
) -> Result<&'a Map<String, Value>> {
    match m.get(key) {
        Some(Value::Object(o)) => Ok(o),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{at}{key}', expected: object"
        ))),
        None => Err(QmpError::generic(format!(
            "Parameter '{at}{key}' is missing"
        ))),
    }
}

/// Refuses members of `m` outside `known`.
fn only(m: &Map<String, Value>, at: &str, known: &[&str]) -> Result<()> {
    match m.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(QmpError::generic(format!(
            "Parameter '{at}{k}' is unexpected"
        ))),
        None => Ok(()),
    }
}

/// `chardev-add` of a socket chardev (QEMU's ChardevBackend, socket branch).
fn chardev_add(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    use crate::chardev::{Chardev, ChardevAddr};
    only(args, "", &["id", "backend"])?;
    let id = str_member(args, "", "id")?.to_string();
    let backend = obj_member(args, "", "backend")?;
    only(backend, "backend.", &["type", "data"])?;
    let ty = str_member(backend, "backend.", "type")?;
    if ty != "socket" {
        return Err(QmpError::generic(format!(
            "chardev backend '{ty}' is not supported by pollswitch (only socket)"
        )));
    }
    let data = obj_member(backend, "backend.", "data")?;
    only(
        data,
        "backend.data.",
        &["addr", "server", "wait", "reconnect", "reconnect-ms"],
    )?;
    let flag = |k: &str, default: bool| -> Result<bool> {
        match data.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(QmpError::generic(format!(
                "Invalid parameter type for 'backend.data.{k}', expected: boolean"
            ))),
        }
    };
    let number = |k: &str| -> Result<u64> {
        match data.get(k) {
            None => Ok(0),
            Some(v) => v.as_u64().ok_or_else(|| {
                QmpError::generic(format!(
                    "Invalid parameter type for 'backend.data.{k}', expected: integer"
                ))
            }),
        }
    };
    // QEMU's defaults for QMP: a server, not waiting.
    let server = flag("server", true)?;
    let wait = flag("wait", false)?;
    let reconnect_ms = number("reconnect")?.saturating_mul(1000) + number("reconnect-ms")?;
    if server && reconnect_ms > 0 {
        return Err(QmpError::generic(
            "'reconnect' option is incompatible with socket in server listen mode",
        ));
    }
    let addr = obj_member(data, "backend.data.", "addr")?;
    only(addr, "backend.data.addr.", &["type", "data"])?;
    let at = obj_member(addr, "backend.data.addr.", "data")?;
    let addr = match str_member(addr, "backend.data.addr.", "type")? {
        "unix" => {
            only(at, "backend.data.addr.data.", &["path"])?;
            ChardevAddr::Unix(str_member(at, "backend.data.addr.data.", "path")?.to_string())
        }
        "inet" => {
            only(at, "backend.data.addr.data.", &["host", "port"])?;
            let host = str_member(at, "backend.data.addr.data.", "host")?;
            let port = str_member(at, "backend.data.addr.data.", "port")?;
            ChardevAddr::Tcp(if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            })
        }
        other => {
            return Err(QmpError::generic(format!(
                "Parameter 'backend.data.addr.type' does not accept value '{other}'"
            )))
        }
    };
    ctl.daemon.chardev_add(Chardev {
        id: id.clone(),
        addr,
        server,
        wait,
        reconnect_ms,
    })?;
    tracing::info!("chardev {id} added");
    Ok(json!({}))
}

fn chardev_remove(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    only(args, "", &["id"])?;
    let id = str_member(args, "", "id")?;
    ctl.daemon.chardev_remove(id)?;
    tracing::info!("chardev {id} removed");
    Ok(json!({}))
}

/// `query-chardev`: every socket chardev, its address as QEMU writes it, and whether a
/// netdev uses it.
fn query_chardev(ctl: &mut Control, _: ClientId, args: &Map<String, Value>) -> Result<Value> {
    use crate::chardev::ChardevAddr;
    only(args, "", &[])?;
    let d = &ctl.daemon;
    let mut list: Vec<&crate::chardev::Chardev> = d.chardevs().values().collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Value::Array(
        list.into_iter()
            .map(|c| {
                let at = match &c.addr {
                    ChardevAddr::Unix(p) => format!("unix:{p}"),
                    ChardevAddr::Tcp(a) => format!("tcp:{a}"),
                    ChardevAddr::Fd(f) => format!("fd:{f}"),
                };
                let server = if c.server { ",server=on" } else { "" };
                json!({
                    "label": c.id,
                    "filename": format!("{at}{server}"),
                    "frontend-open": d.chardev_user(&c.id).is_some(),
                })
            })
            .collect(),
    ))
}
