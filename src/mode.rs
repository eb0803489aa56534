//! The export modes (`full`, `incremental`, `delta`): a word that the state store records, the
//! capture strategies build their reads for, and the CLI and API accept. It lives apart from
//! `capture` so that `state` can name it without depending on the strategies.

use std::fmt;

use crate::error::{Error, Result};

/// What an export delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every live row, from one consistent snapshot.
    Full,
    /// Live rows inserted or updated since the watermark, latest values, each once.
    Incremental,
    /// Every row changed since the watermark, with a leading `operation` column.
    Delta,
}

impl Mode {
    /// The lower-case name used in file names, manifests and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
            Mode::Delta => "delta",
        }
    }

    /// Every mode.
    pub const ALL: [Mode; 3] = [Mode::Full, Mode::Incremental, Mode::Delta];

    /// Parses a mode name (`full`, `incremental`, `delta`).
    pub fn parse(s: &str) -> Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::input(format!(
                    "unknown export mode {s:?}: expected full, incremental or delta"
                ))
            })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
