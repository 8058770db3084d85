//! A fleet's control plane (`[admin] store = "NAME"`): Admin's layer lives
//! in a control store every replica reads at start and then follows.
//!
//! A change made through one replica is checked and started there first,
//! then written as a compare-and-set on its document's revision (the loser
//! of a race gets ABORTED and nothing of its change is kept), then swapped
//! in. Every replica — the writer too, if its caller went away between the
//! write and the swap — applies each document newer than the one it holds,
//! in revision order, by making its running namespaces match it. With the
//! store away a replica serves the last state it applied (kept in
//! `<state_dir>/snapshot.json`, so a restart serves it as well) and
//! refuses changes; when the store is back it reads everything newer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use futures::StreamExt;

use super::state::{DocKey, SNAPSHOT_FILE};
use super::*;
use crate::backend::BackendError;
use crate::backend::control::{ControlError, ControlStore, Document};

use serde::{Deserialize, Serialize};

/// How long a watch may be quiet before the follower checks whether a
/// change it could not apply should be tried again.
const RETRY_QUIET: Duration = Duration::from_secs(5);

/// How often a replica reports what it serves.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// What one replica serves, as it reports it to the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReplicaReport {
    replica: String,
    address: String,
    at_ms: u64,
    #[serde(default)]
    stale: bool,
    /// The revision of each namespace's document it serves.
    #[serde(default)]
    namespaces: BTreeMap<String, u64>,
}

/// A namespace across the fleet: the revision of its document this
/// replica serves, and what every replica that reported lately serves.
#[derive(Debug, Clone, Default)]
pub struct FleetStatus {
    pub revision: u64,
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub replica: String,
    pub address: String,
    /// The revision of the namespace's document it serves (0: none).
    pub revision: u64,
    pub stale: bool,
    pub reported_at_ms: u64,
}

/// This process's name in the fleet: host name and process id.
pub(super) fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "prism".into());
    format!("{}/{}", crate::text::shorten(&host), std::process::id())
}

/// What start-up read: Admin's layer and where it came from.
pub struct Loaded {
    pub state: ControlState,
    pub store: Option<Arc<dyn ControlStore>>,
    /// Read from this replica's snapshot: the store did not answer.
    pub stale: bool,
    /// The store revision the state was read at (None: not from the
    /// store), where the follower's watch starts without reading it again.
    pub cursor: Option<u64>,
}

/// Admin's layer of `config`: the control store's documents, or (the
/// store not answering) this replica's snapshot of them, or without a
/// store the state file.
pub async fn open(config: &Config) -> Result<Loaded, StateError> {
    let Some(name) = &config.admin.store else {
        return Ok(Loaded {
            state: load_state(config)?,
            store: None,
            stale: false,
            cursor: None,
        });
    };
    let backend = config.backends.get(name).ok_or_else(|| {
        StateError::Store(format!("names backend '{name}', which is not configured"))
    })?;
    let store = crate::backend::open_control_store(name, backend).map_err(StateError::Store)?;
    let loaded = match store.load().await {
        Ok((docs, _)) if docs.is_empty() => match import_state_file(config, &*store).await? {
            0 => store.load().await,
            n => {
                tracing::info!(store = %store.summary(), documents = n, "the control store was empty: Admin's namespaces and uploads from this Prism's state file were written into it");
                store.load().await
            }
        },
        loaded => loaded,
    };
    match loaded {
        Ok((docs, cursor)) => {
            let mut state = ControlState::default();
            // Tombstones say nothing to a state read from scratch.
            for doc in docs.into_iter().filter(|d| d.value.is_some()) {
                if let Err(e) = state.set_document(&doc.key, doc.value.as_deref()) {
                    tracing::warn!(key = %doc.key, error = %e, "a control store document this Prism cannot read is skipped");
                }
                state.record(doc.key, doc.revision, true);
            }
            Ok(Loaded {
                state,
                store: Some(store),
                stale: false,
                cursor: Some(cursor),
            })
        }
        Err(e) => {
            let snapshot = config.state_dir().map(|dir| dir.join(SNAPSHOT_FILE));
            match snapshot {
                Some(path) if path.is_file() => {
                    tracing::warn!(store = %store.summary(), error = %e, snapshot = %path.display(), "the control store does not answer: serving this replica's snapshot of it until it does");
                    let mut state = ControlState::load_file(&path)?;
                    // Snapshots written before removals were kept apart
                    // may hold a removed document's revision.
                    let held: Vec<String> = state.revisions.keys().cloned().collect();
                    for key in held {
                        if state.document(&key).is_none() {
                            state.revisions.remove(&key);
                        }
                    }
                    Ok(Loaded {
                        state,
                        store: Some(store),
                        stale: true,
                        cursor: None,
                    })
                }
                _ => Err(StateError::Store(format!(
                    "{e}; this replica has no snapshot of it to serve from, so it cannot start until the store answers"
                ))),
            }
        }
    }
}

