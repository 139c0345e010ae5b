mod api;
mod cli;
mod quic;
mod store;
