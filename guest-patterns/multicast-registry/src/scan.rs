//! Walking the registry's listing: one enumerate page, or every multicast target.

use crate::exports::prism::pattern::registry_pattern::EnumerateResult;
use crate::filter::Filter;
use crate::metadata;
use crate::prism::pattern::registry::{IdentityRecord, Listing};
use crate::prism::pattern::types::PatternError;
use crate::shorten;

/// Records one `enumerate` call looks at before it hands back a cursor, so a
/// selective filter over a large registry costs several bounded calls rather
/// than one that runs into the call deadline. An empty listing page counts
/// as a whole batch: the host looked at (expired) records to produce it.
pub const SCAN_BUDGET: usize = 20_000;

/// Identity plus metadata bytes one enumerate page carries (the page may go
/// over by its last record). Keeps a page of large metadata within gRPC's
/// default 4 MiB message size and the instance's memory.
pub const PAGE_BYTES: usize = 2 * 1024 * 1024;

// Both scans take the `registry::list` call as a closure so they can be
// tested natively against an in-memory registry.

/// A filter ready to test stored records.
struct Matcher<'a> {
    filter: &'a Filter,
    /// A match-all filter selects records without parsing their metadata.
    all: bool,
}

impl<'a> Matcher<'a> {
    fn new(filter: &'a Filter) -> Self {
        Matcher {
            filter,
            all: filter.is_all(),
        }
    }

    fn matches(&self, record: &IdentityRecord) -> bool {
        self.all || metadata::matches(self.filter, &record.metadata)
    }
}

/// Up to `page` matching records after `cursor`. The returned cursor is
/// none only when the listing is exhausted; otherwise it is the identity of
/// the last record looked at (or the host's cursor), which the next call
/// resumes strictly after.
pub fn enumerate_page<L>(
    mut list: L,
    filter: &Filter,
    cursor: Option<String>,
    page: usize,
    batch: u32,
) -> Result<EnumerateResult, PatternError>
where
    L: FnMut(Option<&str>, u32) -> Result<Listing, PatternError>,
{
    let matcher = Matcher::new(filter);
    let page = page.max(1);
    let mut identities: Vec<IdentityRecord> = Vec::new();
    let mut bytes = 0usize;
    let mut looked = 0usize;
    let mut cursor = cursor;
    loop {
        let Listing {
            records,
            cursor: next,
        } = list(cursor.as_deref(), batch)?;
        if records.is_empty() {
            looked += batch as usize;
        }
        let last = records.len();
        for (n, record) in records.into_iter().enumerate() {
            looked += 1;
            let keep = matcher.matches(&record);
            let size = record.identity.len() + record.metadata.len();
            let full = keep && (identities.len() + 1 >= page || bytes + size >= PAGE_BYTES);
            if full || looked >= SCAN_BUDGET {
                // At the end of a listing page the host's cursor is as good
                // and says whether anything follows; mid-page, resume after
                // this record.
                let resume = if n + 1 == last {
                    next
                } else {
                    Some(record.identity.clone())
                };
                if keep {
                    identities.push(record);
                }
                return Ok(EnumerateResult {
                    identities,
                    cursor: resume,
                });
            }
            if keep {
                bytes += size;
                identities.push(record);
            }
        }
        match next {
            None => {
                return Ok(EnumerateResult {
                    identities,
                    cursor: None,
                });
            }
            Some(next) if looked >= SCAN_BUDGET => {
                return Ok(EnumerateResult {
                    identities,
                    cursor: Some(next),
                });
            }
            Some(next) => cursor = Some(next),
        }
    }
}

/// Every identity the filter matches, for a multicast.
pub struct Targets {
    /// The matching identities, in identity order; only kept while there
    /// are at most `keep` of them (past that the multicast is refused anyway).
    pub identities: Vec<String>,
    /// How many identities matched.
    pub matched: usize,
}

