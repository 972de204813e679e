//! Command-line arguments as the OS gives them: bytes. A path may hold any bytes (a unix
//! socket path that is not UTF-8 is legal, and QEMU listens on it); every other value
//! must be UTF-8.
//!
//! The parser works on `String`s, so a byte that is not part of valid UTF-8 is carried
//! as a private-use character (U+10FF80 ..= U+10FFFF for bytes 0x80 ..= 0xFF) and turned
//! back into the byte when the value becomes a path ([`path`]); a value that is not a
//! path and still holds one is refused ([`check_utf8`]). An argument that is valid UTF-8
//! is left as it is (so one already holding such a character is taken as written).

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::error::CtlError;

const BASE: u32 = 0x10_ff00;

/// The argument as a `String`, raw bytes carried as private-use characters.
pub fn encode(arg: OsString) -> String {
    match arg.into_string() {
        Ok(s) => s,
        Err(raw) => {
            let bytes = raw.into_vec();
            let mut out = String::with_capacity(bytes.len());
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                match std::str::from_utf8(rest) {
                    Ok(s) => {
                        out.push_str(s);
                        break;
                    }
                    Err(e) => {
                        let (good, bad) = rest.split_at(e.valid_up_to());
                        // `good` is valid UTF-8: from_utf8 said so up to there.
                        out.push_str(std::str::from_utf8(good).unwrap_or_default());
                        let n = e.error_len().unwrap_or(bad.len()).max(1);
                        for &b in &bad[..n] {
                            out.push(char::from_u32(BASE + u32::from(b)).unwrap_or('\u{fffd}'));
                        }
                        rest = &bad[n..];
                    }
                }
            }
            out
        }
    }
}

fn raw_byte(c: char) -> Option<u8> {
    let v = u32::from(c);
    (BASE + 0x80..=BASE + 0xff)
        .contains(&v)
        .then(|| (v - BASE) as u8)
}

/// Whether a value carries bytes that were not UTF-8.
pub fn has_raw(s: &str) -> bool {
    s.chars().any(|c| raw_byte(c).is_some())
}

/// The path a value names, with its original bytes.
pub fn path(s: &str) -> PathBuf {
    let mut bytes = Vec::with_capacity(s.len());
    for c in s.chars() {
        match raw_byte(c) {
            Some(b) => bytes.push(b),
            None => {
                let mut buf = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    PathBuf::from(OsString::from_vec(bytes))
}

/// A value shown to a person (raw bytes as `\xNN`).
pub fn display(s: &str) -> String {
    s.chars()
        .map(|c| match raw_byte(c) {
            Some(b) => format!("\\x{b:02x}"),
            None => c.to_string(),
        })
        .collect()
}

/// Refuses a value that is not a path but was not UTF-8.
pub fn check_utf8(option: &str, value: &str) -> Result<(), CtlError> {
    if has_raw(value) {
        return Err(CtlError::Invalid(format!(
            "{option} {}: not valid UTF-8 (only paths may hold other bytes)",
            display(value)
        )));
    }
    Ok(())
}

/// The bytes of a path, for tests and logs.
pub fn bytes_of(p: &std::path::Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_survive_the_trip() {
        let raw = OsString::from_vec(b"unix:/tmp/a-\xff\xfe-\xc3\xa9.sock,server=on".to_vec());
        let s = encode(raw);
        assert!(has_raw(&s));
        assert!(s.ends_with(",server=on") && s.contains('é'));
        let p = path(s.strip_prefix("unix:").unwrap().split(',').next().unwrap());
        assert_eq!(bytes_of(&p), b"/tmp/a-\xff\xfe-\xc3\xa9.sock");
        assert_eq!(display("a\u{10ffff}"), "a\\xff");
        assert!(check_utf8("-cores", &s).is_err());
        assert_eq!(encode(OsString::from("plain")), "plain");
    }
}
