//! The last committed state, as readers see it: the API's reads, the resolvers and the metrics
//! take it from here without waiting for a change in progress. The daemon's core sets it after
//! each commit; the readers depend on this module only, not on the core.
use std::sync::{Arc, RwLock};

use crate::state::State;

/// The last committed state, shared with readers that must not wait for a change in progress.
#[derive(Clone, Default)]
pub struct Published(Arc<RwLock<Arc<State>>>);

impl Published {
    pub fn get(&self) -> Arc<State> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Shows `state` to readers (the core's, after it committed `state`).
    pub(crate) fn set(&self, state: State) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
    }
}
