//! How an `nvidia-smi` product name is matched to a Compute Engine accelerator type, so
//! the agent can tell that the GPUs a run paid for (the spec's `placement.gpu`) are the
//! ones the driver sees.
//!
//! A name matches a row when every word of the row is a word of the name (words are runs
//! of letters and digits, compared without case): `NVIDIA A100-SXM4-40GB` has the words
//! `NVIDIA`, `A100`, `SXM4`, `40GB`, so it is an `nvidia-tesla-a100` and not an
//! `nvidia-a100-80gb`, and `NVIDIA L40S` is not an `nvidia-l4`. The words are the model's
//! own, not the board's, so a new board revision (`-PCIE-`, `-SXM2-`) still matches.
//! An accelerator type without a row is not checked by kind, only by count. The rows
//! are [`crate::gpu_table::GPUS`] (each row's `smi_words`); this module owns the match.

use crate::gpu_table::{self, GpuRow};

/// The words `accelerator`'s `nvidia-smi` name carries; `None` for a type without a row.
pub fn words(accelerator: &str) -> Option<&'static [&'static str]> {
    gpu_table::row(accelerator).map(|r| r.smi_words)
}

/// Whether `nvidia-smi` naming a GPU `smi_name` is an `accelerator`; `None` when the
/// accelerator type has no row (its kind cannot be checked).
pub fn matches(accelerator: &str, smi_name: &str) -> Option<bool> {
    matches_in(gpu_table::GPUS, accelerator, smi_name)
}

/// [`matches`] against the rows of `table`.
pub fn matches_in(table: &[GpuRow], accelerator: &str, smi_name: &str) -> Option<bool> {
    let want = gpu_table::row_in(table, accelerator)?.smi_words;
    let have: Vec<&str> = smi_name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    Some(
        want.iter()
            .all(|w| have.iter().any(|h| h.eq_ignore_ascii_case(w))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_and_documented_names_match_their_accelerator() {
        for (acc, name) in [
            ("nvidia-tesla-t4", "Tesla T4"),
            ("nvidia-tesla-v100", "Tesla V100-SXM2-16GB"),
            ("nvidia-tesla-p100", "Tesla P100-PCIE-16GB"),
            ("nvidia-l4", "NVIDIA L4"),
            ("nvidia-tesla-a100", "NVIDIA A100-SXM4-40GB"),
            ("nvidia-a100-80gb", "NVIDIA A100-SXM4-80GB"),
            ("nvidia-h100-80gb", "NVIDIA H100 80GB HBM3"),
            ("nvidia-h100-mega-80gb", "NVIDIA H100 80GB HBM3"),
            ("nvidia-h200-141gb", "NVIDIA H200"),
            ("NVIDIA-L4", "nvidia l4"),
        ] {
            assert_eq!(matches(acc, name), Some(true), "{acc} / {name}");
        }
    }

    #[test]
    fn neighbours_do_not_match() {
        for (acc, name) in [
            ("nvidia-l4", "NVIDIA L40S"),
            ("nvidia-l4", "Tesla T4"),
            ("nvidia-tesla-a100", "NVIDIA A100-SXM4-80GB"),
            ("nvidia-a100-80gb", "NVIDIA A100-SXM4-40GB"),
            ("nvidia-h100-80gb", "NVIDIA H200"),
            ("nvidia-tesla-p4", "Tesla P40"),
            ("nvidia-tesla-t4", ""),
        ] {
            assert_eq!(matches(acc, name), Some(false), "{acc} / {name}");
        }
    }

    #[test]
    fn an_accelerator_without_a_row_is_not_checked_by_kind() {
        assert_eq!(matches("nvidia-future-9000", "NVIDIA F9000"), None);
        assert_eq!(words("nvidia-future-9000"), None);
    }
}
