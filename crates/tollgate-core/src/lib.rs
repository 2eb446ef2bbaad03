//! tollgate-core
pub mod error;
pub mod org;
pub mod plan;
pub mod policy;
pub mod route;
pub mod time;
pub mod window;
pub use error::{PolicyError, StoreError};
pub use org::{Adjustment, Environment, KeyDigest, Org, OrgId, Override};
pub use plan::{Concurrency, Dimension, Limit, LimitZone, Plan, Tier, parse_zone};
pub use policy::{
    OnStoreError, Policy, PolicyBuilder, ResetFormat, ResolvedLimit, ResolvedOrg, ResolvedTier,
    ServerSettings,
};
pub use route::{RoutePattern, RouteRule, Treatment};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use window::{Bounds, Window};
