//! The worker's timeout budget: the worst case of one event (the slot wait, the API call, the
//! AWS SDK calls after it, a margin), which the function timeout and the claim TTL must cover;
//! the worker refuses to start otherwise ([`check_timeout_budget`]).

use std::time::Duration;

use qo_core::config::SdkSettings;

use crate::config::WorkerConfig;

/// Time kept after the API call for the writes that record the job's fate.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

/// AWS SDK calls the worker may make after the API call, on its longest path: a 401/403 drops
/// the claim, re-reads the key, reads and conditionally writes the control record, and
/// re-queues the job (5). The others make fewer: a 5xx or 429 drops the claim, reads and writes
/// the circuit or control record, re-queues (4); a final 4xx dead-letters and drops the claim,
/// twice at worst (3); a success marks the job done, twice at worst (2), a batch's job as
/// well (it is added to the batch's done record at once: no write waits for the batch's end,
/// so a batch's worst case is its last job's). A lost race on a
/// conditional write is a quick answer, not a timeout, and is not counted again.
pub const SDK_CALLS_AFTER_THE_CALL: u32 = 5;

/// AWS SDK calls on the longest path that makes no API call: claim, key re-read, drop the claim,
/// re-queue (a delivery that came too late).
pub const SDK_CALLS_WITHOUT_A_CALL: u32 = 4;

/// The SDK calls a success adds when the stack has result destinations, on its longest path:
/// the result's delivery (every try of it bounded together by one SDK call's time,
/// `WorkerConfig::result_budget`), a large body put in the bucket, the result re-queued for a
/// later delivery, and dead-lettered when the re-queue fails.
pub const SDK_CALLS_FOR_A_RESULT: u32 = 4;

/// Where the function timeout that was checked came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutSource {
    /// `FUNCTION_TIMEOUT_S`, read at cold start.
    Variable,
    /// The time left at the start of the first invocation after a cold start.
    FirstDeadline,
}

impl std::fmt::Display for TimeoutSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutSource::Variable => "FUNCTION_TIMEOUT_S",
            TimeoutSource::FirstDeadline => "the first invocation's deadline",
        })
    }
}

/// The worker's worst case for one event (attempts x (connect + read) + a margin),
/// from its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorstCase {
    /// `MAX_SLOT_WAIT_MS`: the longest wait for the slot, counted from the invocation's
    /// start. It bounds the last job of a batch too: a batch's jobs are claimed and waited on
    /// concurrently from the start, and a slot further ahead is given back untried, so a
    /// batch's worst case is that of its last job, which is one job's.
    pub slot_wait: Duration,
    /// `BATCH_WINDOW_MS`: how far a batch's last slot may be after its first. It must be
    /// shorter than `slot_wait` (the orchestrator's `DISPATCH_LEAD_MS` + this is the last
    /// job's wait): [`check_timeout_budget`] refuses it otherwise.
    pub batch_window: Duration,
    /// `CALL_TOLERANCE_MS`: how late after the slot the call may still start. The claim (and a
    /// key re-read) happen inside the wait and the tolerance, or the job is given back uncalled.
    pub tolerance: Duration,
    /// One API call: `API_CONNECT_TIMEOUT_MS` + `API_READ_TIMEOUT_MS` (one attempt).
    pub api_call: Duration,
    /// One AWS SDK call: `SDK_MAX_ATTEMPTS` x (`SDK_CONNECT_TIMEOUT_MS` + `SDK_READ_TIMEOUT_MS`).
    pub sdk_call: Duration,
    /// The SDK settings the call is made of, for the message.
    pub sdk: SdkSettings,
    /// [`DEADLINE_MARGIN`]: the answer to the Runtime API and the rest.
    pub margin: Duration,
    /// The SDK calls after the API call: [`SDK_CALLS_AFTER_THE_CALL`], and
    /// [`SDK_CALLS_FOR_A_RESULT`] more with result destinations.
    pub sdk_calls: u32,
}

