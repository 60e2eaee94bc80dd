//! How many client connections are open, in the whole process and per client address, and
//! the permit that holds one of them.

use crate::metrics;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Open client connections, counted once per connection (never per request).
#[derive(Default)]
pub struct ConnectionCounts {
    total: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// Which cap a new connection would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections`.
    Process,
    /// `server.max_connections_per_ip`.
    Address,
}

impl Refusal {
    /// The `reason` label of `tollgate_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Process => "max_connections",
            Refusal::Address => "max_connections_per_ip",
        }
    }
}

/// One open connection; dropping it frees its place.
pub struct Permit {
    counts: Arc<ConnectionCounts>,
    address: Option<IpAddr>,
}

impl ConnectionCounts {
    /// Takes a place for a connection from `peer`, unless the process already has `max`
    /// connections or that address (an IPv6 address counts as its /64) has `per_address`.
    pub fn acquire(
        self: &Arc<Self>,
        peer: Option<IpAddr>,
        max: usize,
        per_address: usize,
    ) -> Result<Permit, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Process);
        }
        let address = peer.map(address_key);
        if let Some(key) = address {
            let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            let open = by_address.entry(key).or_insert(0);
            if *open >= per_address {
                drop(by_address);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::Address);
            }
            *open += 1;
        }
        metrics::CLIENT_CONNECTIONS.inc();
        Ok(Permit {
            counts: Arc::clone(self),
            address,
        })
    }

    /// Connections open now (for tests).
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        metrics::CLIENT_CONNECTIONS.dec();
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(key) = self.address {
            let mut by_address = self
                .counts
                .by_address
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(open) = by_address.get_mut(&key) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    by_address.remove(&key);
                }
            }
        }
    }
}

/// The address a connection counts against: IPv4 as is, IPv6 by its /64 (one subscriber
/// usually holds a whole /64, so counting single addresses would not bound anyone).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_cap_refuses_and_a_dropped_permit_frees_its_place() {
        let counts = Arc::new(ConnectionCounts::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = counts.acquire(Some(a), 2, 10).unwrap();
        let _second = counts.acquire(None, 2, 10).unwrap();
        assert_eq!(counts.acquire(Some(a), 2, 10).err(), Some(Refusal::Process));
        drop(first);
        assert!(counts.acquire(Some(a), 2, 10).is_ok());
    }

    #[test]
    fn the_address_cap_counts_an_ipv6_slash_64_as_one_address() {
        let counts = Arc::new(ConnectionCounts::default());
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _p = counts.acquire(Some(one), 100, 1).unwrap();
        assert_eq!(
            counts.acquire(Some(same_64), 100, 1).err(),
            Some(Refusal::Address)
        );
        let _q = counts.acquire(Some(other_64), 100, 1).unwrap();
        assert_eq!(counts.open(), 2, "a refused connection holds no place");
    }

    #[test]
    fn a_freed_address_leaves_no_entry_behind() {
        let counts = Arc::new(ConnectionCounts::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        drop(counts.acquire(Some(a), 10, 10).unwrap());
        assert!(counts.by_address.lock().unwrap().is_empty());
    }
}
