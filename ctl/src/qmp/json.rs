//! QMP input read the way QEMU reads it (its json-lexer, json-streamer and json-parser):
//! the byte stream becomes tokens; tokens gather until the braces and brackets balance,
//! go negative, or a token is an error; each such group is parsed and answered once.
//!
//! ```text
//!  bytes ─► lexer ─► tokens ─► streamer: depth 0 again? ─► parser ─► Value / error text
//!            │ stray byte: error token, then skip to a structural or control byte
//!            └ strings in "..." or '...', numbers, keywords [a-z]+, { } [ ] , :
//! ```
//!
//! So `{"execute": foo}` split over two lines is one error ("invalid keyword 'foo'"),
//! not two; `}` alone is one error ("expecting value"); single-quoted strings are
//! accepted. The texts are QEMU 10's, recorded from a real QEMU in `tests/tests/qmp.rs`.
//! Differences, on purpose: a group may hold at most [`MAX_GROUP`] bytes (QEMU allows
//! 64 MiB per token), and numbers beyond 64-bit integers become floats that serialise
//! as JSON (QEMU prints `inf` for 1e400, which is not JSON).

use serde_json::{Map, Number, Value};

/// Most bytes of tokens one request may gather before it is refused.
pub const MAX_GROUP: usize = 1 << 20;
/// Deepest nesting of braces and brackets.
pub const MAX_NESTING: i64 = 1024;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Comma,
    Colon,
    /// A string token, quotes and escapes as written (decoded by the parser).
    Str(Vec<u8>),
    Num(String),
    Keyword(String),
}

/// What the streamer hands on: a value, or the error text of one group.
#[derive(Debug, PartialEq)]
pub enum Item {
    /// A complete JSON value.
    Value(Value),
    /// The `desc` of the one error reply this group gets.
    Error(String),
}

/// The whole pipeline, fed bytes as they come.
#[derive(Debug, Default)]
pub struct Stream {
    buf: Vec<u8>,
    recovering: bool,
    group: Vec<Tok>,
    group_bytes: usize,
    braces: i64,
    brackets: i64,
}

fn parse_error(what: &str) -> Item {
    Item::Error(format!("JSON parse error, {what}"))
}

/// Bytes that end error recovery: structural characters, control characters other
/// than tab, and bytes that never occur in UTF-8.
fn resyncs(b: u8) -> bool {
    matches!(b, b'{' | b'}' | b'[' | b']' | b',' | b':' | 0xfe | 0xff) || (b < 0x20 && b != b'\t')
}

