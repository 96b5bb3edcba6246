//! Dates as ranges (FHIR R4 §3.1.1.4.7).
//!
//! Every date, both in a search value and in a resource, stands for the whole
//! range its precision covers: `2021-03` is all of March 2021, a dateTime to
//! the second is that second. Ranges are half-open `[lo, hi)` in microseconds
//! since the Unix epoch, UTC; values without a timezone are taken as UTC.
//! Parsing is hand-written and allocation-free because it runs for every
//! resource value a date search looks at; `time` only validates the calendar
//! date and gives its day number.

use serde_json::Value;

/// Microseconds per second / day.
const US_PER_SEC: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;

/// Julian day number of 1970-01-01.
const UNIX_EPOCH_JULIAN_DAY: i64 = 2_440_588;

/// A half-open instant range `[lo, hi)` in microseconds since the epoch (UTC).
/// `i64::MIN` / `i64::MAX` stand for an open Period end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    pub lo: i64,
    pub hi: i64,
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    let mut v = 0i64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(c - b'0');
    }
    Some(v)
}

fn day_number(y: i64, m: i64, d: i64) -> Option<i64> {
    let month = time::Month::try_from(u8::try_from(m).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(y).ok()?, month, u8::try_from(d).ok()?).ok()?;
    Some(i64::from(date.to_julian_day()) - UNIX_EPOCH_JULIAN_DAY)
}

