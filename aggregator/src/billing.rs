//! The billing ledger: which exports of the billing bucket were read (each object version
//! once), and the store files that hold their cost lines and rejects, by bill identity. It is
//! a checkpoint participant that owns two `kept` sections of the manifest, `cost_lines` and
//! `cost_rejects`, which SQL reads through the catalog.
//!
//! An export is landed in two steps ([`StoreLanding`]): its files are written and made
//! durable first, under the cost prefixes, named by no manifest yet; then one logged event
//! ([`Ingested`]) puts them in force. Applying it replaces, for each bill identity in the
//! export, every earlier file of that identity, and the export's earlier rejects: a restated
//! bill replaces the old one, never adds to it. A crash before the event leaves the old lines
//! (the new files are swept at the next start); after it, the replay puts the new ones in
//! force. The next checkpoint's manifest names the files, in one swap.
//!
//! Cost lines from a Kafka topic are appended instead ([`Landing::append`]): their files are
//! staged the same way, then an unlogged event adds them to their bills (whose folder is
//! `kafka://<topic>`, which no bucket path has, so no export restates them) in the same step
//! as the aggregator notes the topic's position. Kafka is their log: a checkpoint holds the
//! ledger and the position together, and a start reads the topic again from there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::Nudge;
use crate::cost::{
    Append, BillIdentity, Commit, CostLine, Landed, Landing, ObjectVersion, Reject, Staged,
    StagedBill,
};
use crate::error::{Error, Result, clip};
use crate::hooks::{Hook, Hooks};
use crate::participant::{Event, OwnedSection, Participant};
use crate::service::AggregatorHandle;
use crate::sql::catalog::{CatalogTable, Source};
use crate::store::cost::{
    cost_lines_batch, cost_lines_schema, cost_rejects_batch, cost_rejects_schema,
};
use crate::store::files::{parquet, storage};
use crate::store::history::History;
use crate::store::manifest::{FileEntry, FileKind};
use crate::store::object::Store;
use crate::store::paths::{COST_LINES_PREFIX, COST_REJECTS_PREFIX, cost_path};
use crate::submit::Answer;

/// The ledger's name: its events' component and its state section.
pub const LEDGER: &str = "billing";
/// The manifest section of the cost lines' files, and the SQL table over them.
pub const LINES_SECTION: &str = "cost_lines";
/// The manifest section of the rejects' files, and the SQL table over them.
pub const REJECTS_SECTION: &str = "cost_rejects";

/// One bill identity's lines in force: the export they came from and their files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Bill {
    identity: BillIdentity,
    export: String,
    files: Vec<FileEntry>,
    /// The latest charge period end among its lines, Unix nanoseconds.
    data_end: i64,
}

/// The ledger's state, as saved in each checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Every export read, with the object versions it was read from.
    exports: BTreeMap<String, Vec<ObjectVersion>>,
    /// The bills in force, by identity.
    bills: Vec<Bill>,
    /// Each export's rejects.
    rejects: BTreeMap<String, Vec<FileEntry>>,
    /// The number the next export's files are named with.
    next_export: u64,
}

/// The event that puts one export in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ingested {
    /// The export's number, which its files are named with.
    number: u64,
    export: String,
    versions: Vec<ObjectVersion>,
    bills: Vec<IngestedBill>,
    rejects: Vec<FileEntry>,
    /// An export not read whole: the bills in force stay as they are.
    #[serde(default)]
    keep_bills: bool,
    /// Lines of a stream with a log of its own (a Kafka topic; `export` names the stream):
    /// added to their bills, replacing nothing. Never logged: a checkpoint holds them with
    /// the stream's position.
    #[serde(default)]
    append: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IngestedBill {
    identity: BillIdentity,
    files: Vec<FileEntry>,
    data_end: i64,
}

impl Ingested {
    /// The number past every file it names: a file's name starts with the number the ledger
    /// held when it was staged, which a rewind can take back below it, so the next export's
    /// files never take a name in force (`cost_path`).
    fn next_number(&self) -> u64 {
        let named = self
            .bills
            .iter()
            .flat_map(|b| &b.files)
            .chain(&self.rejects)
            .filter_map(|f| {
                let name = f.path.rsplit('/').next()?;
                name.split('-').next()?.parse::<u64>().ok()
            })
            .max();
        self.number.max(named.unwrap_or(0)).saturating_add(1)
    }

