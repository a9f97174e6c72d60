//! Where a volume's directory goes: the path pattern, and the containment
//! rules that keep every directory strictly inside its base dir.
//!
//! Everything here is lexical and pure: no filesystem call, so no symlink is
//! ever resolved. The filesystem side ([`crate::fs`]) then walks the
//! validated components one by one with `O_NOFOLLOW`, so a symlink planted
//! anywhere on the way is refused rather than followed.
//!
//! A pattern is text with the placeholders `{namespace}`, `{name}` (the
//! claim's) and `{pv}` (the PersistentVolume's name); `/` separates
//! directories. The default is `{pv}`. After expansion, the relative path
//! must be made of 1 to [`MAX_COMPONENTS`] components, each non-empty, not
//! `.` or `..`, without NUL, at most [`MAX_COMPONENT_BYTES`] bytes, and the
//! whole at most [`MAX_RELATIVE_BYTES`]; it must not start with `/` and its
//! first component must not start with `archived-` (the archive prefix) nor
//! be [`LEDGER_DIR`] (where the provisioner records its directories).
//!
//! # One directory per claim
//! A pattern must be injective over valid names: either it names the PV
//! (`{pv}`, unique in the cluster), or it holds both `{namespace}` and
//! `{name}`, each only as a whole path component (`{namespace}/{name}`,
//! never `{namespace}-{name}`, where claims `team-a/db` and `team/a-db`
//! meet). The values substituted must each be one component (no `/`).
//! Injectivity of one pattern does not keep two patterns apart (classes on
//! one base dir may use different ones): [`placement`] checks a new path
//! against every live volume of the base dir.

use std::fmt;
use std::path::{Path, PathBuf};

/// Most bytes in one path component (the usual `NAME_MAX`).
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Most components a pattern may expand to.
pub const MAX_COMPONENTS: usize = 8;
/// Most bytes in the whole relative path.
pub const MAX_RELATIVE_BYTES: usize = 1024;
/// Prefix of archived volume directories in a base dir.
pub const ARCHIVE_PREFIX: &str = "archived-";
/// The directory in each base dir where the provisioner records which PV
/// created which directory. No pattern can expand to it, so no volume
/// holds it and no tenant reaches it.
pub const LEDGER_DIR: &str = ".provisioner-ledger";

/// Why a pattern, a name or a path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The pattern uses a placeholder this provisioner does not know.
    #[error(
        "path pattern {pattern:?} uses unknown placeholder {placeholder:?}; known: {{namespace}}, {{name}}, {{pv}}"
    )]
    UnknownPlaceholder {
        /// The pattern.
        pattern: String,
        /// The placeholder.
        placeholder: String,
    },
    /// The pattern has an unmatched `{` or `}`.
    #[error("path pattern {0:?} has an unmatched brace")]
    UnmatchedBrace(String),
    /// The pattern could map two claims to one directory.
    #[error(
        "path pattern {0:?} must contain {{pv}}, or both {{namespace}} and {{name}}, so each claim gets its own directory"
    )]
    NotUnique(String),
    /// The pattern could map two claims to one directory: a placeholder
    /// shares a path component with other text.
    #[error(
        "path pattern {pattern:?} is not one directory per claim: {placeholder} shares the component {component:?} \
         with other text, so different claims can expand to the same path (e.g. {{namespace}}-{{name}} gives \
         team-a/db and team/a-db the same directory); use {placeholder} as a whole component (\"{{namespace}}/{{name}}\") or add {{pv}}"
    )]
    NotInjective {
        /// The pattern.
        pattern: String,
        /// The placeholder.
        placeholder: &'static str,
        /// The pattern component holding it.
        component: String,
    },
    /// A value substituted for a placeholder is not one path component.
    #[error("{placeholder} value {value:?} contains '/'; a name is one path component")]
    SlashInValue {
        /// The placeholder.
        placeholder: &'static str,
        /// The value.
        value: String,
    },
    /// The expanded path is absolute.
    #[error("path {0:?} is absolute; it must be relative to the base dir")]
    Absolute(String),
    /// A component is empty, `.` or `..`.
    #[error("path {path:?} has a forbidden component {component:?} (empty, '.' or '..')")]
    BadComponent {
        /// The path.
        path: String,
        /// The component.
        component: String,
    },
    /// A component contains NUL.
    #[error("path {0:?} contains a NUL byte")]
    Nul(String),
    /// A component or the whole path is too long, or has too many components.
    #[error(
        "path {0:?} is too long (at most {MAX_COMPONENT_BYTES} bytes per component, {MAX_COMPONENTS} components, {MAX_RELATIVE_BYTES} bytes)"
    )]
    TooLong(String),
    /// The first component would look like an archive.
    #[error("path {0:?} starts with the reserved prefix {ARCHIVE_PREFIX:?}")]
    Reserved(String),
    /// The first component is the provisioner's ledger.
    #[error("path {0:?} is inside the provisioner's ledger {LEDGER_DIR:?}")]
    Ledger(String),
    /// A configured base dir is not a clean absolute path.
    #[error("base dir {0:?} must be an absolute path without '.', '..' or empty components")]
    BadBaseDir(String),
    /// A volume's path is not inside any configured base dir.
    #[error("path {0:?} is not inside any configured base dir")]
    Outside(String),
}

