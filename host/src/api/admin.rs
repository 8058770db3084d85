//! `prism.v1.Admin`: authorizes each call (an `admin` grant on the
//! namespace it acts on), decodes it, and hands it to the control plane
//! (`crate::admin`), which does the checking, starting and swapping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::admin::{AdminError, Control, NamespaceView, PatternEntry, Scope};
use crate::auth::{Access, Principal};
use crate::config::{LimitsConfig, NamespaceConfig, NamespaceLimits};
use crate::namespace::VersionInfo;
use crate::pb;
use crate::pb::admin_server::Admin;
use crate::text::shorten;

/// What an Admin call acts on, for authorization.
enum Target<'a> {
    Namespace(&'a str),
    /// Limits and quotas of a namespace: `*:admin` only, so a tenant's
    /// admin cannot take more of the server than the operator gave it.
    Limits(&'a str),
    /// Uploads and pattern listings: any admin grant will do.
    Server,
}

pub struct AdminService {
    control: Arc<Control>,
    /// `[auth] mode = "jwt"`: callers carry a verified principal.
    auth_on: bool,
    /// `[admin] allow_unauthenticated`: with auth off, anyone administers.
    open: bool,
    max_pattern_bytes: usize,
}

impl AdminService {
    pub fn new(control: Arc<Control>, auth_on: bool) -> AdminService {
        let admin = &control.config().admin;
        AdminService {
            open: admin.allow_unauthenticated,
            max_pattern_bytes: admin.max_pattern_bytes,
            auth_on,
            control,
        }
    }

    fn principal<T>(&self, request: &Request<T>) -> Result<Option<Arc<Principal>>, Status> {
        if !self.auth_on {
            if self.open {
                return Ok(None);
            }
            return Err(Status::permission_denied(
                "the Admin API is off: [auth] mode is \"none\" and [admin] allow_unauthenticated is false; \
                 turn on auth (mode = \"jwt\") and call with a token that has an admin grant, \
                 or set [admin] allow_unauthenticated = true on a trusted network",
            ));
        }
        request
            .extensions()
            .get::<Arc<Principal>>()
            .cloned()
            .map(Some)
            .ok_or_else(|| Status::unauthenticated("Admin calls need a bearer token"))
    }

    /// Whose uploads the caller acts on: the namespaces its admin grants
    /// name, or every namespace (`*:admin`, or Admin open without auth).
    fn scope<T>(&self, request: &Request<T>) -> Result<Scope, Status> {
        Ok(
            match self
                .principal(request)?
                .and_then(|p| p.grants.admin_namespaces())
            {
                Some(namespaces) => Scope::Namespaces(namespaces),
                None => Scope::Everyone,
            },
        )
    }

    fn authorize<T>(&self, request: &Request<T>, target: Target<'_>) -> Result<(), Status> {
        let Some(principal) = self.principal(request)? else {
            return Ok(());
        };
        let (allowed, needs) = match target {
            Target::Namespace(ns) => (
                principal.grants.allows(ns, Access::Admin),
                format!("'{}:admin'", shorten(ns)),
            ),
            Target::Limits(ns) => (
                principal.grants.admin_everywhere(),
                format!(
                    "'*:admin' to set the limits of '{}' (a namespace admin may change its pattern, settings and slots)",
                    shorten(ns)
                ),
            ),
            Target::Server => (
                principal.grants.admin_anywhere(),
                "an admin grant ('NAMESPACE:admin' or '*:admin')".to_string(),
            ),
        };
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "'{}' may not administer this (its grants: {}); it needs {needs}",
                principal.subject,
                principal.grants.describe()
            )))
        }
    }

    /// Whether the caller may see how the server is wired (backend
    /// addresses): auth off, or a '*:admin' grant.
    fn operator<T>(&self, request: &Request<T>) -> bool {
        match request.extensions().get::<Arc<Principal>>() {
            Some(principal) => principal.grants.admin_everywhere(),
            None => true,
        }
    }

    async fn info(&self, view: NamespaceView, operator: bool) -> pb::NamespaceInfo {
        namespace_info(&self.control, view, operator).await
    }
}

fn version(info: &VersionInfo) -> pb::PatternVersion {
    pb::PatternVersion {
        label: info.label.clone(),
        digest: info.digest.clone(),
        world: info.world.clone(),
    }
}

