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
//! - [`api`]: the daemon's surfaces: trustless gateway, kubo RPC, gRPC.
//! - [`cid`]: CID parsing, multihash verification, index key forms.
//! - [`config`]: the connector's TOML configuration and secret loading.
//! - [`daemon`]: config → connector → store → surfaces, until a signal.
//! - [`dag`]: DAG links, CAR export and import.
//! - [`garage`]: the connector (a roleless `System` peer) and its raw
//!   cluster operations: block transfers, table and K2V requests.
//! - [`store`]: the [`store::BlockStore`] trait, the Garage-backed store
//!   with namespaces, anchors and index, and an in-memory store for tests.
//! - [`cli`]: the `garage-ipfs` command line, one file per noun.
//! - [`net`]: TCP_NODELAY on every TCP socket of the process.
//! - [`harness`]: a local three-node Garage cluster of real `garage`
//!   processes, for development and the integration tests.
//! - [`bench`]: `garage-ipfs bench`, the connector against Garage's S3 API
//!   and the local disk on one cluster.

pub mod api;
pub mod bench;
pub mod cid;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dag;
pub mod garage;
pub mod harness;
pub mod net;
pub mod soak;
pub mod store;

pub use config::Config;
pub use garage::Connector;
pub use store::{BlockStore, GarageStore, MemBlockStore, Namespace};