    fn parse(event: &[u8]) -> Result<Self> {
        let ingested: Self = serde_json::from_slice(event)
            .map_err(|e| Error::Participant(format!("a {LEDGER} event that does not read: {e}")))?;
        // Every file must be one the ledger may own: the sweep and the deletion of replaced
        // files reach exactly these prefixes.
        let files = ingested
            .bills
            .iter()
            .flat_map(|b| b.files.iter().map(|f| (f, COST_LINES_PREFIX)))
            .chain(ingested.rejects.iter().map(|f| (f, COST_REJECTS_PREFIX)));
        for (file, prefix) in files {
            let name = file
                .path
                .strip_prefix(prefix)
                .and_then(|p| p.strip_prefix('/'));
            if name.is_none_or(|n| n.is_empty() || n.contains('/') || n.contains("..")) {
                return Err(Error::Participant(format!(
                    "a {LEDGER} event names the file {:?}, not one of {prefix}/",
                    clip(&file.path, 128)
                )));
            }
        }
        Ok(ingested)
    }
}

/// The billing ledger (see the module's documentation).
#[derive(Debug, Default)]
pub struct BillingLedger {
    state: Mutex<State>,
    /// Moves on with every change of the lines in force.
    generation: AtomicU64,
    /// Woken at every change (the cost evaluation).
    watchers: Mutex<Vec<Nudge>>,
}

impl BillingLedger {
    /// The files in force of `section` (`cost_lines` or `cost_rejects`).
    pub fn files(&self, section: &str) -> Vec<FileEntry> {
        let state = self.state.lock();
        match section {
            LINES_SECTION => state.bills.iter().flat_map(|b| b.files.clone()).collect(),
            REJECTS_SECTION => state.rejects.values().flatten().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// The latest charge period end of the lines in force, by provider, Unix nanoseconds.
    pub fn data_end(&self) -> BTreeMap<String, i64> {
        let mut ends = BTreeMap::new();
        for b in &self.state.lock().bills {
            let end = ends.entry(b.identity.provider.clone()).or_insert(i64::MIN);
            *end = (*end).max(b.data_end);
        }
        ends
    }

    /// Whether `export` was read from exactly `versions`.
    pub fn seen(&self, export: &str, versions: &[ObjectVersion]) -> bool {
        self.state
            .lock()
            .exports
            .get(export)
            .is_some_and(|v| v == versions)
    }

    /// A number that moves on with every change of the lines in force: a reader that saw
    /// the same number saw the same lines.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Wakes `nudge`'s task at every change of the lines in force.
    pub fn watch(&self, nudge: Nudge) {
        self.watchers.lock().push(nudge);
    }

    /// Moves the generation on and wakes the watchers.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for w in self.watchers.lock().iter() {
            w.nudge();
        }
    }

    /// The number the next export's files are named with.
    fn next_export(&self) -> u64 {
        self.state.lock().next_export
    }
}

impl Participant for BillingLedger {
    fn name(&self) -> &'static str {
        LEDGER
    }

    fn check(&self, event: &[u8]) -> Result<()> {
        Ingested::parse(event).map(drop)
    }

    fn apply(&self, event: &[u8]) -> Result<()> {
        let ingested = Ingested::parse(event)?;
        let next = ingested.next_number();
        let mut state = self.state.lock();
        if ingested.append {
            append(&mut state, ingested);
            state.next_export = state.next_export.max(next);
            drop(state);
            self.changed();
            return Ok(());
        }
        // The export's own earlier bills go, and so does every earlier bill of an identity it
        // brings: a restatement replaces. An export not read whole replaces nothing.
        if !ingested.keep_bills {
            state.bills.retain(|b| {
                b.export != ingested.export
                    && !ingested.bills.iter().any(|n| n.identity == b.identity)
            });
        }
        for bill in ingested.bills {
            state.bills.push(Bill {
                identity: bill.identity,
                export: ingested.export.clone(),
                files: bill.files,
                data_end: bill.data_end,
            });
        }
        state.bills.sort_by(|a, b| a.identity.cmp(&b.identity));
        if ingested.keep_bills {
            // The bills in force keep their rejects; the version not read adds its own.
            state
                .rejects
                .entry(ingested.export.clone())
                .or_default()
                .extend(ingested.rejects);
        } else if ingested.rejects.is_empty() {
            state.rejects.remove(&ingested.export);
        } else {
            state
                .rejects
                .insert(ingested.export.clone(), ingested.rejects);
        }
        state.exports.insert(ingested.export, ingested.versions);
        state.next_export = state.next_export.max(next);
        drop(state);
        self.changed();
        Ok(())
    }

    fn save(&self) -> Result<serde_json::Value> {
        serde_json::to_value(&*self.state.lock())
            .map_err(|e| Error::Storage(format!("cannot save the {LEDGER} ledger: {e}")))
    }

    fn restore(&self, saved: serde_json::Value) -> Result<()> {
        let state: State = serde_json::from_value(saved)
            .map_err(|e| Error::Storage(format!("{LEDGER}: not a saved ledger: {e}")))?;
        *self.state.lock() = state;
        self.changed();
        Ok(())
    }

    fn sections(&self) -> Vec<OwnedSection> {
        vec![
            OwnedSection {
                name: LINES_SECTION,
                prefix: COST_LINES_PREFIX,
                files: self.files(LINES_SECTION),
            },
            OwnedSection {
                name: REJECTS_SECTION,
                prefix: COST_REJECTS_PREFIX,
                files: self.files(REJECTS_SECTION),
            },
        ]
    }
}

