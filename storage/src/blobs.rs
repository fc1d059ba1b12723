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

    /// A blob written piece by piece (an upload as it arrives), never
    /// held whole in memory; nothing is visible until [`BlobWriter::finish`].
    pub fn writer(&self) -> Result<BlobWriter, StorageError> {
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("upload.{}", rand::random::<u64>()));
        let file = std::fs::File::create(&tmp)?;
        Ok(BlobWriter {
            store: self.clone(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(256 * 1024, file)),
            hash: Sha256::new(),
            size: 0,
        })
    }

    /// Opens a blob for reading as a stream (its checksum is not checked:
    /// [`BlobStore::get`] does that for whole reads).
    pub fn reader(&self, blob: &BlobRef) -> Result<std::fs::File, StorageError> {
        Ok(std::fs::File::open(self.path(&blob.sha256))?)
    }

    /// Moves a finished temporary file into place under its checksum.
    fn place(&self, tmp: &std::path::Path, sha256: &str) -> Result<(), StorageError> {
        let target = self.path(sha256);
        if target.exists() {
            std::fs::remove_file(tmp)?;
            return Ok(());
        }
        let parent = target
            .parent()
            .expect("a blob path always has a parent directory");
        std::fs::create_dir_all(parent)?;
        std::fs::rename(tmp, &target)?;
        std::fs::File::open(parent)?.sync_all()?;
        Ok(())
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

/// A blob being written (see [`BlobStore::writer`]); dropped unfinished,
/// its temporary file is removed.
pub struct BlobWriter {
    store: BlobStore,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    hash: Sha256,
    size: u64,
}

impl BlobWriter {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.hash.update(bytes);
        self.size += bytes.len() as u64;
        self.file
            .as_mut()
            .expect("an unfinished writer has its file")
            .write_all(bytes)?;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the blob durable and visible under its checksum.
    pub fn finish(mut self) -> Result<BlobRef, StorageError> {
        let file = self
            .file
            .take()
            .expect("an unfinished writer has its file")
            .into_inner()
            .map_err(|e| StorageError::Io(e.into_error()))?;
        file.sync_all()?;
        drop(file);
        let sha256 = hex::encode(std::mem::take(&mut self.hash).finalize());
        self.store.place(&self.tmp, &sha256)?;
        Ok(BlobRef {
            sha256,
            size: self.size,
        })
    }
}

impl std::io::Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BlobWriter::write(self, buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
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

    #[test]
    fn a_streamed_blob_is_the_same_blob_and_an_abandoned_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let mut w = blobs.writer().unwrap();
        w.write(b"hel").unwrap();
        w.write(b"lo").unwrap();
        let r = w.finish().unwrap();
        assert_eq!(r, blobs.put(b"hello").unwrap());
        assert_eq!(blobs.get(&r).unwrap(), b"hello");
        let mut w = blobs.writer().unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/tmp"))
                .unwrap()
                .count(),
            0
        );
    }
}
