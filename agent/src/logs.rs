//! Log capture and shipping: the job's stdout and stderr read line by line and written to
//! a local file, the journal (stderr, as `job` events), the serial console, and GCS as
//! ordered chunks `runs/<id>/logs/<seq>` at most one flush interval behind.
//!
//! One [`LogShipper`] task owns the buffer and the chunk sequence; readers and the agent's
//! own notes send lines to it. Chunks concatenated in name order are the whole output.
//! After an agent restart the sequence continues after the last chunk in the store. A
//! store outage keeps lines buffered (up to [`MAX_PENDING_LOG_BYTES`]); the final flush
//! says whether everything was shipped.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudrun::retry::RetryPolicy;
use cloudrun::storage::PutOptions;
use cloudrun::{Layout, RunId, Storage};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot};

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
/// Total time the final flush may spend retrying the store.
pub const FINAL_FLUSH_DEADLINE_SECS: u64 = 60;
/// Prefix of the agent's own lines in the job log.
pub const AGENT_LINE_PREFIX: &str = "[cloudrun-agent]";

/// A message to the shipper.
#[derive(Debug)]
pub enum LogMsg {
    Line(String),
    /// Ship everything now; the answer says whether all of it reached the store.
    Finish(oneshot::Sender<bool>),
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
    storage: Arc<dyn Storage>,
    layout: Layout,
    run: RunId,
    seq: u64,
    pending: Vec<u8>,
    local: Option<std::fs::File>,
    console: Option<std::sync::mpsc::SyncSender<String>>,
    echo: bool,
    failing: bool,
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
            storage,
            layout,
            run,
            seq,
            pending: Vec::new(),
            local,
            console,
            echo: sinks.echo,
            failing: false,
        }
    }

    fn accept(&mut self, line: String) {
        if let Some(f) = self.local.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        if let Some(c) = &self.console {
            let _ = c.try_send(format!("cloudrun-job: {line}\n"));
        }
        if self.echo {
            tracing::info!(target: "job", "{line}");
        }
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.push(b'\n');
        if self.pending.len() > MAX_PENDING_LOG_BYTES {
            let cut = self.pending.len() - MAX_PENDING_LOG_BYTES / 2;
            let cut = self.pending[cut..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(cut, |i| cut + i + 1);
            self.pending.drain(..cut);
            let note = format!(
                "{AGENT_LINE_PREFIX} {cut} bytes of output were dropped here: the store was unreachable for too long\n"
            );
            self.pending.splice(0..0, note.into_bytes());
        }
    }

    /// Ship one chunk of what is pending; `false` if the store refused it.
    async fn ship_one(&mut self, retry: &RetryPolicy) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let mut end = self.pending.len().min(MAX_LOG_CHUNK_BYTES);
        if end < self.pending.len() {
            if let Some(i) = self.pending[..end].iter().rposition(|b| *b == b'\n') {
                end = i + 1;
            }
        }
        let key = self.layout.log_chunk(&self.run, self.seq);
        let data = Bytes::copy_from_slice(&self.pending[..end]);
        let opts = PutOptions::default().with_content_type("text/plain; charset=utf-8");
        let storage = self.storage.clone();
        let r = retry
            .run(&format!("log chunk {key}"), |_| {
                storage.put_bytes(&key, data.clone(), &opts)
            })
            .await;
        match r {
            Ok(_) => {
                self.pending.drain(..end);
                self.seq += 1;
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

    async fn ship_all(&mut self, retry: &RetryPolicy) -> bool {
        while !self.pending.is_empty() {
            if !self.ship_one(retry).await {
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
        let periodic = RetryPolicy::none();
        let last =
            RetryPolicy::default().with_deadline(Duration::from_secs(FINAL_FLUSH_DEADLINE_SECS));
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(LogMsg::Line(l)) => {
                        self.accept(l);
                        if self.pending.len() >= MAX_LOG_CHUNK_BYTES {
                            self.ship_one(&periodic).await;
                        }
                    }
                    Some(LogMsg::Finish(tx)) => {
                        // Lines still queued behind the Finish came from nobody we wait for.
                        while let Ok(LogMsg::Line(l)) = rx.try_recv() {
                            self.accept(l);
                        }
                        let ok = self.ship_all(&last).await;
                        let _ = tx.send(ok);
                        return;
                    }
                    None => {
                        self.ship_all(&last).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.ship_all(&periodic).await;
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

/// Read `r` line by line (splitting lines longer than [`MAX_LINE_BYTES`]), sending each to
/// the shipper and marking activity. Ends at EOF.
pub fn spawn_reader<R>(
    r: R,
    tx: mpsc::Sender<LogMsg>,
    activity: Arc<Activity>,
    clock: Arc<dyn Clock>,
) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::new(r);
        let mut line: Vec<u8> = Vec::new();
        loop {
            let buf = match reader.fill_buf().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("reading the job's output: {e}");
                    break;
                }
            };
            if buf.is_empty() {
                break;
            }
            let (take, complete) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) if line.len() + i <= MAX_LINE_BYTES => (i + 1, true),
                _ => {
                    let room = MAX_LINE_BYTES - line.len();
                    let n = buf.len().min(room);
                    (n, line.len() + n >= MAX_LINE_BYTES)
                }
            };
            line.extend_from_slice(&buf[..take]);
            reader.consume(take);
            if complete {
                emit(&mut line, &tx, &activity, clock.as_ref()).await;
            }
        }
        if !line.is_empty() {
            emit(&mut line, &tx, &activity, clock.as_ref()).await;
        }
    })
}

