mod api;
mod cli;
mod poll;
mod quic;
mod store;
