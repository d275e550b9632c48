//! Built-in backend simulators, for `posgate demo` and the tests.
