//! garage-ipfs keeps IPFS blocks durable in a Garage cluster.
//!
//! It joins the cluster as an RPC peer without a storage role and writes
//! each block straight into Garage's content-addressed block manager
//! (replicated on the layout's nodes, acknowledged once on a write quorum),
//! with an index from multihash to block in Garage's K2V item table.
//! `docs/DESIGN.md` explains the choices; `README.md` how to run it.
//!
//! # Layout
//!
//! Layers, each using only those above it in this list:
//!
//! - [`cid`]: CID parsing, multihash verification, index key forms.
//! - [`ipld`]: the links of dag-pb and dag-cbor blocks.
//! - [`config`]: the connector's TOML configuration and secret loading.
//! - [`garage`]: the connector (a roleless `System` peer) and its raw
//!   cluster operations: block transfers, table and K2V requests.
//! - [`store`]: the [`store::BlockStore`] trait, the Garage-backed store
//!   with namespaces, anchors and index, and an in-memory store.
//! - [`dag`]: CAR export and import over any store.
//! - [`api`]: the daemon's surfaces: trustless gateway, kubo RPC, gRPC.
//! - `harness` (feature `harness`): a local three-node Garage cluster of
//!   real `garage` processes, and kubo nodes, for development, the tools
//!   and the integration tests.
//! - `tools` (feature `tools`, default): the `garage-ipfs` command line,
//!   the daemon's wiring, the benchmarks and the soak.
//!
//! A program that embeds the store needs none of the last two:
//! `garage-ipfs = { …, default-features = false }`.

#![warn(unreachable_pub)]

pub mod api;
pub mod cid;
pub mod config;
pub mod dag;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod garage;
#[cfg(feature = "harness")]
pub mod harness;
pub mod ipld;
pub mod store;
#[cfg(feature = "tools")]
pub mod tools;
pub mod unixfs;

pub use config::Config;
pub use garage::Connector;
pub use store::{BlockStore, GarageStore, MemBlockStore, Namespace};
