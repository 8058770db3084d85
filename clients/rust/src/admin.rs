//! `Admin`: namespaces, uploaded patterns and rollouts of a server (or a
//! fleet on one control store), for platforms that automate tenants
//! without shelling out to `prism admin`.

use bytes::Bytes;
use tonic::transport::Channel;

use crate::call::Calls;
use crate::error::{Error, Result};
use crate::pb;
use crate::pb::admin_client::AdminClient;

/// Uploads are sent in chunks of this size.
const CHUNK: usize = 1 << 20;

/// The Admin API, from [`Client::admin`](crate::Client::admin). Results are
/// the wire types ([`pb::NamespaceInfo`], [`pb::PatternInfo`]).
///
/// Admin calls are never retried: a change that failed UNAVAILABLE may or
/// may not have been made (read it back with [`namespace`](Admin::namespace)),
/// and one refused [`Error::Aborted`] (another replica changed the same
/// namespace at the same moment) changed nothing and may be sent again.
#[derive(Clone, Debug)]
pub struct Admin {
    client: AdminClient<Channel>,
    calls: Calls,
}

fn pairs<'a>(
    items: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> std::collections::HashMap<String, String> {
    items
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl Admin {
    pub(crate) fn new(channel: Channel, calls: Calls, max_message_bytes: usize) -> Admin {
        let client = AdminClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Admin { client, calls }
    }

    /// Every namespace the caller administers.
    pub async fn list_namespaces(&self) -> Result<Vec<pb::NamespaceInfo>> {
        let reply = self
            .calls
            .once(
                &self.client,
                pb::ListNamespacesRequest {},
                |mut c, r| async move { c.list_namespaces(r).await },
            )
            .await?;
        Ok(reply.namespaces)
    }

    /// One namespace, with (on a fleet) the revision each replica serves;
    /// [`Error::NotFound`] if there is none.
    pub async fn namespace(&self, name: &str) -> Result<pb::NamespaceInfo> {
        let request = pb::GetNamespaceRequest {
            name: name.to_owned(),
        };
        self.calls
            .once(&self.client, request, |mut c, r| async move {
                c.get_namespace(r).await
            })
            .await
    }

    /// Creates `name` served by `pattern` (a built-in name or an upload's
    /// digest) with `slots` (capability, backend) and `settings`.
    ///
    /// ```no_run
    /// # async fn example(client: prism_client::Client) -> Result<(), prism_client::Error> {
    /// let admin = client.admin();
    /// admin
    ///     .create_namespace("orders", "keyvalue", [("kv", "redis")], [("max_value_bytes", "4096")])
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn create_namespace<'a>(
        &self,
        name: &str,
        pattern: &str,
        slots: impl IntoIterator<Item = (&'a str, &'a str)>,
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<pb::NamespaceInfo> {
        let request = pb::CreateNamespaceRequest {
            name: name.to_owned(),
            pattern: pattern.to_owned(),
            slots: pairs(slots),
            settings: pairs(settings),
            limits: Default::default(),
        };
        self.calls
            .once(&self.client, request, |mut c, r| async move {
                c.create_namespace(r).await
            })
            .await
    }

    /// Applies `change` (maps merged into the namespace's, or replacing them
    /// with `replace_*`). On a fleet an update racing another replica's is
    /// applied over the winner's, so neither is lost.
    pub async fn update_namespace(
        &self,
        change: pb::UpdateNamespaceRequest,
    ) -> Result<pb::NamespaceInfo> {
        self.calls
            .once(&self.client, change, |mut c, r| async move {
                c.update_namespace(r).await
            })
            .await
    }

    /// Deletes `name` (and with `purge` its data); returns how many keys or
    /// identities were purged.
    pub async fn delete_namespace(&self, name: &str, purge: bool) -> Result<u64> {
        let request = pb::DeleteNamespaceRequest {
            name: name.to_owned(),
            purge,
        };
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.delete_namespace(r).await
            })
            .await?;
        Ok(reply.purged)
    }

    /// Uploads a wasm component (checked and precompiled by the server);
    /// returns it with its digest.
    pub async fn upload_pattern(
        &self,
        component: impl Into<Bytes>,
        label: &str,
    ) -> Result<pb::PatternInfo> {
        let component: Bytes = component.into();
        if component.is_empty() {
            return Err(Error::invalid("the component is empty"));
        }
        let chunks: Vec<pb::UploadPatternChunk> = (0..component.len())
            .step_by(CHUNK)
            .map(|start| pb::UploadPatternChunk {
                label: if start == 0 {
                    label.to_owned()
                } else {
                    String::new()
                },
                data: component.slice(start..(start + CHUNK).min(component.len())),
            })
            .collect();
        self.calls
            .once(
                &self.client,
                futures::stream::iter(chunks),
                |mut c, r| async move { c.upload_pattern(r).await },
            )
            .await
    }

    /// Built-in patterns, then the uploads the caller may see.
    pub async fn patterns(&self) -> Result<Vec<pb::PatternInfo>> {
        let reply = self
            .calls
            .once(
                &self.client,
                pb::ListPatternsRequest {},
                |mut c, r| async move { c.list_patterns(r).await },
            )
            .await?;
        Ok(reply.patterns)
    }

    /// Takes the caller's namespaces out of an upload's scope; true when
    /// the component itself is gone.
    pub async fn delete_pattern(&self, digest: &str) -> Result<bool> {
        let request = pb::DeletePatternRequest {
            digest: digest.to_owned(),
        };
        let reply = self
            .calls
            .once(&self.client, request, |mut c, r| async move {
                c.delete_pattern(r).await
            })
            .await?;
        Ok(reply.removed)
    }

    /// Serves `namespace` with `pattern`: at once, to `canary_percent` of
    /// its calls, or (`shadow`) as a mirror of its reads.
    pub async fn deploy(
        &self,
        namespace: &str,
        pattern: &str,
        canary_percent: u32,
        shadow: bool,
    ) -> Result<pb::NamespaceInfo> {
        let request = pb::DeployPatternRequest {
            namespace: namespace.to_owned(),
            pattern: pattern.to_owned(),
            canary_percent,
            shadow,
        };
        self.calls
            .once(&self.client, request, |mut c, r| async move {
                c.deploy_pattern(r).await
            })
            .await
    }

    /// Makes the canary or shadow the serving version.
    pub async fn promote(&self, namespace: &str) -> Result<pb::NamespaceInfo> {
        let request = pb::PromoteRequest {
            namespace: namespace.to_owned(),
        };
        self.calls
            .once(&self.client, request, |mut c, r| async move {
                c.promote(r).await
            })
            .await
    }

    /// Drops a canary or shadow; without one, returns to the previous version.
    pub async fn rollback(&self, namespace: &str) -> Result<pb::NamespaceInfo> {
        let request = pb::RollbackRequest {
            namespace: namespace.to_owned(),
        };
        self.calls
            .once(&self.client, request, |mut c, r| async move {
                c.rollback(r).await
            })
            .await
    }
}
