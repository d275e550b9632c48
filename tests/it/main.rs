//! The one integration-test binary: the real daemon binary, real sled on disk, real TLS, real sockets.
mod api;
mod crash;
mod devices;
mod lottery;
mod order;
mod support;
mod journal_guard;
