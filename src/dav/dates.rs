//! Dates as servers write them: RFC 1123 (`getlastmodified`, HTTP headers) and ISO 8601 /
//! RFC 3339 (`creationdate`; Orthanc uses it for `getlastmodified` and `Last-Modified` too).
//! Junk (Orthanc's `not-a-date-timeZ`) gives `None`, never an error.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses any date format a WebDAV server is known to send.
pub fn parse_any(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.as_bytes()[0].is_ascii_digit() {
        parse_iso8601(s)
    } else {
        httpdate::parse_http_date(s).ok()
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM|±HHMM)`; a missing zone is taken as UTC.
pub fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, min, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = digits.parse().ok()?;
    }
    let offset_secs: i64 = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) => {
            let hh = num(i + 1, 2)?;
            let mm = match b.get(i + 3) {
                Some(b':') if b.len() == i + 6 => num(i + 4, 2)?,
                Some(_) if b.len() == i + 5 => num(i + 3, 2)?,
                None => 0,
                _ => return None,
            };
            let v = hh * 3600 + mm * 60;
            if *sign == b'+' { v } else { -v }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86400 + hour * 3600 + min * 60 + sec - offset_secs;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(t: SystemTime) -> i64 {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }

    #[test]
    fn rfc1123_and_iso8601() {
        let cases = [
            ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777),
            ("2026-11-22T16:41:15Z", 1795365675),
            ("2026-11-22T16:41:15.250Z", 1795365675),
            ("2026-11-22T17:41:15+01:00", 1795365675),
            ("2026-11-22T15:41:15-0100", 1795365675),
            ("2026-11-22T16:41:15", 1795365675),
            ("1969-12-31T23:59:59Z", -1),
            ("2000-02-29T00:00:00Z", 951782400),
        ];
        for (s, want) in cases {
            assert_eq!(parse_any(s).map(secs), Some(want), "{s}");
        }
    }

    #[test]
    fn junk_is_none() {
        for s in [
            "",
            "not-a-date-timeZ",
            "2026-13-01T00:00:00Z",
            "2026-11-22T16:41",
            "2026-11-22T16:41:15Q",
            "2026-11-22T16:41:15.Z",
            "Sun, 99 Nov 1994 08:49:37 GMT",
            "٢٠٢٦-11-22T16:41:15Z",
        ] {
            assert_eq!(parse_any(s), None, "{s}");
        }
    }
}