/// Length of a valid UTF-8 sequence starting at `s[0]` (2..=4), `Some(0)` when more
/// bytes are needed, `None` when invalid. QEMU's lexer also takes C0 80, the two-byte
/// form of U+0000.
fn utf8_len(s: &[u8]) -> Option<usize> {
    let n = match s[0] {
        0xc0 => {
            return match s.get(1) {
                None => Some(0),
                Some(0x80) => Some(2),
                Some(_) => None,
            }
        }
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    if s.len() < n {
        // Check what is there, so an invalid byte is found as soon as it arrives.
        return if s[1..].iter().all(|b| b & 0xc0 == 0x80) {
            Some(0)
        } else {
            None
        };
    }
    std::str::from_utf8(&s[..n]).ok().map(|_| n)
}

enum Lexed {
    /// A token of `n` bytes.
    Tok(Tok, usize),
    /// An error token of `n` bytes (the offending byte included).
    Error(usize),
    /// Whitespace of `n` bytes.
    Skip(usize),
    /// The token goes on past the end of the input.
    More,
}

/// Lexes one token at the start of `s` (not empty). `eof` is never true for a socket:
/// a number or keyword at the very end waits for the byte after it.
fn lex(s: &[u8]) -> Lexed {
    let c = s[0];
    match c {
        b' ' | b'\t' | b'\n' | b'\r' => Lexed::Skip(1),
        b'{' => Lexed::Tok(Tok::LCurly, 1),
        b'}' => Lexed::Tok(Tok::RCurly, 1),
        b'[' => Lexed::Tok(Tok::LSquare, 1),
        b']' => Lexed::Tok(Tok::RSquare, 1),
        b',' => Lexed::Tok(Tok::Comma, 1),
        b':' => Lexed::Tok(Tok::Colon, 1),
        b'"' | b'\'' => lex_string(s, c),
        b'-' | b'0'..=b'9' => lex_number(s),
        b'a'..=b'z' => {
            let n = s.iter().take_while(|b| b.is_ascii_lowercase()).count();
            if n == s.len() {
                return Lexed::More;
            }
            Lexed::Tok(
                Tok::Keyword(String::from_utf8_lossy(&s[..n]).into_owned()),
                n,
            )
        }
        0x80..=0xff => match utf8_len(s) {
            Some(0) => Lexed::More,
            Some(n) => Lexed::Error(n),
            None => Lexed::Error(1),
        },
        _ => Lexed::Error(1),
    }
}

fn lex_string(s: &[u8], quote: u8) -> Lexed {
    let mut i = 1;
    while i < s.len() {
        let b = s[i];
        if b == quote {
            return Lexed::Tok(Tok::Str(s[..=i].to_vec()), i + 1);
        }
        match b {
            b'\\' => {
                // Any escape character passes the lexer; the parser judges it.
                match s.get(i + 1) {
                    None => return Lexed::More,
                    Some(&e) if e < 0x20 => return Lexed::Error(i + 2),
                    Some(_) => i += 2,
                }
            }
            0x00..=0x1f => return Lexed::Error(i + 1),
            0x80..=0xff => match utf8_len(&s[i..]) {
                Some(0) => return Lexed::More,
                Some(n) => i += n,
                None => return Lexed::Error(i + 1),
            },
            _ => i += 1,
        }
    }
    Lexed::More
}

fn lex_number(s: &[u8]) -> Lexed {
    let at = |i: usize| s.get(i).copied();
    let digit = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_digit());
    let mut i = usize::from(s[0] == b'-');
    match at(i) {
        None => return Lexed::More,
        Some(b'0') => {
            i += 1;
            if digit(at(i)) {
                return Lexed::Error(i + 1);
            }
        }
        Some(b'1'..=b'9') => {
            while digit(at(i)) {
                i += 1;
            }
        }
        Some(_) => return Lexed::Error(i + 1),
    }
    if at(i) == Some(b'.') {
        i += 1;
        match at(i) {
            None => return Lexed::More,
            Some(b) if b.is_ascii_digit() => {}
            Some(_) => return Lexed::Error(i + 1),
        }
        while digit(at(i)) {
            i += 1;
        }
    }
    if matches!(at(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(at(i), Some(b'+' | b'-')) {
            i += 1;
        }
        match at(i) {
            None => return Lexed::More,
            Some(b) if b.is_ascii_digit() => {}
            Some(_) => return Lexed::Error(i + 1),
        }
        while digit(at(i)) {
            i += 1;
        }
    }
    if i == s.len() {
        return Lexed::More;
    }
    Lexed::Tok(Tok::Num(String::from_utf8_lossy(&s[..i]).into_owned()), i)
}

impl Stream {
    /// Adds bytes read from the client.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that are not yet a token (part of the memory a client costs).
    pub fn pending(&self) -> usize {
        self.buf.len() + self.group_bytes
    }

    fn reset(&mut self) {
        self.group.clear();
        self.group_bytes = 0;
        self.braces = 0;
        self.brackets = 0;
    }

    /// Everything the bytes so far complete, in order.
    pub fn drain(&mut self) -> Vec<Item> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < self.buf.len() {
            if self.recovering {
                match self.buf[pos..].iter().position(|&b| resyncs(b)) {
                    Some(k) => {
                        pos += k;
                        self.recovering = false;
                    }
                    None => {
                        pos = self.buf.len();
                        break;
                    }
                }
            }
            match lex(&self.buf[pos..]) {
                Lexed::Skip(n) => pos += n,
                Lexed::More => {
                    if self.pending() - pos > MAX_GROUP {
                        // One token too long to hold: refused, and skipped.
                        out.push(Item::Error("JSON token size limit exceeded".into()));
                        self.reset();
                        self.recovering = true;
                        pos = self.buf.len();
                    }
                    break;
                }
                Lexed::Error(n) => {
                    let text = String::from_utf8_lossy(&self.buf[pos..pos + n]).into_owned();
                    out.push(parse_error(&format!("stray '{text}'")));
                    self.reset();
                    self.recovering = true;
                    pos += n;
                }
                Lexed::Tok(t, n) => {
                    pos += n;
                    if let Some(item) = self.token(t, n) {
                        out.push(item);
                    }
                }
            }
        }
        self.buf.drain(..pos);
        out
    }

    /// The streamer: gathers a token, and emits the group when it is complete.
    fn token(&mut self, t: Tok, len: usize) -> Option<Item> {
        match t {
            Tok::LCurly => self.braces += 1,
            Tok::RCurly => self.braces -= 1,
            Tok::LSquare => self.brackets += 1,
            Tok::RSquare => self.brackets -= 1,
            _ => {}
        }
        self.group.push(t);
        self.group_bytes += len;
        if self.braces < 0 || self.brackets < 0 || (self.braces == 0 && self.brackets == 0) {
            let group = std::mem::take(&mut self.group);
            self.reset();
            return Some(parse(&group));
        }
        if self.braces + self.brackets > MAX_NESTING {
            self.reset();
            return Some(Item::Error("JSON nesting depth limit exceeded".into()));
        }
        if self.group_bytes > MAX_GROUP {
            self.reset();
            return Some(Item::Error("JSON token size limit exceeded".into()));
        }
        None
    }
}

