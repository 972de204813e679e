//! The two input visitors behind one trait.
//!
//! A QAPI struct is read by asking an [`Input`] for each member in schema order
//! (`take_*`), then calling [`Input::finish`] to refuse members nobody asked for.
//! [`JsonInput`] reads a QMP argument object strictly, as QEMU's QObject input visitor
//! does: a `bool` must be JSON `true`/`false`, an `int` a JSON integer. [`KeyvalInput`]
//! reads `key=value` pairs, as QEMU's opts visitor does for `-netdev`: every value is a
//! string parsed according to the member's type, and a list is a repeated key.
//!
//! Both report errors with QEMU's texts; where the two visitors word an error
//! differently in QEMU (an unknown key, a malformed number) they differ here too.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::error::QapiError;
use super::scalar;

/// A source of QAPI members. Each member is taken at most once, in schema order.
pub trait Input {
    /// Whether member `name` is present (QAPI's `visit_optional`).
    fn has(&self, name: &str) -> bool;
    /// A `'str'` member.
    fn take_str(&mut self, name: &str) -> Result<String, QapiError>;
    /// A `'bool'` member.
    fn take_bool(&mut self, name: &str) -> Result<bool, QapiError>;
    /// An `'int'` member.
    fn take_i64(&mut self, name: &str) -> Result<i64, QapiError>;
    /// A `'uint64'` member; also the base of the narrower unsigned types.
    fn take_u64(&mut self, name: &str) -> Result<u64, QapiError>;
    /// A `'size'` member (bytes).
    fn take_size(&mut self, name: &str) -> Result<u64, QapiError>;
    /// A `['str']` member: a list of plain strings.
    fn take_str_list(&mut self, name: &str) -> Result<Vec<String>, QapiError>;
    /// A `['String']` member: a list of `{"str": ...}` boxes, unboxed.
    fn take_string_list(&mut self, name: &str) -> Result<Vec<String>, QapiError>;
    /// Takes a `['int']` list.
    fn take_int_list(&mut self, name: &str) -> Result<Vec<i64>, QapiError>;
    /// A member that is a nested object (a struct or union type): its members, as an
    /// input of their own. From JSON it is an object value; from `key=value` pairs it
    /// is every key `name.MEMBER`, as QEMU's keyval parser nests dotted keys.
    fn take_object(&mut self, name: &str) -> Result<Nested, QapiError>;
    /// Ends the visit of the top-level struct: any member not taken is an error.
    fn finish(&mut self) -> Result<(), QapiError>;

    /// An `'int32'` member.
    fn take_i32(&mut self, name: &str) -> Result<i32, QapiError> {
        let v = self.take_i64(name)?;
        i32::try_from(v).map_err(|_| QapiError::invalid_value(name, "int32_t"))
    }

    /// A `'uint16'` member.
    fn take_u16(&mut self, name: &str) -> Result<u16, QapiError> {
        let v = self.take_u64(name)?;
        u16::try_from(v).map_err(|_| QapiError::invalid_value(name, "uint16_t"))
    }

    /// A `'uint32'` member.
    fn take_u32(&mut self, name: &str) -> Result<u32, QapiError> {
        let v = self.take_u64(name)?;
        u32::try_from(v).map_err(|_| QapiError::invalid_value(name, "uint32_t"))
    }
}

/// A QAPI struct type: read member by member from any [`Input`], written back as
/// the JSON members that are set.
pub trait QapiStruct: Sized {
    /// Reads this struct's members (not calling [`Input::finish`]: a union reads its
    /// base and branch members from the same object before finishing).
    fn read_members<I: Input + ?Sized>(input: &mut I) -> Result<Self, QapiError>;
    /// Appends the members that are set, in schema order.
    fn write_members(&self, out: &mut Map<String, Value>);

    /// Reads a whole QMP argument object strictly, refusing leftover members.
    fn from_qmp(args: &Map<String, Value>) -> Result<Self, QapiError> {
        let mut input = JsonInput::new(args);
        let value = Self::read_members(&mut input)?;
        input.finish()?;
        Ok(value)
    }

