//! An API that keeps its orgs and API keys in a SQLite file, behind tollhouse.
//!
//! ```text
//! cargo run -p tollhouse-example-sqlite-keys -- --db keys.sqlite --admin-token secret
//! ```
//!
//! - `POST /admin/orgs` (`{"id": "acme", "plan": "pro", "time_zone": "Europe/Amsterdam"}`) adds an
//!   org; `POST /admin/orgs/{org}/keys` makes an API key for it, which works on the next request;
//!   `DELETE /admin/keys/{key}` revokes one. The admin routes take `Authorization: Bearer
//!   <admin token>` and are outside the rate-limit layer.
//! - `GET /v1/items` is metered by the org of the bearer key, under the plan the database names.
//! - Keys are looked up through a bounded cache with a time to live (`--cache-ttl-ms`), so most
//!   requests never reach the database; a key revoked on this instance stops at once, and on
//!   every other instance sharing the file within the TTL. The database holds SHA-256 digests of
//!   the keys, never the keys.
//! - A database that cannot answer is not a wrong key: `503` with `Retry-After`.
//!
//! On start it prints `sqlite-keys listening on http://ADDR`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use tollhouse::identity::{BearerToken, bearer_token};
use tollhouse::{Identity, Metered, Policy, RateLimitLayer, Unidentified};
use tracing_subscriber::EnvFilter;

mod keys;

use keys::{KeyCache, KeyDatabase, LookupError};

/// An API whose orgs and keys live in SQLite, metered by tollhouse.
#[derive(Debug, Parser)]
#[command(name = "sqlite-keys", about)]
struct Args {
    /// The SQLite file of orgs and keys (created if missing)
    #[arg(long, value_name = "FILE")]
    db: PathBuf,

    /// The policy file with the plans [default: the one beside this example]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The address to listen on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3001")]
    listen: String,

    /// The bearer token of the admin routes
    #[arg(long, value_name = "TOKEN")]
    admin_token: String,

    /// How long a looked-up key is trusted before the database is asked again
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    cache_ttl_ms: u64,

    /// The most keys the cache holds
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    cache_capacity: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policy.toml"));
    let policy = match Policy::from_toml_file(&config) {
        Ok(policy) => policy,
        Err(error) => {
            eprintln!("sqlite-keys: refusing to start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let database = match KeyDatabase::open(&args.db) {
        Ok(database) => database,
        Err(error) => {
            eprintln!(
                "sqlite-keys: cannot open the key database {}: {error}",
                args.db.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let keys = KeyCache::new(
        database,
        Duration::from_millis(args.cache_ttl_ms),
        args.cache_capacity,
    );
    let app = app(policy, keys, Arc::from(args.admin_token.as_str()));
    let listener = match tokio::net::TcpListener::bind(args.listen.as_str()).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("sqlite-keys: cannot listen on {}: {error}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(address) => println!("sqlite-keys listening on http://{address}"),
        Err(_) => println!("sqlite-keys listening on http://{}", args.listen),
    }
    if let Err(error) = axum::serve(listener, app).await {
        eprintln!("sqlite-keys: {error}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// What every handler shares.
#[derive(Clone, Debug)]
struct AppState {
    keys: KeyCache,
    admin_token: Arc<str>,
}

/// The API behind the layer, the admin routes outside it.
fn app(policy: Policy, keys: KeyCache, admin_token: Arc<str>) -> Router {
    let limits = RateLimitLayer::new(policy).identify_by_with_state(
        keys.clone(),
        async |(BearerToken(key), State(keys)): (BearerToken, State<KeyCache>),
               policy: Arc<Policy>| {
            match keys.org_of(&key, &policy).await {
                Ok(Some(org)) => Ok(Identity::new(org, &key)),
                Ok(None) => Err(Unidentified::Unknown),
                Err(error) => {
                    tracing::warn!(%error, "sqlite-keys: the key database cannot answer");
                    Err(Unidentified::Unavailable)
                }
            }
        },
    );
    let state = AppState { keys, admin_token };
    Router::new()
        .route("/v1/items", get(items))
        .route_layer(limits)
        .route("/admin/orgs", post(create_org))
        .route("/admin/orgs/{org}/keys", post(create_key))
        .route("/admin/keys/{key}", delete(revoke_key))
        .with_state(state)
}

async fn items(metered: Metered) -> impl IntoResponse {
    axum::Json(json!({ "org": metered.org_id().as_str(), "items": ["alpha", "beta"] }))
}

/// The admin routes' guard: the admin token, and nothing else.
fn admin(state: &AppState, parts: &Parts) -> Result<(), Box<Response>> {
    match bearer_token(parts) {
        Ok(token) if keys::same_secret(token, &state.admin_token) => Ok(()),
        _ => Err(Box::new(
            (StatusCode::UNAUTHORIZED, "admin token required").into_response(),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct NewOrg {
    id: String,
    plan: String,
    time_zone: Option<String>,
}

async fn create_org(
    State(state): State<AppState>,
    parts: Parts,
    axum::Json(org): axum::Json<NewOrg>,
) -> Response {
    if let Err(response) = admin(&state, &parts) {
        return *response;
    }
    let zone = org.time_zone.unwrap_or_else(|| "UTC".to_owned());
    match state
        .keys
        .database()
        .create_org(org.id, org.plan, zone)
        .await
    {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(error) => database_failed(error),
    }
}

async fn create_key(
    State(state): State<AppState>,
    Path(org): Path<String>,
    parts: Parts,
) -> Response {
    if let Err(response) = admin(&state, &parts) {
        return *response;
    }
    match state.keys.database().create_key(org).await {
        Ok(Some(key)) => (StatusCode::CREATED, axum::Json(json!({ "key": key }))).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such org").into_response(),
        Err(error) => database_failed(error),
    }
}

async fn revoke_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
    parts: Parts,
) -> Response {
    if let Err(response) = admin(&state, &parts) {
        return *response;
    }
    match state.keys.revoke(&key).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => (StatusCode::NOT_FOUND, "no such key").into_response(),
        Err(error) => database_failed(error),
    }
}

fn database_failed(error: LookupError) -> Response {
    tracing::warn!(%error, "sqlite-keys: the key database failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("retry-after", "1")],
        "the key database cannot answer right now",
    )
        .into_response()
}
