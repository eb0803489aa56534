//! API tokens of `tidemark serve`: an admin token may do everything, a consumer token acts only
//! as its consumer. A token is `tdm_` and 64 hex digits (256 bits from the operating system's
//! random source); it is shown once, and only its SHA-256 digest is stored (in
//! `tidemark_tokens`), so a leaked state database gives no token away. The server looks tokens
//! up on every request, so `token create` and `token revoke` take effect at once.

use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db::{field, Timestamp};
use crate::error::{Error, Result};
use crate::ident::ConsumerId;

use super::StateStore;

/// What every token starts with (helps secret scanners and people recognise one).
pub const TOKEN_PREFIX: &str = "tdm_";
/// Length of a token: the prefix and 64 hex digits.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 64;

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "consumer", rename_all = "lowercase")]
pub enum TokenScope {
    /// May do everything.
    Admin,
    /// Acts only as this consumer.
    Consumer(ConsumerId),
}

/// A stored token, without its secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenRecord {
    /// Public id, for `token list` and `token revoke`.
    pub id: String,
    #[serde(flatten)]
    pub scope: TokenScope,
    pub created_at: Timestamp,
}

/// The SHA-256 digest of a token, as stored (hex).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// True when `token` has the shape tokens have (no database needed to refuse the rest).
pub fn well_formed(token: &str) -> bool {
    token.len() == TOKEN_LEN
        && token
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|h| h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Constant-time equality of two digests.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| Error::Runtime(format!("no random numbers from the operating system: {e}")))?;
    Ok(hex::encode(buf))
}

impl StateStore {
    /// Creates a token for `scope` and returns its record and the token itself (shown once,
    /// never stored).
    pub async fn create_token(&self, scope: TokenScope) -> Result<(TokenRecord, String)> {
        let token = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
        let record = TokenRecord {
            id: format!("tok_{}", random_hex(6)?),
            scope,
            created_at: Timestamp::now(),
        };
        let (kind, consumer) = match &record.scope {
            TokenScope::Admin => ("admin", None),
            TokenScope::Consumer(c) => ("consumer", Some(c.as_str().to_string())),
        };
        self.db
            .execute(
                "INSERT INTO tidemark_tokens (token_id, kind, consumer_id, token_hash, created_at) \
                 VALUES (?, ?, ?, ?, ?)",
                &[
                    record.id.as_str().into(),
                    kind.into(),
                    consumer.into(),
                    hex::encode(token_digest(&token)).into(),
                    record.created_at.to_string().into(),
                ],
            )
            .await?;
        Ok((record, token))
    }

    /// Every token, oldest first (without secrets).
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = self
            .db
            .query(
                "SELECT token_id, kind, consumer_id, created_at FROM tidemark_tokens \
                 ORDER BY created_at, token_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    id: field(r, 0).unwrap_or_default().to_string(),
                    scope: scope_of(field(r, 1), field(r, 2))?,
                    created_at: Timestamp::parse(field(r, 3).unwrap_or_default())?,
                })
            })
            .collect()
    }

    /// Deletes the token with this id; false when there was none.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        let n = self
            .db
            .execute(
                "DELETE FROM tidemark_tokens WHERE token_id = ?",
                &[id.into()],
            )
            .await?;
        Ok(n > 0)
    }

    /// True when at least one token exists.
    pub async fn any_token(&self) -> Result<bool> {
        let rows = self
            .db
            .query("SELECT token_id FROM tidemark_tokens LIMIT 1", &[])
            .await?;
        Ok(!rows.is_empty())
    }

    /// The scope of `token`, if it is a current token.
    pub async fn token_scope(&self, token: &str) -> Result<Option<TokenScope>> {
        if !well_formed(token) {
            return Ok(None);
        }
        let digest = token_digest(token);
        let rows = self
            .db
            .query(
                "SELECT kind, consumer_id, token_hash FROM tidemark_tokens WHERE token_hash = ?",
                &[hex::encode(digest).into()],
            )
            .await?;
        for r in &rows {
            let stored = field(r, 2)
                .and_then(|h| hex::decode(h).ok())
                .and_then(|h| <[u8; 32]>::try_from(h).ok());
            if stored.is_some_and(|s| digests_equal(&s, &digest)) {
                return scope_of(field(r, 0), field(r, 1)).map(Some);
            }
        }
        Ok(None)
    }
}

fn scope_of(kind: Option<&str>, consumer: Option<&str>) -> Result<TokenScope> {
    match (kind, consumer) {
        (Some("admin"), _) => Ok(TokenScope::Admin),
        (Some("consumer"), Some(c)) => Ok(TokenScope::Consumer(ConsumerId::new(c)?)),
        _ => Err(Error::Runtime(format!(
            "corrupt token record in state: kind {kind:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_one_shape_and_digests_compare() {
        let t = format!("{TOKEN_PREFIX}{}", random_hex(32).expect("random"));
        assert!(well_formed(&t));
        assert!(!well_formed(&t[..t.len() - 1]));
        assert!(!well_formed(&t.to_uppercase()));
        assert!(!well_formed(&format!("{t}0")));
        assert!(!well_formed(""));
        let other = format!("{TOKEN_PREFIX}{}", random_hex(32).expect("random"));
        assert_ne!(t, other, "two tokens differ");
        assert!(digests_equal(&token_digest(&t), &token_digest(&t)));
        assert!(!digests_equal(&token_digest(&t), &token_digest(&other)));
    }
}
