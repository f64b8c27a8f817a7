//! The billing source: every `billing.scan_interval` of recmeter's clock it lists the billing
//! bucket, finds the exports not read yet (a new object, or a changed ETag or size), reads each
//! in bounded memory and lands it ([`Landing`]): lines in batches of bill identities, rejects,
//! then one commit that puts the export in force.
//!
//! An export is one object, or an AWS delivery: the report files a `*-Manifest.json` names
//! (`reportKeys` of a legacy CUR, `dataFiles` of a Data Export). Files a manifest names are
//! read only through it. Per period folder only the newest delivery is read; an older one is
//! superseded. A bill's identity is (provider, billing account, billing period, folder), where
//! the folder of a delivery is its period folder (the assembly folder left out), so a second
//! delivery for a period replaces the first.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt};
use recmeter_core::clock::{Clock, Ticks};
use recmeter_core::cost::{
    BillIdentity, Commit, Landing, ObjectVersion, ScanStatus, Staged, StagedBill,
};
use recmeter_core::error::{Error, Result};
use recmeter_core::telemetry::{LabelledCounter, Telemetry};

use super::line::{CellError, CostLine, Reject, Sink};
use super::read::{Defaults, FileError, normalize};

/// Largest manifest read: AWS's list a few thousand keys.
const MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// Bytes asked of the store per request, and handed to the reader at a time; with two
/// waiting and one fetched, an object's read holds at most four.
const READ_RANGE: u64 = 8 << 20;

/// Most distinct `provider` label values on `recmeter_billing_rows_total`; more count as
/// `other`.
const MAX_PROVIDER_LABELS: usize = 16;

/// What the billing source reads and how.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Per-prefix defaults for files whose rows do not name their provider or account; the
    /// longest prefix that an object's path starts with applies.
    pub defaults: Vec<(String, Defaults)>,
    /// Currencies other than USD that lines may be billed in (the rate table's keys).
    pub currencies: Vec<String>,
    /// Lines buffered before they are written as files (of each bill identity, together).
    pub batch_rows: usize,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            defaults: Vec::new(),
            currencies: Vec::new(),
            batch_rows: 65_536,
        }
    }
}

/// What one scan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Exports read and landed.
    pub exports: usize,
    /// Objects those exports were read from.
    pub objects: usize,
    pub lines: u64,
    pub rejects: u64,
    /// Exports whose read failed (an error of the bucket or the store); tried again next scan.
    pub failed: usize,
}

/// The billing source (see the module's documentation).
#[derive(Debug)]
pub struct BillingSource {
    objects: Arc<dyn ObjectStore>,
    landing: Arc<dyn Landing>,
    config: SourceConfig,
    clock: Arc<Clock>,
    status: Arc<ScanStatus>,
    rows: RowCounter,
    exports: Arc<LabelledCounter>,
    /// AWS manifests read (or found not to read), by version; versions no longer listed are
    /// dropped at each scan.
    manifests: parking_lot::Mutex<HashMap<ObjectVersion, std::result::Result<AwsManifest, String>>>,
}

/// One export to read: its key, its objects in order, and its bills' folder.
#[derive(Debug, Clone)]
struct Export {
    key: String,
    objects: Vec<ObjectMeta>,
    folder: String,
}

impl BillingSource {
    /// A source over the bucket `objects`, landing through `landing`.
    pub fn new(
        objects: Arc<dyn ObjectStore>,
        landing: Arc<dyn Landing>,
        config: SourceConfig,
        clock: Arc<Clock>,
        telemetry: &Telemetry,
        status: Arc<ScanStatus>,
    ) -> Self {
        Self {
            objects,
            landing,
            config,
            clock,
            status,
            rows: RowCounter::new(telemetry),
            manifests: parking_lot::Mutex::default(),
            exports: telemetry.labelled_counter(
                "recmeter_billing_objects",
                "Billing objects read, by outcome: ingested (landed), unreadable (not an export \
                 recmeter reads; one reject names it, and it is not read again until it \
                 changes) or failed (the bucket or the store failed; read again at the next \
                 scan).",
                &["outcome"],
            ),
        }
    }

