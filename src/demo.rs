//! `posgate demo`: the daemon with the built-in simulators and example profiles.
