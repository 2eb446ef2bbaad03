//! tollgate-redis: the Redis store for tollgate.