    /// Scans at every tick of `ticks` (`billing.scan_interval` on recmeter's clock; give it a
    /// first tick now to scan at start) until `done`.
    pub async fn run(self, mut ticks: Ticks, done: impl std::future::Future<Output = ()>) {
        tokio::pin!(done);
        let mut failing = false;
        loop {
            tokio::select! {
                () = &mut done => return,
                _ = ticks.tick() => {}
            }
            // A scan in progress is dropped at shutdown: its files are no one's until their
            // event, and the next start sweeps them.
            let scanned = tokio::select! {
                () = &mut done => return,
                scanned = std::panic::AssertUnwindSafe(self.scan()).catch_unwind() => scanned,
            };
            let scanned =
                scanned.unwrap_or_else(|_| Err(Error::Storage("the billing scan panicked".into())));
            match scanned {
                Err(e) if !failing => {
                    failing = true;
                    tracing::error!(error = %e, "Cannot scan the billing bucket; retrying at the next interval.");
                }
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("Scanning the billing bucket again.");
                }
                _ => {}
            }
        }
    }

    /// Lists the bucket and lands every export not read yet, oldest first.
    pub async fn scan(&self) -> Result<ScanStats> {
        let mut listed = Vec::new();
        let mut listing = self.objects.list(None);
        while let Some(meta) = listing.next().await {
            listed
                .push(meta.map_err(|e| Error::Storage(format!("billing.url: cannot list: {e}")))?);
        }
        let exports = self.exports(listed).await;
        let mut stats = ScanStats::default();
        for export in exports {
            let versions: Vec<ObjectVersion> = export.objects.iter().map(version).collect();
            if self.landing.seen(&export.key, &versions) {
                continue;
            }
            match self.land(&export, versions).await {
                Ok((lines, rejects)) => {
                    stats.exports += 1;
                    stats.objects += export.objects.len();
                    stats.lines += lines;
                    stats.rejects += rejects;
                }
                Err(e) => {
                    stats.failed += 1;
                    self.exports.add(&["failed"], export.objects.len() as u64);
                    tracing::error!(export = %export.key, error = %e, "Cannot read a billing export; reading it again at the next scan.");
                }
            }
        }
        self.status.scanned(self.clock.now_nanos());
        if stats.exports > 0 {
            tracing::info!(
                exports = stats.exports,
                objects = stats.objects,
                lines = stats.lines,
                rejects = stats.rejects,
                "Billing exports landed."
            );
        }
        Ok(stats)
    }

    /// The exports among `listed`: AWS deliveries (the newest per period folder) and every
    /// other data object, oldest first, so a newer export of a bill lands after an older.
    async fn exports(&self, listed: Vec<ObjectMeta>) -> Vec<Export> {
        let by_name: HashMap<&str, Vec<&ObjectMeta>> =
            listed.iter().fold(HashMap::new(), |mut m, o| {
                m.entry(o.location.filename().unwrap_or_default())
                    .or_default()
                    .push(o);
                m
            });
        let listed_versions: std::collections::HashSet<ObjectVersion> =
            listed.iter().map(version).collect();
        self.manifests
            .lock()
            .retain(|v, _| listed_versions.contains(v));
        // The reports that deliver with manifests: their files are read only through one.
        let reports: std::collections::HashSet<String> = listed
            .iter()
            .filter(|o| is_manifest(&o.location))
            .filter_map(|o| delivery_root(o.location.as_ref()))
            .collect();
        let mut named = std::collections::HashSet::new();
        let mut newest: BTreeMap<String, (ObjectMeta, Export)> = BTreeMap::new();
        for meta in listed.iter().filter(|o| is_manifest(&o.location)) {
            let Some(manifest) = self.manifest(meta).await else {
                continue;
            };
            let mut objects = Vec::new();
            let mut missing = None;
            for key in &manifest.keys {
                match resolve(key, &by_name) {
                    Some(o) => {
                        named.insert(o.location.clone());
                        objects.push(o.clone());
                    }
                    None => missing = Some(key.clone()),
                }
            }
            if let Some(key) = missing {
                tracing::info!(manifest = %meta.location, missing = %key, "An AWS delivery is not complete yet; reading it at a later scan.");
                continue;
            }
            let folder = delivery_folder(&manifest, &objects);
            // One export per period folder: a later delivery is a new version of it, and
            // replaces every bill the one before brought.
            let export = Export {
                key: format!("{folder}#delivery"),
                objects,
                folder: folder.clone(),
            };
            let newer = newest.get(&folder).is_none_or(|(m, _)| {
                (meta.last_modified, &meta.location) > (m.last_modified, &m.location)
            });
            if newer {
                newest.insert(folder, (meta.clone(), export));
            }
        }
        let mut exports: Vec<(ObjectMeta, Export)> = newest.into_values().collect();
        exports.extend(
            listed
                .iter()
                .filter(|o| {
                    is_data(&o.location)
                        && !named.contains(&o.location)
                        && !awaits_manifest(o, &reports)
                })
                .map(|o| {
                    let path = o.location.to_string();
                    let folder = path.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
                    (
                        o.clone(),
                        Export {
                            key: path,
                            objects: vec![o.clone()],
                            folder,
                        },
                    )
                }),
        );
        exports.sort_by(|(a, _), (b, _)| {
            (a.last_modified, &a.location).cmp(&(b.last_modified, &b.location))
        });
        exports.into_iter().map(|(_, e)| e).collect()
    }

    /// Reads the AWS manifest `meta`.
    /// The AWS manifest `meta`, read once per version (a bucket keeps every period's
    /// manifests); `None` if it does not read, which is said once per version.
    async fn manifest(&self, meta: &ObjectMeta) -> Option<AwsManifest> {
        let key = version(meta);
        if let Some(m) = self.manifests.lock().get(&key) {
            return m.clone().ok();
        }
        let read = if meta.size > MAX_MANIFEST_BYTES {
            Err(format!(
                "{} bytes (at most {MAX_MANIFEST_BYTES})",
                meta.size
            ))
        } else {
            match self.get(&meta.location).await {
                Ok(bytes) => AwsManifest::parse(&bytes).map_err(|e| e.to_string()),
                // The bucket, not the manifest: asked again next scan.
                Err(e) => {
                    tracing::warn!(manifest = %meta.location, error = %e, "Cannot read an AWS billing manifest; its delivery waits for the next scan.");
                    return None;
                }
            }
        };
        if let Err(e) = &read {
            tracing::warn!(manifest = %meta.location, error = %e, "An AWS billing manifest that does not read; its report files are not read until it changes.");
        }
        self.manifests.lock().insert(key, read.clone());
        read.ok()
    }

    async fn get(&self, path: &Path) -> Result<Bytes> {
        let got = self.objects.get(path).await;
        let result = got.map_err(|e| Error::Storage(format!("{path}: {e}")))?;
        result
            .bytes()
            .await
            .map_err(|e| Error::Storage(format!("{path}: {e}")))
    }

    /// Reads `export` and lands it; returns its lines and rejects.
    async fn land(&self, export: &Export, versions: Vec<ObjectVersion>) -> Result<(u64, u64)> {
        // Dropped (shutdown) mid-read: the reader stops at its next chunk.
        let cancel = Cancel::default();
        let mut sink = Batching::new(
            self.landing.clone(),
            &export.folder,
            &self.config,
            tokio::runtime::Handle::current(),
        );
        sink.stop = cancel.0.clone();
        let mut unreadable: Vec<Reject> = Vec::new();
        for meta in &export.objects {
            let path = meta.location.to_string();
            let defaults = self.defaults(&path);
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
            let fetch = tokio::spawn(fetch(self.objects.clone(), meta.clone(), tx));
            let stop = cancel.0.clone();
            let read = tokio::task::spawn_blocking(move || {
                let reader = ChannelReader {
                    rx,
                    current: Bytes::new(),
                    stop,
                };
                sink.provider_hint = defaults.provider.clone();
                let result = normalize(reader, &path, &defaults, &mut sink);
                (sink, result, path)
            })
            .await
            .map_err(|e| Error::Storage(format!("the billing reader failed: {e}")));
            fetch.abort();
            let (back, result, path) = read?;
            sink = back;
            match result {
                Ok(_) => {}
                // The bucket failed (or the read was stopped): read it all again next scan.
                Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::Other => {
                    self.discard(sink).await;
                    return Err(Error::Storage(format!("{path}: {e}")));
                }
                // The bytes are no export recmeter reads (cut short, not gzip after all, …).
                Err(e) => {
                    tracing::warn!(object = %path, error = %e, "A billing object recmeter cannot read; the bill stays as it was, see cost_rejects.");
                    unreadable.push(CellError::new("", e.to_string(), "").at(&path, 0));
                }
            }
            if let Some(e) = sink.failed.take() {
                self.discard(sink).await;
                return Err(e);
            }
        }
        if !unreadable.is_empty() {
            // A bill is replaced by a whole export or not at all.
            self.discard(sink).await;
            return self.land_unreadable(export, versions, unreadable).await;
        }
        let (commit, lines, rejects, counts) = tokio::task::spawn_blocking(move || sink.finish())
            .await
            .map_err(|e| Error::Storage(format!("the billing reader failed: {e}")))??;
        let commit = Commit {
            export: export.key.clone(),
            versions: versions.clone(),
            ..commit
        };
        let staged: Vec<Staged> = commit
            .bills
            .iter()
            .flat_map(|b| b.files.clone())
            .chain(commit.rejects.clone())
            .collect();
        match self.landing.commit(commit).await {
            Ok(()) => {}
            // Refused before it was logged: the files are no one's.
            Err(e @ Error::Backpressure) => {
                let _ = self.landing.discard(staged).await;
                return Err(e);
            }
            Err(Error::Participant(reason)) => {
                // Too large an event, say: this version can never land; it is recorded as
                // unreadable so that it is not read again until it changes.
                let _ = self.landing.discard(staged).await;
                tracing::warn!(export = %export.key, reason = %reason, "A billing export cannot be landed; the bill stays as it was, see cost_rejects.");
                let rejects = export
                    .objects
                    .iter()
                    .map(|o| {
                        CellError::new("", format!("the export cannot be landed: {reason}"), "")
                            .at(o.location.as_ref(), 0)
                    })
                    .collect();
                return self.land_unreadable(export, versions, rejects).await;
            }
            // Perhaps logged (an fsync that failed, a stop): the files stay for the replay or
            // the next start's sweep.
            Err(e) => return Err(e),
        }
        for ((provider, outcome), n) in counts {
            self.rows.add(&provider, outcome, n);
        }
        self.exports.add(&["ingested"], export.objects.len() as u64);
        Ok((lines, rejects))
    }

    /// Records `export` read from `versions` as unreadable: its rejects (`rejects`) replace
    /// its earlier ones, and every bill stays as it was.
    async fn land_unreadable(
        &self,
        export: &Export,
        versions: Vec<ObjectVersion>,
        rejects: Vec<Reject>,
    ) -> Result<(u64, u64)> {
        let n = rejects.len() as u64;
        let file = self.landing.stage_rejects(rejects).await?;
        let commit = Commit {
            export: export.key.clone(),
            versions,
            bills: Vec::new(),
            rejects: vec![file.clone()],
            keep_bills: true,
        };
        if let Err(e) = self.landing.commit(commit).await {
            if matches!(e, Error::Backpressure | Error::Participant(_)) {
                let _ = self.landing.discard(vec![file]).await;
            }
            return Err(e);
        }
        let provider = export
            .objects
            .first()
            .and_then(|o| self.defaults(o.location.as_ref()).provider)
            .unwrap_or_else(|| "unknown".to_owned());
        let label = if self.rows.known(&provider) {
            provider.as_str()
        } else {
            "unknown"
        };
        self.rows.add(label, "reject", n);
        self.exports.add(&["unreadable"], n);
        Ok((0, n))
    }

    /// Deletes the files an export that failed had written.
    async fn discard(&self, mut sink: Batching) {
        match tokio::task::spawn_blocking(move || sink.staged()).await {
            Ok(staged) => {
                let _ = self.landing.discard(staged).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot list the files of a failed billing export; the next start deletes them.");
            }
        }
    }

    /// The defaults of the longest configured prefix `path` starts with.
    fn defaults(&self, path: &str) -> Defaults {
        self.config
            .defaults
            .iter()
            .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    }
}

