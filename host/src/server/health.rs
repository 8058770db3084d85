//! Per-namespace health: each backend is pinged periodically, and a
//! namespace is SERVING on `grpc.health.v1` (service name = namespace name)
//! only while every backend its slots are bound to answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::backend::Backends;
use crate::namespace::Namespaces;

/// How often backends are pinged.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Runs until aborted; the first round completes right away.
pub async fn watch(backends: Backends, namespaces: Arc<Namespaces>, reporter: HealthReporter) {
    let mut previous: BTreeMap<String, bool> = BTreeMap::new();
    let mut ticker = tokio::time::interval(CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let mut up = BTreeMap::new();
        for name in backends.names() {
            let started = std::time::Instant::now();
            let pinged = backends.ping(name).await;
            if let Some(stats) = backends.stats(name) {
                stats.ping(pinged.is_ok(), started.elapsed());
            }
            let ok = match pinged {
                Ok(()) => true,
                Err(e) => {
                    if previous.get(name) != Some(&false) {
                        tracing::warn!(backend = %backends.summary(name), error = %e, "backend is not answering");
                    }
                    false
                }
            };
            if ok && previous.get(name) == Some(&false) {
                tracing::info!(backend = %backends.summary(name), "backend is answering again");
            }
            up.insert(name.clone(), ok);
        }
        for ns in namespaces.iter() {
            let serving = ns
                .slots
                .values()
                .all(|b| up.get(b).copied().unwrap_or(false));
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status(&ns.name, status).await;
        }
        previous = up;
    }
}