/// Parses `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or
/// `YYYY-MM-DDThh:mm[:ss[.fff…]][Z|±hh:mm]` into the range it denotes.
pub(crate) fn parse_range(s: &str) -> Option<Range> {
    let b = s.as_bytes();
    let y = digits(b, 0, 4)?;
    if b.len() == 4 {
        let lo = day_number(y, 1, 1)?;
        let hi = day_number(y + 1, 1, 1).unwrap_or(lo + 366);
        return Some(Range { lo: lo * US_PER_DAY, hi: hi * US_PER_DAY });
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let m = digits(b, 5, 2)?;
    if b.len() == 7 {
        let lo = day_number(y, m, 1)?;
        let hi = if m == 12 { day_number(y + 1, 1, 1).unwrap_or(lo + 31) } else { day_number(y, m + 1, 1)? };
        return Some(Range { lo: lo * US_PER_DAY, hi: hi * US_PER_DAY });
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let d = digits(b, 8, 2)?;
    let day = day_number(y, m, d)?;
    if b.len() == 10 {
        return Some(Range { lo: day * US_PER_DAY, hi: (day + 1) * US_PER_DAY });
    }
    if b.get(10) != Some(&b'T') {
        return None;
    }
    let hh = digits(b, 11, 2)?;
    if b.get(13) != Some(&b':') {
        return None;
    }
    let mm = digits(b, 14, 2)?;
    if hh > 23 || mm > 59 {
        return None;
    }
    let mut at = 16;
    let mut ss = 0;
    let mut frac = 0i64;
    // Width of the range in microseconds, set by the finest component given.
    let mut width = 60 * US_PER_SEC;
    if b.get(at) == Some(&b':') {
        ss = digits(b, at + 1, 2)?;
        // 60 is a leap second; fold it into the last second of the minute.
        if ss > 60 {
            return None;
        }
        ss = ss.min(59);
        at += 3;
        width = US_PER_SEC;
        if b.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            let mut scale = 100_000i64;
            while let Some(c) = b.get(at).filter(|c| c.is_ascii_digit()) {
                frac += i64::from(c - b'0') * scale;
                scale /= 10;
                at += 1;
            }
            let n = at - start;
            if n == 0 {
                return None;
            }
            width = 10i64.pow(6u32.saturating_sub(n as u32)).max(1);
        }
    }
    let offset_secs = match b.get(at) {
        None => 0,
        Some(b'Z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() && b[at + 3] == b':' => {
            let oh = digits(b, at + 1, 2)?;
            let om = digits(b, at + 4, 2)?;
            if oh > 14 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let lo = day * US_PER_DAY + ((hh * 60 + mm) * 60 + ss - offset_secs) * US_PER_SEC + frac;
    Some(Range { lo, hi: lo + width })
}

/// Calls `f` for every range a resource value denotes: a date/dateTime/instant
/// string; a Period (open ends unbounded); a Timing (each `event`, and
/// `repeat.boundsPeriod`). Unparseable values are skipped, never an error:
/// stored data is what it is. Stops early when `f` returns `true`.
pub(crate) fn for_each_range(v: &Value, f: &mut dyn FnMut(Range) -> bool) -> bool {
    match v {
        Value::String(s) => parse_range(s).is_some_and(f),
        Value::Object(o) => {
            if o.contains_key("start") || o.contains_key("end") {
                return period(o, f);
            }
            if let Some(Value::Array(events)) = o.get("event") {
                for e in events {
                    if let Value::String(s) = e
                        && let Some(r) = parse_range(s)
                        && f(r)
                    {
                        return true;
                    }
                }
            }
            if let Some(Value::Object(bp)) = o.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                return period(bp, f);
            }
            false
        }
        _ => false,
    }
}

fn period(o: &serde_json::Map<String, Value>, f: &mut dyn FnMut(Range) -> bool) -> bool {
    let start = o.get("start").and_then(Value::as_str).map(parse_range);
    let end = o.get("end").and_then(Value::as_str).map(parse_range);
    let lo = match start {
        Some(Some(r)) => r.lo,
        Some(None) => return false, // present but malformed
        None => i64::MIN,
    };
    let hi = match end {
        Some(Some(r)) => r.hi,
        Some(None) => return false,
        None => i64::MAX,
    };
    if lo == i64::MIN && hi == i64::MAX {
        return false;
    }
    f(Range { lo, hi })
}

/// Now, for the `ap` prefix, in the same unit.
pub(crate) fn now_us() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Range {
        parse_range(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn precisions() {
        let y = r("2021");
        assert_eq!(y.hi - y.lo, 365 * US_PER_DAY);
        let m = r("2021-02");
        assert_eq!(m.hi - m.lo, 28 * US_PER_DAY);
        let dec = r("2020-12");
        assert_eq!(dec.hi, r("2021").lo);
        let d = r("2021-03-04");
        assert_eq!(d.hi - d.lo, US_PER_DAY);
        assert_eq!(r("2021-03-04T10:00").hi - r("2021-03-04T10:00").lo, 60 * US_PER_SEC);
        assert_eq!(r("2021-03-04T10:00:00Z").hi - r("2021-03-04T10:00:00Z").lo, US_PER_SEC);
        assert_eq!(r("2021-03-04T10:00:00.5Z").hi - r("2021-03-04T10:00:00.5Z").lo, 100_000);
        assert_eq!(r("2021-03-04T10:00:00.123Z").hi - r("2021-03-04T10:00:00.123Z").lo, 1000);
        assert_eq!(r("1970-01-01T00:00:00Z").lo, 0);
    }

    #[test]
    fn timezones() {
        assert_eq!(r("2021-03-04T10:00:00+07:00").lo, r("2021-03-04T03:00:00Z").lo);
        assert_eq!(r("2021-03-04T10:00:00-02:30").lo, r("2021-03-04T12:30:00Z").lo);
        assert_eq!(r("2021-03-04T10:00:00").lo, r("2021-03-04T10:00:00Z").lo);
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "20",
            "2021-",
            "2021-13",
            "2021-02-30",
            "2021-03-04T",
            "2021-03-04T25:00",
            "2021-03-04T10:00:00+7",
            "2021-03-04T10:00:00.Z",
            "abcd",
            "2021-03-04 10:00",
            "2021-03-04T10:00:00Zjunk",
            "2021/03/04",
        ] {
            assert!(parse_range(s).is_none(), "{s}");
        }
    }

    #[test]
    fn periods_and_timing() {
        let v: Value = serde_json::json!({"start": "2021-01-01", "end": "2021-01-31"});
        let mut got = vec![];
        for_each_range(&v, &mut |x| {
            got.push(x);
            false
        });
        assert_eq!(got, vec![Range { lo: r("2021-01-01").lo, hi: r("2021-01-31").hi }]);
        let open: Value = serde_json::json!({"start": "2021-01-01"});
        let mut hi = 0;
        for_each_range(&open, &mut |x| {
            hi = x.hi;
            false
        });
        assert_eq!(hi, i64::MAX);
        let timing: Value = serde_json::json!({"event": ["2021-01-01", "2021-02-01"]});
        let mut n = 0;
        for_each_range(&timing, &mut |_| {
            n += 1;
            false
        });
        assert_eq!(n, 2);
    }
}
