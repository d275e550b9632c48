//! Unit tests of the wallet simulator.
