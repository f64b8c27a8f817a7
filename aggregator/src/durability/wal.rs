//! The write-ahead log: each accepted OTLP request's decoded records, framed with a sequence
//! number and a CRC, appended to segment files in `wal.dir` by one writer thread that batches
//! fsyncs (group commit). A request is answered only after its frame is fsynced; a checkpoint
//! that covers a sequence number lets the segments at or before it go.
//!
//! Frame: `len: u32 LE` with its top bit set (a tagged entry), `crc32(payload): u32 LE`,
//! payload = `kind: u8`, `version: u8` (the entry kind's format version), `seq: u64 LE`, then
//! the kind's body:
//! - kind 1, request records (version 1): `checked_at: u64 LE` (the clock reading the age
//!   checks use, so replay decides the same), then the records with their series keys
//!   interned once per frame (LEB128 varints), then, when the request carried metric points,
//!   the points;
//! - kind 2, a component event (version 1): the component's name and the event's bytes, each
//!   after its length (varint), replayed to the checkpoint participant of that name.
//!
//! Frames written before entries had kinds have the top bit of `len` clear and no kind or
//! version: their payload is `seq` and a kind 1 body, and they still replay. A frame of a kind
//! or version this recmeter does not know refuses the start, naming both.
//! A frame cut short or failing its CRC ends its segment: only the tail of the last segment
//! can be torn, and nothing there was acknowledged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::batch::Batch;
use crate::error::{Error, Result};
use crate::hooks::{Hook, Hooks};
use crate::metrics::{Dense, MetricPoint, PointValue};
use crate::participant::{Event, MAX_EVENT_BYTES};
use crate::record::{RequestRecord, SeriesKey};
use crate::submit::Arriving;
use crate::telemetry::Telemetry;

/// Largest frame payload read back; anything larger is a torn or foreign file.
const MAX_FRAME: usize = 1 << 30;

/// Name of the lock file inside the WAL directory.
const LOCK_FILE: &str = "LOCK";

/// Written, synced and removed to find out whether a failing disk takes writes again.
const PROBE_FILE: &str = "probe";

/// How often that is tried while writes fail.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What the `fail_wal_writes` test hook makes every WAL write return.
fn full_disk_hook() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::StorageFull,
        "No space left on device (test hook fail_wal_writes)",
    )
}

/// Segment file suffix; the stem is the first sequence number, zero-padded.
const SEGMENT_SUFFIX: &str = ".wal";

/// Set in the length word of a tagged frame (one with a kind and a version). Frame lengths
/// never reach it (`MAX_FRAME`), so frames from before entry kinds have it clear.
const TAGGED: u32 = 1 << 31;

/// Entry kind: one request's records and metric points.
const KIND_RECORDS: u8 = 1;
/// Format version of kind 1 entries this recmeter writes and reads.
const RECORDS_VERSION: u8 = 1;
/// Entry kind: a component event, for a checkpoint participant.
const KIND_EVENT: u8 = 2;
/// Format version of kind 2 entries this recmeter writes and reads.
const EVENT_VERSION: u8 = 1;

/// One logged entry: a request's records and points, or a component event.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    /// Clock reading (Unix nanoseconds) the age and skew checks use (0 for an event).
    pub checked_at: u64,
    pub records: Vec<RequestRecord>,
    pub points: Vec<MetricPoint>,
    /// A component event's entry holds this, and no records or points.
    pub event: Option<Event>,
}

/// What is logged: a request's batch, or a component event.
#[derive(Debug)]
pub enum Logged {
    Batch {
        batch: Batch,
        /// The clock reading the age checks use.
        checked_at: u64,
    },
    Event(Event),
}

/// What a replay read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Entries handed over (after the checkpoint's sequence number).
    pub entries: u64,
    /// Records in them.
    pub records: u64,
    /// Metric points in them.
    pub points: u64,
    /// The highest sequence number found, handed over or not.
    pub last_seq: u64,
    /// Segments whose tail was torn (a crash during a write).
    pub torn: u64,
    /// Frames after a corruption, dropped by `--wal-truncate-at-corruption` (those a
    /// checkpoint already covers not counted).
    pub dropped_frames: u64,
    /// Records and metric points in them.
    pub dropped_records: u64,
}

/// Valid frames found after a bad one.
#[derive(Debug, Default, Clone, Copy)]
struct Dropped {
    /// Every valid frame found.
    found: u64,
    /// Those after the checkpoint's sequence number, and their records and points.
    frames: u64,
    records: u64,
}

impl Dropped {
    fn add(&mut self, other: Dropped) {
        self.found += other.found;
        self.frames += other.frames;
        self.records += other.records;
    }
}

/// Cuts the segment at `path` back to `offset` bytes, durably.
fn cut(path: &Path, offset: u64) -> Result<()> {
    let io = |e: std::io::Error| Error::Wal(format!("{}: {e}", path.display()));
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    file.set_len(offset).map_err(io)?;
    file.sync_all().map_err(io)
}

/// Where to look for valid frames in a segment.
#[derive(Debug, Clone, Copy)]
enum From {
    /// Every frame of a segment after the one with a bad frame.
    Start,
    /// After a bad frame at this byte, the last good sequence number before it being this.
    Bad { offset: u64, previous: u64 },
}

/// The valid frames of the segment at `path` from `from`, with sequence numbers above `after`
/// counted. A valid frame is found again by its sequence number: the first frame after a bad
/// one, at any byte, whose sequence number follows the last good one closely and whose CRC
/// holds.
fn valid_frames_after(path: &Path, from: From, after: u64) -> Result<Dropped> {
    let bytes = std::fs::read(path).map_err(|e| Error::Wal(format!("{}: {e}", path.display())))?;
    let resync = match from {
        From::Start => Some(0),
        From::Bad { offset, previous } => {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            (start.saturating_add(1)..=bytes.len().saturating_sub(18)).find(|&at| {
                frame_seq(&bytes[at..]).is_some_and(|seq| {
                    seq > previous
                        && seq <= previous.saturating_add(1 << 20)
                        && matches!(
                            read_frame(&mut &bytes[at..], (bytes.len() - at) as u64),
                            Frame::Entry(..) | Frame::Unknown { .. }
                        )
                })
            })
        }
    };
    let mut dropped = Dropped::default();
    if let Some(mut at) = resync {
        loop {
            let rest = &bytes[at..];
            match read_frame(&mut &rest[..], rest.len() as u64) {
                Frame::Entry(entry, len) => {
                    at += len as usize;
                    dropped.found += 1;
                    if entry.seq > after {
                        dropped.frames += 1;
                        dropped.records += (entry.records.len() + entry.points.len()) as u64;
                    }
                }
                // Valid, but of a kind this recmeter cannot count: counted as a frame.
                Frame::Unknown { .. } => {
                    dropped.found += 1;
                    dropped.frames += u64::from(frame_seq(rest).is_some_and(|seq| seq > after));
                    at += 8 + (frame_len(rest).unwrap_or(0) as usize);
                }
                Frame::End | Frame::Torn => break,
            }
        }
    }
    Ok(dropped)
}