    /// The members that are set, as a QMP object.
    fn to_qmp(&self) -> Map<String, Value> {
        let mut out = Map::new();
        self.write_members(&mut out);
        out
    }
}

/// The members of a nested object, taken out of its parent input.
#[derive(Debug, Clone)]
pub enum Nested {
    /// A JSON object.
    Json(Map<String, Value>),
    /// `key=value` pairs, the `name.` prefix removed.
    Keyval(KeyvalInput),
}

/// Reads nested struct member `name` of type `T`: its members, then a check for
/// leftovers, errors naming the member in full (`addr.port`), as QEMU's visitors do.
pub fn take_struct<T: QapiStruct, I: Input + ?Sized>(
    input: &mut I,
    name: &str,
) -> Result<T, QapiError> {
    fn visit<T: QapiStruct, J: Input>(mut j: J) -> Result<T, QapiError> {
        let v = T::read_members(&mut j)?;
        j.finish()?;
        Ok(v)
    }
    match input.take_object(name)? {
        Nested::Json(map) => visit(JsonInput::new(&map)),
        Nested::Keyval(k) => visit(k).map_err(|e| match e {
            // The keyval visitor QEMU uses for nested keys says "unexpected".
            QapiError::InvalidParameter(n) => QapiError::Unexpected(n),
            other => other,
        }),
    }
    .map_err(|e| prefix_error(e, name))
}

/// A QMP argument object, read as strictly as QEMU's QObject input visitor.
#[derive(Debug)]
pub struct JsonInput<'a> {
    map: &'a Map<String, Value>,
    taken: HashSet<&'a str>,
}

impl<'a> JsonInput<'a> {
    /// Starts visiting `map`.
    pub fn new(map: &'a Map<String, Value>) -> Self {
        JsonInput {
            map,
            taken: HashSet::new(),
        }
    }

    /// Looks `name` up and marks it visited.
    fn get(&mut self, name: &str) -> Result<&'a Value, QapiError> {
        match self.map.get_key_value(name) {
            Some((key, value)) => {
                self.taken.insert(key.as_str());
                Ok(value)
            }
            None => Err(QapiError::Missing(name.to_string())),
        }
    }

    fn array(&mut self, name: &str) -> Result<&'a Vec<Value>, QapiError> {
        self.get(name)?
            .as_array()
            .ok_or_else(|| QapiError::invalid_type(name, "array"))
    }
}

/// The `uint64` rule of QEMU's QObject input visitor: any JSON integer that fits in
/// `u64`, and, "for backward compatibility", a negative one taken modulo 2^64.
fn json_u64(name: &str, value: &Value) -> Result<u64, QapiError> {
    let number = value.as_number();
    number
        .and_then(|n| n.as_u64().or_else(|| n.as_i64().map(|v| v as u64)))
        .ok_or_else(|| QapiError::invalid_value(name, "uint64"))
}

