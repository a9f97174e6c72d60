//! Settings: built from flags and environment variables at start-up,
//! overridden field by field by an optional config file that is re-read
//! whenever it changes, and per class by StorageClass parameters.
//!
//! Precedence, highest first: class parameter, config file, flag or
//! environment variable, built-in default.
//!
//! # The config file
//! JSON (which is also YAML's flow style, so a ConfigMap can hold it as is).
//! JSON keeps the dependency list short: `serde_json` is already in the
//! workspace, and the most used Rust YAML crate is no longer maintained.
//! Every key is optional; unknown keys are errors (a typo must not be
//! silently ignored):
//!
//! ```json
//! {
//!   "baseDirs": ["/mnt/disk1/volumes", "/mnt/disk2/volumes"],
//!   "nodeBaseDirs": { "node-7": ["/data/volumes"] },
//!   "pathPattern": "{namespace}/{name}-{pv}",
//!   "mode": "0770", "uid": 1000, "gid": 1000,
//!   "volumeType": "local",
//!   "onDelete": "delete",
//!   "overcommitRatio": 1.0, "minFreeInodes": 1024
//! }
//! ```
//! `nodeBaseDirs` entries replace `baseDirs` on the node named by the key, so one
//! ConfigMap serves a DaemonSet on unlike nodes.
//!
//! The file is checked every few seconds (its modification time, size and
//! inode, which also catches a ConfigMap's atomic symlink swap). A file that
//! fails to parse or validate is logged and ignored: the last valid settings
//! stay in force.
//!
//! # Class parameters
//! `baseDir` (pins one of the node's base dirs), `pathPattern`, `mode`, `uid`,
//! `gid`, `volumeType` (`local` or `hostPath`), `onDelete` (`delete` or `archive`).
//! Anything else is refused with a message naming the known keys.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::capacity::{CapacityRules, OvercommitRatio};
use crate::fs::DirAccess;
use crate::layout::{PathPattern, clean_base_dir};

/// The kind of PersistentVolume source to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeType {
    /// `local`: a missing directory makes the pod fail to start (fails closed).
    Local,
    /// `hostPath` with type `Directory` (also fails closed on a missing directory).
    HostPath,
}

impl VolumeType {
    /// Parses `local` or `hostPath`.
    pub fn parse(text: &str) -> Result<VolumeType, String> {
        match text {
            "local" => Ok(VolumeType::Local),
            "hostPath" => Ok(VolumeType::HostPath),
            other => Err(format!("volume type {other:?} is not one of \"local\", \"hostPath\"")),
        }
    }
}

/// What deleting a volume does to its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDelete {
    /// Remove the directory and its content.
    Delete,
    /// Rename it to `archived-<pv>-<UTC timestamp>` in its base dir.
    Archive,
}

impl OnDelete {
    /// Parses `delete` or `archive`.
    pub fn parse(text: &str) -> Result<OnDelete, String> {
        match text {
            "delete" => Ok(OnDelete::Delete),
            "archive" => Ok(OnDelete::Archive),
            other => Err(format!("onDelete {other:?} is not one of \"delete\", \"archive\"")),
        }
    }

    /// The text [`OnDelete::parse`] reads.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Archive => "archive",
        }
    }
}

/// Parses octal permission bits (`0770`, `770` or `0o770`). World-writable
/// modes and set-user-id are refused; set-group-id and sticky are allowed.
///
/// ```
/// use hostpath_provisioner::config::parse_mode;
/// assert_eq!(parse_mode("0770"), Ok(0o770));
/// assert_eq!(parse_mode("2750"), Ok(0o2750));
/// assert!(parse_mode("0777").is_err());
/// assert!(parse_mode("rwx").is_err());
/// ```
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8).map_err(|_| format!("mode {text:?} is not an octal number like 0770"))?;
    if mode > 0o7777 {
        return Err(format!("mode {text:?} is larger than 07777"));
    }
    if mode & 0o002 != 0 {
        return Err(format!("mode {text:?} is world-writable; use 0770 or 0750"));
    }
    if mode & 0o4000 != 0 {
        return Err(format!("mode {text:?} sets set-user-id on a directory"));
    }
    Ok(mode)
}

