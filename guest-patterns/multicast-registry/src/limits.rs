//! The namespace's Multicast Registry limits and policies, parsed from its settings.

use crate::filter::FilterLimits;
use crate::prism::pattern::types::PatternError;
use crate::shorten;

/// The most records one `registry::list` call asks for.
pub const MAX_LIST_BATCH: u32 = 1000;
/// Limits one namespace applies to every registry request.
/// `[namespaces.X.settings]` overrides the defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_identity_bytes: usize,
    /// Live identities the namespace may hold (enforced by the host, atomically).
    pub max_identities: u64,
    /// Of the metadata's canonical JSON.
    pub max_metadata_bytes: usize,
    /// The top-level map is level 1.
    pub max_metadata_depth: usize,
    pub max_filter_depth: usize,
    pub max_filter_conditions: usize,
    /// The most identities one multicast may reach.
    pub max_fanout: u32,
    /// One multicast's payload; below NATS's default 1 MiB message limit
    /// with room for Prism's envelope.
    pub max_payload_bytes: usize,
    /// Applied when a registration carries no TTL; none means no expiry.
    pub default_ttl_ms: Option<u64>,
    pub max_ttl_ms: u64,
    pub default_page_size: u32,
    pub max_page_size: u32,
    /// A listener's buffer when it asks for none.
    pub listen_buffer: u32,
    pub max_listen_buffer: u32,
    /// Durable consumer group for inbox listeners; none for plain subscriptions.
    pub listen_group: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_identity_bytes: 256,
            max_identities: 100_000,
            max_metadata_bytes: 64 * 1024,
            max_metadata_depth: 16,
            max_filter_depth: 8,
            max_filter_conditions: 256,
            max_fanout: 10_000,
            max_payload_bytes: 1_000_000,
            default_ttl_ms: None,
            max_ttl_ms: 7 * 24 * 3600 * 1000,
            default_page_size: 100,
            max_page_size: 1000,
            listen_buffer: 1024,
            max_listen_buffer: 65_536,
            listen_group: Some("inbox".into()),
        }
    }
}

const KNOWN: &str = "max_identity_bytes, max_identities, max_metadata_bytes, \
    max_metadata_depth, max_filter_depth, max_filter_conditions, max_fanout, max_payload_bytes, \
    default_ttl_ms, \
    max_ttl_ms, default_page_size, max_page_size, listen_buffer, max_listen_buffer, listen_group";

impl Limits {
    pub fn from_settings(settings: &[(String, String)]) -> Result<Self, String> {
        let mut limits = Limits::default();
        for (name, value) in settings {
            match name.as_str() {
                "max_identity_bytes" => limits.max_identity_bytes = positive(name, value)?,
                "max_identities" => limits.max_identities = positive(name, value)?,
                "max_metadata_bytes" => limits.max_metadata_bytes = positive(name, value)?,
                "max_metadata_depth" => limits.max_metadata_depth = positive(name, value)?,
                "max_filter_depth" => limits.max_filter_depth = positive(name, value)?,
                "max_filter_conditions" => limits.max_filter_conditions = positive(name, value)?,
                "max_fanout" => limits.max_fanout = positive(name, value)?,
                "max_payload_bytes" => limits.max_payload_bytes = positive(name, value)?,
                "default_ttl_ms" => limits.default_ttl_ms = Some(positive(name, value)?),
                "max_ttl_ms" => limits.max_ttl_ms = positive(name, value)?,
                "default_page_size" => limits.default_page_size = positive(name, value)?,
                "max_page_size" => limits.max_page_size = positive(name, value)?,
                "listen_buffer" => limits.listen_buffer = positive(name, value)?,
                "max_listen_buffer" => limits.max_listen_buffer = positive(name, value)?,
                "listen_group" => limits.listen_group = listen_group(value)?,
                other => return Err(format!("unknown setting '{other}' (known: {KNOWN})")),
            }
        }
        if limits.default_page_size > limits.max_page_size {
            return Err(format!(
                "default_page_size ({}) is larger than max_page_size ({})",
                limits.default_page_size, limits.max_page_size
            ));
        }
        if let Some(ttl) = limits.default_ttl_ms
            && ttl > limits.max_ttl_ms
        {
            return Err(format!(
                "default_ttl_ms ({ttl}) is larger than max_ttl_ms ({})",
                limits.max_ttl_ms
            ));
        }
        if limits.listen_buffer > limits.max_listen_buffer {
            return Err(format!(
                "listen_buffer ({}) is larger than max_listen_buffer ({})",
                limits.listen_buffer, limits.max_listen_buffer
            ));
        }
        Ok(limits)
    }

