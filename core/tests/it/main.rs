mod api;
mod quic;
mod store;