/// A store with no documents at all, and a state file this Prism wrote
/// when it ran without one: Admin's namespaces and uploads move into the
/// store (components first, so no document names bytes the store lacks;
/// each document as a create, so replicas importing at once add nothing
/// twice) — moving a single Prism to a fleet keeps what Admin made.
/// Returns how many documents it wrote; the file is left as it was.
async fn import_state_file(config: &Config, store: &dyn ControlStore) -> Result<usize, StateError> {
    let Some(dir) = config.state_dir() else {
        return Ok(0);
    };
    let path = dir.join(super::state::STATE_FILE);
    if !path.is_file() {
        return Ok(0);
    }
    let state = ControlState::load_file(&path)?;
    let unavailable = |e: String| StateError::Store(format!("importing {}: {e}", path.display()));
    for digest in state.patterns.keys() {
        let file = dir.join("patterns").join(format!("{digest}.wasm"));
        let bytes = std::fs::read(&file).map_err(|source| StateError::Read {
            path: file.clone(),
            source,
        })?;
        if digest_of(&bytes) != *digest {
            return Err(StateError::Corrupt {
                path: file,
                reason: format!("its bytes do not have digest {digest}"),
            });
        }
        store
            .put_blob(digest, Arc::from(bytes))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    }
    let mut written = 0;
    for key in state.keys() {
        let Some(value) = state.document(&key) else {
            continue;
        };
        match store.put(&key, Some(value), 0).await {
            Ok(_) => written += 1,
            // Another replica imported it first.
            Err(ControlError::Conflict { .. }) => {}
            Err(ControlError::Store(e)) => return Err(unavailable(e.to_string())),
        }
    }
    Ok(written)
}

/// A document's subject, for people.
fn describe(key: &str) -> String {
    match DocKey::parse(key) {
        Some(DocKey::Namespace(name)) => format!("namespace '{name}'"),
        Some(DocKey::Pattern(digest)) => format!("uploaded pattern sha256:{digest}"),
        None => format!("document '{key}'"),
    }
}

impl Control {
    /// Persists `next` (changed from `current`): the state file, or with a
    /// store each changed document as a compare-and-set on the revision
    /// `current` holds; the new revisions go into `next`.
    pub(super) async fn commit(
        &self,
        current: &ControlState,
        next: &mut ControlState,
    ) -> Result<(), AdminError> {
        let Some(store) = &self.store else {
            return self.save(next);
        };
        next.forget_tombstones(self.tombstone_ttl());
        for (key, value) in current.changes(next) {
            let expected = current.revisions.get(&key).copied().unwrap_or(0);
            let live = value.is_some();
            match store.put(&key, value, expected).await {
                Ok(revision) => next.record(key, revision, live),
                Err(ControlError::Conflict { current: at, .. }) => {
                    return Err(AdminError::Aborted(format!(
                        "{} was changed through another replica at the same moment (the store has revision {at}, this replica had {expected}); nothing was changed: retry",
                        describe(&key)
                    )));
                }
                Err(ControlError::Store(e)) => {
                    return Err(AdminError::Storage(format!(
                        "the control store is unavailable ({e}); nothing was changed: retry once it answers"
                    )));
                }
            }
        }
        self.write_snapshot(next);
        Ok(())
    }

