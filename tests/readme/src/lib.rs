//! The README's Rust examples, compiled as doctests of a crate whose only tollhouse dependency is
//! `tollhouse` (with its `redis` and `durable` features): what a new user copies must build as it is.
#![doc = include_str!("../../../README.md")]
// The README shows the `#[test]` a service puts in its own suite to check its policy file.
#![allow(clippy::test_attr_in_doctest)]
