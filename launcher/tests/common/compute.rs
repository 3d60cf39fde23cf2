//! The testkit's Compute Engine emulator (`cloudrun_testkit::gce`) as the launcher's
//! API-level tests use it: no VM boots, operations finish in tens of milliseconds, and
//! helpers read the calls it recorded.

use std::time::{Duration, Instant};

use cloudrun_testkit::gce::{GceConfig, GceEmulator, ZoneState};

/// How long an Operation stays PENDING, and then RUNNING, in milliseconds (a VM going
/// down takes as long): short, since these tests have no VM to boot.
pub const QUICK_OP_MILLIS: u64 = 20;
/// Longest `zoneOperations.wait` hangs, in milliseconds.
pub const QUICK_WAIT_HANG_MILLIS: u64 = 200;
/// How long [`wait_gone`] waits for deletes to finish, in seconds.
pub const GONE_TIMEOUT_SECS: u64 = 10;

/// The emulator with `zones` set as given (every other zone has room).
pub fn emulator(zones: &[(&str, ZoneState)]) -> GceEmulator {
    let op = Duration::from_millis(QUICK_OP_MILLIS);
    let emu = GceEmulator::start(GceConfig {
        boot: false,
        op_pending: op,
        op_running: op,
        shutdown_grace: op,
        wait_hang: Duration::from_millis(QUICK_WAIT_HANG_MILLIS),
        restart_after: None,
        ..GceConfig::default()
    });
    for (zone, state) in zones {
        emu.set_zone(zone, state.clone());
    }
    emu
}

/// `(zone, requestId)` of every `instances.insert` call, in order.
pub fn inserts(emu: &GceEmulator) -> Vec<(String, String)> {
    emu.calls_to("POST", "/instances")
        .into_iter()
        .map(|c| {
            (
                c.zone().unwrap_or_default(),
                c.request_id.unwrap_or_default(),
            )
        })
        .collect()
}

/// `zone/name` of every `instances.delete` call, in order.
pub fn deletes(emu: &GceEmulator) -> Vec<String> {
    emu.calls()
        .into_iter()
        .filter(|c| c.method == "DELETE")
        .filter_map(|c| c.instance_key())
        .collect()
}

/// The `Authorization` header of every Compute call, in order.
pub fn auth_headers(emu: &GceEmulator) -> Vec<String> {
    emu.calls().into_iter().map(|c| c.authorization).collect()
}

/// The `filter` of every `aggregatedList` of instances, in order.
pub fn list_filters(emu: &GceEmulator) -> Vec<String> {
    emu.calls_to("GET", "/aggregated/instances")
        .into_iter()
        .map(|c| c.param("filter").unwrap_or_default())
        .collect()
}

/// Names of the instances that exist now, by zone then name.
pub fn instance_names(emu: &GceEmulator) -> Vec<String> {
    emu.instances().into_iter().map(|i| i.name).collect()
}

/// Wait until at most `left` instances exist: a delete is an Operation that takes its
/// time, as on Compute Engine, and the callers do not wait for it.
pub async fn wait_until_at_most(emu: &GceEmulator, left: usize) {
    let deadline = Instant::now() + Duration::from_secs(GONE_TIMEOUT_SECS);
    while emu.instances().len() > left {
        assert!(
            Instant::now() < deadline,
            "instances still there after {GONE_TIMEOUT_SECS} s: {:?}",
            instance_names(emu)
        );
        tokio::time::sleep(Duration::from_millis(QUICK_OP_MILLIS)).await;
    }
}
