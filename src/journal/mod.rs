//! The journal: a narrow store trait and its sled implementation with group-commit fsync.