    pub fn check_identity(&self, identity: &str) -> Result<(), PatternError> {
        if identity.is_empty() {
            return Err(PatternError::InvalidArgument(
                "identity must not be empty".into(),
            ));
        }
        if identity.len() > self.max_identity_bytes {
            return Err(PatternError::InvalidArgument(format!(
                "identity '{}' is {} bytes; the limit is {} bytes (setting max_identity_bytes)",
                shorten(identity),
                identity.len(),
                self.max_identity_bytes
            )));
        }
        if identity.chars().any(char::is_control) {
            // Escaped, so the message itself carries no control characters.
            return Err(PatternError::InvalidArgument(format!(
                "identity '{}' contains control characters",
                shorten(identity).escape_debug()
            )));
        }
        Ok(())
    }

    /// The TTL to store: the caller's, else the namespace default.
    pub fn effective_ttl(&self, ttl_ms: Option<u64>) -> Result<Option<u64>, PatternError> {
        match ttl_ms {
            Some(0) => Err(PatternError::InvalidArgument(
                "ttl must be positive; leave it unset for no expiry".into(),
            )),
            Some(ttl) if ttl > self.max_ttl_ms => Err(PatternError::InvalidArgument(format!(
                "ttl of {ttl} ms is longer than this namespace's limit of {} ms (setting max_ttl_ms)",
                self.max_ttl_ms
            ))),
            Some(ttl) => Ok(Some(ttl)),
            None => Ok(self.default_ttl_ms),
        }
    }

    /// Identities one enumerate page returns at most.
    pub fn page_size(&self, requested: u32) -> u32 {
        match requested {
            0 => self.default_page_size,
            n => n.min(self.max_page_size),
        }
    }

    /// A listener's buffer: its request, or the namespace default; over the
    /// maximum is refused rather than capped, so the caller learns the limit.
    pub fn listen_buffer(&self, requested: u32) -> Result<u32, PatternError> {
        match requested {
            0 => Ok(self.listen_buffer),
            n if n <= self.max_listen_buffer => Ok(n),
            n => Err(PatternError::InvalidArgument(format!(
                "buffer of {n} messages is over the limit of {} (setting max_listen_buffer)",
                self.max_listen_buffer
            ))),
        }
    }

    pub fn filter_limits(&self) -> FilterLimits {
        FilterLimits {
            max_depth: self.max_filter_depth,
            max_conditions: self.max_filter_conditions,
            ..FilterLimits::default()
        }
    }

    /// Records per `registry::list` call. The host bounds each listing page
    /// by bytes too (4 MiB), so a full batch of large metadata still fits
    /// instance memory; asking for many keeps host calls few.
    pub fn list_batch(&self) -> u32 {
        MAX_LIST_BATCH
    }

