//! audit-alert: content-moderation verdicts in PostgreSQL become e-mail alerts.
//!
//! - `config`: settings from the environment, validated (and `SECRET_KEY`
//!   parsed) once at start.
//! - `crypto`: secrets, and the encryption of SMTP passwords at rest.
//! - `db`: creating the database, adopting the old system's tables,
//!   migrating, the connection pools.
//! - `monitor`: the worker: intake, outbox, delivery, listener, sweeper, the
//!   settings catalogue and the configuration snapshot.
//! - `mail`: SMTP transports and message templates.
//! - `auth`: bearer tokens and roles.
//! - `audit_log`: the operation audit log: declarations, masking, the writer.
//! - `api`: the HTTP API and its OpenAPI document.
//! - `console`: the operator console, web pages at `/console` over the API.
//! - `app`: everything above assembled into one running service.
//! - `check`: the operator's health check of a deployment.
//! - `telemetry`: logging.

pub mod ack;
pub mod api;
pub mod app;
pub mod audit_log;
pub mod auth;
pub mod channels;
pub mod check;
pub mod config;
pub mod console;
pub mod crypto;
pub mod db;
pub mod mail;
pub mod monitor;
pub mod telemetry;