/// Scans the whole listing. Counting goes on past `keep` so the refusal can
/// say how many identities the multicast would have reached.
pub fn collect_targets<L>(
    mut list: L,
    filter: &Filter,
    keep: usize,
    batch: u32,
) -> Result<Targets, PatternError>
where
    L: FnMut(Option<&str>, u32) -> Result<Listing, PatternError>,
{
    let matcher = Matcher::new(filter);
    let mut targets = Targets {
        identities: Vec::new(),
        matched: 0,
    };
    let mut cursor: Option<String> = None;
    loop {
        let Listing {
            records,
            cursor: next,
        } = list(cursor.as_deref(), batch)?;
        for record in records {
            if matcher.matches(&record) {
                targets.matched += 1;
                if targets.matched <= keep {
                    targets.identities.push(record.identity);
                } else if !targets.identities.is_empty() {
                    // Refused anyway; give the memory back while counting on.
                    targets.identities = Vec::new();
                }
            }
        }
        match next {
            None => return Ok(targets),
            // A cursor that does not move would loop until the call deadline.
            Some(next) if cursor.as_deref() == Some(next.as_str()) => {
                return Err(PatternError::Internal(format!(
                    "the registry listing did not advance past '{}'",
                    shorten(&next)
                )));
            }
            Some(next) => cursor = Some(next),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::FilterLimits;
    use serde_json::json;

    /// An in-memory registry listing like the host's: records after the
    /// cursor in identity order; the cursor is the last identity returned
    /// when more may follow.
    struct Fake {
        records: Vec<(String, String)>,
        calls: usize,
        /// Identities the host skips (as if expired) while listing.
        expired: Vec<String>,
        /// Cap the host puts on `limit`.
        host_max: u32,
    }

    impl Fake {
        fn new(n: usize, metadata: impl Fn(usize) -> String) -> Self {
            let mut records: Vec<(String, String)> = (0..n)
                .map(|i| (format!("id-{i:06}"), metadata(i)))
                .collect();
            records.sort();
            Fake {
                records,
                calls: 0,
                expired: Vec::new(),
                host_max: u32::MAX,
            }
        }

        fn list(&mut self, cursor: Option<&str>, limit: u32) -> Result<Listing, PatternError> {
            self.calls += 1;
            let limit = limit.min(self.host_max) as usize;
            let start = match cursor {
                None => 0,
                Some(c) => self.records.partition_point(|(id, _)| id.as_str() <= c),
            };
            let window = &self.records[start..];
            let looked = &window[..limit.min(window.len())];
            let records = looked
                .iter()
                .filter(|(id, _)| !self.expired.contains(id))
                .map(|(id, md)| record(id, md))
                .collect();
            let more = start + looked.len() < self.records.len();
            Ok(Listing {
                records,
                cursor: if more {
                    looked.last().map(|(id, _)| id.clone())
                } else {
                    None
                },
            })
        }
    }

    fn record(identity: &str, metadata: &str) -> IdentityRecord {
        IdentityRecord {
            identity: identity.to_string(),
            metadata: metadata.to_string(),
            registered_at_ms: 1,
            expires_at_ms: None,
            ttl_ms: None,
        }
    }

    fn filter(f: serde_json::Value) -> Filter {
        Filter::parse(&f, &FilterLimits::default()).unwrap()
    }

    fn floor(i: usize) -> String {
        json!({"floor": i % 10, "n": i}).to_string()
    }

    /// Pages through everything, as a client does; returns the identities
    /// and the number of enumerate calls.
    fn enumerate_all(fake: &mut Fake, f: &Filter, page: usize, batch: u32) -> (Vec<String>, usize) {
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut calls = 0;
        loop {
            calls += 1;
            let result =
                enumerate_page(|c, n| fake.list(c, n), f, cursor.clone(), page, batch).unwrap();
            assert!(result.identities.len() <= page);
            seen.extend(result.identities.into_iter().map(|r| r.identity));
            match result.cursor {
                None => return (seen, calls),
                Some(c) => cursor = Some(c),
            }
            assert!(calls < 10_000, "enumerate does not terminate");
        }
    }

    fn expected(fake: &Fake, keep: impl Fn(usize) -> bool) -> Vec<String> {
        (0..fake.records.len())
            .filter(|i| keep(*i))
            .map(|i| format!("id-{i:06}"))
            .filter(|id| !fake.expired.contains(id))
            .collect()
    }

    #[test]
    fn pages_cover_every_match_exactly_once() {
        for (n, page, batch) in [
            (0, 5, 10),
            (1, 1, 1),
            (95, 7, 10),
            (100, 10, 10),
            (250, 1000, 30),
            (33, 3, 1000),
        ] {
            let mut fake = Fake::new(n, floor);
            let all = expected(&fake, |_| true);
            let (got, _) = enumerate_all(&mut fake, &filter(json!({})), page, batch);
            assert_eq!(got, all, "n={n} page={page} batch={batch}");
            let (got, _) = enumerate_all(&mut fake, &filter(json!({"floor.gte": 7})), page, batch);
            assert_eq!(
                got,
                expected(&fake, |i| i % 10 >= 7),
                "n={n} page={page} batch={batch}"
            );
        }
    }

    #[test]
    fn a_full_page_mid_listing_resumes_after_its_last_record() {
        let mut fake = Fake::new(100, floor);
        let r = enumerate_page(
            |c, n| fake.list(c, n),
            &filter(json!({"floor": 3})),
            None,
            2,
            1000,
        )
        .unwrap();
        let ids: Vec<_> = r.identities.iter().map(|r| r.identity.as_str()).collect();
        assert_eq!(ids, ["id-000003", "id-000013"]);
        assert_eq!(r.cursor.as_deref(), Some("id-000013"));
        assert_eq!(fake.calls, 1);
    }

    #[test]
    fn exhausted_listing_gives_no_cursor() {
        // the page fills on the very last record: nothing follows, so no cursor
        let mut fake = Fake::new(10, floor);
        let r = enumerate_page(
            |c, n| fake.list(c, n),
            &filter(json!({"floor.gte": 8})),
            None,
            2,
            1000,
        )
        .unwrap();
        assert_eq!(r.identities.len(), 2);
        assert_eq!(r.cursor, None);
        // a page that fills at the end of a listing page uses the host's cursor
        let mut fake = Fake::new(10, floor);
        let r = enumerate_page(|c, n| fake.list(c, n), &filter(json!({})), None, 5, 5).unwrap();
        assert_eq!(r.identities.len(), 5);
        assert_eq!(r.cursor.as_deref(), Some("id-000004"));
        // empty registry
        let mut fake = Fake::new(0, floor);
        let r = enumerate_page(|c, n| fake.list(c, n), &filter(json!({})), None, 5, 5).unwrap();
        assert!(r.identities.is_empty());
        assert_eq!(r.cursor, None);
    }

    #[test]
    fn work_per_call_is_bounded() {
        // One match in 50 000: each call stops after SCAN_BUDGET records.
        let mut fake = Fake::new(50_000, |i| json!({"hit": i == 45_000}).to_string());
        let r = enumerate_page(
            |c, n| fake.list(c, n),
            &filter(json!({"hit": true})),
            None,
            100,
            1000,
        )
        .unwrap();
        assert!(r.identities.is_empty());
        assert_eq!(r.cursor.as_deref(), Some("id-019999"));
        assert_eq!(fake.calls, 20);
        let (got, calls) = enumerate_all(&mut fake, &filter(json!({"hit": true})), 100, 1000);
        assert_eq!(got, ["id-045000"]);
        assert_eq!(calls, 3);
        // stopping mid listing page
        let mut fake = Fake::new(30_000, |_| "{}".into());
        let r = enumerate_page(
            |c, n| fake.list(c, n),
            &filter(json!({"x": 1})),
            None,
            100,
            300,
        )
        .unwrap();
        assert_eq!(r.cursor.as_deref(), Some("id-019999"));
    }

    #[test]
    fn empty_listing_pages_still_advance_and_count() {
        // The host skips expired records, returning empty pages with cursors.
        let mut fake = Fake::new(200, floor);
        fake.expired = (0..150).map(|i| format!("id-{i:06}")).collect();
        let (got, _) = enumerate_all(&mut fake, &filter(json!({})), 10, 10);
        assert_eq!(got, expected(&fake, |_| true));
        assert_eq!(got.first().map(String::as_str), Some("id-000150"));

        // A long run of empty pages ends the call within the budget.
        let mut fake = Fake::new(100_000, floor);
        fake.expired = fake.records.iter().map(|(id, _)| id.clone()).collect();
        fake.host_max = 10;
        let r =
            enumerate_page(|c, n| fake.list(c, n), &filter(json!({})), None, 100, 1000).unwrap();
        assert!(r.identities.is_empty());
        assert!(r.cursor.is_some());
        assert_eq!(fake.calls, SCAN_BUDGET / 1000);
    }

    #[test]
    fn host_capping_the_batch_is_fine() {
        let mut fake = Fake::new(500, floor);
        fake.host_max = 7;
        let (got, _) = enumerate_all(&mut fake, &filter(json!({"floor.in": [1, 2]})), 9, 1000);
        assert_eq!(got, expected(&fake, |i| matches!(i % 10, 1 | 2)));
    }

    #[test]
    fn unparseable_metadata_is_skipped_unless_the_filter_matches_all() {
        let mut fake = Fake::new(10, |i| {
            if i % 2 == 0 {
                "not json".into()
            } else {
                floor(i)
            }
        });
        let (got, _) = enumerate_all(&mut fake, &filter(json!({"n.exists": true})), 100, 3);
        assert_eq!(got, expected(&fake, |i| i % 2 == 1));
        let (got, _) = enumerate_all(&mut fake, &filter(json!({"$not": {"n": 1}})), 100, 3);
        assert_eq!(got, ["id-000003", "id-000005", "id-000007", "id-000009"]);
        // match-all never reads metadata
        let (got, _) = enumerate_all(&mut fake, &filter(json!({})), 100, 3);
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn page_bytes_bound_large_metadata() {
        let big = "x".repeat(100_000);
        let mut fake = Fake::new(100, |i| json!({"n": i, "blob": big}).to_string());
        let r =
            enumerate_page(|c, n| fake.list(c, n), &filter(json!({})), None, 1000, 1000).unwrap();
        // 21 records of ~100 KB reach 2 MiB; the 21st is the one that crosses
        assert_eq!(r.identities.len(), 21);
        assert_eq!(r.cursor.as_deref(), Some("id-000020"));
        let (got, _) = enumerate_all(&mut fake, &filter(json!({})), 1000, 1000);
        assert_eq!(got, expected(&fake, |_| true));
    }

    #[test]
    fn targets_are_every_match() {
        let mut fake = Fake::new(2500, floor);
        let t = collect_targets(
            |c, n| fake.list(c, n),
            &filter(json!({"floor": 4})),
            10_000,
            1000,
        )
        .unwrap();
        assert_eq!(t.matched, 250);
        assert_eq!(t.identities, expected(&fake, |i| i % 10 == 4));
        assert_eq!(fake.calls, 3);
        let t = collect_targets(|c, n| fake.list(c, n), &filter(json!({})), 10_000, 1000).unwrap();
        assert_eq!(t.matched, 2500);
        let t = collect_targets(
            |c, n| fake.list(c, n),
            &filter(json!({"floor": 99})),
            10_000,
            7,
        )
        .unwrap();
        assert_eq!((t.matched, t.identities.len()), (0, 0));
    }

    #[test]
    fn targets_past_the_limit_are_counted_not_kept() {
        let mut fake = Fake::new(2500, floor);
        let t = collect_targets(|c, n| fake.list(c, n), &filter(json!({})), 100, 1000).unwrap();
        assert_eq!(t.matched, 2500);
        assert!(t.identities.is_empty());
        let t = collect_targets(|c, n| fake.list(c, n), &filter(json!({})), 2500, 1000).unwrap();
        assert_eq!((t.matched, t.identities.len()), (2500, 2500));
    }

    #[test]
    fn targets_skip_expired_and_unparseable() {
        let mut fake = Fake::new(100, |i| if i == 5 { "{".into() } else { floor(i) });
        fake.expired = vec!["id-000015".into()];
        fake.host_max = 4;
        let t = collect_targets(
            |c, n| fake.list(c, n),
            &filter(json!({"floor": 5})),
            100,
            1000,
        )
        .unwrap();
        assert_eq!(t.identities, expected(&fake, |i| i % 10 == 5 && i != 5));
    }

    #[test]
    fn a_stuck_listing_is_an_error_not_a_hang() {
        let mut calls = 0;
        let stuck = |_: Option<&str>, _: u32| {
            calls += 1;
            Ok(Listing {
                records: vec![],
                cursor: Some("same".into()),
            })
        };
        match collect_targets(stuck, &filter(json!({})), 10, 1000) {
            Err(PatternError::Internal(m)) => assert!(m.contains("did not advance"), "{m}"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a stuck listing must fail"),
        }
        assert_eq!(calls, 2);
    }

    #[test]
    fn listing_errors_pass_through() {
        let down = |_: Option<&str>, _: u32| Err(PatternError::Unavailable("redis is down".into()));
        assert!(matches!(
            enumerate_page(down, &filter(json!({})), None, 10, 10),
            Err(PatternError::Unavailable(m)) if m == "redis is down"
        ));
        assert!(matches!(
            collect_targets(down, &filter(json!({})), 10, 10),
            Err(PatternError::Unavailable(_))
        ));
    }
}
