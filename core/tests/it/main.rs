mod quic;
mod store;
