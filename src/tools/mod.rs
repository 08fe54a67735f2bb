//! The `garage-ipfs` program's tools, above the library: the command
//! line, the daemon's wiring, the benchmarks and the soak. Built with the
//! `tools` feature (on by default; the binary needs it). A program that
//! embeds the store turns default features off and gets none of this,
//! nor its dependencies (clap, anyhow, indicatif, object_store, reqwest…).

pub mod bench;
pub mod cli;
pub mod daemon;
pub mod nemesis;
pub mod soak;
pub mod util;
