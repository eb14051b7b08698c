//! The users file as the server's AUTH store: loaded at start, reloaded on
//! SIGHUP (a broken file keeps the users already loaded).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use smtplink_auth::{UsersError, UsersFile};
use smtplink_driver::UserStore;
use smtplink_engine::CredentialLookup;

/// A users file shared by every session.
pub(crate) struct UsersStore {
    path: PathBuf,
    current: RwLock<Arc<UsersFile>>,
    /// Secret for the decoy salts of unknown users: random per process,
    /// so an exchange for a name that does not exist looks the same every
    /// time within a run and reveals nothing.
    decoy_key: [u8; 32],
}

impl UsersStore {
    /// Loads the file; an error is a configuration error.
    pub(crate) fn load(path: &Path) -> Result<Self, UsersError> {
        let users = UsersFile::load(path)?;
        let mut decoy_key = [0u8; 32];
        getrandom::getrandom(&mut decoy_key).map_err(|e| UsersError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(users)),
            decoy_key,
        })
    }

    /// Reads the file again; on error the users already loaded stay.
    pub(crate) fn reload(&self) -> Result<usize, UsersError> {
        let users = UsersFile::load(&self.path)?;
        let count = users.users().count();
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(users);
        }
        Ok(count)
    }

    fn users(&self) -> Arc<UsersFile> {
        match self.current.read() {
            Ok(u) => u.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The file's path, for logs.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl UserStore for UsersStore {
    fn lookup(&self, username: &str) -> CredentialLookup {
        self.users().credential_lookup(username, &self.decoy_key)
    }

    fn may_send_as(&self, username: &str, address: &str) -> bool {
        self.users().may_send_as(username, address)
    }
}
