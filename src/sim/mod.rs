//! Built-in backend simulators, for `posgate demo` and the tests.
//!
//! Simulators verify what the specs say (fields, keys, PIN blocks, batches), keep real state, and inject
//! faults on demand so tests can prove recovery. Shared pieces: [`faults`] and the TLS HTTP [`server`].
pub mod consign;
pub mod faults;
pub mod lottery;
pub mod loyalty;
pub mod scenic;
pub mod server;
pub mod wallet;

pub use faults::Fault;
