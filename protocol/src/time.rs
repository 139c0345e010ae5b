//! Wall-clock instants and durations as they travel on the wire.
//!
//! Both are plain integers in postcard (milliseconds), so they are compact, total (every value
//! decodes) and compare exactly after a round trip. In human-readable formats (JSON, as printed
//! by the operator CLI) a [`Timestamp`] is an RFC 3339 string such as
//! `2024-05-01T12:30:00.250Z`; a [`DurationMs`] stays an integer count of milliseconds.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MS_PER_SEC: i64 = 1_000;
const MS_PER_DAY: i64 = 86_400_000;

/// An instant as milliseconds since the Unix epoch (UTC), negative before 1970.
///
/// `Display` gives RFC 3339 with millisecond precision in UTC (`2024-05-01T12:30:00.250Z`);
/// years outside `0000..=9999` use the RFC 3339 extended form with a sign (`+12345-…`).
/// `FromStr` parses the same forms, with any UTC offset (`Z`, `+02:00`) and any number of
/// fractional digits (truncated to milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The Unix epoch, `1970-01-01T00:00:00.000Z`.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Converts a [`SystemTime`], truncating below a millisecond and saturating at the
    /// `i64` range.
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => {
                // Before the epoch: round towards negative infinity so that ordering is kept.
                let d = e.duration();
                let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                let extra = i64::from(d.subsec_nanos() % 1_000_000 != 0);
                Timestamp(ms.saturating_neg().saturating_sub(extra))
            }
        }
    }

    /// Converts to a [`SystemTime`]; `None` if the platform cannot represent it.
    pub fn to_system_time(self) -> Option<SystemTime> {
        let d = Duration::from_millis(self.0.unsigned_abs());
        if self.0 >= 0 {
            UNIX_EPOCH.checked_add(d)
        } else {
            UNIX_EPOCH.checked_sub(d)
        }
    }

    /// This instant plus a duration, saturating at the end of the range.
    pub fn saturating_add(self, d: DurationMs) -> Self {
        Timestamp::clamp(i128::from(self.0) + i128::from(d.0))
    }

    /// This instant minus a duration, saturating at the start of the range.
    pub fn saturating_sub(self, d: DurationMs) -> Self {
        Timestamp::clamp(i128::from(self.0) - i128::from(d.0))
    }

    fn clamp(ms: i128) -> Self {
        Timestamp(i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX }))
    }

    /// Time elapsed from `earlier` to `self`; zero if `earlier` is later.
    pub fn duration_since(self, earlier: Timestamp) -> DurationMs {
        let d = i128::from(self.0) - i128::from(earlier.0);
        DurationMs(u64::try_from(d.max(0)).unwrap_or(u64::MAX))
    }

    /// Calendar fields (year, month 1-12, day 1-31, hour, minute, second, millisecond) in UTC.
    fn civil(self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms_of_day = self.0.rem_euclid(MS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let secs = ms_of_day / MS_PER_SEC;
        // All of these are bounded well within u32 by the rem_euclid above.
        let h = (secs / 3600) as u32;
        let mi = ((secs / 60) % 60) as u32;
        let s = (secs % 60) as u32;
        let ms = (ms_of_day % MS_PER_SEC) as u32;
        (y, m, d, h, mi, s, ms)
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
/// Exact for every `i64` day count that a millisecond `i64` can produce.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Howard Hinnant's `days_from_civil`, with checked arithmetic for far-away years.
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era.checked_mul(146_097)?
        .checked_add(doe)?
        .checked_sub(719_468)
}

fn is_leap(y: i64) -> bool {
    y.rem_euclid(4) == 0 && (y.rem_euclid(100) != 0 || y.rem_euclid(400) == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi, s, ms) = self.civil();
        if (0..=9999).contains(&y) {
            write!(f, "{y:04}")?;
        } else if y > 9999 {
            write!(f, "+{y}")?;
        } else {
            write!(f, "-{:04}", y.unsigned_abs())?;
        }
        write!(f, "-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an RFC 3339 timestamp (like 2024-05-01T12:30:00Z): {reason}")]
pub struct TimestampParseError {
    input: String,
    reason: &'static str,
}

impl FromStr for Timestamp {
    type Err = TimestampParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| TimestampParseError {
            input: input.to_owned(),
            reason,
        };
        let b = input.as_bytes();
        let mut p = Parser { b, i: 0 };

        // Year: 4 digits, or a sign and at least 4 digits.
        let sign = match b.first() {
            Some(b'+') => {
                p.i += 1;
                1
            }
            Some(b'-') => {
                p.i += 1;
                -1
            }
            _ => 0,
        };
        let start = p.i;
        while p.i < b.len() && b[p.i].is_ascii_digit() {
            p.i += 1;
        }
        let ylen = p.i - start;
        if ylen < 4 || (sign == 0 && ylen != 4) || ylen > 15 {
            return Err(err("the year must have 4 digits"));
        }
        let year: i64 = input[start..p.i].parse().map_err(|_| err("invalid year"))?;
        let year = if sign < 0 { -year } else { year };

        p.expect(b'-')
            .ok_or_else(|| err("expected `-` after the year"))?;
        let month = p.digits(2).ok_or_else(|| err("invalid month"))?;
        p.expect(b'-')
            .ok_or_else(|| err("expected `-` after the month"))?;
        let day = p.digits(2).ok_or_else(|| err("invalid day"))?;
        if !(1..=12).contains(&month) {
            return Err(err("month out of range"));
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(err("day out of range"));
        }
        match p.next() {
            Some(b'T' | b't' | b' ') => {}
            _ => return Err(err("expected `T` between date and time")),
        }
        let hour = p.digits(2).ok_or_else(|| err("invalid hour"))?;
        p.expect(b':')
            .ok_or_else(|| err("expected `:` after the hour"))?;
        let minute = p.digits(2).ok_or_else(|| err("invalid minute"))?;
        p.expect(b':')
            .ok_or_else(|| err("expected `:` after the minute"))?;
        let second = p.digits(2).ok_or_else(|| err("invalid second"))?;
        // A leap second (60) is accepted and folded into the next second, as most systems do.
        if hour > 23 || minute > 59 || second > 60 {
            return Err(err("time of day out of range"));
        }
        let mut millis = 0u32;
        if p.peek() == Some(b'.') {
            p.i += 1;
            let fstart = p.i;
            while p.i < b.len() && b[p.i].is_ascii_digit() {
                if p.i - fstart < 3 {
                    millis = millis * 10 + u32::from(b[p.i] - b'0');
                }
                p.i += 1;
            }
            let flen = p.i - fstart;
            if flen == 0 {
                return Err(err("expected digits after `.`"));
            }
            for _ in flen..3 {
                millis *= 10;
            }
        }
        let offset_min: i64 = match p.next() {
            Some(b'Z' | b'z') => 0,
            Some(c @ (b'+' | b'-')) => {
                let oh = p.digits(2).ok_or_else(|| err("invalid UTC offset"))?;
                p.expect(b':').ok_or_else(|| err("invalid UTC offset"))?;
                let om = p.digits(2).ok_or_else(|| err("invalid UTC offset"))?;
                if oh > 23 || om > 59 {
                    return Err(err("UTC offset out of range"));
                }
                let o = i64::from(oh * 60 + om);
                if c == b'-' {
                    -o
                } else {
                    o
                }
            }
            _ => return Err(err("expected a UTC offset (`Z` or `+HH:MM`)")),
        };
        if p.i != b.len() {
            return Err(err("unexpected characters after the offset"));
        }
        let days = days_from_civil(year, month, day).ok_or_else(|| err("out of range"))?;
        let secs_of_day =
            i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second) - offset_min * 60;
        // i128 cannot overflow here (the day count is below 2^59), and the sum may be in range even when
        // its first term is not (the earliest representable instants).
        let ms = i128::from(days) * i128::from(MS_PER_DAY)
            + i128::from(secs_of_day) * i128::from(MS_PER_SEC)
            + i128::from(millis);
        i64::try_from(ms)
            .map(Timestamp)
            .map_err(|_| err("out of range"))
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }
    fn expect(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }
    fn digits(&mut self, n: usize) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..n {
            let c = self.next()?;
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        Self::from_system_time(t)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            s.serialize_i64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp or milliseconds since the Unix epoch")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                i64::try_from(v)
                    .map(Timestamp)
                    .map_err(|_| E::custom("timestamp out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                v.parse().map_err(E::custom)
            }
        }
        if d.is_human_readable() {
            d.deserialize_any(V)
        } else {
            d.deserialize_i64(V)
        }
    }
}

