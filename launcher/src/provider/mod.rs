//! Where a run's machine lives: one trait that every kind implements (a Compute Engine VM
//! in [`gce`], a detached agent on this machine in [`local`]), chosen once from the
//! settings by `open_provider` in the crate root. `launch`, `status`, `ls`, `stop` and `sweep`
//! are written once, in [`crate::runs`], against this trait; a new kind is one more
//! module here and its line in `open_provider`.
//!
//! A provider owns its machines (create, list, inspect, end) and nothing of the store's
//! documents beyond what only it can record (the end of a run whose machine it killed).

pub mod gce;
pub mod local;

use std::io::Write;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::runs::{RunView, RunsError, Store};

/// One machine of ours (a VM, a local agent) as its provider lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The run it serves (its `cloudrun-run` label), or `?<name>` when it names none.
    pub run: String,
    /// How `sweep` names it: `cr-x in us-central1-a`, `local agent pid 42`.
    pub label: String,
    /// `ls`'s VM column: `cr-x RUNNING (us-central1-a)`, `local agent pid 42: running`.
    pub describe: String,
    /// Whether it still runs (and, for a VM, costs money).
    pub up: bool,
    /// When it was created, where the provider knows.
    pub created_at: Option<DateTime<Utc>>,
    /// The provider's own reference, for [`Provider::end_machine`].
    pub handle: String,
}

/// What a provider says of one run's machine in `status RUN`.
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Lines after `run` and `phase`, as `(label, text)`: `("vm", "…")`.
    pub lines: Vec<(&'static str, String)>,
    /// The `vm` object of `status RUN --json`.
    pub json: serde_json::Value,
    /// The machine is gone and the run never recorded an end: it never will.
    pub lost: bool,
}

/// How messages about a provider's machines read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Words {
    /// What a machine is called: `VM`, `agent`.
    pub noun: &'static str,
    /// What `sweep --yes` does to one, and has done: `delete`/`deleted`.
    pub end: &'static str,
    pub ended: &'static str,
    /// The command a user types to reach these runs: `cloudrun-launch`,
    /// `cloudrun-launch --local`.
    pub command: &'static str,
}

/// Whether a run's machine still runs (see [`Provider::liveness`]).
pub type Liveness = Box<dyn Fn() -> bool + Send + Sync>;

/// What a launch needs beyond the provider: the invocation.
pub struct LaunchRequest<'a> {
    pub cli: &'a crate::cli::Cli,
    pub settings: &'a crate::settings::Settings,
    pub ctx: &'a crate::Context<'a>,
    pub now: DateTime<Utc>,
}

/// Where a run's machine lives.
#[async_trait(?Send)]
pub trait Provider {
    /// The kind, as a run's spec records it (`placement.provider`).
    fn kind(&self) -> cloudrun::spec::Provider;

    /// How messages name its machines and the command that reaches its runs.
    fn words(&self) -> Words;

    /// Whether [`Provider::machines`] sees every machine there is: then a run with none
    /// listed has none anywhere (a project's VMs), else it may run elsewhere (a local
    /// agent started on another computer).
    fn sees_all(&self) -> bool;

    /// Validate the settings into a plan, then (unless `--dry-run`) put the code and the
    /// spec in the store and start the run's machine; with `--follow`, follow it.
    /// Returns the exit code.
    async fn launch(
        &self,
        req: &LaunchRequest<'_>,
        out: &mut (dyn Write + Send),
    ) -> Result<i32, crate::Error>;

    /// A check that the run's machine still runs, for `logs -f` to stop waiting for an
    /// end that will never be written; `None` when only the run's status can tell.
    fn liveness(&self, run: &cloudrun::RunId) -> Option<Liveness>;

    /// Every machine of ours, or why they cannot be listed (`VM check skipped: …`).
    async fn machines(&self) -> Result<Vec<Machine>, RunsError>;

    /// One run's machine, for `status RUN`.
    async fn inspect(&self, run: &RunView) -> Inspection;

    /// Record the end of a run whose machine is gone without recording one (`lost`),
    /// and end what is left of its job. Returns whether the run was lost.
    async fn close_lost(
        &self,
        store: &Store,
        run: &RunView,
        by: &str,
        now: DateTime<Utc>,
        out: &mut dyn Write,
    ) -> Result<bool, RunsError>;

    /// `stop --now`: end the run's machine at once (outputs not yet synced are lost),
    /// after the stop request is written.
    async fn stop_now(
        &self,
        store: &Store,
        run: &RunView,
        by: &str,
        now: DateTime<Utc>,
        out: &mut dyn Write,
    ) -> Result<(), RunsError>;

    /// End a machine `sweep` chose; the line to print on success.
    async fn end_machine(&self, m: &Machine, why: &str) -> Result<String, String>;
}

/// Whether `run` is lost by what `machines` shows: its machine is listed, no longer
/// runs, and the run never recorded an end.
pub fn lost(run: &RunView, machine: Option<&Machine>) -> bool {
    !run.phase().is_terminal() && machine.is_some_and(|m| !m.up)
}
