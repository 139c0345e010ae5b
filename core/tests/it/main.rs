mod api;
mod cli;
mod evidence;
mod poll;
mod quic;
mod registry_probe;
mod store;
