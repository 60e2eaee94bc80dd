//! The drain at shutdown: which requests are still running, and whether new ones may start.
//!
//! The supervisor flushes the usage counts and exits once nothing is in flight. A request on
//! a kept-alive connection could start between that check and the exit, be answered, and
//! have its count lost. So the drain first closes the gate ([`close`]), then waits for the
//! requests already in to finish; a request that starts after the gate closed is refused
//! (503, connection closed) and counts nothing. The two sides form a store-then-load
//! handshake on sequentially consistent atomics: a request counts itself in, then looks at
//! the gate; the drain closes the gate, then looks at the count. Either the drain sees the
//! request (and waits for it), or the request sees the closed gate (and is refused).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Counts a request in; `false`: the gate is closed and the request must be refused (it
/// still counts until [`finished`]).
pub fn started() -> bool {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    !CLOSED.load(Ordering::SeqCst)
}

/// Counts a request out, however it ended.
pub fn finished() {
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
}

/// Requests that started and have not finished.
pub fn in_flight() -> i64 {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// Closes the gate: every request that starts from now on is refused.
pub fn close() {
    CLOSED.store(true, Ordering::SeqCst);
}
