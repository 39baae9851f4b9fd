//! A run's journal in the cluster: the lines the run's local journal holds
//! (integrity-chained, as every journal), copied into ConfigMaps owned by
//! the RolloutRun — `<run>-journal-0`, `-1`, … of at most [`CHUNK`] bytes
//! each, so a journal of any length stays within etcd's object limit.
//!
//! Every write is an update carrying the resourceVersion last seen, and
//! every chunk carries the epoch of the leader that wrote it
//! ([`EPOCH`]). A new leader first stamps the last chunk with its own
//! epoch: from then on the previous leader's updates conflict, and reading
//! the chunk again shows a newer epoch — [`PushError::Deposed`]. A chunk is
//! sealed (stamped again) before the next one is created, so a deposed
//! leader cannot start a chunk either.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, ListParams, PostParams};

/// Bytes per chunk (a ConfigMap holds at most 1 MiB; every append sends
/// the whole live chunk again, so smaller chunks cost fewer bytes per
/// record).
pub const CHUNK: usize = 128 * 1024;
/// Annotation: the epoch of the leader that wrote a chunk last.
pub const EPOCH: &str = "rollwright.dev/leader-epoch";
/// Label: the RolloutRun a chunk belongs to (its uid: a RolloutRun
/// deleted and made again under the same name never reads the old one's
/// journal, whose chunks the garbage collector may not have removed yet).
pub const OF: &str = "rollwright.dev/journal-of";
const INDEX: &str = "rollwright.dev/journal-chunk";
const KEY: &str = "journal.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A leader with a newer epoch writes this journal now.
    #[error("a newer leader (epoch {0}) writes this run's journal now")]
    Deposed(i64),
    /// The API server refused or was not reached.
    #[error("the journal in the cluster: {0}")]
    Api(#[from] kube::Error),
    /// This replica's leadership lapsed (not renewed in time).
    #[error("this replica no longer holds the leader Lease")]
    NotLeading,
    /// The local copy cannot be read.
    #[error("the local copy of the journal: {0}")]
    Local(std::io::Error),
}

/// Asks the leader Lease whether a replica leading in the given epoch has
/// been deposed (see [`super::leader::Leadership::deposed`]).
pub type Deposed = Arc<dyn Fn(i64) -> rollwright_engine::exec::BoxFuture<'static, bool> + Send + Sync>;

/// The live (last) chunk of a run's journal.
pub struct ClusterJournal {
    api: Api<ConfigMap>,
    /// `<run>-<uid prefix>`: the chunks' name prefix.
    run: String,
    uid: String,
    owner: OwnerReference,
    epoch: i64,
    index: usize,
    data: String,
    version: String,
    deposed: Deposed,
}

fn chunk_name(run: &str, index: usize) -> String {
    format!("{run}-journal-{index}")
}

fn epoch_of(cm: &ConfigMap) -> i64 {
    cm.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EPOCH))
        .and_then(|e| e.parse().ok())
        .unwrap_or(0)
}

impl ClusterJournal {
    /// Opens (fencing it with `epoch`) or creates the journal of `run`;
    /// returns it with every line it holds so far.
    pub async fn open(
        api: Api<ConfigMap>,
        run: &str,
        owner: OwnerReference,
        epoch: i64,
        deposed: Deposed,
    ) -> Result<(ClusterJournal, String), PushError> {
        let uid = owner.uid.clone();
        let list = api
            .list(&ListParams::default().labels(&format!("{OF}={uid}")))
            .await?;
        let mut chunks: Vec<(usize, ConfigMap)> = list
            .items
            .into_iter()
            .filter_map(|cm| {
                let i = cm.metadata.labels.as_ref()?.get(INDEX)?.parse().ok()?;
                Some((i, cm))
            })
            .collect();
        chunks.sort_by_key(|(i, _)| *i);
        let mut all = String::new();
        for (_, cm) in &chunks {
            if let Some(d) = cm.data.as_ref().and_then(|d| d.get(KEY)) {
                all.push_str(d);
            }
        }
        let short: String = uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
        let mut j = ClusterJournal {
            api,
            run: format!("{run}-{short}"),
            uid,
            owner,
            epoch,
            index: 0,
            data: String::new(),
            version: String::new(),
            deposed,
        };
        match chunks.pop() {
            None => j.create(0, String::new()).await?,
            Some((index, cm)) => {
                let theirs = epoch_of(&cm);
                if theirs > epoch && (j.deposed)(epoch).await {
                    return Err(PushError::Deposed(theirs));
                }
                j.index = index;
                j.data = cm
                    .data
                    .as_ref()
                    .and_then(|d| d.get(KEY))
                    .cloned()
                    .unwrap_or_default();
                j.version = cm.metadata.resource_version.clone().unwrap_or_default();
                // Fence: from now on an older leader's update conflicts.
                j.write(j.data.clone()).await?;
            }
        }
        Ok((j, all))
    }

    fn object(&self, index: usize, data: String, version: Option<String>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(chunk_name(&self.run, index)),
                labels: Some(BTreeMap::from([
                    (OF.to_owned(), self.uid.clone()),
                    (INDEX.to_owned(), index.to_string()),
                    ("app.kubernetes.io/managed-by".to_owned(), "rollwright".to_owned()),
                ])),
                annotations: Some(BTreeMap::from([(EPOCH.to_owned(), self.epoch.to_string())])),
                owner_references: Some(vec![self.owner.clone()]),
                resource_version: version,
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(KEY.to_owned(), data)])),
            ..ConfigMap::default()
        }
    }

    async fn create(&mut self, index: usize, data: String) -> Result<(), PushError> {
        let made = self
            .api
            .create(&PostParams::default(), &self.object(index, data.clone(), None))
            .await?;
        self.index = index;
        self.data = data;
        self.version = made.metadata.resource_version.unwrap_or_default();
        Ok(())
    }

    /// Replaces the live chunk's text, conditional on its version.
    async fn write(&mut self, data: String) -> Result<(), PushError> {
        let obj = self.object(self.index, data.clone(), Some(self.version.clone()));
        match self
            .api
            .replace(&chunk_name(&self.run, self.index), &PostParams::default(), &obj)
            .await
        {
            Ok(cm) => {
                self.data = data;
                self.version = cm.metadata.resource_version.unwrap_or_default();
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let now = self.api.get(&chunk_name(&self.run, self.index)).await?;
                let theirs = epoch_of(&now);
                if theirs > self.epoch && (self.deposed)(self.epoch).await {
                    return Err(PushError::Deposed(theirs));
                }
                // Changed by someone else than a newer leader (an older
                // one, a person, a forged stamp the Lease disowns): only
                // our text counts; write it again over their version.
                self.version = now.metadata.resource_version.unwrap_or_default();
                let obj = self.object(self.index, data.clone(), Some(self.version.clone()));
                let cm = self
                    .api
                    .replace(&chunk_name(&self.run, self.index), &PostParams::default(), &obj)
                    .await?;
                self.data = data;
                self.version = cm.metadata.resource_version.unwrap_or_default();
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Appends whole lines.
    pub async fn append(&mut self, lines: &str) -> Result<(), PushError> {
        if lines.is_empty() {
            return Ok(());
        }
        if !self.data.is_empty() && self.data.len() + lines.len() > CHUNK {
            // Seal this chunk (a conditional write: fails when fenced), then start the next.
            self.write(self.data.clone()).await?;
            return self.create(self.index + 1, lines.to_owned()).await;
        }
        let data = format!("{}{lines}", self.data);
        self.write(data).await
    }
}
