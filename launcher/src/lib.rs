//! `cloudrun-launch`: the laptop side. It validates settings into a launch plan, pushes
//! the code, creates the GPU VM, and reads runs back from GCS and Compute from anywhere.
