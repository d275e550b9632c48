//! Pieces every vendor backend may share.
pub mod sign;
