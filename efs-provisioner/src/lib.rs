//! An AWS EFS provisioner on `provisioner-core`: a file system per claim (the
//! original `efs.aws.skpr.io` design) or an access point per claim on a
//! shared file system (the EFS CSI driver's design).
//!
//! The layers, each usable alone:
//! - [`api`]: the EFS requests behind the [`EfsApi`] trait, with plain data types;
//!   [`sdk`] implements it on the AWS SDK's client.
//! - [`ec2`]: the EC2 subnet and security group lookups ([`NetworkApi`](api::NetworkApi))
//!   of the topology check made before a file system is created.
//! - [`limiter`]: an adaptive rate limit per operation under one ceiling, so
//!   throttling slows the process down where AWS asked.
//! - [`deadline`]: a deadline on every request, so an answer that never comes holds nothing.
//! - [`config`]: defaults (the seed's environment variables) merged with a class's parameters.
//! - [`volume`]: the PersistentVolume for a file system or access point.
//! - [`provisioner`]: the decisions, as a [`Provisioner`](provisioner_core::Provisioner).
//! - [`cli`]: the binary's flags and the wiring.
//! - [`moto`]: helpers for tests against moto's EFS and EC2 on loopback.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod ec2;
pub mod limiter;
pub mod moto;
pub mod provisioner;
pub mod sdk;
pub mod volume;

pub use api::EfsApi;
pub use config::Defaults;
pub use provisioner::EfsProvisioner;
