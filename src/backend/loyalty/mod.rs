//! The loyalty (member-card POS) backend: loyalty-pos.txt.
