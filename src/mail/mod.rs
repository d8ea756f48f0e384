//! E-mail: SMTP transports built from the stored configuration, and the
//! handlebars templates that turn alert records into messages.

pub mod render;
pub mod transport;

pub use render::{AlertRecord, Renderer, TemplateSources};
pub use transport::{DeliveryError, Mailer, SmtpSettings};
