//! AWS EFS provisioner on `provisioner-core`: a file system or an access point
//! per claim. Not implemented yet; see the project's EFS issue.
