//! What one container (or all of them) may hold of the resolvers: TCP connections and queries in
//! flight to the upstream resolvers, each capped in total and per client address. Every one of
//! them costs the daemon a file descriptor; without caps a container could take them all (and
//! with them the API's) or make the daemon flood the upstreams.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

/// TCP connections held open at once, all resolvers together, and by one client address.
pub const MAX_TCP_CONNECTIONS: usize = 256;
pub const MAX_TCP_CONNECTIONS_PER_CLIENT: usize = 16;
/// Queries forwarded upstream and not answered yet (each holds a socket up to the upstream
/// timeout), all resolvers together, and by one client address.
pub const MAX_FORWARDS: usize = 256;
pub const MAX_FORWARDS_PER_CLIENT: usize = 32;

/// Counts what each client holds against a total and a per-client cap.
#[derive(Debug)]
pub struct Admission {
    total: usize,
    per_client: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection or query; its place is given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Admission {
    pub fn new(total: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Self { total, per_client, held: Mutex::new(HashMap::new()) })
    }

    /// A ticket for `client`, or `None` when it or everyone together holds the maximum.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Ticket> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = held.values().sum();
        let mine = held.get(&client).copied().unwrap_or(0);
        if total >= self.total || mine >= self.per_client {
            return None;
        }
        held.insert(client, mine + 1);
        Some(Ticket { admission: self.clone(), client })
    }

    /// How many tickets are out (for tests and logs).
    pub fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).values().sum()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut held = self.admission.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_share_and_the_total_is_capped() {
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        let c: IpAddr = "10.0.0.4".parse().unwrap();
        let admission = Admission::new(5, 3);
        let held_a: Vec<Ticket> = (0..3).map(|_| admission.admit(a).expect("within a's share")).collect();
        assert!(admission.admit(a).is_none(), "a holds its share");
        let held_b: Vec<Ticket> = (0..2).map(|_| admission.admit(b).expect("b has room")).collect();
        assert!(admission.admit(c).is_none(), "the total is reached");
        drop(held_a);
        assert_eq!(admission.held(), 2);
        assert!(admission.admit(c).is_some(), "places come back when tickets are dropped");
        drop(held_b);
        assert_eq!(admission.held(), 0);
    }
}
