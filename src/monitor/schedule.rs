//! Schedules (quiet hours): the weekly windows in which a recipient or a
//! channel takes alerts, in a named time zone of the tz database. Outside
//! them a destination gets nothing at that moment; its alerts wait, and go
//! out together when its next window opens.
//!
//! Windows are minutes of the local day: `start` inclusive, `end` exclusive
//! (`24:00` allowed). A window whose end is not after its start runs across
//! midnight: it starts on its days and ends on the day after. A start that
//! a DST change skips opens at the first local minute after the gap that the
//! window covers; a start that occurs twice (the change back) opens at the
//! first occurrence.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The zone a schedule without one uses.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Shanghai";

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The clock schedules are read by: the real time, unless it was set (the
/// tests set it to a moment of their choosing; it runs on from there).
#[derive(Clone, Debug, Default)]
pub struct Clock(Arc<AtomicI64>);

impl Clock {
    pub fn read(&self) -> Reading {
        let offset = Duration::milliseconds(self.0.load(Ordering::Relaxed));
        Reading {
            now: Utc::now() + offset,
            offset,
        }
    }

    /// Makes it read `at` now.
    pub fn set(&self, at: DateTime<Utc>) {
        let offset = (at - Utc::now()).num_milliseconds();
        self.0.store(offset, Ordering::Relaxed);
    }
}

/// One reading of a [`Clock`]: one moment every destination of a batch is
/// judged at.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub now: DateTime<Utc>,
    offset: Duration,
}

impl Reading {
    /// The real moment at which the clock reads `at`.
    pub fn real(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        at - self.offset
    }
}

/// A schedule as stored and as the API takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    /// A tz database name (`Asia/Shanghai`, `Europe/Berlin`).
    #[serde(default = "default_zone")]
    pub time_zone: String,
    pub windows: Vec<WindowSpec>,
}

/// One weekly window as stored: days `mon`…`sun`, times `HH:MM`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

fn default_zone() -> String {
    DEFAULT_TIME_ZONE.to_owned()
}

/// A field of a schedule that cannot be used, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct ScheduleError {
    /// Relative to the schedule (`time_zone`, `windows[0].start`).
    pub field: String,
    pub message: String,
}

impl ScheduleError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A schedule ready to be asked whether it is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    zone: Tz,
    windows: Vec<Window>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    /// Bit `d` for weekday `d` (0 = Monday).
    days: u8,
    /// Minutes of the day.
    start: u32,
    end: u32,
}

impl Window {
    fn on(&self, day: u32) -> bool {
        self.days & (1 << day) != 0
    }

    fn crosses_midnight(&self) -> bool {
        self.end <= self.start
    }

    /// Whether it covers `minute` of weekday `day`.
    fn covers(&self, day: u32, minute: u32) -> bool {
        if self.crosses_midnight() {
            (self.on(day) && minute >= self.start) || (self.on((day + 6) % 7) && minute < self.end)
        } else {
            self.on(day) && self.start <= minute && minute < self.end
        }
    }
}

