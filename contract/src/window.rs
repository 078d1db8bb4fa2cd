//! `pod-reloaded.io/restart-window`: when restarts may start, e.g.
//! `Mon-Fri 02:00-05:00 Europe/Berlin; Sat,Sun 00:00-06:00`. Each window is days
//! (`Mon`..`Sun`, single or ranged, comma-separated), a 24 h time range (one that ends
//! before it starts runs past midnight into the next day) and an IANA zone (default UTC).
//! The zone database is bundled, so zones work in a scratch image.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

const DAYS: [(&str, Weekday); 7] = [
    ("Mon", Weekday::Monday),
    ("Tue", Weekday::Tuesday),
    ("Wed", Weekday::Wednesday),
    ("Thu", Weekday::Thursday),
    ("Fri", Weekday::Friday),
    ("Sat", Weekday::Saturday),
    ("Sun", Weekday::Sunday),
];

#[derive(Clone, Debug)]
struct Window {
    /// Indexed Monday = 0.
    days: [bool; 7],
    start: Time,
    /// `None` means the end of the day (`24:00`).
    end: Option<Time>,
    zone: TimeZone,
}

/// One or more windows; a restart may start while any of them is open.
#[derive(Clone, Debug)]
pub struct RestartWindows(Vec<Window>);

fn day_index(day: Weekday) -> usize {
    day.to_monday_zero_offset() as usize
}

fn parse_day(text: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|(name, _)| name.eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("{text:?} is not a day (Mon..Sun)"))
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once('-') {
            Some((from, to)) => {
                let (from, to) = (parse_day(from)?, parse_day(to)?);
                let mut day = from;
                loop {
                    days[day] = true;
                    if day == to {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
            None => days[parse_day(part)?] = true,
        }
    }
    Ok(days)
}

fn parse_time(text: &str) -> Result<Option<Time>, String> {
    let invalid = || format!("{text:?} is not a 24 h time HH:MM");
    let (hour, minute) = text.split_once(':').ok_or_else(invalid)?;
    if hour.len() != 2 || minute.len() != 2 {
        return Err(invalid());
    }
    let hour: i8 = hour.parse().map_err(|_| invalid())?;
    let minute: i8 = minute.parse().map_err(|_| invalid())?;
    if hour == 24 && minute == 0 {
        return Ok(None);
    }
    Time::new(hour, minute, 0, 0)
        .map(Some)
        .map_err(|_| invalid())
}

impl Window {
    fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let (days, range, zone) = match parts.as_slice() {
            [days, range] => (*days, *range, None),
            [days, range, zone] => (*days, *range, Some(*zone)),
            _ => return Err(format!("{text:?} is not \"<days> <HH:MM>-<HH:MM> [zone]\"")),
        };
        let (start, end) = range
            .split_once('-')
            .ok_or_else(|| format!("{range:?} is not HH:MM-HH:MM"))?;
        let start = parse_time(start)?.ok_or("a window cannot start at 24:00")?;
        let end = parse_time(end)?;
        if end == Some(start) {
            return Err(format!("{range:?} is empty"));
        }
        let zone = match zone {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| format!("{name:?} is not an IANA time zone"))?
            }
        };
        Ok(Self {
            days: parse_days(days)?,
            start,
            end,
            zone,
        })
    }

    fn crosses_midnight(&self) -> bool {
        self.end.is_some_and(|end| end < self.start)
    }

    fn contains(&self, now: &Zoned) -> bool {
        let time = now.time();
        let today = day_index(now.weekday());
        let yesterday = (today + 6) % 7;
        let before_end = |time: Time| self.end.is_none_or(|end| time < end);
        if self.crosses_midnight() {
            (self.days[today] && time >= self.start) || (self.days[yesterday] && before_end(time))
        } else {
            self.days[today] && time >= self.start && before_end(time)
        }
    }

    /// The next time this window opens after `now`.
    fn next_start(&self, now: Timestamp) -> Option<Timestamp> {
        let local = now.to_zoned(self.zone.clone());
        (0..8).find_map(|ahead| {
            let date = local
                .date()
                .checked_add(jiff::Span::new().days(ahead))
                .ok()?;
            if !self.days[day_index(date.weekday())] {
                return None;
            }
            let start = date
                .to_datetime(self.start)
                .to_zoned(self.zone.clone())
                .ok()?;
            (start.timestamp() > now).then(|| start.timestamp())
        })
    }
}