impl Input for JsonInput<'_> {
    fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    fn take_str(&mut self, name: &str) -> Result<String, QapiError> {
        match self.get(name)? {
            Value::String(s) => Ok(s.clone()),
            _ => Err(QapiError::invalid_type(name, "string")),
        }
    }

    fn take_bool(&mut self, name: &str) -> Result<bool, QapiError> {
        self.get(name)?
            .as_bool()
            .ok_or_else(|| QapiError::invalid_type(name, "boolean"))
    }

    fn take_i64(&mut self, name: &str) -> Result<i64, QapiError> {
        // A float, even 1.0, is not an integer to QEMU.
        self.get(name)?
            .as_i64()
            .ok_or_else(|| QapiError::invalid_type(name, "integer"))
    }

    fn take_u64(&mut self, name: &str) -> Result<u64, QapiError> {
        let value = self.get(name)?;
        json_u64(name, value)
    }

    fn take_size(&mut self, name: &str) -> Result<u64, QapiError> {
        // QEMU's QObject visitor has no size rule of its own: a size is a uint64.
        self.take_u64(name)
    }

    fn take_str_list(&mut self, name: &str) -> Result<Vec<String>, QapiError> {
        self.array(name)?
            .iter()
            .enumerate()
            .map(|(i, elem)| match elem {
                Value::String(s) => Ok(s.clone()),
                _ => Err(QapiError::invalid_type(format!("{name}[{i}]"), "string")),
            })
            .collect()
    }

    fn take_int_list(&mut self, name: &str) -> Result<Vec<i64>, QapiError> {
        self.array(name)?
            .iter()
            .enumerate()
            .map(|(i, elem)| {
                elem.as_i64()
                    .ok_or_else(|| QapiError::invalid_type(format!("{name}[{i}]"), "integer"))
            })
            .collect()
    }

    fn take_string_list(&mut self, name: &str) -> Result<Vec<String>, QapiError> {
        let mut out = Vec::new();
        for (i, elem) in self.array(name)?.iter().enumerate() {
            let full = format!("{name}[{i}]");
            let boxed = elem
                .as_object()
                .ok_or_else(|| QapiError::invalid_type(full.clone(), "object"))?;
            let mut inner = JsonInput::new(boxed);
            let s = inner.take_str("str").map_err(|e| prefix_error(e, &full))?;
            inner.finish().map_err(|e| prefix_error(e, &full))?;
            out.push(s);
        }
        Ok(out)
    }

    fn take_object(&mut self, name: &str) -> Result<Nested, QapiError> {
        match self.get(name)? {
            Value::Object(m) => Ok(Nested::Json(m.clone())),
            _ => Err(QapiError::invalid_type(name, "object")),
        }
    }

    fn finish(&mut self) -> Result<(), QapiError> {
        // QEMU reports whichever leftover its hash table yields first; we report the
        // first in the order the client sent them, which is at least stable.
        match self.map.keys().find(|k| !self.taken.contains(k.as_str())) {
            Some(key) => Err(QapiError::Unexpected(key.clone())),
            None => Ok(()),
        }
    }
}

/// Gives an error about a member of a nested object its full name
/// (`str` inside `hostfwd[0]` is `hostfwd[0].str`).
fn prefix_error(e: QapiError, prefix: &str) -> QapiError {
    let full = |name: String| format!("{prefix}.{name}");
    match e {
        QapiError::Missing(n) => QapiError::Missing(full(n)),
        QapiError::Unexpected(n) => QapiError::Unexpected(full(n)),
        QapiError::InvalidParameter(n) => QapiError::InvalidParameter(full(n)),
        QapiError::InvalidValue { name, expects } => QapiError::InvalidValue {
            name: full(name),
            expects,
        },
        QapiError::InvalidType { name, expected } => QapiError::InvalidType {
            name: full(name),
            expected,
        },
        other => other,
    }
}

/// `key=value` pairs, read the way QEMU's opts visitor reads a `-netdev` option.
///
/// For a scalar member the last occurrence of its key wins; a list member takes
/// every occurrence in order.
#[derive(Debug, Clone)]
pub struct KeyvalInput {
    /// Keys not yet visited, in order of first appearance, each with all its values.
    unvisited: Vec<(String, Vec<String>)>,
}

impl KeyvalInput {
    /// Starts visiting `pairs`.
    pub fn new(pairs: &[(String, String)]) -> Self {
        let mut unvisited: Vec<(String, Vec<String>)> = Vec::new();
        for (key, value) in pairs {
            match unvisited.iter_mut().find(|(k, _)| k == key) {
                Some((_, values)) => values.push(value.clone()),
                None => unvisited.push((key.clone(), vec![value.clone()])),
            }
        }
        KeyvalInput { unvisited }
    }

    /// Removes `name` and returns all its values.
    fn take_all(&mut self, name: &str) -> Result<Vec<String>, QapiError> {
        match self.unvisited.iter().position(|(k, _)| k == name) {
            Some(i) => Ok(self.unvisited.remove(i).1),
            None => Err(QapiError::Missing(name.to_string())),
        }
    }

    /// Removes `name` and returns its last value.
    fn take_last(&mut self, name: &str) -> Result<String, QapiError> {
        let mut values = self.take_all(name)?;
        Ok(values.pop().unwrap_or_default())
    }
}

