//! The object layout under `GCS_DIR`: every object name both binaries read or write
//! is built here, so no path is spelled in two places.
//!
//! ```text
//! blobs/<sha256>                    file contents, shared by all runs
//! agent/<sha256>/cloudrun-agent     static agent binaries
//! runs/<id>/spec.json               what to run, the policies, the price
//! runs/<id>/manifest.json           the code tree
//! runs/<id>/status.json             phase, times, last GPU sample, cost, end reason
//! runs/<id>/metrics/<seq>           GPU samples in JSONL batches (in name order: one JSONL file)
//! runs/<id>/logs/<seq>              the job's output in ordered chunks
//! runs/<id>/control/stop.json       a stop request from the launcher
//! runs/<id>/outputs/<dir>/...       checkpoint/, model/ ... as plain objects
//! ```

use crate::run_id::RunId;
use crate::store_url::StoreUrl;

/// Width of the zero-padded sequence number in log and metrics chunk names, so that
/// the lexicographic order of a listing is the write order (10^12 chunks is plenty).
pub const CHUNK_SEQ_WIDTH: usize = 12;

/// File name of the agent binary under `agent/<sha256>/`.
pub const AGENT_BINARY_NAME: &str = "cloudrun-agent";

/// Object names under one `GCS_DIR` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// A layout rooted at `prefix` (no leading or trailing `/`; empty for the bucket root).
    pub fn new(prefix: &str) -> Self {
        Layout {
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    /// The layout for a parsed `GCS_DIR`.
    pub fn for_store(url: &StoreUrl) -> Self {
        Layout::new(url.prefix())
    }

    fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// `doctor/<id>`: the probe object `cloudrun-launch doctor` writes, reads back and
    /// deletes to prove the prefix is writable.
    pub fn doctor_probe(&self, id: &str) -> String {
        self.key(&format!("doctor/{id}"))
    }

    /// `blobs/` (with the trailing slash, for listings).
    pub fn blobs_prefix(&self) -> String {
        self.key("blobs/")
    }

    /// `blobs/<sha256 hex>`.
    pub fn blob(&self, sha256_hex: &str) -> String {
        self.key(&format!("blobs/{sha256_hex}"))
    }

    /// `agent/<sha256>/cloudrun-agent`.
    pub fn agent_binary(&self, sha256_hex: &str) -> String {
        self.key(&format!("agent/{sha256_hex}/{AGENT_BINARY_NAME}"))
    }

    /// `runs/` (for listing all runs).
    pub fn runs_prefix(&self) -> String {
        self.key("runs/")
    }

    /// `runs/<id>/`.
    pub fn run_prefix(&self, run: &RunId) -> String {
        self.key(&format!("runs/{run}/"))
    }

    /// `runs/<id>/spec.json`.
    pub fn spec(&self, run: &RunId) -> String {
        self.key(&format!("runs/{run}/spec.json"))
    }

    /// `runs/<id>/manifest.json`.
    pub fn manifest(&self, run: &RunId) -> String {
        self.key(&format!("runs/{run}/manifest.json"))
    }

    /// `runs/<id>/status.json`.
    pub fn status(&self, run: &RunId) -> String {
        self.key(&format!("runs/{run}/status.json"))
    }

    /// `runs/<id>/metrics/`: batches of GPU samples, one JSON object a line.
    pub fn metrics_prefix(&self, run: &RunId) -> String {
        self.key(&format!("runs/{run}/metrics/"))
    }

    /// One batch of samples, `runs/<id>/metrics/<seq>`.
    pub fn metrics_chunk(&self, run: &RunId, seq: u64) -> String {
        format!(
            "{}{seq:0width$}",
            self.metrics_prefix(run),
            width = CHUNK_SEQ_WIDTH
        )
    }

    /// `runs/<id>/logs/`.
    pub fn logs_prefix(&self, run: &RunId) -> String {
        self.key(&format!("runs/{run}/logs/"))
    }

    /// One log chunk, `runs/<id>/logs/<seq>`; chunks concatenated in name order are the
    /// job's whole output.
    pub fn log_chunk(&self, run: &RunId, seq: u64) -> String {
        format!(
            "{}{seq:0width$}",
            self.logs_prefix(run),
            width = CHUNK_SEQ_WIDTH
        )
    }

    /// `runs/<id>/control/stop.json`: the launcher's stop request (see
    /// [`crate::status::StopRequest`]). The agent polls for it.
    pub fn stop_request(&self, run: &RunId) -> String {
        self.key(&format!("runs/{run}/control/stop.json"))
    }

    /// `runs/<id>/outputs/`.
    pub fn outputs_prefix(&self, run: &RunId) -> String {
        self.key(&format!("runs/{run}/outputs/"))
    }

    /// Where node `node` of a run on several VMs mirrors its output folders: node 0 into
    /// `runs/<id>/outputs/` (as on one VM), node k ≥ 1 into `runs/<id>/outputs/node-<k>/`,
    /// so that a path two nodes write is kept twice, never overwritten (the documented
    /// rule; on resume a node restores `outputs/` and then its own `node-<k>/` over it).
    pub fn node_outputs_prefix(&self, run: &RunId, node: u32) -> String {
        if node == 0 {
            self.outputs_prefix(run)
        } else {
            format!("{}node-{node}/", self.outputs_prefix(run))
        }
    }

    /// Where node `node` ships the job's log chunks: node 0 to `runs/<id>/logs/` (as on
    /// one VM), node k ≥ 1 to `runs/<id>/nodes/<k>/logs/`; `logs` prefixes each line
    /// with its node.
    pub fn node_logs_prefix(&self, run: &RunId, node: u32) -> String {
        if node == 0 {
            self.logs_prefix(run)
        } else {
            self.key(&format!("runs/{run}/nodes/{node}/logs/"))
        }
    }

    /// `runs/<id>/nodes/<k>/node.json`: one node's own report (its attempt, phase, GPU
    /// idleness, heartbeat), read by the other nodes of the run.
    pub fn node_doc(&self, run: &RunId, node: u32) -> String {
        self.key(&format!("runs/{run}/nodes/{node}/node.json"))
    }

    /// `runs/<id>/nodes/barrier/<attempt>/`: the nodes' "ready" markers for one round of
    /// attempts; the job starts on every node once all have theirs there.
    pub fn barrier_prefix(&self, run: &RunId, round: u32) -> String {
        self.key(&format!("runs/{run}/nodes/barrier/{round}/"))
    }

    /// The run id a key under `runs/` belongs to, if any.
    pub fn run_of_key(&self, key: &str) -> Option<RunId> {
        let rest = key.strip_prefix(&self.runs_prefix())?;
        let id = rest.split('/').next()?;
        RunId::parse(id).ok()
    }

    /// The sequence number of a chunk key made by [`Layout::log_chunk`] or
    /// [`Layout::metrics_chunk`].
    pub fn chunk_seq(key: &str) -> Option<u64> {
        key.rsplit('/').next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunId {
        RunId::parse("20261126-071500-ab12").unwrap()
    }

    #[test]
    fn keys_sit_under_the_prefix() {
        let l = Layout::new("team/x/");
        assert_eq!(l.blob("abc"), "team/x/blobs/abc");
        assert_eq!(l.agent_binary("ff"), "team/x/agent/ff/cloudrun-agent");
        assert_eq!(
            l.status(&run()),
            "team/x/runs/20261126-071500-ab12/status.json"
        );
        assert_eq!(
            l.log_chunk(&run(), 7),
            "team/x/runs/20261126-071500-ab12/logs/000000000007"
        );
        assert_eq!(
            Layout::new("").spec(&run()),
            "runs/20261126-071500-ab12/spec.json"
        );
    }

    #[test]
    fn node_zero_keeps_the_one_vm_keys_and_other_nodes_get_their_own() {
        let l = Layout::new("p/");
        assert_eq!(l.node_outputs_prefix(&run(), 0), l.outputs_prefix(&run()));
        assert_eq!(l.node_logs_prefix(&run(), 0), l.logs_prefix(&run()));
        assert_eq!(
            l.node_outputs_prefix(&run(), 2),
            "p/runs/20261126-071500-ab12/outputs/node-2/"
        );
        assert_eq!(
            l.node_logs_prefix(&run(), 1),
            "p/runs/20261126-071500-ab12/nodes/1/logs/"
        );
        assert_eq!(
            l.node_doc(&run(), 1),
            "p/runs/20261126-071500-ab12/nodes/1/node.json"
        );
        assert_eq!(
            l.barrier_prefix(&run(), 3),
            "p/runs/20261126-071500-ab12/nodes/barrier/3/"
        );
        assert_eq!(l.run_of_key(&l.node_doc(&run(), 1)), Some(run()));
    }

    #[test]
    fn chunk_names_sort_in_write_order() {
        let l = Layout::new("p");
        let a = l.log_chunk(&run(), 9);
        let b = l.log_chunk(&run(), 10);
        assert!(a < b);
        assert_eq!(Layout::chunk_seq(&b), Some(10));
    }

    #[test]
    fn finds_the_run_of_a_key() {
        let l = Layout::new("p");
        assert_eq!(l.run_of_key(&l.status(&run())), Some(run()));
        assert_eq!(l.run_of_key("p/blobs/x"), None);
        assert_eq!(l.run_of_key("p/runs/not-an-id/status.json"), None);
    }
}