/// The resolved limits as `field = value` text.
fn limits_text(limits: &NamespaceLimits) -> HashMap<String, String> {
    let i = &limits.instance;
    let q = &limits.quotas;
    let or_unlimited =
        |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |v| v.to_string());
    HashMap::from([
        (
            "memory_limit_mib".into(),
            (i.memory_bytes >> 20).to_string(),
        ),
        (
            "call_deadline_ms".into(),
            i.call_deadline.as_millis().to_string(),
        ),
        ("max_instances".into(), i.max_instances.to_string()),
        ("compute_slots".into(), i.compute_slots.to_string()),
        ("idle_instances".into(), i.idle_instances.to_string()),
        (
            "requests_per_second".into(),
            or_unlimited(q.requests_per_second.map(u64::from)),
        ),
        ("burst".into(), q.burst.to_string()),
        (
            "max_concurrent_calls".into(),
            or_unlimited(q.max_concurrent_calls.map(u64::from)),
        ),
        ("max_stored_bytes".into(), or_unlimited(q.max_stored_bytes)),
        ("max_stored_keys".into(), or_unlimited(q.max_stored_keys)),
        (
            "max_subscriptions".into(),
            or_unlimited(q.max_subscriptions.map(u64::from)),
        ),
        (
            "max_buffered_messages".into(),
            q.max_buffered_messages.to_string(),
        ),
        (
            "max_buffered_bytes".into(),
            q.max_buffered_bytes.to_string(),
        ),
    ])
}

/// What Admin shows of a namespace; backend addresses only to `operator`s
/// (a namespace admin learns its slots' backend names, not where they run).
async fn namespace_info(
    control: &Control,
    view: NamespaceView,
    operator: bool,
) -> pb::NamespaceInfo {
    let ns = &view.namespace;
    let deployment = ns.deployment();
    let backends = &control.platform().backends;
    let mut slots = Vec::new();
    for (slot, backend) in &ns.slots {
        let healthy = matches!(
            tokio::time::timeout(Duration::from_millis(500), backends.ping(backend)).await,
            Ok(Ok(()))
        );
        slots.push(pb::Slot {
            slot: slot.clone(),
            backend: backend.clone(),
            summary: if operator {
                backends.summary(backend)
            } else {
                format!("backend '{backend}'")
            },
            healthy,
        });
    }
    let mut stats = vec![deployment.primary.pattern.stats()];
    if let Some(r) = &deployment.rollout {
        stats.push(r.candidate.pattern.stats());
    }
    let rollout = deployment.rollout.as_ref().map(|r| {
        let s = r.stats();
        pb::Rollout {
            candidate: Some(version(&r.candidate.info)),
            canary_percent: r.canary_percent,
            shadow: r.shadow,
            calls: s.calls,
            divergences: s.divergences,
            divergence_samples: s.samples,
        }
    });
    let limits = ns.config.limits.resolve(&control.config().runtime.limits);
    pb::NamespaceInfo {
        name: ns.name.clone(),
        pattern: Some(version(&deployment.primary.info)),
        previous: deployment.previous.as_ref().map(version),
        rollout,
        slots,
        settings: ns
            .config
            .settings
            .iter()
            .filter_map(|(k, v)| crate::config::setting_string(v).map(|v| (k.clone(), v)))
            .collect(),
        limits: limits_text(&limits),
        source: view.source.as_str().to_string(),
        live_instances: stats.iter().map(|s| (s.idle + s.busy) as u64).sum(),
        idle_instances: stats.iter().map(|s| s.idle as u64).sum(),
        calls: ns.calls(),
        traps: stats.iter().map(|s| s.discarded).sum(),
        in_flight: ns.admission.load().0,
        revision: control.revision(&ns.name).await,
        replicas: Vec::new(),
        stale: control.stale(),
    }
}

/// `info` with the namespace's state across the fleet (a store round trip:
/// single-namespace answers only, not listings).
async fn with_fleet(
    control: &Control,
    mut info: pb::NamespaceInfo,
    operator: bool,
) -> pb::NamespaceInfo {
    if let Some(fleet) = control.fleet(&info.name).await {
        info.replicas = fleet
            .replicas
            .into_iter()
            .map(|r| pb::ReplicaState {
                replica: r.replica,
                address: if operator { r.address } else { String::new() },
                revision: r.revision,
                stale: r.stale,
                reported_at_ms: r.reported_at_ms,
            })
            .collect();
    }
    info
}

