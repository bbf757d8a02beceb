//! PyTorch Distributed Checkpoint: `.metadata` names every storage file and
//! the extents (offset, length) of each tensor chunk in it.
//!
//! `.metadata` is a pickle of `torch.distributed.checkpoint.metadata.Metadata`
//! whose `storage_data` maps each chunk's `MetadataIndex` to a `_StorageInfo`
//! (`relative_path`, `offset`, `length`), written by the file system writer.
//! It is read with serde-pickle, a data-only unpickler: classes are not
//! looked up or run; an instance is read as the state its pickle restores
//! (a dataclass's field dictionary), and any other global (`torch.float32`,
//! `torch.Size`) as an opaque value that is skipped. Only the fields named
//! below are read, so what PyTorch adds to the format in later versions
//! does not matter.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::{inside, Needs};

/// DCP's coordinator writes this last, after every rank's files.
pub const METADATA: &str = ".metadata";

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    storage_data: Option<StorageData>,
}

/// The values of `storage_data`; its keys (`MetadataIndex` instances, whose
/// state is a dictionary and so cannot be a key in serde-pickle's own value
/// tree) are skipped.
struct StorageData(Vec<StorageInfo>);

#[derive(Deserialize)]
struct StorageInfo {
    relative_path: String,
    offset: u64,
    length: u64,
}

impl<'de> Deserialize<'de> for StorageData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<StorageData, D::Error> {
        struct Values;
        impl<'de> Visitor<'de> for Values {
            type Value = StorageData;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a dictionary of storage infos")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StorageData, A::Error> {
                let mut infos = Vec::new();
                while let Some((IgnoredAny, info)) = map.next_entry::<IgnoredAny, StorageInfo>()? {
                    infos.push(info);
                }
                Ok(StorageData(infos))
            }
        }
        d.deserialize_map(Values)
    }
}

/// What `.metadata` (its bytes) says must be in the checkpoint.
pub(crate) fn needs(_dir: &Path, bytes: &[u8]) -> Result<Needs, String> {
    let options = serde_pickle::DeOptions::new()
        .keep_restore_state()
        .replace_unresolved_globals();
    let metadata: Metadata = serde_pickle::from_slice(bytes, options)
        .map_err(|e| format!("cannot read {METADATA} as DCP metadata: {e}"))?;
    let Some(StorageData(infos)) = metadata.storage_data else {
        return Ok(Needs {
            verified: format!(
                "dcp {METADATA} readable; it names no storage files (not the file system writer's): files not checked"
            ),
            ..Needs::default()
        });
    };
    let mut extents: BTreeMap<String, u64> = BTreeMap::new();
    for info in &infos {
        let name = inside(&info.relative_path)?;
        let end = info.offset.checked_add(info.length).ok_or_else(|| {
            format!(
                "{METADATA} gives {name} an extent past 2^64 bytes (offset {}, length {})",
                info.offset, info.length
            )
        })?;
        let least = extents.entry(name).or_default();
        *least = (*least).max(end);
    }
    let bytes: u64 = extents.values().sum();
    Ok(Needs {
        verified: format!(
            "dcp {METADATA}: {} storage files holding {} chunks, each at least as long as its extents ({bytes} bytes in all)",
            extents.len(),
            infos.len()
        ),
        files: extents.into_iter().collect(),
        dirs: Vec::new(),
        source: METADATA,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Layout;
    use crate::verify::{Verdict, Verifier};
    use std::fs;

    /// Written by PyTorch 2.15.0 (`dcp.save` of an FSDP2 model, its AdamW
    /// state and a step tensor, 2 ranks, gloo).
    const TORCH_2_15: &[u8] = include_bytes!("testdata/dcp-torch-2.15-2ranks.metadata");
    const SHARDS: [(&str, u64); 2] = [("__0_0.distcp", 20_076), ("__1_0.distcp", 43_157)];

    fn checkpoint(shards: &[(&str, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(METADATA), TORCH_2_15).expect("metadata");
        for (name, len) in shards {
            let file = fs::File::create(dir.path().join(name)).expect("shard");
            file.set_len(*len).expect("set_len");
        }
        dir
    }

    #[test]
    fn real_metadata_names_every_shard_and_its_extent() {
        let needs = needs(Path::new("."), TORCH_2_15).expect("parses");
        assert_eq!(
            needs.files,
            SHARDS
                .iter()
                .map(|(n, l)| ((*n).to_owned(), *l))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            needs.verified,
            "dcp .metadata: 2 storage files holding 41 chunks, each at least as long as its extents (63233 bytes in all)"
        );
    }

    #[test]
    fn a_whole_checkpoint_is_verified_a_short_or_missing_shard_is_named() {
        let mut v = Verifier::default();
        let whole = checkpoint(&SHARDS);
        assert!(matches!(
            v.verify(&Layout::Dcp, whole.path()),
            Verdict::Verified(what) if what.starts_with("dcp .metadata: 2 storage files")
        ));
        // Cut short after the first look: still caught (files are looked
        // at on every scan, only the metadata is remembered).
        fs::File::options()
            .write(true)
            .open(whole.path().join("__1_0.distcp"))
            .and_then(|f| f.set_len(100))
            .expect("truncate");
        assert_eq!(
            v.verify(&Layout::Dcp, whole.path()),
            Verdict::Unverified(
                "__1_0.distcp is 100 bytes, .metadata needs at least 43157".to_owned()
            )
        );
        let missing = checkpoint(&SHARDS[..1]);
        assert_eq!(
            v.verify(&Layout::Dcp, missing.path()),
            Verdict::Unverified("__1_0.distcp is missing (.metadata names it)".to_owned())
        );
    }

    #[test]
    fn unreadable_metadata_is_unverified_with_the_reason() {
        let dir = checkpoint(&SHARDS);
        fs::write(dir.path().join(METADATA), &TORCH_2_15[..4_000]).expect("cut");
        match Verifier::default().verify(&Layout::Dcp, dir.path()) {
            Verdict::Unverified(why) => {
                assert!(
                    why.starts_with("cannot read .metadata as DCP metadata"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
        fs::write(dir.path().join(METADATA), b"not a pickle").expect("garbage");
        assert!(matches!(
            Verifier::default().verify(&Layout::Dcp, dir.path()),
            Verdict::Unverified(_)
        ));
    }

    #[test]
    fn a_rewritten_metadata_is_read_again() {
        let mut v = Verifier::default();
        let dir = checkpoint(&SHARDS);
        assert!(matches!(
            v.verify(&Layout::Dcp, dir.path()),
            Verdict::Verified(_)
        ));
        // A save of the same step again replaces .metadata (by rename: a
        // new inode); what the new one says counts.
        let tmp = dir.path().join("new");
        fs::write(&tmp, b"garbage").expect("write");
        fs::rename(&tmp, dir.path().join(METADATA)).expect("rename");
        assert!(matches!(
            v.verify(&Layout::Dcp, dir.path()),
            Verdict::Unverified(_)
        ));
    }
}
