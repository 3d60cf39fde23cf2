//! Whole-run tests of the supervisor and teardown against in-process fakes: the store is a
//! `LocalStorage` in a tempdir, Compute a fake that records every call (and what the
//! store held at the delete), the GPU a scripted probe, metadata an axum server. Jobs are
//! real `sh -c` processes. Windows are seconds long, or run under tokio's paused clock.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cloudrun::compute::{AttachedDisk, Compute, ComputeError, Image, Instance, Operation};
use cloudrun::spec::RunSpec;
use cloudrun::status::{EndReason, InstanceRef, Phase, RunStatus, StopRequest, VmFate};
use cloudrun::storage::local::LocalStorage;
use cloudrun::{Layout, Storage};

use crate::agent::{run_agent, Deps, Outcome, Settings, VmHandle};
use crate::clock::TokioClock;
use crate::gpu::{GpuProbe, GpuState};
use crate::logs::LogSinks;
use crate::state::{self, AgentState, Stage};
use crate::transfer::{CodeSource, OutputPass, Outputs};
use cloudrun::status::GpuReading;

#[derive(Debug)]
struct ScriptedGpu(Mutex<GpuState>);

#[async_trait]
impl GpuProbe for ScriptedGpu {
    async fn probe(&self) -> GpuState {
        self.0.lock().unwrap().clone()
    }
}

fn gpus(util: f64, n: u32) -> GpuState {
    GpuState::Readings(
        (0..n)
            .map(|i| GpuReading {
                index: i,
                name: "NVIDIA H100 80GB HBM3".into(),
                util_gpu_pct: Some(util),
                ..GpuReading::default()
            })
            .collect(),
    )
}

#[derive(Debug)]
struct StaticCode(Result<Vec<(&'static str, &'static str)>, String>);

#[async_trait]
impl CodeSource for StaticCode {
    async fn pull(&self, dest: &Path) -> Result<String, String> {
        let files = self.0.clone()?;
        for (p, body) in &files {
            let f = dest.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, body).unwrap();
        }
        Ok(format!("{} files", files.len()))
    }
}

#[derive(Debug)]
struct UnverifiedOutputs(AtomicUsize);

#[async_trait]
impl Outputs for UnverifiedOutputs {
    async fn sync(&self) -> OutputPass {
        self.0.fetch_add(1, Ordering::SeqCst);
        OutputPass {
            complete: false,
            problems: vec!["checkpoint/x.pt: stored CRC32C differs".into()],
            ..OutputPass::default()
        }
    }
}

/// A Compute that records calls, fails on demand, and snapshots the final status in the
/// store at the moment of the delete.
#[derive(Debug, Default)]
struct FakeCompute {
    calls: Mutex<Vec<String>>,
    delete_status: Option<u16>,
    set_disk_fails: bool,
    store: Mutex<Option<(Arc<dyn Storage>, String)>>,
    status_at_delete: Mutex<Option<RunStatus>>,
    request_ids: Mutex<Vec<String>>,
    /// The delete is accepted and then never finishes (the VM goes down under the agent,
    /// which dies while it follows the operation).
    delete_kills_agent: bool,
}

impl FakeCompute {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn count(&self, name: &str) -> usize {
        self.calls().iter().filter(|c| c.as_str() == name).count()
    }
    fn api_err(status: u16) -> ComputeError {
        ComputeError::Api {
            method: "X".into(),
            url: "u".into(),
            status,
            reason: if status == 403 {
                "forbidden".into()
            } else {
                "backendError".into()
            },
            message: "fake".into(),
            retry_after: None,
        }
    }
    fn done() -> Operation {
        Operation {
            name: "op-1".into(),
            status: "DONE".into(),
            ..Operation::default()
        }
    }
}

