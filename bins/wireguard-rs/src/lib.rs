//! `wireguard-rs`'s command line, shared by the binary and the tools that generate its man
//! page and shell completions.
#![forbid(unsafe_code)]

pub mod cli;