/// `recmeter_billing_rows_total{provider,outcome}`, whose `provider` values come from the
/// bills: past [`MAX_PROVIDER_LABELS`] of them, the rest count as `other`.
#[derive(Debug)]
pub struct RowCounter {
    rows: Arc<LabelledCounter>,
    /// The `provider` label values counted so far (at most [`MAX_PROVIDER_LABELS`]).
    providers: parking_lot::Mutex<std::collections::BTreeSet<String>>,
}

impl RowCounter {
    pub fn new(telemetry: &Telemetry) -> Self {
        Self {
            rows: telemetry.labelled_counter(
                "recmeter_billing_rows",
                "Billing rows landed (from the bucket's exports and the Kafka billing topic), \
                 by provider and outcome: line (in cost_lines) or reject (in cost_rejects, \
                 with the reason). A reject's provider is its file's default, or `unknown`.",
                &["provider", "outcome"],
            ),
            providers: parking_lot::Mutex::default(),
        }
    }

    /// Counts `n` rows of `provider` with `outcome` (`line` or `reject`).
    pub fn add(&self, provider: &str, outcome: &str, n: u64) {
        let mut known = self.providers.lock();
        let label = if known.contains(provider) || known.len() < MAX_PROVIDER_LABELS {
            known.insert(provider.to_owned());
            provider
        } else {
            "other"
        };
        self.rows.add(&[label, outcome], n);
    }