    /// Keeps the state this replica applied, for a restart while the store is away.
    pub(super) fn write_snapshot(&self, state: &ControlState) {
        if let Some(dir) = &self.state_dir
            && let Err(e) = state.save_as(dir, SNAPSHOT_FILE)
        {
            tracing::warn!(error = %e, "cannot keep a snapshot of the control state; a restart while the store is away will not serve it");
        }
    }

    /// How long removals are remembered (`[admin] tombstone_ttl_ms`).
    fn tombstone_ttl(&self) -> Duration {
        Duration::from_millis(self.platform.config.admin.tombstone_ttl_ms)
    }

    /// Whether this replica serves a state it could not confirm with the
    /// store (it is away, or a change from it did not apply here).
    pub fn stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed) || self.diverged.load(Ordering::Relaxed)
    }

    /// The control store's summary, if there is one.
    pub fn store(&self) -> Option<String> {
        self.store.as_ref().map(|s| s.summary())
    }

    /// With a store: follows it, and reports what this replica serves, for
    /// as long as this control plane lives.
    pub fn follow(self: &Arc<Self>) {
        if let Some(store) = self.store.clone() {
            tokio::spawn(follow(Arc::downgrade(self), store.clone()));
            tokio::spawn(report_forever(Arc::downgrade(self), store));
        }
    }

    /// The address this replica serves on, for the fleet's status.
    pub fn set_address(&self, address: std::net::SocketAddr) {
        *self.address.lock() = address.to_string();
    }

    async fn report(&self, store: &dyn ControlStore) -> Result<(), BackendError> {
        let namespaces = {
            let state = self.state.lock().await;
            state
                .revisions
                .iter()
                .filter_map(|(key, revision)| match DocKey::parse(key) {
                    Some(DocKey::Namespace(name)) => Some((name.to_string(), *revision)),
                    _ => None,
                })
                .collect()
        };
        let report = ReplicaReport {
            replica: self.replica.clone(),
            address: self.address.lock().clone(),
            at_ms: now_ms(),
            stale: self.stale(),
            namespaces,
        };
        let bytes = serde_json::to_vec(&report)
            .map_err(|e| BackendError::Internal(format!("cannot encode a report: {e}")))?;
        store.report(&self.replica, bytes).await
    }

    /// The store's revision of namespace `name`'s document this replica
    /// serves (0: no store, or the config file's definition alone).
    pub async fn revision(&self, name: &str) -> u64 {
        let key = DocKey::Namespace(name).key();
        self.state
            .lock()
            .await
            .revisions
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    /// With a store: namespace `name` across the fleet (None without a
    /// store; no replicas listed while the store does not answer).
    pub async fn fleet(&self, name: &str) -> Option<FleetStatus> {
        let store = self.store.as_ref()?;
        let revision = self.revision(name).await;
        let reports = match tokio::time::timeout(Duration::from_secs(2), store.reports()).await {
            Ok(Ok(reports)) => reports,
            _ => Vec::new(),
        };
        let mut replicas: Vec<ReplicaStatus> = reports
            .iter()
            .filter_map(|bytes| serde_json::from_slice::<ReplicaReport>(bytes).ok())
            .map(|r| ReplicaStatus {
                revision: r.namespaces.get(name).copied().unwrap_or(0),
                replica: r.replica,
                address: r.address,
                stale: r.stale,
                reported_at_ms: r.at_ms,
            })
            .collect();
        replicas.sort_by(|a, b| a.replica.cmp(&b.replica));
        Some(FleetStatus { revision, replicas })
    }

    /// Waits (up to `limit`) for the follower to apply a change newer than
    /// the `seen`th: a writer that lost a race waits for the winner's change.
    pub(super) async fn await_applied(&self, seen: u64, limit: Duration) {
        let mut applied = self.applied.subscribe();
        let _ = tokio::time::timeout(limit, applied.wait_for(|n| *n > seen)).await;
    }

    /// Reads every document and applies those newer than this replica's,
    /// and removes what it holds that the store no longer has (its
    /// tombstone was forgotten while this replica was away); returns the
    /// revision to watch from.
    async fn resync(&self, store: &dyn ControlStore) -> Result<u64, BackendError> {
        let (docs, cursor) = store.load().await?;
        let present: std::collections::BTreeSet<String> =
            docs.iter().map(|d| d.key.clone()).collect();
        for doc in docs {
            self.apply(doc).await;
        }
        // Held at a revision the read covers, and not in it: removed. (One
        // written here after the read began is newer than its cursor.)
        let gone: Vec<String> = {
            let state = self.state.lock().await;
            state
                .revisions
                .iter()
                .filter(|(key, revision)| **revision <= cursor && !present.contains(*key))
                .map(|(key, _)| key.clone())
                .collect()
        };
        for key in gone {
            tracing::info!(document = %describe(&key), "the control store no longer has it: removed");
            self.apply(Document {
                key,
                revision: cursor,
                value: None,
            })
            .await;
        }
        Ok(cursor)
    }

    /// Applies one document, if it is newer than what this replica holds.
    async fn apply(&self, doc: Document) {
        let mut state = self.state.lock().await;
        if doc.revision <= state.seen(&doc.key) {
            return;
        }
        let live = doc.value.is_some();
        if !live && !state.revisions.contains_key(&doc.key) {
            // The removal of something this replica does not hold.
            state.forget_tombstones(self.tombstone_ttl());
            state.record(doc.key, doc.revision, false);
            return;
        }
        let mut next = state.clone();
        next.forget_tombstones(self.tombstone_ttl());
        if let Err(e) = next.set_document(&doc.key, doc.value.as_deref()) {
            tracing::warn!(key = %doc.key, error = %e, "a control store document this Prism cannot read is skipped");
            state.record(doc.key, doc.revision, live);
            return;
        }
        next.record(doc.key.clone(), doc.revision, live);
        let applied = match DocKey::parse(&doc.key) {
            Some(DocKey::Pattern(digest)) => self.take_pattern(digest, &next).await,
            Some(DocKey::Namespace(name)) => self.converge(name, &next).await,
            None => Ok(()),
        };
        match applied {
            Ok(()) => {
                tracing::info!(document = %describe(&doc.key), revision = doc.revision, "applied a change from the control store");
                self.write_snapshot(&next);
                *state = next;
                self.applied.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::warn!(document = %describe(&doc.key), revision = doc.revision, error = %e, "cannot apply a change from the control store here; serving what this replica had and trying again");
                self.diverged.store(true, Ordering::Relaxed);
            }
        }
    }

    /// An upload's document: its component fetched (and compiled) here
    /// too, or (a tombstone) its local copy dropped.
    async fn take_pattern(&self, digest: &str, state: &ControlState) -> Result<(), String> {
        match state.patterns.get(digest) {
            Some(meta) => {
                self.platform.patterns.set_label(digest, &meta.label);
                self.fetch(&format!("{UPLOADED}{digest}")).await
            }
            None => {
                if let Err(e) = self.platform.patterns.remove(digest) {
                    tracing::warn!(digest, error = %e, "cannot remove a deleted pattern's file");
                }
                Ok(())
            }
        }
    }

    /// Makes sure an uploaded component `reference` names is here: fetched
    /// from the store, its digest checked, kept, then compiled off the
    /// request threads (so starting it hits the cache).
    pub(super) async fn fetch(&self, reference: &str) -> Result<(), String> {
        let Some(digest) = reference.strip_prefix(UPLOADED) else {
            return Ok(());
        };
        let Some(store) = &self.store else {
            return Ok(());
        };
        if !self.platform.patterns.contains(digest) {
            let bytes = store
                .get_blob(digest)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("the control store has no component sha256:{digest}"))?;
            if digest_of(&bytes) != digest {
                return Err(format!(
                    "the control store's component under sha256:{digest} has another digest; it is not used"
                ));
            }
            self.platform
                .patterns
                .put_bytes(digest, Arc::from(bytes))
                .map_err(|e| format!("cannot keep component sha256:{digest}: {e}"))?;
        }
        let (platform, reference) = (self.platform.clone(), reference.to_string());
        tokio::task::spawn_blocking(move || world_of(&reference, &platform))
            .await
            .map_err(|e| format!("compiling the component failed: {e}"))?
            .map(|_| ())
    }

    /// Makes namespace `name` serve what `state` says of it: retired,
    /// started, or its versions and rollout switched (reusing the versions
    /// it already runs).
    async fn converge(&self, name: &str, state: &ControlState) -> Result<(), String> {
        let wanted = layered(&self.config_namespaces.read().clone(), state).remove(name);
        let running = self.namespaces.get(name).ok();
        let Some(ns) = wanted else {
            if let Some(namespace) = running {
                self.retire(&namespace, "was deleted").await;
            }
            return Ok(());
        };
        let kept = state.namespaces.get(name);
        let previous = kept.and_then(|k| k.previous.clone());
        let wanted_rollout = kept.and_then(|k| k.rollout.clone());
        self.fetch(&ns.pattern).await?;
        if let Some(r) = &wanted_rollout {
            self.fetch(&r.pattern).await?;
        }
        let unpatterned = |c: &NamespaceConfig| NamespaceConfig {
            pattern: String::new(),
            ..c.clone()
        };
        match running {
            Some(current) if unpatterned(&current.config) == unpatterned(&ns) => {
                let now = current.deployment();
                let primary = if now.primary.info.reference == ns.pattern {
                    now.primary.clone()
                } else if let Some(r) = now
                    .rollout
                    .as_ref()
                    .filter(|r| !r.shadow && r.candidate.info.reference == ns.pattern)
                {
                    r.candidate.clone()
                } else {
                    let version = Version::start(name, &ns, &self.platform, Writes::Live)
                        .await
                        .map_err(|e| e.to_string())?;
                    version.warm(name, now.primary.live_instances()).await;
                    Arc::new(version)
                };
                let rollout = match wanted_rollout {
                    None => None,
                    Some(r) => {
                        let same = now.rollout.as_ref().filter(|c| {
                            c.candidate.info.reference == r.pattern && c.shadow == r.shadow
                        });
                        let candidate = match same {
                            Some(c) => c.candidate.clone(),
                            None => Arc::new(
                                rollouts::candidate(
                                    name,
                                    &ns,
                                    &r.pattern,
                                    r.shadow,
                                    &self.platform,
                                )
                                .await
                                .map_err(|e| e.to_string())?,
                            ),
                        };
                        Some(Arc::new(Rollout::new(
                            candidate,
                            r.canary_percent,
                            r.shadow,
                        )))
                    }
                };
                current.swap(Deployment {
                    primary,
                    previous,
                    rollout,
                });
            }
            running => {
                self.check(name, &ns).map_err(|e| e.to_string())?;
                let namespace = Namespace::start(name, &ns, &self.platform)
                    .await
                    .map_err(|e| e.to_string())?;
                let rollout = match wanted_rollout {
                    Some(r) => Some(Arc::new(Rollout::new(
                        Arc::new(
                            rollouts::candidate(name, &ns, &r.pattern, r.shadow, &self.platform)
                                .await
                                .map_err(|e| e.to_string())?,
                        ),
                        r.canary_percent,
                        r.shadow,
                    ))),
                    None => None,
                };
                if let Some(current) = &running {
                    namespace
                        .deployment()
                        .primary
                        .warm(name, current.deployment().primary.live_instances())
                        .await;
                }
                namespace.swap(Deployment {
                    primary: namespace.deployment().primary.clone(),
                    previous,
                    rollout,
                });
                let rebound = running.as_ref().is_some_and(|c| c.config.slots != ns.slots);
                self.namespaces.insert(namespace);
                if rebound {
                    self.end_rebound_streams(name);
                }
            }
        }
        Ok(())
    }
}