/// A validated path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern(String);

impl Default for PathPattern {
    fn default() -> Self {
        PathPattern("{pv}".to_string())
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The values a pattern's placeholders expand to.
#[derive(Clone, Copy, Debug)]
pub struct PathVars<'a> {
    /// The claim's namespace.
    pub namespace: &'a str,
    /// The claim's name.
    pub name: &'a str,
    /// The PersistentVolume's name.
    pub pv: &'a str,
}

enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

fn pieces(pattern: &str) -> Result<Vec<Piece<'_>>, LayoutError> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            None => {
                out.push(Piece::Text(rest));
                rest = "";
            }
            Some(i) if rest.as_bytes()[i] == b'}' => return Err(LayoutError::UnmatchedBrace(pattern.into())),
            Some(i) => {
                out.push(Piece::Text(&rest[..i]));
                let after = &rest[i + 1..];
                let end = after.find(['{', '}']).ok_or_else(|| LayoutError::UnmatchedBrace(pattern.into()))?;
                if after.as_bytes()[end] == b'{' {
                    return Err(LayoutError::UnmatchedBrace(pattern.into()));
                }
                out.push(Piece::Var(&after[..end]));
                rest = &after[end + 1..];
            }
        }
    }
    Ok(out)
}

impl PathPattern {
    /// Checks a pattern's syntax: known placeholders, balanced braces, one
    /// directory per claim, and no literal text that could escape.
    ///
    /// ```
    /// use hostpath_provisioner::layout::PathPattern;
    /// assert!(PathPattern::parse("{namespace}/{name}").is_ok());
    /// assert!(PathPattern::parse("../{pv}").is_err());
    /// assert!(PathPattern::parse("/abs/{pv}").is_err());
    /// assert!(PathPattern::parse("{name}").is_err(), "two namespaces could collide");
    /// assert!(PathPattern::parse("{namespace}-{name}").is_err(), "team-a/db and team/a-db collide");
    /// assert!(PathPattern::parse("{namespace}-{name}/{pv}").is_ok(), "the PV name keeps them apart");
    /// ```
    pub fn parse(pattern: &str) -> Result<PathPattern, LayoutError> {
        let mut has = (false, false, false);
        for piece in pieces(pattern)? {
            match piece {
                Piece::Var("namespace") => has.0 = true,
                Piece::Var("name") => has.1 = true,
                Piece::Var("pv") => has.2 = true,
                Piece::Var(other) => {
                    return Err(LayoutError::UnknownPlaceholder {
                        pattern: pattern.into(),
                        placeholder: format!("{{{other}}}"),
                    });
                }
                Piece::Text(_) => {}
            }
        }
        if !(has.2 || (has.0 && has.1)) {
            return Err(LayoutError::NotUnique(pattern.into()));
        }
        if !has.2 {
            for component in pattern.split('/') {
                for placeholder in ["{namespace}", "{name}"] {
                    if component.contains(placeholder) && component != placeholder {
                        return Err(LayoutError::NotInjective {
                            pattern: pattern.into(),
                            placeholder,
                            component: component.into(),
                        });
                    }
                }
            }
        }
        let parsed = PathPattern(pattern.to_string());
        // Literal text is checked by expanding with harmless values.
        parsed.expand(&PathVars { namespace: "ns", name: "claim", pv: "pv" })?;
        Ok(parsed)
    }

