//! Where checkpoints live: `storage.url` opened as an `object_store`.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;

use crate::error::{Error, Result};

/// A parsed `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on local disk.
    Local(PathBuf),
    /// An Amazon S3 (or S3-compatible) bucket, and a key prefix inside it (may be empty).
    S3 { bucket: String, prefix: String },
    /// A Google Cloud Storage bucket, and a key prefix inside it (may be empty).
    Gcs { bucket: String, prefix: String },
}

/// Parses `storage.url`: a plain path, a `file://` URL, `s3://bucket[/prefix]` or
/// `gs://bucket[/prefix]`.
pub fn parse_url(url: &str) -> Result<Location> {
    if url.trim().is_empty() {
        return Err(Error::Storage("storage.url is empty".into()));
    }
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(Location::Local(PathBuf::from(path)));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(Location::Local(PathBuf::from(url)));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "s3" && scheme != "gs" {
        return Err(Error::Storage(format!(
            "storage.url `{url}`: `{scheme}://` is not supported; use a local path, file://, \
             s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]"
        )));
    }
    // Credentials, regions and options come from the environment, never from the URL (which is
    // logged): anything URL-like beyond bucket and prefix is refused rather than taken as a key.
    if let Some(c) = rest.chars().find(|c| matches!(c, '?' | '#' | '@' | '%')) {
        return Err(Error::Storage(format!(
            "storage.url `{url}`: `{c}` is not allowed; give {scheme}://BUCKET[/PREFIX] and set \
             credentials and options in the environment"
        )));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_matches('/').to_owned();
    if bucket.is_empty() {
        return Err(Error::Storage(format!(
            "storage.url `{url}` names no bucket; expected {scheme}://BUCKET[/PREFIX]"
        )));
    }
    let bucket = bucket.to_owned();
    Ok(if scheme == "s3" {
        Location::S3 { bucket, prefix }
    } else {
        Location::Gcs { bucket, prefix }
    })
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
/// paths are resolved against the working directory. Cloud stores take their credentials,
/// region and endpoint from the standard variables (`AWS_*`, `GOOGLE_*`) and are reached only
/// when first used.
pub fn open(url: &str, create: bool) -> Result<Store> {
    let cloud = |built: object_store::Result<Arc<dyn ObjectStore>>, prefix: String| {
        let objects = built.map_err(|e| Error::Storage(format!("storage.url `{url}`: {e}")))?;
        let objects: Arc<dyn ObjectStore> = if prefix.is_empty() {
            objects
        } else {
            Arc::new(PrefixStore::new(objects, prefix))
        };
        Ok(Store {
            objects,
            local_root: None,
        })
    };
    match parse_url(url)? {
        Location::S3 { bucket, prefix } => cloud(
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map(|s| Arc::new(s) as _),
            prefix,
        ),
        Location::Gcs { bucket, prefix } => cloud(
            GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map(|s| Arc::new(s) as _),
            prefix,
        ),
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
        assert_eq!(
            parse_url("s3://bucket/team/recmeter/").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "team/recmeter".into()
            }
        );
        assert_eq!(
            parse_url("gs://bucket").unwrap(),
            Location::Gcs {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        let e = parse_url("az://container/prefix").unwrap_err().to_string();
        assert!(e.contains("az://") && e.contains("s3://"), "{e}");
        let e = parse_url("s3:///prefix").unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        assert!(matches!(parse_url("S3://b/p"), Ok(Location::S3 { .. })));
        for bad in [
            "s3://key:secret@bucket/p",
            "s3://bucket/p?region=x",
            "gs://b/p#x",
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.contains("is not allowed") && e.contains(bad), "{e}");
        }
        assert!(parse_url(" ").is_err());
    }
}
