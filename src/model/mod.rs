//! Event and table types: what arrives on the topics ([`events`]) and what the lakehouse holds
//! ([`tables`]), with their JSON and Arrow schemas.

pub mod events;
pub mod tables;

pub use events::EventKind;
pub use tables::{TableDef, catalog};
