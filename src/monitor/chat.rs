//! Chat-bot channels in delivery: for each channel of a table, one message
//! per claimed batch with every alert of the batch it does not have yet,
//! within the bot's send limits (taken in PostgreSQL, shared by every copy).
//! A message the limits do not allow now waits: the alerts stay pending until
//! the bot may send again, without an attempt counted, and then go out
//! together in one message.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use super::outbox::ClaimedAlert;
use super::snapshot::{Channel, Snapshot};
use crate::ack::AckLinks;
use crate::channels::{self, AlertLine, Answer, FailureClass};
use crate::db;

/// What one channel did with the alerts of a batch it was given.
#[derive(Clone, Debug)]
pub enum ChannelResult {
    Delivered {
        at: DateTime<Utc>,
    },
    Failed {
        class: FailureClass,
        code: String,
        message: String,
    },
    /// The bot's send limit is reached until then.
    Waiting {
        until: DateTime<Utc>,
    },
}

/// Sends each channel of the batch's tables one message with the alerts
/// routed to it (`routed`, by alert id) it does not have yet, and one with
/// the resolution notices; results by (channel id, notices). A channel
/// outside its schedule at `schedule_now` gets nothing (see
/// `digest::send_digest`), nor does one for an escalation (that goes to the
/// escalation group).
#[allow(clippy::too_many_arguments)]
pub async fn send_all(
    pool: &Pool,
    client: &reqwest::Client,
    claimed: &[ClaimedAlert],
    rows: &HashMap<&str, HashMap<String, Map<String, Value>>>,
    routed: &HashMap<i64, Vec<String>>,
    snapshot: &Snapshot,
    console_url: Option<&str>,
    ack: Option<&AckLinks>,
    schedule_now: DateTime<Utc>,
) -> HashMap<(i32, bool), ChannelResult> {
    let now = Utc::now();
    let mut sends = Vec::new();
    for (table, channels) in &snapshot.channels {
        for channel in channels {
            if channel
                .schedule
                .as_ref()
                .is_some_and(|s| !s.is_open(schedule_now))
            {
                continue;
            }
            let rows = rows.get(table.as_str());
            for notice in [false, true] {
                let destination = channel.destination();
                let alerts: Vec<&ClaimedAlert> = claimed
                    .iter()
                    .filter(|a| {
                        &a.table_name == table
                            && a.notice == notice
                            && !a.escalating
                            && !a.is_done(&destination)
                            && routed
                                .get(&a.id)
                                .is_some_and(|to| to.contains(&destination))
                    })
                    .collect();
                if alerts.is_empty() {
                    continue;
                }
                sends.push(async move {
                    let lines: Vec<AlertLine> = alerts
                        .iter()
                        .map(|a| AlertLine {
                            id: a.id,
                            record_id: a.record_id.clone(),
                            verdict: a.verdict.clone(),
                            alerted_at: a.created_at,
                            row: rows.and_then(|r| r.get(&a.record_id)).cloned(),
                            // Acknowledged by the channel the message went to.
                            ack_url: ack
                                .filter(|_| !notice)
                                .map(|l| l.link(a.id, &destination, now)),
                        })
                        .collect();
                    let block = snapshot
                        .channel_templates
                        .get(&(table.clone(), channel.kind))
                        .map(|t| &**t);
                    let message = channels::Message {
                        table,
                        alerts: &lines,
                        console_url,
                        block,
                        notice,
                    };
                    let result = send_one(pool, client, channel, &message).await;
                    ((channel.id, notice), result)
                });
            }
        }
    }
    join_all(sends).await.into_iter().collect()
}

async fn send_one(
    pool: &Pool,
    client: &reqwest::Client,
    channel: &Channel,
    message: &channels::Message<'_>,
) -> ChannelResult {
    let table = message.table;
    match take_send(pool, channel).await {
        Ok(None) => {}
        Ok(Some(until)) => return ChannelResult::Waiting { until },
        Err(e) => {
            return ChannelResult::Failed {
                class: FailureClass::Transient,
                code: "limit".into(),
                message: format!("{e:#}"),
            }
        }
    }
    let request = channels::build(
        channel.kind,
        &channel.url,
        channel.secret.as_deref(),
        message,
        Utc::now(),
    );
    match channels::send(client, channel.kind, &request).await {
        Answer::Delivered => ChannelResult::Delivered { at: Utc::now() },
        Answer::Failed {
            class,
            code,
            message,
        } => {
            tracing::warn!(
                table,
                channel = channel.id,
                kind = channel.kind.as_str(),
                class = class.as_str(),
                %code,
                %message,
                "channel delivery failed"
            );
            ChannelResult::Failed {
                class,
                code,
                message,
            }
        }
    }
}

/// Takes one send of the channel's bot: `None` when it may send now,
/// otherwise when it may next.
pub async fn take_send(pool: &Pool, channel: &Channel) -> anyhow::Result<Option<DateTime<Utc>>> {
    let limits = channel.kind.limits();
    if limits.is_empty() {
        return Ok(None);
    }
    let counts: Vec<i32> = limits.iter().map(|(n, _)| *n as i32).collect();
    let windows: Vec<i64> = limits.iter().map(|(_, w)| w.as_millis() as i64).collect();
    let client = db::client(pool).await?;
    let row = client
        .query_one(
            "SELECT channel_take_send($1, $2, $3)",
            &[&channel.bot, &counts, &windows],
        )
        .await
        .context("Failed to take a send of the bot's limit")?;
    Ok(row.get(0))
}

/// One channel's part of an alert's record (`channel_outcomes`).
pub fn outcome_json(channel: &Channel, result: &ChannelResult) -> Value {
    let mut o = json!({"kind": channel.kind.as_str(), "name": channel.name});
    let fields = match result {
        ChannelResult::Delivered { at } => json!({
            "attempts": 1, "class": null, "code": "0", "message": "ok",
            "delivered_at": at, "waiting_until": null,
        }),
        ChannelResult::Failed {
            class,
            code,
            message,
        } => json!({
            "attempts": 1, "class": class.as_str(), "code": code, "message": message,
            "waiting_until": null,
        }),
        ChannelResult::Waiting { until } => json!({
            "waits": 1, "waiting_until": until,
        }),
    };
    if let (Value::Object(o), Value::Object(f)) = (&mut o, fields) {
        o.extend(f);
    }
    o
}
