//! Node-local directory provisioner on `provisioner-core`. Not implemented
//! yet; see the project's hostpath issue.
