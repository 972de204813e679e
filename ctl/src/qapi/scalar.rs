//! Scalars from strings, the way QEMU's `-netdev` parsing reads them.
//!
//! QEMU leans on C's `strtoll`/`strtoull` (base 0: decimal, `0x` hex, leading-`0`
//! octal, leading white space and a sign allowed) and on its own `qemu_strtosz` for
//! sizes (`4k`, `1.5M`, `0x1000`). These functions reproduce what those accept, so a
//! command line that QEMU takes is taken here with the same value, and one QEMU
//! refuses is refused.

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Index of the first byte at or after `i` that is not C white space.
fn skip_space(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    i
}

/// What `strtoull`/`strtoll` saw: sign, magnitude and where the number ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CInt {
    negative: bool,
    /// The magnitude, or `None` when it does not fit in 64 bits (`ERANGE`).
    magnitude: Option<u64>,
    /// Index just past the last digit.
    end: usize,
}

/// Scans an integer the way `strtoull(s, &end, base)` does, for base 0, 10 or 16.
/// Returns `None` where C would perform no conversion.
fn scan_c_int(s: &[u8], base: u32) -> Option<CInt> {
    let mut i = skip_space(s, 0);
    let mut negative = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        negative = s[i] == b'-';
        i += 1;
    }
    let hex_prefix = i + 2 < s.len()
        && s[i] == b'0'
        && (s[i + 1] | 0x20) == b'x'
        && s[i + 2].is_ascii_hexdigit();
    let radix = match base {
        0 if hex_prefix => {
            i += 2;
            16
        }
        0 if i < s.len() && s[i] == b'0' => 8,
        0 => 10,
        16 => {
            if hex_prefix {
                i += 2;
            }
            16
        }
        other => other,
    };
    let start = i;
    let mut magnitude = Some(0u64);
    while i < s.len() {
        let Some(digit) = (s[i] as char).to_digit(radix) else {
            break;
        };
        magnitude = magnitude
            .and_then(|m| m.checked_mul(u64::from(radix)))
            .and_then(|m| m.checked_add(u64::from(digit)));
        i += 1;
    }
    if i == start {
        return None;
    }
    Some(CInt {
        negative,
        magnitude,
        end: i,
    })
}

/// An `int64` the way QEMU's opts visitor reads it: `strtoll(s, &end, 0)` consuming
/// the whole string without overflow.
pub(crate) fn parse_i64(s: &str) -> Option<i64> {
    let n = scan_c_int(s.as_bytes(), 0)?;
    if n.end != s.len() {
        return None;
    }
    let m = n.magnitude?;
    if n.negative {
        0i64.checked_sub_unsigned(m)
    } else {
        i64::try_from(m).ok()
    }
}

/// A `uint64` the way QEMU's opts visitor reads it: `parse_uint(s, 0)` consuming
/// the whole string; negative numbers (even `-0`) are refused.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    let n = scan_c_int(s.as_bytes(), 0)?;
    if n.end != s.len() || n.negative {
        return None;
    }
    n.magnitude
}

/// An `unsigned long` the way `qemu_strtoul(s, NULL, 10, &v)` reads it: decimal,
/// whole string, and (as C does) a leading `-` negates in the unsigned type.
pub(crate) fn parse_strtoul10(s: &str) -> Option<u64> {
    let n = scan_c_int(s.as_bytes(), 10)?;
    if n.end != s.len() {
        return None;
    }
    let m = n.magnitude?;
    Some(if n.negative { m.wrapping_neg() } else { m })
}

/// The boolean spellings QEMU's `qapi_bool_parse` accepts.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// Multiplier of a size suffix (`B`, `K`, `M`, `G`, `T`, `P`, `E`, any case; powers of
/// 1024), or `None` for any other byte.
fn suffix_mul(c: u8) -> Option<u64> {
    let shift = match c.to_ascii_uppercase() {
        b'B' => 0,
        b'K' => 10,
        b'M' => 20,
        b'G' => 30,
        b'T' => 40,
        b'P' => 50,
        b'E' => 60,
        _ => return None,
    };
    Some(1u64 << shift)
}

/// Most fractional digits taken into account; more cannot change a byte count.
const MAX_FRACTION_DIGITS: usize = 19;