/// `addr.port` under `addr` is `port`.
fn nested_key<'k>(key: &'k str, name: &str) -> Option<&'k str> {
    key.strip_prefix(name)?
        .strip_prefix('.')
        .filter(|rest| !rest.is_empty())
}

impl Input for KeyvalInput {
    fn has(&self, name: &str) -> bool {
        self.unvisited
            .iter()
            .any(|(k, _)| k == name || nested_key(k, name).is_some())
    }

    fn take_object(&mut self, name: &str) -> Result<Nested, QapiError> {
        if self.unvisited.iter().any(|(k, _)| k == name) {
            // `addr=x`: a scalar where an object belongs.
            return Err(QapiError::invalid_type(name, "object"));
        }
        let mut inner = Vec::new();
        self.unvisited
            .retain(|(k, values)| match nested_key(k, name) {
                Some(rest) => {
                    inner.push((rest.to_string(), values.clone()));
                    false
                }
                None => true,
            });
        if inner.is_empty() {
            return Err(QapiError::Missing(name.to_string()));
        }
        Ok(Nested::Keyval(KeyvalInput { unvisited: inner }))
    }

    fn take_str(&mut self, name: &str) -> Result<String, QapiError> {
        self.take_last(name)
    }

    fn take_bool(&mut self, name: &str) -> Result<bool, QapiError> {
        let s = self.take_last(name)?;
        scalar::parse_bool(&s).ok_or_else(|| QapiError::invalid_value(name, "'on' or 'off'"))
    }

    fn take_i64(&mut self, name: &str) -> Result<i64, QapiError> {
        let s = self.take_last(name)?;
        scalar::parse_i64(&s).ok_or_else(|| QapiError::invalid_value(name, "an int64 value"))
    }

    fn take_u64(&mut self, name: &str) -> Result<u64, QapiError> {
        let s = self.take_last(name)?;
        scalar::parse_u64(&s).ok_or_else(|| QapiError::invalid_value(name, "a uint64 value"))
    }

    fn take_size(&mut self, name: &str) -> Result<u64, QapiError> {
        let s = self.take_last(name)?;
        scalar::parse_size(&s).ok_or_else(|| QapiError::invalid_value(name, "a size value"))
    }

    fn take_str_list(&mut self, name: &str) -> Result<Vec<String>, QapiError> {
        self.take_all(name)
    }

    fn take_string_list(&mut self, name: &str) -> Result<Vec<String>, QapiError> {
        self.take_all(name)
    }

    fn take_int_list(&mut self, name: &str) -> Result<Vec<i64>, QapiError> {
        self.take_all(name)?
            .iter()
            .map(|s| {
                scalar::parse_i64(s).ok_or_else(|| QapiError::invalid_value(name, "an int64 value"))
            })
            .collect()
    }

