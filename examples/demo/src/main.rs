//! tollgate-demo: a small API behind the tollgate layer.
fn main() {}
