//! audit-alert: content-moderation verdicts in PostgreSQL become e-mail alerts.
//!
//! - `config`: settings from the environment, validated at start.
//! - `db`: creating and migrating the database, the connection pool.
//! - `monitor`: the worker: listener, dispatcher, sweeper, alert outbox.
//! - `mail`: SMTP transports and message templates.
//! - `api`: the HTTP API and its OpenAPI document.
//! - `app`: everything above assembled into one running service.
//! - `check`: the operator's health check of a deployment.
//! - `telemetry`: logging.

pub mod api;
pub mod app;
pub mod audit_log;
pub mod auth;
pub mod check;
pub mod config;
pub mod crypto;
pub mod db;
pub mod mail;
pub mod monitor;
pub mod telemetry;