/// Adds a stream's lines to its bills (one per identity) and its rejects to the stream's; the
/// caller moves `next_export` on.
fn append(state: &mut State, ingested: Ingested) {
    for bill in ingested.bills {
        let held = state
            .bills
            .iter_mut()
            .find(|b| b.export == ingested.export && b.identity == bill.identity);
        match held {
            Some(held) => {
                held.files.extend(bill.files);
                held.data_end = held.data_end.max(bill.data_end);
            }
            None => state.bills.push(Bill {
                identity: bill.identity,
                export: ingested.export.clone(),
                files: bill.files,
                data_end: bill.data_end,
            }),
        }
    }
    state.bills.sort_by(|a, b| a.identity.cmp(&b.identity));
    if !ingested.rejects.is_empty() {
        state
            .rejects
            .entry(ingested.export)
            .or_default()
            .extend(ingested.rejects);
    }
}

/// Lands exports in the store through the ledger: files first, then the event.
#[derive(Debug)]
pub struct StoreLanding {
    store: Store,
    aggregator: AggregatorHandle,
    ledger: Arc<BillingLedger>,
    hooks: Arc<Hooks>,
    /// Files written by this process, so that names never repeat within it.
    written: AtomicU64,
}

impl StoreLanding {
    /// Lands into `store` (the aggregator's) through `ledger`, registered with `aggregator`.
    pub fn new(
        store: Store,
        aggregator: AggregatorHandle,
        ledger: Arc<BillingLedger>,
        hooks: Arc<Hooks>,
    ) -> Self {
        Self {
            store,
            aggregator,
            ledger,
            hooks,
            written: AtomicU64::new(0),
        }
    }

    /// Writes `bytes` as the next file under `prefix` and makes it durable.
    async fn stage(
        &self,
        prefix: &str,
        kind: &str,
        rows: u64,
        bytes: bytes::Bytes,
    ) -> Result<Staged> {
        let n = self.written.fetch_add(1, Ordering::Relaxed);
        let path = cost_path(prefix, self.ledger.next_export(), n);
        let size = bytes.len() as u64;
        let location = Path::from(path.as_str());
        self.store
            .objects
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|e| storage(&location, e))?;
        self.store.sync(vec![path.clone()]).await?;
        tracing::debug!(file = %path, rows, kind, "Staged billing file.");
        Ok(Staged {
            path,
            rows,
            bytes: size,
        })
    }
}

/// Runs `encoding` (Arrow, then Parquet) on a blocking thread.
async fn encode(
    encoding: impl FnOnce() -> Result<bytes::Bytes> + Send + 'static,
) -> Result<bytes::Bytes> {
    tokio::task::spawn_blocking(encoding)
        .await
        .map_err(|e| Error::Storage(format!("the cost file encoder failed: {e}")))?
}

/// The bills of an event, their staged files as manifest entries.
fn ingested_bills(bills: Vec<StagedBill>) -> Vec<IngestedBill> {
    bills
        .into_iter()
        .map(|b| IngestedBill {
            identity: b.identity,
            files: b
                .files
                .into_iter()
                .map(|f| entry(f, LINES_SECTION))
                .collect(),
            data_end: b.data_end,
        })
        .collect()
}