#[async_trait]
impl Compute for FakeCompute {
    async fn insert_instance(
        &self,
        _: &str,
        _: &str,
        _: &serde_json::Value,
        _: &str,
    ) -> Result<Operation, ComputeError> {
        self.calls.lock().unwrap().push("insert".into());
        Ok(Self::done())
    }
    async fn get_instance(
        &self,
        _: &str,
        _: &str,
        name: &str,
    ) -> Result<Option<Instance>, ComputeError> {
        self.calls.lock().unwrap().push("get".into());
        Ok(Some(Instance {
            name: name.into(),
            disks: vec![AttachedDisk {
                device_name: "persistent-disk-0".into(),
                boot: true,
                auto_delete: true,
                source: "https://www.googleapis.com/compute/v1/projects/p/zones/z/disks/trainer-1"
                    .into(),
                ..AttachedDisk::default()
            }],
            ..Instance::default()
        }))
    }
    async fn list_instances(
        &self,
        _: &str,
        _: Option<&str>,
        _: &str,
    ) -> Result<Vec<Instance>, ComputeError> {
        Ok(vec![])
    }
    async fn delete_instance(
        &self,
        _: &str,
        _: &str,
        _: &str,
        request_id: &str,
    ) -> Result<Option<Operation>, ComputeError> {
        self.calls.lock().unwrap().push("delete".into());
        self.request_ids.lock().unwrap().push(request_id.into());
        let store = self.store.lock().unwrap().clone();
        if let Some((s, key)) = store {
            if let Ok(b) = s.get_bytes(&key).await {
                *self.status_at_delete.lock().unwrap() =
                    RunStatus::from_json(&String::from_utf8_lossy(&b)).ok();
            }
        }
        if self.delete_kills_agent {
            return Ok(Some(Operation {
                name: "operation-delete-1".into(),
                status: "RUNNING".into(),
                ..Operation::default()
            }));
        }
        match self.delete_status {
            Some(st) => Err(Self::api_err(st)),
            None => Ok(Some(Self::done())),
        }
    }
    async fn stop_instance(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<Option<Operation>, ComputeError> {
        self.calls.lock().unwrap().push("stop".into());
        Ok(Some(Self::done()))
    }
    async fn set_disk_auto_delete(
        &self,
        _: &str,
        _: &str,
        _: &str,
        device: &str,
        auto_delete: bool,
        _: &str,
    ) -> Result<Operation, ComputeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("set_disk_auto_delete({device},{auto_delete})"));
        if self.set_disk_fails {
            return Err(Self::api_err(403));
        }
        Ok(Self::done())
    }
    async fn image_from_family(&self, _: &str, _: &str) -> Result<Image, ComputeError> {
        Ok(Image::default())
    }
    // The agent never checks quotas or zones; these answer "absent".
    async fn get_region(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<cloudrun::compute::Region>, ComputeError> {
        Ok(None)
    }
    async fn get_project(
        &self,
        _: &str,
    ) -> Result<Option<cloudrun::compute::ComputeProject>, ComputeError> {
        Ok(None)
    }
    async fn list_accelerator_types(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<Vec<cloudrun::compute::AcceleratorType>>, ComputeError> {
        Ok(None)
    }
    async fn aggregated_accelerator_types(
        &self,
        _: &str,
    ) -> Result<
        std::collections::BTreeMap<String, Vec<cloudrun::compute::AcceleratorType>>,
        ComputeError,
    > {
        Ok(Default::default())
    }
    async fn get_operation(&self, _: &str, _: &str, _: &str) -> Result<Operation, ComputeError> {
        Ok(Self::done())
    }
    async fn wait_operation(&self, _: &str, _: &str, _: &str) -> Result<Operation, ComputeError> {
        if self.delete_kills_agent {
            std::future::pending::<()>().await;
        }
        Ok(Self::done())
    }
}

struct Rig {
    store: tempfile::TempDir,
    work: tempfile::TempDir,
    state: tempfile::TempDir,
    storage: Arc<dyn Storage>,
    layout: Layout,
    gpu: Arc<ScriptedGpu>,
    compute: Arc<FakeCompute>,
    vm: bool,
    code: Arc<dyn CodeSource>,
    outputs: Option<Arc<dyn Outputs>>,
    metadata: Option<Arc<crate::metadata::MetadataClient>>,
}

impl Rig {
    fn new() -> Rig {
        Self::with_compute(FakeCompute::default())
    }

    fn with_compute(compute: FakeCompute) -> Rig {
        let store = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::new(store.path()));
        Rig {
            work: tempfile::tempdir().unwrap(),
            state: tempfile::tempdir().unwrap(),
            storage,
            layout: Layout::new(""),
            gpu: Arc::new(ScriptedGpu(Mutex::new(gpus(97.0, 8)))),
            compute: Arc::new(compute),
            vm: true,
            code: Arc::new(StaticCode(Ok(vec![("main.py", "print('hi')\n")]))),
            outputs: None,
            metadata: None,
            store,
        }
    }

    fn spec(&self, script: &str) -> RunSpec {
        let mut s = RunSpec::from_json(&format!(
            r#"{{"schema":1,"run_id":"20261126-071500-ab12","created_at":"2026-11-26T07:15:00Z",
            "store":"file://{}","job":{{"command":["sh","-c",{}]}},"price":{{"usd_per_hour":3.6}}}}"#,
            self.store.path().display(),
            serde_json::to_string(script).unwrap()
        ))
        .unwrap();
        let i = &mut s.policies.intervals;
        i.gpu_sample_secs = 1;
        i.output_sync_secs = 1;
        i.heartbeat_secs = 1;
        i.log_flush_secs = 1;
        i.stop_poll_secs = 1;
        s.policies.grace_secs = 2;
        s
    }

    async fn run(&self, spec: RunSpec) -> Outcome {
        *self.compute.store.lock().unwrap() =
            Some((self.storage.clone(), self.layout.status(&spec.run_id)));
        let deps = Deps {
            storage: self.storage.clone(),
            layout: self.layout.clone(),
            code: self.code.clone(),
            outputs: self.outputs.clone(),
            gpu: self.gpu.clone(),
            clock: Arc::new(TokioClock::new()),
            vm: self.vm.then(|| VmHandle {
                compute: self.compute.clone(),
                instance: InstanceRef {
                    project: "p".into(),
                    zone: "us-central1-a".into(),
                    name: "trainer-1".into(),
                },
            }),
            metadata: self.metadata.clone(),
        };
        let settings = Settings {
            work_dir: self.work.path().to_path_buf(),
            state_dir: self.state.path().to_path_buf(),
            useradd: "/bin/false".into(),
            sinks: LogSinks::default(),
            handle_sigterm: false,
            job_shim: crate::test_shim::path(),
        };
        run_agent(spec, settings, deps).await.unwrap()
    }

    async fn status(&self) -> RunStatus {
        let run = cloudrun::RunId::parse("20261126-071500-ab12").unwrap();
        let b = self
            .storage
            .get_bytes(&self.layout.status(&run))
            .await
            .unwrap();
        RunStatus::from_json(&String::from_utf8_lossy(&b)).unwrap()
    }

    /// The shipped log as people read it: agent lines behind their prefix.
    async fn log_text(&self) -> String {
        let mut t = String::new();
        for l in self.log_lines().await {
            if l.stream == Some(cloudrun::joblog::Stream::Agent) {
                t.push_str("[cloudrun-agent] ");
            }
            t.push_str(&l.text);
            t.push('\n');
        }
        t
    }

    /// Every shipped line with its stream.
    async fn log_lines(&self) -> Vec<cloudrun::joblog::Line> {
        let run = cloudrun::RunId::parse("20261126-071500-ab12").unwrap();
        let mut lines = vec![];
        for o in self
            .storage
            .list(&self.layout.logs_prefix(&run))
            .await
            .unwrap()
        {
            let b = self.storage.get_bytes(&o.key).await.unwrap();
            lines.extend(cloudrun::joblog::decode_chunk(&b));
        }
        lines
    }

    /// Exactly one delete, after the final status (phase ended, with a receipt) was in
    /// the store.
    fn assert_deleted_once_after_final_sync(&self) {
        assert_eq!(
            self.compute.count("delete"),
            1,
            "{:?}",
            self.compute.calls()
        );
        assert_eq!(self.compute.count("stop"), 0);
        let st = self
            .compute
            .status_at_delete
            .lock()
            .unwrap()
            .clone()
            .expect("status at delete");
        assert_eq!(st.phase, Phase::Ended);
        assert!(st.receipt.is_some() && st.end.is_some());
        let d = st.delete.expect("the delete is recorded before it is sent");
        assert_eq!(
            [d.request_id],
            self.compute.request_ids.lock().unwrap()[..1],
            "the request id sent"
        );
    }
}

