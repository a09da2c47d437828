//! Helpers shared by the integration tests. Each test binary includes this module (`mod common;`)
//! and uses a part of it.
#![allow(dead_code)]

pub mod data;
pub mod files;
