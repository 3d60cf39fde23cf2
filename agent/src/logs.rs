//! Log capture and shipping: the job's stdout and stderr, which the job writes to two
//! files in the state dir ([`OUTPUT_DIR_NAME`]), tailed line by line and written to a
//! local file, the journal (stderr, as `job` events), the serial console, and GCS as
//! ordered chunks `runs/<id>/logs/<seq>` at most one flush interval behind, in the tagged
//! format of [`cloudrun::joblog`] (each line keeps its stream; agent lines are apart).
//!
//! One [`LogShipper`] task owns the buffer and the chunk sequence; the tails
//! ([`spawn_tail`]) and the agent's own notes send lines to it. Chunks concatenated in
//! name order are the whole output. The job's output does not depend on the agent's life:
//! the files outlive a crashed agent, and the shipper records in [`LogCursor`] how far
//! into each file the store has everything, so a restarted agent tails on from there and
//! ships every line once (the cursor names the chunk being sent before it is sent, so a
//! crash between the upload and the record is told apart from a lost upload). After a
//! restart the chunk sequence continues after the last chunk in the store. A store outage
//! keeps lines buffered (up to [`MAX_PENDING_LOG_BYTES`]); the final flush says whether
//! everything was shipped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudrun::joblog::{self, Stream};
use cloudrun::retry::Budget;
use cloudrun::run_store::RunStore;
use cloudrun::{Layout, RunId, Storage};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;

/// Longest line kept whole; longer ones (progress bars without newlines) are split.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Largest log chunk object: a chatty job ships several chunks rather than one huge one.
pub const MAX_LOG_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Most output held while the store is unreachable; beyond it the oldest half is
/// dropped (and says so), so a long outage cannot exhaust the VM's memory.
pub const MAX_PENDING_LOG_BYTES: usize = 32 * 1024 * 1024;
/// Lines queued for the serial console before new ones are dropped: at 115200 baud the
/// console is far slower than a chatty job and must never hold the job back.
pub const CONSOLE_QUEUE_LINES: usize = 1024;
/// Total time the final flush may take, every chunk and retry included (one deadline
/// handed to the storage client, not one per chunk).
pub const FINAL_FLUSH_DEADLINE_SECS: u64 = 60;
/// Prefix of the agent's own lines in the local job log and on the console.
pub const AGENT_LINE_PREFIX: &str = joblog::AGENT_LINE_PREFIX;
/// The folder in the state dir that holds the job's output files.
pub const OUTPUT_DIR_NAME: &str = "output";
/// File name of the job's stdout in [`OUTPUT_DIR_NAME`].
pub const STDOUT_FILE_NAME: &str = "stdout";
/// File name of the job's stderr in [`OUTPUT_DIR_NAME`].
pub const STDERR_FILE_NAME: &str = "stderr";
/// File name of the [`LogCursor`] in the state dir.
pub const CURSOR_FILE_NAME: &str = "log-cursor.json";
/// How often a tail looks for more output once it has read to the end, in ms: a few
/// times a second is well inside the flush interval and costs one `read` each.
pub const TAIL_POLL_MILLIS: u64 = 200;
/// Bytes read from an output file at a time.
const TAIL_READ_BYTES: usize = 64 * 1024;

/// One line for the shipper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: Stream,
    pub text: String,
    /// Where this line ends in its output file (the job's lines), for the cursor.
    pub end: Option<u64>,
}

impl LogLine {
    /// A line of the agent's own.
    pub fn agent(text: impl Into<String>) -> Self {
        LogLine {
            stream: Stream::Agent,
            text: text.into(),
            end: None,
        }
    }
}

/// A message to the shipper.
#[derive(Debug)]
pub enum LogMsg {
    Line(LogLine),
    /// Ship everything now; the answer says whether all of it reached the store.
    Finish(oneshot::Sender<bool>),
}

/// How far into each output file the store has every line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    pub stdout: u64,
    pub stderr: u64,
}

impl Offsets {
    fn get_mut(&mut self, s: Stream) -> Option<&mut u64> {
        match s {
            Stream::Stdout => Some(&mut self.stdout),
            Stream::Stderr => Some(&mut self.stderr),
            Stream::Agent => None,
        }
    }

