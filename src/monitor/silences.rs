//! Silences and routes. A silence holds the alerts it matches, not sent, for
//! a time; every copy holds the silences not yet ended in its configuration
//! (a change is announced like any other) and looks at each claimed alert. A
//! route says which alerts of its table a recipient or channel takes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::outbox::ClaimedAlert;

/// How a condition compares a column's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConditionOp {
    /// The value is the first of `values`.
    Equals,
    /// The value is one of `values`.
    In,
    /// The value starts with one of `values`.
    Prefix,
}

/// A condition on one column of the alerted row, compared as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub column: String,
    pub op: ConditionOp,
    pub values: Vec<String>,
}

impl Condition {
    /// Whether the row's column holds it; a missing row or column never does.
    pub fn holds(&self, row: Option<&Map<String, Value>>) -> bool {
        let Some(value) = row.and_then(|r| r.get(&self.column)) else {
            return false;
        };
        let text = match value {
            Value::Null => return false,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match self.op {
            ConditionOp::Equals => self.values.first() == Some(&text),
            ConditionOp::In => self.values.contains(&text),
            ConditionOp::Prefix => self.values.iter().any(|p| text.starts_with(p.as_str())),
        }
    }
}

/// Which alerts of its table a recipient or channel takes: some verdicts
/// (`None`: all) of rows meeting every condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub verdicts: Option<Vec<String>>,
    pub conditions: Vec<Condition>,
}

impl Route {
    /// Reads the stored columns; unreadable conditions take nothing.
    pub fn from_columns(verdicts: Option<Vec<String>>, conditions: Value) -> Self {
        match serde_json::from_value(conditions) {
            Ok(conditions) => Self {
                verdicts,
                conditions,
            },
            Err(_) => Self {
                verdicts: Some(Vec::new()),
                conditions: Vec::new(),
            },
        }
    }

    pub fn takes(&self, verdict: &str, row: Option<&Map<String, Value>>) -> bool {
        self.verdicts
            .as_ref()
            .map_or(true, |v| v.iter().any(|x| x == verdict))
            && self.conditions.iter().all(|c| c.holds(row))
    }
}

/// A silence as the worker holds it.
#[derive(Clone, Debug)]
pub struct Silence {
    pub id: i32,
    /// `None`: every table.
    pub table_name: Option<String>,
    /// `None`: every verdict.
    pub verdicts: Option<Vec<String>>,
    pub conditions: Vec<Condition>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

impl Silence {
    /// Whether it holds `alert` (whose row is `row`) at `now`.
    pub fn holds(
        &self,
        alert: &ClaimedAlert,
        row: Option<&Map<String, Value>>,
        now: DateTime<Utc>,
    ) -> bool {
        self.starts_at <= now
            && now < self.ends_at
            && self
                .table_name
                .as_ref()
                .map_or(true, |t| *t == alert.table_name)
            && self
                .verdicts
                .as_ref()
                .map_or(true, |v| v.contains(&alert.verdict))
            && self.conditions.iter().all(|c| c.holds(row))
    }
}

/// The first silence holding `alert` at `now`, if any.
pub fn holding<'a>(
    silences: &'a [Silence],
    alert: &ClaimedAlert,
    row: Option<&Map<String, Value>>,
    now: DateTime<Utc>,
) -> Option<&'a Silence> {
    silences.iter().find(|s| s.holds(alert, row, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alert(table: &str, verdict: &str) -> ClaimedAlert {
        ClaimedAlert {
            id: 1,
            table_name: table.into(),
            record_id: "1".into(),
            verdict: verdict.into(),
            attempts: 1,
            delivered_to: vec![],
            refused_by: vec![],
            created_at: Utc::now(),
            escalating: false,
            settled: None,
            notice: false,
        }
    }

    #[test]
    fn a_silence_holds_what_matches_while_it_lasts() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let s = Silence {
            id: 3,
            table_name: Some("audit_results".into()),
            verdicts: Some(vec!["不确定".into()]),
            conditions: vec![Condition {
                column: "url".into(),
                op: ConditionOp::Prefix,
                values: vec!["https://test.".into()],
            }],
            starts_at: now - hour,
            ends_at: now + hour,
        };
        let row = json!({"url": "https://test.example.com/1", "n": 7});
        let row = row.as_object();
        assert!(s.holds(&alert("audit_results", "不确定"), row, now));
        assert!(
            !s.holds(&alert("audit_results", "不合格"), row, now),
            "verdict"
        );
        assert!(!s.holds(&alert("comments", "不确定"), row, now), "table");
        assert!(
            !s.holds(&alert("audit_results", "不确定"), None, now),
            "no row"
        );
        assert!(
            !s.holds(&alert("audit_results", "不确定"), row, now + hour * 2),
            "ended"
        );
        assert!(
            !s.holds(&alert("audit_results", "不确定"), row, now - hour * 2),
            "not begun"
        );
        let equals = Condition {
            column: "n".into(),
            op: ConditionOp::In,
            values: vec!["6".into(), "7".into()],
        };
        assert!(equals.holds(row));
    }
}
