//! HTTP dates: IMF-fixdate out; IMF-fixdate, RFC 850 and asctime in. Own code, no dependency.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

//= https://www.rfc-editor.org/rfc/rfc9110#section-5.6.7
//# A sender MUST NOT generate additional whitespace in an HTTP-date beyond that specifically
//# included as SP in the grammar.
/// Formats `t` as an IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`. Times before 1970 are
/// written as the epoch (no boot file is that old).
pub fn format(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(253_402_300_799); // 9999-12-31T23:59:59: keep the year four digits
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let weekday = DAYS[((days + 3) % 7) as usize];
    let mut out = String::with_capacity(29);
    let _ = write!(
        out,
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    out
}

/// Formats `t` as access logs write it (Common Log Format, in UTC), e.g.
/// `06/Nov/1994:08:49:37 +0000`.
pub fn format_log(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(253_402_300_799);
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let mut out = String::with_capacity(26);
    let _ = write!(
        out,
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    );
    out
}

//= https://www.rfc-editor.org/rfc/rfc9110#section-5.6.7
//# Recipients of timestamp values are encouraged to be robust in parsing timestamps unless
//# otherwise restricted by the field definition.
//= https://www.rfc-editor.org/rfc/rfc9110#section-5.6.7
//# A recipient that parses a timestamp value in an HTTP field MUST accept all three HTTP-date
//# formats.
/// Parses an HTTP-date in any of the three formats; `None` when it is not one.
pub fn parse(s: &str) -> Option<SystemTime> {
    let s = s.trim_matches([' ', '\t']);
    if !s.is_ascii() {
        return None;
    }
    let (year, month, day, time) = if let Some((_, rest)) = s.split_once(", ") {
        if rest.contains('-') {
            parse_rfc850(rest)?
        } else {
            parse_fixdate(rest)?
        }
    } else {
        parse_asctime(s)?
    };
    let (h, m, sec) = parse_time(time)?;
    if !(1..=31).contains(&day) || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if days < 0 {
        return None;
    }
    let secs = days as u64 * 86_400 + h * 3600 + m * 60 + sec;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// `06 Nov 1994 08:49:37 GMT`
fn parse_fixdate(s: &str) -> Option<(i64, u32, u32, &str)> {
    let mut it = s.split(' ');
    let day = two_digits(it.next()?)?;
    let month = month_index(it.next()?)?;
    let year_str = it.next()?;
    if year_str.len() != 4 {
        return None;
    }
    let year = year_str.parse::<i64>().ok()?;
    let time = it.next()?;
    (it.next()? == "GMT" && it.next().is_none()).then_some((year, month, day, time))
}

/// `06-Nov-94 08:49:37 GMT` (after `Sunday, `)
fn parse_rfc850(s: &str) -> Option<(i64, u32, u32, &str)> {
    let (date, rest) = s.split_once(' ')?;
    let (time, zone) = rest.split_once(' ')?;
    if zone != "GMT" {
        return None;
    }
    let mut parts = date.split('-');
    let day = two_digits(parts.next()?)?;
    let month = month_index(parts.next()?)?;
    let yy = parts.next()?;
    if yy.len() != 2 || parts.next().is_some() {
        return None;
    }
    let yy = yy.parse::<i64>().ok()?;
    //= https://www.rfc-editor.org/rfc/rfc9110#section-5.6.7
    //# Recipients of a timestamp value in rfc850-date format, which uses a two-digit year, MUST
    //# interpret a timestamp that appears to be more than 50 years in the future as representing
    //# the most recent year in the past that had the same last two digits.
    // Without a clock here, pivot at 1970: boot files are never older than that.
    let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
    Some((year, month, day, time))
}

/// `Sun Nov  6 08:49:37 1994`
fn parse_asctime(s: &str) -> Option<(i64, u32, u32, &str)> {
    let b = s.as_bytes();
    if b.len() != 24 || b.get(3) != Some(&b' ') || b.get(7) != Some(&b' ') {
        return None;
    }
    if !DAYS.contains(&s.get(0..3)?) {
        return None;
    }
    let month = month_index(s.get(4..7)?)?;
    let day_str = s.get(8..10)?;
    let day = day_str.trim_start_matches(' ');
    if day.is_empty() || !day.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let day = day.parse::<u32>().ok()?;
    if s.get(10..11)? != " " || s.get(19..20)? != " " {
        return None;
    }
    let time = s.get(11..19)?;
    let year = s.get(20..24)?;
    if !year.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((year.parse().ok()?, month, day, time))
}

fn parse_time(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split(':');
    let h = u64::from(two_digits(it.next()?)?);
    let m = u64::from(two_digits(it.next()?)?);
    let sec = u64::from(two_digits(it.next()?)?);
    // 60 is a leap second; fold it into the next minute's first second rather than refuse.
    (it.next().is_none() && h < 24 && m < 60 && sec <= 60).then_some((h, m, sec))
}

fn two_digits(s: &str) -> Option<u32> {
    (s.len() == 2 && s.bytes().all(|c| c.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn month_index(s: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| *m == s)
        .and_then(|i| u32::try_from(i + 1).ok())
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian, day 0 = 1970-01-01).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn formats_rfc_example() {
        assert_eq!(format(at(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(format(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(format(at(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn formats_access_log_times() {
        assert_eq!(format_log(at(784_111_777)), "06/Nov/1994:08:49:37 +0000");
        assert_eq!(format_log(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
    }

    #[test]
    fn parses_all_three_formats() {
        let want = Some(at(784_111_777));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), want);
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), want);
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), want);
    }

    #[test]
    fn round_trips_over_many_days() {
        for day in (0..30_000u64).step_by(7) {
            let t = at(day * 86_400 + day * 37 % 86_400);
            assert_eq!(parse(&format(t)), Some(t), "{}", format(t));
        }
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun Nov  6 08:49:37 94",
            "Sun, 06 Nov 1969 08:49:37 GMT",
            "Sün, 06 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