    /// Whether `provider` has a label of its own.
    pub fn known(&self, provider: &str) -> bool {
        self.providers.lock().contains(provider)
    }
}

/// An object's version as the ledger keeps it.
fn version(meta: &ObjectMeta) -> ObjectVersion {
    ObjectVersion {
        path: meta.location.to_string(),
        version: meta
            .e_tag
            .clone()
            .or_else(|| meta.version.clone())
            .unwrap_or_default(),
        size: meta.size,
    }
}

/// Whether `path` is an AWS delivery manifest (`<report>-Manifest.json`).
fn is_manifest(path: &Path) -> bool {
    path.filename()
        .is_some_and(|n| n.ends_with("-Manifest.json"))
}

/// Whether `path` may be an export: not a manifest, not one of the artifacts AWS delivers
/// beside its reports (Redshift and Athena files), not hidden.
fn is_data(path: &Path) -> bool {
    let Some(name) = path.filename() else {
        return false;
    };
    let lower = name.to_ascii_lowercase();
    !(name.starts_with('.')
        || lower.ends_with("manifest.json")
        || [".sql", ".yml", ".yaml", ".txt", ".md"]
            .iter()
            .any(|ext| lower.ends_with(ext)))
}

/// The report an object of an AWS delivery's folder belongs to: the path above its legacy
/// CUR period folder (`yyyymmdd-yyyymmdd`), or above the `data/` or `metadata/` folder of a
/// Data Export's `BILLING_PERIOD=…`. `None` for a path in no such folder.
fn delivery_root(path: &str) -> Option<String> {
    let folders: Vec<&str> = path
        .rsplit_once('/')
        .map_or("", |(d, _)| d)
        .split('/')
        .collect();
    folders.iter().enumerate().find_map(|(i, f)| {
        if f.starts_with("BILLING_PERIOD=") {
            Some(folders[..i.saturating_sub(1)].join("/"))
        } else if f.len() == 17
            && f.as_bytes()[8] == b'-'
            && f.bytes()
                .enumerate()
                .all(|(i, b)| i == 8 || b.is_ascii_digit())
        {
            Some(folders[..i].join("/"))
        } else {
            None
        }
    })
}

