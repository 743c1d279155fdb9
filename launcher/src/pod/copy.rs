//! The copy fallback for clusters without image volumes (`render --pod
//! --copy-images`), in two init containers: `vmpod stage-tools DIR` in
//! vmpod's image puts vmpod, its ELF loader (as `ld.so`) and its libraries
//! into a shared emptyDir; `ld.so --library-path DIR DIR/vmpod copy-files
//! DEST PATH…` then runs in an image that has no programs of its own (a
//! containerDisk is usually FROM scratch) and copies the files vmpod reads.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// More than any containerDisk or kernelBoot directory holds.
const MAX_FILES: usize = 256;

fn context(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |error| io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// Copies this executable, its loader and the libraries mapped into this
/// process into `dir`; returns what it wrote.
pub fn stage_tools(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).map_err(context(format!("cannot create {}", dir.display())))?;
    let executable = fs::read_link("/proc/self/exe")?;
    let maps = fs::read_to_string("/proc/self/maps")?;
    let mut sources: BTreeSet<PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/') && path.contains(".so"))
        .map(PathBuf::from)
        .collect();
    sources.insert(executable.clone());
    let mut written = Vec::new();
    for source in sources {
        let name = source
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let target = if source == executable {
            dir.join("vmpod")
        } else if name.starts_with("ld-linux") || name.starts_with("ld64.so") {
            dir.join("ld.so")
        } else {
            dir.join(name)
        };
        fs::copy(&source, &target).map_err(context(format!(
            "cannot copy {} to {}",
            source.display(),
            target.display()
        )))?;
        written.push(target);
    }
    Ok(written)
}

/// Copies each of `paths` (absolute paths in this container's image: a
/// file, or a directory's files) to the same path below `destination`;
/// returns each copy and its size.
pub fn copy_files(destination: &Path, paths: &[PathBuf]) -> io::Result<Vec<(PathBuf, u64)>> {
    let mut copied = Vec::new();
    for path in paths {
        if !path.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not an absolute path in the image", path.display()),
            ));
        }
        let metadata = fs::metadata(path)
            .map_err(context(format!("{} is not in this image", path.display())))?;
        let files = if metadata.is_dir() {
            let mut files: Vec<PathBuf> = fs::read_dir(path)?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|entry| entry.is_file())
                .take(MAX_FILES)
                .collect();
            files.sort();
            files
        } else {
            vec![path.clone()]
        };
        for file in files {
            let target = super::below(destination, &file);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)
                    .map_err(context(format!("cannot create {}", parent.display())))?;
            }
            let bytes = fs::copy(&file, &target).map_err(context(format!(
                "cannot copy {} to {}",
                file.display(),
                target.display()
            )))?;
            copied.push((target, bytes));
        }
    }
    Ok(copied)
}