    /// Expands the pattern and validates the result.
    ///
    /// ```
    /// use hostpath_provisioner::layout::{PathPattern, PathVars};
    /// let p = PathPattern::parse("{namespace}/{name}-{pv}").unwrap();
    /// let rel = p.expand(&PathVars { namespace: "team", name: "data", pv: "pvc-1" }).unwrap();
    /// assert_eq!(rel.to_string(), "team/data-pvc-1");
    /// let evil = PathVars { namespace: "..", name: "x", pv: "pvc-1" };
    /// assert!(p.expand(&evil).is_err());
    /// ```
    pub fn expand(&self, vars: &PathVars<'_>) -> Result<RelPath, LayoutError> {
        let mut out = String::new();
        let one_component = |placeholder: &'static str, value: &str| {
            if value.contains('/') {
                return Err(LayoutError::SlashInValue { placeholder, value: value.into() });
            }
            Ok(())
        };
        for piece in pieces(&self.0)? {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var("namespace") => {
                    one_component("{namespace}", vars.namespace)?;
                    out.push_str(vars.namespace)
                }
                Piece::Var("name") => {
                    one_component("{name}", vars.name)?;
                    out.push_str(vars.name)
                }
                Piece::Var("pv") => {
                    one_component("{pv}", vars.pv)?;
                    out.push_str(vars.pv)
                }
                Piece::Var(other) => {
                    return Err(LayoutError::UnknownPlaceholder {
                        pattern: self.0.clone(),
                        placeholder: format!("{{{other}}}"),
                    });
                }
            }
        }
        RelPath::parse(&out)
    }

    /// Whether the pattern names the PV, so an existing directory can only
    /// belong to the same volume.
    pub fn names_pv(&self) -> bool {
        self.0.contains("{pv}")
    }
}

/// A validated path relative to a base dir: one or more plain components.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelPath(Vec<String>);

impl RelPath {
    /// Validates `/`-separated relative text.
    pub fn parse(text: &str) -> Result<RelPath, LayoutError> {
        if text.starts_with('/') {
            return Err(LayoutError::Absolute(text.into()));
        }
        if text.contains('\0') {
            return Err(LayoutError::Nul(text.into()));
        }
        let components: Vec<String> = text.split('/').map(str::to_string).collect();
        if text.len() > MAX_RELATIVE_BYTES || components.len() > MAX_COMPONENTS {
            return Err(LayoutError::TooLong(text.into()));
        }
        for c in &components {
            if c.is_empty() || c == "." || c == ".." {
                return Err(LayoutError::BadComponent { path: text.into(), component: c.clone() });
            }
            if c.len() > MAX_COMPONENT_BYTES {
                return Err(LayoutError::TooLong(text.into()));
            }
        }
        if components[0].starts_with(ARCHIVE_PREFIX) {
            return Err(LayoutError::Reserved(text.into()));
        }
        if components[0] == LEDGER_DIR {
            return Err(LayoutError::Ledger(text.into()));
        }
        Ok(RelPath(components))
    }

