//! A whole `cloudrun-launch main.py --follow` through the real binary, against the
//! testkit's Compute Engine emulator and fake-gcs-server (`GCS_DIR=gs://bucket/prefix` with
//! `STORAGE_EMULATOR_HOST`), credentials from a fake gcloud. A stand-in agent in the test
//! waits for the insert, reads the run id from the VM's labels, and writes what the real
//! agent would (running status, log chunks, then the ended status with a receipt) through
//! the `cloudrun` library's `Layout` and `RunStatus`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{NaiveDateTime, Utc};
use cloudrun::billing::Receipt;
use cloudrun::contract::LABEL_RUN;
use cloudrun::status::{EndInfo, EndReason, Phase, RunStatus};
use cloudrun::storage::gcs::{Endpoint, GcsStorage};
use cloudrun::{Layout, PutOptions, RunId, RunSpec, Storage, StoreUrl};
use cloudrun_testkit::gce::{GceEmulator, ZoneState};
use cloudrun_testkit::FakeGcs;
use common::auth::fake_gcloud;
use common::bin::{Ran, Sandbox};
use common::compute::emulator;
use sha2::Digest;

/// How long the stand-in agent waits for the launcher's insert (debug build, loaded
/// machine): only bounds a hang.
const INSERT_WAIT_SECS: u64 = 120;
/// How often the stand-in agent looks for the insert.
const INSERT_POLL_MILLIS: u64 = 50;
/// The reason the stand-in agent ends the run with (a non-zero exit code on purpose).
const END: EndReason = EndReason::Stalled;
const LOG_LINES: [&str; 3] = [
    "epoch 1 loss 0.50\n",
    "epoch 2 loss 0.25\n",
    "saved model\n",
];

const GCS_DIR: &str = "gs://cloudrun-test/team/runs";

struct World {
    gcs: FakeGcs,
    compute: Arc<GceEmulator>,
    compute_base: String,
    sb: Sandbox,
    project: std::path::PathBuf,
}

async fn world() -> World {
    let gcs = FakeGcs::start();
    gcs.create_bucket("cloudrun-test");
    let compute = Arc::new(emulator(&[
        ("us-central1-a", ZoneState::OutOfCapacityLeavingInstance),
        ("us-central1-b", ZoneState::Available),
    ]));
    let compute_base = compute.compute_url();
    let sb = Sandbox::new();
    fake_gcloud(
        &sb.bin(),
        &sb.path().join("gcloud.log"),
        Some("launch-token"),
    );
    let project = sb.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("main.py"), "print('train')\n").unwrap();
    std::fs::write(project.join("src/model.py"), "layers = 4\n").unwrap();
    std::fs::write(sb.path().join("cloudrun-agent"), b"\x7fELF stand-in agent").unwrap();
    World {
        gcs,
        compute,
        compute_base,
        sb,
        project,
    }
}

impl World {
    fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(
            GcsStorage::new("cloudrun-test", Endpoint::emulator(&self.gcs.host()), None).unwrap(),
        )
    }

    fn layout(&self) -> Layout {
        Layout::for_store(&StoreUrl::parse(GCS_DIR).unwrap())
    }

    async fn launch(&self, extra: &[&str]) -> Ran {
        let env = [
            ("GCLOUD_PROJECT", "test-proj".to_string()),
            ("GCS_DIR", GCS_DIR.to_string()),
            ("STORAGE_EMULATOR_HOST", self.gcs.host()),
            (
                "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE",
                self.compute_base.clone(),
            ),
            (
                "CLOUDRUN_AGENT_BINARY",
                self.sb.path().join("cloudrun-agent").display().to_string(),
            ),
            ("VM_INSTANCE", "trainer".to_string()),
            ("VM_USER", "alice".to_string()),
        ];
        let mut args = vec!["--gpu", "l4", "--zone", "us-central1-a,us-central1-b"];
        args.extend_from_slice(extra);
        args.push("main.py");
        self.sb.run(&self.project, &env, &args).await
    }
}

async fn put(st: &dyn Storage, key: &str, data: impl Into<Vec<u8>>) {
    st.put_bytes(key, Bytes::from(data.into()), &PutOptions::default())
        .await
        .unwrap();
}

/// The body of the insert into the zone with room (the exhausted zone's comes first).
fn insert_with_room(compute: &GceEmulator) -> Option<serde_json::Value> {
    compute
        .instances()
        .into_iter()
        .find(|i| i.zone == "us-central1-b")
        .map(|i| i.insert_body)
}

/// What the agent does on the VM, compressed: once the insert arrives, mark the run
/// running, write the log chunks, then write the final status with the end and receipt
/// (chunks first, as the agent does). Returns the run and the insert's body.
async fn stand_in_agent(
    compute: Arc<GceEmulator>,
    storage: Arc<dyn Storage>,
    layout: Layout,
) -> (RunId, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(INSERT_WAIT_SECS);
    let body = loop {
        if let Some(b) = insert_with_room(&compute) {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "no insert within {INSERT_WAIT_SECS} s"
        );
        tokio::time::sleep(Duration::from_millis(INSERT_POLL_MILLIS)).await;
    };
    let id = RunId::parse(body["labels"][LABEL_RUN].as_str().unwrap()).unwrap();
    let started = Utc::now();
    let mut s = RunStatus::launching(id.clone(), started, 0.0);
    s.phase = Phase::Running;
    s.agent_started_at = Some(started);
    s.job_started_at = Some(started);
    put(storage.as_ref(), &layout.status(&id), s.to_json()).await;
    for (i, line) in LOG_LINES.iter().enumerate() {
        put(
            storage.as_ref(),
            &layout.log_chunk(&id, i as u64 + 1),
            *line,
        )
        .await;
    }
    let ended = started + chrono::Duration::seconds(754);
    s.phase = Phase::Ended;
    s.updated_at = ended;
    s.ended_at = Some(ended);
    s.end = Some(EndInfo {
        reason: END,
        exit_code: None,
        signal: Some(15),
        message: "no output for 30 min".into(),
    });
    s.receipt = Some(Receipt::new(started, ended, 0.71, 40, 700));
    put(storage.as_ref(), &layout.status(&id), s.to_json()).await;
    (id, body)
}

fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{stdout}"))
}

#[tokio::test]
async fn launch_follow_prints_the_run_streams_its_logs_and_exits_with_the_end_reasons_code() {
    let w = world().await;
    let layout = w.layout();
    let storage = w.storage();
    let agent = tokio::spawn(stand_in_agent(
        w.compute.clone(),
        storage.clone(),
        layout.clone(),
    ));
    let before = Utc::now();
    let ran = w.launch(&["--follow"]).await;
    let after = Utc::now();
    if !agent.is_finished() && ran.code != END.exit_code() {
        agent.abort();
        panic!("the launch failed before the stand-in agent ran: {ran:?}");
    }
    let (id, body) = agent.await.unwrap();
    assert_eq!(ran.code, END.exit_code(), "{ran:?}");

    // Results on stdout, in order: the summary, the log, the receipt.
    let out = &ran.stdout;
    assert_eq!(field(out, "run "), id.as_str());
    let machine = body["machineType"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    assert!(machine.starts_with("g2-standard-"), "{machine}");
    assert_eq!(
        field(out, "vm "),
        format!("trainer-{id} in us-central1-b ({machine}, 1 × nvidia-l4)")
    );
    let spec = RunSpec::from_json(&String::from_utf8_lossy(
        &storage.get_bytes(&layout.spec(&id)).await.unwrap(),
    ))
    .unwrap();
    assert_eq!(spec.placement.zone.as_deref(), Some("us-central1-b"));
    assert!(spec.price.usd_per_hour > 0.0);
    // "$X/h (source)", or "at least $X/h (…)" when the table lacks a part of the price.
    let price = field(out, "price ");
    let shown = price.trim_start_matches("at least ");
    assert!(
        shown.starts_with(&format!("${:.2}/h (", spec.price.usd_per_hour)),
        "{price}"
    );
    // The hard deadline is the launch time plus the maxRunDuration the VM was given.
    let max_run: i64 = body["scheduling"]["maxRunDuration"]["seconds"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let deadline_text = field(out, "deadline ");
    let deadline = NaiveDateTime::parse_from_str(&deadline_text[..20], "%Y-%m-%d %H:%M UTC")
        .unwrap()
        .and_utc();
    let launched = deadline - chrono::Duration::seconds(max_run);
    assert!(
        launched >= before - chrono::Duration::minutes(1) && launched <= after,
        "deadline {deadline_text} is not launch time + {max_run} s"
    );
    assert!(
        deadline_text.contains("the cloud deletes the VM"),
        "{deadline_text}"
    );
    assert_eq!(
        field(out, "follow "),
        format!("cloudrun-launch logs -f {id}")
    );
    let log_start = out.find(LOG_LINES[0]).unwrap_or_else(|| panic!("{out}"));
    assert!(out[log_start..].starts_with(&LOG_LINES.concat()), "{out}");
    let receipt = Receipt::new(
        before,
        before + chrono::Duration::seconds(754),
        0.71,
        40,
        700,
    );
    assert!(
        out.ends_with(&format!("receipt: {}\n", receipt.summary())),
        "{out}"
    );
    assert!(out.find("deadline ").unwrap() < log_start);

    // Progress on stderr: one line per zone attempt, the agent upload.
    assert!(
        ran.stderr.contains("us-central1-a") && ran.stderr.contains("ZONE_RESOURCE_POOL_EXHAUSTED"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("agent: uploaded"), "{}", ran.stderr);
    assert!(!out.contains("agent: uploaded"));

    // The store holds the code blobs, the manifest, the spec and the agent.
    for file in ["main.py", "src/model.py"] {
        let sha = hex::encode(sha2::Sha256::digest(
            std::fs::read(w.project.join(file)).unwrap(),
        ));
        assert!(
            storage.head(&layout.blob(&sha)).await.unwrap().is_some(),
            "blob of {file}"
        );
    }
    assert!(storage.head(&layout.manifest(&id)).await.unwrap().is_some());
    assert!(storage.head(&layout.spec(&id)).await.unwrap().is_some());
    let agent_sha = hex::encode(sha2::Sha256::digest(
        std::fs::read(w.sb.path().join("cloudrun-agent")).unwrap(),
    ));
    let agent_key = layout.agent_binary(&agent_sha);
    let first = storage.head(&agent_key).await.unwrap().unwrap();
    assert_eq!(
        body["metadata"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == "cloudrun-agent-sha256")
            .unwrap()["value"],
        agent_sha.as_str()
    );

    // A second launch reuses the agent object: no upload, same generation, one object.
    let again = w.launch(&[]).await;
    assert_eq!(again.code, 0, "{again:?}");
    let second_id = field(&again.stdout, "run ");
    assert_ne!(second_id, id.as_str());
    assert!(
        !again.stderr.contains("agent: uploaded"),
        "{}",
        again.stderr
    );
    let still = storage.head(&agent_key).await.unwrap().unwrap();
    assert_eq!(
        still.generation, first.generation,
        "the agent was not rewritten"
    );
    let agent_prefix = agent_key.rsplit_once(&agent_sha).unwrap().0.to_string();
    assert_eq!(storage.list(&agent_prefix).await.unwrap().len(), 1);
}