    /// The offset of `s`'s file (0 for the agent, which has none).
    pub fn of(&self, s: Stream) -> u64 {
        match s {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
            Stream::Agent => 0,
        }
    }
}

/// The shipper's record in the state dir ([`CURSOR_FILE_NAME`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    /// Everything before these offsets is in the store.
    pub shipped: Offsets,
    /// A chunk on its way: if chunk `seq` is in the store, its offsets are shipped too.
    #[serde(default)]
    pub sending: Option<Sending>,
}

/// A chunk being uploaded, named before the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sending {
    pub seq: u64,
    pub offsets: Offsets,
}

/// The offsets to tail from after a restart: the cursor's, moved past a chunk whose
/// upload finished after the last record. A missing or damaged cursor starts at 0 (the
/// output is shipped again rather than lost).
pub async fn resume_cursor(
    storage: &Arc<dyn Storage>,
    layout: &Layout,
    run: &RunId,
    path: &Path,
) -> Offsets {
    let cursor: LogCursor = match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            tracing::warn!(
                "log cursor {} is damaged ({e}); shipping the job's output from its start",
                path.display()
            );
            LogCursor::default()
        }),
        Err(_) => LogCursor::default(),
    };
    match cursor.sending {
        Some(s) => {
            let docs = RunStore::new(Arc::clone(storage), layout.clone());
            match docs.has_log_chunk(run, s.seq).await {
                Ok(true) => s.offsets,
                _ => cursor.shipped,
            }
        }
        None => cursor.shipped,
    }
}

/// The job's output files in `state_dir`.
pub fn output_paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let d = state_dir.join(OUTPUT_DIR_NAME);
    (d.join(STDOUT_FILE_NAME), d.join(STDERR_FILE_NAME))
}

/// When the job last printed a line (the stall policy reads it).
#[derive(Debug, Default)]
pub struct Activity(Mutex<Option<DateTime<Utc>>>);

impl Activity {
    pub fn touch(&self, at: DateTime<Utc>) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none_or(|t| at > t) {
            *g = Some(at);
        }
    }

    pub fn last(&self) -> Option<DateTime<Utc>> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where lines go besides the store.
#[derive(Debug, Clone, Default)]
pub struct LogSinks {
    /// Appended to; created if missing.
    pub local_file: Option<PathBuf>,
    /// The serial console (`/dev/console`, `/dev/ttyS0`), best effort.
    pub console: Option<PathBuf>,
    /// Also log each line as a `job` tracing event (stderr, hence the journal).
    pub echo: bool,
}

/// The first chunk sequence number free under `prefix`: one past the highest present, so
/// a restarted agent never overwrites a chunk. When the listing fails, the current Unix
/// time in seconds, which sorts after any count a run reaches.
pub async fn next_seq(storage: &dyn Storage, prefix: &str, now: DateTime<Utc>) -> u64 {
    match storage.list(prefix).await {
        Ok(objs) => objs
            .iter()
            .filter_map(|o| Layout::chunk_seq(&o.key))
            .max()
            .map_or(0, |m| m + 1),
        Err(e) => {
            tracing::warn!("listing {prefix} to continue its numbering: {e}");
            now.timestamp().max(0) as u64
        }
    }
}

/// The log shipping task's state.
#[derive(Debug)]
pub struct LogShipper {
    docs: RunStore,
    run: RunId,
    seq: u64,
    pending: Vec<u8>,
    local: Option<std::fs::File>,
    console: Option<std::sync::mpsc::SyncSender<String>>,
    echo: bool,
    failing: bool,
    /// Where the cursor is kept; `None` keeps no record.
    cursor_path: Option<PathBuf>,
    shipped: Offsets,
    /// (end of a job line in `pending`, its stream, its end in its file), in order.
    marks: Vec<(usize, Stream, u64)>,
}

