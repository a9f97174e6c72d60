//! Dynamic volume provisioning for Kubernetes: the [`Provisioner`] trait a
//! storage backend implements, and the engine that drives it.
//!
//! The engine is being built (see the project issues); this crate currently
//! exposes the names that the rest of the workspace depends on.

pub mod leader;