impl WorstCase {
    /// The worst case of `config` with `sdk`.
    pub fn of(sdk: &SdkSettings, config: &WorkerConfig) -> Self {
        WorstCase {
            slot_wait: config.max_slot_wait,
            batch_window: config.batch_window,
            tolerance: config.call_tolerance,
            api_call: config.call_budget(),
            sdk_call: sdk.operation_timeout(),
            sdk: *sdk,
            margin: DEADLINE_MARGIN,
            sdk_calls: SDK_CALLS_AFTER_THE_CALL
                + if config.destinations.is_empty() {
                    0
                } else {
                    SDK_CALLS_FOR_A_RESULT
                },
        }
    }

    /// With an API call: slot wait + tolerance + the call + `sdk_calls` SDK calls + the
    /// margin.
    pub fn with_a_call(&self) -> Duration {
        self.slot_wait
            .saturating_add(self.tolerance)
            .saturating_add(self.api_call)
            .saturating_add(self.sdk_call.saturating_mul(self.sdk_calls))
            .saturating_add(self.margin)
    }

    /// Without one: [`SDK_CALLS_WITHOUT_A_CALL`] SDK calls + the margin.
    pub fn without_a_call(&self) -> Duration {
        self.sdk_call
            .saturating_mul(SDK_CALLS_WITHOUT_A_CALL)
            .saturating_add(self.margin)
    }

    /// The longer of the two.
    pub fn total(&self) -> Duration {
        self.with_a_call().max(self.without_a_call())
    }
}

/// The worker must not start: its function timeout or its claim TTL does not fit its worst case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutBudgetError {
    /// The function timeout is shorter than the worst case of one event.
    #[error(
        "the worker's function timeout ({from} = {}) is shorter than its worst case of {} = \
         MAX_SLOT_WAIT_MS={} + CALL_TOLERANCE_MS={} + API_CONNECT_TIMEOUT_MS + API_READ_TIMEOUT_MS={} \
         + {n} AWS calls after the API call x SDK_MAX_ATTEMPTS={} x (SDK_CONNECT_TIMEOUT_MS={} + \
         SDK_READ_TIMEOUT_MS={}) = {n} x {} + margin {}: raise the function timeout to at least {} \
         or lower these",
        secs(*.function_timeout), secs(.worst.total()), .worst.slot_wait.as_millis(),
        .worst.tolerance.as_millis(), .worst.api_call.as_millis(), .worst.sdk.max_attempts,
        .worst.sdk.connect_timeout.as_millis(), .worst.sdk.read_timeout.as_millis(),
        secs(.worst.sdk_call), secs(.worst.margin), secs(whole_seconds(.worst.total())),
        n = .worst.sdk_calls
    )]
    FunctionTimeout {
        /// Where the timeout came from.
        from: TimeoutSource,
        /// The function timeout.
        function_timeout: Duration,
        /// The worst case it must cover.
        worst: Box<WorstCase>,
    },
    /// A batch's last slot may be further ahead than the worker waits for a slot.
    #[error(
        "BATCH_WINDOW_MS={} is not shorter than MAX_SLOT_WAIT_MS={}: a batch's later jobs \
         would be given back untried every time; lower BATCH_WINDOW_MS or raise MAX_SLOT_WAIT_MS \
         (and the function timeout with it)",
        .batch_window.as_millis(), .slot_wait.as_millis()
    )]
    BatchWindow {
        /// `BATCH_WINDOW_MS`.
        batch_window: Duration,
        /// `MAX_SLOT_WAIT_MS`.
        slot_wait: Duration,
    },
    /// A claim would expire while the invocation that holds it may still be calling.
    #[error(
        "CLAIM_TTL_S={} is shorter than the worker's function timeout ({from} = {}): a claim \
         must outlive the invocation that holds it; raise CLAIM_TTL_S or leave it unset (it \
         defaults to FUNCTION_TIMEOUT_S)",
        .claim_ttl.as_secs(), secs(*.function_timeout)
    )]
    ClaimTtl {
        /// Where the timeout came from.
        from: TimeoutSource,
        /// `CLAIM_TTL_S`.
        claim_ttl: Duration,
        /// The function timeout.
        function_timeout: Duration,
    },
}

