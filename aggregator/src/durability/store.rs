//! Where checkpoints live: `storage.url` opened as an `object_store`.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use crate::error::{Error, Result};

/// A parsed `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on local disk.
    Local(PathBuf),
}

/// Parses `storage.url`: a plain path or a `file://` URL. Cloud schemes are named in the error.
pub fn parse_url(url: &str) -> Result<Location> {
    if url.trim().is_empty() {
        return Err(Error::Storage("storage.url is empty".into()));
    }
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Location::Local(PathBuf::from(path)));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(Error::Storage(format!(
            "`{scheme}://` storage is not available in this build of recmeter; use a local path \
             or a file:// URL"
        )));
    }
    Ok(Location::Local(PathBuf::from(url)))
}

/// An opened store.
#[derive(Debug, Clone)]
pub struct Store {
    pub objects: Arc<dyn ObjectStore>,
    /// The directory of a local store, whose files are fsynced once written (the local
    /// backend renames files into place but does not sync them).
    pub local_root: Option<PathBuf>,
}

impl Store {
    /// Makes the files at `paths` (store paths) and their directories durable on local disk;
    /// nothing to do for other stores, whose puts are durable when they return.
    pub async fn sync(&self, paths: Vec<String>) -> Result<()> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut dirs = std::collections::BTreeSet::new();
            for p in &paths {
                let path = root.join(p);
                std::fs::File::open(&path)?.sync_all()?;
                let mut dir = path.parent();
                while let Some(d) = dir {
                    dirs.insert(d.to_owned());
                    if d == root {
                        break;
                    }
                    dir = d.parent();
                }
            }
            for d in dirs {
                std::fs::File::open(&d)?.sync_all()?;
            }
            Ok(())
        })
        .await;
        match synced {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Storage(format!(
                "cannot fsync checkpoint files: {e}"
            ))),
            Err(e) => Err(Error::Storage(format!(
                "cannot fsync checkpoint files: {e}"
            ))),
        }
    }
}

/// Opens the store at `url`; with `create`, a missing local directory is created. Relative
/// paths are resolved against the working directory.
pub fn open(url: &str, create: bool) -> Result<Store> {
    match parse_url(url)? {
        Location::Local(path) => {
            let io = |e: std::io::Error| Error::Storage(format!("{}: {e}", path.display()));
            if create {
                std::fs::create_dir_all(&path).map_err(io)?;
            }
            let path = std::fs::canonicalize(&path).map_err(io)?;
            let store = LocalFileSystem::new_with_prefix(&path)
                .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
            Ok(Store {
                objects: Arc::new(store),
                local_root: Some(path),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("./data").unwrap(),
            Location::Local(PathBuf::from("./data"))
        );
        assert_eq!(
            parse_url("file:///var/lib/recmeter").unwrap(),
            Location::Local(PathBuf::from("/var/lib/recmeter"))
        );
        let e = parse_url("s3://bucket/prefix").unwrap_err().to_string();
        assert!(e.contains("s3://"), "{e}");
        assert!(parse_url(" ").is_err());
    }
}
