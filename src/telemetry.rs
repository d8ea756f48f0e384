//! Logging: a tracing subscriber filtered by `LOG_LEVEL`, writing to stdout
//! and, when `LOG_FILE` is set, appending to that file too.

use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError};

/// Installs the global subscriber; a bad filter or file is a configuration error.
pub fn init(config: &Config) -> Result<(), ConfigError> {
    let filter = EnvFilter::try_new(&config.log_level).map_err(|e| {
        ConfigError::new(
            "LOG_LEVEL",
            format!("'{}' is not a log filter: {e}", config.log_level),
        )
    })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &config.log_file {
        None => builder.with_writer(std::io::stdout).init(),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    ConfigError::new("LOG_FILE", format!("cannot open {}: {e}", path.display()))
                })?;
            builder
                .with_writer(std::io::stdout.and(std::sync::Mutex::new(file)))
                .init()
        }
    }
    Ok(())
}