/// The segments of the log in `dir`, by first sequence number, oldest first.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let io = |e: std::io::Error| Error::Wal(format!("{}: {e}", dir.display()));
    let mut segments = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io)? {
        let path = item.map_err(io)?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(first) = first {
            segments.push((first, path));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Reads back the live log in `dir` without changing it: hands `apply` every entry with a
/// sequence number after `after` and up to `upto`, in order. Every such entry is whole and
/// fsynced (the state applies an entry only once it is), so the read stops at `upto` before
/// any frame the writer may be writing. A segment let go meanwhile held only entries a
/// checkpoint covers (the caller holds checkpoints back).
pub fn read_back(
    dir: &Path,
    after: u64,
    upto: u64,
    mut apply: impl FnMut(Entry) -> Result<()>,
) -> Result<u64> {
    let mut applied = 0;
    for (_, path) in segments(dir)? {
        let io = |e: std::io::Error| Error::Wal(format!("{}: {e}", path.display()));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(e)),
        };
        let size = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        loop {
            match read_frame(&mut reader, size - offset) {
                Frame::Entry(entry, len) => {
                    offset += len;
                    if entry.seq > upto {
                        return Ok(applied);
                    }
                    if entry.seq > after {
                        applied += 1;
                        apply(entry)?;
                    }
                }
                Frame::End | Frame::Torn => break,
                Frame::Unknown { kind, version } => {
                    return Err(Error::Wal(format!(
                        "{}: the entry at byte {offset} is of kind {kind}, format version {version}, which this recmeter does not read",
                        path.display()
                    )));
                }
            }
        }
    }
    Ok(applied)
}

/// The locked WAL directory, before its writer starts.
#[derive(Debug)]
pub struct WalDir {
    dir: PathBuf,
    /// Held for the life of the process: the OS releases it when the process dies.
    lock: File,
    /// Segments by first sequence number, oldest first.
    segments: Vec<(u64, PathBuf)>,
}

