//! Cron expressions with crontab(5) (Vixie cron / pg_cron) semantics, evaluated in an IANA time zone.

use std::fmt;

use chrono::{
    DateTime, Datelike, MappedLocalTime, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CronError {}

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    second: u64,
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    /// Bits 0-6, Sunday = 0 (a 7 in the expression is folded onto 0).
    dow: u64,
    /// Both day fields are restricted, so a day matches when either matches.
    day_or: bool,
    /// The hour field starts with `*`: an interval job, which keeps running through both passes of
    /// a fold; a job pinned to an hour runs only in the first pass, so at most once a day.
    hour_star: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for min, min + 1, ...
    names: &'static [&'static str],
}

impl Field {
    const fn new(name: &'static str, min: u32, max: u32, names: &'static [&'static str]) -> Self {
        Field {
            name,
            min,
            max,
            names,
        }
    }
}

const SECOND: Field = Field::new("second", 0, 59, &[]);
const MINUTE: Field = Field::new("minute", 0, 59, &[]);
const HOUR: Field = Field::new("hour", 0, 23, &[]);
const DOM: Field = Field::new("day-of-month", 1, 31, &[]);
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const MONTH: Field = Field::new("month", 1, 12, &MONTHS);
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
const DOW: Field = Field::new("day-of-week", 0, 7, &DAYS);

/// Folds and gaps reorder wall times against real time over at most their own length: 3 h covers
/// every change in the tz database except date-line moves and settlements of uninhabited places.
const DST_WINDOW: TimeDelta = TimeDelta::hours(3);

/// The Gregorian calendar, weekdays included, repeats every 400 years (146 097 days), so a
/// schedule with no match within one cycle never fires.
const CALENDAR_CYCLE: TimeDelta = TimeDelta::days(146_097);

impl Schedule {
    /// 5 fields (min hour dom month dow) or 6 fields (leading seconds field).
    pub fn parse(expr: &str) -> Result<Schedule, CronError> {
        parse_fields(expr)
            .map_err(|msg| CronError(format!("invalid cron expression {expr:?}: {msg}")))
    }

    /// The first fire time strictly after `after`, with the fields read as wall-clock time in `tz`.
    /// None when the expression can never fire.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let utc = after.naive_utc();
        let local = utc.checked_add_offset(tz.offset_from_utc_datetime(&utc).fix())?;
        // Near an offset change, a wall time up to DST_WINDOW before `local` can still fire after
        // `after` (second pass of a fold, or a gap time pushed forward), and one up to DST_WINDOW
        // past the best hit can map to an earlier instant. Elsewhere the first hit is the answer.
        let window = |t| {
            if offset_changes_near(t, tz) {
                DST_WINDOW
            } else {
                TimeDelta::zero()
            }
        };
        let mut from = local
            .checked_sub_signed(window(after))
            .unwrap_or(NaiveDateTime::MIN);
        let mut until = local
            .checked_add_signed(CALENDAR_CYCLE)
            .unwrap_or(NaiveDateTime::MAX);
        let mut best: Option<DateTime<Utc>> = None;
        while let Some(wall) = self.next_match(from, until) {
            for instant in self.instants(wall, tz).into_iter().flatten() {
                if instant > after && best.is_none_or(|b| instant < b) {
                    best = Some(instant);
                    until = until.min(wall.checked_add_signed(window(instant)).unwrap_or(until));
                }
            }
            match wall.checked_add_signed(TimeDelta::seconds(1)) {
                Some(next) => from = next,
                None => break,
            }
        }
        best
    }

    /// The instants at which the wall time `wall` fires in `tz`.
    fn instants(&self, wall: NaiveDateTime, tz: Tz) -> [Option<DateTime<Utc>>; 2] {
        match tz.from_local_datetime(&wall) {
            MappedLocalTime::Single(t) => [Some(t.with_timezone(&Utc)), None],
            MappedLocalTime::Ambiguous(first, second) => [
                Some(first.with_timezone(&Utc)),
                self.hour_star.then(|| second.with_timezone(&Utc)),
            ],
            MappedLocalTime::None => [gap_instant(wall, tz), None],
        }
    }

