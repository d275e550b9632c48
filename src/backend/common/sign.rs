//! Request signing helpers shared by the vendors (written on another branch; this placeholder keeps the kit building).
