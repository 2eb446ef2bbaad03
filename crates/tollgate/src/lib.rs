//! tollgate: per-organisation API metering and rate limiting for axum.
