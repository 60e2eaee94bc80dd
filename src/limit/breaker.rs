//! A circuit breaker in front of Redis: after `threshold` consecutive failures (errors
//! or timeouts) it opens and nobody calls Redis for `cooldown`; then exactly one call
//! goes through as a probe; its success closes the breaker, its failure reopens it for
//! another cooldown. Every hot-path operation is a few atomic loads or stores.
//!
//! Each transition (open, close) is logged once and reflected in the
//! `tollgate_ratelimit_fallback_active` gauge; failures and probes while open are not.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::metrics;

/// What the breaker lets a caller do.
#[derive(Debug)]
pub(crate) enum Permit<'a> {
    /// Closed: call Redis, then report with [`Breaker::success`] or [`Breaker::failure`].
    Call,
    /// Open, cool-down over: this caller is the one probe. Dropping the guard without
    /// reporting counts as a failure, so a cancelled probe cannot wedge the breaker.
    Probe(ProbeGuard<'a>),
    /// Open: do not call Redis.
    Denied,
}

/// The single probe's right to call Redis while the breaker is open.
#[derive(Debug)]
pub(crate) struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    reported: bool,
}

impl ProbeGuard<'_> {
    /// The probe succeeded: close the breaker.
    pub(crate) fn success(mut self) {
        self.reported = true;
        self.breaker.success();
    }

    /// The probe failed: open again for a full cool-down.
    pub(crate) fn failure(self, reason: &dyn std::fmt::Display) {
        let now = self.breaker.now_ms();
        self.failure_at(now, reason);
    }

    fn failure_at(mut self, now: u64, reason: &dyn std::fmt::Display) {
        self.reported = true;
        self.breaker.probe_failed(now, reason);
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker
                .probe_failed(self.breaker.now_ms(), &"probe abandoned");
        }
    }
}

/// The breaker. `open_until` is 0 while closed, else the time (ms since `base`, always
/// at least 1) from which one probe may go through.
#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    base: Instant,
    consecutive_failures: AtomicU32,
    open_until: AtomicU64,
    probing: AtomicBool,
}