#[tokio::test]
async fn a_successful_job_ships_logs_and_outputs_then_deletes_the_vm_once() {
    let rig = Rig::new();
    let mut spec = rig.spec(
        "echo hello from the job; echo \"run=$CLOUDRUN_RUN_ID\"; test -d \"$CLOUDRUN_OUTPUT_DIR\" || exit 9; \
         echo weights > checkpoint/step-1.pt; echo to stderr >&2",
    );
    spec.job.setup = Some("echo setting up; touch setup-done".into());
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    assert_eq!(out.end.exit_code, Some(0));
    assert_eq!(out.exit_code(), 0);
    assert_eq!(out.vm, Some(VmFate::Deleted));
    assert!(out.final_sync_verified);
    rig.assert_deleted_once_after_final_sync();
    assert!(rig.work.path().join("setup-done").exists());
    let log = rig.log_text().await;
    for needle in [
        "setting up",
        "hello from the job",
        "run=20261126-071500-ab12",
        "to stderr",
        "[cloudrun-agent] final sync",
    ] {
        assert!(log.contains(needle), "{needle:?} missing from {log}");
    }
    let obj = rig
        .storage
        .get_bytes("runs/20261126-071500-ab12/outputs/checkpoint/step-1.pt")
        .await
        .unwrap();
    assert_eq!(&obj[..], b"weights\n");
    let st = rig.status().await;
    assert_eq!(st.vm, Some(VmFate::Deleted));
    let r = st.receipt.unwrap();
    assert!(
        r.billed_secs >= 60 && (r.total_usd - r.billed_secs as f64 / 1000.0).abs() < 1e-9,
        "{r:?}"
    );
    assert_eq!(st.instance.unwrap().name, "trainer-1");
    // The restart state says the run is done.
    let s = state::load(&state::path_in(rig.state.path())).unwrap();
    assert!(matches!(
        s.stage,
        Stage::Done {
            vm: VmFate::Deleted,
            ..
        }
    ));
}

#[tokio::test]
async fn a_delete_that_ends_the_agent_still_leaves_the_request_and_its_operation_in_the_status() {
    let rig = Rig::with_compute(FakeCompute {
        delete_kills_agent: true,
        ..FakeCompute::default()
    });
    let spec = rig.spec("echo done");
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let run = cloudrun::RunId::parse("20261126-071500-ab12").unwrap();
            let Ok(b) = rig.storage.get_bytes(&rig.layout.status(&run)).await else {
                continue;
            };
            let st = RunStatus::from_json(&String::from_utf8_lossy(&b)).unwrap();
            if st.delete.as_ref().is_some_and(|d| d.operation.is_some()) {
                return st;
            }
        }
    };
    let st = tokio::select! {
        _ = rig.run(spec) => panic!("the agent returned although the delete never finished"),
        st = tokio::time::timeout(Duration::from_secs(120), watch) => st.expect("status with the delete operation"),
    };
    assert_eq!(st.phase, Phase::Ended);
    assert_eq!(st.end.as_ref().unwrap().reason, EndReason::Succeeded);
    let d = st.delete.unwrap();
    assert_eq!(d.operation.as_deref(), Some("operation-delete-1"));
    assert_eq!(d.request_id, rig.compute.request_ids.lock().unwrap()[0]);
    assert_eq!(st.vm, None, "not confirmed yet: `status` asks Compute");
}

#[tokio::test]
async fn the_final_status_records_when_each_phase_began_for_the_report() {
    let rig = Rig::new();
    let mut spec = rig.spec("echo working");
    spec.job.setup = Some("echo setting up".into());
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    let st = rig.status().await;
    let at = |name: &str| {
        *st.phase_started_at
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", st.phase_started_at))
    };
    let sync = st.final_sync_started_at.expect("final_sync_started_at");
    assert!(st.agent_started_at.unwrap() <= at("pulling"));
    assert!(at("pulling") <= at("setup") && at("setup") <= at("running"));
    assert!(st.job_started_at.unwrap() <= at("running"));
    assert!(at("running") <= at("stopping") && at("stopping") <= sync);
    assert!(sync <= at("ended"));
    assert_eq!(Some(at("ended")), st.ended_at);
}

#[tokio::test]
async fn a_failing_job_reports_its_exit_code_and_a_local_run_just_exits() {
    let mut rig = Rig::new();
    rig.vm = false;
    let out = rig.run(rig.spec("echo oops >&2; exit 3")).await;
    assert_eq!(out.end.reason, EndReason::Failed);
    assert_eq!(out.end.exit_code, Some(3));
    assert_eq!(out.vm, Some(VmFate::LocalExit));
    assert!(rig.compute.calls().is_empty());
    assert_eq!(rig.status().await.end.unwrap().exit_code, Some(3));
}

#[tokio::test]
async fn idle_gpu_for_window_stops_job_and_deletes_vm() {
    let rig = Rig::new();
    *rig.gpu.0.lock().unwrap() = gpus(0.0, 8);
    let mut spec = rig.spec("echo training; sleep 60");
    spec.policies.gpu_idle.window_secs = 2;
    let t0 = std::time::Instant::now();
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::GpuIdle, "{:?}", out.end);
    assert_eq!(
        out.end.signal,
        Some(15),
        "SIGTERM ended the job: {:?}",
        out.end
    );
    assert!(t0.elapsed() < Duration::from_secs(20));
    rig.assert_deleted_once_after_final_sync();
    let st = rig.status().await;
    assert!(st.last_gpu.is_some());
    // The receipt names the idle window that was paid for.
    let split = st.receipt.as_ref().and_then(|r| r.split.clone()).unwrap();
    let idle = split.idle_tail.expect("an idle tail for a gpu_idle end");
    assert_eq!(idle.secs, 2.min(split.training.secs), "{split:?}");
    assert!(split.after_last_checkpoint.is_none(), "{split:?}");
    let metrics = rig
        .storage
        .list("runs/20261126-071500-ab12/metrics/")
        .await
        .unwrap();
    assert!(!metrics.is_empty(), "GPU samples shipped");
}

#[tokio::test]
async fn no_gpu_turns_idle_off_and_says_so_in_the_status() {
    let mut rig = Rig::new();
    rig.vm = false;
    *rig.gpu.0.lock().unwrap() = GpuState::NoGpu("nvidia-smi not found".into());
    let mut spec = rig.spec("sleep 3");
    spec.policies.gpu_idle.window_secs = 1;
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Succeeded);
    let note = rig.status().await.gpu_note.unwrap();
    assert!(note.contains("idle policy off"), "{note}");
}

