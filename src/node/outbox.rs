//! Telemetry the daemon could not send, kept on disk until it is.
//!
//! One JSON envelope a line in `<data-dir>/outbox.jsonl`, appended and
//! flushed as it is produced while disconnected, replayed in order after
//! the next registration and then truncated. A crash between replay and
//! truncation re-sends points the server already has: it stores a point
//! once per `messageId`, so nothing is counted twice.

use std::io::{BufRead, Write};
use std::path::PathBuf;

pub struct Outbox {
    path: PathBuf,
}

impl Outbox {
    pub fn open(dir: &std::path::Path) -> std::io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        Ok(Outbox {
            path: dir.join("outbox.jsonl"),
        })
    }

    pub fn push(&self, line: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_data()
    }

    pub fn pending(&self) -> std::io::Result<Vec<String>> {
        match std::fs::File::open(&self.path) {
            Ok(f) => std::io::BufReader::new(f)
                .lines()
                .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    pub fn clear(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_lines_in_order_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let o = super::Outbox::open(dir.path()).unwrap();
        assert!(o.pending().unwrap().is_empty());
        o.push("a").unwrap();
        o.push("b").unwrap();
        let again = super::Outbox::open(dir.path()).unwrap();
        assert_eq!(again.pending().unwrap(), vec!["a", "b"]);
        again.clear().unwrap();
        assert!(o.pending().unwrap().is_empty());
    }
}
