//! Process identity from Linux's `/proc`, for telling "still running" from "gone" across
//! restarts: the agent re-adopts its job after it is restarted, the launcher checks
//! whether a local run's detached agent still lives. A pid alone is not enough (pids are
//! reused), so a process is named by pid + start time + boot id.

/// The start time of `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22), which
/// tells a process from a later one that reused its pid. `None` when it is gone or a
/// zombie.
pub fn proc_start_ticks(pid: i32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // Field 22 is index 19 (the list starts at field 3). A zombie counts as gone.
    if fields.first().map(String::as_str) == Some("Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The fields of `/proc/<pid>/stat` from field 3 (state) on: state, ppid, pgrp, session,
/// ... The command name (field 2) may contain spaces and parentheses, so the split starts
/// after the last `)`. `None` when the process is gone.
pub fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether the process `pid` that started at `start_ticks` still runs.
pub fn is_same_process_alive(pid: i32, start_ticks: u64) -> bool {
    pid > 1 && proc_start_ticks(pid) == Some(start_ticks)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): a different one means the machine
/// rebooted and no process of the last boot survives.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let ticks = proc_start_ticks(me).unwrap();
        assert!(is_same_process_alive(me, ticks));
        assert!(!is_same_process_alive(me, ticks + 1));
        assert!(!boot_id().is_empty());
    }
}