impl LogShipper {
    /// A shipper that writes chunk `seq` next.
    pub fn new(
        storage: Arc<dyn Storage>,
        layout: Layout,
        run: RunId,
        seq: u64,
        sinks: &LogSinks,
    ) -> Self {
        let local = sinks.local_file.as_ref().and_then(|p| {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| tracing::warn!("job log file {}: {e}", p.display()))
                .ok()
        });
        let console = sinks
            .console
            .as_ref()
            .and_then(|p| console_writer(p.clone()));
        LogShipper {
            docs: RunStore::new(storage, layout),
            run,
            seq,
            pending: Vec::new(),
            local,
            console,
            echo: sinks.echo,
            failing: false,
            cursor_path: None,
            shipped: Offsets::default(),
            marks: Vec::new(),
        }
    }

    /// Keep the cursor in `path`, starting from `shipped` (where the tails start).
    pub fn with_cursor(mut self, path: PathBuf, shipped: Offsets) -> Self {
        self.cursor_path = Some(path);
        self.shipped = shipped;
        self
    }

    fn save_cursor(&self, sending: Option<Sending>) {
        let Some(p) = &self.cursor_path else {
            return;
        };
        let c = LogCursor {
            shipped: self.shipped,
            sending,
        };
        if let Err(e) = crate::transfer::save_json(p, &c) {
            tracing::warn!("could not save the log cursor {}: {e}", p.display());
        }
    }

    fn accept(&mut self, line: LogLine) {
        let shown = match line.stream {
            Stream::Agent => format!("{AGENT_LINE_PREFIX} {}", line.text),
            _ => line.text.clone(),
        };
        if let Some(f) = self.local.as_mut() {
            let _ = writeln!(f, "{shown}");
        }
        if let Some(c) = &self.console {
            let _ = c.try_send(format!("cloudrun-job: {shown}\n"));
        }
        if self.echo {
            tracing::info!(target: "job", "{shown}");
        }
        joblog::encode_line(line.stream, &line.text, &mut self.pending);
        if let Some(end) = line.end {
            self.marks.push((self.pending.len(), line.stream, end));
        }
        if self.pending.len() > MAX_PENDING_LOG_BYTES {
            let cut = self.pending.len() - MAX_PENDING_LOG_BYTES / 2;
            let cut = self.pending[cut..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(cut, |i| cut + i + 1);
            self.pending.drain(..cut);
            let mut note = Vec::new();
            joblog::encode_line(
                Stream::Agent,
                &format!("{cut} bytes of output were dropped here: the store was unreachable for too long"),
                &mut note,
            );
            let n = note.len();
            self.pending.splice(0..0, note);
            // Dropped lines count as handled: they go out with the note.
            for m in &mut self.marks {
                m.0 = m.0.saturating_sub(cut) + n;
            }
        }
    }

    /// The offsets once `pending[..end]` is in the store.
    fn offsets_through(&self, end: usize) -> Offsets {
        let mut o = self.shipped;
        for (pos, stream, at) in &self.marks {
            if *pos > end {
                break;
            }
            if let Some(v) = o.get_mut(*stream) {
                *v = (*v).max(*at);
            }
        }
        o
    }

    /// Ship one chunk of what is pending; `false` if the store refused it.
    async fn ship_one(&mut self, budget: Budget) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let mut end = self.pending.len().min(MAX_LOG_CHUNK_BYTES);
        if end < self.pending.len() {
            if let Some(i) = self.pending[..end].iter().rposition(|b| *b == b'\n') {
                end = i + 1;
            }
        }
        let key = self.docs.layout.log_chunk(&self.run, self.seq);
        let mut chunk = joblog::chunk_header();
        chunk.extend_from_slice(&self.pending[..end]);
        let data = Bytes::from(chunk);
        let offsets = self.offsets_through(end);
        let moves = offsets != self.shipped;
        if moves {
            self.save_cursor(Some(Sending {
                seq: self.seq,
                offsets,
            }));
        }
        let r = self
            .docs
            .put_log_chunk(&self.run, self.seq, data, budget)
            .await;
        match r {
            Ok(_) => {
                self.pending.drain(..end);
                self.marks.retain_mut(|m| {
                    m.0 = m.0.saturating_sub(end);
                    m.0 > 0
                });
                self.seq += 1;
                if moves {
                    self.shipped = offsets;
                    self.save_cursor(None);
                }
                if self.failing {
                    tracing::info!("log shipping works again");
                    self.failing = false;
                }
                true
            }
            Err(e) => {
                if !self.failing {
                    tracing::warn!("shipping logs to {key}: {e}; keeping them buffered");
                    self.failing = true;
                }
                false
            }
        }
    }

    async fn ship_all(&mut self, budget: Budget) -> bool {
        while !self.pending.is_empty() {
            if !self.ship_one(budget).await {
                return false;
            }
        }
        true
    }

    /// Run until [`LogMsg::Finish`] or until every sender is gone, shipping every
    /// `flush_every`.
    pub async fn run(mut self, mut rx: mpsc::Receiver<LogMsg>, flush_every: Duration) {
        let mut tick = tokio::time::interval(flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The next tick repeats a periodic write, so it gets one attempt; the final
        // flush gets one deadline for all its chunks, counted from when it starts.
        let periodic = Budget::once();
        let last = || Budget::within(Duration::from_secs(FINAL_FLUSH_DEADLINE_SECS));
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(LogMsg::Line(l)) => {
                        self.accept(l);
                        if self.pending.len() >= MAX_LOG_CHUNK_BYTES {
                            self.ship_one(periodic).await;
                        }
                    }
                    Some(LogMsg::Finish(tx)) => {
                        // Lines still queued behind the Finish came from nobody we wait for.
                        while let Ok(LogMsg::Line(l)) = rx.try_recv() {
                            self.accept(l);
                        }
                        let ok = self.ship_all(last()).await;
                        let _ = tx.send(ok);
                        return;
                    }
                    None => {
                        self.ship_all(last()).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.ship_all(periodic).await;
                }
            }
        }
    }
}