async fn emit(
    line: &mut Vec<u8>,
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
    let _ = tx.send(LogMsg::Line(text)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use cloudrun::storage::local::LocalStorage;

    fn run() -> RunId {
        RunId::parse("20261126-071500-ab12").unwrap()
    }

    async fn all_chunks(storage: &dyn Storage, layout: &Layout) -> (usize, String) {
        let objs = storage.list(&layout.logs_prefix(&run())).await.unwrap();
        let mut text = String::new();
        for o in &objs {
            text.push_str(&String::from_utf8_lossy(
                &storage.get_bytes(&o.key).await.unwrap(),
            ));
        }
        (objs.len(), text)
    }

    #[tokio::test]
    async fn lines_reach_the_store_in_order_in_chunks_and_the_local_file() {
        let store = tempfile::tempdir().unwrap();
        let local = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(store.path()));
        let layout = Layout::new("p");
        let sinks = LogSinks {
            local_file: Some(local.path().join("job.log")),
            ..LogSinks::default()
        };
        let (tx, rx) = mpsc::channel(64);
        let shipper = LogShipper::new(storage.clone(), layout.clone(), run(), 0, &sinks);
        let task = tokio::spawn(shipper.run(rx, Duration::from_millis(100)));
        let activity = Arc::new(Activity::default());
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        let mut child = tokio::process::Command::new("sh")
            .args([
                "-c",
                "echo one; echo two >&2; sleep 0.3; printf 'three\\r\\nno newline'",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let reader = spawn_reader(
            child.stdout.take().unwrap(),
            tx.clone(),
            activity.clone(),
            clock,
        );
        reader.await.unwrap();
        child.wait().await.unwrap();
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(LogMsg::Finish(done_tx)).await.unwrap();
        assert!(done_rx.await.unwrap());
        task.await.unwrap();
        let (n, text) = all_chunks(storage.as_ref(), &layout).await;
        assert_eq!(text, "one\nthree\nno newline\n");
        assert!(n >= 2, "shipped while running, then at the end: {n} chunks");
        assert_eq!(
            std::fs::read_to_string(local.path().join("job.log")).unwrap(),
            text
        );
        assert!(activity.last().is_some());
        assert_eq!(
            next_seq(storage.as_ref(), &layout.logs_prefix(&run()), Utc::now()).await,
            n as u64
        );
    }

    #[tokio::test]
    async fn overlong_lines_are_split() {
        let (tx, mut rx) = mpsc::channel(64);
        let data = vec![b'x'; MAX_LINE_BYTES + 10];
        let r = spawn_reader(
            std::io::Cursor::new(data),
            tx,
            Arc::new(Activity::default()),
            Arc::new(TokioClock::new()),
        );
        r.await.unwrap();
        let mut lens = vec![];
        while let Ok(LogMsg::Line(l)) = rx.try_recv() {
            lens.push(l.len());
        }
        assert_eq!(lens, vec![MAX_LINE_BYTES, 10]);
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
        tx.send(LogMsg::Line("hello".into())).await.unwrap();
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(LogMsg::Finish(done_tx)).await.unwrap();
        assert!(!done_rx.await.unwrap());
        task.await.unwrap();
        assert!(next_seq(&Down, "p/runs/x/logs/", Utc::now()).await > 1_000_000_000);
    }
}
