//! JWT signing keys that rotate.
//!
//! Keys are 64 random bytes in 0600 files under `<secrets>/jwt-keys/`,
//! named by their key id (`kid`), which sorts by creation time; the newest
//! signs, every kept key verifies the tokens that name it in their header.
//! `<secrets>/jwt.key`, the single key of builds before rotation, stays a
//! verifying key for tokens without a `kid` (and signs until the first
//! rotation). A key that is no longer the newest is kept for the longest
//! lifetime a token can have, then deleted at the next load or rotation:
//! by then every token it signed has expired.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use jsonwebtoken::{DecodingKey, EncodingKey};
use warden_storage::{Millis, now_millis};

const LEGACY: &str = "jwt.key";
const DIR: &str = "jwt-keys";

/// What the key ring says of one key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub kid: String,
    pub created_at: Millis,
    /// Signing new tokens now.
    pub current: bool,
    /// When it stops verifying (once a newer key exists).
    pub retires_at: Option<Millis>,
}

pub(crate) struct KeyRing {
    dir: PathBuf,
    max_token_lifetime_ms: Millis,
    /// `""` is the legacy key (tokens without a `kid`).
    keys: BTreeMap<String, (Millis, DecodingKey)>,
    current: (String, EncodingKey),
}

fn kid_created(kid: &str) -> Millis {
    kid.strip_prefix('k')
        .and_then(|rest| rest.split('-').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

fn write_secret(path: &Path, secret: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a key file is inside a directory");
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(secret)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let key = std::fs::read(path)?;
    if key.len() < 32 {
        return Err(std::io::Error::other(format!(
            "{} is too short to be a signing key",
            path.display()
        )));
    }
    Ok(key)
}

impl KeyRing {
    /// Loads every key (creating the first on first boot) and drops those
    /// whose tokens have all expired.
    pub fn load(secrets: &Path, max_token_lifetime_ms: Millis) -> std::io::Result<KeyRing> {
        ensure_dir(secrets)?;
        let dir = secrets.join(DIR);
        ensure_dir(&dir)?;
        let mut secrets_by_kid: BTreeMap<String, (Millis, Vec<u8>)> = BTreeMap::new();
        match read_secret(&secrets.join(LEGACY)) {
            Ok(key) => {
                let created = std::fs::metadata(secrets.join(LEGACY))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as Millis);
                secrets_by_kid.insert(String::new(), (created, key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(kid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".key"))
            else {
                continue;
            };
            secrets_by_kid.insert(kid.to_owned(), (kid_created(kid), read_secret(&path)?));
        }
        if secrets_by_kid.is_empty() {
            let (kid, secret) = Self::create(&dir)?;
            secrets_by_kid.insert(kid.clone(), (kid_created(&kid), secret));
        }
        let mut ring = KeyRing::from_secrets(dir, max_token_lifetime_ms, secrets_by_kid);
        ring.prune()?;
        Ok(ring)
    }

    fn from_secrets(
        dir: PathBuf,
        max_token_lifetime_ms: Millis,
        secrets: BTreeMap<String, (Millis, Vec<u8>)>,
    ) -> KeyRing {
        let (current_kid, (_, current_secret)) = secrets
            .iter()
            .next_back()
            .expect("a key ring always holds a key");
        let current = (
            current_kid.clone(),
            EncodingKey::from_secret(current_secret),
        );
        let keys = secrets
            .iter()
            .map(|(kid, (created, s))| (kid.clone(), (*created, DecodingKey::from_secret(s))))
            .collect();
        KeyRing {
            dir,
            max_token_lifetime_ms,
            keys,
            current,
        }
    }

    fn create(dir: &Path) -> std::io::Result<(String, Vec<u8>)> {
        let kid = format!(
            "k{:013}-{}",
            now_millis(),
            hex::encode(rand::random::<[u8; 4]>())
        );
        let secret: [u8; 64] = rand::random();
        write_secret(&dir.join(format!("{kid}.key")), &secret)?;
        Ok((kid, secret.to_vec()))
    }

    /// A new signing key; the others verify until their tokens expire.
    pub fn rotate(&mut self) -> std::io::Result<KeyInfo> {
        let (kid, secret) = Self::create(&self.dir)?;
        self.keys.insert(
            kid.clone(),
            (kid_created(&kid), DecodingKey::from_secret(&secret)),
        );
        self.current = (kid.clone(), EncodingKey::from_secret(&secret));
        self.prune()?;
        Ok(self
            .list()
            .into_iter()
            .find(|k| k.kid == kid)
            .expect("the new key is listed"))
    }

    /// When each key stops verifying: the longest token lifetime after the
    /// next key was made.
    fn retirements(&self) -> Vec<(String, Millis, Option<Millis>)> {
        let kids: Vec<(&String, Millis)> = self.keys.iter().map(|(k, (c, _))| (k, *c)).collect();
        kids.iter()
            .enumerate()
            .map(|(i, (kid, created))| {
                let retires = kids
                    .get(i + 1)
                    .map(|(_, next)| next.saturating_add(self.max_token_lifetime_ms));
                ((*kid).clone(), *created, retires)
            })
            .collect()
    }

    fn prune(&mut self) -> std::io::Result<()> {
        let now = now_millis();
        for (kid, _, retires) in self.retirements() {
            if retires.is_some_and(|at| at <= now) {
                self.keys.remove(&kid);
                let path = if kid.is_empty() {
                    self.dir
                        .parent()
                        .expect("jwt-keys is in secrets")
                        .join(LEGACY)
                } else {
                    self.dir.join(format!("{kid}.key"))
                };
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(kid = %kid, "retired JWT signing key deleted"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        self.retirements()
            .into_iter()
            .map(|(kid, created_at, retires_at)| KeyInfo {
                current: kid == self.current.0,
                kid,
                created_at,
                retires_at,
            })
            .collect()
    }

    /// The signing key and its `kid` (`None` for the legacy key).
    pub fn signing(&self) -> (Option<String>, &EncodingKey) {
        let kid = (!self.current.0.is_empty()).then(|| self.current.0.clone());
        (kid, &self.current.1)
    }

    /// The key that verifies a token naming `kid` (none: the legacy key).
    pub fn verifying(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        self.keys.get(kid.unwrap_or("")).map(|(_, k)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_old_keys_until_their_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let mut ring = KeyRing::load(&secrets, 1_000).unwrap();
        let first = ring.signing().0.unwrap();
        assert!(ring.verifying(Some(&first)).is_some());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let second = ring.rotate().unwrap();
        assert!(second.current);
        assert_ne!(second.kid, first);
        let listed = ring.list();
        assert_eq!(listed.len(), 2);
        assert!(listed[0].retires_at.is_some() && !listed[0].current);
        // A reload finds both, the newest signing.
        let ring = KeyRing::load(&secrets, 1_000).unwrap();
        assert_eq!(ring.signing().0.unwrap(), second.kid);
        assert!(ring.verifying(Some(&first)).is_some());
        // Once the longest token lifetime has passed, the old key goes.
        let ring = KeyRing::load(&secrets, 0).unwrap();
        assert!(ring.verifying(Some(&first)).is_none());
        assert!(ring.verifying(Some(&second.kid)).is_some());
        assert_eq!(
            std::fs::metadata(secrets.join(DIR))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn a_legacy_key_keeps_verifying_tokens_without_a_kid() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        write_secret(&secrets.join(LEGACY), &[7u8; 64]).unwrap();
        let mut ring = KeyRing::load(&secrets, 1_000_000).unwrap();
        assert_eq!(
            ring.signing().0,
            None,
            "the legacy key signs until a rotation"
        );
        ring.rotate().unwrap();
        assert!(ring.signing().0.is_some());
        assert!(ring.verifying(None).is_some());
    }
}
