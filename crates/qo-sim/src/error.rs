//! The simulator's error type.

use std::net::SocketAddr;

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration value is out of range; names the field and the value.
    #[error("simulator config `{field}` = `{value}`: {reason}")]
    Config {
        /// The offending field of [`crate::SimConfig`].
        field: &'static str,
        /// The offending value, as text.
        value: String,
        /// What a valid value looks like.
        reason: &'static str,
    },
    /// The listening socket could not be bound.
    #[error("simulator could not bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
