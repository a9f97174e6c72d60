//! A node-local directory provisioner on `provisioner-core`: one instance per
//! node (a DaemonSet), each making a directory per claim on its own disk for
//! claims the scheduler placed on its node, and handing it out as a `local`
//! (or `hostPath`) PersistentVolume pinned to that node. No helper pods.
//!
//! - [`layout`]: the path pattern and the containment rules (pure);
//! - [`capacity`]: whether a base dir can take one more volume (pure);
//! - [`config`]: flags, the reloadable config file, class parameters;
//! - [`fs`]: every filesystem call, symlink- and special-file-safe, and the ledger of
//!   which PV created which directory;
//! - [`disk`]: a volume's directory made and removed under the ledger;
//! - [`provisioner`]: the [`Provisioner`](provisioner_core::Provisioner) implementation;
//! - [`cli`]: the binary's flags and start-up.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod capacity;
pub mod cli;
pub mod config;
pub mod disk;
pub mod fs;
pub mod layout;
pub mod provisioner;

pub use config::{Settings, SharedSettings};
pub use provisioner::{HostPathProvisioner, NodeIdentity};
