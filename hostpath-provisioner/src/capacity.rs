//! Whether a base dir can take one more volume, and which one does (pure).
//!
//! A base dir takes a claim when its filesystem has, all at once:
//! - at least the requested bytes free (available to unprivileged users);
//! - at least [`CapacityRules::min_free_inodes`] inodes free, where the
//!   filesystem counts inodes at all (a volume with no inode left cannot
//!   hold a single file, however many bytes are free);
//! - room in what it has promised: the requests of the live volumes the
//!   ledgers of this filesystem's base dirs record, plus this claim's, stay
//!   within the filesystem's size times the overcommit ratio.
//!
//! Plain directories are not quota-limited, so the promise is bookkeeping:
//! it keeps a node from accepting claims it could not hold if they all
//! filled their request, and the free-bytes check catches what volumes
//! really wrote.
//!
//! Among the base dirs that pass, the one with the most free bytes wins;
//! ties go to the first listed.

use std::fmt;

/// The default of [`CapacityRules::min_free_inodes`].
pub const DEFAULT_MIN_FREE_INODES: u64 = 1024;

/// How far the requests of a filesystem's live volumes may exceed its size:
/// 1.0 (the default) promises no more than the size, 2.0 twice as much.
/// Always finite and above zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OvercommitRatio(f64);

// `new` refuses NaN, so equality is total.
impl Eq for OvercommitRatio {}

impl Default for OvercommitRatio {
    fn default() -> Self {
        OvercommitRatio(1.0)
    }
}

impl OvercommitRatio {
    /// A ratio, if `value` is finite and above zero.
    ///
    /// ```
    /// use hostpath_provisioner::capacity::OvercommitRatio;
    /// assert!(OvercommitRatio::new(1.5).is_ok());
    /// assert!(OvercommitRatio::new(0.0).is_err());
    /// assert!(OvercommitRatio::new(f64::NAN).is_err());
    /// ```
    pub fn new(value: f64) -> Result<OvercommitRatio, String> {
        if value.is_finite() && value > 0.0 {
            Ok(OvercommitRatio(value))
        } else {
            Err(format!("overcommit ratio {value} is not a number above 0 (1.0 promises at most the disk's size)"))
        }
    }

    /// Parses a ratio like `1.0` or `1.5`.
    pub fn parse(text: &str) -> Result<OvercommitRatio, String> {
        let value: f64 =
            text.trim().parse().map_err(|_| format!("overcommit ratio {text:?} is not a number like 1.0"))?;
        OvercommitRatio::new(value)
    }

    /// The ratio.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The most that may be promised on a filesystem of `size` bytes.
    pub fn limit(self, size: u64) -> u64 {
        // f64 -> u64 saturates; precision loss below a byte in 2^53 does not matter here.
        (size as f64 * self.0) as u64
    }
}

impl fmt::Display for OvercommitRatio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The rules a base dir must pass to take a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityRules {
    /// See [`OvercommitRatio`].
    pub overcommit_ratio: OvercommitRatio,
    /// Free inodes a filesystem must keep to take a new volume.
    pub min_free_inodes: u64,
}

impl Default for CapacityRules {
    fn default() -> Self {
        CapacityRules { overcommit_ratio: OvercommitRatio::default(), min_free_inodes: DEFAULT_MIN_FREE_INODES }
    }
}

/// What a base dir's filesystem has, and what is promised on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Bytes available to unprivileged users.
    pub free_bytes: u64,
    /// Inodes available to unprivileged users; `None` where the filesystem
    /// does not count them (it reports a total of zero).
    pub free_inodes: Option<u64>,
    /// The filesystem's size in bytes.
    pub size: u64,
    /// Bytes requested by the live volumes recorded on this filesystem.
    pub promised: u64,
    /// How many live volumes those are.
    pub volumes: usize,
}

/// Why a base dir cannot take a claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Fewer free bytes than requested.
    Bytes {
        /// Free bytes.
        free: u64,
    },
    /// Too few free inodes.
    Inodes {
        /// Free inodes.
        free: u64,
        /// The minimum.
        min: u64,
    },
    /// The claim would promise more than the filesystem's size allows.
    Promised {
        /// Already promised.
        promised: u64,
        /// To how many volumes.
        volumes: usize,
        /// The most that may be promised.
        limit: u64,
    },
}

impl Refusal {
    /// A phrase for an event, about a claim of `needed` bytes.
    pub fn explain(&self, needed: u64, ratio: OvercommitRatio) -> String {
        match *self {
            Refusal::Bytes { free } => {
                format!("not enough free space: {free} bytes free, the claim requests {needed}")
            }
            Refusal::Inodes { free, min } => {
                format!(
                    "not enough free inodes: {free} free, fewer than the {min} a new volume needs (--min-free-inodes)"
                )
            }
            Refusal::Promised { promised, volumes, limit } => format!(
                "{promised} bytes already promised to {volumes} volumes; with the claim's {needed} that exceeds \
                 {limit} (the filesystem's size times overcommit ratio {ratio})"
            ),
        }
    }
}