/// Seconds, for messages: whole when whole, else to the millisecond.
fn secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// `d` rounded up to whole seconds (a Lambda timeout is whole seconds).
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// Checks the timeout rule for the worker: the function timeout must cover [`WorstCase::total`]
/// (the slot wait, the call, the SDK calls after it, the margin), `CLAIM_TTL_S` must be at
/// least the function timeout, and `BATCH_WINDOW_MS` shorter than `MAX_SLOT_WAIT_MS` (which
/// then bounds a batch's last job too, so a batch needs no more time than one job).
///
/// Lambda does not tell a function its timeout: it comes from `FUNCTION_TIMEOUT_S` or, without
/// it, from the time left at the start of the first invocation after a cold start (the timeout
/// to the millisecond, so it is rounded up to whole seconds).
pub fn check_timeout_budget(
    sdk: &SdkSettings,
    config: &WorkerConfig,
    function_timeout: Duration,
    source: TimeoutSource,
) -> Result<(), TimeoutBudgetError> {
    let function_timeout = whole_seconds(function_timeout);
    let worst = WorstCase::of(sdk, config);
    if worst.batch_window >= worst.slot_wait {
        return Err(TimeoutBudgetError::BatchWindow {
            batch_window: worst.batch_window,
            slot_wait: worst.slot_wait,
        });
    }
    if worst.total() > function_timeout {
        return Err(TimeoutBudgetError::FunctionTimeout {
            from: source,
            function_timeout,
            worst: Box::new(worst),
        });
    }
    if config.claim_ttl < function_timeout {
        return Err(TimeoutBudgetError::ClaimTtl {
            from: source,
            claim_ttl: config.claim_ttl,
            function_timeout,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WorkerConfig {
        let env: std::collections::HashMap<String, String> =
            [("API_BASE_URL".to_string(), "http://h".to_string())]
                .into_iter()
                .collect();
        WorkerConfig::from_env(&env).expect("config")
    }

    #[test]
    fn the_worst_case_counts_the_slot_wait_the_call_and_the_writes_after_it() {
        // Defaults: 5 s + 5 ms + (2 + 10) s + 5 x 3 x (3 + 5) s + 2 s = 139.005 s.
        let sdk = SdkSettings::default();
        let w = WorstCase::of(&sdk, &config());
        assert_eq!(w.sdk_call, Duration::from_secs(24));
        assert_eq!(w.with_a_call(), Duration::from_millis(139_005));
        assert_eq!(w.without_a_call(), Duration::from_secs(98));
        assert_eq!(w.total(), Duration::from_millis(139_005));
        let e = check_timeout_budget(
            &sdk,
            &config(),
            Duration::from_secs(60),
            TimeoutSource::Variable,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the worker's function timeout (FUNCTION_TIMEOUT_S = 60 s) is shorter than its worst \
             case of 139.005 s = MAX_SLOT_WAIT_MS=5000 + CALL_TOLERANCE_MS=5 + \
             API_CONNECT_TIMEOUT_MS + API_READ_TIMEOUT_MS=12000 + 5 AWS calls after the API call \
             x SDK_MAX_ATTEMPTS=3 x (SDK_CONNECT_TIMEOUT_MS=3000 + SDK_READ_TIMEOUT_MS=5000) = 5 x \
             24 s + margin 2 s: raise the function timeout to at least 140 s or lower these"
        );
        // 139.005 s needs a 140 s timeout; the first deadline is rounded up to whole seconds.
        let cfg = WorkerConfig {
            claim_ttl: Duration::from_secs(900),
            ..config()
        };
        assert!(
            check_timeout_budget(
                &sdk,
                &cfg,
                Duration::from_secs(139),
                TimeoutSource::Variable
            )
            .is_err()
        );
        assert!(
            check_timeout_budget(
                &sdk,
                &cfg,
                Duration::from_secs(140),
                TimeoutSource::Variable
            )
            .is_ok()
        );
        assert!(
            check_timeout_budget(
                &sdk,
                &cfg,
                Duration::from_millis(139_001),
                TimeoutSource::FirstDeadline
            )
            .is_ok()
        );
        // Smaller SDK timeouts fit a 60 s function: 5 + 0.005 + 12 + 5 x 2 x (1 + 2) + 2 = 49.005.
        let small = SdkSettings {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(2),
            max_attempts: 2,
        };
        assert_eq!(
            WorstCase::of(&small, &cfg).total(),
            Duration::from_millis(49_005)
        );
        assert!(
            check_timeout_budget(
                &small,
                &cfg,
                Duration::from_secs(60),
                TimeoutSource::Variable
            )
            .is_ok()
        );
        // Without a call the SDK calls can dominate: 4 x 3 x (10 + 10) + 2 = 242 s.
        let slow = SdkSettings {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(10),
            max_attempts: 3,
        };
        let w = WorstCase::of(&slow, &cfg);
        assert_eq!(w.without_a_call(), Duration::from_secs(242));
        assert_eq!(w.with_a_call(), Duration::from_millis(319_005));
    }

    #[test]
    fn a_batch_needs_no_more_than_one_job_and_its_window_must_fit_the_slot_wait() {
        let sdk = SdkSettings::default();
        let cfg = WorkerConfig {
            claim_ttl: Duration::from_secs(900),
            ..config()
        };
        // The window lies inside the slot wait: the worst case is one job's, 139.005 s.
        assert_eq!(
            WorstCase::of(&sdk, &cfg).batch_window,
            Duration::from_secs(2)
        );
        assert_eq!(
            WorstCase::of(&sdk, &cfg).total(),
            Duration::from_millis(139_005)
        );
        let wide = WorkerConfig {
            batch_window: Duration::from_secs(5),
            ..cfg
        };
        let e = check_timeout_budget(
            &sdk,
            &wide,
            Duration::from_secs(900),
            TimeoutSource::Variable,
        )
        .unwrap_err();
        assert_eq!(
            e,
            TimeoutBudgetError::BatchWindow {
                batch_window: Duration::from_secs(5),
                slot_wait: Duration::from_secs(5),
            }
        );
        assert!(
            e.to_string()
                .starts_with("BATCH_WINDOW_MS=5000 is not shorter than MAX_SLOT_WAIT_MS=5000"),
            "{e}"
        );
    }

    #[test]
    fn a_claim_must_outlive_the_invocation() {
        let sdk = SdkSettings::default();
        let cfg = WorkerConfig {
            claim_ttl: Duration::from_secs(120),
            ..config()
        };
        let e = check_timeout_budget(
            &sdk,
            &cfg,
            Duration::from_millis(149_200),
            TimeoutSource::FirstDeadline,
        )
        .unwrap_err();
        assert_eq!(
            e,
            TimeoutBudgetError::ClaimTtl {
                from: TimeoutSource::FirstDeadline,
                claim_ttl: Duration::from_secs(120),
                function_timeout: Duration::from_secs(150),
            }
        );
        assert!(
            e.to_string().starts_with(
                "CLAIM_TTL_S=120 is shorter than the worker's function timeout (the first \
             invocation's deadline = 150 s)"
            ),
            "{e}"
        );
        let cfg = WorkerConfig {
            claim_ttl: Duration::from_secs(150),
            ..config()
        };
        assert!(
            check_timeout_budget(
                &sdk,
                &cfg,
                Duration::from_secs(150),
                TimeoutSource::Variable
            )
            .is_ok()
        );
    }

    #[test]
    fn result_destinations_add_the_delivery_its_stow_requeue_and_dead_letter_to_the_budget() {
        let sdk = SdkSettings::default();
        let plain = WorstCase::of(&sdk, &config());
        let mut with = config();
        with.destinations =
            qo_core::result::Destinations::parse("arn:aws:sqs:us-east-1:123456789012:orders", "")
                .expect("destinations");
        let results = WorstCase::of(&sdk, &with);
        assert_eq!(plain.sdk_calls, 5);
        assert_eq!(results.sdk_calls, 9);
        assert_eq!(results.total() - plain.total(), sdk.operation_timeout() * 4);
        // 139.005 s without results, 235.005 s with: the template's 240 covers both.
        assert!(
            check_timeout_budget(
                &sdk,
                &with,
                Duration::from_secs(230),
                TimeoutSource::Variable
            )
            .is_err()
        );
        check_timeout_budget(
            &sdk,
            &with,
            Duration::from_secs(240),
            TimeoutSource::Variable,
        )
        .expect("240 s covers it");
    }
}
