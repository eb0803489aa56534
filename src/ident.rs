//! Names that come from users — tables, columns, consumer ids — checked once at the edge and
//! carried as types, so that nothing unchecked or unquoted reaches SQL or the file system.

use std::fmt;

use crate::error::{Error, Result};

/// A validated SQL identifier (table or column name). Any printable name is accepted — `order`,
/// `first name` and `it's` included — because every dialect quotes it when it builds SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Ident(String);

impl Ident {
    /// The longest identifier accepted: PostgreSQL truncates beyond 63 bytes.
    pub const MAX_BYTES: usize = 63;

    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<Self> {
        let bad = |why: &str| Err(Error::input(format!("invalid identifier {name:?}: {why}")));
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.len() > Self::MAX_BYTES {
            return bad("longer than 63 bytes");
        }
        if name.chars().any(char::is_control) {
            return bad("it contains a control character");
        }
        if name.trim() != name {
            return bad("it starts or ends with white space");
        }
        Ok(Ident(name.to_string()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `"name"` with embedded double quotes doubled (PostgreSQL, SQLite, standard SQL).
    pub fn quote_double(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }

    /// `` `name` `` with embedded backticks doubled (MySQL, MariaDB).
    pub fn quote_backtick(&self) -> String {
        format!("`{}`", self.0.replace('`', "``"))
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A consumer id: 1–128 characters of `[A-Za-z0-9_.-]`, not starting with `.`. Safe in file
/// names and SQL literals by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ConsumerId(String);

impl ConsumerId {
    /// Checks `id` and wraps it.
    pub fn new(id: &str) -> Result<Self> {
        let shown: String = id.chars().take(40).collect();
        let bad = |why: &str| {
            Err(Error::input(format!(
                "invalid consumer id {shown:?}{}: {why}",
                if id.chars().count() > 40 { "…" } else { "" }
            )))
        };
        if id.is_empty() {
            return bad("it is empty");
        }
        if id.len() > 128 {
            return bad("longer than 128 characters");
        }
        if id.starts_with('.') {
            return bad("it starts with '.'");
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return bad("only letters, digits, '_', '.' and '-' are allowed");
        }
        Ok(ConsumerId(id.to_string()))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsumerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn consumer_ids() {
        for ok in ["a", "warehouse-1", "team.partner_2", &"x".repeat(128)] {
            assert!(ConsumerId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "é",
            "a\0b",
            &"x".repeat(129),
        ] {
            assert!(ConsumerId::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identifiers_quote() {
        assert_eq!(Ident::new("order").unwrap().quote_double(), "\"order\"");
        assert_eq!(Ident::new("a\"b").unwrap().quote_double(), "\"a\"\"b\"");
        assert_eq!(Ident::new("it's").unwrap().quote_backtick(), "`it's`");
        assert_eq!(Ident::new("a`b").unwrap().quote_backtick(), "`a``b`");
        assert!(Ident::new("").is_err());
        assert!(Ident::new("a\0b").is_err());
        assert!(Ident::new(" x").is_err());
        assert!(Ident::new(&"x".repeat(64)).is_err());
    }

    proptest! {
        /// A quoted identifier is one token: inside the outer quotes every quote is doubled, so
        /// no name can close the quote early, and undoubling gives the name back.
        #[test]
        fn quoting_is_closed(name in "[^\\x00-\\x1f]{1,20}") {
            if let Ok(id) = Ident::new(&name) {
                for (q, quoted) in [('"', id.quote_double()), ('`', id.quote_backtick())] {
                    let doubled: String = [q, q].iter().collect();
                    prop_assert!(quoted.starts_with(q) && quoted.ends_with(q) && quoted.len() >= 2);
                    let inner = &quoted[1..quoted.len() - 1];
                    prop_assert!(!inner.replace(&doubled, "").contains(q));
                    prop_assert_eq!(inner.replace(&doubled, &q.to_string()), name.clone());
                }
            }
        }

        #[test]
        fn consumer_ids_never_contain_path_parts(id in "\\PC{0,20}") {
            if let Ok(c) = ConsumerId::new(&id) {
                prop_assert!(!c.as_str().contains('/') && !c.as_str().contains('\\'));
                prop_assert!(!c.as_str().starts_with('.'));
            }
        }
    }
}
