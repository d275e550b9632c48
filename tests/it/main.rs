//! The one integration-test binary: the real daemon binary, real sled on disk, real TLS, real sockets.
mod api;
mod bigans;
mod callbacks;
mod consign;
mod devices;
mod journal_guard;
mod lottery;
mod money;
mod net;
mod order;
mod plain_http;
mod scenic;
mod schemathesis;
mod strict;
mod support;
mod wallet;
mod world;
