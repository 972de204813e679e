//! Builds the introspection data of `query-qmp-schema` from the QAPI schema files in
//! `qapi/` (net.json: QEMU's net schema; control.json: the monitor's own commands and
//! pollswitch's extensions): every command, event and type as QEMU's SchemaInfo encodes
//! it, with real names. At run time `ctl::qmp::schema` keeps what the daemon really has
//! and masks type names with numbers, as QEMU does.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

/// A tiny reader of QAPI's expression syntax: single-quoted strings, dicts, lists,
/// `true`/`false`, `#` comments.
struct Reader<'a> {
    s: &'a [u8],
    i: usize,
    file: String,
}

impl Reader<'_> {
    fn fail(&self, what: &str) -> ! {
        panic!("{}: byte {}: {what}", self.file, self.i)
    }

    fn skip(&mut self) {
        while self.i < self.s.len() {
            match self.s[self.i] {
                b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
                b'#' => {
                    while self.i < self.s.len() && self.s[self.i] != b'\n' {
                        self.i += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Value {
        self.skip();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut m = Map::new();
                if self.eat(b'}') {
                    return Value::Object(m);
                }
                loop {
                    let Value::String(k) = self.value() else {
                        self.fail("a key must be a string")
                    };
                    if !self.eat(b':') {
                        self.fail("expected ':'");
                    }
                    let v = self.value();
                    m.insert(k, v);
                    if self.eat(b'}') {
                        return Value::Object(m);
                    }
                    if !self.eat(b',') {
                        self.fail("expected ',' or '}'");
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut v = Vec::new();
                if self.eat(b']') {
                    return Value::Array(v);
                }
                loop {
                    v.push(self.value());
                    if self.eat(b']') {
                        return Value::Array(v);
                    }
                    if !self.eat(b',') {
                        self.fail("expected ',' or ']'");
                    }
                }
            }
            Some(b'\'') => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != b'\'' {
                    self.i += 1;
                }
                let t = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Value::String(t)
            }
            _ if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Value::Bool(true)
            }
            _ if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Value::Bool(false)
            }
            _ => self.fail("expected a value"),
        }
    }

    fn all(&mut self) -> Vec<Map<String, Value>> {
        let mut out = Vec::new();
        loop {
            self.skip();
            if self.i >= self.s.len() {
                return out;
            }
            match self.value() {
                Value::Object(m) => out.push(m),
                _ => self.fail("a top-level expression must be a dict"),
            }
        }
    }
}

const BUILTINS: &[(&str, &str)] = &[
    ("str", "string"),
    ("int", "int"),
    ("int8", "int"),
    ("int16", "int"),
    ("int32", "int"),
    ("int64", "int"),
    ("uint8", "int"),
    ("uint16", "int"),
    ("uint32", "int"),
    ("uint64", "int"),
    ("size", "int"),
    ("number", "number"),
    ("bool", "boolean"),
    ("null", "null"),
    ("any", "value"),
];

/// A type expression: a name, or `['T']` for an array of T (named `[T]`).
fn type_name(v: &Value, arrays: &mut BTreeMap<String, String>) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() == 1 => {
            let elem = type_name(&a[0], arrays);
            let name = format!("[{elem}]");
            arrays.insert(name.clone(), elem);
            name
        }
        other => panic!("bad type expression {other}"),
    }
}

/// `data` of a struct or command: `{'name': T, '*opt': T}` as SchemaInfo members.
fn members(data: &Value, arrays: &mut BTreeMap<String, String>) -> Vec<Value> {
    let Value::Object(m) = data else {
        panic!("members must be a dict: {data}")
    };
    m.iter()
        .map(|(k, t)| {
            let (name, optional) = match k.strip_prefix('*') {
                Some(n) => (n, true),
                None => (k.as_str(), false),
            };
            // A member may be written {'type': T, 'if': ...}.
            let t = match t {
                Value::Object(o) => o.get("type").cloned().unwrap_or(Value::Null),
                other => other.clone(),
            };
            let mut e = json!({"name": name, "type": type_name(&t, arrays)});
            if optional {
                e["default"] = Value::Null;
            }
            e
        })
        .collect()
}

