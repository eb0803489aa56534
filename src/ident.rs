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

/// A table name, optionally qualified by its schema (a PostgreSQL schema, a MySQL/MariaDB
/// database): `users`, `sales.orders`, `"odd.name"`, `sales."odd.name"`. Its text form
/// ([`TableName::as_str`], `Display`) is the key tidemark's state stores: a table of the
/// default schema is named without its schema, so its key stays `users`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    schema: Option<Ident>,
    name: Ident,
    key: String,
}

impl TableName {
    /// A table in `schema` (`None`: the connection's default schema).
    pub fn new(schema: Option<Ident>, name: Ident) -> Self {
        let part = |id: &Ident| {
            let s = id.as_str();
            if s.contains('.') || s.starts_with('"') || s.contains('*') || s.contains('?') {
                id.quote_double()
            } else {
                s.to_string()
            }
        };
        let key = match &schema {
            Some(sc) => format!("{}.{}", part(sc), part(&name)),
            None => part(&name),
        };
        TableName { schema, name, key }
    }

    /// A table of the default schema.
    pub fn unqualified(name: Ident) -> Self {
        Self::new(None, name)
    }

    /// Parses `name`, `schema.name`, with `"…"` around a part that contains a dot (`""` is a
    /// double quote inside quotes).
    pub fn parse(text: &str) -> Result<Self> {
        let parts = split_parts(text)?;
        let ident = |p: &Part| {
            Ident::new(&p.text)
                .map_err(|e| Error::input(format!("invalid table name {text:?}: {e}")))
        };
        match parts.as_slice() {
            [name] => Ok(Self::new(None, ident(name)?)),
            [schema, name] => Ok(Self::new(Some(ident(schema)?), ident(name)?)),
            _ => Err(Error::input(format!(
                "invalid table name {text:?}: expected name or schema.name (write a name that \
                 contains a dot in double quotes, like \"odd.name\")"
            ))),
        }
    }

    /// The schema, when the name is qualified.
    pub fn schema(&self) -> Option<&Ident> {
        self.schema.as_ref()
    }

    /// The table's own name.
    pub fn name(&self) -> &Ident {
        &self.name
    }

    /// The text form: the state key.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The same name without its schema (the table is in the default schema).
    pub fn without_schema(&self) -> Self {
        Self::new(None, self.name.clone())
    }

    /// An object named `name` in this table's schema (its change log, view, function).
    pub fn sibling(&self, name: Ident) -> Self {
        Self::new(self.schema.clone(), name)
    }

    /// The table as it appears in export file names: each part with every byte outside
    /// `[A-Za-z0-9_-]` written `%XX`, parts joined by `.` (`sales.orders`, `odd%2Ename`), so
    /// that no name can reach outside the output directory or be read two ways.
    pub fn file_part(&self) -> String {
        let enc = |id: &Ident| {
            let mut out = String::new();
            for b in id.as_str().bytes() {
                if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
            out
        };
        match &self.schema {
            Some(s) => format!("{}.{}", enc(s), enc(&self.name)),
            None => enc(&self.name),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

impl serde::Serialize for TableName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.key)
    }
}

/// What `--table` selects: one table, or a pattern (`*`, `sales.*`, `order_*`) of the tables
/// in one schema, where `*` matches any run of characters and `?` one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSelector {
    One(TableName),
    Pattern { schema: Option<Ident>, glob: String },
}

impl TableSelector {
    /// Parses a table name or pattern. Quoted parts are names, never patterns.
    pub fn parse(text: &str) -> Result<Self> {
        let parts = split_parts(text)?;
        let is_glob = |p: &Part| !p.quoted && (p.text.contains('*') || p.text.contains('?'));
        if !parts.iter().any(is_glob) {
            return TableName::parse(text).map(TableSelector::One);
        }
        let bad = |why: &str| {
            Err(Error::input(format!(
                "invalid table pattern {text:?}: {why}"
            )))
        };
        match parts.as_slice() {
            [glob] => Ok(TableSelector::Pattern {
                schema: None,
                glob: glob.text.clone(),
            }),
            [schema, glob] if !is_glob(schema) => {
                Ok(TableSelector::Pattern {
                    schema: Some(Ident::new(&schema.text).map_err(|e| {
                        Error::input(format!("invalid table pattern {text:?}: {e}"))
                    })?),
                    glob: glob.text.clone(),
                })
            }
            [_, _] => {
                bad("a pattern selects tables of one schema: write schema.* (no * in the schema)")
            }
            _ => bad("expected name, schema.name, * or schema.*"),
        }
    }

