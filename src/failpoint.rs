//! Failpoints for crash tests. Built with the `failpoints` feature (the test builds only: the
//! crate's dev-dependency on itself turns it on), [`fault`] aborts the process at the named
//! point when `TIDEMARK_FAULT` names it, as `kill -9` would there. Without the feature it does
//! nothing: the shipped binary reads no such variable and cannot be made to crash by it.

/// Aborts the process when `TIDEMARK_FAULT` is `point` (with the `failpoints` feature).
#[cfg(feature = "failpoints")]
pub fn fault(point: &str) {
    if std::env::var("TIDEMARK_FAULT").is_ok_and(|v| v == point) {
        std::process::abort();
    }
}

/// Does nothing: built without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn fault(_point: &str) {}