/// Whether `c` can take a claim of `needed` bytes under `rules`.
pub fn refusal(c: &Candidate, needed: u64, rules: &CapacityRules) -> Option<Refusal> {
    if let Some(free) = c.free_inodes
        && free < rules.min_free_inodes
    {
        return Some(Refusal::Inodes { free, min: rules.min_free_inodes });
    }
    if c.free_bytes < needed {
        return Some(Refusal::Bytes { free: c.free_bytes });
    }
    let limit = rules.overcommit_ratio.limit(c.size);
    if c.promised.saturating_add(needed) > limit {
        return Some(Refusal::Promised { promised: c.promised, volumes: c.volumes, limit });
    }
    None
}

/// Picks the base dir for a claim of `needed` bytes: the most free bytes
/// among those that pass `rules`, ties to the first. `Err`: why each was refused.
///
/// ```
/// use hostpath_provisioner::capacity::{Candidate, CapacityRules, choose};
/// let disk = |free_bytes| Candidate { free_bytes, free_inodes: None, size: 100, promised: 0, volumes: 0 };
/// let dirs = [disk(10), disk(30), disk(30)];
/// assert_eq!(choose(&dirs, 20, &CapacityRules::default()), Ok(1));
/// assert!(choose(&dirs, 40, &CapacityRules::default()).is_err());
/// ```
pub fn choose(candidates: &[Candidate], needed: u64, rules: &CapacityRules) -> Result<usize, Vec<Refusal>> {
    let mut best: Option<usize> = None;
    let mut refused = Vec::new();
    for (i, c) in candidates.iter().enumerate() {
        match refusal(c, needed, rules) {
            Some(r) => refused.push(r),
            None if best.is_none_or(|b| c.free_bytes > candidates[b].free_bytes) => best = Some(i),
            None => {}
        }
    }
    best.ok_or(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(free_bytes: u64) -> Candidate {
        Candidate { free_bytes, free_inodes: Some(1 << 20), size: 1000, promised: 0, volumes: 0 }
    }

    #[test]
    fn the_base_dir_with_most_free_space_wins() {
        let rules = CapacityRules::default();
        assert_eq!(choose(&[disk(5), disk(9), disk(7)], 1, &rules), Ok(1));
        assert_eq!(choose(&[disk(5), disk(5)], 5, &rules), Ok(0));
        assert_eq!(choose(&[], 0, &rules), Err(vec![]));
    }

    #[test]
    fn a_filesystem_out_of_inodes_takes_no_claim_whatever_its_free_bytes() {
        let rules = CapacityRules::default();
        let full = Candidate { free_inodes: Some(10), ..disk(900) };
        assert_eq!(choose(&[full], 1, &rules), Err(vec![Refusal::Inodes { free: 10, min: DEFAULT_MIN_FREE_INODES }]));
        assert_eq!(choose(&[full, disk(100)], 1, &rules), Ok(1), "the other base dir serves");
        let uncounted = Candidate { free_inodes: None, ..disk(900) };
        assert_eq!(choose(&[uncounted], 1, &rules), Ok(0), "a filesystem without an inode count");
    }

    #[test]
    fn five_claims_of_60_percent_of_the_disk_do_not_all_fit() {
        let mut c = Candidate { size: 1000, ..disk(1000) };
        let rules = CapacityRules::default();
        let mut taken = 0;
        for _ in 0..5 {
            if choose(&[c], 600, &rules).is_ok() {
                taken += 1;
                c.promised += 600;
                c.volumes += 1;
            }
        }
        assert_eq!(taken, 1);
        let r = choose(&[c], 600, &rules).unwrap_err()[0];
        assert_eq!(r, Refusal::Promised { promised: 600, volumes: 1, limit: 1000 });
        assert!(r.explain(600, rules.overcommit_ratio).contains("overcommit ratio 1"));
    }

    #[test]
    fn the_overcommit_ratio_scales_what_may_be_promised() {
        let rules = CapacityRules { overcommit_ratio: OvercommitRatio::new(2.0).unwrap(), ..Default::default() };
        let c = Candidate { promised: 1200, volumes: 2, ..disk(1000) };
        assert_eq!(choose(&[c], 600, &rules), Ok(0), "1800 of 2000");
        let c = Candidate { promised: 1800, volumes: 3, ..c };
        assert!(choose(&[c], 600, &rules).is_err(), "2400 of 2000");
        assert!(OvercommitRatio::parse("-1").is_err());
        assert!(OvercommitRatio::parse("inf").is_err());
        assert_eq!(OvercommitRatio::parse("1.5").unwrap().get(), 1.5);
    }
}
