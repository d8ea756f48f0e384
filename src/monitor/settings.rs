//! The settings catalogue (`system_config`): every key the service reads,
//! its range, default and description, written here once; and the switches
//! the worker runs with, read from the stored values.

use std::time::Duration;

use super::retry::RetryPolicy;

/// Switches and tunables from `system_config`.
#[derive(Clone, Debug, PartialEq)]
pub struct Switches {
    pub monitor_enabled: bool,
    pub email_enabled: bool,
    pub check_interval: Duration,
    pub digest_max_records: usize,
    pub retry: RetryPolicy,
    pub sending_lease: Duration,
    pub audit_retention_days: u64,
}

impl Default for Switches {
    /// Every setting at the default [`SETTINGS`] gives it.
    fn default() -> Self {
        let mut s = Self {
            monitor_enabled: false,
            email_enabled: false,
            check_interval: Duration::ZERO,
            digest_max_records: 0,
            retry: RetryPolicy::default(),
            sending_lease: Duration::ZERO,
            audit_retention_days: 0,
        };
        for setting in SETTINGS {
            s.set(setting.key, setting.default);
        }
        s
    }
}

/// The kind of value a setting holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingKind {
    Boolean,
    Integer { min: u64, max: u64 },
}

/// A key of `system_config`: its range, default and description, written
/// here only (migrations seed the defaults; the API lists them from here).
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub key: &'static str,
    pub kind: SettingKind,
    pub default: &'static str,
    pub description: &'static str,
}

const fn int(min: u64, max: u64) -> SettingKind {
    SettingKind::Integer { min, max }
}

/// Every key the service reads from `system_config`.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "monitor_enabled",
        default: "true",
        kind: SettingKind::Boolean,
        description: "Deliver alerts (false pauses delivery on every copy; alerts wait)",
    },
    Setting {
        key: "email_enabled",
        default: "true",
        kind: SettingKind::Boolean,
        description: "Send e-mail (false records new alerts as suppressed)",
    },
    Setting {
        key: "check_interval",
        default: "5",
        kind: int(1, 60),
        description: "Minutes between fallback sweeps (1-60)",
    },
    Setting {
        key: "digest_max_records",
        default: "200",
        kind: int(1, 10_000),
        description: "Most records one digest e-mail carries",
    },
    Setting {
        key: "retry_max_attempts",
        default: "8",
        kind: int(1, 100),
        description: "Delivery attempts before an alert is marked failed",
    },
    Setting {
        key: "retry_base_ms",
        default: "2000",
        kind: int(1, 3_600_000),
        description: "First retry delay in milliseconds; doubles per attempt",
    },
    Setting {
        key: "retry_max_ms",
        default: "600000",
        kind: int(1, 86_400_000),
        description: "Longest retry delay in milliseconds",
    },
    Setting {
        key: "sending_lease_seconds",
        default: "300",
        kind: int(1, 86_400),
        description: "Seconds after which an unfinished send is taken over by another worker",
    },
    Setting {
        key: "audit_retention_days",
        kind: int(180, 3650),
        default: "180",
        description: "Days the operation audit log is kept (180-3650)",
    },
];

/// Why a setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("unknown setting '{0}'")]
    UnknownKey(String),
    #[error("{0}")]
    Invalid(String),
}

/// Checks a value for `key` and returns it in its stored form.
pub fn validate_setting(key: &str, value: &str) -> Result<String, SettingError> {
    let setting = SETTINGS
        .iter()
        .find(|s| s.key == key)
        .ok_or_else(|| SettingError::UnknownKey(key.to_owned()))?;
    let value = value.trim();
    match setting.kind {
        SettingKind::Boolean => parse_bool(value).map(|b| b.to_string()).ok_or_else(|| {
            SettingError::Invalid(format!("{key} must be true or false, not '{value}'"))
        }),
        SettingKind::Integer { min, max } => parse_in(value, min, max)
            .map(|n| n.to_string())
            .ok_or_else(|| {
                SettingError::Invalid(format!(
                    "{key} must be a whole number from {min} to {max}, not '{value}'"
                ))
            }),
    }
}

impl Switches {
    /// Reads the stored values; one that does not parse keeps its default
    /// (the API refuses such values, but SQL can write anything).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut s = Self::default();
        for (key, value) in pairs {
            let value = match validate_setting(key, value) {
                Ok(v) => v,
                Err(SettingError::UnknownKey(_)) => continue,
                Err(e) => {
                    tracing::warn!(key, value, error = %e, "ignoring an invalid system_config value");
                    continue;
                }
            };
            s.set(key, &value);
        }
        s
    }

    /// Takes a value [`validate_setting`] accepted.
    fn set(&mut self, key: &str, value: &str) {
        let number = || value.parse::<u64>().unwrap_or_default();
        match key {
            "monitor_enabled" => self.monitor_enabled = value == "true",
            "email_enabled" => self.email_enabled = value == "true",
            "check_interval" => self.check_interval = Duration::from_secs(number() * 60),
            "digest_max_records" => self.digest_max_records = number() as usize,
            "retry_max_attempts" => self.retry.max_attempts = number() as u32,
            "retry_base_ms" => self.retry.base = Duration::from_millis(number()),
            "retry_max_ms" => self.retry.max = Duration::from_millis(number()),
            "sending_lease_seconds" => self.sending_lease = Duration::from_secs(number()),
            "audit_retention_days" => self.audit_retention_days = number(),
            _ => {}
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_in(v: &str, min: u64, max: u64) -> Option<u64> {
    v.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_parse_and_ignore_garbage() {
        let s = Switches::from_pairs([
            ("monitor_enabled", "false"),
            ("check_interval", "2"),
            ("digest_max_records", "many"),
            ("retry_base_ms", "50"),
        ]);
        assert!(!s.monitor_enabled);
        assert_eq!(s.check_interval, Duration::from_secs(120));
        assert_eq!(s.digest_max_records, 200);
        assert_eq!(s.retry.base, Duration::from_millis(50));
        assert_eq!(
            Switches::from_pairs([("check_interval", "61")]).check_interval,
            Duration::from_secs(300)
        );
        assert_eq!(
            Switches::from_pairs([("audit_retention_days", "400")]).audit_retention_days,
            400
        );
        assert_eq!(
            Switches::from_pairs([("audit_retention_days", "30")]).audit_retention_days,
            180,
            "below the least kept"
        );
    }

    #[test]
    fn defaults_are_the_catalogue_s() {
        let d = Switches::default();
        assert!(d.monitor_enabled && d.email_enabled);
        assert_eq!(d.check_interval, Duration::from_secs(300));
        assert_eq!(d.digest_max_records, 200);
        assert_eq!(d.retry, RetryPolicy::default());
        assert_eq!(d.sending_lease, Duration::from_secs(300));
        assert_eq!(d.audit_retention_days, 180);
        for setting in SETTINGS {
            assert!(
                validate_setting(setting.key, setting.default).is_ok(),
                "{}",
                setting.key
            );
        }
    }
}
