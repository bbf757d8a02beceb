//! Verifying a checkpoint by its layout's own metadata, before it is listed
//! as a resume point.
//!
//! A completeness marker (DCP's `.metadata`, Orbax's rename or
//! `commit_success.txt`, Megatron's tracker) says a save finished; it does
//! not say the files are still whole. A shard lost or cut short afterwards
//! (a full disk during a copy, a partial restore, an operator's `truncate`)
//! would otherwise be found only when the next generation fails to load it,
//! a restart later. So each layout's metadata is read for what it says must
//! be on disk (the files and the bytes in each, the item directories), and
//! the files are checked against that on every scan. What the metadata says
//! is read once per version of the metadata file (it is large for a big
//! model); the files are looked at every time (a `stat` each), so a file
//! damaged after the first look is still caught.
//!
//! A checkpoint that fails is reported as unverified, naming the file, and
//! is never a resume point. Where a layout gives nothing to check against
//! (a marker layout, an Orbax save from before its checkpoint metadata
//! existed), it is listed as before and its `verified` text says what was
//! and was not checked.

mod dcp;
mod megatron;
mod orbax;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::checkpoint::Layout;

/// Metadata files larger than this are not parsed (the checkpoint is listed
/// with a `verified` text that says so): parsing builds the whole document
/// in memory, and the agent shares the node with training. DCP's
/// `.metadata` for a model of hundreds of billions of parameters on
/// thousands of ranks is tens of MiB.
pub const MAX_METADATA_BYTES: u64 = 128 << 20;

/// The result for one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// What was checked, for `supctl checkpoints`.
    Verified(String),
    /// The file that is missing or short, and what the metadata needs.
    Unverified(String),
}

/// What a checkpoint's metadata says must be on disk, relative to the
/// checkpoint's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    /// Files and the least length each must have.
    pub files: Vec<(String, u64)>,
    /// Directories that must exist and hold something.
    pub dirs: Vec<String>,
    /// Said when every need is met ("dcp .metadata: ...").
    pub verified: String,
    /// Who says so, for a problem ("`.metadata` needs at least ...").
    pub source: &'static str,
}

/// Identifies one version of a metadata file: a rewrite (a save of the same
/// step again) changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    mtime_ns: i128,
    inode: u64,
}

impl Fingerprint {
    fn of(meta: &fs::Metadata) -> Fingerprint {
        Fingerprint {
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            inode: meta.ino(),
        }
    }
}

/// Verifies checkpoints, remembering what each one's metadata says.
#[derive(Debug, Default)]
pub struct Verifier {
    read: HashMap<PathBuf, (Fingerprint, Result<Needs, String>)>,
}

impl Verifier {
    /// Verifies the complete-looking checkpoint at `path`.
    pub fn verify(&mut self, layout: &Layout, path: &Path) -> Verdict {
        let needs = match layout {
            Layout::Dcp => self.read_metadata(path, dcp::METADATA, dcp::needs),
            Layout::Orbax => {
                if path.join(orbax::METADATA).is_file() {
                    self.read_metadata(path, orbax::METADATA, orbax::needs)
                } else {
                    orbax::needs_without_metadata(path)
                }
            }
            Layout::Megatron => {
                if path.join(dcp::METADATA).is_file() {
                    self.read_metadata(path, dcp::METADATA, |dir, bytes| {
                        dcp::needs(dir, bytes).map(|mut n| {
                            n.verified = format!("megatron torch_dist, {}", n.verified);
                            n
                        })
                    })
                } else {
                    megatron::needs(path)
                }
            }
            Layout::Marker(name) => Ok(Needs {
                verified: format!("marker {name} present (this layout has no metadata to check)"),
                ..Needs::default()
            }),
        };
        match needs {
            Ok(needs) => check(path, &needs),
            Err(problem) => Verdict::Unverified(problem),
        }
    }

    /// Forgets every checkpoint not in `listed` (the directory's current
    /// checkpoints), so what is remembered stays bounded by the directory.
    pub fn retain(&mut self, listed: &[PathBuf]) {
        self.read.retain(|path, _| listed.contains(path));
    }