#[tokio::test]
async fn stall_stops_a_job_that_prints_nothing_at_full_utilisation() {
    let rig = Rig::new();
    let mut spec = rig.spec("echo step 1; sleep 60");
    spec.policies.stall_window_secs = Some(2);
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Stalled, "{:?}", out.end);
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test(start_paused = true)]
async fn budget_warns_at_80_percent_then_stops_at_100() {
    let rig = Rig::new();
    // $3.60/h: the first billed minute is $0.06 (> 80 % of $0.07), $0.07 is reached at 70 s.
    let mut spec = rig.spec("sleep 1000");
    spec.policies.budget_usd = Some(0.07);
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Budget, "{:?}", out.end);
    rig.assert_deleted_once_after_final_sync();
    let st = rig.status().await;
    assert!(
        st.warnings.iter().any(|w| w.contains("budget warning")),
        "{:?}",
        st.warnings
    );
    let r = st.receipt.unwrap();
    assert!((70..=75).contains(&r.billed_secs), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn max_time_stops_the_run() {
    let rig = Rig::new();
    let mut spec = rig.spec("sleep 1000");
    spec.policies.max_run_secs = 300;
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::MaxTime, "{:?}", out.end);
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn a_stop_request_in_the_store_stops_gracefully() {
    let rig = Rig::new();
    let storage = rig.storage.clone();
    let key = rig
        .layout
        .stop_request(&cloudrun::RunId::parse("20261126-071500-ab12").unwrap());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let req = StopRequest {
            requested_at: chrono::Utc::now(),
            by: "me@laptop".into(),
            message: Some("wrong lr".into()),
        };
        storage
            .put_bytes(
                &key,
                serde_json::to_vec(&req).unwrap().into(),
                &Default::default(),
            )
            .await
            .unwrap();
    });
    let out = rig
        .run(rig.spec("trap 'echo got TERM; exit 143' TERM; while :; do sleep 0.1; done"))
        .await;
    assert_eq!(out.end.reason, EndReason::Stopped, "{:?}", out.end);
    assert!(
        out.end.message.contains("me@laptop") && out.end.message.contains("wrong lr"),
        "{}",
        out.end.message
    );
    assert_eq!(out.end.exit_code, Some(143));
    assert!(rig.log_text().await.contains("got TERM"));
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn preemption_sends_sigterm_at_once_syncs_and_deletes() {
    let (fake, host) = crate::metadata::tests::serve().await;
    fake.set("instance/preempted", "FALSE");
    let mut rig = Rig::new();
    rig.metadata = Some(Arc::new(
        crate::metadata::MetadataClient::new(&host).unwrap(),
    ));
    let f2 = fake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        f2.set("instance/preempted", "TRUE");
    });
    let mut spec = rig.spec("trap 'echo saving; echo last > checkpoint/last.pt; exit 0' TERM; while :; do sleep 0.1; done");
    spec.policies.grace_secs = 30;
    let t0 = std::time::Instant::now();
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Preempted, "{:?}", out.end);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(rig
        .storage
        .head("runs/20261126-071500-ab12/outputs/checkpoint/last.pt")
        .await
        .unwrap()
        .is_some());
    rig.assert_deleted_once_after_final_sync();
    // A preempted run's receipt says how much training was not checkpointed.
    let split = rig.status().await.receipt.and_then(|r| r.split).unwrap();
    let lost = split
        .after_last_checkpoint
        .expect("lost work for a preempted run");
    assert!(lost.secs <= split.training.secs, "{split:?}");
    assert!(split.idle_tail.is_none(), "{split:?}");
}

#[tokio::test]
async fn an_unverified_final_sync_keeps_the_boot_disk_before_the_delete() {
    let mut rig = Rig::new();
    let outputs = Arc::new(UnverifiedOutputs(AtomicUsize::new(0)));
    rig.outputs = Some(outputs.clone());
    let out = rig.run(rig.spec("exit 0")).await;
    assert!(!out.final_sync_verified);
    assert_eq!(out.kept_disk.as_deref(), Some("trainer-1"));
    let calls = rig.compute.calls();
    let keep = calls
        .iter()
        .position(|c| c == "set_disk_auto_delete(persistent-disk-0,false)")
        .expect("disk kept");
    let del = calls.iter().position(|c| c == "delete").unwrap();
    assert!(keep < del, "{calls:?}");
    rig.assert_deleted_once_after_final_sync();
    let st = rig.status().await;
    assert_eq!(st.kept_disk.as_deref(), Some("trainer-1"));
    assert!(
        st.warnings.iter().any(|w| w.contains("CRC32C")),
        "{:?}",
        st.warnings
    );
}

#[tokio::test]
async fn when_the_disk_cannot_be_kept_the_vm_is_powered_off_not_deleted() {
    let mut rig = Rig::with_compute(FakeCompute {
        set_disk_fails: true,
        ..FakeCompute::default()
    });
    rig.outputs = Some(Arc::new(UnverifiedOutputs(AtomicUsize::new(0))));
    let out = rig.run(rig.spec("exit 0")).await;
    assert_eq!(out.vm, Some(VmFate::PoweredOff));
    assert_eq!(rig.compute.count("delete"), 0, "{:?}", rig.compute.calls());
    assert_eq!(rig.compute.count("stop"), 1);
    assert_eq!(rig.status().await.vm, Some(VmFate::PoweredOff));
}

#[tokio::test]
async fn a_delete_that_keeps_failing_powers_the_vm_off() {
    let rig = Rig::with_compute(FakeCompute {
        delete_status: Some(503),
        ..FakeCompute::default()
    });
    let out = rig.run(rig.spec("exit 0")).await;
    assert_eq!(out.vm, Some(VmFate::PoweredOff));
    // One call: its retries, with one requestId, are the client's
    // (tests/retry_contract.rs: a_retried_delete_repeats_its_request_id_inside_the_client).
    assert_eq!(rig.compute.count("delete"), 1);
    assert_eq!(rig.compute.count("stop"), 1);
    assert_eq!(rig.status().await.vm, Some(VmFate::PoweredOff));
}

#[tokio::test]
async fn a_forbidden_delete_is_not_retried_and_powers_off() {
    let rig = Rig::with_compute(FakeCompute {
        delete_status: Some(403),
        ..FakeCompute::default()
    });
    let out = rig.run(rig.spec("exit 0")).await;
    assert_eq!(out.vm, Some(VmFate::PoweredOff));
    assert_eq!(rig.compute.count("delete"), 1);
}