/// Parses one group of tokens.
fn parse(tokens: &[Tok]) -> Item {
    let mut p = Parser { t: tokens, i: 0 };
    match p.value() {
        Ok(v) => Item::Value(v),
        Err(e) => parse_error(&e),
    }
}

struct Parser<'a> {
    t: &'a [Tok],
    i: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<&Tok> {
        let t = self.t.get(self.i);
        self.i += 1;
        t
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.next().cloned() {
            Some(Tok::LCurly) => self.object(),
            Some(Tok::LSquare) => self.array(),
            Some(Tok::Str(s)) => string(&s).map(Value::String),
            Some(Tok::Num(n)) => Ok(number(&n)),
            Some(Tok::Keyword(k)) => match k.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                "null" => Ok(Value::Null),
                _ => Err(format!("invalid keyword '{k}'")),
            },
            _ => Err("expecting value".into()),
        }
    }

    fn object(&mut self) -> Result<Value, String> {
        let mut m = Map::new();
        if self.t.get(self.i) == Some(&Tok::RCurly) {
            self.i += 1;
            return Ok(Value::Object(m));
        }
        loop {
            let key = match self.value()? {
                Value::String(k) => k,
                _ => return Err("key is not a string in object".into()),
            };
            if self.next() != Some(&Tok::Colon) {
                return Err("missing : in object pair".into());
            }
            let v = self.value()?;
            if m.insert(key, v).is_some() {
                return Err("duplicate key".into());
            }
            match self.next() {
                Some(Tok::Comma) => {}
                Some(Tok::RCurly) => return Ok(Value::Object(m)),
                _ => return Err("expected separator in dict".into()),
            }
        }
    }

    fn array(&mut self) -> Result<Value, String> {
        let mut v = Vec::new();
        if self.t.get(self.i) == Some(&Tok::RSquare) {
            self.i += 1;
            return Ok(Value::Array(v));
        }
        loop {
            v.push(self.value()?);
            match self.next() {
                Some(Tok::Comma) => {}
                Some(Tok::RSquare) => return Ok(Value::Array(v)),
                _ => return Err("expected separator in list".into()),
            }
        }
    }
}

