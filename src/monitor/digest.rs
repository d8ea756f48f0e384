//! Digests of claimed alerts: grouped per table into digests of bounded size,
//! rendered once per digest, sent to each recipient that does not have it yet,
//! and judged per recipient (a permanent refusal by one does not hold back
//! the others; a transient failure schedules a retry for those still missing).

use std::collections::{BTreeMap, HashMap};

use futures_util::future::join_all;
use lettre::message::header::ContentTransferEncoding;
use lettre::message::{Body, Mailbox, MultiPart};
use lettre::Message;
use serde_json::{json, Map, Value};

use chrono::{DateTime, Utc};

use super::chat::{self, ChannelResult};
use super::outbox::{AlertStatus, ClaimedAlert, Outcome};
use super::retry::RetryPolicy;
use super::schedule::{Reading, Schedule};
use super::snapshot::{Recipient, Snapshot};
use crate::ack::AckLinks;
use crate::channels::FailureClass;
use crate::mail::render::RenderedMail;
use crate::mail::transport::FailureKind;
use crate::mail::{AlertRecord, DeliveryError, Mailer, Renderer};

/// Claimed alerts that go out as one e-mail.
pub struct Digest<'a> {
    pub table: &'a str,
    pub alerts: Vec<&'a ClaimedAlert>,
    /// The destinations these alerts are routed to (addresses in lower
    /// case, `channel:<id>`), sorted.
    pub routed: Vec<String>,
    /// An escalation: to the table's escalation group alone.
    pub escalating: bool,
    /// Acknowledged or escalated already (see [`ClaimedAlert::settled`]).
    pub settled: Option<&'static str>,
    /// Resolution notices, not alerts.
    pub notice: bool,
}