#[tokio::test]
async fn a_failed_pull_ends_the_run_and_still_deletes_the_vm() {
    let mut rig = Rig::new();
    rig.code = Arc::new(StaticCode(Err("blobs/abc: integrity check failed".into())));
    let out = rig.run(rig.spec("touch ran")).await;
    assert_eq!(out.end.reason, EndReason::PullFailed);
    assert!(out.end.message.contains("integrity"));
    assert!(!rig.work.path().join("ran").exists());
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn a_failing_setup_ends_the_run_before_the_job() {
    let rig = Rig::new();
    let mut spec = rig.spec("touch ran");
    spec.job.setup = Some("echo no such package >&2; exit 4".into());
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::SetupFailed);
    assert_eq!(out.end.exit_code, Some(4));
    assert!(!rig.work.path().join("ran").exists());
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn a_restart_during_setup_ends_the_old_setup_before_running_it_again() {
    let rig = Rig::new();
    use std::os::unix::process::CommandExt;
    // The setup the dead agent started: still running in its own process group.
    let mut old = std::process::Command::new("sh")
        .args(["-c", "sleep 60"])
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = old.id() as i32;
    let ticks = crate::process::proc_start_ticks(pid).unwrap();
    crate::transfer::save_json(
        &rig.state.path().join(crate::agent::SETUP_PROCESS_FILE_NAME),
        &(pid, ticks),
    )
    .unwrap();
    write_state(&rig, Stage::Preparing);
    let mut spec = rig.spec("echo job ran");
    spec.job.setup = Some("echo setup again".into());
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    let st = tokio::task::spawn_blocking(move || old.wait())
        .await
        .unwrap()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(9), "the old setup was ended");
    let log = rig.log_text().await;
    assert!(
        log.contains("the setup started by the previous agent"),
        "{log}"
    );
    assert!(
        log.contains("setup again") && log.contains("job ran"),
        "{log}"
    );
}

#[tokio::test]
async fn an_unknown_vm_user_is_a_clear_setup_failure() {
    let rig = Rig::new();
    let mut spec = rig.spec("touch ran");
    spec.job.user = Some("cloudrun-no-such-user-7a1".into());
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::SetupFailed);
    assert!(
        out.end.message.contains("cloudrun-no-such-user-7a1"),
        "{}",
        out.end.message
    );
    assert!(!rig.work.path().join("ran").exists());
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn an_output_dir_the_job_removes_and_recreates_late_is_synced() {
    let rig = Rig::new();
    let mut spec =
        rig.spec("rm -rf model; sleep 1.5; mkdir -p model/final; echo m > model/final/w.bin");
    spec.job.output_dirs = vec!["model".into(), "never-written".into()];
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Succeeded);
    assert!(out.final_sync_verified);
    assert!(rig
        .storage
        .head("runs/20261126-071500-ab12/outputs/model/final/w.bin")
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn bad_spec_json_is_a_clear_error_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("spec.json");
    std::fs::write(&f, r#"{"schema":1,"run_id":"20261126-071500-ab12","job":"#).unwrap();
    let err = crate::run(crate::Config {
        spec_file: Some(f),
        work_dir: d.path().join("w"),
        state_dir: d.path().join("s"),
        useradd: "/bin/false".into(),
        console: None,
    })
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    assert!(!d.path().join("w").exists(), "nothing was started");
    let err = crate::parse_spec(r#"{"schema":1,"run_id":"20261126-071500-ab12","created_at":"2026-11-26T07:15:00Z","store":"s3://x","job":{"command":["x"]},"price":{"usd_per_hour":1}}"#).unwrap_err();
    assert!(err.to_string().contains("gs://"), "{err}");
}

fn write_state(rig: &Rig, stage: Stage) {
    state::save(
        &state::path_in(rig.state.path()),
        &AgentState {
            run_id: cloudrun::RunId::parse("20261126-071500-ab12").unwrap(),
            boot_id: crate::process::boot_id(),
            agent_started_at: chrono::Utc::now() - chrono::Duration::seconds(30),
            starts: 1,
            budget_warned: false,
            gpu_wait_started_at: None,
            stage,
        },
    );
}

fn end(reason: EndReason) -> cloudrun::status::EndInfo {
    cloudrun::status::EndInfo {
        reason,
        exit_code: None,
        signal: None,
        message: "before the restart".into(),
    }
}

#[tokio::test]
async fn a_restart_during_teardown_continues_the_teardown_without_rerunning_the_job() {
    let rig = Rig::new();
    write_state(
        &rig,
        Stage::TearingDown {
            end: end(EndReason::GpuIdle),
        },
    );
    let out = rig.run(rig.spec("touch ran")).await;
    assert_eq!(out.end.reason, EndReason::GpuIdle);
    assert!(!rig.work.path().join("ran").exists());
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn a_restart_after_the_job_vanished_ends_as_lost() {
    let rig = Rig::new();
    write_state(
        &rig,
        Stage::Running {
            pid: 999_999,
            start_ticks: 1,
            job_started_at: chrono::Utc::now(),
        },
    );
    let out = rig.run(rig.spec("touch ran")).await;
    assert_eq!(out.end.reason, EndReason::Lost);
    assert!(!rig.work.path().join("ran").exists());
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn a_restart_while_a_shim_held_job_runs_adopts_it_ships_its_output_and_its_exit_code() {
    let rig = Rig::new();
    let (out, err) = crate::logs::output_paths(rig.state.path());
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap()
    };
    // Started by "the previous agent": through the shim, output to the run's files.
    let job = crate::process::spawn(
        &crate::process::JobCommand {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo before; echo warn >&2; sleep 2; echo after; exit 4".into(),
            ],
            cwd: rig.work.path().to_path_buf(),
            env: vec![],
            run_as: None,
        },
        crate::process::JobIo {
            shim: crate::test_shim::path(),
            exit_file: rig.state.path().join(crate::agent::JOB_EXIT_FILE_NAME),
            stdout: open(&out),
            stderr: open(&err),
        },
    )
    .unwrap();
    let pid = job.pid();
    let ticks = crate::process::proc_start_ticks(pid).unwrap();
    drop(job);
    write_state(
        &rig,
        Stage::Running {
            pid,
            start_ticks: ticks,
            job_started_at: chrono::Utc::now(),
        },
    );
    let o = rig.run(rig.spec("touch ran")).await;
    assert_eq!(o.end.reason, EndReason::Failed, "{:?}", o.end);
    assert_eq!((o.end.exit_code, o.end.signal), (Some(4), None));
    assert!(!rig.work.path().join("ran").exists());
    use cloudrun::joblog::Stream;
    let lines = rig.log_lines().await;
    let of = |s: Stream| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.stream == Some(s))
            .map(|l| l.text.clone())
            .collect()
    };
    // Each stream in its order (the two files are read side by side).
    assert_eq!(of(Stream::Stdout), ["before", "after"]);
    assert_eq!(of(Stream::Stderr), ["warn"]);
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn a_restart_while_the_job_runs_adopts_it_until_it_exits() {
    let rig = Rig::new();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 2"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let ticks = crate::process::proc_start_ticks(pid).unwrap();
    write_state(
        &rig,
        Stage::Running {
            pid,
            start_ticks: ticks,
            job_started_at: chrono::Utc::now(),
        },
    );
    let waiter = std::thread::spawn(move || child.wait());
    let t0 = std::time::Instant::now();
    let out = rig.run(rig.spec("touch ran")).await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "waited for the adopted job"
    );
    assert_eq!(out.end.reason, EndReason::Lost);
    assert!(
        out.end.message.contains("not recorded"),
        "{}",
        out.end.message
    );
    assert!(!rig.work.path().join("ran").exists());
    assert!(rig
        .status()
        .await
        .warnings
        .iter()
        .any(|w| w.contains("still running")));
    rig.assert_deleted_once_after_final_sync();
    let _ = waiter.join();
}