    /// Whether `self` and `other` are the same path or one lies inside the other.
    ///
    /// ```
    /// use hostpath_provisioner::layout::RelPath;
    /// let p = |s| RelPath::parse(s).unwrap();
    /// assert!(p("a/b").overlaps(&p("a/b/c")));
    /// assert!(p("a/b/c").overlaps(&p("a/b")));
    /// assert!(!p("a/b").overlaps(&p("a/bc")));
    /// ```
    pub fn overlaps(&self, other: &RelPath) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a == b)
    }

    /// The same path with `_<pv>` appended to its last component: where a
    /// volume goes when its pattern's path is taken. `_` is in no Kubernetes
    /// name, so no `{namespace}` or `{name}` component can be this.
    pub fn with_pv_suffix(&self, pv: &str) -> Result<RelPath, LayoutError> {
        let mut text = self.to_string();
        text.push('_');
        text.push_str(pv);
        RelPath::parse(&text)
    }

    /// The components, first to last.
    pub fn components(&self) -> &[String] {
        &self.0
    }

    /// The path under `base`.
    pub fn under(&self, base: &Path) -> PathBuf {
        let mut p = base.to_path_buf();
        p.extend(&self.0);
        p
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// Normalises a configured base dir: absolute, no `.`/`..`/empty components,
/// no trailing slash (except for `/` itself, which is refused).
pub fn clean_base_dir(text: &str) -> Result<PathBuf, LayoutError> {
    let trimmed = text.trim_end_matches('/');
    let bad = || LayoutError::BadBaseDir(text.into());
    let rest = trimmed.strip_prefix('/').ok_or_else(bad)?;
    if rest.is_empty() || rest.contains('\0') {
        return Err(bad());
    }
    if rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad());
    }
    Ok(PathBuf::from(trimmed))
}

/// Finds which base dir `path` (a volume's path, as written in its PV) lies
/// in, lexically, and the validated relative path below it. Refuses anything
/// not strictly inside one of `bases`.
///
/// ```
/// use std::path::PathBuf;
/// use hostpath_provisioner::layout::contained;
/// let bases = [PathBuf::from("/var/hp")];
/// assert_eq!(contained(&bases, "/var/hp/pvc-1").unwrap().1.to_string(), "pvc-1");
/// assert!(contained(&bases, "/var/hp/../etc").is_err());
/// assert!(contained(&bases, "/var/hpx/pvc-1").is_err());
/// assert!(contained(&bases, "/var/hp").is_err());
/// ```
pub fn contained<'b>(bases: &'b [PathBuf], path: &str) -> Result<(&'b Path, RelPath), LayoutError> {
    for base in bases {
        let Some(base_text) = base.to_str() else { continue };
        if let Some(rest) = path.strip_prefix(base_text).and_then(|r| r.strip_prefix('/')) {
            // Archives are inside too; a volume path is never one, but
            // deleting an archived directory by hand-made PV is allowed.
            if rest.split('/').next() == Some(LEDGER_DIR) {
                return Err(LayoutError::Ledger(path.into()));
            }
            let rel = RelPath::parse(rest).or_else(|e| match e {
                LayoutError::Reserved(_) => Ok(RelPath(rest.split('/').map(str::to_string).collect())),
                other => Err(other),
            })?;
            return Ok((base.as_path(), rel));
        }
    }
    Err(LayoutError::Outside(path.into()))
}

/// A volume the ledger of a base dir records as live.
#[derive(Clone, Copy, Debug)]
pub struct LiveVolume<'a> {
    /// The PV that created it.
    pub pv: &'a str,
    /// Its directory.
    pub path: &'a RelPath,
}

