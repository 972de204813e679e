//! `query-qmp-schema`: what this daemon really has, as QEMU's SchemaInfo encodes it.
//!
//! `ctl/build.rs` turns the schema files in `ctl/qapi/` into SchemaInfo entries with real
//! names; here we keep the commands of [`super::commands::COMMANDS`], the events the
//! daemon emits, and the types they reach, and mask type names with numbers as QEMU
//! does (`q_empty`, the empty object, is `"0"`; builtins, commands and events keep their
//! names; an array of T is `[T]` with T masked).

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;

use serde_json::Value;

/// Events the daemon can emit.
pub const EVENTS: &[&str] = &["SHUTDOWN", "NIC_RX_FILTER_CHANGED", "FAILOVER_NEGOTIATED"];

static RAW: &str = include_str!(concat!(env!("OUT_DIR"), "/qmp-schema.json"));

fn entries() -> &'static HashMap<String, Value> {
    static E: OnceLock<HashMap<String, Value>> = OnceLock::new();
    E.get_or_init(|| {
        let all: Vec<Value> = serde_json::from_str(RAW).unwrap_or_default();
        all.into_iter()
            .filter_map(|e| Some((e["name"].as_str()?.to_string(), e)))
            .collect()
    })
}

/// Type names an entry refers to.
fn refs(e: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for k in ["arg-type", "ret-type", "element-type"] {
        if let Some(t) = e[k].as_str() {
            out.push(t.to_string());
        }
    }
    for list in ["members", "variants"] {
        for m in e[list].as_array().into_iter().flatten() {
            if let Some(t) = m["type"].as_str() {
                out.push(t.to_string());
            }
        }
    }
    out
}

/// Names of commands in `commands` that the schema does not describe (a test keeps this
/// empty).
pub fn undescribed(commands: &[&str]) -> Vec<String> {
    commands
        .iter()
        .filter(|c| !entries().contains_key(**c))
        .map(|c| c.to_string())
        .collect()
}

/// The masked SchemaInfo list for these commands and [`EVENTS`].
pub fn schema(commands: &[&str]) -> Value {
    let all = entries();
    let mut order: Vec<String> = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut queue: VecDeque<String> = commands
        .iter()
        .chain(EVENTS)
        .map(|s| s.to_string())
        .collect();
    while let Some(n) = queue.pop_front() {
        if seen.insert(n.clone(), ()).is_some() {
            continue;
        }
        let Some(e) = all.get(&n) else { continue };
        order.push(n);
        queue.extend(refs(e));
    }
    // Masks in order of discovery; q_empty first, as "0".
    let mut mask: HashMap<String, String> = HashMap::new();
    mask.insert("q_empty".into(), "0".into());
    let mut next = 1;
    for n in &order {
        let e = &all[n];
        let keep = matches!(
            e["meta-type"].as_str(),
            Some("builtin" | "command" | "event" | "array")
        );
        if !keep && !mask.contains_key(n) {
            mask.insert(n.clone(), next.to_string());
            next += 1;
        }
    }
    fn masked(n: &str, mask: &HashMap<String, String>) -> String {
        if let Some(inner) = n.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            return format!("[{}]", masked(inner, mask));
        }
        mask.get(n).cloned().unwrap_or_else(|| n.to_string())
    }
    let out: Vec<Value> = order
        .iter()
        .map(|n| {
            let mut e = all[n].clone();
            let name = masked(n, &mask);
            e["name"] = Value::String(name);
            for k in ["arg-type", "ret-type", "element-type"] {
                if let Some(t) = e[k].as_str().map(str::to_string) {
                    e[k] = Value::String(masked(&t, &mask));
                }
            }
            for list in ["members", "variants"] {
                if let Some(arr) = e[list].as_array_mut() {
                    for m in arr {
                        if let Some(t) = m["type"].as_str().map(str::to_string) {
                            m["type"] = Value::String(masked(&t, &mask));
                        }
                    }
                }
            }
            e
        })
        .collect();
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_described_and_names_are_masked() {
        let names: Vec<&str> = super::super::commands::COMMANDS
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(undescribed(&names), Vec::<String>::new());
        let s = schema(&names);
        let by: HashMap<&str, &Value> = s
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e))
            .collect();
        let nd = by["netdev_add"];
        assert_eq!(nd["meta-type"], "command");
        let arg = by[nd["arg-type"].as_str().unwrap()];
        assert!(
            arg["name"].as_str().unwrap().parse::<u32>().is_ok(),
            "masked: {arg}"
        );
        assert_eq!(arg["tag"], "type");
        let cases: Vec<&str> = arg["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["case"].as_str().unwrap())
            .collect();
        assert!(
            cases.contains(&"tap") && cases.contains(&"x-null"),
            "{cases:?}"
        );
        assert_eq!(by["set_link"]["ret-type"], "0");
        assert_eq!(by["0"]["members"], serde_json::json!([]));
        let rx = by["query-rx-filter"];
        assert!(rx["ret-type"].as_str().unwrap().starts_with('['));
        assert!(by.contains_key("NIC_RX_FILTER_CHANGED"));
        // Every reference resolves to an entry.
        for e in s.as_array().unwrap() {
            for r in refs(e) {
                assert!(by.contains_key(r.as_str()), "{r} of {e}");
            }
        }
    }
}
