//! posgate: counter devices, a local POS API, a crash-proof journal and vendor backends in one daemon.
#![forbid(unsafe_code)]
// Nothing that came from outside the process may panic the daemon: tests may unwrap, the product may not.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod backend;
pub mod bench;
pub mod bench_journal;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod devices;
pub mod doctor;
pub mod engine;
pub mod fsmode;
pub mod fuzzing;
pub mod journal;
pub mod metrics;
pub mod model;
pub mod money;
pub mod net;
#[cfg(unix)]
pub mod notify;
pub mod platform;
pub mod secret;
pub mod sim;
pub mod testhook;
#[cfg(windows)]
pub mod winservice;
