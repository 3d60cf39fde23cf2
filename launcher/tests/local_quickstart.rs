//! `--local` end to end with the real binaries: the README's first command (the
//! quickstart through `scripts/quickstart.sh`), and bad input that must be refused with a
//! message naming the fix while an earlier run stays untouched. Every test runs with a
//! temporary HOME and XDG dirs, so nothing touches the real user's data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a local run may take to show up as running, in seconds (agent start + pull).
const RUN_START_SECS: u64 = 60;

#[path = "support/agent.rs"]
mod agent;
use agent::agent_binary;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cloudrun-launch"))
}

/// The target dir the test binaries were built into (`<target>/debug/cloudrun-launch`).
fn target_dir() -> PathBuf {
    launcher()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf()
}

/// A temporary HOME with XDG dirs inside it.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.path().join("data/cloudrun/store")
    }

    /// A command with this HOME, no cloud settings, and rustup/cargo still found.
    fn command(&self, program: &Path) -> Command {
        let real_home = std::env::var("HOME").unwrap_or_default();
        let mut c = Command::new(program);
        for var in [
            "GCS_DIR",
            "GCP_ACCOUNT",
            "GCLOUD_PROJECT",
            "VM_INSTANCE",
            "VM_USER",
            "CLOUDRUN_PROVIDER",
            "STORAGE_EMULATOR_HOST",
        ] {
            c.env_remove(var);
        }
        c.env("CLOUDRUN_AGENT_BINARY", agent_binary());
        c.env(
            "RUSTUP_HOME",
            std::env::var("RUSTUP_HOME").unwrap_or(format!("{real_home}/.rustup")),
        )
        .env(
            "CARGO_HOME",
            std::env::var("CARGO_HOME").unwrap_or(format!("{real_home}/.cargo")),
        )
        .env("HOME", self.path())
        .env("XDG_DATA_HOME", self.path().join("data"))
        .env("XDG_CONFIG_HOME", self.path().join("config"))
        .env("XDG_CACHE_HOME", self.path().join("cache"))
        .env("CARGO_TARGET_DIR", target_dir());
        c
    }

    fn launch(&self, cwd: &Path, args: &[&str]) -> Output {
        self.command(&launcher())
            .current_dir(cwd)
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The run id from the launch summary's `run      <id>` line.
fn run_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no run line in {stdout}"))
}

/// The README's first command: the first line of its first ```sh block.
fn readme_first_command() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let block = readme.split("```sh\n").nth(1).expect("a ```sh block");
    let line = block.lines().next().unwrap();
    line.split('#').next().unwrap().trim().to_string()
}