    /// The smallest matching wall time in `from..=until`. Steps month, then day, then time of day.
    fn next_match(&self, from: NaiveDateTime, until: NaiveDateTime) -> Option<NaiveDateTime> {
        let mut date = from.date();
        let mut earliest = from.time();
        while date <= until.date() {
            if !has(self.month, date.month()) {
                date = date.with_day(1)?.checked_add_months(Months::new(1))?;
                earliest = NaiveTime::MIN;
                continue;
            }
            if self.day_matches(date) {
                if let Some(time) = self.time_from(earliest) {
                    let found = date.and_time(time);
                    return (found <= until).then_some(found);
                }
            }
            date = date.succ_opt()?;
            earliest = NaiveTime::MIN;
        }
        None
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = has(self.dom, date.day());
        let dow = has(self.dow, date.weekday().num_days_from_sunday());
        if self.day_or {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The smallest matching time of day at or after `earliest`.
    fn time_from(&self, earliest: NaiveTime) -> Option<NaiveTime> {
        let (h0, m0, s0) = (earliest.hour(), earliest.minute(), earliest.second());
        for h in bits_from(self.hour, h0) {
            let m_from = if h == h0 { m0 } else { 0 };
            for m in bits_from(self.minute, m_from) {
                let s_from = if h == h0 && m == m0 { s0 } else { 0 };
                if let Some(s) = bits_from(self.second, s_from).next() {
                    return NaiveTime::from_hms_opt(h, m, s);
                }
            }
        }
        None
    }
}

/// A wall time skipped by a spring-forward gap still fires that day, at the instant it denotes
/// under the offset in force before the gap (02:30 EST = 03:30 EDT).
fn gap_instant(wall: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    // Gaps last at most a day (Samoa 2011), so some wall time within 25 h before exists.
    let before = (1..=100).find_map(|quarter| {
        let earlier = wall.checked_sub_signed(TimeDelta::minutes(15 * quarter))?;
        tz.from_local_datetime(&earlier).latest()
    })?;
    let utc = wall.checked_sub_offset(before.offset().fix())?;
    Some(Utc.from_utc_datetime(&utc))
}

/// Whether the UTC offset differs DST_WINDOW before and after `t` (no two changes in the tz
/// database are less than 6 h apart, so an offset change near `t` cannot cancel out).
fn offset_changes_near(t: DateTime<Utc>, tz: Tz) -> bool {
    let offset =
        |t: Option<DateTime<Utc>>| t.map(|t| tz.offset_from_utc_datetime(&t.naive_utc()).fix());
    offset(t.checked_sub_signed(DST_WINDOW)) != offset(t.checked_add_signed(DST_WINDOW))
}

fn has(mask: u64, value: u32) -> bool {
    mask >> value & 1 == 1
}

/// The set bits of `mask` that are >= `from` (`from` < 64), ascending.
fn bits_from(mask: u64, from: u32) -> impl Iterator<Item = u32> {
    (from..64).filter(move |&b| has(mask, b))
}

/// An IANA time zone name such as "America/New_York" or "UTC".
pub fn parse_timezone(name: &str) -> Result<Tz, CronError> {
    name.parse::<Tz>()
        .map_err(|_| CronError(format!("unknown time zone {name:?}")))
}

fn parse_fields(expr: &str) -> Result<Schedule, String> {
    let mut fields: Vec<&str> = expr.split_ascii_whitespace().collect();
    if let Some(nick) = fields.first().copied().filter(|f| f.starts_with('@')) {
        let expansion = match nick {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            "@reboot" => return Err("@reboot is not supported".into()),
            _ => return Err(format!("unknown nickname {nick:?}")),
        };
        if fields.len() > 1 {
            return Err(format!("unexpected fields after {nick}"));
        }
        fields = expansion.split(' ').collect();
    }
    let (second, rest) = match fields.len() {
        0 => return Err("empty expression".into()),
        5 => ("0", &fields[..]),
        6 => (fields[0], &fields[1..]),
        n => return Err(format!("expected 5 or 6 fields, found {n}")),
    };
    let [minute, hour, dom, month, dow] = [rest[0], rest[1], rest[2], rest[3], rest[4]];
    Ok(Schedule {
        second: parse_field(second, &SECOND)?,
        minute: parse_field(minute, &MINUTE)?,
        hour: parse_field(hour, &HOUR)?,
        dom: parse_field(dom, &DOM)?,
        month: parse_field(month, &MONTH)?,
        dow: match parse_field(dow, &DOW)? {
            mask if has(mask, 7) => (mask | 1) & !(1 << 7),
            mask => mask,
        },
        day_or: !dom.starts_with('*') && !dow.starts_with('*'),
        hour_star: hour.starts_with('*'),
    })
}

/// One field: a comma list of `*`, `a`, `a-b`, each optionally followed by `/step`.
fn parse_field(text: &str, field: &Field) -> Result<u64, String> {
    let mut mask = 0;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(format!("empty element in {} field {text:?}", field.name));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(step, item, field)?)),
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (lo, hi) = (parse_value(a, item, field)?, parse_value(b, item, field)?);
            if lo > hi {
                return Err(format!(
                    "{} range {item:?} has start greater than end",
                    field.name
                ));
            }
            (lo, hi)
        } else {
            let value = parse_value(range, item, field)?;
            // `a/n` means `a-max/n`.
            (value, if step.is_some() { field.max } else { value })
        };
        for value in (lo..=hi).step_by(step.unwrap_or(1)) {
            mask |= 1 << value;
        }
    }
    Ok(mask)
}