/// Staged reject files as manifest entries.
fn rejects_entries(rejects: Vec<Staged>) -> Vec<FileEntry> {
    rejects
        .into_iter()
        .map(|f| entry(f, REJECTS_SECTION))
        .collect()
}

/// The manifest entry of a staged file.
fn entry(staged: Staged, kind: &str) -> FileEntry {
    FileEntry {
        path: staged.path,
        kind: FileKind::Other(kind.to_owned()),
        rows: staged.rows,
        bytes: staged.bytes,
        requests: 0,
        first_minute: 0,
        last_minute: 0,
        row_format: None,
    }
}

impl Landing for StoreLanding {
    fn seen(&self, export: &str, versions: &[ObjectVersion]) -> bool {
        self.ledger.seen(export, versions)
    }

    fn stage_lines(&self, lines: Vec<CostLine>) -> Landed<'_, Staged> {
        let rows = lines.len() as u64;
        Box::pin(async move {
            let encoded =
                encode(move || cost_lines_batch(&lines).and_then(|b| parquet(&b))).await?;
            self.stage(COST_LINES_PREFIX, LINES_SECTION, rows, encoded)
                .await
        })
    }

    fn stage_rejects(&self, rejects: Vec<Reject>) -> Landed<'_, Staged> {
        let rows = rejects.len() as u64;
        Box::pin(async move {
            let encoded =
                encode(move || cost_rejects_batch(&rejects).and_then(|b| parquet(&b))).await?;
            self.stage(COST_REJECTS_PREFIX, REJECTS_SECTION, rows, encoded)
                .await
        })
    }

    fn commit(&self, commit: Commit) -> Landed<'_, ()> {
        Box::pin(async move {
            let ingested = Ingested {
                number: self.ledger.next_export(),
                export: commit.export,
                versions: commit.versions,
                bills: ingested_bills(commit.bills),
                rejects: rejects_entries(commit.rejects),
                keep_bills: commit.keep_bills,
                append: false,
            };
            let payload = serde_json::to_vec(&ingested)
                .map_err(|e| Error::Storage(format!("cannot encode a {LEDGER} event: {e}")))?;
            if self.hooks.is_on(Hook::HoldBillingCommit) {
                tracing::warn!(
                    export = %ingested.export,
                    "Test hook hold_billing_commit: the export's files are written; holding its commit."
                );
                self.hooks.released(Hook::HoldBillingCommit).await;
            }
            self.aggregator
                .log_event(Event {
                    component: LEDGER.to_owned(),
                    payload,
                })
                .await
        })
    }

    fn append(&self, append: Append) -> Result<Answer> {
        let ingested = Ingested {
            number: self.ledger.next_export(),
            export: append.stream,
            versions: Vec::new(),
            bills: ingested_bills(append.bills),
            rejects: rejects_entries(append.rejects),
            keep_bills: false,
            append: true,
        };
        let payload = serde_json::to_vec(&ingested)
            .map_err(|e| Error::Storage(format!("cannot encode a {LEDGER} event: {e}")))?;
        self.aggregator.queue_event(
            Event {
                component: LEDGER.to_owned(),
                payload,
            },
            append.position,
        )
    }

    fn discard(&self, files: Vec<Staged>) -> Landed<'_, ()> {
        Box::pin(async move {
            for f in files {
                let path = Path::from(f.path.as_str());
                if let Err(e) = self.store.objects.delete(&path).await {
                    tracing::warn!(error = %e, file = %path, "Cannot delete a staged billing file; the next start will.");
                }
            }
            Ok(())
        })
    }
}

/// `cost_lines` or `cost_rejects`: the ledger's files in force, read from the store.
#[derive(Debug)]
pub struct CostTable {
    section: &'static str,
    ledger: Arc<BillingLedger>,
}

impl CostTable {
    /// The two tables over `ledger`'s files.
    pub fn both(ledger: &Arc<BillingLedger>) -> [Arc<dyn CatalogTable>; 2] {
        [LINES_SECTION, REJECTS_SECTION].map(|section| {
            Arc::new(Self {
                section,
                ledger: ledger.clone(),
            }) as Arc<dyn CatalogTable>
        })
    }
}

impl CatalogTable for CostTable {
    fn name(&self) -> &str {
        self.section
    }

    fn source(&self) -> Source {
        Source::History
    }