/// A thread that writes to the console, fed through a bounded queue that drops lines
/// rather than block.
fn console_writer(path: PathBuf) -> Option<std::sync::mpsc::SyncSender<String>> {
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).ok()?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<String>(CONSOLE_QUEUE_LINES);
    std::thread::Builder::new()
        .name("cloudrun-console".into())
        .spawn(move || {
            for line in rx {
                if f.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        })
        .ok()?;
    Some(tx)
}

/// One output file being tailed: where it is and how far it has been read.
#[derive(Debug)]
struct Tail {
    path: PathBuf,
    read: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// The tails of the job's stdout and stderr files, from agent start to teardown (the
/// setup and the job append to the same two files).
#[derive(Debug)]
pub struct Tails {
    stop: CancellationToken,
    tails: Vec<Tail>,
}

impl Tails {
    /// Tail `stdout` and `stderr` from `from`, sending lines to `tx`.
    pub fn start(
        (stdout, stderr): (PathBuf, PathBuf),
        from: Offsets,
        tx: mpsc::Sender<LogMsg>,
        activity: Arc<Activity>,
        clock: Arc<dyn Clock>,
    ) -> Tails {
        let stop = CancellationToken::new();
        let tails = [(stdout, Stream::Stdout), (stderr, Stream::Stderr)]
            .into_iter()
            .map(|(path, stream)| {
                let read = Arc::new(AtomicU64::new(from.of(stream)));
                let task = tokio::spawn(tail(
                    path.clone(),
                    stream,
                    read.clone(),
                    tx.clone(),
                    activity.clone(),
                    clock.clone(),
                    stop.clone(),
                ));
                Tail { path, read, task }
            })
            .collect();
        Tails { stop, tails }
    }

    /// Wait (up to `limit`) until every line written so far has been read: called when a
    /// process ends, so its last lines come before what the agent says next.
    pub async fn catch_up(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        for t in &self.tails {
            let len = std::fs::metadata(&t.path).map_or(0, |m| m.len());
            while t.read.load(Ordering::SeqCst) < len && !t.task.is_finished() {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!("the job's output is still being read after {limit:?}");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(TAIL_POLL_MILLIS / 4)).await;
            }
        }
    }

    /// Read what is left (up to `limit`), then stop.
    pub async fn finish(self, limit: Duration) {
        self.stop.cancel();
        for t in self.tails {
            let mut task = t.task;
            if tokio::time::timeout(limit, &mut task).await.is_err() {
                tracing::warn!("stopped reading {} before its end", t.path.display());
                task.abort();
            }
        }
    }
}