    /// Refuses a multicast payload over `max_payload_bytes` (nothing is sent).
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), PatternError> {
        if payload.len() > self.max_payload_bytes {
            return Err(PatternError::InvalidArgument(format!(
                "multicast payload is {} bytes; the namespace's max_payload_bytes is {}",
                payload.len(),
                self.max_payload_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a multicast that matched more identities than `max_fanout`.
    pub fn check_fanout(&self, matched: usize) -> Result<(), PatternError> {
        if matched > self.max_fanout as usize {
            return Err(PatternError::ResourceExhausted(format!(
                "multicast would reach {matched} identities; the namespace's max_fanout is {}",
                self.max_fanout
            )));
        }
        Ok(())
    }
}

/// Same rule as the PubSub pattern's consumer groups, so the name is valid on
/// every broker; empty turns durable inboxes off.
fn listen_group(value: &str) -> Result<Option<String>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let ok = value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(format!(
            "setting 'listen_group' must be 1-64 ASCII letters, digits, '-' or '_' \
             (empty for no group), got '{}'",
            shorten(value).escape_debug()
        ));
    }
    Ok(Some(value.to_string()))
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    name: &str,
    value: &str,
) -> Result<T, String> {
    match value.trim().parse::<T>() {
        Ok(v) if v > T::default() => Ok(v),
        _ => Err(format!(
            "setting '{name}' must be a positive integer, got '{value}'"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Limits, String> {
        Limits::from_settings(&settings(pairs))
    }

    fn invalid(e: PatternError) -> String {
        match e {
            PatternError::InvalidArgument(m) => m,
            other => panic!("expected invalid-argument, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let l = parse(&[]).unwrap();
        assert_eq!(l, Limits::default());
        assert_eq!(l.max_identity_bytes, 256);
        assert_eq!(l.max_identities, 100_000);
        assert_eq!(l.max_metadata_bytes, 65_536);
        assert_eq!(l.max_metadata_depth, 16);
        assert_eq!(l.max_filter_depth, 8);
        assert_eq!(l.max_filter_conditions, 256);
        assert_eq!(l.max_fanout, 10_000);
        assert_eq!(l.default_ttl_ms, None);
        assert_eq!(l.max_ttl_ms, 604_800_000);
        assert_eq!(l.default_page_size, 100);
        assert_eq!(l.max_page_size, 1000);
        assert_eq!(l.listen_buffer, 1024);
        assert_eq!(l.max_listen_buffer, 65_536);
        assert_eq!(l.listen_group.as_deref(), Some("inbox"));
    }

    #[test]
    fn every_setting_is_read() {
        let l = parse(&[
            ("max_identity_bytes", "64"),
            ("max_identities", "5000000000"),
            ("max_metadata_bytes", "1024"),
            ("max_metadata_depth", "3"),
            ("max_filter_depth", "2"),
            ("max_filter_conditions", "10"),
            ("max_fanout", "50"),
            ("max_payload_bytes", "4096"),
            ("default_ttl_ms", "30000"),
            ("max_ttl_ms", "60000"),
            ("default_page_size", "10"),
            ("max_page_size", "20"),
            ("listen_buffer", "8"),
            ("max_listen_buffer", "16"),
            ("listen_group", "devices_v2-x"),
        ])
        .unwrap();
        assert_eq!(
            l,
            Limits {
                max_identity_bytes: 64,
                max_identities: 5_000_000_000,
                max_metadata_bytes: 1024,
                max_metadata_depth: 3,
                max_filter_depth: 2,
                max_filter_conditions: 10,
                max_fanout: 50,
                max_payload_bytes: 4096,
                default_ttl_ms: Some(30_000),
                max_ttl_ms: 60_000,
                default_page_size: 10,
                max_page_size: 20,
                listen_buffer: 8,
                max_listen_buffer: 16,
                listen_group: Some("devices_v2-x".into()),
            }
        );
        let f = l.filter_limits();
        assert_eq!((f.max_depth, f.max_conditions), (2, 10));
        assert_eq!(f.max_regex_bytes, FilterLimits::default().max_regex_bytes);
        // surrounding whitespace is tolerated, as in the other patterns
        assert_eq!(parse(&[("max_fanout", " 7 ")]).unwrap().max_fanout, 7);
    }

    #[test]
    fn numbers_must_be_positive_integers() {
        let numeric = [
            "max_identity_bytes",
            "max_identities",
            "max_metadata_bytes",
            "max_metadata_depth",
            "max_filter_depth",
            "max_filter_conditions",
            "max_fanout",
            "default_ttl_ms",
            "max_ttl_ms",
            "default_page_size",
            "max_page_size",
            "listen_buffer",
            "max_listen_buffer",
        ];
        for name in numeric {
            for bad in ["0", "-1", "", "ten", "1.5", "99999999999999999999999"] {
                let e = parse(&[(name, bad)]).unwrap_err();
                assert_eq!(
                    e,
                    format!("setting '{name}' must be a positive integer, got '{bad}'")
                );
            }
        }
        // u32 settings refuse what does not fit a u32
        assert!(parse(&[("max_fanout", "4294967296")]).is_err());
        assert!(parse(&[("max_page_size", "4294967296")]).is_err());
    }

    #[test]
    fn unknown_setting_lists_the_known_ones() {
        let e = parse(&[("max_fan_out", "5")]).unwrap_err();
        assert!(
            e.starts_with("unknown setting 'max_fan_out' (known: "),
            "{e}"
        );
        assert_eq!(KNOWN.split(", ").count(), 15);
        for name in KNOWN.split(", ") {
            assert!(e.contains(name), "{name} missing from {e}");
            // every listed name really is a setting
            let r = parse(&[(name, "1")]);
            assert!(
                !matches!(&r, Err(m) if m.starts_with("unknown setting")),
                "{name}"
            );
        }
    }

    #[test]
    fn cross_setting_checks() {
        let e = parse(&[("default_page_size", "2000")]).unwrap_err();
        assert_eq!(
            e,
            "default_page_size (2000) is larger than max_page_size (1000)"
        );
        let e = parse(&[("max_page_size", "50")]).unwrap_err();
        assert!(e.contains("max_page_size (50)"), "{e}");
        assert!(parse(&[("max_page_size", "50"), ("default_page_size", "50")]).is_ok());

        let e = parse(&[("default_ttl_ms", "604800001")]).unwrap_err();
        assert_eq!(
            e,
            "default_ttl_ms (604800001) is larger than max_ttl_ms (604800000)"
        );
        let e = parse(&[("default_ttl_ms", "5000"), ("max_ttl_ms", "1000")]).unwrap_err();
        assert!(e.contains("default_ttl_ms (5000)"), "{e}");
        // the order of the settings does not matter
        assert!(parse(&[("default_ttl_ms", "5000"), ("max_ttl_ms", "9000")]).is_ok());
        assert!(parse(&[("max_ttl_ms", "9000"), ("default_ttl_ms", "5000")]).is_ok());

        let e = parse(&[("listen_buffer", "70000")]).unwrap_err();
        assert_eq!(
            e,
            "listen_buffer (70000) is larger than max_listen_buffer (65536)"
        );
        assert!(parse(&[("max_listen_buffer", "100")]).is_err());
        assert!(parse(&[("max_listen_buffer", "100"), ("listen_buffer", "100")]).is_ok());
    }

    #[test]
    fn listen_group_setting() {
        assert_eq!(parse(&[("listen_group", "")]).unwrap().listen_group, None);
        assert_eq!(
            parse(&[("listen_group", "A-b_9")]).unwrap().listen_group,
            Some("A-b_9".into())
        );
        let long = "g".repeat(64);
        assert!(parse(&[("listen_group", &long)]).is_ok());
        for bad in ["a b", "a.b", "é", "a*", "x\n", &"g".repeat(65)] {
            let e = parse(&[("listen_group", bad)]).unwrap_err();
            assert!(e.starts_with("setting 'listen_group' must be"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn identity_validation() {
        let l = Limits::default();
        for ok in [
            "sensor-1",
            "a",
            "名前/東京 #1",
            &"x".repeat(256),
            "with space",
        ] {
            assert!(l.check_identity(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            invalid(l.check_identity("").unwrap_err()),
            "identity must not be empty"
        );
        // the limit is in bytes: 86 × 3 bytes = 258
        let e = invalid(l.check_identity(&"東".repeat(86)).unwrap_err());
        assert!(
            e.contains("is 258 bytes; the limit is 256 bytes (setting max_identity_bytes)"),
            "{e}"
        );
        // quoted, at most 64 characters of it
        let e = invalid(l.check_identity(&"x".repeat(300)).unwrap_err());
        assert!(
            e.starts_with(&format!("identity '{}…' is 300 bytes", "x".repeat(64))),
            "{e}"
        );
        for bad in ["a\nb", "\u{0}", "tab\there", "del\u{7f}", "c1\u{85}"] {
            let e = invalid(l.check_identity(bad).unwrap_err());
            assert!(e.ends_with("contains control characters"), "{e}");
            assert!(!e.chars().any(char::is_control), "{e:?}");
        }
        let tight = parse(&[("max_identity_bytes", "4")]).unwrap();
        assert!(tight.check_identity("abcd").is_ok());
        assert!(tight.check_identity("abcde").is_err());
    }

    #[test]
    fn ttl_policy() {
        let l = Limits::default();
        assert_eq!(l.effective_ttl(None).unwrap(), None);
        assert_eq!(l.effective_ttl(Some(30_000)).unwrap(), Some(30_000));
        assert_eq!(
            l.effective_ttl(Some(604_800_000)).unwrap(),
            Some(604_800_000)
        );
        assert_eq!(
            invalid(l.effective_ttl(Some(0)).unwrap_err()),
            "ttl must be positive; leave it unset for no expiry"
        );
        let e = invalid(l.effective_ttl(Some(604_800_001)).unwrap_err());
        assert_eq!(
            e,
            "ttl of 604800001 ms is longer than this namespace's limit of 604800000 ms \
             (setting max_ttl_ms)"
        );
        let with_default = parse(&[("default_ttl_ms", "10000")]).unwrap();
        assert_eq!(with_default.effective_ttl(None).unwrap(), Some(10_000));
        assert_eq!(with_default.effective_ttl(Some(5)).unwrap(), Some(5));
        assert!(with_default.effective_ttl(Some(0)).is_err());
    }

    #[test]
    fn page_size_policy() {
        let l = Limits::default();
        assert_eq!(l.page_size(0), 100);
        assert_eq!(l.page_size(1), 1);
        assert_eq!(l.page_size(1000), 1000);
        assert_eq!(l.page_size(1001), 1000);
        assert_eq!(l.page_size(u32::MAX), 1000);
        let l = parse(&[("default_page_size", "7"), ("max_page_size", "9")]).unwrap();
        assert_eq!((l.page_size(0), l.page_size(8), l.page_size(10)), (7, 8, 9));
    }

    #[test]
    fn listen_buffer_policy() {
        let l = Limits::default();
        assert_eq!(l.listen_buffer(0).unwrap(), 1024);
        assert_eq!(l.listen_buffer(1).unwrap(), 1);
        assert_eq!(l.listen_buffer(65_536).unwrap(), 65_536);
        let e = invalid(l.listen_buffer(65_537).unwrap_err());
        assert_eq!(
            e,
            "buffer of 65537 messages is over the limit of 65536 (setting max_listen_buffer)"
        );
    }

    #[test]
    fn fanout_limit() {
        let l = parse(&[("max_fanout", "3")]).unwrap();
        assert!(l.check_fanout(0).is_ok());
        assert!(l.check_fanout(3).is_ok());
        match l.check_fanout(4) {
            Err(PatternError::ResourceExhausted(m)) => assert_eq!(
                m,
                "multicast would reach 4 identities; the namespace's max_fanout is 3"
            ),
            other => panic!("{other:?}"),
        }
    }
}