/// Splits a claimed batch into digests: one table, one set of earlier
/// deliveries, one set of routed destinations (`routed`, by alert id) and
/// one settlement per digest, at most `max_records` alerts each.
pub fn group<'a>(
    alerts: &'a [ClaimedAlert],
    max_records: usize,
    routed: &HashMap<i64, Vec<String>>,
) -> Vec<Digest<'a>> {
    /// What the alerts of one digest share.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Shared<'k> {
        table: &'k str,
        escalating: bool,
        done: Vec<String>,
        routed: Vec<String>,
        settled: Option<&'static str>,
        notice: bool,
    }
    let mut by_key: BTreeMap<Shared<'a>, Vec<&ClaimedAlert>> = BTreeMap::new();
    for a in alerts {
        let mut done: Vec<String> = a.done().into_iter().collect();
        done.sort();
        let shared = Shared {
            table: a.table_name.as_str(),
            escalating: a.escalating,
            done,
            routed: routed.get(&a.id).cloned().unwrap_or_default(),
            settled: a.settled,
            notice: a.notice,
        };
        by_key.entry(shared).or_default().push(a);
    }
    by_key
        .into_iter()
        .flat_map(|(shared, alerts)| {
            alerts
                .chunks(max_records.max(1))
                .map(|chunk| Digest {
                    table: shared.table,
                    alerts: chunk.to_vec(),
                    routed: shared.routed.clone(),
                    escalating: shared.escalating,
                    settled: shared.settled,
                    notice: shared.notice,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Sends one digest by mail (when there is a mailer) and decides the
/// outcome of its alerts, with what the table's channels did with them.
/// Destinations outside their schedule by `clock` get nothing now: the
/// alerts wait for the first window to open, or, once settled, are dropped
/// for them.
#[allow(clippy::too_many_arguments)]
pub async fn send_digest(
    digest: &Digest<'_>,
    rows: &HashMap<String, Map<String, Value>>,
    snapshot: &Snapshot,
    mailer: Option<&Mailer>,
    renderer: &Renderer,
    chat: &HashMap<(i32, bool), ChannelResult>,
    ack: Option<&AckLinks>,
    clock: &Reading,
) -> Outcome {
    let retry = &snapshot.switches.retry;
    // An escalation goes to the table's escalation group alone.
    let (recipients, channels) = snapshot.destinations(digest.alerts[0]);
    if recipients.is_empty() && channels.is_empty() {
        return judge(
            digest,
            retry,
            Destinations {
                failures: vec![(String::new(), transient("no active recipient"))],
                ..Destinations::default()
            },
            None,
        );
    }
    if digest.routed.is_empty() {
        let why = "no recipient or channel of the table takes these alerts (their verdict or row is routed nowhere)";
        return judge(
            digest,
            retry,
            Destinations {
                failures: vec![(String::new(), DeliveryError::permanent(why))],
                ..Destinations::default()
            },
            None,
        );
    }
    // Everyone in the digest has the same earlier deliveries and routes
    // (see `group`).
    let done = digest.alerts[0].done();
    let mut outcome = Destinations::default();
    for channel in channels {
        let destination = channel.destination();
        if done.contains(&destination) || !digest.routed.contains(&destination) {
            continue;
        }
        if outcome.hold(&destination, channel.schedule.as_deref(), digest, clock) {
            continue;
        }
        let Some(result) = chat.get(&(channel.id, digest.notice)) else {
            continue;
        };
        outcome
            .channels
            .insert(channel.id.to_string(), chat::outcome_json(channel, result));
        match result {
            ChannelResult::Delivered { .. } => outcome.delivered.push(destination),
            ChannelResult::Failed {
                class,
                code,
                message,
            } => {
                let words = format!("{} {code}: {message}", channel.kind.as_str());
                let error = match class {
                    FailureClass::Permanent => DeliveryError::permanent(words),
                    _ => transient(&words),
                };
                outcome.failures.push((destination, error));
            }
            ChannelResult::Waiting { until } => {
                outcome.wait_until = outcome.wait_until.max(Some(*until));
            }
        }
    }
    let mut targets: Vec<&Recipient> = Vec::new();
    for r in recipients {
        let address = r.email.to_lowercase();
        if !done.contains(&address)
            && digest.routed.contains(&address)
            && !outcome.hold(&address, r.schedule.as_deref(), digest, clock)
        {
            targets.push(r);
        }
    }
    let mut message_id = None;
    match mailer {
        _ if targets.is_empty() => {}
        // Mail waits for an SMTP server; the channels went out meanwhile.
        None => {
            let later = chrono::Utc::now() + chrono::Duration::seconds(60);
            outcome.wait_until = outcome.wait_until.max(Some(later));
        }
        Some(mailer) => {
            let now = Utc::now();
            // With acknowledge links, each recipient's mail carries its own.
            let render = |to: Option<&str>| {
                let records: Vec<AlertRecord> = digest
                    .alerts
                    .iter()
                    .map(|a| AlertRecord {
                        record_id: a.record_id.clone(),
                        verdict: a.verdict.clone(),
                        row: rows.get(&a.record_id).cloned(),
                        alerted_at: a.created_at,
                        ack_url: ack.zip(to).map(|(l, to)| l.link(a.id, to, now)),
                    })
                    .collect();
                if digest.notice {
                    return Ok(Bodies::encode(crate::mail::render::notice(
                        digest.table,
                        &records,
                    )));
                }
                renderer.render(digest.table, &records).map(|mut mail| {
                    if digest.escalating {
                        mail.subject = format!("【升级·无人确认】{}", mail.subject);
                    }
                    Bodies::encode(mail)
                })
            };
            let started = std::time::Instant::now();
            let bodies: Result<Vec<Bodies>, _> = match ack.filter(|_| !digest.notice) {
                None => render(None).map(|b| vec![b]),
                Some(_) => targets.iter().map(|r| render(Some(&r.email))).collect(),
            };
            let bodies = match bodies {
                Ok(bodies) => bodies,
                Err(e) => {
                    let refused = DeliveryError::permanent(e.to_string());
                    outcome.failures.push((String::new(), refused));
                    return judge(digest, retry, outcome, None);
                }
            };
            tracing::debug!(records = digest.alerts.len(), rendered_in = ?started.elapsed(), "rendered");
            let id = format!("<{}@audit-alert>", uuid::Uuid::now_v7().simple());
            let results = join_all(
                targets
                    .iter()
                    .enumerate()
                    .map(|(i, r)| send_one(mailer, r, &bodies[i.min(bodies.len() - 1)], &id)),
            )
            .await;
            for (r, result) in targets.iter().zip(results) {
                match result {
                    Ok(()) => outcome.delivered.push(r.email.clone()),
                    Err(e) => {
                        tracing::warn!(table = digest.table, recipient = %r.email, error = %e, "delivery failed");
                        outcome.failures.push((r.email.clone(), e));
                    }
                }
            }
            message_id = Some(id);
        }
    }
    judge(digest, retry, outcome, message_id)
}

/// What one attempt did per destination (recipients' addresses, channels'
/// `channel:<id>`).
#[derive(Default)]
struct Destinations {
    delivered: Vec<String>,
    /// `""` for a failure of the whole digest.
    failures: Vec<(String, DeliveryError)>,
    /// The latest moment a destination waits for (a bot's send limit, an
    /// SMTP server to be configured).
    wait_until: Option<DateTime<Utc>>,
    /// Channel id → its part of the record.
    channels: Map<String, Value>,
    /// Destinations in quiet hours: destination → `{"until", "dropped"?}`.
    held: Map<String, Value>,
    /// When the first of them opens (real time).
    held_until: Option<DateTime<Utc>>,
    /// Some were dropped: the alerts were settled while they waited.
    dropped: bool,
}

impl Destinations {
    /// Whether `destination` is outside its schedule now; if so it is held
    /// until its window opens, or dropped when the alerts are settled.
    fn hold(
        &mut self,
        destination: &str,
        schedule: Option<&Schedule>,
        digest: &Digest<'_>,
        clock: &Reading,
    ) -> bool {
        let Some(schedule) = schedule.filter(|s| !s.is_open(clock.now)) else {
            return false;
        };
        let until = schedule.next_opening(clock.now);
        let mut entry = json!({ "until": until });
        match digest.settled {
            Some(why) => {
                entry["dropped"] = Value::from(why);
                self.dropped = true;
            }
            None => {
                let at = clock.real(until);
                self.held_until = Some(self.held_until.map_or(at, |h| h.min(at)));
            }
        }
        self.held.insert(destination.to_owned(), entry);
        true
    }
}

fn transient(words: &str) -> DeliveryError {
    DeliveryError::transient(FailureKind::Other, words)
}

/// A digest's subject and bodies, encoded once for all its recipients:
/// base64, the cheapest encoding to produce and to read, and more compact
/// than quoted-printable for the Chinese text.
#[derive(Clone)]
struct Bodies {
    subject: String,
    text: Body,
    html: Body,
}

impl Bodies {
    fn encode(mail: RenderedMail) -> Self {
        let mail = mail.with_crlf();
        let base64 = |s: String| {
            Body::new_with_encoding(s, ContentTransferEncoding::Base64).unwrap_or_else(Body::new)
        };
        Self {
            subject: mail.subject,
            text: base64(mail.text),
            html: base64(mail.html),
        }
    }
}

async fn send_one(
    mailer: &Mailer,
    to: &Recipient,
    mail: &Bodies,
    message_id: &str,
) -> Result<(), DeliveryError> {
    let address = to
        .email
        .parse()
        .map_err(|e| DeliveryError::permanent(format!("invalid address {}: {e}", to.email)))?;
    let message = Message::builder()
        .from(mailer.from().clone())
        .to(Mailbox::new(
            to.name.clone().filter(|n| !n.is_empty()),
            address,
        ))
        .subject(mail.subject.clone())
        .message_id(Some(message_id.to_owned()))
        .multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            mail.html.clone(),
        ))
        .map_err(|e| DeliveryError::permanent(format!("cannot build the message: {e}")))?;
    mailer.send(message).await
}

/// The outcome of a digest's alerts, from what happened per destination.
fn judge(
    digest: &Digest<'_>,
    retry: &RetryPolicy,
    now: Destinations,
    message_id: Option<String>,
) -> Outcome {
    let failures = &now.failures;
    let refused: Map<String, Value> = failures
        .iter()
        .filter(|(to, e)| !to.is_empty() && matches!(e, DeliveryError::Permanent(_)))
        .map(|(to, e)| (to.clone(), Value::String(e.to_string())))
        .collect();
    let transient = failures
        .iter()
        .any(|(to, e)| matches!(e, DeliveryError::Transient(_)) || to.is_empty());
    let last_error = (!failures.is_empty()).then(|| {
        failures
            .iter()
            .map(|(to, e)| {
                if to.is_empty() {
                    e.to_string()
                } else {
                    format!("{to}: {e}")
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    });
    // Alerts of one digest share their earlier deliveries (see `group`) and,
    // claimed together, their attempt count.
    let first = digest.alerts[0];
    let mut delivered_to = first.delivered_to.clone();
    delivered_to.extend(now.delivered.iter().cloned());
    let attempts = digest
        .alerts
        .iter()
        .map(|a| a.attempts)
        .max()
        .unwrap_or(1)
        .max(0) as u32;
    let mut uncounted = false;
    // The first moment a destination waits for: a bot's send limit, an SMTP
    // server, a window of its schedule.
    let wait_until = match (now.wait_until, now.held_until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let (status, retry_in) = if transient && retry.may_retry(attempts) {
        (AlertStatus::Pending, retry.delay(attempts, fastrand::f64()))
    } else if let (false, Some(until)) = (transient, wait_until) {
        // Only waiting: not an attempt.
        uncounted = true;
        let wait = (until - Utc::now()).to_std().unwrap_or_default();
        (AlertStatus::Pending, wait)
    } else if !transient && (!delivered_to.is_empty() || now.dropped) {
        (AlertStatus::Sent, Default::default())
    } else {
        (AlertStatus::Failed, Default::default())
    };
    let delivered_now = !now.delivered.iter().all(|d| d.starts_with("channel:"));
    Outcome {
        ids: digest.alerts.iter().map(|a| a.id).collect(),
        status,
        delivered_to,
        refused: Value::Object(refused),
        last_error,
        retry_in_ms: retry_in.as_millis() as i64,
        message_id: message_id.filter(|_| delivered_now),
        smtp_errors: failures
            .iter()
            .filter(|(to, _)| !to.is_empty() && !to.starts_with("channel:"))
            .map(|(_, e)| (e.kind(), matches!(e, DeliveryError::Permanent(_))))
            .collect(),
        created_at: digest.alerts.iter().map(|a| a.created_at).collect(),
        uncounted,
        channels: Value::Object(now.channels),
        escalate_in_ms: None,
        held: Value::Object(now.held),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(id: i64, table: &str, delivered: &[&str]) -> ClaimedAlert {
        ClaimedAlert {
            id,
            table_name: table.into(),
            record_id: id.to_string(),
            verdict: "不合格".into(),
            attempts: 1,
            delivered_to: delivered.iter().map(|s| s.to_string()).collect(),
            refused_by: vec![],
            created_at: chrono::Utc::now(),
            escalating: false,
            settled: None,
            notice: false,
        }
    }

    #[test]
    fn groups_by_table_and_bounds_digests() {
        let mut alerts: Vec<_> = (0..5).map(|i| alert(i, "a", &[])).collect();
        alerts.push(alert(9, "b", &[]));
        alerts.push(alert(10, "a", &["x@y.z"]));
        let digests = group(&alerts, 2, &HashMap::new());
        let sizes: Vec<_> = digests.iter().map(|d| (d.table, d.alerts.len())).collect();
        assert_eq!(sizes, [("a", 2), ("a", 2), ("a", 1), ("a", 1), ("b", 1)]);
    }

    #[test]
    fn one_permanent_refusal_does_not_fail_the_others() {
        let alerts = [alert(1, "a", &[])];
        let digests = group(&alerts, 10, &HashMap::new());
        let now = Destinations {
            delivered: vec!["ok@x.y".into()],
            failures: vec![("bad@x.y".into(), DeliveryError::permanent("550"))],
            ..Destinations::default()
        };
        let out = judge(&digests[0], &RetryPolicy::default(), now, None);
        assert_eq!(out.status, AlertStatus::Sent);
        assert!(out.refused.get("bad@x.y").is_some());
        assert!(out.last_error.as_deref().unwrap().contains("bad@x.y: 550"));
    }

    #[test]
    fn transient_failures_retry_then_fail() {
        let mut a = alert(1, "a", &[]);
        let failed = || Destinations {
            failures: vec![(
                "x@y.z".into(),
                DeliveryError::transient(FailureKind::Other, "421"),
            )],
            ..Destinations::default()
        };
        let policy = RetryPolicy::default();
        let out = judge(
            &group(std::slice::from_ref(&a), 10, &HashMap::new())[0],
            &policy,
            failed(),
            None,
        );
        assert_eq!(out.status, AlertStatus::Pending);
        assert!(out.retry_in_ms > 0);
        a.attempts = policy.max_attempts as i32;
        let out = judge(
            &group(std::slice::from_ref(&a), 10, &HashMap::new())[0],
            &policy,
            failed(),
            None,
        );
        assert_eq!(out.status, AlertStatus::Failed);
    }
}