/// How long a file in an AWS delivery's folder that no manifest names waits for one before it
/// is read on its own (AWS writes the manifest right after the report files; other exports,
/// Azure's, use the same folder names without one).
const MANIFEST_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether `meta`, named by no manifest, waits for one: it lies in an AWS delivery's folder,
/// and its report has manifests or it is younger than [`MANIFEST_WAIT`].
fn awaits_manifest(meta: &ObjectMeta, reports: &std::collections::HashSet<String>) -> bool {
    let Some(root) = delivery_root(meta.location.as_ref()) else {
        return false;
    };
    let age = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::from(meta.last_modified))
        .unwrap_or_default();
    reports.contains(&root) || age < MANIFEST_WAIT
}

/// What recmeter reads of an AWS manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AwsManifest {
    /// `assemblyId` (legacy CUR) or `executionId` (Data Exports): one per delivery.
    assembly: String,
    /// The report files, as the manifest names them (bucket keys or `s3://` URLs).
    keys: Vec<String>,
}

impl AwsManifest {
    fn parse(bytes: &[u8]) -> Result<Self> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            assembly_id: Option<String>,
            execution_id: Option<String>,
            report_keys: Option<Vec<String>>,
            data_files: Option<Vec<String>>,
        }
        let raw: Raw = serde_json::from_slice(bytes)
            .map_err(|e| Error::Storage(format!("not an AWS manifest: {e}")))?;
        let assembly = raw
            .assembly_id
            .or(raw.execution_id)
            .filter(|a| !a.is_empty() && !a.contains(['/', '#']))
            .ok_or_else(|| {
                Error::Storage("not an AWS manifest: no assemblyId or executionId".into())
            })?;
        let mut seen = std::collections::HashSet::new();
        let keys = raw
            .report_keys
            .or(raw.data_files)
            .map(|keys| {
                keys.into_iter()
                    .filter(|k| seen.insert(k.clone()))
                    .collect::<Vec<_>>()
            })
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                Error::Storage("not an AWS manifest: no reportKeys or dataFiles".into())
            })?;
        Ok(Self { assembly, keys })
    }
}

/// The listed object a manifest's `key` names: the one whose path is the key, or its end (the
/// bucket's URL, or a prefix above `billing.url`, left out).
fn resolve<'a>(key: &str, by_name: &HashMap<&str, Vec<&'a ObjectMeta>>) -> Option<&'a ObjectMeta> {
    let key = key
        .strip_prefix("s3://")
        .and_then(|k| k.split_once('/').map(|(_, k)| k))
        .unwrap_or(key);
    let name = key.rsplit('/').next()?;
    by_name.get(name)?.iter().copied().find(|o| {
        let path = o.location.as_ref();
        key == path || key.ends_with(&format!("/{path}"))
    })
}

/// A delivery's period folder: its files' folder, without the assembly folder.
fn delivery_folder(manifest: &AwsManifest, objects: &[ObjectMeta]) -> String {
    let path = objects[0].location.to_string();
    let folder = path.rsplit_once('/').map_or("", |(d, _)| d);
    match folder.rsplit_once('/') {
        Some((up, last)) if last == manifest.assembly => up.to_owned(),
        None if folder == manifest.assembly => String::new(),
        _ => folder.to_owned(),
    }
}