fn parse_value(token: &str, item: &str, field: &Field) -> Result<u32, String> {
    let name = field.name;
    if token.is_empty() {
        return Err(format!("missing {name} value in {item:?}"));
    }
    if let Some(index) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(token))
    {
        return Ok(field.min + index as u32);
    }
    // Checked first because `parse` would also accept a leading `+`.
    if !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid {name} value {token:?}"));
    }
    match token.parse::<u32>() {
        Ok(value) if (field.min..=field.max).contains(&value) => Ok(value),
        _ => Err(format!(
            "{name} value {token} out of range {}-{}",
            field.min, field.max
        )),
    }
}

fn parse_step(token: &str, item: &str, field: &Field) -> Result<usize, String> {
    let name = field.name;
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid {name} step {token:?} in {item:?}"));
    }
    match token.parse::<u32>() {
        Ok(0) => Err(format!("{name} step must be at least 1 in {item:?}")),
        Ok(step) => Ok(step as usize),
        Err(_) => Err(format!("{name} step {token} too large in {item:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Europe::Berlin, UTC};
    use std::time::{Duration, Instant};

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn sched(expr: &str) -> Schedule {
        Schedule::parse(expr).unwrap()
    }

    fn next(expr: &str, after: &str, tz: Tz) -> DateTime<Utc> {
        sched(expr).next_after(utc(after), tz).unwrap()
    }

    /// All fire times in (from, to).
    fn fires(expr: &str, tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let s = sched(expr);
        std::iter::successors(s.next_after(from, tz), |&t| s.next_after(t, tz))
            .take_while(|&t| t < to)
            .collect()
    }

    fn bits(mask: u64) -> Vec<u32> {
        bits_from(mask, 0).collect()
    }

    fn matches(s: &Schedule, t: NaiveDateTime) -> bool {
        has(s.month, t.month())
            && s.day_matches(t.date())
            && has(s.hour, t.hour())
            && has(s.minute, t.minute())
            && has(s.second, t.second())
    }

    #[test]
    fn ranges_steps_and_lists() {
        assert_eq!(bits(sched("*/15 * * * *").minute), [0, 15, 30, 45]);
        assert_eq!(bits(sched("5-20/5 * * * *").minute), [5, 10, 15, 20]);
        assert_eq!(bits(sched("7/20 * * * *").minute), [7, 27, 47]);
        assert_eq!(
            bits(sched("1,3-5,50-59/4 * * * *").minute),
            [1, 3, 4, 5, 50, 54, 58]
        );
        assert_eq!(bits(sched("0 */90 * * *").hour), [0]);
        assert_eq!(bits(sched("0 0 * * *").minute), [0]);
        assert_eq!(bits(sched("0 0 */10 * *").dom), [1, 11, 21, 31]);
        assert_eq!(bits(sched("0 0 * */5 *").month), [1, 6, 11]);
    }

    #[test]
    fn names_are_case_insensitive() {
        let s = sched("0 0 * jan,Mar-MAY MON-FRI");
        assert_eq!(bits(s.month), [1, 3, 4, 5]);
        assert_eq!(bits(s.dow), [1, 2, 3, 4, 5]);
        assert_eq!(sched("0 0 * DEC sat"), sched("0 0 * 12 6"));
    }

    #[test]
    fn sunday_is_0_and_7() {
        assert_eq!(sched("0 0 * * 0"), sched("0 0 * * 7"));
        assert_eq!(bits(sched("0 0 * * 5-7").dow), [0, 5, 6]);
        assert_eq!(bits(sched("0 0 * * */2").dow), [0, 2, 4, 6]);
        // 2024-01-01 is a Monday.
        assert_eq!(
            next("0 0 * * 7", "2024-01-01T00:00:00Z", UTC),
            utc("2024-01-07T00:00:00Z")
        );
    }

    #[test]
    fn restricted_dom_and_dow_match_either() {
        let got = fires(
            "0 0 1,15 * mon",
            UTC,
            utc("2024-01-01T00:00:00Z"),
            utc("2024-02-06T00:00:00Z"),
        );
        let want = [
            "2024-01-08",
            "2024-01-15",
            "2024-01-22",
            "2024-01-29",
            "2024-02-01",
            "2024-02-05",
        ];
        assert_eq!(got, want.map(|d| utc(&format!("{d}T00:00:00Z"))));
    }

    #[test]
    fn star_prefixed_day_field_requires_both() {
        // Mondays that fall on odd days of the month.
        let got = fires(
            "0 0 */2 * mon",
            UTC,
            utc("2024-01-01T00:00:00Z"),
            utc("2024-03-12T00:00:00Z"),
        );
        let want = [
            "2024-01-15",
            "2024-01-29",
            "2024-02-05",
            "2024-02-19",
            "2024-03-11",
        ];
        assert_eq!(got, want.map(|d| utc(&format!("{d}T00:00:00Z"))));
        // Restricted day-of-month with `*` day-of-week: only the 1st.
        let got = fires(
            "0 0 1 * *",
            UTC,
            utc("2024-01-01T00:00:00Z"),
            utc("2024-04-01T00:00:00Z"),
        );
        assert_eq!(
            got,
            [utc("2024-02-01T00:00:00Z"), utc("2024-03-01T00:00:00Z")]
        );
    }

    #[test]
    fn nicknames() {
        assert_eq!(sched("@yearly"), sched("0 0 1 1 *"));
        assert_eq!(sched("@annually"), sched("0 0 1 1 *"));
        assert_eq!(sched("@monthly"), sched("0 0 1 * *"));
        assert_eq!(sched("@weekly"), sched("0 0 * * 0"));
        assert_eq!(sched(" @daily\t"), sched("0 0 * * *"));
        assert_eq!(sched("@midnight"), sched("0 0 * * *"));
        assert_eq!(sched("@hourly"), sched("0 * * * *"));
        assert_eq!(
            next("@yearly", "2024-06-01T00:00:00Z", UTC),
            utc("2025-01-01T00:00:00Z")
        );
    }

    #[test]
    fn seconds_field() {
        let s = sched("*/20 * * * * *");
        assert_eq!(
            s.next_after(utc("2024-01-01T12:00:00Z"), UTC),
            Some(utc("2024-01-01T12:00:20Z"))
        );
        assert_eq!(
            s.next_after(utc("2024-01-01T12:00:59Z"), UTC),
            Some(utc("2024-01-01T12:01:00Z"))
        );
        assert_eq!(
            next("30 15 10 * * *", "2024-01-01T10:15:30Z", UTC),
            utc("2024-01-02T10:15:30Z")
        );
        // Sub-second parts of `after` never produce an earlier fire.
        assert_eq!(
            next("* * * * *", "2024-01-01T12:00:00.5Z", UTC),
            utc("2024-01-01T12:01:00Z")
        );
    }

    #[test]
    fn strictly_after() {
        assert_eq!(
            next("*/10 * * * *", "2024-01-01T12:00:00Z", UTC),
            utc("2024-01-01T12:10:00Z")
        );
        assert_eq!(
            next("*/10 * * * *", "2024-01-01T12:03:17Z", UTC),
            utc("2024-01-01T12:10:00Z")
        );
        assert_eq!(
            next("*/10 * * * *", "2024-12-31T23:55:00Z", UTC),
            utc("2025-01-01T00:00:00Z")
        );
        let got = fires(
            "*/10 * * * *",
            UTC,
            utc("2024-01-01T00:00:00Z"),
            utc("2024-01-03T00:00:00Z"),
        );
        assert_eq!(got.len(), 2 * 144 - 1);
        assert!(got
            .windows(2)
            .all(|w| w[1] - w[0] == TimeDelta::minutes(10)));
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("61 * * * *", "minute value 61 out of range 0-59"),
            ("* 24 * * *", "hour value 24 out of range 0-23"),
            ("* * 0 * *", "day-of-month value 0 out of range 1-31"),
            ("* * * 13 *", "month value 13 out of range 1-12"),
            ("* * * * 8", "day-of-week value 8 out of range 0-7"),
            ("60 * * * * *", "second value 60 out of range 0-59"),
            ("*/0 * * * *", "minute step must be at least 1 in \"*/0\""),
            ("*/x * * * *", "invalid minute step \"x\""),
            ("1/ * * * *", "invalid minute step \"\""),
            ("1/2/3 * * * *", "invalid minute step \"2/3\""),
            (
                "*/99999999999999999999 * * * *",
                "step 99999999999999999999 too large",
            ),
            (
                "20-5 * * * *",
                "minute range \"20-5\" has start greater than end",
            ),
            ("0 0 * * fri-sun", "range \"fri-sun\""),
            ("* * * *", "expected 5 or 6 fields, found 4"),
            ("* * * * * * *", "expected 5 or 6 fields, found 7"),
            ("", "empty expression"),
            (" \t ", "empty expression"),
            ("hello world", "expected 5 or 6 fields, found 2"),
            ("a b c d e", "invalid minute value \"a\""),
            ("jan * * * *", "invalid minute value \"jan\""),
            ("* * * * monday", "invalid day-of-week value \"monday\""),
            ("1,,2 * * * *", "empty element in minute field \"1,,2\""),
            ("1, * * * *", "empty element"),
            ("-5 * * * *", "missing minute value in \"-5\""),
            ("1- * * * *", "missing minute value in \"1-\""),
            ("+5 * * * *", "invalid minute value \"+5\""),
            ("*-5 * * * *", "invalid minute value \"*\""),
            ("1-2-3 * * * *", "invalid minute value \"2-3\""),
            ("@reboot", "@reboot is not supported"),
            ("@fortnightly", "unknown nickname \"@fortnightly\""),
            ("@daily 0", "unexpected fields after @daily"),
            (
                "99999999999999999999 * * * *",
                "minute value 99999999999999999999 out of range",
            ),
            (
                "0 0 99999999999999999999999999 * *",
                "day-of-month value 99999999999999999999999999",
            ),
            ("５ * * * *", "invalid minute value \"５\""),
            ("0 0 * * mön", "invalid day-of-week value \"mön\""),
            (
                "0 0 * * 1\u{a0}2",
                "invalid day-of-week value \"1\\u{a0}2\"",
            ),
        ];
        for (expr, want) in cases {
            let err = Schedule::parse(expr).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid cron expression {expr:?}: ")),
                "{err}"
            );
            assert!(err.contains(want), "{expr:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn time_zone_names() {
        assert_eq!(parse_timezone("America/New_York"), Ok(New_York));
        assert_eq!(parse_timezone("UTC"), Ok(UTC));
        let err = parse_timezone("Mars/Olympus_Mons").unwrap_err();
        assert_eq!(err.to_string(), "unknown time zone \"Mars/Olympus_Mons\"");
        assert!(parse_timezone("").is_err());
    }

    #[test]
    fn local_time_kept_across_dst_changes() {
        let spring = fires(
            "0 9 * * *",
            New_York,
            utc("2024-03-09T00:00:00Z"),
            utc("2024-03-12T00:00:00Z"),
        );
        let want = [
            "2024-03-09T14:00:00Z",
            "2024-03-10T13:00:00Z",
            "2024-03-11T13:00:00Z",
        ];
        assert_eq!(spring, want.map(utc));
        let fall = fires(
            "0 9 * * *",
            New_York,
            utc("2024-11-02T00:00:00Z"),
            utc("2024-11-05T00:00:00Z"),
        );
        let want = [
            "2024-11-02T13:00:00Z",
            "2024-11-03T14:00:00Z",
            "2024-11-04T14:00:00Z",
        ];
        assert_eq!(fall, want.map(utc));
    }

    #[test]
    fn skipped_time_fires_once_with_the_offset_before_the_gap() {
        let got = fires(
            "30 2 * * *",
            New_York,
            utc("2024-03-09T12:00:00Z"),
            utc("2024-03-12T00:00:00Z"),
        );
        assert_eq!(
            got,
            ["2024-03-10T07:30:00Z", "2024-03-11T06:30:00Z"].map(utc)
        );
        // 07:30 UTC is still ahead when `after` is already past the gap in wall time (03:10 EDT).
        assert_eq!(
            next("30 2 * * *", "2024-03-10T07:10:00Z", New_York),
            utc("2024-03-10T07:30:00Z")
        );
        // 02:00 and 03:00 are the same instant that day, as are 02:30 and 03:30: one fire each.
        let got = fires(
            "0,30 2,3 * * *",
            New_York,
            utc("2024-03-10T06:00:00Z"),
            utc("2024-03-11T00:00:00Z"),
        );
        assert_eq!(
            got,
            ["2024-03-10T07:00:00Z", "2024-03-10T07:30:00Z"].map(utc)
        );
    }

    #[test]
    fn repeated_time_fires_once_when_hour_is_restricted() {
        let got = fires(
            "30 1 * * *",
            New_York,
            utc("2024-11-02T12:00:00Z"),
            utc("2024-11-05T00:00:00Z"),
        );
        assert_eq!(
            got,
            ["2024-11-03T05:30:00Z", "2024-11-04T06:30:00Z"].map(utc)
        );
    }

    #[test]
    fn interval_jobs_run_through_the_fold() {
        let got = fires(
            "*/10 * * * *",
            New_York,
            utc("2024-11-03T04:55:00Z"),
            utc("2024-11-03T07:05:00Z"),
        );
        assert_eq!(got.first(), Some(&utc("2024-11-03T05:00:00Z")));
        assert_eq!(got.last(), Some(&utc("2024-11-03T07:00:00Z")));
        assert_eq!(got.len(), 13);
        assert!(got
            .windows(2)
            .all(|w| w[1] - w[0] == TimeDelta::minutes(10)));
        // From inside the first pass, 01:10 EST (second pass) is next for an hourly job.
        assert_eq!(
            next("10 * * * *", "2024-11-03T05:30:00Z", New_York),
            utc("2024-11-03T06:10:00Z")
        );
        assert_eq!(
            next("10 1 * * *", "2024-11-03T05:30:00Z", New_York),
            utc("2024-11-04T06:10:00Z")
        );
    }

    #[test]
    fn rare_and_impossible_dates() {
        assert_eq!(
            next("0 0 29 2 *", "2025-01-01T00:00:00Z", UTC),
            utc("2028-02-29T00:00:00Z")
        );
        // 2100 is not a leap year.
        assert_eq!(
            next("0 0 29 2 *", "2096-03-01T00:00:00Z", UTC),
            utc("2104-02-29T00:00:00Z")
        );
        // Feb 29 on a Sunday: 2004, 2032, 2060, 2088, then 2128 (2100 is skipped).
        assert_eq!(
            next("0 0 29 2 */7", "2088-03-01T00:00:00Z", UTC),
            utc("2128-02-29T00:00:00Z")
        );
        let start = Instant::now();
        assert_eq!(
            sched("0 0 30 2 *").next_after(utc("2025-01-01T00:00:00Z"), New_York),
            None
        );
        assert_eq!(
            sched("0 0 31 4,6,9,11 *").next_after(utc("2025-01-01T00:00:00Z"), UTC),
            None
        );
        assert_eq!(
            sched("0 0 30 2 */7").next_after(utc("2025-01-01T00:00:00Z"), UTC),
            None
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn search_is_fast() {
        let cases = [
            "@yearly",
            "0 0 29 2 *",
            "* * * * * *",
            "*/10 * * * *",
            "0 0 1,15 * mon",
        ];
        let start = Instant::now();
        for expr in cases {
            let s = sched(expr);
            let mut t = utc("2024-11-03T04:00:00Z");
            for _ in 0..10 {
                t = s.next_after(t, New_York).unwrap();
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        for tz in [
            UTC,
            New_York,
            chrono_tz::Pacific::Kiritimati,
            chrono_tz::Pacific::Niue,
        ] {
            assert_eq!(
                sched("* * * * *").next_after(DateTime::<Utc>::MAX_UTC, tz),
                None
            );
            let _ = sched("0 0 29 2 *").next_after(DateTime::<Utc>::MIN_UTC, tz);
            let _ =
                sched("0 0 29 2 *").next_after(DateTime::<Utc>::MAX_UTC - TimeDelta::days(3), tz);
        }
    }

    #[test]
    fn random_input_never_panics() {
        let alphabet: Vec<char> = "0123456789*/-,abcdefghijklmnopqrstuvwxyz @\téü５日\u{a0}😀"
            .chars()
            .collect();
        let valid = [
            "*/7 3-5 1,15 jan-mar mon-fri",
            "0 */2 * * *",
            "5/15 0 0 1-7 * sun",
            "@daily",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut parsed = 0;
        for i in 0..4000 {
            let mut input: Vec<char> = if i % 2 == 0 {
                (0..rand(30))
                    .map(|_| alphabet[rand(alphabet.len())])
                    .collect()
            } else {
                valid[rand(valid.len())].chars().collect()
            };
            // Mutate a few characters so that most inputs get past the field split.
            for _ in 0..rand(3) {
                let at = rand(input.len() + 1);
                match rand(3) {
                    0 if at < input.len() => drop(input.remove(at)),
                    1 if at < input.len() => input[at] = alphabet[rand(alphabet.len())],
                    _ => input.insert(at, alphabet[rand(alphabet.len())]),
                }
            }
            let input: String = input.into_iter().collect();
            if let Ok(s) = Schedule::parse(&input) {
                parsed += 1;
                let after = utc("2024-11-03T05:30:00Z");
                assert!(
                    s.next_after(after, New_York).is_none_or(|t| t > after),
                    "{input:?}"
                );
            }
        }
        assert!(parsed > 200, "only {parsed} inputs parsed");
    }

    /// Every minute in (start, start + days) whose wall time in `tz` matches.
    fn scan(s: &Schedule, tz: Tz, start: DateTime<Utc>, days: i64) -> Vec<DateTime<Utc>> {
        let end = start + TimeDelta::days(days);
        (1..)
            .map(|m| start.with_second(0).unwrap() + TimeDelta::minutes(m))
            .take_while(|&t| t < end)
            .filter(|t| matches(s, t.with_timezone(&tz).naive_local()))
            .collect()
    }

    #[test]
    fn matches_brute_force_scan() {
        let exprs = ["*/7 3-5 * * *", "0 0 1,15 * mon", "15 10 * jan,jul sun"];
        let starts = [
            "2023-12-20T00:00:00Z",
            "2024-03-25T11:11:11Z",
            "2024-06-25T00:00:00Z",
            "2024-10-20T02:59:00Z",
        ];
        let mut compared = 0;
        for tz in [UTC, Berlin] {
            for expr in exprs {
                for start in starts.map(utc) {
                    let want = scan(&sched(expr), tz, start, 45);
                    let got = fires(expr, tz, start, start + TimeDelta::days(45));
                    assert_eq!(got, want, "{expr} in {tz} from {start}");
                    compared += want.len();
                }
            }
        }
        assert!(compared > 1000, "only {compared} fire times compared");
    }

    #[test]
    fn interval_jobs_match_brute_force_scan_across_dst() {
        // With `*` hours, gap times land on matching wall times and folds run twice, so the fire
        // times are exactly the instants whose wall time matches.
        for expr in ["*/7 * * * *", "0 * * * *", "59 * * * *", "*/20 * 3,10 * *"] {
            for start in ["2024-03-09T20:00:00Z", "2024-11-02T20:00:00Z"].map(utc) {
                let want = scan(&sched(expr), New_York, start, 2);
                assert!(!want.is_empty());
                let got = fires(expr, New_York, start, start + TimeDelta::days(2));
                assert_eq!(got, want, "{expr} from {start}");
            }
        }
    }
}
