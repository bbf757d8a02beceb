//! Orbax: a step directory's `_CHECKPOINT_METADATA` (JSON, written when the
//! save is finalized) names the step's items (`item_handlers`: item name →
//! handler); each item is a directory, and a PyTree item's own `_METADATA`
//! (JSON) says whether its arrays are in an OCDBT database, whose
//! `manifest.ocdbt` must then be there.
//!
//! Orbax writes `_CHECKPOINT_METADATA` since 0.5; a step without it is
//! checked for non-empty item directories only, and its `verified` text
//! says so.

use std::fs;
use std::path::Path;

use serde_json::Value;

use super::{inside, Needs};

pub(crate) use crate::checkpoint::ORBAX_METADATA as METADATA;
const ITEM_METADATA: &str = "_METADATA";
const OCDBT_MANIFEST: &str = "manifest.ocdbt";

/// What `_CHECKPOINT_METADATA` (its bytes) says must be in the step `dir`.
pub(crate) fn needs(dir: &Path, bytes: &[u8]) -> Result<Needs, String> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("cannot read {METADATA} as JSON: {e}"))?;
    let Some(doc) = doc.as_object() else {
        return Err(format!("{METADATA} is not a JSON object"));
    };
    let mut needs = Needs {
        source: METADATA,
        ..Needs::default()
    };
    let items: Vec<String> = match doc.get("item_handlers") {
        Some(Value::Object(items)) => items.keys().map(|k| inside(k)).collect::<Result<_, _>>()?,
        // One unnamed item, saved in the step directory itself.
        Some(Value::String(_)) => vec![String::new()],
        _ => Vec::new(),
    };
    let mut ocdbt = 0;
    for item in &items {
        let prefix = if item.is_empty() {
            String::new()
        } else {
            needs.dirs.push(item.clone());
            format!("{item}/")
        };
        if item_uses_ocdbt(&dir.join(item))? {
            needs.files.push((format!("{prefix}{OCDBT_MANIFEST}"), 1));
            ocdbt += 1;
        }
    }
    needs.verified = if items.is_empty() {
        format!("orbax {METADATA} readable; it names no items: items not checked")
    } else {
        let names: Vec<&str> = items
            .iter()
            .map(|i| if i.is_empty() { "(unnamed)" } else { i })
            .collect();
        format!(
            "orbax {METADATA}: items {} present{}",
            names.join(", "),
            if ocdbt > 0 {
                format!(", {ocdbt} with its OCDBT manifest")
            } else {
                String::new()
            }
        )
    };
    Ok(needs)
}

/// A step from before Orbax wrote `_CHECKPOINT_METADATA`: its visible
/// subdirectories are its items, and each must hold something.
pub(crate) fn needs_without_metadata(dir: &Path) -> Result<Needs, String> {
    let mut items: Vec<String> = fs::read_dir(dir)
        .map_err(|e| format!("cannot read the step directory: {e}"))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .collect();
    items.sort();
    if items.is_empty() {
        return Err(format!(
            "no {METADATA} and no item directory: nothing of a checkpoint is there"
        ));
    }
    Ok(Needs {
        verified: format!(
            "orbax without {METADATA} (written by Orbax 0.5 and later): items {} hold files, their contents not checked",
            items.join(", ")
        ),
        dirs: items,
        files: Vec::new(),
        source: "the item list",
    })
}

/// Whether the item's `_METADATA` says its arrays are in OCDBT. No
/// `_METADATA` (not a PyTree item): nothing to say.
fn item_uses_ocdbt(item: &Path) -> Result<bool, String> {
    let file = item.join(ITEM_METADATA);
    let bytes = match fs::read(&file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "cannot read {} as JSON: {e}",
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        )
    })?;
    Ok(doc.get("use_ocdbt").and_then(Value::as_bool) == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Layout;
    use crate::verify::{Verdict, Verifier};

    /// What orbax-checkpoint 0.12.8 wrote for `CheckpointManager.save(step,
    /// args=StandardSave(...))` here (file names and the metadata files;
    /// the array data files are placeholders).
    fn step_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        fs::write(
            p.join(METADATA),
            r#"{"item_handlers": {"default": "orbax.checkpoint._src.handlers.standard_checkpoint_handler.StandardCheckpointHandler"}, "metrics": {}, "performance_metrics": {}, "init_timestamp_nsecs": 1796409898459301824, "commit_timestamp_nsecs": 1796409898480710173, "custom_metadata": {}}"#,
        )
        .expect("write");
        fs::write(p.join("commit_success.txt"), "").expect("write");
        fs::create_dir_all(p.join("default/ocdbt.process_0/d")).expect("mkdir");
        fs::create_dir_all(p.join("default/d")).expect("mkdir");
        fs::write(
            p.join("default/_METADATA"),
            r#"{"tree_metadata": {}, "use_ocdbt": true, "use_zarr3": false}"#,
        )
        .expect("write");
        fs::write(p.join("default/manifest.ocdbt"), [1u8; 120]).expect("write");
        fs::write(p.join("default/_sharding"), "{}").expect("write");
        dir
    }

    #[test]
    fn a_real_step_layout_is_verified_by_its_metadata() {
        let dir = step_dir();
        assert_eq!(
            Verifier::default().verify(&Layout::Orbax, dir.path()),
            Verdict::Verified(
                "orbax _CHECKPOINT_METADATA: items default present, 1 with its OCDBT manifest"
                    .to_owned()
            )
        );
    }

    #[test]
    fn a_missing_item_or_manifest_is_named() {
        let dir = step_dir();
        fs::remove_file(dir.path().join("default/manifest.ocdbt")).expect("rm");
        assert_eq!(
            Verifier::default().verify(&Layout::Orbax, dir.path()),
            Verdict::Unverified(
                "default/manifest.ocdbt is missing (_CHECKPOINT_METADATA names it)".to_owned()
            )
        );
        fs::remove_dir_all(dir.path().join("default")).expect("rm");
        assert_eq!(
            Verifier::default().verify(&Layout::Orbax, dir.path()),
            Verdict::Unverified("default/ is missing".to_owned())
        );
    }

    #[test]
    fn without_checkpoint_metadata_items_must_hold_something() {
        let dir = step_dir();
        fs::remove_file(dir.path().join(METADATA)).expect("rm");
        assert!(matches!(
            Verifier::default().verify(&Layout::Orbax, dir.path()),
            Verdict::Verified(what) if what.starts_with("orbax without _CHECKPOINT_METADATA")
        ));
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            Verifier::default().verify(&Layout::Orbax, empty.path()),
            Verdict::Unverified(why) if why.contains("nothing of a checkpoint")
        ));
    }

    #[test]
    fn garbage_metadata_is_unverified() {
        let dir = step_dir();
        fs::write(dir.path().join(METADATA), "{\"item_handlers\": ").expect("write");
        assert!(matches!(
            Verifier::default().verify(&Layout::Orbax, dir.path()),
            Verdict::Unverified(why) if why.starts_with("cannot read _CHECKPOINT_METADATA as JSON")
        ));
        fs::write(
            dir.path().join(METADATA),
            r#"{"item_handlers": {"../../etc": "x"}}"#,
        )
        .expect("write");
        assert!(matches!(
            Verifier::default().verify(&Layout::Orbax, dir.path()),
            Verdict::Unverified(why) if why.contains("outside the checkpoint")
        ));
    }
}
