//! Dynamic volume provisioning for Kubernetes: the [`Provisioner`] trait a
//! storage backend implements, and the [`Engine`] that drives it.
//!
//! A cluster user writes a PersistentVolumeClaim naming a StorageClass; the
//! PV binder in kube-controller-manager annotates the claim with the class's
//! provisioner name; the engine sees the annotation, asks the [`Provisioner`]
//! for a backend volume and saves a PersistentVolume bound to the claim. When
//! the claim goes, the binder marks the volume `Released`, and the engine
//! deletes the backend volume and then the PersistentVolume.
//!
//! The engine's rules live in a few pure modules: [`decision`] (the claim
//! lifecycle: what to do about one volume, and what follows each answer of
//! the provisioner), [`memory`] (what the engine remembers of each volume),
//! [`volume`] (the PersistentVolume it saves), [`backoff`];
//! the I/O shell is [`engine`]. How it stays crash-safe is described in
//! [`engine`]'s documentation.
//!
//! With the `testing` feature, the `testing` module is a kit for tests of
//! provisioners: `testing::FakeCluster`, an in-process API server with a PV
//! binder and fault injection; `testing::ScriptedBackend`, a provisioner
//! whose answers a test scripts; waits for events and backend states under
//! paused time; and `testing::fixtures`, builders for the objects tests
//! create. Enable it for tests only (in `[dev-dependencies]`); without it,
//! none of the kit is built.

pub mod backoff;
mod cache;
mod cause;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod decision;
pub mod engine;
mod events;
pub mod journal;
pub mod keys;
pub mod leader;
pub mod memory;
pub mod metrics;
mod own_writes;
pub mod provisioner;
pub mod quantity;
mod queue;
pub mod release;
pub mod removals;
#[cfg(feature = "serve")]
pub mod serve;
mod shutdown;
// Built for the crate's own tests too: its unit tests use the kit.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod volume;

pub use engine::{Engine, EngineBuilder, EngineConfig, EngineError, EngineStatus};
pub use shutdown::shutdown_on_signals;

// The crates in the public API, so a provisioner needs no version of its own
// that could disagree with the engine's.
pub use async_trait::async_trait;
pub use k8s_openapi;
pub use kube;
pub use provisioner::{BoxError, Cause, DeleteError, ProvisionError, ProvisionRequest, ProvisionedVolume, Provisioner};
