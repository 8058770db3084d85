//! One scrape of `/metrics`: the request series recorded by the gRPC layer,
//! and what the namespaces, subscriptions and backends report right now.
//! Labels are namespaces, methods and backends only, never keys or topics.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use super::request_metrics::{CODES, RequestMetrics};
use crate::admission::Refusals;
use crate::backend::Backends;
use crate::delivery::Subscriptions;
use crate::namespace::Namespaces;
use crate::runtime::TrapKind;
use crate::runtime::pool::PoolStats;
use crate::telemetry::backends::BackendStats;
use crate::telemetry::exposition::{Exposition, Kind};
use crate::telemetry::methods;

/// What a scrape reads.
pub struct Sources {
    pub requests: Arc<RequestMetrics>,
    pub namespaces: Arc<Namespaces>,
    pub subscriptions: Arc<Subscriptions>,
    pub backends: Backends,
    pub started: SystemTime,
    pub control: Arc<crate::admin::Control>,
}

impl Sources {
    pub fn render(&self) -> String {
        let mut out = Exposition::default();
        self.requests.forget_deleted();
        self.requests_section(&mut out);
        self.namespaces_section(&mut out);
        self.backends_section(&mut out);
        self.process_section(&mut out);
        out.finish()
    }

    fn requests_section(&self, out: &mut Exposition) {
        out.family(
            "grpc_server_started_total",
            Kind::Counter,
            "gRPC calls started, by namespace and method.",
        );
        self.requests.each(|m, namespace, series| {
            let method = methods::get(m);
            out.sample(
                "grpc_server_started_total",
                &[
                    ("namespace", namespace),
                    ("grpc_service", method.service),
                    ("grpc_method", method.method),
                    ("grpc_type", method.call_type.as_str()),
                ],
                series.started.load(Ordering::Relaxed) as f64,
            );
        });
        out.family(
            "grpc_server_handled_total",
            Kind::Counter,
            "gRPC calls completed, by namespace, method and gRPC status code.",
        );
        self.requests.each(|m, namespace, series| {
            let method = methods::get(m);
            for (code, count) in CODES.iter().zip(&series.handled) {
                let count = count.load(Ordering::Relaxed);
                // Codes a series never saw are left out (absent means zero).
                if count == 0 {
                    continue;
                }
                out.sample(
                    "grpc_server_handled_total",
                    &[
                        ("namespace", namespace),
                        ("grpc_service", method.service),
                        ("grpc_method", method.method),
                        ("grpc_type", method.call_type.as_str()),
                        ("grpc_code", *code),
                    ],
                    count as f64,
                );
            }
        });
        out.family(
            "grpc_server_handling_seconds",
            Kind::Histogram,
            "Time from a call's arrival to its status (a stream's whole life), by namespace and method.",
        );
        self.requests.each(|m, namespace, series| {
            let method = methods::get(m);
            out.histogram(
                "grpc_server_handling_seconds",
                &[
                    ("namespace", namespace),
                    ("grpc_service", method.service),
                    ("grpc_method", method.method),
                    ("grpc_type", method.call_type.as_str()),
                ],
                &series.latency,
            );
        });
        out.family(
            "prism_grpc_in_flight",
            Kind::Gauge,
            "gRPC calls (and open streams) in progress, by namespace and method.",
        );
        self.requests.each(|m, namespace, series| {
            let method = methods::get(m);
            out.sample(
                "prism_grpc_in_flight",
                &[
                    ("namespace", namespace),
                    ("grpc_service", method.service),
                    ("grpc_method", method.method),
                ],
                series.in_flight.load(Ordering::Relaxed).max(0) as f64,
            );
        });
    }

    fn namespaces_section(&self, out: &mut Exposition) {
        let mut namespaces = self.namespaces.all();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        // Each namespace's pools: the primary version's and a canary's or shadow's.
        let pools: Vec<(String, PoolStats)> = namespaces
            .iter()
            .map(|ns| {
                let deployment = ns.deployment();
                let mut total = deployment.primary.pattern.stats();
                if let Some(rollout) = &deployment.rollout {
                    add(&mut total, &rollout.candidate.pattern.stats());
                }
                (ns.name.clone(), total)
            })
            .collect();

        out.family(
            "prism_namespace_instances",
            Kind::Gauge,
            "Live pattern instances, busy (running a call) or idle.",
        );
        for (name, s) in &pools {
            out.sample(
                "prism_namespace_instances",
                &[("namespace", name.as_str()), ("state", "busy")],
                s.busy as f64,
            );
            out.sample(
                "prism_namespace_instances",
                &[("namespace", name.as_str()), ("state", "idle")],
                s.idle as f64,
            );
        }
        counter_per_namespace(
            out,
            "prism_namespace_instances_created_total",
            "Pattern instances created (of the versions deployed now).",
            pools.iter().map(|(n, s)| (n.as_str(), s.instantiated)),
        );
        counter_per_namespace(
            out,
            "prism_namespace_long_calls_total",
            "Calls that computed past their first slice and took turns on the namespace's compute slots.",
            pools.iter().map(|(n, s)| (n.as_str(), s.long_calls)),
        );
        out.family(
            "prism_namespace_traps_total",
            Kind::Counter,
            "Pattern traps by kind (each discards its instance), of the versions deployed now.",
        );
        for (name, s) in &pools {
            for (kind, count) in TrapKind::LABELS.iter().zip(s.traps) {
                out.sample(
                    "prism_namespace_traps_total",
                    &[("namespace", name.as_str()), ("kind", *kind)],
                    count as f64,
                );
            }
        }
        out.family(
            "prism_namespace_quota_refusals_total",
            Kind::Counter,
            "Requests refused by a namespace quota before reaching its pattern.",
        );
        for ns in &namespaces {
            let Refusals {
                rate,
                concurrency,
                streams,
            } = &ns.admission.refusals;
            for (quota, count) in [
                ("requests_per_second", rate),
                ("max_concurrent_calls", concurrency),
                ("max_subscriptions", streams),
            ] {
                out.sample(
                    "prism_namespace_quota_refusals_total",
                    &[("namespace", ns.name.as_str()), ("quota", quota)],
                    count.load(Ordering::Relaxed) as f64,
                );
            }
        }
        let loads: Vec<(&str, (u32, u32))> = namespaces
            .iter()
            .map(|ns| (ns.name.as_str(), ns.admission.load()))
            .collect();
        out.family(
            "prism_namespace_calls_in_flight",
            Kind::Gauge,
            "Pattern calls admitted and not yet answered.",
        );
        for (name, (calls, _)) in &loads {
            out.sample(
                "prism_namespace_calls_in_flight",
                &[("namespace", *name)],
                f64::from(*calls),
            );
        }
        out.family(
            "prism_namespace_open_streams",
            Kind::Gauge,
            "Open subscriptions (PubSub) and listeners (Registry).",
        );
        for (name, (_, streams)) in &loads {
            out.sample(
                "prism_namespace_open_streams",
                &[("namespace", *name)],
                f64::from(*streams),
            );
        }
        let dropped = self
            .subscriptions
            .dropped(|name| self.namespaces.get(name).is_ok());
        counter_per_namespace(
            out,
            "prism_namespace_dropped_messages_total",
            "Messages dropped for slow subscribers (slow_consumer = drop_oldest, or by the broker).",
            namespaces.iter().map(|ns| {
                (
                    ns.name.as_str(),
                    dropped.get(&ns.name).copied().unwrap_or(0),
                )
            }),
        );
    }

