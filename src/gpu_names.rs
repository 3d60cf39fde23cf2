//! Which `nvidia-smi` product names each Compute Engine accelerator type answers to, so
//! the agent can tell that the GPUs a run paid for (the spec's `placement.gpu`) are the
//! ones the driver sees. One row per accelerator type; nothing else here.
//!
//! A name matches a row when every word of the row is a word of the name (words are runs
//! of letters and digits, compared without case): `NVIDIA A100-SXM4-40GB` has the words
//! `NVIDIA`, `A100`, `SXM4`, `40GB`, so it is an `nvidia-tesla-a100` and not an
//! `nvidia-a100-80gb`, and `NVIDIA L40S` is not an `nvidia-l4`. The words are the model's
//! own, not the board's, so a new board revision (`-PCIE-`, `-SXM2-`) still matches.
//! An accelerator type without a row is not checked by kind, only by count.

/// Accelerator type → the words its `nvidia-smi` name carries (Google's GPU pages and
/// real `nvidia-smi` replies: `Tesla T4`, `NVIDIA L4`, `NVIDIA A100-SXM4-40GB`,
/// `NVIDIA H100 80GB HBM3`, `NVIDIA H200`).
pub const SMI_NAME_WORDS: &[(&str, &[&str])] = &[
    ("nvidia-tesla-t4", &["T4"]),
    ("nvidia-tesla-t4-vws", &["T4"]),
    ("nvidia-tesla-p4", &["P4"]),
    ("nvidia-tesla-p4-vws", &["P4"]),
    ("nvidia-tesla-v100", &["V100"]),
    ("nvidia-tesla-p100", &["P100"]),
    ("nvidia-tesla-p100-vws", &["P100"]),
    ("nvidia-l4", &["L4"]),
    ("nvidia-l4-vws", &["L4"]),
    ("nvidia-tesla-a100", &["A100", "40GB"]),
    ("nvidia-a100-80gb", &["A100", "80GB"]),
    ("nvidia-h100-80gb", &["H100"]),
    ("nvidia-h100-mega-80gb", &["H100"]),
    ("nvidia-h200-141gb", &["H200"]),
    ("nvidia-b200", &["B200"]),
    ("nvidia-gb200", &["GB200"]),
    ("nvidia-rtx-pro-6000", &["RTX", "PRO", "6000"]),
];

/// The words `accelerator`'s `nvidia-smi` name carries; `None` for a type without a row.
pub fn words(accelerator: &str) -> Option<&'static [&'static str]> {
    SMI_NAME_WORDS
        .iter()
        .find(|(a, _)| a.eq_ignore_ascii_case(accelerator))
        .map(|(_, w)| *w)
}

/// Whether `nvidia-smi` naming a GPU `smi_name` is an `accelerator`; `None` when the
/// accelerator type has no row (its kind cannot be checked).
pub fn matches(accelerator: &str, smi_name: &str) -> Option<bool> {
    let want = words(accelerator)?;
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
