//! Shared test support: the transcript format and runner, and the
//! client/server `Pair`. Each test crate uses only part of it.
#![allow(dead_code)]

pub mod pair;
pub mod transcript;