    fn provider(&self, history: Option<&Arc<History>>) -> Arc<dyn TableProvider> {
        let schema = match self.section {
            LINES_SECTION => cost_lines_schema(),
            _ => cost_rejects_schema(),
        };
        Arc::new(FilesTable {
            schema,
            // The files as of this session: a restatement landing meanwhile replaces them
            // for later sessions, and the replaced files stay for `retention.delete_delay`.
            files: history.map_or_else(Vec::new, |_| self.ledger.files(self.section)),
            history: history.cloned(),
        })
    }
}

/// A table over whole Parquet files of the store.
#[derive(Debug)]
struct FilesTable {
    schema: SchemaRef,
    files: Vec<FileEntry>,
    history: Option<Arc<History>>,
}

#[async_trait::async_trait]
impl TableProvider for FilesTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match &self.history {
            Some(history) if !self.files.is_empty() => {
                history.scan_files(state, &self.schema, projection, self.files.clone())
            }
            _ => {
                let schema = match projection {
                    Some(p) => Arc::new(self.schema.project(p)?),
                    None => self.schema.clone(),
                };
                Ok(Arc::new(EmptyExec::new(schema)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> FileEntry {
        entry(
            Staged {
                path: path.into(),
                rows: 3,
                bytes: 100,
            },
            LINES_SECTION,
        )
    }

    fn identity(account: &str) -> BillIdentity {
        BillIdentity {
            provider: "AWS".into(),
            billing_account_id: account.into(),
            billing_period_start: Some(0),
            prefix: "cur/report/20240101-20240201".into(),
        }
    }

    fn event(number: u64, export: &str, bills: &[(&str, &str)], rejects: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&Ingested {
            number,
            export: export.into(),
            versions: vec![ObjectVersion {
                path: export.into(),
                version: format!("etag-{number}"),
                size: 10,
            }],
            bills: bills
                .iter()
                .map(|(account, path)| IngestedBill {
                    identity: identity(account),
                    files: vec![file(path)],
                    data_end: 5,
                })
                .collect(),
            rejects: rejects.iter().map(|p| file(p)).collect(),
            keep_bills: false,
            append: false,
        })
        .unwrap()
    }

    #[test]
    fn a_restatement_replaces_its_identities_and_nothing_else() {
        let ledger = BillingLedger::default();
        ledger
            .apply(&event(
                0,
                "a.csv",
                &[
                    ("1", "cost_lines/0-0.parquet"),
                    ("2", "cost_lines/0-1.parquet"),
                ],
                &["cost_rejects/0-2.parquet"],
            ))
            .unwrap();
        // Another export restates account 1 only.
        ledger
            .apply(&event(1, "b.csv", &[("1", "cost_lines/1-0.parquet")], &[]))
            .unwrap();
        let paths = |s| -> Vec<String> { ledger.files(s).into_iter().map(|f| f.path).collect() };
        assert_eq!(
            paths(LINES_SECTION),
            ["cost_lines/1-0.parquet", "cost_lines/0-1.parquet"]
        );
        assert_eq!(paths(REJECTS_SECTION), ["cost_rejects/0-2.parquet"]);
        // a.csv restated without account 2 and without rejects: its own bills and rejects go.
        ledger
            .apply(&event(2, "a.csv", &[("3", "cost_lines/2-0.parquet")], &[]))
            .unwrap();
        assert_eq!(
            paths(LINES_SECTION),
            ["cost_lines/1-0.parquet", "cost_lines/2-0.parquet"]
        );
        assert!(paths(REJECTS_SECTION).is_empty());
        assert_eq!(ledger.next_export(), 3);
        // An unreadable version of a.csv: recorded with its reject, every bill kept.
        let mut unreadable: Ingested =
            serde_json::from_slice(&event(3, "a.csv", &[], &["cost_rejects/3-0.parquet"])).unwrap();
        unreadable.keep_bills = true;
        ledger
            .apply(&serde_json::to_vec(&unreadable).unwrap())
            .unwrap();
        assert_eq!(
            paths(LINES_SECTION),
            ["cost_lines/1-0.parquet", "cost_lines/2-0.parquet"]
        );
        assert_eq!(paths(REJECTS_SECTION), ["cost_rejects/3-0.parquet"]);
        // The rejects of a bill in force stay beside the unreadable version's.
        ledger
            .apply(&event(
                4,
                "c.csv",
                &[("4", "cost_lines/4-0.parquet")],
                &["cost_rejects/4-1.parquet"],
            ))
            .unwrap();
        let mut bad: Ingested =
            serde_json::from_slice(&event(5, "c.csv", &[], &["cost_rejects/5-0.parquet"])).unwrap();
        bad.keep_bills = true;
        ledger.apply(&serde_json::to_vec(&bad).unwrap()).unwrap();
        assert_eq!(
            paths(REJECTS_SECTION),
            [
                "cost_rejects/3-0.parquet",
                "cost_rejects/4-1.parquet",
                "cost_rejects/5-0.parquet"
            ]
        );
        assert!(ledger.seen(
            "a.csv",
            &[ObjectVersion {
                path: "a.csv".into(),
                version: "etag-3".into(),
                size: 10,
            }]
        ));
        let versions = |n: u64| {
            vec![ObjectVersion {
                path: "a.csv".into(),
                version: format!("etag-{n}"),
                size: 10,
            }]
        };
        assert!(!ledger.seen("a.csv", &versions(2)));
        assert!(!ledger.seen("a.csv", &versions(0)));
        // Saved and restored whole.
        let copy = BillingLedger::default();
        copy.restore(ledger.save().unwrap()).unwrap();
        assert_eq!(copy.sections(), ledger.sections());
        assert_eq!(copy.data_end()["AWS"], 5);
    }

    #[test]
    fn a_stream_appends_to_its_bills_and_no_export_replaces_them() {
        let ledger = BillingLedger::default();
        let kafka = BillIdentity {
            prefix: "kafka://recs-billing".into(),
            ..identity("1")
        };
        let appended = |number: u64, path: &str, reject: Option<&str>, data_end: i64| {
            serde_json::to_vec(&Ingested {
                number,
                export: "kafka://recs-billing".into(),
                versions: Vec::new(),
                bills: vec![IngestedBill {
                    identity: kafka.clone(),
                    files: vec![file(path)],
                    data_end,
                }],
                rejects: reject.into_iter().map(file).collect(),
                keep_bills: false,
                append: true,
            })
            .unwrap()
        };
        ledger
            .apply(&appended(0, "cost_lines/0-0.parquet", None, 7))
            .unwrap();
        ledger
            .apply(&event(1, "a.csv", &[("1", "cost_lines/1-0.parquet")], &[]))
            .unwrap();
        ledger
            .apply(&appended(
                2,
                "cost_lines/2-0.parquet",
                Some("cost_rejects/2-1.parquet"),
                6,
            ))
            .unwrap();
        // A restatement of the same account from the bucket replaces the bucket's lines only.
        ledger
            .apply(&event(3, "a.csv", &[("1", "cost_lines/3-0.parquet")], &[]))
            .unwrap();
        let paths = |s| -> Vec<String> { ledger.files(s).into_iter().map(|f| f.path).collect() };
        assert_eq!(
            paths(LINES_SECTION),
            [
                "cost_lines/3-0.parquet",
                "cost_lines/0-0.parquet",
                "cost_lines/2-0.parquet"
            ]
        );
        assert_eq!(paths(REJECTS_SECTION), ["cost_rejects/2-1.parquet"]);
        assert_eq!(ledger.next_export(), 4);
        assert_eq!(ledger.data_end()["AWS"], 7);
        // A file staged under a later number than its event's (a rewind took the ledger's
        // back meanwhile): the next files are named past it.
        ledger
            .apply(&appended(
                4,
                "cost_lines/00000000000000000009-000003.parquet",
                None,
                7,
            ))
            .unwrap();
        assert_eq!(ledger.next_export(), 10);
        assert!(!ledger.seen("kafka://recs-billing", &[]));
    }

    #[test]
    fn events_naming_files_elsewhere_are_refused() {
        let ledger = BillingLedger::default();
        for bad in [
            "state/00000000000000000001-series.parquet",
            "cost_lines/../manifests/x.json",
            "cost_lines/",
            "cost_lines/a/b.parquet",
            "cost_linesx/a.parquet",
        ] {
            let e = ledger
                .check(&event(0, "a.csv", &[("1", bad)], &[]))
                .unwrap_err();
            assert!(
                e.to_string().contains("not one of cost_lines/"),
                "{bad}: {e}"
            );
        }
        assert!(ledger.check(b"{").is_err());
        assert!(ledger.files(LINES_SECTION).is_empty());
    }
}