    /// True when `name` (a table's own name) matches this selector's pattern.
    pub fn matches(glob: &str, name: &str) -> bool {
        fn go(p: &[char], s: &[char]) -> bool {
            match p.split_first() {
                None => s.is_empty(),
                Some(('*', rest)) => (0..=s.len()).any(|i| s.get(i..).is_some_and(|t| go(rest, t))),
                Some(('?', rest)) => s.split_first().is_some_and(|(_, t)| go(rest, t)),
                Some((c, rest)) => s.split_first().is_some_and(|(d, t)| c == d && go(rest, t)),
            }
        }
        let p: Vec<char> = glob.chars().collect();
        let s: Vec<char> = name.chars().collect();
        go(&p, &s)
    }
}

struct Part {
    text: String,
    quoted: bool,
}

/// Splits `a.b`, `"a.b".c`, `a."b""c"` at the dots outside double quotes.
fn split_parts(text: &str) -> Result<Vec<Part>> {
    let bad = |why: &str| Err(Error::input(format!("invalid table name {text:?}: {why}")));
    let mut parts = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut part = String::new();
        let quoted = chars.peek() == Some(&'"');
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    None => return bad("a double quote is not closed"),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                }
            }
            match chars.peek() {
                None | Some('.') => {}
                Some(_) => return bad("text after a closing double quote"),
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        parts.push(Part { text: part, quoted });
        match chars.next() {
            None => return Ok(parts),
            Some(_) => {
                if parts.len() >= 2 {
                    return bad("more than one dot outside double quotes");
                }
            }
        }
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

    #[test]
    fn table_names() {
        let t = TableName::parse("users").unwrap();
        assert_eq!((t.schema(), t.as_str()), (None, "users"));
        let t = TableName::parse("sales.orders").unwrap();
        assert_eq!(t.schema().map(Ident::as_str), Some("sales"));
        assert_eq!(t.name().as_str(), "orders");
        assert_eq!(t.as_str(), "sales.orders");
        assert_eq!(t.file_part(), "sales.orders");
        let t = TableName::parse("sales.\"odd.name\"").unwrap();
        assert_eq!(t.name().as_str(), "odd.name");
        assert_eq!(t.as_str(), "sales.\"odd.name\"");
        assert_eq!(t.file_part(), "sales.odd%2Ename");
        assert_eq!(TableName::parse(t.as_str()).unwrap(), t);
        let t = TableName::parse("\"a\"\"b\"").unwrap();
        assert_eq!(t.name().as_str(), "a\"b");
        assert_eq!(TableName::parse("order").unwrap().as_str(), "order");
        assert_eq!(TableName::parse("a/b").unwrap().file_part(), "a%2Fb");
        for bad in ["", "a.b.c", ".a", "a.", "\"a", "\"a\"b", "a. b"] {
            assert!(TableName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn table_selectors() {
        assert!(matches!(
            TableSelector::parse("users").unwrap(),
            TableSelector::One(_)
        ));
        assert!(matches!(
            TableSelector::parse("\"a*\"").unwrap(),
            TableSelector::One(_)
        ));
        assert_eq!(
            TableSelector::parse("sales.*").unwrap(),
            TableSelector::Pattern {
                schema: Some(Ident::new("sales").unwrap()),
                glob: "*".into()
            }
        );
        assert!(TableSelector::parse("*.x").is_err());
        assert!(TableSelector::matches("*", "anything"));
        assert!(TableSelector::matches("order_*", "order_lines"));
        assert!(!TableSelector::matches("order_*", "orders"));
        assert!(TableSelector::matches("t?", "t1"));
        assert!(!TableSelector::matches("t?", "t12"));
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