#[tokio::test]
async fn a_restart_after_the_delete_was_sent_resends_it_with_the_same_request_id() {
    let rig = Rig::new();
    write_state(
        &rig,
        Stage::Deleting {
            end: end(EndReason::Succeeded),
            request_id: "4f8e1c62-0000-4000-8000-000000000001".into(),
            kept_disk: None,
        },
    );
    let out = rig.run(rig.spec("touch ran")).await;
    assert_eq!(out.vm, Some(VmFate::Deleted));
    assert_eq!(rig.compute.count("delete"), 1);
    assert_eq!(
        rig.compute.request_ids.lock().unwrap().clone(),
        vec!["4f8e1c62-0000-4000-8000-000000000001".to_string()]
    );
    assert!(!rig.work.path().join("ran").exists());
}

#[tokio::test]
async fn a_finished_local_run_exits_at_once_when_started_again() {
    let mut rig = Rig::new();
    rig.vm = false;
    write_state(
        &rig,
        Stage::Done {
            end: end(EndReason::Failed),
            vm: VmFate::LocalExit,
            kept_disk: None,
        },
    );
    let out = rig.run(rig.spec("touch ran")).await;
    assert_eq!(out.end.reason, EndReason::Failed);
    assert_eq!(out.vm, Some(VmFate::LocalExit));
    assert!(!rig.work.path().join("ran").exists());
}

#[tokio::test]
async fn the_webhook_hears_start_and_end() {
    use axum::routing::post;
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let s2 = s2.clone();
            async move {
                s2.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let rig = Rig::new();
    let mut spec = rig.spec("exit 0");
    spec.webhook = Some(format!("http://{addr}/hook"));
    rig.run(spec).await;
    let events: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(events.contains(&"started".to_string()), "{events:?}");
    assert!(events.contains(&"ended".to_string()), "{events:?}");
    let endv = seen
        .lock()
        .unwrap()
        .iter()
        .find(|v| v["event"] == "ended")
        .cloned()
        .unwrap();
    assert_eq!(endv["reason"], "succeeded");
    assert!(endv["outputs"]
        .as_str()
        .unwrap()
        .ends_with("runs/20261126-071500-ab12/outputs/"));
}

#[tokio::test]
async fn an_unreachable_webhook_delays_teardown_by_at_most_its_timeout() {
    let rig = Rig::new();
    let mut spec = rig.spec("exit 0");
    // A blackhole address: the connect hangs until the webhook's own timeout.
    spec.webhook = Some("http://10.255.255.1:9/hook".into());
    let t0 = std::time::Instant::now();
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Succeeded);
    assert!(t0.elapsed() < Duration::from_secs(crate::webhook::WEBHOOK_TIMEOUT_SECS + 8));
    rig.assert_deleted_once_after_final_sync();
}

/// A store that can be taken down: every call fails with a retryable 503 while it is.
/// Writes are retried within their budget, as the GCS client retries them.
#[derive(Debug)]
struct SwitchableStore {
    inner: Arc<dyn Storage>,
    down: std::sync::atomic::AtomicBool,
}

