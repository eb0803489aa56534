//! Who may do what on `tidemark serve` (PRODUCT.md, "Access"). Requests carry
//! `Authorization: Bearer TOKEN`. Once any token exists (or `TIDEMARK_ADMIN_TOKEN` is set, or
//! the server listens beyond loopback), every request needs a valid one, except `/health` (and
//! the status endpoints with `--public-status`). Tokens are looked up in the state database on
//! every request, so creating or revoking one takes effect at once. An admin token may do
//! everything; a consumer token acts only as its consumer, which the handlers check with
//! [`Principal::may_act_as`] once they know the consumer a request concerns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::ident::ConsumerId;
use crate::state::tokens::{digests_equal, token_digest, TokenScope};
use crate::state::StateStore;

use super::routes::{ApiError, AppState};

/// The access rules a server runs with.
#[derive(Clone)]
pub struct Access {
    pub state: StateStore,
    /// Digest of `TIDEMARK_ADMIN_TOKEN`, if set.
    pub env_admin: Option<[u8; 32]>,
    /// Require a token even when none exists (the server listens beyond loopback).
    pub always: bool,
    /// `/`, `/stats`, `/metrics` and `/openapi.json` need no token.
    pub public_status: bool,
    /// Whether tokens existed when the state database last answered. While it does not answer,
    /// a loopback server that had none stays open (no token can be made meanwhile: tokens are
    /// made in that database), and one that had some answers 503.
    pub tokens_seen: Arc<AtomicBool>,
}

/// Who a request acts for, as the access layer found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No token is configured: the server is open (loopback only).
    Open,
    Admin,
    Consumer(ConsumerId),
}

impl Principal {
    /// 403 unless this principal may act as `consumer`.
    pub fn may_act_as(&self, consumer: &ConsumerId) -> Result<(), ApiError> {
        match self {
            Principal::Open | Principal::Admin => Ok(()),
            Principal::Consumer(c) if c == consumer => Ok(()),
            Principal::Consumer(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this token may act only as its own consumer",
            )),
        }
    }
}

/// Longest `Authorization` value looked at; real ones are under 100 bytes.
const MAX_AUTHORIZATION: usize = 1024;

/// Routes open to everyone (the status ones only with `--public-status`).
enum Class {
    Open,
    Status,
    Api,
}

fn class_of(route: &str) -> Class {
    match route {
        "/health" => Class::Open,
        "/" | "/page/live" | "/stats" | "/metrics" | "/openapi.json" => Class::Status,
        _ => Class::Api,
    }
}

fn error(status: StatusCode, message: String) -> Response {
    let mut resp = (status, Json(json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn unauthorized(message: &str) -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        format!("{message}; send Authorization: Bearer TOKEN (see `tidemark token create`)"),
    )
}

fn forbidden(message: String) -> Response {
    error(StatusCode::FORBIDDEN, message)
}

/// The bearer token of the request: `Ok(None)` without an `Authorization` header, `Err` with
/// a message for a malformed one. The message never repeats the header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    if value.len() > MAX_AUTHORIZATION {
        return Err("the Authorization header is too long to hold a token");
    }
    let text = value
        .to_str()
        .map_err(|_| "the Authorization header must be visible ASCII")?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or("the Authorization header must be `Bearer TOKEN`")?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err("the Authorization header must be `Bearer TOKEN`");
    }
    Ok(Some(token.trim()))
}

impl Access {
    /// The principal of `token`, if it is a current token.
    async fn resolve(&self, token: &str) -> Result<Option<Principal>, Response> {
        let digest = token_digest(token);
        if self
            .env_admin
            .as_ref()
            .is_some_and(|admin| digests_equal(admin, &digest))
        {
            return Ok(Some(Principal::Admin));
        }
        match self.state.token_scope(token).await {
            Ok(scope) => Ok(scope.map(|s| match s {
                TokenScope::Admin => Principal::Admin,
                TokenScope::Consumer(c) => Principal::Consumer(c),
            })),
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// True when requests need a token.
    async fn required(&self) -> Result<bool, Response> {
        if self.always || self.env_admin.is_some() {
            return Ok(true);
        }
        match self.state.any_token().await {
            Ok(any) => {
                self.tokens_seen.store(any, Ordering::SeqCst);
                Ok(any)
            }
            Err(_) if !self.tokens_seen.load(Ordering::SeqCst) => Ok(false),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

fn unavailable(e: &crate::error::Error) -> Response {
    tracing::warn!(error = %e, "cannot read tokens from the state database");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "cannot check the token: the state database does not answer".into(),
    )
}

/// The access layer: answers 401/403 itself, or passes the request on with its [`Principal`].
pub async fn authorize(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let access = &s.access;
    let class = class_of(&route);
    let open = match class {
        Class::Open => true,
        Class::Status => access.public_status,
        Class::Api => false,
    };
    let principal = if open {
        Principal::Open
    } else {
        match bearer(req.headers()) {
            Err(message) => return unauthorized(message),
            Ok(Some(token)) => match access.resolve(token).await {
                Err(resp) => return resp,
                Ok(Some(p)) => p,
                Ok(None) => return unauthorized("unknown or revoked token"),
            },
            Ok(None) => match access.required().await {
                Err(resp) => return resp,
                Ok(true) => return unauthorized("this endpoint needs a token"),
                Ok(false) => Principal::Open,
            },
        }
    };
    if matches!(class, Class::Status) && route != "/openapi.json" {
        if let Principal::Consumer(_) = principal {
            return forbidden(
                "the status endpoints show every consumer: they need an admin token".into(),
            );
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                header::AUTHORIZATION,
                header::HeaderValue::from_bytes(v).expect("header value"),
            );
        }
        h
    }

    #[test]
    fn bearer_tokens_are_read_and_malformed_headers_refused() {
        assert_eq!(bearer(&headers(&[])), Ok(None));
        assert_eq!(bearer(&headers(&[b"Bearer abc"])), Ok(Some("abc")));
        assert_eq!(bearer(&headers(&[b"bearer  abc "])), Ok(Some("abc")));
        for bad in [
            b"Basic dXNlcjpwYXNz".as_slice(),
            b"Bearer",
            b"Bearer ",
            b"abc",
            "Bearer \u{e9}t\u{e9}".as_bytes(),
        ] {
            assert!(bearer(&headers(&[bad])).is_err(), "{bad:?}");
        }
        assert!(bearer(&headers(&[b"Bearer a", b"Bearer b"])).is_err());
        let long = format!("Bearer {}", "a".repeat(100_000));
        assert!(bearer(&headers(&[long.as_bytes()])).is_err());
    }

    #[test]
    fn consumers_act_only_as_themselves() {
        let a = ConsumerId::new("a").unwrap();
        let b = ConsumerId::new("b").unwrap();
        assert!(Principal::Consumer(a.clone()).may_act_as(&a).is_ok());
        let denied = Principal::Consumer(a.clone()).may_act_as(&b);
        assert_eq!(
            denied.map_err(|e| e.into_response().status()),
            Err(StatusCode::FORBIDDEN)
        );
        assert!(Principal::Admin.may_act_as(&b).is_ok());
        assert!(Principal::Open.may_act_as(&b).is_ok());
    }
}
