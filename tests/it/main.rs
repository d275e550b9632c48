//! The one integration-test binary: the real daemon binary, real sled on disk, real TLS, real sockets.
mod api;
mod bigans;
mod crash;
mod devices;
mod lottery;
mod money;
mod net;
mod order;
mod strict;
mod soak;
mod schemathesis;
mod support;
mod journal_guard;
