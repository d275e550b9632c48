//! TLS material for simulators, demos and tests: a private test CA, server certificates, acceptors.
// (filled in by the simulator work)