impl SwitchableStore {
    fn check(&self, key: &str) -> Result<(), cloudrun::StorageError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(cloudrun::StorageError::Http {
                method: "PUT".into(),
                url: key.into(),
                status: 503,
                body: "store down (test)".into(),
                retry_after: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for SwitchableStore {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put_bytes(
        &self,
        key: &str,
        data: bytes::Bytes,
        opts: &cloudrun::storage::PutOptions,
    ) -> Result<cloudrun::storage::ObjectMeta, cloudrun::StorageError> {
        let policy = cloudrun::retry::RetryPolicy::default();
        cloudrun::retry::RetryContext::new(&policy, opts.budget, key)
            .run(|_| async {
                self.check(key)?;
                self.inner.put_bytes(key, data.clone(), opts).await
            })
            .await
    }
    async fn put_file(
        &self,
        key: &str,
        path: &Path,
        opts: &cloudrun::storage::PutOptions,
    ) -> Result<cloudrun::storage::ObjectMeta, cloudrun::StorageError> {
        let policy = cloudrun::retry::RetryPolicy::default();
        cloudrun::retry::RetryContext::new(&policy, opts.budget, key)
            .run(|_| async {
                self.check(key)?;
                self.inner.put_file(key, path, opts).await
            })
            .await
    }
    async fn get_stream(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<cloudrun::storage::ByteStream, cloudrun::StorageError> {
        self.check(key)?;
        self.inner.get_stream(key, range).await
    }
    async fn head(
        &self,
        key: &str,
    ) -> Result<Option<cloudrun::storage::ObjectMeta>, cloudrun::StorageError> {
        self.check(key)?;
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<cloudrun::storage::ObjectMeta>, cloudrun::StorageError> {
        self.check(prefix)?;
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<bool, cloudrun::StorageError> {
        self.check(key)?;
        self.inner.delete(key).await
    }
}

/// Outputs whose sync takes the store down and then never finishes (the upload of the
/// last checkpoint hanging on a store that went away).
#[derive(Debug)]
struct StoreGoesDownOnSync(Arc<SwitchableStore>);

#[async_trait]
impl Outputs for StoreGoesDownOnSync {
    async fn sync(&self) -> OutputPass {
        self.0.down.store(true, Ordering::SeqCst);
        std::future::pending().await
    }
}

/// A rig whose store goes down at the first output sync; `final_sync_secs` is 2.
fn rig_with_store_down_at_the_end() -> (Rig, Arc<SwitchableStore>, RunSpec) {
    let mut rig = Rig::new();
    let store = Arc::new(SwitchableStore {
        inner: rig.storage.clone(),
        down: std::sync::atomic::AtomicBool::new(false),
    });
    rig.storage = store.clone();
    rig.outputs = Some(Arc::new(StoreGoesDownOnSync(store.clone())));
    let mut spec = rig.spec("exit 0");
    spec.policies.final_sync_secs = 2;
    (rig, store, spec)
}

fn assert_disk_kept_then_deleted_once(rig: &Rig) {
    let calls = rig.compute.calls();
    let keep = calls
        .iter()
        .position(|c| c == "set_disk_auto_delete(persistent-disk-0,false)")
        .expect("disk kept");
    let del = calls.iter().position(|c| c == "delete").expect("deleted");
    assert!(keep < del, "{calls:?}");
    assert_eq!(rig.compute.count("delete"), 1, "{calls:?}");
    assert_eq!(rig.compute.count("stop"), 0, "{calls:?}");
}

#[tokio::test]
async fn store_down_at_the_end_keeps_the_disk_and_names_it_once_the_store_is_back() {
    let (rig, store, spec) = rig_with_store_down_at_the_end();
    // Bring the store back once the disk is kept (after the final-sync deadline).
    let compute = rig.compute.clone();
    let back = store.clone();
    tokio::spawn(async move {
        while compute.count("set_disk_auto_delete(persistent-disk-0,false)") == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(compute.count("delete"), 0, "deleted before the status");
        tokio::time::sleep(Duration::from_secs(1)).await;
        back.down.store(false, Ordering::SeqCst);
    });
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    assert!(!out.final_sync_verified);
    assert_eq!(out.kept_disk.as_deref(), Some("trainer-1"));
    assert_eq!(out.vm, Some(VmFate::Deleted));
    assert_disk_kept_then_deleted_once(&rig);
    // The final status, naming the disk, reached the store before the delete.
    let st = rig
        .compute
        .status_at_delete
        .lock()
        .unwrap()
        .clone()
        .expect("status at delete");
    assert_eq!(st.phase, Phase::Ended);
    assert_eq!(st.kept_disk.as_deref(), Some("trainer-1"));
    assert!(
        st.warnings
            .iter()
            .any(|w| w.contains("did not finish within 2 s")),
        "{:?}",
        st.warnings
    );
    assert_eq!(rig.status().await.vm, Some(VmFate::Deleted));
}

#[tokio::test(start_paused = true)]
async fn store_down_for_good_at_the_end_still_deletes_the_vm_after_the_status_window() {
    let (rig, _store, spec) = rig_with_store_down_at_the_end();
    let window = Duration::from_secs(crate::agent::KEPT_DISK_STATUS_SECS);
    let t0 = tokio::time::Instant::now();
    let out = rig.run(spec).await;
    assert_eq!(out.kept_disk.as_deref(), Some("trainer-1"));
    assert_eq!(out.vm, Some(VmFate::Deleted));
    assert_disk_kept_then_deleted_once(&rig);
    // Bounded: the final sync, then the status window (plus the fate write and slack).
    let spent = t0.elapsed();
    // The retry policy stops once the next (jittered) backoff would cross the deadline,
    // so it may give up up to one longest backoff before the window is over.
    let max_backoff = Duration::from_secs(cloudrun::retry::DEFAULT_MAX_BACKOFF_SECS);
    assert!(spent + max_backoff >= window, "{spent:?}");
    assert!(
        spent < window + Duration::from_secs(2 + crate::agent::VM_FATE_STATUS_SECS + 60),
        "{spent:?}"
    );
}

/// A spec for a VM with `n` H100s (what [`gpus`] names them) that waits `window` s.
fn gpu_spec(rig: &Rig, script: &str, n: u32, window: u64) -> RunSpec {
    let mut spec = rig.spec(script);
    spec.placement.gpu = Some("nvidia-h100-80gb".into());
    spec.placement.gpu_count = n;
    spec.policies.gpu_ready_secs = window;
    spec
}

fn driver_failed() -> GpuState {
    GpuState::Unknown(
        "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
            .into(),
    )
}

/// Set the scripted GPU to `state` after `after`.
fn gpu_later(rig: &Rig, after: Duration, state: GpuState) -> tokio::task::JoinHandle<()> {
    let gpu = rig.gpu.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        *gpu.0.lock().unwrap() = state;
    })
}

#[tokio::test]
async fn gpus_that_answer_late_start_setup_and_job_only_after_the_wait() {
    let mut rig = Rig::new();
    rig.code = Arc::new(StaticCode(Ok(vec![("main.py", "x")])));
    *rig.gpu.0.lock().unwrap() = driver_failed();
    let mut spec = gpu_spec(&rig, "date +%s.%N > job-at; echo job ran", 8, 60);
    spec.job.setup = Some("date +%s.%N > setup-at".into());
    let late = gpu_later(&rig, Duration::from_secs(3), gpus(97.0, 8));
    let out = rig.run(spec).await;
    late.await.unwrap();
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    let st = rig.status().await;
    let started = st.gpu_wait_started_at.expect("the wait is recorded");
    let ready = st.gpu_ready_at.expect("the GPUs answered");
    let job = st.job_started_at.unwrap();
    assert!(
        (ready - started).num_milliseconds() >= 2000,
        "waited for the GPUs: {started} → {ready}"
    );
    assert!(job >= ready, "the job started after the GPUs answered");
    // Setup too ran only after the GPUs answered.
    let setup_at: f64 = std::fs::read_to_string(rig.work.path().join("setup-at"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(setup_at >= ready.timestamp_millis() as f64 / 1000.0 - 0.5);
    // The wait is billed before the job, not as training.
    let r = st.receipt.unwrap();
    assert!(r.setup_secs >= 2, "{r:?}");
    assert!(
        r.job_secs < r.billed_secs,
        "the wait is not in the job's seconds: {r:?}"
    );
    let log = rig.log_text().await;
    let w = log
        .find("waiting up to 1m 00s for 8 × nvidia-h100-80gb")
        .unwrap();
    let g = log.find("GPUs ready after").unwrap();
    let j = log.find("job ran").unwrap();
    assert!(w < g && g < j, "{log}");
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn gpus_that_never_answer_end_gpu_unavailable_without_setup_or_job() {
    let rig = Rig::new();
    *rig.gpu.0.lock().unwrap() = driver_failed();
    let mut spec = gpu_spec(&rig, "touch job-ran", 1, 3);
    spec.job.setup = Some("touch setup-ran".into());
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::GpuUnavailable, "{:?}", out.end);
    assert_eq!(out.exit_code(), 9);
    assert!(
        out.end
            .message
            .contains("couldn't communicate with the NVIDIA driver"),
        "the driver's words: {}",
        out.end.message
    );
    assert!(!rig.work.path().join("job-ran").exists(), "no job");
    assert!(!rig.work.path().join("setup-ran").exists(), "no setup");
    let st = rig.status().await;
    assert!(st.job_started_at.is_none());
    assert!(st.gpu_wait_started_at.is_some() && st.gpu_ready_at.is_none());
    assert_eq!(st.end.unwrap().reason, EndReason::GpuUnavailable);
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn one_of_two_gpus_is_gpu_unavailable_saying_1_of_2() {
    let rig = Rig::new();
    *rig.gpu.0.lock().unwrap() = gpus(97.0, 1);
    let out = rig.run(gpu_spec(&rig, "touch job-ran", 2, 3)).await;
    assert_eq!(out.end.reason, EndReason::GpuUnavailable, "{:?}", out.end);
    assert!(out.end.message.contains("1 of 2"), "{}", out.end.message);
    assert!(!rig.work.path().join("job-ran").exists());
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn gpus_lost_or_failing_mid_run_are_a_warning_and_the_run_goes_on() {
    let rig = Rig::new();
    let mut spec = gpu_spec(&rig, "sleep 5; echo done", 8, 60);
    spec.policies.gpu_idle.window_secs = 1;
    let lost = gpu_later(&rig, Duration::from_millis(1500), gpus(97.0, 7));
    let failing = gpu_later(&rig, Duration::from_millis(3000), driver_failed());
    let out = rig.run(spec).await;
    let _ = (lost.await, failing.await);
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    let st = rig.status().await;
    let lost: Vec<&String> = st
        .warnings
        .iter()
        .filter(|w| w.contains("went missing"))
        .collect();
    assert_eq!(lost.len(), 1, "{:?}", st.warnings);
    assert!(lost[0].contains("7 of 8"), "{}", lost[0]);
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn a_restart_during_the_wait_keeps_counting_the_first_window() {
    let rig = Rig::new();
    *rig.gpu.0.lock().unwrap() = driver_failed();
    let first = chrono::Utc::now() - chrono::Duration::seconds(25);
    state::save(
        &state::path_in(rig.state.path()),
        &AgentState {
            run_id: cloudrun::RunId::parse("20261126-071500-ab12").unwrap(),
            boot_id: "an-earlier-boot".into(),
            agent_started_at: first,
            starts: 1,
            budget_warned: false,
            gpu_wait_started_at: Some(first),
            stage: Stage::Preparing,
        },
    );
    // A 30 s window that began 25 s ago, in the boot before the driver's reboot.
    let out = rig.run(gpu_spec(&rig, "touch job-ran", 1, 30)).await;
    assert_eq!(out.end.reason, EndReason::GpuUnavailable, "{:?}", out.end);
    let st = rig.status().await;
    assert_eq!(
        st.gpu_wait_started_at.map(|t| t.timestamp_millis()),
        Some(first.timestamp_millis()),
        "the window counts from the first boot's wait"
    );
    let waited = (st.ended_at.unwrap() - first).num_seconds();
    assert!(
        (30..60).contains(&waited),
        "{waited} s since the first wait"
    );
    assert!(!rig.work.path().join("job-ran").exists());
    assert!(rig
        .log_text()
        .await
        .contains("still waiting for 1 × nvidia-h100-80gb"));
    rig.assert_deleted_once_after_final_sync();
}

#[tokio::test]
async fn a_restart_after_the_gpus_answered_checks_them_again_and_keeps_the_first_answer() {
    let rig = Rig::new();
    let run = cloudrun::RunId::parse("20261126-071500-ab12").unwrap();
    let first = chrono::Utc::now() - chrono::Duration::seconds(30);
    let ready = first + chrono::Duration::seconds(10);
    state::save(
        &state::path_in(rig.state.path()),
        &AgentState {
            run_id: run.clone(),
            boot_id: crate::process::boot_id(),
            agent_started_at: first,
            starts: 1,
            budget_warned: false,
            gpu_wait_started_at: Some(first),
            stage: Stage::Preparing,
        },
    );
    // The earlier process recorded the answer, then died during setup.
    let mut earlier = RunStatus::launching(run.clone(), first, 3.6);
    earlier.phase = Phase::Setup;
    earlier.gpu_wait_started_at = Some(first);
    earlier.gpu_ready_at = Some(ready);
    rig.storage
        .put_bytes(
            &rig.layout.status(&run),
            bytes::Bytes::from(earlier.to_json()),
            &cloudrun::PutOptions::default(),
        )
        .await
        .unwrap();
    let out = rig.run(gpu_spec(&rig, "echo ok", 8, 600)).await;
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    let st = rig.status().await;
    assert_eq!(
        st.gpu_ready_at.map(|t| t.timestamp_millis()),
        Some(ready.timestamp_millis()),
        "setup before the restart is not billed as the wait"
    );
}

#[tokio::test]
async fn local_runs_and_runs_without_gpus_do_not_wait() {
    let mut rig = Rig::new();
    rig.vm = false;
    *rig.gpu.0.lock().unwrap() = driver_failed();
    let mut spec = gpu_spec(&rig, "echo ok", 1, 600);
    spec.placement.provider = cloudrun::spec::Provider::Local;
    let out = rig.run(spec).await;
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    assert!(rig.status().await.gpu_wait_started_at.is_none());

    let rig = Rig::new();
    *rig.gpu.0.lock().unwrap() = driver_failed();
    let out = rig.run(gpu_spec(&rig, "echo ok", 0, 600)).await;
    assert_eq!(out.end.reason, EndReason::Succeeded, "{:?}", out.end);
    assert!(rig.status().await.gpu_wait_started_at.is_none());
}