/// Sends `meta`'s bytes to `tx` in ranges of [`READ_RANGE`], each a request of its own that
/// completes at the store's pace (one long stream would be paced by the reader, and time out
/// on a slow one), each asking for the version listed (a changed object fails the read).
async fn fetch(
    objects: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) {
    let mut at = 0;
    while at < meta.size {
        let end = meta.size.min(at + READ_RANGE);
        let options = GetOptions {
            range: Some(GetRange::Bounded(at..end)),
            if_match: meta.e_tag.clone(),
            version: meta.version.clone(),
            ..GetOptions::default()
        };
        let got = match objects.get_opts(&meta.location, options).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        };
        let chunk = match got {
            Ok(b) if !b.is_empty() => Ok(b),
            Ok(_) => Err(std::io::Error::other("the store answered an empty range")),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
        .inspect(|b| at += b.len() as u64);
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// Set when an export's read is abandoned (dropped at shutdown): its reader stops.
#[derive(Debug, Default)]
struct Cancel(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Cancel {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A blocking reader of the chunks an async task sends.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::other("the read was stopped"));
        }
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Lines of one bill identity waiting to be written, and its files so far.
#[derive(Debug, Default)]
struct Pending {
    lines: Vec<CostLine>,
    files: Vec<Staged>,
    data_end: i64,
}

/// A file being encoded and written while the reader goes on: the bill identity it is of
/// (`None` for rejects), its rows, its task.
type Writing = (
    Option<BillIdentity>,
    usize,
    tokio::task::JoinHandle<Result<Staged>>,
);

/// Batches (of `batch_rows`) being written at once at most, beside the one being read: bounds
/// an export's memory.
const WRITING: usize = 2;

/// The sink an export is read into: lines buffered by bill identity and written in batches,
/// rejects likewise, each row counted by provider. Runs on a blocking thread; writes through
/// the runtime `handle`.
struct Batching {
    landing: Arc<dyn Landing>,
    folder: String,
    currencies: Vec<String>,
    batch_rows: usize,
    handle: tokio::runtime::Handle,
    bills: BTreeMap<BillIdentity, Pending>,
    buffered: usize,
    writing: std::collections::VecDeque<Writing>,
    rejects: Vec<Reject>,
    reject_files: Vec<Staged>,
    lines: u64,
    rejected: u64,
    /// Rows by (provider label, outcome).
    counts: BTreeMap<(String, &'static str), u64>,
    /// The provider a reject is counted under: the file's default, if any.
    provider_hint: Option<String>,
    /// The first write that failed; the rest of the export is then skipped.
    failed: Option<Error>,
    /// Set when the read is abandoned (shutdown): the rest is skipped.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Batching {
    fn new(
        landing: Arc<dyn Landing>,
        folder: &str,
        config: &SourceConfig,
        handle: tokio::runtime::Handle,
    ) -> Self {
        Self {
            landing,
            folder: folder.to_owned(),
            currencies: config.currencies.clone(),
            batch_rows: config.batch_rows.max(1),
            handle,
            bills: BTreeMap::new(),
            buffered: 0,
            writing: std::collections::VecDeque::new(),
            rejects: Vec::new(),
            reject_files: Vec::new(),
            lines: 0,
            rejected: 0,
            counts: BTreeMap::new(),
            provider_hint: None,
            failed: None,
            stop: Arc::default(),
        }
    }

    /// Whether the rest of the export is skipped: a write failed, or the read was abandoned.
    fn stopped(&mut self) -> bool {
        if self.failed.is_none() && self.stop.load(std::sync::atomic::Ordering::Relaxed) {
            self.failed = Some(Error::Stopped);
        }
        self.failed.is_some()
    }

    /// Counts a row of `provider`.
    fn count(&mut self, provider: &str, outcome: &'static str) {
        *self
            .counts
            .entry((provider.to_owned(), outcome))
            .or_default() += 1;
    }

    /// Starts writing every buffered line, one file per bill identity.
    fn flush_lines(&mut self) {
        let batches: Vec<(BillIdentity, Vec<CostLine>)> = self
            .bills
            .iter_mut()
            .filter(|(_, p)| !p.lines.is_empty())
            .map(|(identity, p)| (identity.clone(), std::mem::take(&mut p.lines)))
            .collect();
        for (identity, lines) in batches {
            let landing = self.landing.clone();
            let rows = lines.len();
            let task = self
                .handle
                .spawn(async move { landing.stage_lines(lines).await });
            self.start(Some(identity), rows, task);
        }
        self.buffered = 0;
    }

    /// Starts writing the buffered rejects.
    fn flush_rejects(&mut self) {
        if self.rejects.is_empty() {
            return;
        }
        let rejects = std::mem::take(&mut self.rejects);
        let rows = rejects.len();
        let landing = self.landing.clone();
        let task = self
            .handle
            .spawn(async move { landing.stage_rejects(rejects).await });
        self.start(None, rows, task);
    }

    /// Adds a file being written, first waiting for the oldest while too many are.
    fn start(
        &mut self,
        of: Option<BillIdentity>,
        rows: usize,
        task: tokio::task::JoinHandle<Result<Staged>>,
    ) {
        self.writing.push_back((of, rows, task));
        while self.writing.iter().map(|(_, rows, _)| rows).sum::<usize>()
            > WRITING * self.batch_rows
        {
            self.wait_oldest();
        }
    }

    /// Waits for the oldest file being written, and files it with its bill (or the rejects).
    fn wait_oldest(&mut self) {
        let Some((of, _, task)) = self.writing.pop_front() else {
            return;
        };
        let written = self
            .handle
            .block_on(task)
            .unwrap_or_else(|e| Err(Error::Storage(format!("a billing file writer failed: {e}"))));
        match (written, of) {
            (Ok(staged), Some(identity)) => {
                if let Some(p) = self.bills.get_mut(&identity) {
                    p.files.push(staged);
                }
            }
            (Ok(staged), None) => self.reject_files.push(staged),
            (Err(e), _) => {
                if self.failed.is_none() {
                    self.failed = Some(e);
                }
            }
        }
    }

    /// Waits for every file being written.
    fn wait_all(&mut self) {
        while !self.writing.is_empty() {
            self.wait_oldest();
        }
    }

    /// Every file staged so far, once those being written are.
    fn staged(&mut self) -> Vec<Staged> {
        self.wait_all();
        let mut files: Vec<Staged> = self
            .bills
            .values_mut()
            .flat_map(|p| std::mem::take(&mut p.files))
            .collect();
        files.append(&mut self.reject_files);
        files
    }

    /// Writes what is buffered; the commit (export and versions left for the caller), lines,
    /// rejects and row counts.
    #[allow(clippy::type_complexity)]
    fn finish(mut self) -> Result<(Commit, u64, u64, BTreeMap<(String, &'static str), u64>)> {
        self.flush_lines();
        self.flush_rejects();
        self.wait_all();
        if let Some(e) = self.failed.take() {
            let staged = self.staged();
            let _ = self.handle.block_on(self.landing.discard(staged));
            return Err(e);
        }
        let bills = std::mem::take(&mut self.bills)
            .into_iter()
            .filter(|(_, p)| !p.files.is_empty())
            .map(|(identity, p)| StagedBill {
                identity,
                files: p.files,
                data_end: p.data_end,
            })
            .collect();
        let commit = Commit {
            export: String::new(),
            versions: Vec::new(),
            bills,
            rejects: std::mem::take(&mut self.reject_files),
            keep_bills: false,
        };
        Ok((commit, self.lines, self.rejected, self.counts))
    }
}

impl Sink for Batching {
    fn row(&mut self) {}

    fn line(&mut self, line: CostLine) {
        if self.stopped() {
            return;
        }
        let currency = line.billing_currency.as_str();
        if currency != "USD" && !self.currencies.iter().any(|c| c == currency) {
            let reject = CellError::new(
                "BillingCurrency",
                format!("no rate for {currency} in billing.usd_rates"),
                currency,
            )
            .at(&line.source_object, line.source_row);
            self.reject(reject);
            return;
        }
        self.lines += 1;
        let provider = line.provider.clone();
        self.count(&provider, "line");
        let pending = self
            .bills
            .entry(BillIdentity::of(&line, &self.folder))
            .or_insert_with(|| Pending {
                data_end: i64::MIN,
                ..Pending::default()
            });
        pending.data_end = pending.data_end.max(line.charge_period_end);
        pending.lines.push(line);
        self.buffered += 1;
        if self.buffered >= self.batch_rows {
            self.flush_lines();
        }
    }

    fn reject(&mut self, reject: Reject) {
        if self.stopped() {
            return;
        }
        self.rejected += 1;
        let provider = self
            .provider_hint
            .clone()
            .unwrap_or_else(|| "unknown".to_owned());
        self.count(&provider, "reject");
        self.rejects.push(reject);
        if self.rejects.len() >= self.batch_rows {
            self.flush_rejects();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_read_both_aws_forms_and_refuse_the_rest() {
        let legacy =
            br#"{"assemblyId":"a1b2","reportKeys":["cur/r/20240101-20240201/a1b2/r-1.csv.gz"],
            "billingPeriod":{"start":"20240101T000000.000Z"}}"#;
        let m = AwsManifest::parse(legacy).unwrap();
        assert_eq!(m.assembly, "a1b2");
        let exports = br#"{"executionId":"e9","dataFiles":["s3://bucket/x/data/BILLING_PERIOD=2024-01/x-00001.csv.gz"]}"#;
        assert_eq!(AwsManifest::parse(exports).unwrap().assembly, "e9");
        for bad in [
            &br#"{"reportKeys":["a"]}"#[..],
            br#"{"assemblyId":"a","reportKeys":[]}"#,
            br#"{"assemblyId":"../a","reportKeys":["k"]}"#,
            br#"[1]"#,
        ] {
            assert!(AwsManifest::parse(bad).is_err());
        }
        // A key named twice is read once.
        let twice = br#"{"assemblyId":"a","reportKeys":["k1","k2","k1"]}"#;
        assert_eq!(AwsManifest::parse(twice).unwrap().keys, ["k1", "k2"]);
    }

    fn meta(path: &str) -> ObjectMeta {
        ObjectMeta {
            location: Path::from(path),
            last_modified: Default::default(),
            size: 1,
            e_tag: None,
            version: None,
        }
    }

    #[test]
    fn keys_resolve_by_their_end_and_folders_drop_the_assembly() {
        let listed = [
            meta("r/20240101-20240201/a1/r-1.csv.gz"),
            meta("other/r-1.csv.gz"),
        ];
        let by_name: HashMap<&str, Vec<&ObjectMeta>> =
            listed.iter().fold(HashMap::new(), |mut m, o| {
                m.entry(o.location.filename().unwrap()).or_default().push(o);
                m
            });
        for key in [
            "r/20240101-20240201/a1/r-1.csv.gz",
            "prefix/r/20240101-20240201/a1/r-1.csv.gz",
            "s3://bucket/prefix/r/20240101-20240201/a1/r-1.csv.gz",
        ] {
            assert_eq!(
                resolve(key, &by_name)
                    .map(|o| o.location.to_string())
                    .as_deref(),
                Some("r/20240101-20240201/a1/r-1.csv.gz"),
                "{key}"
            );
        }
        assert!(resolve("xr/20240101-20240201/a1/r-1.csv.gz", &by_name).is_none());
        let manifest = AwsManifest {
            assembly: "a1".into(),
            keys: vec![],
        };
        assert_eq!(
            delivery_folder(&manifest, &listed[..1]),
            "r/20240101-20240201"
        );
        assert!(is_manifest(&Path::from(
            "r/20240101-20240201/r-Manifest.json"
        )));
        assert!(!is_data(&Path::from(
            "r/20240101-20240201/r-RedshiftManifest.json"
        )));
        assert!(!is_data(&Path::from("r/x/r-create-table.sql")));
        assert!(is_data(&Path::from("focus/2024-01.csv.gz")));
        // A report file whose manifest has not come yet waits for it: always where its
        // report has manifests, else for an hour.
        assert_eq!(
            delivery_root("cur/r/20240101-20240201/a1/r-1.csv.gz").as_deref(),
            Some("cur/r")
        );
        assert_eq!(
            delivery_root("cur/r/20240101-20240201/r-Manifest.json").as_deref(),
            Some("cur/r")
        );
        assert_eq!(
            delivery_root("x/data/BILLING_PERIOD=2024-01/x-00001.csv.gz").as_deref(),
            Some("x")
        );
        assert_eq!(
            delivery_root("x/metadata/BILLING_PERIOD=2024-01/x-Manifest.json").as_deref(),
            Some("x")
        );
        assert_eq!(delivery_root("focus/20240101-20240201.csv"), None);
        assert_eq!(delivery_root("focus/2024010-120240201/a.csv"), None);
        let reports: std::collections::HashSet<String> = ["cur/r".to_owned()].into();
        let hours_ago =
            |h: u64| std::time::SystemTime::now() - std::time::Duration::from_secs(h * 3600);
        let mut azure = meta("azure/focus/20240101-20240131/202402011200/guid/part_0_0001.csv");
        azure.last_modified = hours_ago(0).into();
        assert!(awaits_manifest(&azure, &reports), "younger than an hour");
        azure.last_modified = hours_ago(2).into();
        assert!(!awaits_manifest(&azure, &reports));
        let mut aws = meta("cur/r/20240101-20240201/a2/r-1.csv.gz");
        aws.last_modified = hours_ago(2).into();
        assert!(awaits_manifest(&aws, &reports));
    }
}
