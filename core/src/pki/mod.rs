//! PKI: CA, server and agent certificates, enrollment tokens (design.md §3). Being written.