/// The node's settings in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Base dirs on this node, clean absolute paths.
    pub base_dirs: Vec<PathBuf>,
    /// Where a volume goes inside its base dir.
    pub path_pattern: PathPattern,
    /// Permissions and owner of new directories.
    pub access: DirAccess,
    /// The PV source type.
    pub volume_type: VolumeType,
    /// What delete does.
    pub on_delete: OnDelete,
    /// When a base dir's filesystem can take one more volume.
    pub capacity: CapacityRules,
}

/// Why settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Two base dirs overlap once symlinks are resolved.
    #[error(
        "base dirs {} and {} overlap once symlinks are resolved ({} and {}): a volume of one could lie inside \
         the other, and its delete remove the other's volumes; give base dirs that do not contain each other",
        first.display(), second.display(), first_resolved.display(), second_resolved.display()
    )]
    Overlap {
        /// One base dir, as configured.
        first: PathBuf,
        /// The other.
        second: PathBuf,
        /// Where the first resolves to.
        first_resolved: PathBuf,
        /// Where the second resolves to.
        second_resolved: PathBuf,
    },
    /// The file is not valid JSON for this schema.
    #[error("cannot parse {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// `dir` with every symlink resolved; a missing tail (or one that cannot be
/// resolved) is kept as written below its deepest resolvable ancestor.
fn resolve(dir: &Path) -> PathBuf {
    let mut tail = Vec::new();
    let mut at = dir;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return tail.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                at = parent;
            }
            _ => return dir.to_path_buf(),
        }
    }
}

fn base_dirs(texts: &[String]) -> Result<Vec<PathBuf>, ConfigError> {
    if texts.is_empty() {
        return Err(ConfigError::Invalid("at least one base dir is needed".into()));
    }
    let mut dirs = Vec::new();
    for t in texts {
        let d = clean_base_dir(t).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if dirs.iter().any(|x: &PathBuf| x.starts_with(&d) || d.starts_with(x)) {
            return Err(ConfigError::Invalid(format!("base dir {t:?} overlaps another base dir")));
        }
        dirs.push(d);
    }
    Ok(dirs)
}

impl Settings {
    /// Settings from flag values.
    #[allow(clippy::too_many_arguments)]
    pub fn from_values(
        dirs: &[String],
        pattern: Option<&str>,
        mode: &str,
        uid: Option<u32>,
        gid: Option<u32>,
        volume_type: &str,
        on_delete: &str,
    ) -> Result<Settings, ConfigError> {
        let invalid = ConfigError::Invalid;
        Ok(Settings {
            base_dirs: base_dirs(dirs)?,
            path_pattern: match pattern.filter(|p| !p.is_empty()) {
                Some(p) => PathPattern::parse(p).map_err(|e| invalid(e.to_string()))?,
                None => PathPattern::default(),
            },
            access: DirAccess { mode: parse_mode(mode).map_err(invalid)?, uid, gid },
            volume_type: VolumeType::parse(volume_type).map_err(invalid)?,
            on_delete: OnDelete::parse(on_delete).map_err(invalid)?,
            capacity: CapacityRules::default(),
        })
    }