    fn finish(&mut self) -> Result<(), QapiError> {
        match self.unvisited.first() {
            Some((key, _)) => Err(QapiError::InvalidParameter(key.clone())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn json_types_are_strict() {
        let m = obj(json!({"s": 1, "b": "on", "i": 1.0, "u": "1", "big": 18446744073709551615u64}));
        let mut i = JsonInput::new(&m);
        assert_eq!(
            i.take_str("s").unwrap_err().to_string(),
            "Invalid parameter type for 's', expected: string"
        );
        assert_eq!(
            i.take_bool("b").unwrap_err().to_string(),
            "Invalid parameter type for 'b', expected: boolean"
        );
        assert_eq!(
            i.take_i64("i").unwrap_err().to_string(),
            "Invalid parameter type for 'i', expected: integer"
        );
        assert_eq!(
            i.take_u64("u").unwrap_err().to_string(),
            "Parameter 'u' expects uint64"
        );
        assert_eq!(
            i.take_i64("big").unwrap_err().to_string(),
            "Invalid parameter type for 'big', expected: integer"
        );
        assert_eq!(
            i.take_str("nope").unwrap_err().to_string(),
            "Parameter 'nope' is missing"
        );
        assert!(i.finish().is_ok());
    }

    #[test]
    fn json_uint_ranges() {
        let m = obj(json!({"a": -1, "b": 65536, "c": 4294967296u64, "d": 2147483648u64, "e": -1}));
        let mut i = JsonInput::new(&m);
        // Negative values wrap (QEMU's backward compatibility), then fail the range.
        assert_eq!(
            i.take_u32("a").unwrap_err().to_string(),
            "Parameter 'a' expects uint32_t"
        );
        assert_eq!(
            i.take_u16("b").unwrap_err().to_string(),
            "Parameter 'b' expects uint16_t"
        );
        assert_eq!(
            i.take_u32("c").unwrap_err().to_string(),
            "Parameter 'c' expects uint32_t"
        );
        assert_eq!(
            i.take_i32("d").unwrap_err().to_string(),
            "Parameter 'd' expects int32_t"
        );
        assert_eq!(i.take_u64("e").unwrap(), u64::MAX);
    }

    #[test]
    fn json_lists() {
        let m = obj(json!({
            "ok": [{"str": "a"}, {"str": "b"}],
            "notarray": {"str": "a"},
            "notobj": [{"str": "a"}, "b"],
            "nostr": [{"st": "a"}],
            "badstr": [{"str": 1}],
            "extra": [{"str": "a", "x": 1}],
            "plain": ["a", 2],
        }));
        let mut i = JsonInput::new(&m);
        assert_eq!(i.take_string_list("ok").unwrap(), ["a", "b"]);
        let err = |i: &mut JsonInput, n: &str| i.take_string_list(n).unwrap_err().to_string();
        assert_eq!(
            err(&mut i, "notarray"),
            "Invalid parameter type for 'notarray', expected: array"
        );
        assert_eq!(
            err(&mut i, "notobj"),
            "Invalid parameter type for 'notobj[1]', expected: object"
        );
        assert_eq!(err(&mut i, "nostr"), "Parameter 'nostr[0].str' is missing");
        assert_eq!(
            err(&mut i, "badstr"),
            "Invalid parameter type for 'badstr[0].str', expected: string"
        );
        assert_eq!(err(&mut i, "extra"), "Parameter 'extra[0].x' is unexpected");
        assert_eq!(
            i.take_str_list("plain").unwrap_err().to_string(),
            "Invalid parameter type for 'plain[1]', expected: string"
        );
    }

    #[test]
    fn json_leftovers_in_order() {
        let m = obj(json!({"a": 1, "zz": 2, "b": 3}));
        let mut i = JsonInput::new(&m);
        i.take_i64("a").unwrap();
        assert_eq!(
            i.finish().unwrap_err().to_string(),
            "Parameter 'zz' is unexpected"
        );
    }

    fn kv(pairs: &[(&str, &str)]) -> KeyvalInput {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KeyvalInput::new(&owned)
    }

    #[test]
    fn keyval_scalars() {
        let mut i = kv(&[
            ("q", "1"),
            ("b", "yes"),
            ("q", "0x10"),
            ("s", "64k"),
            ("n", "-3"),
        ]);
        assert!(i.has("q"));
        assert_eq!(i.take_u32("q").unwrap(), 16, "last occurrence wins");
        assert!(!i.has("q"));
        assert!(i.take_bool("b").unwrap());
        assert_eq!(i.take_size("s").unwrap(), 65536);
        assert_eq!(i.take_i64("n").unwrap(), -3);
        assert!(i.finish().is_ok());
    }

    fn e<T: std::fmt::Debug>(r: Result<T, QapiError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn keyval_errors() {
        let mut i = kv(&[
            ("b", "maybe"),
            ("q", "-1"),
            ("r", "4294967296"),
            ("s", "1x"),
            ("n", "one"),
            ("h", "2147483648"),
            ("p", "65536"),
            ("left", "x"),
            ("over", "y"),
        ]);
        assert_eq!(e(i.take_bool("b")), "Parameter 'b' expects 'on' or 'off'");
        assert_eq!(e(i.take_u32("q")), "Parameter 'q' expects a uint64 value");
        assert_eq!(e(i.take_u32("r")), "Parameter 'r' expects uint32_t");
        assert_eq!(e(i.take_size("s")), "Parameter 's' expects a size value");
        assert_eq!(e(i.take_i64("n")), "Parameter 'n' expects an int64 value");
        assert_eq!(e(i.take_i32("h")), "Parameter 'h' expects int32_t");
        assert_eq!(e(i.take_u16("p")), "Parameter 'p' expects uint16_t");
        assert_eq!(e(i.take_str("gone")), "Parameter 'gone' is missing");
        assert_eq!(e(i.finish()), "Invalid parameter 'left'");
    }

    #[test]
    fn keyval_lists_repeat_the_key() {
        let mut i = kv(&[("hostfwd", "a"), ("x", "1"), ("hostfwd", "b")]);
        assert_eq!(i.take_string_list("hostfwd").unwrap(), ["a", "b"]);
        assert_eq!(i.take_str("x").unwrap(), "1");
        assert!(i.finish().is_ok());
    }

    /// `{ 'a': 'int', '*b': 'str' }`, for the nested-object tests.
    #[derive(Debug, PartialEq)]
    struct Inner {
        a: i64,
        b: Option<String>,
    }

    impl QapiStruct for Inner {
        fn read_members<I: Input + ?Sized>(input: &mut I) -> Result<Self, QapiError> {
            let a = input.take_i64("a")?;
            let b = if input.has("b") {
                Some(input.take_str("b")?)
            } else {
                None
            };
            Ok(Inner { a, b })
        }
        fn write_members(&self, out: &mut Map<String, Value>) {
            out.insert("a".into(), self.a.into());
        }
    }

    #[test]
    fn nested_objects_from_json() {
        let m = obj(
            json!({"o": {"a": 1, "b": "x"}, "s": 1, "m": {}, "u": {"a": 1, "z": 0},
                           "t": {"a": "1"}}),
        );
        let mut i = JsonInput::new(&m);
        assert!(i.has("o"));
        assert_eq!(
            take_struct::<Inner, _>(&mut i, "o").unwrap(),
            Inner {
                a: 1,
                b: Some("x".into())
            }
        );
        let err = |i: &mut JsonInput, n: &str| e(take_struct::<Inner, _>(i, n));
        assert_eq!(
            err(&mut i, "s"),
            "Invalid parameter type for 's', expected: object"
        );
        assert_eq!(err(&mut i, "m"), "Parameter 'm.a' is missing");
        assert_eq!(err(&mut i, "u"), "Parameter 'u.z' is unexpected");
        assert_eq!(
            err(&mut i, "t"),
            "Invalid parameter type for 't.a', expected: integer"
        );
        assert_eq!(err(&mut i, "gone"), "Parameter 'gone' is missing");
        assert!(i.finish().is_ok());
    }

    #[test]
    fn nested_objects_from_dotted_keys() {
        let mut i = kv(&[("o.a", "1"), ("x", "2"), ("o.b", "y"), ("oo.a", "3")]);
        assert!(i.has("o"));
        assert!(!i.has("o.c"));
        assert_eq!(
            take_struct::<Inner, _>(&mut i, "o").unwrap(),
            Inner {
                a: 1,
                b: Some("y".into())
            }
        );
        assert!(!i.has("o"), "all of o.* was taken");
        assert_eq!(
            take_struct::<Inner, _>(&mut i, "oo").unwrap(),
            Inner { a: 3, b: None }
        );
        assert_eq!(i.take_str("x").unwrap(), "2");
        assert!(i.finish().is_ok());

        let mut i = kv(&[
            ("o", "1"),
            ("p.a", "z"),
            ("q.b", "1"),
            ("r.a", "1"),
            ("r.c", "1"),
        ]);
        let err = |i: &mut KeyvalInput, n: &str| e(take_struct::<Inner, _>(i, n));
        assert_eq!(
            err(&mut i, "o"),
            "Invalid parameter type for 'o', expected: object"
        );
        assert_eq!(err(&mut i, "p"), "Parameter 'p.a' expects an int64 value");
        assert_eq!(err(&mut i, "q"), "Parameter 'q.a' is missing");
        assert_eq!(err(&mut i, "r"), "Parameter 'r.c' is unexpected");
        assert_eq!(err(&mut i, "s"), "Parameter 's' is missing");
    }
}
