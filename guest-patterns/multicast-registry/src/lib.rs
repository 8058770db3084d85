//! The built-in Multicast Registry pattern: identities, filters, TTL policy and multicast fan-out.

// Tests state their expectations with unwrap; the lints guard shipped code.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod fanout;
pub mod filter;
mod limits;
mod metadata;
mod scan;

use std::cell::RefCell;

use limits::Limits;

wit_bindgen::generate!({
    path: "../../wit",
    world: "multicast-registry",
});

use exports::prism::pattern::registry_pattern::{
    EnumerateRequest, EnumerateResult, Guest, ListenPlan, MulticastRequest, MulticastResult,
    RegisterOutcome, RegisterRequest,
};
use prism::pattern::pubsub;
use prism::pattern::registry::{self, IdentityRecord, NewIdentity, PutOutcome};
use prism::pattern::types::{CapabilityError, PatternError};

thread_local! {
    // A component instance is single-threaded; settings arrive once via `configure`.
    static LIMITS: RefCell<Limits> = RefCell::new(Limits::default());
}

fn limits() -> Limits {
    LIMITS.with(|l| l.borrow().clone())
}

struct RegistryPattern;

impl Guest for RegistryPattern {
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        let parsed = Limits::from_settings(&settings)?;
        LIMITS.with(|l| *l.borrow_mut() = parsed);
        Ok(())
    }

    fn register(request: RegisterRequest) -> Result<RegisterOutcome, PatternError> {
        let limits = limits();
        limits.check_identity(&request.identity)?;
        let metadata = metadata::canonical(&request.metadata, &limits)?;
        let ttl_ms = limits.effective_ttl(request.ttl_ms)?;
        let entry = NewIdentity {
            identity: request.identity,
            metadata,
            ttl_ms,
        };
        match registry::put(&entry, request.replace, limits.max_identities).map_err(capability)? {
            PutOutcome::Stored(record) => Ok(RegisterOutcome::Registered(record)),
            PutOutcome::Exists(record) => Ok(RegisterOutcome::AlreadyExists(record)),
        }
    }

    fn heartbeat(identity: String) -> Result<IdentityRecord, PatternError> {
        limits().check_identity(&identity)?;
        registry::renew(&identity)
            .map_err(capability)?
            .ok_or_else(|| not_registered(&identity))
    }

    fn unregister(identity: String) -> Result<bool, PatternError> {
        limits().check_identity(&identity)?;
        registry::remove(&identity).map_err(capability)
    }

    fn get(identity: String) -> Result<IdentityRecord, PatternError> {
        limits().check_identity(&identity)?;
        registry::get(&identity)
            .map_err(capability)?
            .ok_or_else(|| not_registered(&identity))
    }

    fn enumerate(request: EnumerateRequest) -> Result<EnumerateResult, PatternError> {
        let limits = limits();
        let filter = metadata::parse_filter(&request.filter, &limits)?;
        let page = limits.page_size(request.limit) as usize;
        let cursor = request.cursor.filter(|c| !c.is_empty());
        scan::enumerate_page(lister(&filter), &filter, cursor, page, limits.list_batch())
    }

    fn multicast(request: MulticastRequest) -> Result<MulticastResult, PatternError> {
        let limits = limits();
        limits.check_payload(&request.payload)?;
        // A malformed filter is refused before anything is looked up or sent.
        let filter = metadata::parse_filter(&request.filter, &limits)?;
        let keep = limits.max_fanout as usize;
        let targets = scan::collect_targets(lister(&filter), &filter, keep, limits.list_batch())?;
        limits.check_fanout(targets.matched)?;
        fanout::deliver(
            targets.identities,
            &request.payload,
            &request.metadata,
            registry::inbox,
            pubsub::publish_each,
        )
    }

    fn listen(identity: String, buffer: u32) -> Result<ListenPlan, PatternError> {
        let limits = limits();
        limits.check_identity(&identity)?;
        Ok(ListenPlan {
            topic: registry::inbox(&identity),
            group: limits.listen_group.clone(),
            buffer: limits.listen_buffer(buffer)?,
        })
    }
}

/// The registry listing a filter's scan walks: with the filter's implied
/// equalities handed to the host, which may push them down to the backend
/// (the scan still applies the whole filter to every record it gets).
fn lister(
    filter: &filter::Filter,
) -> impl FnMut(Option<&str>, u32) -> Result<registry::Listing, PatternError> + use<> {
    let conditions: Vec<registry::MetadataEquals> = filter
        .implied_equalities()
        .into_iter()
        // Within the host's bounds on list-where (conditions, segments,
        // bytes); what does not fit is simply not pushed down.
        .filter(|(path, value)| {
            path.len() <= 16 && path.iter().map(String::len).sum::<usize>() + value.len() <= 4096
        })
        .take(64)
        .map(|(path, value)| registry::MetadataEquals { path, value })
        .collect();
    move |cursor, limit| {
        if conditions.is_empty() {
            registry::list(cursor, limit)
        } else {
            registry::list_where(&conditions, cursor, limit)
        }
        .map_err(capability)
    }
}

fn not_registered(identity: &str) -> PatternError {
    PatternError::NotFound(format!(
        "identity '{}' is not registered",
        shorten(identity)
    ))
}

pub(crate) fn capability(err: CapabilityError) -> PatternError {
    match err {
        CapabilityError::Unavailable(m) => PatternError::Unavailable(m),
        CapabilityError::ResourceExhausted(m) => PatternError::ResourceExhausted(m),
        CapabilityError::InvalidArgument(m) => PatternError::InvalidArgument(m),
        CapabilityError::Internal(m) => PatternError::Internal(m),
    }
}

/// Identities can be long; error messages quote at most the first 64 characters.
pub(crate) fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

export!(RegistryPattern);
