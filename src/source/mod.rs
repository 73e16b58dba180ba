//! The source: a logical replication connection to Postgres, pgoutput decoding, and the
//! database setup (slot, publication, replica identity) it needs. Data leaves this module as
//! [`crate::model::change::RowChange`]s handed to a [`stream::Sink`].

pub mod conn;
pub mod decode;
pub mod error;
pub mod fidelity;
pub mod leftovers;
pub mod pgoutput;
pub mod setup;
pub mod stream;
pub mod types;
pub mod values;

pub use error::SourceError;
pub use setup::prepare;
