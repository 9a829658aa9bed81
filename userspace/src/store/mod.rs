//! Where the daemon keeps its state, behind one trait: the core records every change through
//! [`Store`] before it is acknowledged, and reads it all back at start. Today's store is
//! [`FileStore`] (`state.json` written atomically, services as a snapshot plus a flushed
//! journal, see `crate::state`). What a cluster's nodes share (overlay networks, their addresses)
//! is in [`shared`]: another trait, implemented over etcd by `crate::cluster`.
pub mod shared;

use std::path::Path;

use anyhow::Result;

use crate::state::{Endpoint, Service, ServiceStore, State, Store as StateFile};

/// `Send + Sync`: the daemon holding it is shared with the worker and held across awaits.
pub trait Store: Send + Sync {
    /// Everything stored (networks, endpoints, allocations, services), or `None` when nothing has
    /// been stored yet.
    fn load(&mut self) -> Result<Option<State>>;
    /// Records `state`'s networks, endpoints and allocations (services are recorded by
    /// themselves, below). A failure records nothing.
    fn commit(&mut self, state: &State) -> Result<()>;
    /// Records `connecting` (`State::connecting`) before an attach's first kernel change; read
    /// back by `load` until the next `commit`. Need not outlive a power loss (the kernel objects
    /// it accounts for do not), only the daemon's crash: cheaper than a `commit`.
    fn write_ahead(&mut self, connecting: &[Endpoint]) -> Result<()>;
    /// Records `services` as they now are (new or changed), as one change.
    fn put_services(&mut self, services: &[&Service]) -> Result<()>;
    /// Records that the services `names` are gone.
    fn remove_services(&mut self, names: &[&str]) -> Result<()>;
    /// Lets the store fold its record of services (`all`: every service now) when that is due;
    /// a failure costs only room.
    fn compact_services(&mut self, all: &mut dyn Iterator<Item = &Service>) -> Result<()>;
    /// Where the state is, for messages.
    fn location(&self) -> String;
    /// Forgets everything (`bpfnet daemon --cleanup`).
    fn remove_all(&mut self) -> Result<()>;
}

/// The state directory's files.
pub struct FileStore {
    state: StateFile,
    services: ServiceStore,
    /// Whether a write-ahead file may exist (the next commit removes it).
    write_ahead: bool,
}

impl FileStore {
    /// The store in `dir` (made private, 0700, if it is new).
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self { state: StateFile::new(dir)?, services: ServiceStore::new(dir), write_ahead: true })
    }
}

impl Store for FileStore {
    fn load(&mut self) -> Result<Option<State>> {
        let Some(mut state) = self.state.load()? else { return Ok(None) };
        state.services = self.services.load()?;
        Ok(Some(state))
    }

    fn commit(&mut self, state: &State) -> Result<()> {
        self.state.save(state)?;
        if self.write_ahead {
            // Said by the state file now; a file left behind is read again with it (harmless:
            // records of finished attaches are skipped), so a failure is only reported.
            match self.state.forget_write_ahead() {
                Ok(()) => self.write_ahead = false,
                Err(e) => log::warn!("removing the write-ahead file: {e:#}"),
            }
        }
        Ok(())
    }

    fn write_ahead(&mut self, connecting: &[Endpoint]) -> Result<()> {
        self.write_ahead = true;
        self.state.write_ahead(connecting)
    }

    fn put_services(&mut self, services: &[&Service]) -> Result<()> {
        self.services.save(services)
    }

    fn remove_services(&mut self, names: &[&str]) -> Result<()> {
        self.services.remove(names)
    }

    fn compact_services(&mut self, all: &mut dyn Iterator<Item = &Service>) -> Result<()> {
        self.services.compact_if_due(all)
    }

    fn location(&self) -> String {
        self.state.path().display().to_string()
    }

    fn remove_all(&mut self) -> Result<()> {
        self.services.remove_all()?;
        self.state.remove()
    }
}
