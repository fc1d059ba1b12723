//! Large payloads as files under `<data-dir>/blobs`.
//!
//! A blob is written to a temporary name, fsynced, renamed into place and
//! the directory fsynced, so a blob either exists whole or not at all.
//! Blobs are addressed by their SHA-256, which the owning record keeps and
//! which is verified on read.

use std::io::Write as _;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::StorageError;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    pub(crate) fn open(dir: PathBuf) -> Result<BlobStore, StorageError> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(BlobStore { dir })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        let (a, rest) = sha256.split_at(2.min(sha256.len()));
        self.dir.join(a).join(rest)
    }

    /// Writes `bytes` durably; identical content is stored once.
    pub fn put(&self, bytes: &[u8]) -> Result<BlobRef, StorageError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        let target = self.path(&sha256);
        if !target.exists() {
            let tmp = self
                .dir
                .join("tmp")
                .join(format!("{sha256}.{}", rand::random::<u64>()));
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            drop(file);
            let parent = target
                .parent()
                .expect("a blob path always has a parent directory");
            std::fs::create_dir_all(parent)?;
            std::fs::rename(&tmp, &target)?;
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(BlobRef {
            sha256,
            size: bytes.len() as u64,
        })
    }

    /// Reads a blob and checks it against its checksum.
    pub fn get(&self, blob: &BlobRef) -> Result<Vec<u8>, StorageError> {
        let bytes = std::fs::read(self.path(&blob.sha256))?;
        if hex::encode(Sha256::digest(&bytes)) != blob.sha256 {
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("blob {} does not match its checksum", blob.sha256),
            )));
        }
        Ok(bytes)
    }

    pub fn delete(&self, blob: &BlobRef) -> Result<(), StorageError> {
        match std::fs::remove_file(self.path(&blob.sha256)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let r = blobs.put(b"hello").unwrap();
        assert_eq!(r.size, 5);
        assert_eq!(blobs.get(&r).unwrap(), b"hello");
        std::fs::write(blobs.path(&r.sha256), b"HELLO").unwrap();
        assert!(blobs.get(&r).is_err());
        blobs.delete(&r).unwrap();
        assert!(blobs.get(&r).is_err());
    }
}
