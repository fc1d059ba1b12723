//! argon2id hashing and verification, always off the async workers and
//! never more at once than the machine can afford.
//!
//! Each argon2id call holds ~19 MiB and a core for tens of milliseconds.
//! Unbounded, 2,000 concurrent wrong logins would take 2,000 blocking
//! threads and ~38 GiB. Here at most `permits` run at once (cores − 1, so
//! one core always stays free for every other route), at most
//! [`MAX_WAITING`] more wait their turn, and beyond that a caller is told
//! at once that the server is busy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use tokio::sync::Semaphore;

use crate::IdentityError;

/// Password operations allowed to wait for a permit at once.
pub const MAX_WAITING: usize = 1024;

#[derive(Clone)]
pub(crate) struct Passwords {
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

impl Passwords {
    pub fn new() -> Passwords {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Passwords {
            permits: Arc::new(Semaphore::new(cores.saturating_sub(1).max(1))),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: MAX_WAITING,
        }
    }

    pub async fn hash(&self, password: &str) -> Result<String, IdentityError> {
        let password = password.to_owned();
        self.run(move || hash_password(&password)).await?
    }

    pub async fn verify(&self, hash: &str, password: &str) -> Result<bool, IdentityError> {
        let (hash, password) = (hash.to_owned(), password.to_owned());
        self.run(move || verify_password(&hash, &password)).await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, IdentityError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(IdentityError::Busy);
        }
        let permit = self.permits.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let permit = permit.map_err(|_| IdentityError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| IdentityError::Invalid(format!("password check failed: {e}")))
    }
}

pub(crate) fn hash_password(password: &str) -> Result<String, IdentityError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IdentityError::Invalid(e.to_string()))
}

pub(crate) fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_waits_in_a_bounded_queue_and_the_rest_is_refused_at_once() {
        const WAITING: usize = 8;
        let passwords = Passwords {
            permits: Arc::new(Semaphore::new(1)),
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: WAITING,
        };
        let hash = hash_password("correct horse").unwrap();
        let mut tasks = Vec::new();
        for _ in 0..WAITING + 200 {
            let (p, h) = (passwords.clone(), hash.clone());
            tasks.push(tokio::spawn(async move { p.verify(&h, "wrong").await }));
        }
        let mut busy = 0;
        let mut checked = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(false) => checked += 1,
                Err(IdentityError::Busy) => busy += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        // At most one runs and WAITING wait at any moment: the rest of
        // the flood is refused at once, nothing is lost or hangs.
        assert_eq!(busy + checked, WAITING + 200);
        assert!(busy >= 150, "refused {busy}");
        assert!(checked >= WAITING, "checked {checked}");
        assert!(passwords.verify(&hash, "correct horse").await.unwrap());
    }
}
