//! Unit tests of the wallet backend.
