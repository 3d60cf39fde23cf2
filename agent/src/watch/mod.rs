//! The watchers: background tasks that each wait for one thing and hand it to the
//! supervisor ([`crate::agent`]) as an [`Event`]: GPU samples ([`gpu`]), a stop request in
//! the store ([`stop_request`]), the preemption notice ([`preemption`]), SIGTERM to the
//! agent ([`sigterm`]) and the periodic output passes ([`outputs`]). They hold no run
//! state and decide nothing: each ends when its token is cancelled or the supervisor is
//! gone.

pub mod gpu;
pub mod outputs;
pub mod preemption;
pub mod sigterm;
pub mod stop_request;

use cloudrun::status::GpuSample;

use crate::gpu::GpuState;
use crate::transfer::OutputPass;

/// Events queued from the watchers before they wait for the supervisor.
pub const EVENT_QUEUE: usize = 256;

/// What a watcher saw.
#[derive(Debug)]
pub enum Event {
    Gpu(GpuState, GpuSample),
    Preempted,
    StopRequested(String),
    Outputs(OutputPass),
    Sigterm,
}