/// Why a new volume cannot be placed in a base dir.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The path would contain, or lie inside, another live volume.
    #[error(
        "path {path} would {} the directory {other_path} of volume {other_pv}; no volume may hold another \
         (two StorageClasses with different path patterns share this base dir?)",
        if path.components().len() < other_path.components().len() { "contain" } else { "lie inside" }
    )]
    Nested {
        /// The path asked for.
        path: RelPath,
        /// The other volume.
        other_pv: String,
        /// Its directory.
        other_path: RelPath,
    },
    /// The path and its `_<pv>` variant are both taken.
    #[error(
        "path {path} and its variant {alternative} are both taken (by another volume or a directory the provisioner did not create)"
    )]
    Taken {
        /// The path asked for.
        path: RelPath,
        /// The variant tried next.
        alternative: RelPath,
    },
    /// The variant is not a valid path (too long).
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// Where volume `pv`, whose pattern gives `wanted`, goes in a base dir with
/// the `live` volumes: `wanted` itself, unless it is taken (another live
/// volume's directory, or a directory that `exists_unrecorded` on disk
/// without being in the ledger), then `wanted` with `_<pv>` appended. A
/// path that would contain or lie inside a live volume's is refused.
///
/// ```
/// use hostpath_provisioner::layout::{LiveVolume, RelPath, placement};
/// let p = |s| RelPath::parse(s).unwrap();
/// let old = p("ns/data");
/// let live = [LiveVolume { pv: "pvc-old", path: &old }];
/// // A claim re-created with the same name gets its own directory.
/// assert_eq!(placement(&p("ns/data"), "pvc-new", &live, |_| false).unwrap(), p("ns/data_pvc-new"));
/// assert!(placement(&p("ns/data/pvc-x"), "pvc-x", &live, |_| false).is_err(), "inside another volume");
/// ```
pub fn placement(
    wanted: &RelPath,
    pv: &str,
    live: &[LiveVolume<'_>],
    exists_unrecorded: impl Fn(&RelPath) -> bool,
) -> Result<RelPath, PlacementError> {
    let alternative = wanted.with_pv_suffix(pv)?;
    'candidates: for candidate in [wanted, &alternative] {
        for other in live.iter().filter(|v| v.pv != pv) {
            if other.path == candidate {
                continue 'candidates;
            }
            if candidate.overlaps(other.path) {
                return Err(PlacementError::Nested {
                    path: candidate.clone(),
                    other_pv: other.pv.to_string(),
                    other_path: other.path.clone(),
                });
            }
        }
        if !exists_unrecorded(candidate) {
            return Ok(candidate.clone());
        }
    }
    Err(PlacementError::Taken { path: wanted.clone(), alternative })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vars<'a>(namespace: &'a str, name: &'a str, pv: &'a str) -> PathVars<'a> {
        PathVars { namespace, name, pv }
    }

    #[test]
    fn default_pattern_is_the_pv_name() {
        let rel = PathPattern::default().expand(&vars("ns", "c", "pvc-123")).unwrap();
        assert_eq!(rel.under(Path::new("/base")), PathBuf::from("/base/pvc-123"));
    }

    #[test]
    fn patterns_that_escape_or_collide_are_refused() {
        for bad in
            ["../{pv}", "/{pv}", "a//{pv}", "./{pv}", "{pv}/..", "{pv}/", "{nope}/{pv}", "{pv", "pv}", "{name}", "x"]
        {
            assert!(PathPattern::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn claim_names_that_escape_are_refused() {
        let p = PathPattern::parse("{namespace}/{name}").unwrap();
        for name in ["..", ".", "", "a/../../etc", "a\0b", &"x".repeat(256)] {
            assert!(p.expand(&vars("ns", name, "pv")).is_err(), "{name:?} should be refused");
        }
        assert!(
            matches!(p.expand(&vars("ns", "a/b", "pv")), Err(LayoutError::SlashInValue { .. })),
            "a name is one component: a slash would let two claims meet"
        );
    }

    #[test]
    fn archive_prefix_is_reserved() {
        let p = PathPattern::parse("{name}/{namespace}").unwrap();
        assert_eq!(p.expand(&vars("ns", "archived-x", "pv")), Err(LayoutError::Reserved("archived-x/ns".into())));
    }

    #[test]
    fn base_dirs_are_clean_absolute_paths() {
        assert_eq!(clean_base_dir("/var/hp/").unwrap(), PathBuf::from("/var/hp"));
        for bad in ["", "/", "relative", "/a/../b", "/a//b", "/a/./b"] {
            assert!(clean_base_dir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn delete_paths_must_be_strictly_inside_a_base_dir() {
        let bases = [PathBuf::from("/a"), PathBuf::from("/b/c")];
        assert_eq!(contained(&bases, "/b/c/x/y").unwrap().0, Path::new("/b/c"));
        for bad in ["/a", "/a/", "/ab/x", "/a/../x", "/a/./x", "/a//x", "/c/x", "a/x", "/b/x"] {
            assert!(contained(&bases, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn namespace_and_name_sharing_a_component_are_refused() {
        for bad in ["{namespace}-{name}", "{namespace}{name}", "x{namespace}/{name}", "{namespace}/{name}.d"] {
            assert!(
                matches!(PathPattern::parse(bad), Err(LayoutError::NotInjective { .. })),
                "{bad:?} should be refused"
            );
        }
        for good in ["{namespace}/{name}", "{name}/{namespace}", "vols/{namespace}/{name}", "{namespace}-{name}-{pv}"] {
            assert!(PathPattern::parse(good).is_ok(), "{good:?} should be accepted");
        }
    }

    /// Every DNS label of up to `len` characters over `a`, `b` and `-`.
    fn small_names(len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut out = Vec::new();
        for _ in 0..len {
            all = all.iter().flat_map(|p| ["a", "b", "-"].map(|c| format!("{p}{c}"))).collect();
            out.extend(all.iter().filter(|n| !n.starts_with('-') && !n.ends_with('-')).cloned());
        }
        out
    }

    #[test]
    fn accepted_patterns_give_every_claim_its_own_directory() {
        let names = small_names(4);
        // The review's example: refused now, and rightly.
        let glued = PathPattern("{namespace}-{name}".into());
        assert_eq!(
            glued.expand(&vars("team-a", "db", "p")).unwrap(),
            glued.expand(&vars("team", "a-db", "p")).unwrap()
        );
        for pattern in ["{namespace}/{name}", "{name}/{namespace}", "x/{name}/y/{namespace}"] {
            let p = PathPattern::parse(pattern).unwrap();
            let mut seen = std::collections::HashMap::new();
            for ns in &names {
                for name in &names {
                    let rel = p.expand(&vars(ns, name, "pv")).unwrap();
                    if let Some(other) = seen.insert(rel.clone(), (ns.clone(), name.clone())) {
                        panic!("{pattern}: {other:?} and {:?} both give {rel}", (ns, name));
                    }
                }
            }
        }
    }

    #[test]
    fn the_ledger_is_reachable_by_no_pattern_and_no_deleted_path() {
        assert_eq!(
            PathPattern::parse(".provisioner-ledger/{pv}"),
            Err(LayoutError::Ledger(".provisioner-ledger/pv".into()))
        );
        assert!(matches!(
            contained(&[PathBuf::from("/b")], "/b/.provisioner-ledger/pvc-1"),
            Err(LayoutError::Ledger(_))
        ));
        // Namespaces and names cannot start with a dot, so no expansion reaches it either.
        let p = PathPattern::parse("{namespace}/{name}").unwrap();
        assert!(p.expand(&vars(".provisioner-ledger", "x", "pv")).is_err());
    }

    #[test]
    fn classes_with_different_patterns_never_share_or_nest_directories() {
        let a = PathPattern::parse("{namespace}/{name}").unwrap();
        let b = PathPattern::parse("{name}/{namespace}").unwrap();
        let c = PathPattern::parse("{namespace}/{name}/{pv}").unwrap();
        let first = a.expand(&vars("x", "y", "pvc-1")).unwrap();
        let live = [LiveVolume { pv: "pvc-1", path: &first }];
        // Same path from the other class: that claim gets its own directory.
        let same = b.expand(&vars("y", "x", "pvc-2")).unwrap();
        assert_eq!(same, first);
        let placed = placement(&same, "pvc-2", &live, |_| false).unwrap();
        assert_eq!(placed.to_string(), "x/y_pvc-2");
        // Inside the first volume: refused.
        let inside = c.expand(&vars("x", "y", "pvc-3")).unwrap();
        assert!(matches!(placement(&inside, "pvc-3", &live, |_| false), Err(PlacementError::Nested { .. })));
        // Containing it: refused.
        let outer = RelPath::parse("x").unwrap();
        assert!(matches!(placement(&outer, "pvc-4", &live, |_| false), Err(PlacementError::Nested { .. })));
        // A directory on disk that no ledger entry records is not handed out.
        let fresh = RelPath::parse("z/w").unwrap();
        assert_eq!(placement(&fresh, "pvc-5", &live, |r| *r == fresh).unwrap().to_string(), "z/w_pvc-5");
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("..".to_string()),
            Just(".".to_string()),
            Just("../..".to_string()),
            Just("/".to_string()),
            Just("/etc/passwd".to_string()),
            "[a-z./]{0,12}",
            "\\PC{0,40}",
            "[a-z]{250,300}",
            proptest::collection::vec(prop_oneof!["\\.\\.", "[a-zé日/]{1,4}", Just("\0".to_string())], 0..8)
                .prop_map(|v| v.join("/")),
        ]
    }

    fn any_pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("{namespace}".to_string()),
                Just("{name}".to_string()),
                Just("{pv}".to_string()),
                Just("/".to_string()),
                Just("..".to_string()),
                Just(".".to_string()),
                "\\PC{0,6}",
            ],
            0..8,
        )
        .prop_map(|v| v.concat())
    }

    /// Lexically resolves `base/rel` the way the kernel would if every
    /// component were a plain directory.
    fn resolve(base: &Path, rel: &RelPath) -> PathBuf {
        let mut out = base.to_path_buf();
        for c in rel.components() {
            match c.as_str() {
                "." => {}
                ".." => {
                    out.pop();
                }
                c => out.push(c),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn no_pattern_or_name_yields_a_path_outside_the_base_dir(
            pattern in any_pattern(), namespace in any_text(), name in any_text(), pv in any_text()
        ) {
            let base = Path::new("/srv/volumes");
            if let Ok(p) = PathPattern::parse(&pattern)
                && let Ok(rel) = p.expand(&vars(&namespace, &name, &pv))
            {
                let full = rel.under(base);
                let resolved = resolve(base, &rel);
                prop_assert!(resolved.starts_with(base) && resolved != base, "{full:?} resolves to {resolved:?}");
                prop_assert_eq!(&resolved, &full);
                prop_assert!(full.to_str().is_some_and(|s| !s.contains('\0')));
                for c in rel.components() {
                    prop_assert!(!c.is_empty() && c.len() <= MAX_COMPONENT_BYTES);
                }
                // What provisioning wrote, deleting reads back to the same place.
                let bases = [base.to_path_buf()];
                let (b, back) = contained(&bases, full.to_str().unwrap()).unwrap();
                prop_assert_eq!(b, base);
                prop_assert_eq!(back, rel);
            }
        }

        #[test]
        fn no_pv_path_outside_a_base_dir_is_accepted_for_deletion(path in any_text()) {
            let base = PathBuf::from("/srv/volumes");
            let full = format!("/srv/volumes/{path}");
            if let Ok((_, rel)) = contained(std::slice::from_ref(&base), &full) {
                let resolved = resolve(&base, &rel);
                prop_assert!(resolved.starts_with(&base) && resolved != base);
            }
            prop_assert!(contained(std::slice::from_ref(&base), &path).is_err() || path.starts_with("/srv/volumes/"));
        }
    }
}
