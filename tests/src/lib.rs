//! Shared helpers for the end-to-end tests.
pub mod browser;
pub mod http;
pub mod redis_cluster;
pub mod redis_server;
pub mod redis_tls;
