//! Kubernetes resource quantities ("1Gi", "500M", "1.5e3") as byte counts.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

/// Parses a quantity into bytes, rounding fractions up. `None` when the
/// text is not a quantity or does not fit in a `u64`.
///
/// ```
/// use provisioner_core::quantity::parse_bytes;
/// assert_eq!(parse_bytes("1Mi"), Some(1 << 20));
/// assert_eq!(parse_bytes("1.5Gi"), Some(3 << 29));
/// assert_eq!(parse_bytes("2k"), Some(2000));
/// assert_eq!(parse_bytes("1e3"), Some(1000));
/// assert_eq!(parse_bytes("1500m"), Some(2));
/// assert_eq!(parse_bytes("lots"), None);
/// ```
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() || number.starts_with('-') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let bytes = (value * factor).ceil();
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The claim's `spec.resources.requests.storage` in bytes.
pub fn requested_bytes(claim: &PersistentVolumeClaim) -> Option<u64> {
    let q = claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    parse_bytes(&q.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn binary_and_decimal_suffixes_differ() {
        assert_eq!(parse_bytes("1Gi"), Some(1_073_741_824));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("8Ei"), Some(8 * 1024u64.pow(6)));
    }

    #[test]
    fn rejects_negative_and_unknown_suffixes() {
        assert_eq!(parse_bytes("-1Gi"), None);
        assert_eq!(parse_bytes("1Zi"), None);
        assert_eq!(parse_bytes(""), None);
    }

    proptest! {
        #[test]
        fn whole_mebibytes_round_trip(n in 0u64..1_000_000) {
            prop_assert_eq!(parse_bytes(&format!("{n}Mi")), Some(n << 20));
        }
    }
}