/// A non-negative duration in whole milliseconds.
///
/// `Display` is compact and human oriented (`250ms`, `1m30s`, `2h`); `FromStr` accepts the
/// same forms and a sequence of `<number><unit>` with units `ms`, `s`, `m`, `h`, `d`
/// (`10m`, `1h30m`, `1500ms`); a bare number is seconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(transparent)]
pub struct DurationMs(pub u64);

impl DurationMs {
    /// Zero milliseconds.
    pub const ZERO: DurationMs = DurationMs(0);

    /// A duration of `ms` milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        DurationMs(ms)
    }

    /// A duration of `s` seconds (saturating).
    pub const fn from_secs(s: u64) -> Self {
        DurationMs(s.saturating_mul(1000))
    }

    /// A duration of `m` minutes (saturating).
    pub const fn from_mins(m: u64) -> Self {
        DurationMs(m.saturating_mul(60_000))
    }

    /// The number of milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// As a [`std::time::Duration`].
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl From<Duration> for DurationMs {
    /// Truncates below a millisecond, saturates above `u64::MAX` milliseconds.
    fn from(d: Duration) -> Self {
        DurationMs(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

impl From<DurationMs> for Duration {
    fn from(d: DurationMs) -> Self {
        d.as_duration()
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        const UNITS: [(u64, &str); 5] = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1_000, "s"),
            (1, "ms"),
        ];
        for (size, unit) in UNITS {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

/// Why a string is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a duration: write it like 250ms, 30s, 10m, 1h30m or 2d")]
pub struct DurationParseError(String);

impl FromStr for DurationMs {
    type Err = DurationParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || DurationParseError(input.to_owned());
        let s = input.trim();
        if s.is_empty() {
            return Err(err());
        }
        if s.bytes().all(|c| c.is_ascii_digit()) {
            let secs: u64 = s.parse().map_err(|_| err())?;
            return secs.checked_mul(1000).map(DurationMs).ok_or_else(err);
        }
        let b = s.as_bytes();
        let mut i = 0;
        let mut total: u64 = 0;
        while i < b.len() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i == start {
                return Err(err());
            }
            let n: u64 = s[start..i].parse().map_err(|_| err())?;
            let ustart = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let mult = match &s[ustart..i] {
                "ms" => 1,
                "s" | "sec" | "secs" => 1_000,
                "m" | "min" | "mins" => 60_000,
                "h" | "hr" | "hrs" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(err()),
            };
            total = n
                .checked_mul(mult)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
        }
        Ok(DurationMs(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_known_instants() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_714_566_600_250).to_string(),
            "2024-05-01T12:30:00.250Z"
        );
        assert_eq!(Timestamp(-1).to_string(), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            Timestamp(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp(-62_167_219_200_000).to_string(),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp(-62_167_219_200_001).to_string(),
            "-0001-12-31T23:59:59.999Z"
        );
        assert_eq!(
            Timestamp(253_402_300_800_000).to_string(),
            "+10000-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn display_parse_round_trip_extremes() {
        for ms in [
            i64::MIN,
            i64::MIN + 1,
            -86_400_001,
            -1,
            0,
            1,
            1_714_566_600_250,
            i64::MAX - 1,
            i64::MAX,
        ] {
            let t = Timestamp(ms);
            let s = t.to_string();
            assert_eq!(s.parse::<Timestamp>(), Ok(t), "{s}");
        }
    }

    #[test]
    fn parse_forms() {
        let t = Timestamp(1_714_566_600_000);
        for s in [
            "2024-05-01T12:30:00Z",
            "2024-05-01T12:30:00.000Z",
            "2024-05-01t12:30:00z",
            "2024-05-01 12:30:00Z",
            "2024-05-01T14:30:00+02:00",
            "2024-05-01T10:00:00-02:30",
            "2024-05-01T12:30:00.0009Z",
        ] {
            assert_eq!(s.parse::<Timestamp>(), Ok(t), "{s}");
        }
        assert_eq!(
            "2024-05-01T12:30:00.5Z".parse::<Timestamp>(),
            Ok(Timestamp(1_714_566_600_500))
        );
        for bad in [
            "",
            "2024",
            "2024-05-01",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:30:00",
            "2024-05-01T12:30:00.Z",
            "2024-05-01T12:30:00Zjunk",
            "24-05-01T12:30:00Z",
            "+999999999999999999-01-01T00:00:00Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
    }

    #[test]
    fn system_time_conversions() {
        let now = SystemTime::now();
        let t = Timestamp::from_system_time(now);
        let back = t.to_system_time().unwrap();
        assert!(now.duration_since(back).unwrap() < Duration::from_millis(1));
        let before = UNIX_EPOCH - Duration::from_micros(1500);
        assert_eq!(Timestamp::from_system_time(before), Timestamp(-2));
        assert_eq!(
            Timestamp(-2).to_system_time(),
            Some(UNIX_EPOCH - Duration::from_millis(2))
        );
        assert!(Timestamp::now() > Timestamp(1_600_000_000_000));
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            Timestamp(i64::MAX).saturating_add(DurationMs(5)),
            Timestamp(i64::MAX)
        );
        assert_eq!(
            Timestamp(0).saturating_sub(DurationMs(u64::MAX)),
            Timestamp(i64::MIN)
        );
        assert_eq!(Timestamp(5).duration_since(Timestamp(10)), DurationMs(0));
        assert_eq!(Timestamp(10).duration_since(Timestamp(5)), DurationMs(5));
        assert_eq!(
            Timestamp(i64::MAX).duration_since(Timestamp(i64::MIN)),
            DurationMs(u64::MAX)
        );
        assert_eq!(
            Timestamp(0).saturating_add(DurationMs(u64::MAX)),
            Timestamp(i64::MAX)
        );
        assert_eq!(Timestamp(5).saturating_sub(DurationMs(7)), Timestamp(-2));
    }

    #[test]
    fn serde_forms() {
        let t = Timestamp(1_714_566_600_250);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2024-05-01T12:30:00.250Z\""
        );
        assert_eq!(
            serde_json::from_str::<Timestamp>("\"2024-05-01T12:30:00.250Z\"").unwrap(),
            t
        );
        assert_eq!(
            serde_json::from_str::<Timestamp>("1714566600250").unwrap(),
            t
        );
        let bytes = postcard::to_allocvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<Timestamp>(&bytes).unwrap(), t);
        assert_eq!(serde_json::to_string(&DurationMs(1500)).unwrap(), "1500");
    }

    #[test]
    fn durations() {
        assert_eq!(DurationMs(0).to_string(), "0s");
        assert_eq!(DurationMs(250).to_string(), "250ms");
        assert_eq!(DurationMs(90_000).to_string(), "1m30s");
        assert_eq!(DurationMs(7_200_000).to_string(), "2h");
        assert_eq!(DurationMs(90_061_001).to_string(), "1d1h1m1s1ms");
        for (s, ms) in [
            ("30", 30_000),
            ("250ms", 250),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1m30s", 90_000),
        ] {
            assert_eq!(s.parse::<DurationMs>(), Ok(DurationMs(ms)), "{s}");
        }
        for bad in ["", "m", "10x", "1.5s", "-1s", "99999999999999999999d"] {
            assert!(bad.parse::<DurationMs>().is_err(), "{bad}");
        }
        for ms in [0, 1, 999, 1000, 61_001, 86_400_000, u64::MAX] {
            let d = DurationMs(ms);
            assert_eq!(d.to_string().parse::<DurationMs>(), Ok(d));
        }
        assert_eq!(DurationMs::from(Duration::from_micros(2500)), DurationMs(2));
        assert_eq!(
            DurationMs::from_mins(5).as_duration(),
            Duration::from_secs(300)
        );
    }
}