/// Follow `path` from `read`'s offset to its end and on, line by line (splitting lines
/// longer than [`MAX_LINE_BYTES`]), until `stop` and the end are both reached. A file
/// that shrank (truncated by the job) is read again from its start.
async fn tail(
    path: PathBuf,
    stream: Stream,
    read: Arc<AtomicU64>,
    tx: mpsc::Sender<LogMsg>,
    activity: Arc<Activity>,
    clock: Arc<dyn Clock>,
    stop: CancellationToken,
) {
    let mut file: Option<tokio::fs::File> = None;
    let mut pos = read.load(Ordering::SeqCst);
    let mut line: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; TAIL_READ_BYTES];
    loop {
        let stopping = stop.is_cancelled();
        if file.is_none() {
            match tokio::fs::File::open(&path).await {
                Ok(mut f) => match f.seek(std::io::SeekFrom::Start(pos)).await {
                    Ok(_) => file = Some(f),
                    Err(e) => tracing::warn!("seeking in {}: {e}", path.display()),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!("opening {}: {e}", path.display()),
            }
        }
        let n = match file.as_mut() {
            Some(f) => match f.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("reading {}: {e}", path.display());
                    0
                }
            },
            None => 0,
        };
        if n == 0 {
            let len = tokio::fs::metadata(&path).await.map_or(pos, |m| m.len());
            if len < pos {
                tracing::warn!(
                    "{} shrank from {pos} to {len} bytes; reading it again from the start",
                    path.display()
                );
                pos = 0;
                line.clear();
                read.store(0, Ordering::SeqCst);
                file = None;
                continue;
            }
            if stopping {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_millis(TAIL_POLL_MILLIS)) => {}
            }
            continue;
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (take, complete) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) if line.len() + i <= MAX_LINE_BYTES => (i + 1, true),
                _ => {
                    let room = MAX_LINE_BYTES - line.len();
                    let k = rest.len().min(room);
                    (k, line.len() + k >= MAX_LINE_BYTES)
                }
            };
            line.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            pos += take as u64;
            if complete {
                emit(&mut line, stream, pos, &tx, &activity, clock.as_ref()).await;
            }
        }
        // Read, though a partial line is held until its end (or the stop); the cursor
        // only ever moves past shipped lines, so a restarted agent reads it again.
        read.store(pos, Ordering::SeqCst);
    }
    if !line.is_empty() {
        emit(&mut line, stream, pos, &tx, &activity, clock.as_ref()).await;
    }
    read.store(pos, Ordering::SeqCst);
}

