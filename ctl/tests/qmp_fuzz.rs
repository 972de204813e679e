//! Bounded fuzzing of the QMP input path: the JSON stream splitter and the dispatcher
//! with its argument visitors, against a real daemon. Nothing may panic, and every
//! request gets exactly one reply, `return` or `error`, carrying the request's `id`.

use ctl::qmp::commands::{execute, COMMANDS};

use ctl::qmp::wire::{Input, Splitter};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "[a-z0-9:._-]{0,12}".prop_map(Value::from),
        Just(json!("0")),
        Just(json!("n0")),
        Just(json!("h0")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z-]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Argument names the schema uses, so that generated arguments get past the first
/// member often enough to reach the deeper checks.
const KEYS: &[&str] = &[
    "id",
    "type",
    "hubid",
    "netdev",
    "name",
    "up",
    "macaddr",
    "initial",
    "max",
    "rounds",
    "step",
    "interfaces",
    "fdname",
    "command-line",
    "promiscuous",
    "unicast",
    "vlan-table",
    "enable",
];
/// Netdev types whose creation touches nothing outside the daemon.
const TYPES: &[&str] = &["hubport", "nic", "none", "bogus", "vde", "user", "netmap"];

fn arb_args() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::vec(
        (
            prop::sample::select(KEYS),
            prop_oneof![
                arb_json(),
                prop::sample::select(TYPES).prop_map(Value::from)
            ],
        ),
        0..6,
    )
    .prop_map(|kv| kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn arb_request() -> impl Strategy<Value = Value> {
    let names: Vec<&str> = COMMANDS
        .iter()
        .map(|(n, _)| *n)
        .chain(["nope", ""])
        .collect();
    (
        prop::sample::select(names),
        arb_args(),
        prop::option::of(arb_json()),
        any::<bool>(),
    )
        .prop_map(|(cmd, args, id, with_args)| {
            let mut m = Map::new();
            m.insert("execute".into(), json!(cmd));
            if with_args {
                m.insert("arguments".into(), Value::Object(args));
            }
            if let Some(id) = id {
                m.insert("id".into(), id);
            }
            Value::Object(m)
        })
}

use ctl::fuzzing::control;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn splitter_never_panics(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut s = Splitter::default();
        for c in chunks {
            s.push(&c);
            for i in s.drain() {
                if let Input::Error(e) = i {
                    prop_assert!(e.starts_with("JSON "), "{}", e);
                }
            }
        }
    }

    #[test]
    fn every_request_gets_one_well_formed_reply(req in arb_request(), negotiated in any::<bool>()) {
        let mut c = control().lock().unwrap();
        if negotiated && !c.clients[&1].negotiated {
            execute(&mut c, 1, json!({"execute": "qmp_capabilities"}));
        }
        let reply = execute(&mut c, 1, req.clone()).expect("a reply");
        let o = reply.as_object().expect("reply is an object");
        prop_assert!(o.contains_key("return") ^ o.contains_key("error"), "{reply}");
        prop_assert_eq!(o.get("id"), req.get("id"));
        if let Some(e) = o.get("error") {
            prop_assert!(e["class"].is_string() && e["desc"].is_string());
        }
        // quit only flags the loop; undo it so later cases still run.
        c.quit = false;
    }
}
