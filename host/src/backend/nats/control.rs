//! The control store on NATS JetStream: documents in the KV bucket
//! `prism_control` (a document's revision is its message's stream
//! sequence, store-wide and increasing; a write is an update expecting the
//! key's last sequence, so two writers cannot both win), followed with a
//! KV watch; components in the object store `prism_control_blobs` by digest.
//! A tombstone is an empty value (documents are never empty), so removals
//! are ordinary revisions a watcher sees in order.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::OnceCell;

use super::NatsBroker;
use crate::backend::BackendError;
use crate::backend::control::{ControlError, ControlStore, Document, REPORT_TTL};
use crate::config::NatsConfig;

const BUCKET: &str = "prism_control";
const BLOBS: &str = "prism_control_blobs";
/// Replicas' reports; the bucket's max age drops those not renewed.
const REPORTS: &str = "prism_control_replicas";

pub struct NatsControl {
    nats: Arc<NatsBroker>,
    replicas: usize,
    kv: OnceCell<kv::Store>,
    blobs: OnceCell<object_store::ObjectStore>,
    reports: OnceCell<kv::Store>,
}

impl NatsControl {
    pub fn new(name: &str, config: &NatsConfig) -> Result<NatsControl, String> {
        Ok(NatsControl {
            nats: NatsBroker::new(name, config, 16).map_err(|e| e.to_string())?,
            replicas: 1,
            kv: OnceCell::new(),
            blobs: OnceCell::new(),
            reports: OnceCell::new(),
        })
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> BackendError {
        BackendError::Unavailable {
            backend: self.nats.summary_line().to_string(),
            reason: format!("{what}: {e}"),
        }
    }

    async fn kv(&self) -> Result<&kv::Store, BackendError> {
        self.kv
            .get_or_try_init(|| {
                self.bucket(
                    BUCKET,
                    "Prism's Admin documents (namespaces, uploads)",
                    Duration::ZERO,
                )
            })
            .await
    }

    async fn reports_bucket(&self) -> Result<&kv::Store, BackendError> {
        self.reports
            .get_or_try_init(|| self.bucket(REPORTS, "What each Prism replica serves", REPORT_TTL))
            .await
    }

    /// A KV bucket: its stream made as a KV bucket's is (history 1,
    /// rollups, no deletes, direct gets), created directly because
    /// `create_key_value` first asks for account details that servers
    /// before 2.10 answer in a shape it cannot read.
    async fn bucket(
        &self,
        name: &str,
        description: &str,
        max_age: Duration,
    ) -> Result<kv::Store, BackendError> {
        let context = self.nats.context().await?;
        let config = jetstream::stream::Config {
            name: format!("KV_{name}"),
            description: Some(description.into()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        };
        self.nats
            .bounded("opening the control bucket", async {
                context
                    .get_or_create_stream(config)
                    .await
                    .map_err(|e| e.to_string())?;
                context.get_key_value(name).await.map_err(|e| e.to_string())
            })
            .await
    }

    async fn blobs(&self) -> Result<&object_store::ObjectStore, BackendError> {
        self.blobs
            .get_or_try_init(|| async {
                let context = self.nats.context().await?;
                let config = object_store::Config {
                    bucket: BLOBS.into(),
                    description: Some("Prism's uploaded pattern components by digest".into()),
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: self.replicas,
                    ..Default::default()
                };
                self.nats
                    .bounded("opening the control object store", async {
                        match context.get_object_store(BLOBS).await {
                            Ok(store) => Ok(store),
                            Err(_) => context
                                .create_object_store(config)
                                .await
                                .map_err(|e| e.to_string()),
                        }
                    })
                    .await
            })
            .await
    }

    /// The bucket's last revision and how many messages it holds, asked
    /// of the server (not a cached info).
    async fn last_revision(&self) -> Result<(u64, u64), BackendError> {
        let context = self.nats.context().await?;
        let mut stream = self
            .nats
            .bounded(
                "reading the control bucket",
                context.get_stream(format!("KV_{BUCKET}")),
            )
            .await?;
        let info = self
            .nats
            .bounded("reading the control bucket", stream.info())
            .await?;
        Ok((info.state.last_sequence, info.state.messages))
    }
    /// Every entry of the bucket (one per key, tombstones too) and the
    /// revision that is current as of.
    async fn entries(&self) -> Result<(Vec<kv::Entry>, u64), BackendError> {
        let kv = self.kv().await?;
        let (last, messages) = self.last_revision().await?;
        if messages == 0 {
            return Ok((Vec::new(), last));
        }
        // The bucket keeps one message per key: reading it from the start
        // until nothing is pending is every document. (Not "up to the
        // last revision": that may be a tombstone forgotten since.)
        let mut watch = self
            .nats
            .bounded("reading the control bucket", kv.watch_all_from_revision(1))
            .await?;
        let mut entries = Vec::new();
        let mut cursor = last;
        loop {
            let next = self
                .nats
                .bounded("reading the control bucket", async {
                    Ok::<_, String>(watch.next().await)
                })
                .await?;
            let entry = match next {
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err(self.unavailable("reading the control bucket", e)),
                None => break,
            };
            cursor = cursor.max(entry.revision);
            let pending = entry.delta;
            entries.push(entry);
            if pending == 0 {
                break;
            }
        }
        Ok((entries, cursor))
    }
}

/// Whether an entry is a tombstone (an empty value; a KV delete or purge
/// marker, which Prism does not write, counts as one too).
fn is_tombstone(entry: &kv::Entry) -> bool {
    entry.operation != kv::Operation::Put || entry.value.is_empty()
}

fn document(entry: kv::Entry) -> Document {
    let value = (!is_tombstone(&entry)).then(|| entry.value.to_vec());
    Document {
        key: entry.key,
        revision: entry.revision,
        value,
    }
}

#[async_trait]
impl ControlStore for NatsControl {
    fn summary(&self) -> String {
        self.nats.summary_line().to_string()
    }

    async fn load(&self) -> Result<(Vec<Document>, u64), BackendError> {
        let (entries, cursor) = self.entries().await?;
        Ok((entries.into_iter().map(document).collect(), cursor))
    }

    async fn put(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        expected: u64,
    ) -> Result<u64, ControlError> {
        let kv = self.kv().await?;
        let bytes = bytes::Bytes::from(value.unwrap_or_default());
        let mut last = expected;
        // Expecting no document and finding a tombstone: the write expects
        // the tombstone's revision instead (still a compare-and-set, so a
        // writer that revives the key first wins). Twice at most: a
        // tombstone again after that means others keep racing on the key.
        for _ in 0..3 {
            let written = self
                .nats
                .bounded("writing the control bucket", async {
                    Ok::<_, String>(kv.update(key, bytes.clone(), last).await)
                })
                .await?;
            match written {
                Ok(revision) => return Ok(revision),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    let entry = self
                        .nats
                        .bounded("reading the control bucket", kv.entry(key))
                        .await?;
                    match entry {
                        Some(entry) if expected == 0 && is_tombstone(&entry) => {
                            last = entry.revision;
                        }
                        entry => {
                            return Err(ControlError::Conflict {
                                key: key.to_string(),
                                expected,
                                current: entry.map_or(0, |e| e.revision),
                            });
                        }
                    }
                }
                Err(e) => return Err(self.unavailable("writing the control bucket", e).into()),
            }
        }
        Err(ControlError::Conflict {
            key: key.to_string(),
            expected,
            current: last,
        })
    }

    async fn watch(
        &self,
        after: u64,
    ) -> Result<BoxStream<'static, Result<Document, BackendError>>, BackendError> {
        let kv = self.kv().await?;
        let watch = self
            .nats
            .bounded(
                "watching the control bucket",
                kv.watch_all_from_revision(after + 1),
            )
            .await?;
        let summary = self.summary();
        let entries = watch.map(move |entry| {
            entry.map(document).map_err(|e| BackendError::Unavailable {
                backend: summary.clone(),
                reason: format!("watching the control bucket: {e}"),
            })
        });
        // The KV watch waits through a lost connection (and resumes after
        // it); the follower must know it is cut off meanwhile, so the
        // stream ends with an error once the client is not connected.
        let (nats, summary) = (self.nats.clone(), self.summary());
        let lost = futures::stream::unfold((), move |()| {
            let (nats, summary) = (nats.clone(), summary.clone());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    if !nats.is_connected() {
                        let lost = Err(BackendError::Unavailable {
                            backend: summary,
                            reason: "the connection to NATS is lost".into(),
                        });
                        return Some((lost, ()));
                    }
                }
            }
        });
        Ok(futures::stream::select(entries, lost).boxed())
    }

    async fn put_blob(&self, digest: &str, bytes: Arc<[u8]>) -> Result<(), BackendError> {
        let blobs = self.blobs().await?;
        if blobs.info(digest).await.is_ok() {
            return Ok(());
        }
        let mut reader: &[u8] = &bytes;
        self.nats
            .bounded("storing the component", blobs.put(digest, &mut reader))
            .await?;
        Ok(())
    }

    async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let blobs = self.blobs().await?;
        let mut object = match blobs.get(digest).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.unavailable("reading the component", e)),
        };
        let mut bytes = Vec::new();
        self.nats
            .bounded("reading the component", object.read_to_end(&mut bytes))
            .await?;
        Ok(Some(bytes))
    }

    async fn forget_tombstones(&self, older_than: Duration) -> Result<u64, BackendError> {
        let (entries, _) = self.entries().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let cutoff = i64::try_from(now.saturating_sub(older_than.as_secs())).unwrap_or(i64::MAX);
        let context = self.nats.context().await?;
        let stream = self
            .nats
            .bounded(
                "reading the control bucket",
                context.get_stream(format!("KV_{BUCKET}")),
            )
            .await?;
        let mut forgotten = 0;
        for entry in entries
            .iter()
            .filter(|e| is_tombstone(e) && e.created.unix_timestamp() < cutoff)
        {
            // Only messages before the one after the tombstone: a key
            // written again meanwhile keeps its new value.
            let purge = stream
                .purge()
                .filter(format!("$KV.{BUCKET}.{}", entry.key))
                .sequence(entry.revision + 1);
            self.nats
                .bounded("forgetting tombstones", purge.into_future())
                .await?;
            forgotten += 1;
        }
        Ok(forgotten)
    }

    async fn report(&self, replica: &str, report: Vec<u8>) -> Result<(), BackendError> {
        let reports = self.reports_bucket().await?;
        // A replica id is free text: keys are its hex.
        let key: String = replica.bytes().map(|b| format!("{b:02x}")).collect();
        self.nats
            .bounded(
                "reporting to the control store",
                reports.put(key, report.into()),
            )
            .await?;
        Ok(())
    }

    async fn reports(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        let reports = self.reports_bucket().await?;
        let keys: Vec<String> = self
            .nats
            .bounded("reading the replicas' reports", async {
                let keys = reports.keys().await.map_err(|e| e.to_string())?;
                keys.try_collect::<Vec<String>>()
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        let mut out = Vec::new();
        for key in keys {
            if let Some(value) = self
                .nats
                .bounded("reading the replicas' reports", reports.get(key))
                .await?
            {
                out.push(value.to_vec());
            }
        }
        Ok(out)
    }

    async fn delete_blob(&self, digest: &str) -> Result<(), BackendError> {
        let blobs = self.blobs().await?;
        match blobs.delete(digest).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.unavailable("deleting the component", e)),
        }
    }
}