impl RestartWindows {
    /// `;`-separated windows.
    pub fn parse(text: &str) -> Result<Self, String> {
        let windows = text
            .split(';')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(Window::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if windows.is_empty() {
            return Err(format!("{text:?} names no window"));
        }
        Ok(Self(windows))
    }

    /// Is a restart allowed to start at `now`?
    pub fn contains(&self, now: Timestamp) -> bool {
        self.0
            .iter()
            .any(|w| w.contains(&now.to_zoned(w.zone.clone())))
    }

    /// When the next window opens (`None` if never, which parsing rules out).
    pub fn next_start(&self, now: Timestamp) -> Option<Timestamp> {
        self.0.iter().filter_map(|w| w.next_start(now)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn weekday_nights_in_berlin() {
        let windows = RestartWindows::parse("Mon-Fri 02:00-05:00 Europe/Berlin").unwrap();
        // Tuesday 2026-11-24 03:00 in Berlin (UTC+1) is 02:00 UTC.
        assert!(windows.contains(at("2026-11-24T02:00:00Z")));
        assert!(
            !windows.contains(at("2026-11-24T00:59:59Z")),
            "01:59 Berlin"
        );
        assert!(
            !windows.contains(at("2026-11-24T04:00:00Z")),
            "05:00 Berlin is the end"
        );
        // Saturday.
        assert!(!windows.contains(at("2026-11-28T02:00:00Z")));
        assert_eq!(
            windows.next_start(at("2026-11-28T02:00:00Z")),
            Some(at("2026-11-30T01:00:00Z")),
            "Monday 02:00 Berlin"
        );
    }

    #[test]
    fn daylight_saving_time_moves_the_window_in_utc() {
        let windows = RestartWindows::parse("Sun 02:30-04:00 Europe/Berlin").unwrap();
        // 2026-03-29: clocks go from 02:00 to 03:00 in Berlin; 02:30 does not exist and
        // is read in the old offset: 03:30 CEST = 01:30 UTC.
        assert_eq!(
            windows.next_start(at("2026-03-28T12:00:00Z")),
            Some(at("2026-03-29T01:30:00Z")),
            "the gap's time is taken as in the old offset, like cron"
        );
        assert!(windows.contains(at("2026-03-29T01:30:00Z")), "03:30 CEST");
        // In winter the same window is an hour later in UTC.
        assert!(windows.contains(at("2026-11-29T01:30:00Z")), "02:30 CET");
        assert!(!windows.contains(at("2026-11-29T00:30:00Z")), "01:30 CET");
    }

    #[test]
    fn windows_past_midnight_and_several_windows() {
        let windows = RestartWindows::parse("Fri 22:00-02:00; Sun 10:00-24:00").unwrap();
        assert!(windows.contains(at("2026-11-27T23:00:00Z")), "Friday night");
        assert!(
            windows.contains(at("2026-11-28T01:59:00Z")),
            "Saturday early"
        );
        assert!(!windows.contains(at("2026-11-28T02:00:00Z")));
        assert!(
            windows.contains(at("2026-11-29T23:59:00Z")),
            "Sunday until 24:00"
        );
        assert!(!windows.contains(at("2026-11-30T00:00:00Z")));
        let weekend = RestartWindows::parse("Sat,Sun 00:00-24:00 UTC").unwrap();
        assert!(weekend.contains(at("2026-11-28T12:00:00Z")));
        let wrapping = RestartWindows::parse("Sat-Mon 01:00-02:00").unwrap();
        assert!(wrapping.contains(at("2026-11-30T01:30:00Z")), "Monday");
        assert!(!wrapping.contains(at("2026-11-25T01:30:00Z")), "Wednesday");
    }

    #[test]
    fn bad_windows_say_why() {
        for (text, why) in [
            ("", "no window"),
            ("Mon-Fri", "is not"),
            ("Mon-Xyz 02:00-05:00", "not a day"),
            ("Mon 2:00-05:00", "24 h time"),
            ("Mon 02:00-25:00", "24 h time"),
            ("Mon 02:00-02:00", "empty"),
            ("Mon 02:00-05:00 Mars/Olympus", "time zone"),
            ("Mon 02:00-05:00 UTC extra", "is not"),
        ] {
            let error = RestartWindows::parse(text).unwrap_err();
            assert!(error.contains(why), "{text:?}: {error}");
        }
    }
}