    fn backends_section(&self, out: &mut Exposition) {
        let backends: Vec<(&str, Arc<BackendStats>)> = self
            .backends
            .names()
            .filter_map(|name| self.backends.stats(name).map(|s| (name.as_str(), s)))
            .collect();
        out.family(
            "prism_backend_up",
            Kind::Gauge,
            "1 if the backend answered its last health ping, 0 if not (absent until the first ping).",
        );
        for (name, stats) in &backends {
            if let Some(up) = stats.up() {
                out.sample(
                    "prism_backend_up",
                    &[("backend", *name), ("type", self.backends.kind(name))],
                    if up { 1.0 } else { 0.0 },
                );
            }
        }
        out.family(
            "prism_backend_ping_seconds",
            Kind::Gauge,
            "How long the backend's last health ping took.",
        );
        for (name, stats) in &backends {
            if stats.up().is_some() {
                out.sample(
                    "prism_backend_ping_seconds",
                    &[("backend", *name)],
                    stats.last_ping().as_secs_f64(),
                );
            }
        }
        for (family, help, value) in [
            (
                "prism_backend_outages_total",
                "Times the backend stopped answering health pings.",
                (|s| s.outages()) as fn(&BackendStats) -> u64,
            ),
            (
                "prism_backend_recoveries_total",
                "Times the backend answered again after an outage (reconnected).",
                |s| s.recoveries(),
            ),
        ] {
            out.family(family, Kind::Counter, help);
            for (name, stats) in &backends {
                out.sample(family, &[("backend", *name)], value(stats) as f64);
            }
        }
        out.family(
            "prism_backend_command_duration_seconds",
            Kind::Histogram,
            "Capability calls patterns made on the backend (one or more backend commands each), from call to answer.",
        );
        for (name, stats) in &backends {
            out.histogram(
                "prism_backend_command_duration_seconds",
                &[("backend", *name)],
                &stats.commands,
            );
        }
    }

    fn process_section(&self, out: &mut Exposition) {
        out.family(
            "prism_build_info",
            Kind::Gauge,
            "Always 1; the labels name the build.",
        );
        out.sample(
            "prism_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        out.family(
            "process_start_time_seconds",
            Kind::Gauge,
            "Start time of the process since the Unix epoch, in seconds.",
        );
        out.sample(
            "process_start_time_seconds",
            &[],
            self.started
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        if let Some(store) = &self.control.config().admin.store {
            out.family(
                "prism_control_stale",
                Kind::Gauge,
                "1 while this replica serves Admin state it could not confirm with the control store (the store is away, or a change from it did not apply here).",
            );
            out.sample(
                "prism_control_stale",
                &[("store", store.as_str())],
                if self.control.stale() { 1.0 } else { 0.0 },
            );
        }
        if let Some(rss) = resident_bytes() {
            out.family(
                "process_resident_memory_bytes",
                Kind::Gauge,
                "Resident memory size in bytes.",
            );
            out.sample("process_resident_memory_bytes", &[], rss as f64);
        }
    }
}

fn add(total: &mut PoolStats, more: &PoolStats) {
    total.instantiated += more.instantiated;
    total.discarded += more.discarded;
    total.idle += more.idle;
    total.busy += more.busy;
    total.long_calls += more.long_calls;
    for (t, m) in total.traps.iter_mut().zip(more.traps) {
        *t += m;
    }
}

fn counter_per_namespace<'a>(
    out: &mut Exposition,
    family: &str,
    help: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) {
    out.family(family, Kind::Counter, help);
    for (name, value) in values {
        out.sample(family, &[("namespace", name)], value as f64);
    }
}

/// Resident set size from /proc (Linux); None elsewhere.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