fn status_json(home: &Home, cwd: &Path, run: &str) -> serde_json::Value {
    let out = home.launch(cwd, &["--local", "status", run, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn store_runs(home: &Home) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.store().join("runs"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn readme_first_command_runs_the_quickstart_end_to_end() {
    let cmd = readme_first_command();
    assert_eq!(
        cmd, "scripts/quickstart.sh",
        "the README's first command changed"
    );
    let home = Home::new();
    let root = repo_root();
    let started = Instant::now();
    // The same command, pointed at the binaries this test build already made.
    let out = home
        .command(Path::new("bash"))
        .current_dir(&root)
        .arg("-c")
        .arg(&cmd)
        .env("CLOUDRUN_BIN_DIR", launcher().parent().unwrap())
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("quickstart took {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("epoch 8/8"), "live logs: {stdout}");
    // A local run costs nothing, and the receipt says so (not "billed 1m 00s at $0.00/h").
    assert!(
        stdout.contains("receipt: local run, no charge (ran "),
        "receipt: {stdout}"
    );
    assert!(!stdout.contains("billed"), "receipt: {stdout}");
    let run = run_id(&stdout);

    // Every checkpoint in the store came back byte for byte.
    let outputs = home
        .store()
        .join("runs")
        .join(&run)
        .join("outputs/checkpoint");
    let mut n = 0;
    for e in std::fs::read_dir(&outputs).unwrap().flatten() {
        let name = e.file_name();
        let pulled = root.join("examples/quickstart/checkpoint").join(&name);
        assert_eq!(
            std::fs::read(e.path()).unwrap(),
            std::fs::read(&pulled).unwrap(),
            "{} differs from the store",
            pulled.display()
        );
        n += 1;
    }
    assert_eq!(n, 8, "one checkpoint per epoch");

    let s = status_json(&home, &root, &run);
    assert_eq!(s["status"]["end"]["reason"], "succeeded", "{s:#}");
    assert_eq!(s["status"]["vm"], "local_exit", "{s:#}");
    assert_eq!(s["vm"]["alive"], false, "{s:#}");
    assert_eq!(s["spec"]["placement"]["provider"], "local");

    // The report draws the phases the real agent recorded, and says why there is no
    // utilisation line on a machine without nvidia-smi output.
    let svg = home.path().join("report.svg");
    let out = home.launch(
        &root,
        &["--local", "report", &run, "--out", svg.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let svg = std::fs::read_to_string(&svg).unwrap();
    for needle in ["pull ", "training ", "final sync ", "GPU utilisation"] {
        assert!(svg.contains(needle), "{needle:?} missing from {svg}");
    }
}

/// A project whose job runs until stopped, for the live-run cases.
fn slow_project(dir: &Path) {
    std::fs::create_dir_all(dir.join("checkpoint")).unwrap();
    std::fs::write(
        dir.join("main.py"),
        "import time\nprint('started', flush=True)\ntime.sleep(120)\n",
    )
    .unwrap();
}

fn wait_running(home: &Home, cwd: &Path, run: &str) {
    let deadline = Instant::now() + Duration::from_secs(RUN_START_SECS);
    while Instant::now() < deadline {
        let s = status_json(home, cwd, run);
        if s["phase"] == "running" {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("run {run} never started");
}

#[test]
fn bad_input_is_refused_with_the_fix_and_an_earlier_run_is_untouched() {
    let home = Home::new();
    let work = home.path().join("proj");
    slow_project(&work);

    // An earlier run, still going.
    let first = home.launch(&work, &["--local", "main.py"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let run = run_id(&text(&first.stdout));
    wait_running(&home, &work, &run);
    let spec_before = std::fs::read(home.store().join(format!("runs/{run}/spec.json"))).unwrap();
    let runs_before = store_runs(&home);

    let refused = |args: &[&str], cwd: &Path, needle: &str| {
        let out = home.launch(cwd, args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(store_runs(&home), runs_before, "{args:?} created a run");
        err
    };

    // 1. A script that does not exist.
    refused(
        &["--local", "nope.py"],
        &work,
        "script \"nope.py\" not found in the project folder",
    );
    // 2. Outside a project folder: the home directory would upload everything in it.
    std::fs::write(home.path().join("main.py"), "print(1)\n").unwrap();
    let err = refused(
        &["--local", "main.py"],
        home.path(),
        "is not a project folder",
    );
    assert!(err.contains("-C DIR"), "{err}");
    // 3. A broken cloudrun.toml, named with what is wrong.
    let broken = home.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("main.py"), "print(1)\n").unwrap();
    std::fs::write(broken.join("cloudrun.toml"), "epochs = 3\n[env\n").unwrap();
    refused(
        &["--local", "main.py"],
        &broken,
        "cloudrun.toml is not a valid",
    );
    // 4. A second local run of the same project while the first is going.
    let err = refused(&["--local", "main.py"], &work, "is still running locally");
    assert!(err.contains(&format!("stop {run}")), "{err}");
    // 5. A bucket given as the store of a local run.
    refused(
        &["--local", "--gcs-dir", "gs://my-bucket/x", "main.py"],
        &work,
        "pass --gcs-dir file:///path",
    );

    // The earlier run is untouched and still running.
    let s = status_json(&home, &work, &run);
    assert_eq!(s["phase"], "running", "{s:#}");
    assert_eq!(s["vm"]["alive"], true, "{s:#}");
    assert_eq!(
        std::fs::read(home.store().join(format!("runs/{run}/spec.json"))).unwrap(),
        spec_before
    );

    // stop --now kills the local agent and its job, and records the end.
    let out = home.launch(&work, &["--local", "stop", &run, "--now"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("killed the local agent"), "{said}");
    // It names the run it is about to end, and where that run came from.
    assert!(
        said.contains(&format!("ending run {run} (")) && said.contains("launched from"),
        "{said}"
    );
    let s = status_json(&home, &work, &run);
    assert_eq!(s["vm"]["alive"], false, "{s:#}");
    assert_eq!(s["status"]["end"]["reason"], "stopped", "{s:#}");
    assert_eq!(s["status"]["vm"], "local_exit", "{s:#}");
    // ... and a new run of the project is accepted again (dry run: nothing started).
    let out = home.launch(&work, &["--local", "--dry-run", "main.py"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Live processes (not zombies) in session `sid`.
fn session_members(sid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            cloudrun::procfs::stat_fields(*pid).is_some_and(|f| {
                f.first().map(String::as_str) != Some("Z")
                    && f.get(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid)
            })
        })
        .collect()
}

#[test]
fn a_killed_local_agent_shows_its_run_as_lost_and_sweep_closes_it() {
    let home = Home::new();
    let work = home.path().join("proj");
    slow_project(&work);
    let first = home.launch(&work, &["--local", "main.py"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let run = run_id(&text(&first.stdout));
    wait_running(&home, &work, &run);
    let s = status_json(&home, &work, &run);
    let pid = s["vm"]["local_pid"].as_i64().unwrap() as i32;

    // The agent dies (OOM killer, a crash); its job lives on in the session.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(RUN_START_SECS);
    while status_json(&home, &work, &run)["vm"]["alive"] != false {
        assert!(Instant::now() < deadline, "the agent never died");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every view says the run is lost, not running.
    let table = text(&home.launch(&work, &["--local", "status"]).stdout);
    let row = table.lines().find(|l| l.starts_with(&run)).unwrap();
    assert!(row.contains("lost") && !row.contains("running"), "{table}");
    assert!(row.contains("sweep --yes"), "{row}");
    // A local store has no VMs to check, and says nothing about it.
    assert!(!table.contains("VM check skipped"), "{table}");
    let one = text(&home.launch(&work, &["--local", "status", &run]).stdout);
    assert!(
        one.contains("phase    lost (agent gone; was running)"),
        "{one}"
    );
    assert!(one.contains("cost     none (local run)"), "{one}");
    assert!(
        !one.lines()
            .any(|l| l.starts_with("gpu now") && l[7..].trim_start().starts_with("at ")),
        "a gpu now line without readings: {one}"
    );
    let ls = text(&home.launch(&work, &["--local", "ls"]).stdout);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&run) && l.contains("lost")),
        "{ls}"
    );
    assert_eq!(status_json(&home, &work, &run)["phase"], "lost");

    // sweep lists it, and --yes closes it with a final status and ends its job.
    let dry = text(&home.launch(&work, &["--local", "sweep"]).stdout);
    assert!(
        dry.contains(&format!("run {run}")) && dry.contains("closed as lost"),
        "{dry}"
    );
    assert!(
        !session_members(pid).is_empty(),
        "the job should still be running"
    );
    let out = home.launch(&work, &["--local", "sweep", "--yes"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("recorded it as lost"),
        "{}",
        text(&out.stdout)
    );
    let s = status_json(&home, &work, &run);
    assert_eq!(s["phase"], "ended", "{s:#}");
    assert_eq!(s["status"]["end"]["reason"], "lost", "{s:#}");
    assert_eq!(s["status"]["vm"], "local_exit", "{s:#}");
    let deadline = Instant::now() + Duration::from_secs(RUN_START_SECS);
    while !session_members(pid).is_empty() {
        assert!(Instant::now() < deadline, "the lost run's job still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let again = text(&home.launch(&work, &["--local", "sweep", "--yes"]).stdout);
    assert!(again.contains("nothing to sweep"), "{again}");

    // `stop` of a run whose agent is gone closes it too, instead of asking no one.
    let second = home.launch(&work, &["--local", "main.py"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let run = run_id(&text(&second.stdout));
    wait_running(&home, &work, &run);
    let pid = status_json(&home, &work, &run)["vm"]["local_pid"]
        .as_i64()
        .unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(RUN_START_SECS);
    while status_json(&home, &work, &run)["vm"]["alive"] != false {
        assert!(Instant::now() < deadline, "the agent never died");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = text(&home.launch(&work, &["--local", "stop", "latest"]).stdout);
    assert!(
        out.contains(&format!("run {run}")) && out.contains("recorded it as lost"),
        "{out}"
    );
    assert_eq!(
        status_json(&home, &work, &run)["status"]["end"]["reason"],
        "lost"
    );
}

#[test]
fn local_launches_of_one_project_at_the_same_moment_start_one_run() {
    const LAUNCHES: usize = 3;
    let home = Home::new();
    let work = home.path().join("proj");
    slow_project(&work);
    let children: Vec<_> = (0..LAUNCHES)
        .map(|_| {
            home.command(&launcher())
                .current_dir(&work)
                .args(["--local", "main.py"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let started: Vec<String> = outs
        .iter()
        .filter(|o| o.status.success())
        .map(|o| run_id(&text(&o.stdout)))
        .collect();
    // Clean up whatever started before judging.
    for run in &started {
        home.launch(&work, &["--local", "stop", run, "--now"]);
    }
    assert_eq!(
        started.len(),
        1,
        "{} of {LAUNCHES} simultaneous launches started a run: {:?}",
        started.len(),
        outs.iter().map(|o| text(&o.stderr)).collect::<Vec<_>>()
    );
    for o in outs.iter().filter(|o| !o.status.success()) {
        assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("is still running locally"),
            "{}",
            text(&o.stderr)
        );
    }
}