/// `HH:MM` as minutes of the day; `24:00` only where `end` is allowed.
fn minutes(text: &str, end: bool) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if end => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl Schedule {
    /// Checks a schedule; errors name the field.
    pub fn new(spec: &ScheduleSpec) -> Result<Self, ScheduleError> {
        let zone: Tz = spec.time_zone.parse().map_err(|_| {
            ScheduleError::new(
                "time_zone",
                format!(
                    "{:?} is not a time zone of the tz database (e.g. Asia/Shanghai)",
                    spec.time_zone
                ),
            )
        })?;
        if spec.windows.is_empty() {
            return Err(ScheduleError::new(
                "windows",
                "at least one window is needed (leave the schedule out to take alerts at any time)",
            ));
        }
        let mut windows = Vec::with_capacity(spec.windows.len());
        for (i, w) in spec.windows.iter().enumerate() {
            let field = |name: &str| format!("windows[{i}].{name}");
            if w.days.is_empty() {
                return Err(ScheduleError::new(
                    field("days"),
                    "at least one day is needed",
                ));
            }
            let mut days = 0u8;
            for (j, d) in w.days.iter().enumerate() {
                let day = DAYS
                    .iter()
                    .position(|x| x.eq_ignore_ascii_case(d))
                    .ok_or_else(|| {
                        ScheduleError::new(
                            format!("windows[{i}].days[{j}]"),
                            format!("{d:?} is not one of {}", DAYS.join(", ")),
                        )
                    })?;
                days |= 1 << day;
            }
            let start = minutes(&w.start, false).ok_or_else(|| {
                ScheduleError::new(field("start"), "a time HH:MM from 00:00 to 23:59")
            })?;
            let end = minutes(&w.end, true).ok_or_else(|| {
                ScheduleError::new(field("end"), "a time HH:MM from 00:00 to 24:00")
            })?;
            if start == end {
                return Err(ScheduleError::new(
                    field("end"),
                    "the same as start; for a whole day use 00:00 to 24:00",
                ));
            }
            windows.push(Window { days, start, end });
        }
        Ok(Self { zone, windows })
    }

    /// Reads a stored schedule; `None` for one that cannot be used.
    pub fn from_json(value: serde_json::Value) -> Option<Self> {
        serde_json::from_value::<ScheduleSpec>(value)
            .ok()
            .and_then(|spec| Self::new(&spec).ok())
    }

    /// Whether the destination takes alerts at `at`.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        let local = at.with_timezone(&self.zone);
        let day = local.weekday().num_days_from_monday();
        let minute = local.hour() * 60 + local.minute();
        self.windows.iter().any(|w| w.covers(day, minute))
    }

    /// When the destination next takes alerts: `at` itself when open now.
    pub fn next_opening(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        if self.is_open(at) {
            return at;
        }
        let today = at.with_timezone(&self.zone).date_naive();
        let mut opening: Option<DateTime<Utc>> = None;
        // A week and a day covers every window's next start; a second week
        // covers a start a DST change skipped.
        for offset in 0..15 {
            let date = today + Duration::days(offset);
            let day = date.weekday().num_days_from_monday();
            for w in self.windows.iter().filter(|w| w.on(day)) {
                let Some(start) = self.first_instant(date, w) else {
                    continue;
                };
                if start > at && !opening.is_some_and(|o| o <= start) {
                    opening = Some(start);
                }
            }
            if opening.is_some() {
                break;
            }
        }
        // Never open (cannot be built so): look again in a day.
        opening.unwrap_or(at + Duration::days(1))
    }

    /// The first instant of `date`'s occurrence of window `w`, if the day
    /// has one: its start, or after a DST gap the first minute of the
    /// window that exists.
    fn first_instant(&self, date: NaiveDate, w: &Window) -> Option<DateTime<Utc>> {
        let last = if w.crosses_midnight() { 1440 } else { w.end };
        (w.start..last).find_map(|minute| {
            let time = chrono::NaiveTime::from_num_seconds_from_midnight_opt(minute * 60, 0)?;
            match self.zone.from_local_datetime(&date.and_time(time)) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    Some(t.with_timezone(&Utc))
                }
                // Skipped by a DST change: the next minute.
                LocalResult::None => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(zone: &str, windows: &[(&[&str], &str, &str)]) -> Schedule {
        Schedule::new(&ScheduleSpec {
            time_zone: zone.into(),
            windows: windows
                .iter()
                .map(|(days, start, end)| WindowSpec {
                    days: days.iter().map(|d| d.to_string()).collect(),
                    start: start.to_string(),
                    end: end.to_string(),
                })
                .collect(),
        })
        .unwrap()
    }

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_window_across_midnight_ends_on_the_next_day() {
        // Friday 22:00 to Saturday 06:00, Beijing time (UTC+8, no DST).
        let s = schedule("Asia/Shanghai", &[(&["fri"], "22:00", "06:00")]);
        // 2026-12-04 is a Friday.
        assert!(!s.is_open(utc("2026-12-04T13:59:00Z")), "Fri 21:59");
        assert!(s.is_open(utc("2026-12-04T14:00:00Z")), "Fri 22:00");
        assert!(s.is_open(utc("2026-12-04T21:59:00Z")), "Sat 05:59");
        assert!(!s.is_open(utc("2026-12-04T22:00:00Z")), "Sat 06:00");
        assert!(!s.is_open(utc("2026-12-03T15:00:00Z")), "Thu 23:00");
        assert_eq!(
            s.next_opening(utc("2026-12-04T22:00:00Z")),
            utc("2026-12-11T14:00:00Z"),
            "from Saturday 06:00, the next Friday 22:00"
        );
        assert_eq!(
            s.next_opening(utc("2026-12-03T15:00:00Z")),
            utc("2026-12-04T14:00:00Z")
        );
        let open = utc("2026-12-04T20:00:00Z");
        assert_eq!(s.next_opening(open), open, "open now");
    }

    #[test]
    fn a_dst_zone_opens_at_local_time_not_at_a_fixed_offset() {
        // New York moves from UTC-5 to UTC-4 on Sunday 2026-03-08 at 02:00.
        let s = schedule(
            "America/New_York",
            &[(
                &["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "09:00",
                "17:00",
            )],
        );
        // Saturday 18:00 EST.
        let evening = utc("2026-03-07T23:00:00Z");
        assert!(!s.is_open(evening));
        // Sunday 09:00 EDT is 13:00 UTC; a fixed UTC-5 would say 14:00.
        assert_eq!(s.next_opening(evening), utc("2026-03-08T13:00:00Z"));
        assert!(s.is_open(utc("2026-03-08T13:00:00Z")));
        assert!(!s.is_open(utc("2026-03-08T12:59:00Z")));
        // Back on Sunday 2026-11-01: 09:00 EST is 14:00 UTC.
        assert_eq!(
            s.next_opening(utc("2026-11-01T12:00:00Z")),
            utc("2026-11-01T14:00:00Z")
        );
    }

    #[test]
    fn a_start_in_the_dst_gap_opens_after_the_gap_and_a_repeated_one_at_its_first() {
        // 02:30 does not exist in New York on 2026-03-08 (02:00 → 03:00).
        let s = schedule("America/New_York", &[(&["sun"], "02:30", "03:30")]);
        assert_eq!(
            s.next_opening(utc("2026-03-08T06:00:00Z")),
            utc("2026-03-08T07:00:00Z"),
            "03:00 EDT, the first minute of the window that day"
        );
        // 01:30 happens twice on 2026-11-01: the first is 05:30 UTC (EDT).
        let s = schedule("America/New_York", &[(&["sun"], "01:30", "02:00")]);
        assert_eq!(
            s.next_opening(utc("2026-11-01T04:00:00Z")),
            utc("2026-11-01T05:30:00Z")
        );
        // A window only inside the gap has no minute that day: next week's.
        let s = schedule("America/New_York", &[(&["sun"], "02:10", "02:40")]);
        assert_eq!(
            s.next_opening(utc("2026-03-08T06:00:00Z")),
            utc("2026-03-15T06:10:00Z")
        );
    }

    #[test]
    fn bad_schedules_name_their_field() {
        let spec = |zone: &str, days: &[&str], start: &str, end: &str| ScheduleSpec {
            time_zone: zone.into(),
            windows: vec![WindowSpec {
                days: days.iter().map(|d| d.to_string()).collect(),
                start: start.into(),
                end: end.into(),
            }],
        };
        let field = |s: ScheduleSpec| Schedule::new(&s).unwrap_err().field;
        assert_eq!(
            field(spec("UTC+8", &["mon"], "09:00", "18:00")),
            "time_zone"
        );
        assert_eq!(
            field(spec("Asia/Shanghai", &["mon", "fun"], "09:00", "18:00")),
            "windows[0].days[1]"
        );
        assert_eq!(
            field(spec("Asia/Shanghai", &[], "09:00", "18:00")),
            "windows[0].days"
        );
        assert_eq!(
            field(spec("Asia/Shanghai", &["mon"], "24:00", "18:00")),
            "windows[0].start"
        );
        assert_eq!(
            field(spec("Asia/Shanghai", &["mon"], "9:00", "18:00")),
            "windows[0].start"
        );
        assert_eq!(
            field(spec("Asia/Shanghai", &["mon"], "09:00", "24:01")),
            "windows[0].end"
        );
        assert_eq!(
            field(spec("Asia/Shanghai", &["mon"], "09:00", "09:00")),
            "windows[0].end"
        );
        let none = ScheduleSpec {
            time_zone: "Asia/Shanghai".into(),
            windows: vec![],
        };
        assert_eq!(field(none), "windows");
        assert!(Schedule::new(&spec("Europe/Berlin", &["MON"], "00:00", "24:00")).is_ok());
        let stored: ScheduleSpec =
            serde_json::from_str(r#"{"windows":[{"days":["sat"],"start":"08:00","end":"20:00"}]}"#)
                .unwrap();
        assert_eq!(stored.time_zone, DEFAULT_TIME_ZONE);
    }
}
