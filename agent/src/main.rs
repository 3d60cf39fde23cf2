//! `cloudrun-agent` entry point: parse, set up logging, run, map the outcome to an exit code.

use clap::Parser;

/// The cloudrun agent: supervises one training run on a VM and deletes the VM when the
/// run ends, stalls, idles, spends its budget or hits its time limit.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
