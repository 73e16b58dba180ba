//! Egress (temporary stub).