impl WalDir {
    /// Creates `dir` if needed and locks it for this process. A second process gets
    /// [`Error::WalLocked`] naming the directory.
    pub fn lock(dir: &Path) -> Result<Self> {
        let io = |e: std::io::Error| Error::Wal(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::WalLocked(dir.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        Ok(Self {
            dir: dir.to_owned(),
            lock,
            segments: segments(dir)?,
        })
    }

    /// Hands `apply` every entry after sequence number `after`, in order. An error from `apply`
    /// stops the replay at once, before anything more of the log is read or changed.
    ///
    /// A bad frame with nothing valid after it in the last segment is a torn tail (a crash
    /// during a write; nothing there was acknowledged): it is cut off with a warning. A bad
    /// frame anywhere else, or followed by valid frames, is corruption of acknowledged data:
    /// an error naming the segment and offset, unless `truncate_at_corruption`, which cuts the
    /// log there, drops the frames after it (counted in [`ReplayStats::dropped_records`]) and
    /// goes on.
    pub fn replay(
        &mut self,
        after: u64,
        truncate_at_corruption: bool,
        mut apply: impl FnMut(Entry) -> Result<()>,
    ) -> Result<ReplayStats> {
        let mut stats = ReplayStats::default();
        let last = self.segments.len().saturating_sub(1);
        for (i, (first, path)) in self.segments.iter().enumerate() {
            let io = |e: std::io::Error| Error::Wal(format!("{}: {e}", path.display()));
            let file = File::open(path).map_err(io)?;
            let size = file.metadata().map_err(io)?.len();
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut offset = 0u64;
            let mut previous = first.saturating_sub(1);
            loop {
                match read_frame(&mut reader, size - offset) {
                    Frame::End => break,
                    Frame::Unknown { kind, version } => {
                        return Err(Error::Wal(format!(
                            "{}: the entry at byte {offset} is of kind {kind}, format version \
                             {version}; this recmeter reads kind {KIND_RECORDS} (request \
                             records, up to version {RECORDS_VERSION}) and kind {KIND_EVENT} \
                             (component events, up to version {EVENT_VERSION}). A newer recmeter \
                             wrote this log: start that version",
                            path.display()
                        )));
                    }
                    Frame::Torn => {
                        let mut dropped =
                            valid_frames_after(path, From::Bad { offset, previous }, after)?;
                        for (_, later) in &self.segments[i + 1..] {
                            dropped.add(valid_frames_after(later, From::Start, after)?);
                        }
                        // Nothing valid after it: a torn tail.
                        if i == last && dropped.found == 0 {
                            stats.torn += 1;
                            tracing::warn!(segment = %path.display(), offset, "The WAL ends in a torn write (a crash while writing); the unacknowledged tail is cut off.");
                            cut(path, offset)?;
                            break;
                        }
                        // Nothing after it that no checkpoint holds (so the bad frame is older
                        // still): nothing is lost.
                        if dropped.frames == 0 {
                            tracing::warn!(segment = %path.display(), offset, "The WAL is corrupt where a checkpoint already holds everything; cut off.");
                            cut(path, offset)?;
                            break;
                        }
                        if !truncate_at_corruption {
                            return Err(Error::WalCorrupt {
                                segment: path.clone(),
                                offset,
                                frames_after: dropped.frames,
                            });
                        }
                        tracing::error!(
                            segment = %path.display(),
                            offset,
                            frames = dropped.frames,
                            records = dropped.records,
                            "The WAL is corrupt; --wal-truncate-at-corruption cuts it here and drops the acknowledged records after it."
                        );
                        cut(path, offset)?;
                        // The later segments go: a log is read in order, and what follows the
                        // cut is what the operator chose to drop.
                        for (_, later) in self.segments.drain(i + 1..) {
                            std::fs::remove_file(&later)
                                .map_err(|e| Error::Wal(format!("{}: {e}", later.display())))?;
                        }
                        stats.dropped_frames = dropped.frames;
                        stats.dropped_records = dropped.records;
                        return Ok(stats);
                    }
                    Frame::Entry(entry, len) => {
                        offset += len;
                        previous = entry.seq;
                        stats.last_seq = stats.last_seq.max(entry.seq);
                        if entry.seq > after {
                            stats.entries += 1;
                            stats.records += entry.records.len() as u64;
                            stats.points += entry.points.len() as u64;
                            apply(entry)?;
                        }
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Starts the writer thread; new frames take sequence numbers from `next_seq` on, in a new
    /// segment.
    pub fn start(
        self,
        next_seq: u64,
        fsync_interval: Duration,
        hooks: Arc<Hooks>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Wal> {
        // Segments named at or past `next_seq` hold no valid frame (the replay found none that
        // far): they go, so segment names stay the first sequence number they hold, in order.
        let mut segments = Vec::with_capacity(self.segments.len());
        for (first, path) in self.segments {
            if first >= next_seq {
                std::fs::remove_file(&path)
                    .map_err(|e| Error::Wal(format!("{}: {e}", path.display())))?;
            } else {
                segments.push((first, path));
            }
        }
        let mut writer = Writer {
            segments,
            committed: 0,
            cut_pending: false,
            dir: self.dir,
            _lock: self.lock,
            file: None,
            next_seq,
            current_has_entries: false,
            hooks,
            telemetry,
            buf: Vec::with_capacity(1 << 20),
        };
        let shared = Arc::new(Shared {
            arrivals: AtomicUsize::new(0),
            wake: parking_lot::Mutex::new(None),
        });
        writer.open_segment().map_err(|e| {
            Error::Wal(format!(
                "cannot start a segment in {}: {e}",
                writer.dir.display()
            ))
        })?;
        let (tx, rx) = mpsc::channel();
        *shared.wake.lock() = Some(tx.clone());
        let thread = std::thread::Builder::new()
            .name("recmeter-wal".into())
            .spawn({
                let shared = shared.clone();
                move || writer.run(rx, fsync_interval, &shared.arrivals)
            })
            .map_err(|e| Error::Wal(format!("cannot start the WAL writer: {e}")))?;
        Ok(Wal {
            tx: Some(tx),
            thread: Some(thread),
            shared,
        })
    }
}

/// What happens once a frame is durable (`Ok(seq)`) or cannot be (`Err`): what was logged
/// comes back to be applied.
pub type Then = Box<dyn FnOnce(Result<u64>, Logged) + Send>;

enum Command {
    Append {
        entry: Logged,
        /// The request's place among those on their way: let go once the writer holds the
        /// frame.
        arriving: Arriving,
        then: Then,
    },
    /// The last request on its way gave up without an append: stop waiting for it.
    Wake,
    /// Everything at or before this sequence number is in a checkpoint.
    Truncate(u64),
}

/// The running writer. Dropping it lets the thread finish what it was given and stop.
pub struct Wal {
    tx: Option<mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// What the writer and the requests on their way share.
struct Shared {
    /// Requests on their way to [`Wal::append`]: see [`Arriving`].
    arrivals: AtomicUsize,
    /// Wakes the writer when the last place is let go. Taken when the log stops, so a place
    /// held somewhere never keeps the writer's channel open.
    wake: parking_lot::Mutex<Option<mpsc::Sender<Command>>>,
}

struct ArrivingPlace(Arc<Shared>);

impl std::fmt::Debug for ArrivingPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrivingPlace").finish_non_exhaustive()
    }
}

impl Drop for ArrivingPlace {
    fn drop(&mut self) {
        if self.0.arrivals.fetch_sub(1, Ordering::SeqCst) == 1
            && let Some(tx) = self.0.wake.lock().as_ref()
        {
            let _ = tx.send(Command::Wake);
        }
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal").finish_non_exhaustive()
    }
}

impl Wal {
    /// Counts a request on its way to [`Wal::append`] until the result is let go.
    pub fn arriving(&self) -> Arriving {
        self.shared.arrivals.fetch_add(1, Ordering::SeqCst);
        Arriving::new(Arc::new(ArrivingPlace(self.shared.clone())))
    }

    /// Logs `entry`; `then` runs on the writer thread once the frame is fsynced, frames in
    /// sequence order. `arriving` (the request's place, if it took one) is let go once the
    /// writer holds the frame.
    pub fn append(&self, entry: Logged, arriving: Arriving, then: Then) {
        let command = Command::Append {
            entry,
            arriving,
            then,
        };
        if let Some(Err(mpsc::SendError(Command::Append { entry, then, .. }))) =
            self.tx.as_ref().map(|tx| tx.send(command))
        {
            then(Err(Error::Stopped), entry);
        }
    }

    /// Lets go of the segments whose frames are all at or before `covered`.
    pub fn truncate(&self, covered: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Truncate(covered));
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shared.wake.lock().take();
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Writer {
    dir: PathBuf,
    _lock: File,
    segments: Vec<(u64, PathBuf)>,
    file: Option<File>,
    /// Bytes of the current segment known durable: a failed write is cut back to this.
    committed: u64,
    /// A failed write could not be cut back yet: no frame is written after it until it is.
    cut_pending: bool,
    next_seq: u64,
    current_has_entries: bool,
    hooks: Arc<Hooks>,
    telemetry: Arc<Telemetry>,
    buf: Vec<u8>,
}

/// Adds `command` to the writer's batch; an append's place among the requests on their way is
/// let go now that the writer holds its frame.
fn take(batch: &mut Vec<Command>, mut command: Command) {
    if let Command::Append { arriving, .. } = &mut command {
        *arriving = Arriving::default();
    }
    batch.push(command);
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>, interval: Duration, arrivals: &AtomicUsize) {
        let mut last_sync: Option<Instant> = None;
        let mut pending: Vec<(u64, Logged, Then)> = Vec::new();
        loop {
            // While writes fail, a probe every second finds out when the disk takes writes
            // again, so `/readyz` recovers without waiting for traffic it turns away.
            let first = if self.telemetry.wal_failing() {
                match rx.recv_timeout(PROBE_INTERVAL) {
                    Ok(c) => c,
                    Err(RecvTimeoutError::Timeout) => {
                        self.probe();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                }
            };
            let mut batch = Vec::new();
            take(&mut batch, first);
            for c in rx.try_iter() {
                take(&mut batch, c);
            }
            // Group commit: while other requests are on their way, wait for them to share the
            // next fsync, until `interval` after the last one. A request's place is let go as
            // its frame is taken here (`take`), so the last of a group is not waited for.
            if let Some(until) = last_sync.map(|t| t + interval) {
                while arrivals.load(Ordering::SeqCst) > 0 {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    match rx.recv_timeout(until - now) {
                        Ok(c) => {
                            take(&mut batch, c);
                            for c in rx.try_iter() {
                                take(&mut batch, c);
                            }
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
            for command in batch {
                match command {
                    Command::Wake => {}
                    Command::Append { entry, then, .. } => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        match &entry {
                            Logged::Batch { batch, checked_at } => encode_frame(
                                &mut self.buf,
                                seq,
                                *checked_at,
                                &batch.records,
                                &batch.points,
                            ),
                            Logged::Event(event) => encode_event_frame(&mut self.buf, seq, event),
                        }
                        pending.push((seq, entry, then));
                    }
                    Command::Truncate(covered) => {
                        if !pending.is_empty() {
                            last_sync = Some(self.commit(&mut pending));
                        }
                        self.truncate(covered);
                    }
                }
            }
            if !pending.is_empty() {
                last_sync = Some(self.commit(&mut pending));
            }
        }
        tracing::debug!("WAL writer stopping.");
    }

    /// Writes and fsyncs the buffered frames, then hands each on; returns when the fsync
    /// started.
    fn commit(&mut self, pending: &mut Vec<(u64, Logged, Then)>) -> Instant {
        let started = Instant::now();
        let result = self.write_and_sync();
        self.buf.clear();
        self.telemetry.set_wal_failing(result.is_err());
        match result {
            Ok(()) => {
                self.current_has_entries = true;
                self.telemetry
                    .observe_wal_fsync(started.elapsed().as_secs_f64());
                for (seq, entry, then) in pending.drain(..) {
                    then(Ok(seq), entry);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot write the WAL; the requests are refused for a retry.");
                // None of these frames may replay (the clients retry them): cut the segment
                // back to what was durable. If even that fails, stop taking requests.
                if self.cut_back().is_err() {
                    tracing::error!(
                        "Cannot cut the WAL back after a failed write; refusing requests until it can."
                    );
                    self.cut_pending = true;
                }
                // The sequence numbers are not reused: a gap is harmless.
                for (_, entry, then) in pending.drain(..) {
                    then(Err(Error::Wal(e.to_string())), entry);
                }
            }
        }
        started
    }

    fn write_and_sync(&mut self) -> std::io::Result<()> {
        if self.cut_pending {
            // A failed write could not be cut back: nothing goes after its bytes until it is.
            self.cut_back()?;
            self.cut_pending = false;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(std::io::Error::other("no WAL segment is open"));
        };
        if self.hooks.is_on(Hook::FailWalWrites) {
            // As a full disk does: part of the frames written, then the failure.
            file.write_all(&self.buf[..self.buf.len() / 2])?;
            return Err(full_disk_hook());
        }
        file.write_all(&self.buf)?;
        if self.hooks.is_on(Hook::BlockFsync) {
            tracing::warn!("Test hook block_fsync: holding the WAL fsync.");
            while self.hooks.is_on(Hook::BlockFsync) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        file.sync_data()?;
        self.committed += self.buf.len() as u64;
        Ok(())
    }

    /// Whether the WAL's disk takes a write and an fsync again; clears the failing state if so.
    fn probe(&mut self) {
        if self.probe_write().is_ok() {
            tracing::info!(dir = %self.dir.display(), "The WAL can be written again.");
            self.telemetry.set_wal_failing(false);
        }
    }

    /// Cuts the current segment back to what was durable.
    fn cut_back(&self) -> std::io::Result<()> {
        if self.hooks.is_on(Hook::FailWalWrites) {
            return Err(full_disk_hook());
        }
        match &self.file {
            // The write position goes back too: left past the cut, the next frame would follow
            // a hole of zeros, which a replay reads as a bad frame.
            Some(f) => f
                .set_len(self.committed)
                .and_then(|()| (&*f).seek(std::io::SeekFrom::Start(self.committed)))
                .and_then(|_| f.sync_all()),
            None => Err(std::io::Error::other("no WAL segment is open")),
        }
    }

    fn probe_write(&self) -> std::io::Result<()> {
        if self.cut_pending {
            self.cut_back()?;
        }
        if self.hooks.is_on(Hook::FailWalWrites) {
            return Err(full_disk_hook());
        }
        let path = self.dir.join(PROBE_FILE);
        let result = File::create(&path).and_then(|mut f| {
            f.write_all(&[0u8; 4096])?;
            f.sync_data()
        });
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Starts a new segment at the next sequence number.
    fn open_segment(&mut self) -> std::io::Result<()> {
        let path = self
            .dir
            .join(format!("{:020}{SEGMENT_SUFFIX}", self.next_seq));
        // A file already of this name can only hold frames that did not survive a crash (the
        // replay found none at or after this number): start it afresh.
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        // Known before anything can fail, so truncation never judges a segment by a neighbour
        // it does not know about.
        if self.segments.last().is_none_or(|(_, p)| *p != path) {
            self.segments.push((self.next_seq, path));
        }
        self.file = Some(file);
        self.committed = 0;
        self.current_has_entries = false;
        // The new name must survive a crash as well as the frames in it.
        File::open(&self.dir)?.sync_all()
    }

    /// Deletes the segments whose frames are all at or before `covered`; the current one is
    /// closed first when it has frames, so the next truncation can take it.
    fn truncate(&mut self, covered: u64) {
        // A segment is left behind only once it ends in whole frames: a failed write not yet
        // cut back would be a bad frame before later segments, which a replay calls corruption.
        if self.cut_pending {
            if self.cut_back().is_err() {
                return;
            }
            self.cut_pending = false;
        }
        if self.current_has_entries
            && let Err(e) = self.open_segment()
        {
            tracing::error!(error = %e, "Cannot open a new WAL segment.");
        }
        let mut keep = Vec::with_capacity(self.segments.len());
        let segments = std::mem::take(&mut self.segments);
        for (i, (first, path)) in segments.iter().enumerate() {
            let covered_whole = segments
                .get(i + 1)
                .is_some_and(|(next, _)| next.saturating_sub(1) <= covered);
            if covered_whole {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(error = %e, segment = %path.display(), "Cannot delete a WAL segment a checkpoint covers.");
                    keep.push((*first, path.clone()));
                }
            } else {
                keep.push((*first, path.clone()));
            }
        }
        self.segments = keep;
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_key(out: &mut Vec<u8>, key: &SeriesKey) {
    put_str(out, &key.service);
    put_str(out, &key.endpoint);
    put_varint(out, key.dimensions.len() as u64);
    for d in &key.dimensions {
        put_str(out, d);
    }
}

fn put_dense(out: &mut Vec<u8>, d: &Dense) {
    put_zigzag(out, i64::from(d.offset));
    put_varint(out, d.counts.len() as u64);
    for &c in &d.counts {
        put_varint(out, c);
    }
}

const POINT_ERROR: u8 = 1;
const POINT_CUMULATIVE: u8 = 2;
const POINT_WHOLE_IF_NEW: u8 = 4;

fn put_point(out: &mut Vec<u8>, p: &MetricPoint, key: u64) {
    out.extend_from_slice(&p.stream.to_le_bytes());
    put_varint(out, key);
    out.push(
        (if p.error { POINT_ERROR } else { 0 })
            | (if p.cumulative { POINT_CUMULATIVE } else { 0 })
            | (if p.whole_if_new {
                POINT_WHOLE_IF_NEW
            } else {
                0
            }),
    );
    put_varint(out, p.start_unix_nanos);
    put_varint(out, p.time_unix_nanos);
    put_f64(out, p.nanos_per_unit);
    match &p.value {
        PointValue::Explicit { bounds, counts } => {
            out.push(0);
            put_varint(out, bounds.len() as u64);
            for &b in bounds {
                put_f64(out, b);
            }
            put_varint(out, counts.len() as u64);
            for &c in counts {
                put_varint(out, c);
            }
        }
        PointValue::Exponential {
            scale,
            zero_count,
            positive,
            negative,
        } => {
            out.push(1);
            put_zigzag(out, i64::from(*scale));
            put_varint(out, *zero_count);
            put_dense(out, positive);
            put_dense(out, negative);
        }
        PointValue::Sum { value } => {
            out.push(2);
            put_f64(out, *value);
        }
    }
}

/// Appends one frame to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    seq: u64,
    checked_at: u64,
    records: &[RequestRecord],
    points: &[MetricPoint],
) {
    let start = begin_frame(out, KIND_RECORDS, RECORDS_VERSION, seq);
    out.extend_from_slice(&checked_at.to_le_bytes());
    // foldhash rather than SipHash: the keys are hashed once per record on the writer thread,
    // and its per-map random seed keeps crafted collisions out of reach.
    let mut keys: HashMap<&SeriesKey, u64, foldhash::fast::RandomState> = HashMap::default();
    let mut order = Vec::new();
    let mut intern = |key| {
        let next = keys.len() as u64;
        *keys.entry(key).or_insert_with(|| {
            order.push(key);
            next
        })
    };
    let index: Vec<u64> = records.iter().map(|r| intern(&r.key)).collect();
    // Points share the frame's key table: a request's many points of one series cost one key.
    let point_index: Vec<u64> = points.iter().map(|p| intern(&p.key)).collect();
    put_varint(out, order.len() as u64);
    for key in order {
        put_key(out, key);
    }
    put_varint(out, records.len() as u64);
    for (r, k) in records.iter().zip(index) {
        put_varint(out, k);
        // End times sit close to the check time: a zig-zag delta takes a few bytes.
        let delta = r.end_unix_nanos.wrapping_sub(checked_at) as i64;
        put_varint(out, ((delta << 1) ^ (delta >> 63)) as u64);
        put_varint(out, r.duration_nanos);
        put_varint(out, r.recommendations);
        out.push(u8::from(r.error));
    }
    // Frames of span requests end here, as before points existed.
    if !points.is_empty() {
        put_varint(out, points.len() as u64);
        for (p, k) in points.iter().zip(point_index) {
            put_point(out, p, k);
        }
    }
    end_frame(out, start);
}

/// Starts a tagged frame in `out`: room for its header, then its kind, version and sequence
/// number. Returns where it starts, for [`end_frame`].
fn begin_frame(out: &mut Vec<u8>, kind: u8, version: u8, seq: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&[kind, version]);
    out.extend_from_slice(&seq.to_le_bytes());
    start
}

/// Writes the header of the frame begun at `start`: its length (tagged) and CRC.
fn end_frame(out: &mut [u8], start: usize) {
    let payload = &out[start + 8..];
    let len = payload.len() as u32 | TAGGED;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one component event's frame to `out`.
pub fn encode_event_frame(out: &mut Vec<u8>, seq: u64, event: &Event) {
    let start = begin_frame(out, KIND_EVENT, EVENT_VERSION, seq);
    put_str(out, &event.component);
    put_varint(out, event.payload.len() as u64);
    out.extend_from_slice(&event.payload);
    end_frame(out, start);
}

/// The payload length a frame's header gives (tag bit aside), if the header is whole.
fn frame_len(bytes: &[u8]) -> Option<u32> {
    let word = u32::from_le_bytes(*bytes.first_chunk::<4>()?);
    Some(word & !TAGGED)
}

/// The sequence number of the frame at the start of `bytes`, read where its kind puts it.
fn frame_seq(bytes: &[u8]) -> Option<u64> {
    let word = u32::from_le_bytes(*bytes.first_chunk::<4>()?);
    let at = if word & TAGGED != 0 { 10 } else { 8 };
    Some(u64::from_le_bytes(*bytes.get(at..)?.first_chunk::<8>()?))
}

enum Frame {
    /// An entry, and the bytes its frame took.
    Entry(Entry, u64),
    /// A whole frame (its CRC holds) of a kind or version this recmeter does not read.
    Unknown { kind: u8, version: u8 },
    /// A clean end of the segment.
    End,
    /// A frame cut short, failing its CRC, or not decodable.
    Torn,
}

/// Reads one frame from `reader`, which has `remaining` bytes left.
fn read_frame(reader: &mut impl Read, remaining: u64) -> Frame {
    let mut header = [0u8; 8];
    let mut got = 0;
    while got < header.len() {
        match reader.read(&mut header[got..]) {
            Ok(0) => return if got == 0 { Frame::End } else { Frame::Torn },
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Frame::Torn,
        }
    }
    let word = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let tagged = word & TAGGED != 0;
    let len = (word & !TAGGED) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    // A garbage length past the end of the file allocates nothing.
    let min = if tagged { 10 } else { 16 };
    if !(min..=MAX_FRAME).contains(&len) || len as u64 > remaining.saturating_sub(8) {
        return Frame::Torn;
    }
    let mut payload = vec![0u8; len];
    if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
        return Frame::Torn;
    }
    let entry = if tagged {
        match (payload[0], payload[1]) {
            (KIND_RECORDS, RECORDS_VERSION) => decode_payload(&payload[2..]),
            (KIND_EVENT, EVENT_VERSION) => decode_event(&payload[2..]),
            (kind, version) => return Frame::Unknown { kind, version },
        }
    } else {
        // Written before entries had kinds: request records.
        decode_payload(&payload)
    };
    entry.map_or(Frame::Torn, |e| Frame::Entry(e, 8 + len as u64))
}

/// Decodes a component event's payload (after its kind and version).
fn decode_event(payload: &[u8]) -> Option<Entry> {
    let mut c = Cursor { bytes: payload };
    let seq = c.u64_le()?;
    let component = c.str()?.to_string();
    let len = usize::try_from(c.varint()?).ok()?;
    if len > MAX_EVENT_BYTES || len != c.bytes.len() {
        return None;
    }
    Some(Entry {
        seq,
        checked_at: 0,
        records: Vec::new(),
        points: Vec::new(),
        event: Some(Event {
            component,
            payload: c.bytes.to_vec(),
        }),
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn u64_le(&mut self) -> Option<u64> {
        let (head, rest) = self.bytes.split_first_chunk::<8>()?;
        self.bytes = rest;
        Some(u64::from_le_bytes(*head))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn str(&mut self) -> Option<Arc<str>> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.bytes.len() {
            return None;
        }
        let (s, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        std::str::from_utf8(s).ok().map(Arc::from)
    }

    fn f64(&mut self) -> Option<f64> {
        self.u64_le().map(f64::from_bits)
    }

    fn zigzag(&mut self) -> Option<i64> {
        let zz = self.varint()?;
        Some(((zz >> 1) as i64) ^ -((zz & 1) as i64))
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(b)
    }

    /// A count of items each taking at least `min_bytes`: a hostile count cannot make a huge
    /// allocation.
    fn count(&mut self, min_bytes: usize) -> Option<usize> {
        let n = usize::try_from(self.varint()?).ok()?;
        (n <= self.bytes.len() / min_bytes).then_some(n)
    }

    fn key(&mut self) -> Option<SeriesKey> {
        let service = self.str()?;
        let endpoint = self.str()?;
        let ndims = self.count(1)?;
        let mut dimensions = Vec::with_capacity(ndims);
        for _ in 0..ndims {
            dimensions.push(self.str()?);
        }
        Some(SeriesKey {
            service,
            endpoint,
            dimensions,
        })
    }

    fn dense(&mut self) -> Option<Dense> {
        let offset = i32::try_from(self.zigzag()?).ok()?;
        let n = self.count(1)?;
        let counts = (0..n).map(|_| self.varint()).collect::<Option<Vec<_>>>()?;
        Some(Dense { offset, counts })
    }

    fn point(&mut self, keys: &[SeriesKey]) -> Option<MetricPoint> {
        let (stream, rest) = self.bytes.split_first_chunk::<16>()?;
        let stream = u128::from_le_bytes(*stream);
        self.bytes = rest;
        let key = keys.get(usize::try_from(self.varint()?).ok()?)?.clone();
        let flags = self.byte()?;
        if flags & !(POINT_ERROR | POINT_CUMULATIVE | POINT_WHOLE_IF_NEW) != 0 {
            return None;
        }
        let start_unix_nanos = self.varint()?;
        let time_unix_nanos = self.varint()?;
        let nanos_per_unit = self.f64()?;
        let value = match self.byte()? {
            0 => {
                let n = self.count(8)?;
                let bounds = (0..n).map(|_| self.f64()).collect::<Option<Vec<_>>>()?;
                let n = self.count(1)?;
                let counts = (0..n).map(|_| self.varint()).collect::<Option<Vec<_>>>()?;
                if counts.len() != bounds.len() + 1 {
                    return None;
                }
                PointValue::Explicit { bounds, counts }
            }
            1 => PointValue::Exponential {
                scale: i32::try_from(self.zigzag()?).ok()?,
                zero_count: self.varint()?,
                positive: self.dense()?,
                negative: self.dense()?,
            },
            2 => PointValue::Sum { value: self.f64()? },
            _ => return None,
        };
        Some(MetricPoint {
            stream,
            key,
            error: flags & POINT_ERROR != 0,
            start_unix_nanos,
            time_unix_nanos,
            cumulative: flags & POINT_CUMULATIVE != 0,
            whole_if_new: flags & POINT_WHOLE_IF_NEW != 0,
            nanos_per_unit,
            value,
        })
    }
}

/// Decodes a frame's payload; `None` when it does not hold together.
fn decode_payload(payload: &[u8]) -> Option<Entry> {
    let mut c = Cursor { bytes: payload };
    let seq = c.u64_le()?;
    let checked_at = c.u64_le()?;
    let nkeys = usize::try_from(c.varint()?).ok()?;
    // Every key takes at least 3 bytes: a hostile count cannot make a huge allocation.
    let mut keys = Vec::with_capacity(nkeys.min(c.bytes.len() / 3));
    for _ in 0..nkeys {
        keys.push(c.key()?);
    }
    let nrecords = usize::try_from(c.varint()?).ok()?;
    let mut records = Vec::with_capacity(nrecords.min(c.bytes.len() / 4));
    for _ in 0..nrecords {
        let key = keys.get(usize::try_from(c.varint()?).ok()?)?.clone();
        let zz = c.varint()?;
        let delta = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
        let duration_nanos = c.varint()?;
        let recommendations = c.varint()?;
        let (&error, rest) = c.bytes.split_first()?;
        c.bytes = rest;
        if error > 1 {
            return None;
        }
        records.push(RequestRecord {
            key,
            end_unix_nanos: checked_at.wrapping_add(delta as u64),
            duration_nanos,
            error: error == 1,
            recommendations,
        });
    }
    let mut points = Vec::new();
    if !c.bytes.is_empty() {
        // A point takes well over 16 bytes.
        let n = c.count(16)?;
        points.reserve(n);
        for _ in 0..n {
            points.push(c.point(&keys)?);
        }
    }
    c.bytes.is_empty().then_some(Entry {
        seq,
        checked_at,
        records,
        points,
        event: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(service: &str, end: u64, duration: u64, error: bool, recs: u64) -> RequestRecord {
        RequestRecord {
            key: SeriesKey {
                service: Arc::from(service),
                endpoint: Arc::from("GET /r"),
                dimensions: vec![Arc::from("eu"), Arc::from("")],
            },
            end_unix_nanos: end,
            duration_nanos: duration,
            error,
            recommendations: recs,
        }
    }

    fn records() -> Vec<RequestRecord> {
        vec![
            record("a", 1_800_000_000_000_000_000, 12_345_678, false, 1),
            record(
                "b",
                1_800_000_000_000_000_000 - 3_600_000_000_000,
                1,
                true,
                0,
            ),
            record("a", u64::MAX, u64::MAX, true, u64::MAX),
            record("b", 0, 0, false, 7),
        ]
    }

    #[test]
    fn frames_round_trip_and_replay_after_a_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalDir::lock(dir.path()).unwrap();
        let wal = wal
            .start(1, Duration::from_millis(1), Arc::default(), Arc::default())
            .unwrap();
        let (tx, rx) = mpsc::channel();
        for i in 0..3u64 {
            let tx = tx.clone();
            wal.append(
                Logged::Batch {
                    batch: records().into(),
                    checked_at: 1_800_000_000_000_000_000 + i,
                },
                Arriving::default(),
                Box::new(move |seq, records| tx.send((seq.unwrap(), records)).unwrap()),
            );
        }
        let seqs: Vec<u64> = (0..3).map(|_| rx.recv().unwrap().0).collect();
        assert_eq!(seqs, [1, 2, 3]);
        drop(wal);
        let mut wal = WalDir::lock(dir.path()).unwrap();
        let mut got = Vec::new();
        let stats = wal
            .replay(1, false, |e| {
                got.push(e);
                Ok(())
            })
            .unwrap();
        assert_eq!(stats.last_seq, 3);
        assert_eq!(stats.entries, 2);
        assert_eq!(got[0].seq, 2);
        assert_eq!(got[1].checked_at, 1_800_000_000_000_000_002);
        assert_eq!(got[1].records, records());
    }

    /// The error replaying the log in `dir` from the start gives.
    fn replay_error(dir: &std::path::Path) -> Error {
        WalDir::lock(dir)
            .unwrap()
            .replay(0, false, |_| Ok(()))
            .unwrap_err()
    }

    /// `frame` (one tagged records frame) as written before entries had kinds.
    fn untagged(frame: &[u8]) -> Vec<u8> {
        let payload = &frame[10..];
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn old_frames_events_and_records_replay_in_order_and_unknown_kinds_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let event = Event {
            component: "test_ledger".into(),
            payload: 7u64.to_le_bytes().to_vec(),
        };
        // A segment begun by the build before entry kinds, continued by this one.
        let mut bytes = Vec::new();
        for seq in 1..=2 {
            let mut frame = Vec::new();
            encode_frame(&mut frame, seq, 5, &records(), &points());
            bytes.extend(untagged(&frame));
        }
        encode_event_frame(&mut bytes, 3, &event);
        encode_frame(&mut bytes, 4, 5, &records(), &[]);
        let segment = dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 1));
        std::fs::write(&segment, &bytes).unwrap();
        let mut got = Vec::new();
        let stats = WalDir::lock(dir.path())
            .unwrap()
            .replay(0, false, |e| {
                got.push(e);
                Ok(())
            })
            .unwrap();
        assert_eq!((stats.entries, stats.torn, stats.last_seq), (4, 0, 4));
        assert_eq!(got[0].points, points());
        assert_eq!(got[1].records, records());
        assert_eq!(got[2].event.as_ref(), Some(&event));
        assert!(got[2].records.is_empty());
        assert_eq!(got[3].records, records());
        // A kind, or a version of a known kind, from a newer recmeter: refused, naming both.
        for (kind, version) in [(9u8, 1u8), (KIND_EVENT, EVENT_VERSION + 1)] {
            let mut newer = bytes.clone();
            let start = newer.len();
            newer.extend_from_slice(&[0; 8]);
            newer.extend_from_slice(&[kind, version]);
            newer.extend_from_slice(&5u64.to_le_bytes());
            end_frame(&mut newer, start);
            std::fs::write(&segment, &newer).unwrap();
            let e = replay_error(dir.path()).to_string();
            assert!(
                e.contains(&format!("kind {kind}, format version {version}")),
                "{e}"
            );
        }
        // A hostile event: a length past its bytes, or over the limit, reads as a bad frame.
        let mut frame = Vec::new();
        encode_event_frame(&mut frame, 1, &event);
        let payload = &frame[10..];
        for cut in 0..payload.len() {
            assert!(decode_event(&payload[..cut]).is_none());
        }
        let big = Event {
            component: "x".into(),
            payload: vec![0; MAX_EVENT_BYTES + 1],
        };
        let mut frame = Vec::new();
        encode_event_frame(&mut frame, 1, &big);
        assert!(decode_event(&frame[10..]).is_none());
        // At the limit it reads; so does a component name of a megabyte, and the error that
        // no such component runs names it in a line.
        let at_limit = Event {
            component: "x".repeat(1 << 20),
            payload: vec![1; MAX_EVENT_BYTES],
        };
        let mut frame = Vec::new();
        encode_event_frame(&mut frame, 1, &at_limit);
        let read = decode_event(&frame[10..]).unwrap().event.unwrap();
        assert_eq!(read, at_limit);
        let e = crate::participant::Participants::default()
            .apply(&read)
            .unwrap_err()
            .to_string();
        assert!(e.len() < 400 && e.contains("1048576 bytes"), "{e}");
    }

    #[test]
    fn a_second_process_cannot_take_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _held = WalDir::lock(dir.path()).unwrap();
        match WalDir::lock(dir.path()) {
            Err(Error::WalLocked(d)) => assert_eq!(d, dir.path()),
            other => panic!("expected WalLocked, got {other:?}"),
        }
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_segment_and_never_panics() {
        let mut frames = Vec::new();
        encode_frame(&mut frames, 1, 5, &records(), &[]);
        let one = frames.len();
        encode_frame(&mut frames, 2, 5, &records(), &[]);
        // Every cut of the second frame, and every flipped byte in it, reads as torn.
        for cut in one..frames.len() {
            let mut r = &frames[..cut];
            let rest = (cut - one) as u64;
            assert!(matches!(read_frame(&mut r, cut as u64), Frame::Entry(..)));
            assert!(matches!(read_frame(&mut r, rest), Frame::End | Frame::Torn));
        }
        for i in one..frames.len() {
            let mut bad = frames.clone();
            bad[i] ^= 0x5a;
            let mut r = &bad[..];
            let rest = (bad.len() - one) as u64;
            assert!(matches!(
                read_frame(&mut r, bad.len() as u64),
                Frame::Entry(..)
            ));
            assert!(matches!(read_frame(&mut r, rest), Frame::Torn));
        }
        // Hostile payloads with a valid CRC: counts far beyond the bytes, bad key indexes.
        for payload in [
            [&[0u8; 16][..], &[0xff, 0xff, 0xff, 0xff, 0x0f]].concat(),
            [&[0u8; 16][..], &[0, 1, 9, 0, 0, 0]].concat(),
            [
                &[0u8; 16][..],
                &[
                    0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ],
            ]
            .concat(),
        ] {
            assert!(decode_payload(&payload).is_none());
        }
    }

    fn points() -> Vec<MetricPoint> {
        let key = |s: &str| SeriesKey {
            service: Arc::from(s),
            endpoint: Arc::from("recs.latency"),
            dimensions: vec![Arc::from("eu")],
        };
        vec![
            MetricPoint {
                stream: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                key: key("svc"),
                error: true,
                start_unix_nanos: 7,
                time_unix_nanos: 1_800_000_000_000_000_000,
                cumulative: true,
                whole_if_new: true,
                nanos_per_unit: 1e6,
                value: PointValue::Explicit {
                    bounds: vec![5.0, 10.0, f64::MAX],
                    counts: vec![1, 0, 3, u64::MAX],
                },
            },
            MetricPoint {
                stream: 2,
                key: key("other"),
                error: false,
                start_unix_nanos: 0,
                time_unix_nanos: 3,
                cumulative: false,
                whole_if_new: false,
                nanos_per_unit: 1e9,
                value: PointValue::Exponential {
                    scale: -3,
                    zero_count: 2,
                    positive: Dense {
                        offset: -40,
                        counts: vec![1, 2],
                    },
                    negative: Dense::default(),
                },
            },
            MetricPoint {
                stream: u128::MAX,
                key: key("other"),
                error: false,
                start_unix_nanos: 1,
                time_unix_nanos: 2,
                cumulative: true,
                whole_if_new: false,
                nanos_per_unit: 0.0,
                value: PointValue::Sum { value: 12.5 },
            },
        ]
    }

    #[test]
    fn frames_with_metric_points_round_trip_and_hostile_ones_fail() {
        let mut frame = Vec::new();
        encode_frame(&mut frame, 9, 5, &records(), &points());
        let mut r = &frame[..];
        let Frame::Entry(entry, len) = read_frame(&mut r, frame.len() as u64) else {
            panic!("the frame does not read back");
        };
        assert_eq!(len, frame.len() as u64);
        assert_eq!(entry.records, records());
        assert_eq!(entry.points, points());
        let mut frame = Vec::new();
        encode_frame(&mut frame, 10, 5, &[], &points()[2..]);
        let entry = decode_payload(&frame[10..]).unwrap();
        assert!(entry.records.is_empty());
        assert_eq!(entry.points, points()[2..]);
        // No cut of a payload reads back some of its points: only the cut just before the
        // points section reads (as a frame without points; the frame's length and CRC catch
        // that cut on disk).
        let mut whole = Vec::new();
        encode_frame(&mut whole, 1, 5, &records(), &points());
        let decoded: Vec<Entry> = (11..whole.len())
            .filter_map(|cut| decode_payload(&whole[10..cut]))
            .collect();
        assert!(decoded.len() <= 1);
        assert!(decoded.iter().all(|e| e.points.is_empty()));
        let plain = decode_payload(&whole[10..]).unwrap();
        assert_eq!(plain.points.len(), 3);
        let mut plain = Vec::new();
        encode_frame(&mut plain, 1, 5, &records(), &[]);
        // A hostile point count, an unknown flag, an unknown value kind, a key index past the
        // frame's keys, explicit counts that do not fit the bounds.
        let base = plain[10..].to_vec();
        let stream = [0u8; 16];
        for tail in [
            vec![0xff, 0xff, 0xff, 0xff, 0x0f],
            [&[1u8][..], &stream, &[0, 0x80], &[0; 18]].concat(),
            [&[1u8][..], &stream, &[0, 0, 0, 0], &[0; 8], &[7]].concat(),
            [&[1u8][..], &stream, &[99], &[0; 20]].concat(),
            [
                &[1u8][..],
                &stream,
                &[0, 0, 0, 0],
                &[0; 8],
                &[0, 1],
                &[0; 8],
                &[1, 5],
            ]
            .concat(),
        ] {
            assert!(decode_payload(&[&base[..], &tail[..]].concat()).is_none());
        }
    }

    fn append_one(wal: &Wal) -> u64 {
        let (tx, rx) = mpsc::channel();
        wal.append(
            Logged::Batch {
                batch: records().into(),
                checked_at: 0,
            },
            Arriving::default(),
            Box::new(move |seq, _| tx.send(seq.unwrap()).unwrap()),
        );
        rx.recv().unwrap()
    }

    #[test]
    fn group_commit_waits_only_while_requests_are_on_their_way() {
        let dir = tempfile::tempdir().unwrap();
        let telemetry = Arc::new(Telemetry::default());
        // A window far longer than any wait below: a frame held back for it would hang the test.
        let wal = WalDir::lock(dir.path())
            .unwrap()
            .start(
                1,
                Duration::from_secs(600),
                Arc::default(),
                telemetry.clone(),
            )
            .unwrap();
        let fsyncs = || telemetry.wal_fsync().count;
        let append = |arriving: Arriving| {
            let (tx, rx) = mpsc::channel();
            wal.append(
                Logged::Batch {
                    batch: records().into(),
                    checked_at: 0,
                },
                arriving,
                Box::new(move |seq, _| tx.send(seq.unwrap()).unwrap()),
            );
            rx
        };
        assert_eq!(append(Arriving::default()).recv().unwrap(), 1);
        // Nothing else on its way: synced at once, not at the end of the window.
        assert_eq!(append(Arriving::default()).recv().unwrap(), 2);
        assert_eq!(fsyncs(), 2);
        // Another request on its way: the frame waits for it, and they share one fsync.
        let on_its_way = wal.arriving();
        let first = append(Arriving::default());
        let second = append(on_its_way);
        assert_eq!((first.recv().unwrap(), second.recv().unwrap()), (3, 4));
        assert_eq!(fsyncs(), 3);
        // One that gives up on its way (a refused request) wakes the writer for the frame
        // waiting on it; clones hold the one place until the last goes.
        let gives_up = wal.arriving();
        let waiting = append(Arriving::default());
        drop(gives_up.clone());
        drop(gives_up);
        assert_eq!(waiting.recv_timeout(Duration::from_secs(300)), Ok(5));
        assert_eq!(fsyncs(), 4);
    }

    #[test]
    fn a_torn_tail_is_cut_and_corruption_before_it_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let start = |next| {
            WalDir::lock(dir.path())
                .unwrap()
                .start(next, Duration::ZERO, Arc::default(), Arc::default())
                .unwrap()
        };
        let wal = start(1);
        append_one(&wal);
        append_one(&wal);
        drop(wal);
        let segment = dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 1));
        let good = std::fs::metadata(&segment).unwrap().len();
        // A crash in the middle of the third frame.
        let mut torn = Vec::new();
        encode_frame(&mut torn, 3, 0, &records(), &[]);
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(f);
        let mut wal = WalDir::lock(dir.path()).unwrap();
        let stats = wal.replay(0, false, |_| Ok(())).unwrap();
        assert_eq!((stats.entries, stats.torn, stats.last_seq), (2, 1, 2));
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), good);
        drop(wal);
        // Frames after the cut go to a new segment; the first one is whole again.
        let wal = start(3);
        assert_eq!(append_one(&wal), 3);
        drop(wal);
        let mut seqs = Vec::new();
        WalDir::lock(dir.path())
            .unwrap()
            .replay(0, false, |e| {
                seqs.push(e.seq);
                Ok(())
            })
            .unwrap();
        assert_eq!(seqs, [1, 2, 3]);
        // A flipped byte in a segment that is not the last one is corruption.
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&segment, bytes).unwrap();
        let e = replay_error(dir.path()).to_string();
        assert!(
            e.contains("corrupt") && e.contains(&format!("{:020}", 1)),
            "{e}"
        );
    }

    #[test]
    fn a_flip_before_acknowledged_frames_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalDir::lock(dir.path())
            .unwrap()
            .start(1, Duration::ZERO, Arc::default(), Arc::default())
            .unwrap();
        for _ in 0..6 {
            append_one(&wal);
        }
        drop(wal);
        let segment = dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 1));
        let bytes = std::fs::read(&segment).unwrap();
        let frame = bytes.len() / 6;
        // Four bytes flipped in the third frame's payload, then in its length, then in the
        // first frame of the log.
        for at in [2 * frame + 20, 2 * frame, 20] {
            let bad = at / frame;
            let mut flipped = bytes.clone();
            for b in &mut flipped[at..at + 4] {
                *b ^= 0x5a;
            }
            std::fs::write(&segment, &flipped).unwrap();
            let e = replay_error(dir.path());
            let message = e.to_string();
            assert!(
                matches!(e, Error::WalCorrupt { offset, frames_after, .. }
                    if offset == (bad * frame) as u64 && frames_after == 5 - bad as u64),
                "{message}"
            );
            assert!(message.contains(&format!("{:020}", 1)), "{message}");
            // Nothing was cut: the operator can still copy the directory away.
            assert_eq!(std::fs::read(&segment).unwrap(), flipped);
            // Told to, replay cuts it there and counts what it drops.
            let mut seqs = Vec::new();
            let stats = WalDir::lock(dir.path())
                .unwrap()
                .replay(0, true, |e| {
                    seqs.push(e.seq);
                    Ok(())
                })
                .unwrap();
            assert_eq!(seqs, (1..=bad as u64).collect::<Vec<_>>());
            let after = 5 - bad as u64;
            assert_eq!(
                (stats.dropped_frames, stats.dropped_records),
                (after, after * records().len() as u64)
            );
            assert_eq!(
                std::fs::metadata(&segment).unwrap().len(),
                (bad * frame) as u64
            );
            std::fs::write(&segment, &flipped).unwrap();
            // With a checkpoint holding every frame after the flip, nothing is lost: cut.
            let stats = WalDir::lock(dir.path())
                .unwrap()
                .replay(6, false, |_| Ok(()))
                .unwrap();
            assert_eq!(stats.dropped_frames, 0);
            assert_eq!(
                std::fs::metadata(&segment).unwrap().len(),
                (bad * frame) as u64
            );
            std::fs::write(&segment, &bytes).unwrap();
        }
    }

    #[test]
    fn truncation_drops_only_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = WalDir::lock(dir.path())
            .unwrap()
            .start(1, Duration::ZERO, Arc::default(), Arc::default())
            .unwrap();
        let append = |n: usize| {
            for _ in 0..n {
                let (tx, rx) = mpsc::channel();
                wal.append(
                    Logged::Batch {
                        batch: records().into(),
                        checked_at: 0,
                    },
                    Arriving::default(),
                    Box::new(move |seq, _| tx.send(seq.unwrap()).unwrap()),
                );
                rx.recv().unwrap();
            }
        };
        append(3); // seqs 1..=3 in segment 1
        wal.truncate(2); // segment 1 holds 3: kept; a new segment starts at 4
        append(2); // 4, 5
        wal.truncate(3); // segment 1 goes
        append(1);
        drop(wal);
        let mut wal = WalDir::lock(dir.path()).unwrap();
        let mut seqs = Vec::new();
        wal.replay(0, false, |e| {
            seqs.push(e.seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(seqs, [4, 5, 6]);
    }
}