fn pattern_info(p: PatternEntry) -> pb::PatternInfo {
    pb::PatternInfo {
        digest: p.digest,
        label: p.meta.label,
        world: p.meta.world,
        size: p.meta.size,
        uploaded_at_ms: p.meta.uploaded_at_ms,
        imports: p.meta.imports,
        scope: p.meta.scope.into_iter().collect(),
    }
}

fn settings(map: HashMap<String, String>) -> BTreeMap<String, toml::Value> {
    map.into_iter()
        .map(|(k, v)| (k, toml::Value::String(v)))
        .collect()
}

/// `[namespaces.X.limits]` from `field = "value"` text: numbers become
/// numbers, so the config's own checks (and messages) apply.
fn limits(map: HashMap<String, String>) -> Result<LimitsConfig, AdminError> {
    let mut table = toml::Table::new();
    for (field, text) in map {
        // Every limit's name is short: a long one is unknown, and quoting it
        // whole (as the decoder's message would) could echo megabytes.
        if field.len() > 64 {
            return Err(AdminError::Invalid(format!(
                "limits.{}: no such limit (see [namespaces.X.limits] in README.md)",
                shorten(&field)
            )));
        }
        let value = text.trim().parse::<i64>().map_err(|_| {
            AdminError::Invalid(format!(
                "limits.{}: '{}' is not a whole number",
                shorten(&field),
                shorten(&text)
            ))
        })?;
        table.insert(field, toml::Value::Integer(value));
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| AdminError::Invalid(format!("limits: {}", e.message())))
}

fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(value)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        let principal = self.principal(&request)?;
        if let Some(p) = &principal
            && !p.grants.admin_anywhere()
        {
            self.authorize(&request, Target::Server)?;
        }
        let operator = self.operator(&request);
        let mut namespaces = Vec::new();
        for view in self.control.list().await {
            let visible = principal
                .as_ref()
                .is_none_or(|p| p.grants.allows(&view.namespace.name, Access::Admin));
            if visible {
                namespaces.push(self.info(view, operator).await);
            }
        }
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn get_namespace(
        &self,
        request: Request<pb::GetNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let name = required("name", &request.get_ref().name)?.to_string();
        self.authorize(&request, Target::Namespace(&name))?;
        let operator = self.operator(&request);
        let view = self.control.namespace(&name).await?;
        let info = self.info(view, operator).await;
        Ok(Response::new(
            with_fleet(&self.control, info, operator).await,
        ))
    }

    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let name = required("name", &request.get_ref().name)?.to_string();
        self.authorize(&request, Target::Namespace(&name))?;
        let operator = self.operator(&request);
        if !request.get_ref().limits.is_empty() {
            self.authorize(&request, Target::Limits(&name))?;
        }
        let r = request.into_inner();
        required("pattern", &r.pattern)?;
        let ns = NamespaceConfig {
            pattern: r.pattern,
            slots: r.slots.into_iter().collect(),
            settings: settings(r.settings),
            limits: limits(r.limits)?,
        };
        let view = self.control.create(&name, ns).await?;
        Ok(Response::new(self.info(view, operator).await))
    }

    async fn update_namespace(
        &self,
        request: Request<pb::UpdateNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let name = required("name", &request.get_ref().name)?.to_string();
        self.authorize(&request, Target::Namespace(&name))?;
        let operator = self.operator(&request);
        if !request.get_ref().limits.is_empty() || request.get_ref().replace_limits {
            self.authorize(&request, Target::Limits(&name))?;
        }
        let r = request.into_inner();
        let new_limits = limits(r.limits)?;
        let view = self
            .control
            .update(&name, |ns| {
                if r.replace_slots {
                    ns.slots = r.slots.clone().into_iter().collect();
                } else {
                    ns.slots.extend(r.slots.clone());
                }
                let new_settings = settings(r.settings.clone());
                if r.replace_settings {
                    ns.settings = new_settings;
                } else {
                    ns.settings.extend(new_settings);
                }
                if r.replace_limits {
                    ns.limits = new_limits.clone();
                } else {
                    merge_limits(&mut ns.limits, new_limits.clone());
                }
                Ok(())
            })
            .await?;
        Ok(Response::new(self.info(view, operator).await))
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteNamespaceResponse>, Status> {
        let name = required("name", &request.get_ref().name)?.to_string();
        self.authorize(&request, Target::Namespace(&name))?;
        let purged = self.control.delete(&name, request.get_ref().purge).await?;
        Ok(Response::new(pb::DeleteNamespaceResponse { purged }))
    }

    async fn upload_pattern(
        &self,
        request: Request<Streaming<pb::UploadPatternChunk>>,
    ) -> Result<Response<pb::PatternInfo>, Status> {
        self.authorize(&request, Target::Server)?;
        let scope = self.scope(&request)?;
        let (_receiving, mut incoming) = self.control.receive_upload()?;
        let mut chunks = request.into_inner();
        let mut label = String::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if label.is_empty() && !chunk.label.is_empty() {
                label = shorten(&chunk.label);
            }
            if incoming.size() + chunk.data.len() as u64 > self.max_pattern_bytes as u64 {
                return Err(Status::resource_exhausted(format!(
                    "the pattern is larger than [admin] max_pattern_bytes ({} bytes)",
                    self.max_pattern_bytes
                )));
            }
            incoming.write(&chunk.data).map_err(|e| {
                Status::unavailable(format!(
                    "cannot receive the upload: {e}; nothing was changed"
                ))
            })?;
        }
        if incoming.size() == 0 {
            return Err(Status::invalid_argument(
                "the upload carried no bytes; send the .wasm component in the chunks' data",
            ));
        }
        let entry = self.control.upload(&label, incoming, &scope).await?;
        Ok(Response::new(pattern_info(entry)))
    }

    async fn delete_pattern(
        &self,
        request: Request<pb::DeletePatternRequest>,
    ) -> Result<Response<pb::DeletePatternResponse>, Status> {
        self.authorize(&request, Target::Server)?;
        let scope = self.scope(&request)?;
        let digest = required("digest", &request.get_ref().digest)?;
        let removed = self.control.delete_pattern(digest, &scope).await?;
        Ok(Response::new(pb::DeletePatternResponse { removed }))
    }

    async fn list_patterns(
        &self,
        request: Request<pb::ListPatternsRequest>,
    ) -> Result<Response<pb::ListPatternsResponse>, Status> {
        self.authorize(&request, Target::Server)?;
        let scope = self.scope(&request)?;
        let patterns = self
            .control
            .patterns(&scope)
            .await
            .into_iter()
            .map(pattern_info)
            .collect();
        Ok(Response::new(pb::ListPatternsResponse { patterns }))
    }

    async fn deploy_pattern(
        &self,
        request: Request<pb::DeployPatternRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let name = required("namespace", &request.get_ref().namespace)?.to_string();
        self.authorize(&request, Target::Namespace(&name))?;
        let operator = self.operator(&request);
        let r = request.into_inner();
        required("pattern", &r.pattern)?;
        let view = self
            .control
            .deploy(&name, &r.pattern, r.canary_percent, r.shadow)
            .await?;
        Ok(Response::new(self.info(view, operator).await))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let name = required("namespace", &request.get_ref().namespace)?.to_string();
        self.authorize(&request, Target::Namespace(&name))?;
        let operator = self.operator(&request);
        let view = self.control.promote(&name).await?;
        Ok(Response::new(self.info(view, operator).await))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::NamespaceInfo>, Status> {
        let name = required("namespace", &request.get_ref().namespace)?.to_string();
        self.authorize(&request, Target::Namespace(&name))?;
        let operator = self.operator(&request);
        let view = self.control.rollback(&name).await?;
        Ok(Response::new(self.info(view, operator).await))
    }
}

/// Sets each limit `changes` names, keeping the rest. (Destructured, so a
/// new limit field cannot be forgotten here.)
fn merge_limits(limits: &mut LimitsConfig, changes: LimitsConfig) {
    let LimitsConfig {
        memory_limit_mib,
        call_deadline_ms,
        max_instances,
        compute_slots,
        idle_instances,
        requests_per_second,
        burst,
        max_concurrent_calls,
        max_stored_bytes,
        max_stored_keys,
        max_subscriptions,
        max_buffered_messages,
        max_buffered_bytes,
    } = changes;
    macro_rules! merge {
        ($($field:ident),*) => {
            $(if $field.is_some() {
                limits.$field = $field;
            })*
        };
    }
    merge!(
        memory_limit_mib,
        call_deadline_ms,
        max_instances,
        compute_slots,
        idle_instances,
        requests_per_second,
        burst,
        max_concurrent_calls,
        max_stored_bytes,
        max_stored_keys,
        max_subscriptions,
        max_buffered_messages,
        max_buffered_bytes
    );
}