    /// What the metadata file `name` in `dir` says, parsed by `parse` once
    /// per version of the file.
    fn read_metadata(
        &mut self,
        dir: &Path,
        name: &str,
        parse: impl FnOnce(&Path, &[u8]) -> Result<Needs, String>,
    ) -> Result<Needs, String> {
        let file = dir.join(name);
        let meta = fs::metadata(&file).map_err(|e| format!("cannot read {name}: {e}"))?;
        let print = Fingerprint::of(&meta);
        if let Some((seen, needs)) = self.read.get(dir) {
            if *seen == print {
                return needs.clone();
            }
        }
        let needs = if meta.len() > MAX_METADATA_BYTES {
            Ok(Needs {
                verified: format!(
                    "{name} present ({} bytes, more than the {} MiB this agent parses): files not checked",
                    meta.len(),
                    MAX_METADATA_BYTES >> 20
                ),
                ..Needs::default()
            })
        } else {
            fs::read(&file)
                .map_err(|e| format!("cannot read {name}: {e}"))
                .and_then(|bytes| parse(dir, &bytes))
        };
        self.read.insert(dir.to_owned(), (print, needs.clone()));
        needs
    }
}

/// Checks the files and directories `needs` names under `dir`.
fn check(dir: &Path, needs: &Needs) -> Verdict {
    for rel in &needs.dirs {
        let path = dir.join(rel);
        match fs::read_dir(&path) {
            Ok(mut entries) => {
                if entries.next().is_none() {
                    return Verdict::Unverified(format!("{rel}/ is empty"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Verdict::Unverified(format!("{rel}/ is missing"));
            }
            Err(e) => return Verdict::Unverified(format!("cannot read {rel}/: {e}")),
        }
    }
    for (rel, least) in &needs.files {
        match fs::metadata(dir.join(rel)) {
            Ok(meta) if !meta.is_file() => {
                return Verdict::Unverified(format!("{rel} is not a regular file"));
            }
            Ok(meta) if meta.len() < *least => {
                return Verdict::Unverified(format!(
                    "{rel} is {} bytes, {} needs at least {least}",
                    meta.len(),
                    needs.source
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Verdict::Unverified(format!(
                    "{rel} is missing ({} names it)",
                    needs.source
                ));
            }
            Err(e) => return Verdict::Unverified(format!("cannot read {rel}: {e}")),
        }
    }
    Verdict::Verified(needs.verified.clone())
}

/// A file name a metadata document gives, if it stays inside the
/// checkpoint's directory: plain components only, nothing absolute, no
/// `..`. Metadata is data from the job, and a name that leaves the
/// directory is no file of this checkpoint.
pub(crate) fn inside(name: &str) -> Result<String, String> {
    let path = Path::new(name);
    let plain = !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "the metadata names a file outside the checkpoint: {:?}",
            name.chars().take(200).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        assert!(inside("__0_0.distcp").is_ok());
        assert!(inside("default/_METADATA").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x"] {
            let err = inside(bad).expect_err(bad);
            assert!(err.contains("outside the checkpoint"), "{err}");
        }
    }

    #[test]
    fn files_are_checked_for_existence_and_length_and_dirs_for_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a"), [0u8; 10]).expect("write");
        fs::create_dir(dir.path().join("item")).expect("mkdir");
        let needs = |files: &[(&str, u64)], dirs: &[&str]| Needs {
            files: files.iter().map(|(f, n)| ((*f).to_owned(), *n)).collect(),
            dirs: dirs.iter().map(|d| (*d).to_owned()).collect(),
            verified: "ok".to_owned(),
            source: "the test",
        };
        assert_eq!(
            check(dir.path(), &needs(&[("a", 10)], &[])),
            Verdict::Verified("ok".to_owned())
        );
        assert_eq!(
            check(dir.path(), &needs(&[("a", 11)], &[])),
            Verdict::Unverified("a is 10 bytes, the test needs at least 11".to_owned())
        );
        assert_eq!(
            check(dir.path(), &needs(&[("b", 1)], &[])),
            Verdict::Unverified("b is missing (the test names it)".to_owned())
        );
        assert_eq!(
            check(dir.path(), &needs(&[], &["item"])),
            Verdict::Unverified("item/ is empty".to_owned())
        );
        assert_eq!(
            check(dir.path(), &needs(&[], &["other"])),
            Verdict::Unverified("other/ is missing".to_owned())
        );
    }
}
