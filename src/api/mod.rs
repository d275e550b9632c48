//! The local HTTP+JSON API for POS apps over a Unix socket and loopback TCP.
