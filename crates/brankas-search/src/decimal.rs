//! Exact decimal numbers for `number` and `quantity` search.
//!
//! FHIR numbers carry their precision in their text ("100" and "100.00" are
//! different searches), and serde_json is built with `arbitrary_precision` so
//! resource values keep their exact text too. Comparing through `f64` would
//! blur the implicit-precision boundaries (`0.15` is not representable), so
//! values are kept as `mantissa × 10^exponent` with an `i128` mantissa.

use std::cmp::Ordering;

/// `m × 10^e`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dec {
    m: i128,
    e: i32,
}

/// More significant digits than this do not fit an `i128` with room to scale.
const MAX_DIGITS: usize = 36;

impl Dec {
    /// Parses a JSON/FHIR decimal (`-12.50`, `1e2`, `+3`). `None` when it is
    /// not a number or has more significant digits than we can hold exactly.
    pub(crate) fn parse(s: &str) -> Option<Dec> {
        let b = s.as_bytes();
        let mut i = 0;
        let neg = match b.first() {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let mut m: i128 = 0;
        let mut digits = 0usize;
        let mut significant = 0usize;
        let mut e: i32 = 0;
        let mut seen_dot = false;
        while i < b.len() {
            match b[i] {
                c @ b'0'..=b'9' => {
                    digits += 1;
                    if m != 0 || c != b'0' {
                        significant += 1;
                    }
                    if significant > MAX_DIGITS {
                        return None;
                    }
                    m = m * 10 + i128::from(c - b'0');
                    if seen_dot {
                        e -= 1;
                    }
                }
                b'.' if !seen_dot => seen_dot = true,
                b'e' | b'E' => break,
                _ => return None,
            }
            i += 1;
        }
        if digits == 0 {
            return None;
        }
        if i < b.len() {
            // Exponent part.
            i += 1;
            let rest = s.get(i..)?;
            if rest.is_empty() || rest.len() > 5 {
                return None;
            }
            let x: i32 = rest.parse().ok()?;
            e = e.checked_add(x)?;
        }
        if !(-400..=400).contains(&e) {
            return None;
        }
        Some(Dec { m: if neg { -m } else { m }, e })
    }

    /// The implicit-precision range of a search value: ± half a unit in the
    /// last given digit, so `100` is `[99.5, 100.5)` and `1.50` is
    /// `[1.495, 1.505)` (§3.1.1.4.6).
    pub(crate) fn precision_bounds(self) -> Option<(Dec, Dec)> {
        let m10 = self.m.checked_mul(10)?;
        let e = self.e - 1;
        Some((Dec { m: m10.checked_sub(5)?, e }, Dec { m: m10.checked_add(5)?, e }))
    }

    /// Approximate value, for the `ap` prefix only.
    pub(crate) fn to_f64(self) -> f64 {
        (self.m as f64) * 10f64.powi(self.e)
    }
}

impl PartialEq for Dec {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Dec {}

impl PartialOrd for Dec {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dec {
    fn cmp(&self, other: &Self) -> Ordering {
        if self.e == other.e {
            return self.m.cmp(&other.m);
        }
        // Scale the one with the larger exponent down to the smaller exponent.
        let (big, small, flipped) = if self.e > other.e { (*self, *other, false) } else { (*other, *self, true) };
        let diff = (big.e - small.e) as u32;
        let scaled = 10i128.checked_pow(diff).and_then(|p| big.m.checked_mul(p));
        let ord = match scaled {
            Some(v) => v.cmp(&small.m),
            // Overflow means |big| exceeds anything `small` can hold, so the
            // sign of `big` decides (a zero mantissa never overflows).
            None => {
                if big.m > 0 {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
        };
        if flipped { ord.reverse() } else { ord }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Dec {
        Dec::parse(s).unwrap()
    }

    #[test]
    fn parses_and_compares() {
        assert_eq!(d("100"), d("100.000"));
        assert_eq!(d("1e2"), d("100"));
        assert!(d("-0.5") < d("0"));
        assert!(d("0.15") > d("0.149999999"));
        assert!(d("176.35499866729558") > d("176.35"));
        assert!(Dec::parse("abc").is_none());
        assert!(Dec::parse("").is_none());
        assert!(Dec::parse("-").is_none());
        assert!(Dec::parse("1.2.3").is_none());
        assert!(Dec::parse("1e").is_none());
        assert!(Dec::parse(&"9".repeat(40)).is_none());
        assert!(d("1e300") > d("12345678901234567890"));
        assert!(d("-1e300") < d("-12345678901234567890"));
    }

    #[test]
    fn implicit_precision() {
        let (lo, hi) = d("100").precision_bounds().unwrap();
        assert_eq!(lo, d("99.5"));
        assert_eq!(hi, d("100.5"));
        let (lo, hi) = d("1.50").precision_bounds().unwrap();
        assert_eq!(lo, d("1.495"));
        assert_eq!(hi, d("1.505"));
    }
}
