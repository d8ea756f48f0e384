//! Schedules of recipients and channels (quiet hours) as the API shows and
//! takes them: weekly windows in a tz database zone in which the destination
//! takes alerts; outside them its alerts wait for the next window.

use poem_openapi::Object;

use super::error::{ApiError, ApiResult};
use crate::monitor::{Schedule as Checked, ScheduleSpec, WindowSpec, DEFAULT_TIME_ZONE};

/// When a recipient or channel takes alerts. Outside these windows it gets
/// nothing at that moment; what arrives meanwhile goes to it as one digest
/// when its next window opens, unless the alert was acknowledged or
/// escalated meanwhile.
#[derive(Object, Clone, Debug)]
pub struct Schedule {
    /// A tz database zone (default `Asia/Shanghai`); daylight saving time
    /// is followed.
    #[oai(default = "default_zone", validator(min_length = 1, max_length = 64))]
    pub time_zone: String,
    /// Weekly windows; `[]` removes the schedule (alerts at any time).
    #[oai(validator(max_items = 50))]
    pub windows: Vec<ScheduleWindow>,
}

/// A weekly window, in local time.
#[derive(Object, Clone, Debug)]
pub struct ScheduleWindow {
    /// Days it starts on: `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`.
    #[oai(validator(min_items = 1, max_items = 7))]
    pub days: Vec<String>,
    /// `HH:MM`, from `00:00` to `23:59`.
    #[oai(validator(min_length = 5, max_length = 5))]
    pub start: String,
    /// `HH:MM`, up to `24:00`; not after `start`: the window ends on the
    /// next day (across midnight).
    #[oai(validator(min_length = 5, max_length = 5))]
    pub end: String,
}

fn default_zone() -> String {
    DEFAULT_TIME_ZONE.to_owned()
}

/// Checks a schedule given as `{at}schedule`; what to store (`None`: no
/// schedule, for an absent one or one without windows).
pub(super) fn check_schedule(
    schedule: Option<&Schedule>,
    at: &str,
) -> ApiResult<Option<serde_json::Value>> {
    let Some(schedule) = schedule.filter(|s| !s.windows.is_empty()) else {
        return Ok(None);
    };
    let spec = ScheduleSpec {
        time_zone: schedule.time_zone.clone(),
        windows: schedule
            .windows
            .iter()
            .map(|w| WindowSpec {
                days: w.days.iter().map(|d| d.to_lowercase()).collect(),
                start: w.start.clone(),
                end: w.end.clone(),
            })
            .collect(),
    };
    if let Err(e) = Checked::new(&spec) {
        let field = format!("{at}schedule.{}", e.field);
        return Err(ApiError::unprocessable(
            &field,
            format!("{field}: {}", e.message),
        ));
    }
    Ok(Some(
        serde_json::to_value(spec).map_err(anyhow::Error::from)?,
    ))
}

/// A stored schedule as shown.
pub(super) fn shown(stored: Option<serde_json::Value>) -> Option<Schedule> {
    let spec: ScheduleSpec = serde_json::from_value(stored?).ok()?;
    Some(Schedule {
        time_zone: spec.time_zone,
        windows: spec
            .windows
            .into_iter()
            .map(|w| ScheduleWindow {
                days: w.days,
                start: w.start,
                end: w.end,
            })
            .collect(),
    })
}
