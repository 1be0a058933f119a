//! PII recovery (being written).