/// A number as QEMU keeps it: a 64-bit integer when it is one, else a double.
fn number(n: &str) -> Value {
    if let Ok(i) = n.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(u) = n.parse::<u64>() {
        return Value::from(u);
    }
    let f: f64 = n.parse().unwrap_or(f64::NAN);
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

fn hex4(s: &[u8]) -> Option<u32> {
    let h = std::str::from_utf8(s.get(..4)?).ok()?;
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(h, 16).ok()
}

/// Decodes a string token (quotes included); errors carry QEMU's texts.
fn string(tok: &[u8]) -> Result<String, String> {
    let body = &tok[1..tok.len() - 1];
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut i = 0;
    // The escape as written, up to six bytes (with the closing quote when it is cut).
    let bad_unicode = |at: usize| {
        let from = 1 + at;
        let to = (from + 6).min(tok.len());
        format!(
            "{} is not a valid Unicode character",
            String::from_utf8_lossy(&tok[from..to])
        )
    };
    while i < body.len() {
        let b = body[i];
        if b != b'\\' {
            if b == 0xc0 && body.get(i + 1) == Some(&0x80) {
                out.push(0);
                i += 2;
            } else {
                out.push(b);
                i += 1;
            }
            continue;
        }
        let Some(&e) = body.get(i + 1) else {
            return Err("invalid escape sequence in string".into());
        };
        let simple = match e {
            b'"' => Some(b'"'),
            b'\'' => Some(b'\''),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        if e != b'u' {
            return Err("invalid escape sequence in string".into());
        }
        let Some(hi) = hex4(&body[i + 2..]) else {
            return Err(bad_unicode(i));
        };
        let (cp, used) = if (0xd800..0xdc00).contains(&hi) {
            // A high surrogate must be followed by a low one.
            let lo = (body.get(i + 6) == Some(&b'\\') && body.get(i + 7) == Some(&b'u'))
                .then(|| hex4(&body[i + 8..]))
                .flatten()
                .filter(|lo| (0xdc00..0xe000).contains(lo));
            match lo {
                Some(lo) => (0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00), 12),
                None => return Err(bad_unicode(i)),
            }
        } else if (0xdc00..0xe000).contains(&hi) {
            return Err(bad_unicode(i));
        } else {
            (hi, 6)
        };
        let ch = char::from_u32(cp).ok_or_else(|| bad_unicode(i))?;
        let mut b4 = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut b4).as_bytes());
        i += used;
    }
    // The lexer let only valid UTF-8 (and C0 80, now a NUL) through.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all(input: &[u8]) -> Vec<Item> {
        let mut s = Stream::default();
        s.push(input);
        s.drain()
    }

    fn errs(input: &[u8]) -> Vec<String> {
        all(input)
            .into_iter()
            .map(|i| match i {
                Item::Error(e) => e,
                Item::Value(v) => format!("value {v}"),
            })
            .collect()
    }

    #[test]
    fn one_reply_per_group() {
        assert_eq!(
            errs(b"{\"execute\":\n foo}\n"),
            ["JSON parse error, invalid keyword 'foo'"]
        );
        assert_eq!(
            errs(b"foo bar\n"),
            [
                "JSON parse error, invalid keyword 'foo'",
                "JSON parse error, invalid keyword 'bar'"
            ]
        );
        assert_eq!(errs(b"}\n"), ["JSON parse error, expecting value"]);
        assert_eq!(
            errs(b"]]\n"),
            [
                "JSON parse error, expecting value",
                "JSON parse error, expecting value"
            ]
        );
        assert_eq!(
            errs(b"{\"a\" 1}\n"),
            ["JSON parse error, missing : in object pair"]
        );
    }

    #[test]
    fn stray_bytes_and_recovery() {
        assert_eq!(errs(b"@@@\n"), ["JSON parse error, stray '@'"]);
        assert_eq!(
            errs(b"@\n@\n"),
            ["JSON parse error, stray '@'", "JSON parse error, stray '@'"]
        );
        let got = errs(b"@x{\"execute\":\"q\"}\n");
        assert_eq!(got[0], "JSON parse error, stray '@'");
        assert_eq!(got[1], "value {\"execute\":\"q\"}");
        assert_eq!(
            errs(b"{\"a\": \"\xff\"}\n"),
            [
                "JSON parse error, stray '\"\u{fffd}'",
                "JSON parse error, expecting value"
            ]
        );
        assert_eq!(errs(b"{\"id\":1.}\n"), ["JSON parse error, stray '1.}'"]);
        assert_eq!(errs(b"01\n"), ["JSON parse error, stray '01'"]);
    }

    #[test]
    fn strings_numbers_and_escapes() {
        assert_eq!(
            all(b"{'a': 'it\\'s', \"b\": \"\\u00e9\\uD83D\\uDE00\\n\", \"c\": [1, -0, 1.5e3, true, null]}\n"),
            [Item::Value(json!({"a": "it's", "b": "é😀\n", "c": [1, 0, 1500.0, true, null]}))]
        );
        assert_eq!(
            errs(b"\"\\x\"\n"),
            ["JSON parse error, invalid escape sequence in string"]
        );
        assert_eq!(
            errs(b"\"\\u00zz\"\n"),
            ["JSON parse error, \\u00zz is not a valid Unicode character"]
        );
        assert_eq!(
            errs(b"\"\\u00\"\n"),
            ["JSON parse error, \\u00\" is not a valid Unicode character"]
        );
        assert_eq!(
            errs(b"\"\\uDE00\"\n"),
            ["JSON parse error, \\uDE00 is not a valid Unicode character"]
        );
        assert_eq!(
            all(b"18446744073709551615 "),
            [Item::Value(json!(u64::MAX))]
        );
    }

    #[test]
    fn split_anywhere_gives_the_same() {
        let input: &[u8] =
            b"{\"execute\": 'query-version', \"id\": [1.5, \"\\u00e9\xc3\xa9\"]}\n@ }\n{\"a\":tru}";
        let whole = errs(input);
        for cut in 0..input.len() {
            let mut s = Stream::default();
            s.push(&input[..cut]);
            let mut got = s.drain();
            s.push(&input[cut..]);
            got.extend(s.drain());
            let got: Vec<String> = got
                .into_iter()
                .map(|i| match i {
                    Item::Error(e) => e,
                    Item::Value(v) => format!("value {v}"),
                })
                .collect();
            // The last keyword waits for the byte after it.
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn limits() {
        let mut deep = vec![b'['; 1100];
        deep.push(b'\n');
        let got = errs(&deep);
        assert_eq!(got, ["JSON nesting depth limit exceeded"]);
        let mut s = Stream::default();
        let mut long = b"{\"execute\": \"".to_vec();
        long.resize(MAX_GROUP + 100, b'a');
        s.push(&long);
        assert_eq!(
            s.drain(),
            [Item::Error("JSON token size limit exceeded".into())]
        );
        assert!(s.pending() < 1024);
        s.push(b"aaaa\"}\n{\"execute\":\"x\"}\n");
        let got = s.drain();
        assert_eq!(
            got.last(),
            Some(&Item::Value(json!({"execute": "x"}))),
            "{got:?}"
        );
    }
}