/// The argument type of command or event `n`: a named type, the empty object, or an
/// implicit object (`q_obj_N-arg`, as QEMU names it) made from inline members.
fn arg_type(
    n: &str,
    data: Option<&Value>,
    out: &mut Vec<Value>,
    arrays: &mut BTreeMap<String, String>,
) -> String {
    match data {
        None => "q_empty".to_string(),
        Some(Value::String(t)) => t.clone(),
        Some(d) => {
            let implicit = format!("q_obj_{n}-arg");
            out.push(json!({
                "name": implicit, "meta-type": "object",
                "members": members(d, arrays),
            }));
            implicit
        }
    }
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("qapi");
    let mut exprs = Vec::new();
    for f in ["net.json", "control.json", "char.json"] {
        let p = dir.join(f);
        println!("cargo:rerun-if-changed={}", p.display());
        let text = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        exprs.extend(
            Reader {
                s: &text,
                i: 0,
                file: f.into(),
            }
            .all(),
        );
    }
    // Our directives extend what net.json defines.
    let mut extend_enum: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut extend_union: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut extend_struct: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for e in &exprs {
        if let Some(Value::String(n)) = e.get("pollswitch-extend-struct") {
            let m = e["data"].as_object().cloned().unwrap_or_default();
            extend_struct.entry(n.clone()).or_default().extend(m);
        }
        if let Some(Value::String(n)) = e.get("pollswitch-extend-enum") {
            let vals = e["data"].as_array().cloned().unwrap_or_default();
            extend_enum.entry(n.clone()).or_default().extend(vals);
        }
        if let Some(Value::String(n)) = e.get("pollswitch-extend-union") {
            let m = e["data"].as_object().cloned().unwrap_or_default();
            extend_union.entry(n.clone()).or_default().extend(m);
        }
    }
    let mut arrays = BTreeMap::new();
    let mut out: Vec<Value> = BUILTINS
        .iter()
        .map(|(n, j)| json!({"name": n, "meta-type": "builtin", "json-type": j}))
        .collect();
    out.push(json!({"name": "q_empty", "meta-type": "object", "members": []}));
    let mut enums: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut structs: BTreeMap<String, Value> = BTreeMap::new();
    // First the enums and structs, which unions and bases refer to.
    for e in &exprs {
        if let Some(Value::String(n)) = e.get("enum") {
            let mut vals: Vec<Value> = e["data"].as_array().cloned().unwrap_or_default();
            vals.extend(extend_enum.get(n).cloned().unwrap_or_default());
            let names: Vec<String> = vals
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Object(o) => o["name"].as_str().unwrap_or_default().to_string(),
                    _ => String::new(),
                })
                .collect();
            out.push(json!({
                "name": n, "meta-type": "enum",
                "members": names.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
                "values": names,
            }));
            enums.insert(n.clone(), names);
        }
        if let Some(Value::String(n)) = e.get("struct") {
            let mut data = e.get("data").cloned().unwrap_or(json!({}));
            if let (Some(d), Some(more)) = (data.as_object_mut(), extend_struct.get(n)) {
                d.extend(more.clone());
            }
            structs.insert(n.clone(), data);
        }
    }
    let struct_members = |name: &str, arrays: &mut BTreeMap<String, String>| -> Vec<Value> {
        let data = structs
            .get(name)
            .unwrap_or_else(|| panic!("unknown struct {name}"));
        members(data, arrays)
    };
    for e in &exprs {
        if let Some(Value::String(n)) = e.get("struct") {
            let mut m = Vec::new();
            if let Some(Value::String(b)) = e.get("base") {
                m.extend(struct_members(b, &mut arrays));
            }
            m.extend(members(&structs[n.as_str()], &mut arrays));
            out.push(json!({"name": n, "meta-type": "object", "members": m}));
        }
        if let Some(Value::String(n)) = e.get("union") {
            let base = match &e["base"] {
                Value::String(b) => struct_members(b, &mut arrays),
                other => members(other, &mut arrays),
            };
            let tag = e["discriminator"].as_str().unwrap_or("type").to_string();
            let tag_type = base
                .iter()
                .find(|m| m["name"] == tag.as_str())
                .and_then(|m| m["type"].as_str())
                .unwrap_or_default()
                .to_string();
            let mut branches = e["data"].as_object().cloned().unwrap_or_default();
            branches.extend(extend_union.get(n).cloned().unwrap_or_default());
            // Every value of the tag's enum is a case; one without a branch is empty.
            let cases = enums.get(&tag_type).cloned().unwrap_or_default();
            let variants: Vec<Value> = cases
                .iter()
                .map(|c| {
                    let t = branches
                        .get(c)
                        .map(|t| type_name(t, &mut arrays))
                        .unwrap_or_else(|| "q_empty".into());
                    json!({"case": c, "type": t})
                })
                .collect();
            out.push(json!({
                "name": n, "meta-type": "object", "members": base,
                "tag": tag, "variants": variants,
            }));
        }
        if let Some(Value::String(n)) = e.get("alternate") {
            let m: Vec<Value> = e["data"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, t)| json!({"type": type_name(t, &mut arrays)}))
                .collect();
            out.push(json!({"name": n, "meta-type": "alternate", "members": m}));
        }
        if let Some(Value::String(n)) = e.get("command") {
            let arg = arg_type(n, e.get("data"), &mut out, &mut arrays);
            let ret = e
                .get("returns")
                .map(|t| type_name(t, &mut arrays))
                .unwrap_or_else(|| "q_empty".into());
            out.push(json!({"name": n, "meta-type": "command", "arg-type": arg, "ret-type": ret}));
        }
        if let Some(Value::String(n)) = e.get("event") {
            let arg = arg_type(n, e.get("data"), &mut out, &mut arrays);
            out.push(json!({"name": n, "meta-type": "event", "arg-type": arg}));
        }
    }
    for (name, elem) in arrays {
        out.push(json!({"name": name, "meta-type": "array", "element-type": elem}));
    }
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("qmp-schema.json");
    std::fs::write(&dest, Value::Array(out).to_string()).expect("write qmp-schema.json");
}