/// The follower: reads the whole store, then watches it; when the watch
/// ends (the store went away) it marks the replica stale, backs off and
/// starts over — so a replica catches up after an outage without a restart.
async fn follow(control: Weak<Control>, store: Arc<dyn ControlStore>) {
    let mut backoff = Duration::from_millis(100);
    let mut reported = false;
    loop {
        let Some(me) = control.upgrade() else {
            return;
        };
        // The first time, from where start-up read the store (nothing to
        // read again); after a lost watch, everything newer is read first.
        let start = me.start_cursor.lock().take();
        let cursor = match start {
            Some(cursor) => Ok(cursor),
            None => me.resync(&*store).await,
        };
        let watched = match cursor {
            Ok(cursor) => store.watch(cursor).await,
            Err(e) => Err(e),
        };
        // A follower that stalls (a frozen process, a starved runtime) for
        // half the time tombstones are kept may have missed removals the
        // store has forgotten since: it reads the store whole instead.
        let ttl = me.tombstone_ttl();
        let (quiet, lag) = (RETRY_QUIET.min(ttl / 4), ttl / 2);
        let mut lagged = false;
        match watched {
            Ok(mut changes) => {
                if me.stale.swap(false, Ordering::Relaxed) || reported {
                    tracing::info!(store = %store.summary(), "following the control store again");
                }
                reported = false;
                backoff = Duration::from_millis(100);
                drop(me);
                loop {
                    // A wait bounded by `quiet` that took longer than `lag`:
                    // the process stood still.
                    let waiting = std::time::Instant::now();
                    let next = tokio::time::timeout(quiet, changes.next()).await;
                    let Some(me) = control.upgrade() else {
                        return;
                    };
                    if waiting.elapsed() > lag {
                        tracing::warn!(store = %store.summary(), stalled_ms = waiting.elapsed().as_millis() as u64, "this replica stood still for longer than half the time removals are kept: reading the control store whole");
                        lagged = true;
                        break;
                    }
                    match next {
                        Ok(Some(Ok(doc))) => me.apply(doc).await,
                        Ok(Some(Err(e))) => {
                            tracing::warn!(store = %store.summary(), error = %e, "lost the control store; serving the last state applied");
                            reported = true;
                            break;
                        }
                        Ok(None) => break,
                        // Quiet: a change that did not apply is tried again
                        // by reading the store whole.
                        Err(_) if me.diverged.swap(false, Ordering::Relaxed) => break,
                        Err(_) => {}
                    }
                }
            }
            Err(e) => {
                if !reported {
                    tracing::warn!(store = %store.summary(), error = %e, "cannot read the control store; serving the last state applied, retrying");
                    reported = true;
                }
            }
        }
        if lagged {
            continue;
        }
        if let Some(me) = control.upgrade() {
            me.stale.store(true, Ordering::Relaxed);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Reports what this replica serves every [`REPORT_EVERY`], and has the
/// store forget tombstones older than `[admin] tombstone_ttl_ms` every
/// half of it (five minutes at most; every replica does, which costs the
/// store one idempotent sweep each).
async fn report_forever(control: Weak<Control>, store: Arc<dyn ControlStore>) {
    let mut swept = tokio::time::Instant::now();
    loop {
        let Some(me) = control.upgrade() else {
            return;
        };
        if let Err(e) = me.report(&*store).await {
            tracing::debug!(store = %store.summary(), error = %e, "cannot report to the control store");
        }
        let ttl = me.tombstone_ttl();
        drop(me);
        if swept.elapsed() >= (ttl / 2).min(Duration::from_secs(300)) {
            swept = tokio::time::Instant::now();
            match store.forget_tombstones(ttl).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(store = %store.summary(), forgotten = n, "forgot tombstones older than [admin] tombstone_ttl_ms")
                }
                Err(e) => {
                    tracing::debug!(store = %store.summary(), error = %e, "cannot forget old tombstones")
                }
            }
        }
        tokio::time::sleep(REPORT_EVERY.min(ttl / 2)).await;
    }
}
