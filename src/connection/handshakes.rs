//! TLS connections counted from their first byte, not from the end of their handshake.
//!
//! Pingora runs a TLS handshake (up to its fixed 60 s timeout) before the connection
//! reaches [`super::Front`], so without this a client could hold any number of handshakes
//! open. [`Handshakes`] is Pingora's pre-TLS hook: it takes the connection's place in the
//! caps ([`ConnectionCounts`]) before the handshake and keeps it, keyed by the peer's
//! address and port, until `Front` takes it over. Pingora says nothing when a handshake
//! fails, so each waiting place also holds a weak reference to the connection's socket
//! digest: once the connection is gone the reference is dead, and the place is freed the
//! next time a cap would refuse someone (the only moment a stale place could matter).

use super::limits::{ConnectionCounts, Permit, Refusal};
use crate::metrics;
use crate::reload::LiveConfig;
use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A waiting place is given up after Pingora's handshake timeout (60 s) and a margin,
/// whatever its reference says.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(61);
/// Dead places are looked for at most this often (a sweep walks every waiting place).
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Places taken by TLS connections still in their handshake.
pub struct Handshakes {
    counts: Arc<ConnectionCounts>,
    live: Arc<LiveConfig>,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    by_peer: HashMap<SocketAddr, Place>,
    last_sweep: Option<Instant>,
}

/// One connection's place while its handshake runs.
struct Place {
    permit: Permit,
    since: Instant,
    alive: Weak<SocketDigest>,
}

impl Handshakes {
    /// Places in `counts`, bounded by the caps of `live`'s current config.
    pub fn new(counts: Arc<ConnectionCounts>, live: Arc<LiveConfig>) -> Self {
        Handshakes {
            counts,
            live,
            waiting: Mutex::new(Waiting::default()),
        }
    }

    /// The place taken before the handshake of the connection from `peer`, if any (its
    /// handshake has finished: the connection now holds it).
    pub fn take(&self, peer: SocketAddr) -> Option<Permit> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.by_peer.remove(&peer).map(|place| place.permit)
    }

    /// Takes a place for a connection from `peer` about to start its handshake.
    fn admit(&self, peer: SocketAddr, alive: Weak<SocketDigest>) -> Result<(), Refusal> {
        let (max, per_address) = {
            let snapshot = self.live.current();
            let server = &snapshot.config.server;
            (server.max_connections, server.max_connections_per_ip)
        };
        let ip = Some(peer.ip());
        let permit = match self.counts.acquire(ip, max, per_address) {
            Ok(permit) => permit,
            Err(refusal) => {
                if !self.sweep() {
                    return Err(refusal);
                }
                self.counts.acquire(ip, max, per_address)?
            }
        };
        let place = Place {
            permit,
            since: Instant::now(),
            alive,
        };
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // A place left under the same address and port belonged to a connection that is
        // gone (the port is in use again): replacing it frees it.
        waiting.by_peer.insert(peer, place);
        Ok(())
    }

    /// Frees the places of connections that are gone; whether any was freed. Runs at
    /// most every [`SWEEP_INTERVAL`].
    fn sweep(&self) -> bool {
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting
            .last_sweep
            .is_some_and(|at| now.duration_since(at) < SWEEP_INTERVAL)
        {
            return false;
        }
        waiting.last_sweep = Some(now);
        let before = waiting.by_peer.len();
        waiting.by_peer.retain(|_, place| {
            place.alive.strong_count() > 0 && now.duration_since(place.since) < HANDSHAKE_LIMIT
        });
        waiting.by_peer.len() < before
    }
}

#[async_trait]
impl PreTlsProcess for Handshakes {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let digest = stream.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(PeerAddr::as_inet)
            .copied();
        let (Some(digest), Some(peer)) = (digest, peer) else {
            // Not an inet socket: nothing to count it by (the caps count inet peers).
            return Ok(());
        };
        match self.admit(peer, Arc::downgrade(&digest)) {
            Ok(()) => Ok(()),
            Err(refusal) => {
                metrics::CONNECTIONS_REFUSED
                    .with_label_values(&[refusal.reason()])
                    .inc();
                log::debug!(
                    "TLS connection from {} refused before its handshake: {} reached",
                    peer.ip(),
                    refusal.reason()
                );
                Err(pingora::Error::explain(
                    pingora::ErrorType::ConnectRefused,
                    refusal.reason(),
                ))
            }
        }
    }
}
