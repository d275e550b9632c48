//! The CLI's client of the local API.
