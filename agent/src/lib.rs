//! `cloudrun-agent`: the on-VM cost guard. It pulls the code, runs the training as
//! `VM_USER`, ships logs and checkpoints, samples `nvidia-smi`, applies the stop policies
//! and deletes its own VM as its last, single step.
