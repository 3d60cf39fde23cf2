//! `cloudrun-launch` entry point: parse, set up logging, run, map the outcome to an exit code.

use clap::Parser;

/// Launch a training script on a rented GPU that deletes itself when the work is done.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() {
    let _args = Args::parse();
}
