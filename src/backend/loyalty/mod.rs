//! The loyalty (member-card POS) backend: loyalty-pos.txt. (placeholder until the backend lands)