async fn emit(
    line: &mut Vec<u8>,
    stream: Stream,
    end: u64,
    tx: &mpsc::Sender<LogMsg>,
    activity: &Activity,
    clock: &dyn Clock,
) {
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    activity.touch(clock.now());
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    let _ = tx
        .send(LogMsg::Line(LogLine {
            stream,
            text,
            end: Some(end),
        }))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use cloudrun::storage::local::LocalStorage;
    use cloudrun::storage::PutOptions;

    fn run() -> RunId {
        RunId::parse("20261126-071500-ab12").unwrap()
    }

    /// Every line of every chunk, decoded, as `(tag, text)`.
    async fn all_lines(storage: &dyn Storage, layout: &Layout) -> Vec<(char, String)> {
        let objs = storage.list(&layout.logs_prefix(&run())).await.unwrap();
        let mut lines = vec![];
        for o in &objs {
            let b = storage.get_bytes(&o.key).await.unwrap();
            assert!(
                b.starts_with(joblog::CHUNK_HEADER.as_bytes()),
                "{:?}",
                o.key
            );
            for l in joblog::decode_chunk(&b) {
                lines.push((l.stream.map_or('?', Stream::tag), l.text));
            }
        }
        lines
    }

    fn append(path: &Path, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    async fn finish(tx: &mpsc::Sender<LogMsg>) -> bool {
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(LogMsg::Finish(done_tx)).await.unwrap();
        done_rx.await.unwrap()
    }

    #[tokio::test]
    async fn lines_reach_the_store_in_order_with_their_stream_and_the_local_file() {
        let store = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(store.path()));
        let layout = Layout::new("p");
        let sinks = LogSinks {
            local_file: Some(state.path().join("job.log")),
            ..LogSinks::default()
        };
        let paths = output_paths(state.path());
        std::fs::create_dir_all(paths.0.parent().unwrap()).unwrap();
        let (tx, rx) = mpsc::channel(64);
        let shipper = LogShipper::new(storage.clone(), layout.clone(), run(), 0, &sinks)
            .with_cursor(state.path().join(CURSOR_FILE_NAME), Offsets::default());
        let task = tokio::spawn(shipper.run(rx, Duration::from_millis(100)));
        let activity = Arc::new(Activity::default());
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        let tails = Tails::start(
            paths.clone(),
            Offsets::default(),
            tx.clone(),
            activity.clone(),
            clock,
        );
        append(&paths.0, "one\n");
        tokio::time::sleep(Duration::from_millis(600)).await;
        append(&paths.1, "two\n");
        tails.catch_up(Duration::from_secs(5)).await;
        tx.send(LogMsg::Line(LogLine::agent("a note")))
            .await
            .unwrap();
        append(&paths.0, "three\r\nno newline");
        tails.finish(Duration::from_secs(5)).await;
        assert!(finish(&tx).await);
        task.await.unwrap();
        let lines = all_lines(storage.as_ref(), &layout).await;
        let got: Vec<(char, &str)> = lines.iter().map(|(t, l)| (*t, l.as_str())).collect();
        assert_eq!(
            got,
            [
                ('1', "one"),
                ('2', "two"),
                ('@', "a note"),
                ('1', "three"),
                ('1', "no newline")
            ]
        );
        let n = storage
            .list(&layout.logs_prefix(&run()))
            .await
            .unwrap()
            .len();
        assert!(n >= 2, "shipped while running, then at the end: {n} chunks");
        assert_eq!(
            std::fs::read_to_string(state.path().join("job.log")).unwrap(),
            "one\ntwo\n[cloudrun-agent] a note\nthree\nno newline\n"
        );
        assert!(activity.last().is_some());
        assert_eq!(
            next_seq(storage.as_ref(), &layout.logs_prefix(&run()), Utc::now()).await,
            n as u64
        );
        let c: LogCursor =
            serde_json::from_slice(&std::fs::read(state.path().join(CURSOR_FILE_NAME)).unwrap())
                .unwrap();
        assert_eq!(
            c.shipped,
            Offsets {
                stdout: std::fs::metadata(&paths.0).unwrap().len(),
                stderr: 4
            }
        );
        assert_eq!(c.sending, None);
    }

    #[tokio::test]
    async fn a_restarted_agent_ships_every_line_of_the_files_once() {
        let store = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(store.path()));
        let layout = Layout::new("p");
        let paths = output_paths(state.path());
        std::fs::create_dir_all(paths.0.parent().unwrap()).unwrap();
        let cursor = state.path().join(CURSOR_FILE_NAME);
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        let mut expected = vec![];
        let mut next = 0;
        for life in 0..3 {
            let from = resume_cursor(&storage, &layout, &run(), &cursor).await;
            let seq = next_seq(storage.as_ref(), &layout.logs_prefix(&run()), Utc::now()).await;
            let (tx, rx) = mpsc::channel(64);
            let shipper = LogShipper::new(
                storage.clone(),
                layout.clone(),
                run(),
                seq,
                &LogSinks::default(),
            )
            .with_cursor(cursor.clone(), from);
            let task = tokio::spawn(shipper.run(rx, Duration::from_millis(50)));
            let tails = Tails::start(
                paths.clone(),
                from,
                tx.clone(),
                Arc::new(Activity::default()),
                clock.clone(),
            );
            for _ in 0..5 {
                next += 1;
                append(&paths.0, &format!("step {next}\n"));
                expected.push(format!("step {next}"));
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            // Half a line when the agent dies: read again, whole, by the next one.
            next += 1;
            append(&paths.0, &format!("step {next}"));
            tokio::time::sleep(Duration::from_millis(300)).await;
            append(&paths.0, "\n");
            expected.push(format!("step {next}"));
            if life < 2 {
                // The agent is killed: nothing is flushed, the tasks just stop.
                task.abort();
                let _ = task.await;
                tails.finish(Duration::from_millis(1)).await;
            } else {
                tails.finish(Duration::from_secs(5)).await;
                assert!(finish(&tx).await);
                task.await.unwrap();
            }
        }
        let lines: Vec<String> = all_lines(storage.as_ref(), &layout)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(lines, expected);
    }

    #[tokio::test]
    async fn a_chunk_sent_just_before_a_crash_is_not_sent_again() {
        let store = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(store.path()));
        let layout = Layout::new("p");
        let cursor = state.path().join(CURSOR_FILE_NAME);
        let sent = Offsets {
            stdout: 10,
            stderr: 3,
        };
        let c = LogCursor {
            shipped: Offsets::default(),
            sending: Some(Sending {
                seq: 4,
                offsets: sent,
            }),
        };
        crate::transfer::save_json(&cursor, &c).unwrap();
        assert_eq!(
            resume_cursor(&storage, &layout, &run(), &cursor).await,
            Offsets::default(),
            "chunk 4 never arrived: ship from the last record"
        );
        storage
            .put_bytes(
                &layout.log_chunk(&run(), 4),
                Bytes::from_static(b"#cloudrun-log 2\n"),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(
            resume_cursor(&storage, &layout, &run(), &cursor).await,
            sent
        );
        std::fs::write(&cursor, "{torn").unwrap();
        assert_eq!(
            resume_cursor(&storage, &layout, &run(), &cursor).await,
            Offsets::default()
        );
    }

    #[tokio::test]
    async fn overlong_lines_are_split() {
        let state = tempfile::tempdir().unwrap();
        let paths = output_paths(state.path());
        std::fs::create_dir_all(paths.0.parent().unwrap()).unwrap();
        std::fs::write(&paths.0, vec![b'x'; MAX_LINE_BYTES + 10]).unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let tails = Tails::start(
            paths,
            Offsets::default(),
            tx,
            Arc::new(Activity::default()),
            Arc::new(TokioClock::new()),
        );
        tails.finish(Duration::from_secs(5)).await;
        let mut lens = vec![];
        while let Ok(LogMsg::Line(l)) = rx.try_recv() {
            lens.push((l.text.len(), l.end));
        }
        assert_eq!(
            lens,
            vec![
                (MAX_LINE_BYTES, Some(MAX_LINE_BYTES as u64)),
                (10, Some(MAX_LINE_BYTES as u64 + 10))
            ]
        );
    }

    #[derive(Debug)]
    struct Down;
    #[async_trait::async_trait]
    impl Storage for Down {
        fn describe(&self) -> String {
            "down".into()
        }
        async fn put_bytes(
            &self,
            k: &str,
            _: Bytes,
            _: &PutOptions,
        ) -> Result<cloudrun::ObjectMeta, cloudrun::StorageError> {
            Err(cloudrun::StorageError::NotFound { key: k.into() })
        }
        async fn put_file(
            &self,
            k: &str,
            _: &std::path::Path,
            _: &PutOptions,
        ) -> Result<cloudrun::ObjectMeta, cloudrun::StorageError> {
            Err(cloudrun::StorageError::NotFound { key: k.into() })
        }
        async fn get_stream(
            &self,
            k: &str,
            _: Option<(u64, Option<u64>)>,
        ) -> Result<cloudrun::storage::ByteStream, cloudrun::StorageError> {
            Err(cloudrun::StorageError::NotFound { key: k.into() })
        }
        async fn head(
            &self,
            _: &str,
        ) -> Result<Option<cloudrun::ObjectMeta>, cloudrun::StorageError> {
            Ok(None)
        }
        async fn list(&self, k: &str) -> Result<Vec<cloudrun::ObjectMeta>, cloudrun::StorageError> {
            Err(cloudrun::StorageError::NotFound { key: k.into() })
        }
        async fn delete(&self, _: &str) -> Result<bool, cloudrun::StorageError> {
            Ok(false)
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_makes_the_final_flush_report_failure() {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(
            LogShipper::new(
                Arc::new(Down),
                Layout::new("p"),
                run(),
                0,
                &LogSinks::default(),
            )
            .run(rx, Duration::from_millis(50)),
        );
        tx.send(LogMsg::Line(LogLine::agent("hello")))
            .await
            .unwrap();
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(LogMsg::Finish(done_tx)).await.unwrap();
        assert!(!done_rx.await.unwrap());
        task.await.unwrap();
        assert!(next_seq(&Down, "p/runs/x/logs/", Utc::now()).await > 1_000_000_000);
    }
}
