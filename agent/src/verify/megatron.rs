//! Megatron-LM's legacy format: an `iter_NNNNNNN/` directory holds one
//! `mp_rank_XX` (tensor parallel) or `mp_rank_XX_YYY` (tensor × pipeline
//! parallel) directory per model-parallel rank, each with the rank's
//! `model_optim_rng.pt` (and `distrib_optim.pt` with the distributed
//! optimizer). The tracker file is checked by the scan
//! ([`crate::checkpoint`]); here every rank directory must hold its model
//! file, non-empty. The `torch_dist` format is DCP and is checked by its
//! `.metadata` ([`super::dcp`]).
//!
//! Megatron writes no list of its ranks, so a rank directory missing
//! altogether (a lost `mp_rank_03` of 4) is caught only when the ranks are
//! not numbered 0 to N-1 without a gap in each dimension.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use super::Needs;

const RANK_PREFIX: &str = "mp_rank_";
const MODEL_FILE: &str = "model_optim_rng.pt";

pub(crate) fn needs(dir: &Path) -> Result<Needs, String> {
    let mut ranks: Vec<(String, Vec<u32>)> = fs::read_dir(dir)
        .map_err(|e| format!("cannot read the iteration directory: {e}"))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| {
            let coords = name
                .strip_prefix(RANK_PREFIX)?
                .split('_')
                .map(|n| n.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((name, coords))
        })
        .collect();
    ranks.sort();
    if ranks.is_empty() {
        return Err(format!(
            "no {RANK_PREFIX}* directory (neither the legacy format nor torch_dist's .metadata)"
        ));
    }
    // Each dimension's indexes must run 0..n without a gap.
    let dims = ranks[0].1.len();
    for d in 0..dims {
        let seen: BTreeSet<u32> = ranks
            .iter()
            .filter_map(|(_, c)| c.get(d).copied())
            .collect();
        let n = u32::try_from(seen.len()).unwrap_or(u32::MAX);
        if let Some(gap) = (0..n).find(|i| !seen.contains(i)) {
            return Err(format!(
                "model-parallel rank directories have a gap: none with index {gap} in dimension {}",
                d + 1
            ));
        }
    }
    let rank_count = ranks.len();
    Ok(Needs {
        files: ranks
            .into_iter()
            .map(|(name, _)| (format!("{name}/{MODEL_FILE}"), 1))
            .collect(),
        dirs: Vec::new(),
        source: "the legacy format",
        verified: format!(
            "megatron: {rank_count} model-parallel rank directories, each with a non-empty {MODEL_FILE}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Layout;
    use crate::verify::{Verdict, Verifier};

    fn iteration(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, content) in files {
            let path = dir.path().join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("mkdir");
            }
            fs::write(path, content).expect("write");
        }
        dir
    }

    #[test]
    fn every_rank_needs_its_model_file() {
        let whole = iteration(&[
            ("mp_rank_00_000/model_optim_rng.pt", "x"),
            ("mp_rank_01_000/model_optim_rng.pt", "x"),
            ("mp_rank_00_001/model_optim_rng.pt", "x"),
            ("mp_rank_01_001/model_optim_rng.pt", "x"),
        ]);
        assert_eq!(
            Verifier::default().verify(&Layout::Megatron, whole.path()),
            Verdict::Verified(
                "megatron: 4 model-parallel rank directories, each with a non-empty model_optim_rng.pt"
                    .to_owned()
            )
        );
        let empty_file = iteration(&[
            ("mp_rank_00/model_optim_rng.pt", "x"),
            ("mp_rank_01/model_optim_rng.pt", ""),
        ]);
        assert_eq!(
            Verifier::default().verify(&Layout::Megatron, empty_file.path()),
            Verdict::Unverified(
                "mp_rank_01/model_optim_rng.pt is 0 bytes, the legacy format needs at least 1"
                    .to_owned()
            )
        );
        let gap = iteration(&[
            ("mp_rank_00/model_optim_rng.pt", "x"),
            ("mp_rank_02/model_optim_rng.pt", "x"),
        ]);
        assert!(matches!(
            Verifier::default().verify(&Layout::Megatron, gap.path()),
            Verdict::Unverified(why) if why.contains("none with index 1")
        ));
        let nothing = iteration(&[("notes.txt", "x")]);
        assert!(matches!(
            Verifier::default().verify(&Layout::Megatron, nothing.path()),
            Verdict::Unverified(why) if why.starts_with("no mp_rank_* directory")
        ));
    }
}
