"""Drives a running audit-alert through the Python client that
openapi-python-client generated from openapi/openapi.json, and checks the
typed responses.

Environment:
  BASE_URL   the service, e.g. http://127.0.0.1:8000
  TOKEN      a bearer token with the operator or admin role
  SMTP_PORT  the port the new SMTP configuration points at
  RECORD_ID  an audit_results row whose alert must be listed
  PYTHONPATH must reach the generated package `audit_alert_client`

On success prints what it created as one JSON line; on any failure exits
non-zero naming the check that failed.
"""

import datetime
import json
import os
import signal
import sys

import attrs

# A hung call must not hang the test that runs this.
signal.alarm(60)


def fail(message):
    print(f"drive_client: {message}", file=sys.stderr)
    sys.exit(1)


def expect(condition, what):
    if not condition:
        fail(f"expected {what}")


def env(name):
    value = os.environ.get(name)
    if not value:
        fail(f"{name} is not set")
    return value


try:
    from audit_alert_client import AuthenticatedClient
    from audit_alert_client.api.alerts import alert_list
    from audit_alert_client.api.recipients import recipient_create
    from audit_alert_client.api.smtp import smtp_create, smtp_list
    from audit_alert_client.models import AlertStatus, RecipientInput, SmtpConfigInput, SmtpSecurity
except ImportError as e:
    fail(f"the generated client lacks what this script drives ({e}); did the generator warn?")


def call(operation, **kwargs):
    """The parsed body of a 200 answer to `operation`; fails on any other."""
    name = operation.__name__.rsplit(".", 1)[-1]
    response = operation.sync_detailed(client=client, **kwargs)
    if response.status_code != 200:
        body = response.content.decode(errors="replace")
        fail(f"{name}: HTTP {int(response.status_code)}: {body}")
    return response.parsed


def is_model(value):
    """A generated model class, not a raw dict or bytes."""
    return attrs.has(type(value))


def is_time(value):
    return isinstance(value, datetime.datetime) and value.tzinfo is not None


client = AuthenticatedClient(base_url=env("BASE_URL"), token=env("TOKEN"), raise_on_unexpected_status=True)
smtp_port = int(env("SMTP_PORT"))
record_id = env("RECORD_ID")
password = "py-client-Passw0rd"

with client:
    smtp = call(
        smtp_create,
        body=SmtpConfigInput(
            smtp_server="127.0.0.1",
            smtp_port=smtp_port,
            security=SmtpSecurity.NONE,
            sender_email="alerts@example.com",
            sender_name="审核告警",
            password=password,
            timeout_seconds=10,
            is_active=True,
        ),
    )
    expect(is_model(smtp), f"smtp_create to give a model, got {smtp!r}")
    expect(isinstance(smtp.id, int), f"an integer id, got {smtp.id!r}")
    expect(
        (smtp.smtp_server, smtp.smtp_port, smtp.sender_email, smtp.sender_name, smtp.timeout_seconds)
        == ("127.0.0.1", smtp_port, "alerts@example.com", "审核告警", 10),
        f"the fields sent echoed back, got {smtp!r}",
    )
    expect(smtp.security is SmtpSecurity.NONE, f"security parsed as SmtpSecurity.NONE, got {smtp.security!r}")
    expect(smtp.password_set is True and smtp.is_active is True, f"password_set and is_active, got {smtp!r}")
    expect(is_time(smtp.created_at) and is_time(smtp.updated_at), f"aware datetimes, got {smtp!r}")
    expect(password not in json.dumps(smtp.to_dict(), default=str), "no password in the answer")

    recipient = call(
        recipient_create,
        body=RecipientInput(table_name="audit_results", email="py-client@example.com", name="值班"),
    )
    expect(is_model(recipient), f"recipient_create to give a model, got {recipient!r}")
    expect(isinstance(recipient.id, int), f"an integer id, got {recipient.id!r}")
    expect(
        (recipient.table_name, recipient.email, recipient.name, recipient.is_active)
        == ("audit_results", "py-client@example.com", "值班", True),
        f"the fields sent echoed back, active by default, got {recipient!r}",
    )
    expect(is_time(recipient.created_at), f"an aware created_at, got {recipient.created_at!r}")

    alerts = call(alert_list, table_name="audit_results", verdict="不合格", page_size=500)
    expect(all(map(is_model, [alerts, *alerts.items])), f"alert_list to give models, got {alerts!r}")
    expect(alerts.page == 1 and alerts.total == len(alerts.items), f"one full page, got {alerts!r}")
    mine = [a for a in alerts.items if a.record_id == record_id]
    expect(len(mine) == 1, f"one alert for record {record_id}, got {alerts.items!r}")
    alert = mine[0]
    expect(isinstance(alert.id, int), f"an integer id, got {alert!r}")
    expect(
        (alert.table_name, alert.verdict) == ("audit_results", "不合格"),
        f"the alert's table and verdict, got {alert!r}",
    )
    expect(isinstance(alert.status, AlertStatus), f"status parsed as AlertStatus, got {alert.status!r}")
    expect(isinstance(alert.attempts, int) and isinstance(alert.delivered_to, list), f"typed fields, got {alert!r}")
    expect(is_time(alert.created_at) and is_time(alert.next_attempt_at), f"aware datetimes, got {alert!r}")

    configs = call(smtp_list, page_size=500)
    expect(all(map(is_model, [configs, *configs.items])), f"smtp_list to give models, got {configs!r}")
    listed = [c for c in configs.items if c.id == smtp.id]
    expect(len(listed) == 1, f"configuration {smtp.id} in the list, got {configs.items!r}")
    fields = ("smtp_server", "smtp_port", "security", "sender_email", "sender_name", "password_set", "created_at")
    expect(
        all(getattr(listed[0], f) == getattr(smtp, f) for f in fields),
        f"the listed configuration as created, got {listed[0]!r}",
    )
    active = [c.id for c in configs.items if c.is_active]
    expect(active == [smtp.id], f"only the new configuration active, got {active}")

print(json.dumps({"smtp_id": smtp.id, "recipient_id": recipient.id, "alert_id": alert.id}))
