//! Worked examples of provisioners built on `provisioner-core`; each example
//! is an `[[example]]` target of this package.