    /// Refuses base dirs that overlap once symlinks are resolved (`/a` and
    /// `/b/c` where `/b` links to `/a`): the lexical check in
    /// [`Settings::from_values`] cannot see that. A base dir that does not
    /// exist (yet) is resolved through its deepest existing ancestor.
    pub fn check_resolved_base_dirs(&self) -> Result<(), ConfigError> {
        let resolved: Vec<PathBuf> = self.base_dirs.iter().map(|d| resolve(d)).collect();
        for (i, a) in resolved.iter().enumerate() {
            for (j, b) in resolved.iter().enumerate().skip(i + 1) {
                if a.starts_with(b) || b.starts_with(a) {
                    return Err(ConfigError::Overlap {
                        first: self.base_dirs[i].clone(),
                        second: self.base_dirs[j].clone(),
                        first_resolved: a.clone(),
                        second_resolved: b.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// These settings overridden by a config file's values for node `node`.
    pub fn with_file(&self, file: &FileConfig, node: &str) -> Result<Settings, ConfigError> {
        let invalid = ConfigError::Invalid;
        let mut s = self.clone();
        if let Some(dirs) = file.node_base_dirs.get(node).or(file.base_dirs.as_ref()) {
            s.base_dirs = base_dirs(dirs)?;
        }
        if let Some(p) = &file.path_pattern {
            s.path_pattern = PathPattern::parse(p).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(m) = &file.mode {
            s.access.mode = parse_mode(m).map_err(invalid)?;
        }
        s.access.uid = file.uid.or(s.access.uid);
        s.access.gid = file.gid.or(s.access.gid);
        if let Some(t) = &file.volume_type {
            s.volume_type = VolumeType::parse(t).map_err(invalid)?;
        }
        if let Some(d) = &file.on_delete {
            s.on_delete = OnDelete::parse(d).map_err(invalid)?;
        }
        if let Some(r) = file.overcommit_ratio {
            s.capacity.overcommit_ratio = OvercommitRatio::new(r).map_err(invalid)?;
        }
        if let Some(n) = file.min_free_inodes {
            s.capacity.min_free_inodes = n;
        }
        Ok(s)
    }
}

/// The config file's schema; every field optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    /// Base dirs.
    pub base_dirs: Option<Vec<String>>,
    /// Base dirs per node name, replacing `baseDirs` there.
    #[serde(default)]
    pub node_base_dirs: BTreeMap<String, Vec<String>>,
    /// Path pattern.
    pub path_pattern: Option<String>,
    /// Octal mode.
    pub mode: Option<String>,
    /// Owner uid.
    pub uid: Option<u32>,
    /// Owner gid.
    pub gid: Option<u32>,
    /// `local` or `hostPath`.
    pub volume_type: Option<String>,
    /// `delete` or `archive`.
    pub on_delete: Option<String>,
    /// How far promised requests may exceed a filesystem's size.
    pub overcommit_ratio: Option<f64>,
    /// Free inodes a filesystem must keep to take a new volume.
    pub min_free_inodes: Option<u64>,
}

/// What one class asks for, resolved against the node's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassOptions {
    /// The base dirs to choose from (one, when pinned by `baseDir`).
    pub base_dirs: Vec<PathBuf>,
    /// Path pattern.
    pub path_pattern: PathPattern,
    /// Permissions and owner.
    pub access: DirAccess,
    /// PV source type.
    pub volume_type: VolumeType,
    /// What delete does.
    pub on_delete: OnDelete,
    /// The node's capacity rules (not a class parameter).
    pub capacity: CapacityRules,
}

/// The StorageClass parameters this provisioner reads.
pub const CLASS_PARAMETERS: [&str; 7] = ["baseDir", "pathPattern", "mode", "uid", "gid", "volumeType", "onDelete"];

/// Resolves a class's parameters against `settings`. The error is a message
/// for a `ProvisioningFailed` event.
pub fn class_options(settings: &Settings, params: &BTreeMap<String, String>) -> Result<ClassOptions, String> {
    let mut o = ClassOptions {
        base_dirs: settings.base_dirs.clone(),
        path_pattern: settings.path_pattern.clone(),
        access: settings.access,
        volume_type: settings.volume_type,
        on_delete: settings.on_delete,
        capacity: settings.capacity,
    };
    for (key, value) in params {
        let bad = |why: String| format!("invalid StorageClass parameter {key}={value:?}: {why}");
        match key.as_str() {
            "baseDir" => {
                let dir = clean_base_dir(value).map_err(|e| bad(e.to_string()))?;
                if !settings.base_dirs.contains(&dir) {
                    let known: Vec<_> = settings.base_dirs.iter().map(|d| d.display().to_string()).collect();
                    return Err(bad(format!("not a base dir of this node (it has {})", known.join(", "))));
                }
                o.base_dirs = vec![dir];
            }
            "pathPattern" => o.path_pattern = PathPattern::parse(value).map_err(|e| bad(e.to_string()))?,
            "mode" => o.access.mode = parse_mode(value).map_err(bad)?,
            "uid" => o.access.uid = Some(value.parse().map_err(|_| bad("not a number".into()))?),
            "gid" => o.access.gid = Some(value.parse().map_err(|_| bad("not a number".into()))?),
            "volumeType" => o.volume_type = VolumeType::parse(value).map_err(bad)?,
            "onDelete" => o.on_delete = OnDelete::parse(value).map_err(bad)?,
            _ => {
                return Err(format!(
                    "unknown StorageClass parameter {key:?}; the hostpath provisioner knows {}",
                    CLASS_PARAMETERS.join(", ")
                ));
            }
        }
    }
    Ok(o)
}

/// The settings in force, shared between the provisioner and the reloader.
#[derive(Clone, Debug)]
pub struct SharedSettings(Arc<RwLock<Arc<Settings>>>);

impl SharedSettings {
    /// Shares `settings`.
    pub fn new(settings: Settings) -> Self {
        SharedSettings(Arc::new(RwLock::new(Arc::new(settings))))
    }

    /// The settings now.
    pub fn get(&self) -> Arc<Settings> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the settings.
    pub fn set(&self, settings: Settings) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
    }
}

/// A config file over flag settings, re-read when it changes.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    node: String,
    flags: Settings,
    shared: SharedSettings,
    seen: Option<(Option<SystemTime>, u64, u64)>,
}

/// What one [`ConfigFile::check`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The file did not change.
    Unchanged,
    /// New settings are in force.
    Applied,
    /// The file is absent: the flag settings are in force.
    Absent,
}

impl ConfigFile {
    /// Watches `path` for node `node`; `flags` are the settings it overrides.
    pub fn new(path: impl Into<PathBuf>, node: &str, flags: Settings, shared: SharedSettings) -> Self {
        ConfigFile { path: path.into(), node: node.to_string(), flags, shared, seen: None }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed. On error the settings in force stay.
    pub fn check(&mut self) -> Result<Reload, ConfigError> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.seen.take().is_some() || self.shared.get().as_ref() != &self.flags {
                    self.shared.set(self.flags.clone());
                }
                return Ok(Reload::Absent);
            }
            Err(source) => return Err(ConfigError::Read { path: self.path.clone(), source }),
        };
        let stamp = (meta.modified().ok(), meta.len(), meta.ino());
        if self.seen == Some(stamp) {
            return Ok(Reload::Unchanged);
        }
        // Remember the stamp even on error, so a bad file is reported once, not every period.
        self.seen = Some(stamp);
        let text = std::fs::read(&self.path).map_err(|source| ConfigError::Read { path: self.path.clone(), source })?;
        let file: FileConfig =
            serde_json::from_slice(&text).map_err(|source| ConfigError::Parse { path: self.path.clone(), source })?;
        let settings = self.flags.with_file(&file, &self.node)?;
        settings.check_resolved_base_dirs()?;
        self.shared.set(settings);
        Ok(Reload::Applied)
    }

