//! The API key the worker sends, held so that it never prints itself: its `Debug` and
//! `Display` show `***` and where it came from. Loading it (from the environment, Secrets
//! Manager or SSM) is the AWS adapters' part.

use std::fmt;

/// A secret string whose `Debug` and `Display` print `***`, so it cannot end up in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    key: String,
    source: KeySource,
}

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>, source: KeySource) -> Self {
        ApiKey {
            key: key.into(),
            source,
        }
    }

    /// The key itself, for the request header only.
    pub fn expose(&self) -> &str {
        &self.key
    }

    /// Where it came from (safe to log).
    pub fn source(&self) -> &KeySource {
        &self.source
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey(***, from {:?})", self.source)
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where the key came from, for a log line that names the source and not the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `API_KEY`.
    Plain,
    /// Secrets Manager, this secret id.
    Secret(String),
    /// SSM Parameter Store, this parameter.
    Parameter(String),
}