/// A size the way QEMU's `qemu_strtosz` reads it, in bytes.
///
/// Accepted: decimal `12345`; decimal with a suffix `4k`, `16M`, `1G`, `2T`, `1P`,
/// `1E` (`B`/`K`/`M`/`G`/`T`/`P`/`E`, either case, powers of 1024); decimal
/// fractions with a suffix larger than bytes, `1.5M`, `.5G`, `1.K`, rounded to the
/// nearest byte; hexadecimal bytes `0x1000`. Refused: negative values, octal,
/// hexadecimal with a suffix or fraction (`0x20M`), exponents (`1e3`), fractions of
/// a byte (`1.5`, `1.5B`), values above `u64::MAX`, trailing characters.
pub fn parse_size(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let i = skip_space(b, 0);
    let mut j = i;
    if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
        if b[j] == b'-' {
            return None;
        }
        j += 1;
    }
    let digits_start = j;
    while j < b.len() && b[j].is_ascii_digit() {
        j += 1;
    }
    let int_digits = &s[digits_start..j];
    if int_digits == "0" && j < b.len() && (b[j] | 0x20) == b'x' {
        // Hexadecimal: bytes only, no fraction, no suffix.
        let n = scan_c_int(b, 16)?;
        if n.end != b.len() {
            return None;
        }
        return n.magnitude;
    }
    let mut integral: u64 = 0;
    for d in int_digits.bytes() {
        integral = integral.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    let mut fraction = "";
    if j < b.len() && b[j] == b'.' {
        let f_start = j + 1;
        j = f_start;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        fraction = &s[f_start..j];
        if int_digits.is_empty() && fraction.is_empty() {
            return None;
        }
    } else if int_digits.is_empty() {
        return None;
    }
    let mul = match b.get(j).copied().and_then(suffix_mul) {
        Some(m) => {
            j += 1;
            m
        }
        None => 1,
    };
    if j != b.len() {
        return None;
    }
    let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
    let frac_num: u128 = fraction.parse().unwrap_or(0);
    if mul == 1 {
        // A fraction needs a scale: there is no such thing as half a byte.
        return (frac_num == 0).then_some(integral);
    }
    let denom = 10u128.pow(fraction.len() as u32);
    // Round half up, as QEMU does.
    let frac_bytes = (frac_num * u128::from(mul) + denom / 2) / denom;
    let total = u128::from(integral) * u128::from(mul) + frac_bytes;
    u64::try_from(total).ok()
}

/// QEMU's `id_wellformed`: an ASCII letter, then letters, digits, `-`, `.` and `_`.
pub fn id_wellformed(id: &str) -> bool {
    let mut bytes = id.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_like_strtoll_base0() {
        assert_eq!(parse_i64("42"), Some(42));
        assert_eq!(parse_i64("-42"), Some(-42));
        assert_eq!(parse_i64("+7"), Some(7));
        assert_eq!(parse_i64("  7"), Some(7));
        assert_eq!(parse_i64("0x1f"), Some(31));
        assert_eq!(parse_i64("0X1F"), Some(31));
        assert_eq!(parse_i64("010"), Some(8));
        assert_eq!(parse_i64("0"), Some(0));
        assert_eq!(parse_i64("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64("9223372036854775808"), None);
        assert_eq!(parse_i64("-9223372036854775809"), None);
        for bad in [
            "", " ", "-", "x", "7 ", "08", "0x", "0xg", "1.0", "1e3", "12abc",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uint64_like_parse_uint() {
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64("0xffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_u64("017"), Some(15));
        assert_eq!(parse_u64("+3"), Some(3));
        assert_eq!(parse_u64("-0"), None);
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("four"), None);
    }

    #[test]
    fn strtoul10_wraps_negative_like_c() {
        assert_eq!(parse_strtoul10("64"), Some(64));
        assert_eq!(parse_strtoul10("064"), Some(64));
        assert_eq!(parse_strtoul10("-1"), Some(u64::MAX));
        assert_eq!(parse_strtoul10("0x10"), None);
        assert_eq!(parse_strtoul10(""), None);
    }

    #[test]
    fn bools() {
        for t in ["on", "yes", "true", "y"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for f in ["off", "no", "false", "n"] {
            assert_eq!(parse_bool(f), Some(false));
        }
        for bad in ["", "ON", "1", "0", "On", "enable"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_like_qemu_strtosz() {
        const K: u64 = 1024;
        let ok = [
            ("0", 0),
            ("12345", 12345),
            ("12345B", 12345),
            ("12345b", 12345),
            ("1k", K),
            ("1K", K),
            ("4M", 4 * K * K),
            ("1G", K * K * K),
            ("2T", 2 * K.pow(4)),
            ("1P", K.pow(5)),
            ("1E", K.pow(6)),
            ("15E", 15 * K.pow(6)),
            ("1.5M", 3 * K * K / 2),
            ("1.5k", 1536),
            (".5K", 512),
            ("+.5K", 512),
            ("1.K", K),
            ("1.", 1),
            ("1.0", 1),
            ("0x1000", 4096),
            ("0X1f", 31),
            ("0xE", 14),
            (" 7", 7),
            ("08", 8),
            ("18446744073709551615", u64::MAX),
            ("12.345M", 12944671), // 12.345 * 2^20 = 12944670.72, rounded up
        ];
        for (s, v) in ok {
            assert_eq!(parse_size(s), Some(v), "{s:?}");
        }
        let bad = [
            "",
            " ",
            "k",
            "-1",
            "-0",
            "1.5",
            "1.5B",
            "0x20M",
            "0x1.8",
            "1e3",
            "1x",
            "1 ",
            "16Q",
            "1KB",
            "18446744073709551616",
            "16E",
            ".",
            ".K",
            "-.5K",
            "abc",
            "0x",
            "1.5.5K",
        ];
        for s in bad {
            assert_eq!(parse_size(s), None, "{s:?}");
        }
    }

    #[test]
    fn ids() {
        for good in ["a", "t0", "net-0.x_y", "Z"] {
            assert!(id_wellformed(good), "{good:?}");
        }
        for bad in ["", "0a", "-a", "_a", "a b", "a,b", "a/b", "ä", "a\u{e9}"] {
            assert!(!id_wellformed(bad), "{bad:?}");
        }
    }
}