    /// Checks the file every `period` until `stop` is cancelled, logging changes and errors.
    pub async fn watch(mut self, period: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.check() {
                Ok(Reload::Applied) => {
                    info!(path = %self.path.display(), settings = ?self.shared.get(), "config file reloaded")
                }
                Ok(_) => {}
                Err(e) => error!(error = %e, "config file rejected; keeping the last valid settings"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Settings {
        Settings::from_values(&["/var/hp".into()], None, "0770", None, None, "local", "delete").unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_not_world_writable() {
        assert_eq!(flags().access.mode, 0o770);
        for m in ["0777", "0772", "4770", "17777", "9"] {
            assert!(parse_mode(m).is_err(), "{m}");
        }
    }

    #[test]
    fn class_parameters_override_node_settings() {
        let s =
            Settings::from_values(&["/a".into(), "/b".into()], None, "0750", None, None, "local", "delete").unwrap();
        let o = class_options(
            &s,
            &params(&[
                ("baseDir", "/b/"),
                ("mode", "0700"),
                ("uid", "1000"),
                ("volumeType", "hostPath"),
                ("onDelete", "archive"),
            ]),
        )
        .unwrap();
        assert_eq!(o.base_dirs, vec![PathBuf::from("/b")]);
        assert_eq!(o.access, DirAccess { mode: 0o700, uid: Some(1000), gid: None });
        assert_eq!((o.volume_type, o.on_delete), (VolumeType::HostPath, OnDelete::Archive));
    }

    #[test]
    fn bad_class_parameters_are_explained() {
        let s = flags();
        let cases = [
            (("baseDir", "/etc"), "not a base dir of this node"),
            (("mode", "0777"), "world-writable"),
            (("uid", "root"), "not a number"),
            (("pathPattern", "../{pv}"), "forbidden component"),
            (("volumeType", "nfs"), "is not one of"),
            (("colour", "blue"), "unknown StorageClass parameter \"colour\""),
        ];
        for ((k, v), want) in cases {
            let err = class_options(&s, &params(&[(k, v)])).unwrap_err();
            assert!(err.contains(want), "{k}={v}: {err}");
        }
    }

    #[test]
    fn overlapping_base_dirs_are_refused() {
        let r = Settings::from_values(&["/a".into(), "/a/b".into()], None, "0770", None, None, "local", "delete");
        assert!(r.is_err());
    }

    #[test]
    fn base_dirs_overlapping_through_a_symlink_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("disk");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let (a, b) = (real.display().to_string(), tmp.path().join("link/volumes").display().to_string());
        let s = Settings::from_values(&[a.clone(), b.clone()], None, "0770", None, None, "local", "delete").unwrap();
        let err = s.check_resolved_base_dirs().unwrap_err();
        assert!(matches!(err, ConfigError::Overlap { .. }), "{err}");
        assert!(err.to_string().contains("overlap once symlinks are resolved"), "{err}");
        // The same base dirs from a config file: refused, the last valid settings stay.
        let path = tmp.path().join("config.json");
        std::fs::write(&path, serde_json::json!({ "baseDirs": [a, b] }).to_string()).unwrap();
        let shared = SharedSettings::new(flags());
        let mut file = ConfigFile::new(&path, "node-a", flags(), shared.clone());
        assert!(matches!(file.check(), Err(ConfigError::Overlap { .. })));
        assert_eq!(*shared.get(), flags());
        // Apart, and one of them missing: accepted.
        let apart = [real.display().to_string(), tmp.path().join("missing/x").display().to_string()];
        let s = Settings::from_values(&apart, None, "0770", None, None, "local", "delete").unwrap();
        s.check_resolved_base_dirs().unwrap();
    }

    #[test]
    fn capacity_rules_come_from_the_config_file() {
        let file: FileConfig = serde_json::from_str(r#"{"overcommitRatio": 1.5, "minFreeInodes": 10}"#).unwrap();
        let s = flags().with_file(&file, "node-a").unwrap();
        assert_eq!(s.capacity.overcommit_ratio, OvercommitRatio::new(1.5).unwrap());
        assert_eq!(s.capacity.min_free_inodes, 10);
        assert_eq!(class_options(&s, &BTreeMap::new()).unwrap().capacity, s.capacity);
        let bad: FileConfig = serde_json::from_str(r#"{"overcommitRatio": 0}"#).unwrap();
        assert!(flags().with_file(&bad, "node-a").is_err());
    }

    #[test]
    fn config_file_overrides_flags_and_a_bad_file_keeps_the_last_valid_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.json");
        let shared = SharedSettings::new(flags());
        let mut file = ConfigFile::new(&path, "node-a", flags(), shared.clone());
        assert_eq!(file.check().unwrap(), Reload::Absent);

        std::fs::write(&path, r#"{"baseDirs": ["/x"], "nodeBaseDirs": {"node-a": ["/y", "/z"]}, "mode": "0750"}"#)
            .unwrap();
        assert_eq!(file.check().unwrap(), Reload::Applied);
        assert_eq!(shared.get().base_dirs, vec![PathBuf::from("/y"), PathBuf::from("/z")]);
        assert_eq!(shared.get().access.mode, 0o750);
        assert_eq!(file.check().unwrap(), Reload::Unchanged);

        std::fs::write(&path, r#"{"mode": "0777", "padding": "makes the size differ"}"#).unwrap();
        assert!(file.check().is_err());
        assert_eq!(shared.get().access.mode, 0o750, "the last valid settings stay");
        std::fs::write(&path, r#"{"baseDirs": ["/x"], "typo": 1, "more padding here"#).unwrap();
        assert!(file.check().is_err());
        assert_eq!(file.check().unwrap(), Reload::Unchanged, "a bad file is reported once");

        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.check().unwrap(), Reload::Absent);
        assert_eq!(*shared.get(), flags());
    }
}