impl Breaker {
    /// Opens after `threshold` (at least 1) consecutive failures, for `cooldown`.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms: u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX),
            base: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
        }
    }

    /// Whether calls are being held back right now (open, probing or not).
    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// May the caller call Redis now?
    pub(crate) fn permit(&self) -> Permit<'_> {
        self.permit_at(self.now_ms())
    }

    fn permit_at(&self, now: u64) -> Permit<'_> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Permit::Call;
        }
        if now < until {
            return Permit::Denied;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Permit::Probe(ProbeGuard {
                breaker: self,
                reported: false,
            }),
            Err(_) => Permit::Denied,
        }
    }

    /// A call succeeded (a probe's or a closed breaker's): close.
    pub(crate) fn success(&self) {
        // Loads first: on the hot path (closed, no failures) nothing is written, so
        // the cache line stays shared between cores.
        if self.consecutive_failures.load(Ordering::Acquire) != 0 {
            self.consecutive_failures.store(0, Ordering::Release);
        }
        if self.open_until.load(Ordering::Acquire) != 0
            && self.open_until.swap(0, Ordering::AcqRel) != 0
        {
            log::info!("rate limiting: Redis answers again; circuit closed, limiting on Redis");
            metrics::FALLBACK_ACTIVE.dec();
            self.probing.store(false, Ordering::Release);
        }
    }

    /// A call made with [`Permit::Call`] failed.
    pub(crate) fn failure(&self, reason: &dyn std::fmt::Display) {
        self.failure_at(self.now_ms(), reason);
    }

    fn failure_at(&self, now: u64, reason: &dyn std::fmt::Display) {
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if failures >= self.threshold {
            self.open(
                now,
                &format_args!("{failures} consecutive failures, last: {reason}"),
            );
        }
    }

    /// Opens now (unless already open), e.g. when Redis is unreachable at start.
    pub(crate) fn open(&self, now: u64, reason: &dyn std::fmt::Display) {
        let until = now.saturating_add(self.cooldown_ms).max(1);
        if self
            .open_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            log::warn!(
                "rate limiting: Redis unavailable ({reason}); circuit open, using the failure \
                 mode and probing again every {:?}",
                Duration::from_millis(self.cooldown_ms)
            );
            metrics::FALLBACK_ACTIVE.inc();
        }
    }

    fn probe_failed(&self, now: u64, reason: &dyn std::fmt::Display) {
        log::debug!("rate limiting: Redis probe failed: {reason}");
        let until = now.saturating_add(self.cooldown_ms).max(1);
        // Still open (a concurrent success may have closed it: then leave it closed).
        let _ = self
            .open_until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                (current != 0).then_some(until)
            });
        self.probing.store(false, Ordering::Release);
    }

    /// Milliseconds since the breaker was made, plus one (so never 0).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        // The gauge counts open breakers; one dropped while open is no longer open.
        if self.is_open() {
            metrics::FALLBACK_ACTIVE.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_probe(permit: &Permit<'_>) -> bool {
        matches!(permit, Permit::Probe(_))
    }

    fn is_call(permit: &Permit<'_>) -> bool {
        matches!(permit, Permit::Call)
    }

    fn is_denied(permit: &Permit<'_>) -> bool {
        matches!(permit, Permit::Denied)
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let breaker = Breaker::new(3, Duration::from_millis(1000));
        breaker.failure_at(10, &"e");
        breaker.failure_at(11, &"e");
        assert!(is_call(&breaker.permit_at(12)));
        breaker.failure_at(12, &"e");
        assert!(breaker.is_open());
        assert!(is_denied(&breaker.permit_at(13)));
        assert!(is_denied(&breaker.permit_at(1011)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new(3, Duration::from_millis(1000));
        breaker.failure_at(10, &"e");
        breaker.failure_at(11, &"e");
        breaker.success();
        breaker.failure_at(12, &"e");
        breaker.failure_at(13, &"e");
        assert!(!breaker.is_open());
    }

    #[test]
    fn lets_exactly_one_probe_through_after_the_cooldown() {
        let breaker = Breaker::new(1, Duration::from_millis(1000));
        breaker.failure_at(100, &"e");
        let probe = breaker.permit_at(1100);
        assert!(is_probe(&probe));
        assert!(is_denied(&breaker.permit_at(1100)));
        assert!(is_denied(&breaker.permit_at(5000)));
        let Permit::Probe(guard) = probe else {
            unreachable!("checked above")
        };
        guard.success();
        assert!(!breaker.is_open());
        assert!(is_call(&breaker.permit_at(5001)));
    }

    #[test]
    fn a_failed_probe_reopens_for_a_full_cooldown() {
        let breaker = Breaker::new(1, Duration::from_millis(1000));
        breaker.failure_at(100, &"e");
        let Permit::Probe(guard) = breaker.permit_at(1100) else {
            panic!("expected a probe")
        };
        guard.failure_at(1200, &"e");
        assert!(breaker.is_open());
        assert!(is_denied(&breaker.permit_at(2199)));
        assert!(is_probe(&breaker.permit_at(2200)));
    }

    #[test]
    fn an_abandoned_probe_counts_as_failed() {
        let breaker = Breaker::new(1, Duration::from_millis(0));
        breaker.failure_at(1, &"e");
        let probe = breaker.permit_at(breaker.now_ms());
        assert!(is_probe(&probe));
        drop(probe);
        assert!(breaker.is_open());
        assert!(is_probe(&breaker.permit_at(breaker.now_ms())));
    }

    #[test]
    fn opening_at_start_denies_until_the_cooldown() {
        let breaker = Breaker::new(5, Duration::from_millis(500));
        breaker.open(1, &"unreachable at start");
        assert!(is_denied(&breaker.permit_at(2)));
        assert!(is_probe(&breaker.permit_at(501)));
    }
}
