//! When consults pause after failures. One `Backoff` lives as long as the cloud settings it
//! was made for (the browser's engine keeps it across answers; a settings change starts a new
//! one), so a bad key or a rate limit is not run into again at the start of every answer, and
//! a failing cloud costs at most one timeout per pause. Pure logic: time is passed in.
use crate::Error;
use serde::Serialize;
use std::time::Duration;
use web_time::Instant;

/// When consults pause after failures, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Consecutive failed consults before the first pause.
    pub failures_before_pause: u32,
    pub first_pause: Duration,
    /// Pauses double up to this (a rate limit's `Retry-After` is honoured whatever it says).
    pub max_pause: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { failures_before_pause: 3, first_pause: Duration::from_secs(2), max_pause: Duration::from_secs(60) }
    }
}

/// Why consults are not being sent, for the user: what happened decides what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CloudHold {
    /// The cloud refused the key (HTTP 401 or 403): no consult until the settings change.
    Unauthorized { status: u16 },
    /// The cloud asked to wait (HTTP 429 with `Retry-After`): no consult before then.
    RateLimited { retry_after_s: f64 },
    /// Repeated failures (unreachable, timeouts, server errors): paused, then one retry.
    Failing { pause_s: f64 },
}

/// Consults pause after `failures_before_pause` failures in a row; once a pause is over one
/// consult is tried, and if it fails too the next pause is twice as long. A success resets.
/// A timeout pauses at once (it already stalled the answer for the whole timeout, so a cloud
/// that does not answer costs one timeout per pause); a 401/403 stops consults for good and a
/// 429 with `Retry-After` pauses at once for as long as it says.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    epoch: Instant,
    failures_in_row: u32,
    pauses: u32,
    paused_until: Option<Duration>,
    hold: Option<CloudHold>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BackoffConfig::default())
    }
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, epoch: Instant::now(), failures_in_row: 0, pauses: 0, paused_until: None, hold: None }
    }

    /// Time on this back-off's clock (what `allows` and `record_failure` take).
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Whether a consult may be tried at `now`.
    pub fn allows(&self, now: Duration) -> bool {
        !matches!(self.hold, Some(CloudHold::Unauthorized { .. })) && self.paused_until.is_none_or(|until| now >= until)
    }

    /// Why consults are held back at `now`, if they are.
    pub fn hold(&self, now: Duration) -> Option<CloudHold> {
        if self.allows(now) {
            return None;
        }
        let left = self.paused_until.map_or(0.0, |until| until.saturating_sub(now).as_secs_f64());
        self.hold.clone().map(|hold| match hold {
            CloudHold::RateLimited { .. } => CloudHold::RateLimited { retry_after_s: left },
            CloudHold::Failing { .. } => CloudHold::Failing { pause_s: left },
            unauthorized => unauthorized,
        })
    }

    pub fn record_success(&mut self) {
        *self = Self { epoch: self.epoch, ..Self::new(self.config) };
    }

    pub fn record_failure(&mut self, now: Duration, error: &Error) {
        self.failures_in_row += 1;
        match *error {
            Error::CloudStatus { status: status @ (401 | 403), .. } => self.hold = Some(CloudHold::Unauthorized { status }),
            Error::CloudStatus { status: 429, retry_after: Some(wait), .. } => {
                self.paused_until = Some(now + wait);
                self.hold = Some(CloudHold::RateLimited { retry_after_s: wait.as_secs_f64() });
            }
            Error::CloudTimeout(_) => self.pause(now),
            _ if self.failures_in_row >= self.config.failures_before_pause => self.pause(now),
            _ => {}
        }
    }

    /// Pauses consults, twice as long as the previous pause (up to `max_pause`).
    fn pause(&mut self, now: Duration) {
        let pause = self.config.first_pause.saturating_mul(1 << self.pauses.min(16)).min(self.config.max_pause);
        self.paused_until = Some(now + pause);
        self.pauses += 1;
        self.hold = Some(CloudHold::Failing { pause_s: pause.as_secs_f64() });
    }
}

/// An HTTP `Retry-After` in seconds (the date form is not read: such a 429 backs off like
/// any other failure).
pub fn parse_retry_after(header: Option<&str>) -> Option<Duration> {
    let seconds: f64 = header?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<u64>) -> Error {
        Error::CloudStatus { status, message: String::new(), retry_after: retry_after.map(Duration::from_secs) }
    }

    #[test]
    fn pauses_after_repeated_failures_double_and_reset() {
        let s = Duration::from_secs;
        let unreachable = Error::Cloud("cannot reach the cloud".into());
        let mut b = Backoff::new(BackoffConfig { failures_before_pause: 3, first_pause: s(2), max_pause: s(5) });
        for _ in 0..2 {
            b.record_failure(s(0), &unreachable);
            assert!(b.allows(s(0)), "paused before the third failure");
        }
        b.record_failure(s(10), &status(500, None));
        assert!(!b.allows(s(11)) && b.allows(s(12)), "first pause is 2 s");
        assert_eq!(b.hold(s(11)), Some(CloudHold::Failing { pause_s: 1.0 }));
        b.record_failure(s(12), &unreachable);
        assert!(!b.allows(s(15)) && b.allows(s(16)), "a failed retry pauses twice as long");
        b.record_failure(s(16), &unreachable);
        assert!(!b.allows(s(20)) && b.allows(s(21)), "pauses are capped at 5 s");
        b.record_success();
        b.record_failure(s(30), &unreachable);
        assert!(b.allows(s(30)) && b.hold(s(30)).is_none(), "a success starts the count afresh");
        b.record_success();
        b.record_failure(s(40), &Error::CloudTimeout("no answer within 10000 ms".into()));
        assert!(!b.allows(s(41)) && b.allows(s(42)), "a timeout pauses at once");
    }

    #[test]
    fn a_refused_key_holds_every_consult_and_a_rate_limit_waits_as_long_as_it_says() {
        let s = Duration::from_secs;
        for code in [401, 403] {
            let mut b = Backoff::default();
            b.record_failure(s(0), &status(code, None));
            assert!(!b.allows(s(100_000)), "{code}: a bad key is not tried again");
            assert_eq!(b.hold(s(5)), Some(CloudHold::Unauthorized { status: code }));
        }
        let mut b = Backoff::default();
        b.record_failure(s(10), &status(429, Some(30)));
        assert!(!b.allows(s(39)) && b.allows(s(40)), "Retry-After: 30 from the first 429");
        assert_eq!(b.hold(s(25)), Some(CloudHold::RateLimited { retry_after_s: 15.0 }));
        // Without Retry-After a 429 is one failure among others.
        let mut b = Backoff::default();
        b.record_failure(s(0), &status(429, None));
        assert!(b.allows(s(0)));
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(parse_retry_after(Some(" 12 ")), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after(Some("1.5")), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after(Some("Wed, 21 Oct 2026 07:28:00 GMT")), None);
        assert_eq!(parse_retry_after(Some("-1")), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
