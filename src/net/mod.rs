//! Network plumbing shared by backends and simulators: the HTTPS client and TLS material.
pub mod client;
pub mod tls;
pub mod tracked;
pub mod words;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_request;
