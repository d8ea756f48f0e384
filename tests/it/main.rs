//! Integration tests: the real service against a fresh PostgreSQL database and
//! a real SMTP server per test, asserting on the e-mail that arrived.

mod ack;
mod api;
mod audit;
mod audit_chain;
mod audit_export;
mod auth;
mod bots;
mod channels;
mod client;
mod console;
mod docs;
mod escalation;
mod faults;
mod helpers;
mod old_api;
mod outage;
mod pipeline;
mod python_client;
mod quiet_hours;
mod resolution;
mod routes;
mod settings;
mod silences;
mod startup;
mod upgrade;
