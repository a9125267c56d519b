//! The orchestrator's configuration, read once from the environment.

use std::time::Duration;

use qo_core::CircuitPolicy;
use qo_core::config::{ConfigError, Env};
use qo_core::quota::{BudgetMode, PacingPolicy, QuotaSpec, SlowStart};
use qo_core::sqs::{self, QueueAttributes};

/// Everything the dispatch loop needs to know.
#[derive(Clone, Debug, PartialEq)]
pub struct OrchestratorConfig {
    /// The deployed quota (an operator's `qo quota set` overrides it at run time).
    pub quota: QuotaSpec,
    /// Pacing policy: budget mode, call tolerance, headroom, slow start.
    pub pacing: PacingPolicy,
    /// Circuit breaker policy.
    pub circuit: CircuitPolicy,
    /// How far ahead of its slot a job is handed to the worker (DISPATCH_LEAD_MS).
    pub dispatch_lead: Duration,
    /// How often the circuit and controls are re-read and the lease renewed (at most 1 s).
    pub refresh_interval: Duration,
    /// How often usage is saved (PERSIST_INTERVAL_S).
    pub persist_interval: Duration,
    /// Stop this long before the deadline (STOP_MARGIN_S).
    pub stop_margin: Duration,
    /// Stop after this long with nothing to do (IDLE_EXIT_S; `None`: never).
    pub idle_exit: Option<Duration>,
    /// Lease time to live (LEASE_TTL_S).
    pub lease_ttl: Duration,
    /// Invokes in flight at most (MAX_IN_FLIGHT).
    pub max_in_flight: usize,
    /// Receive at most what the pace can dispatch within this long (HOLD_HORIZON_S), and
    /// only once the next slot is this near (plus `receive_ahead`): a message received long
    /// before its slot is counted by the redrive policy and held invisible for nothing.
    pub hold_horizon: Duration,
    /// How long before the next dispatch time the queue is polled (SQS answers in tens of
    /// milliseconds; a second leaves room).
    pub receive_ahead: Duration,
    /// The job and retry queues' visibility timeout (QUEUE_VISIBILITY_TIMEOUT_S; the template
    /// sets it to the orchestrator's timeout): a held message's visibility is extended before
    /// it runs out.
    pub visibility_timeout: Duration,
    /// The queues' retention (QUEUE_RETENTION_S): a message near it is given back as a fresh
    /// copy rather than released.
    pub retention: Duration,
    /// This orchestrator's name in the lease.
    pub owner: String,
}

impl OrchestratorConfig {
    /// Defaults for a quota: as documented in the README.
    pub fn with_quota(quota: QuotaSpec) -> Self {
        OrchestratorConfig {
            quota,
            pacing: PacingPolicy::default(),
            circuit: CircuitPolicy::default(),
            dispatch_lead: Duration::from_millis(250),
            refresh_interval: Duration::from_secs(1),
            persist_interval: Duration::from_secs(2),
            stop_margin: Duration::from_secs(5),
            idle_exit: Some(Duration::from_secs(30)),
            lease_ttl: Duration::from_secs(30),
            max_in_flight: 64,
            hold_horizon: Duration::from_secs(10),
            receive_ahead: Duration::from_secs(1),
            visibility_timeout: QueueAttributes::TEMPLATE.visibility_timeout,
            retention: QueueAttributes::TEMPLATE.retention,
            owner: "orchestrator".to_string(),
        }
    }

    /// Reads the configuration; a bad value is an error naming the variable and the value.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let quota: QuotaSpec = env.parsed(
            "QUOTA_SPEC",
            "10/s"
                .parse()
                .map_err(|e: qo_core::quota::SpecError| ConfigError::Invalid {
                    name: "QUOTA_SPEC".into(),
                    value: "10/s".into(),
                    reason: e.to_string(),
                })?,
        )?;
        let d = OrchestratorConfig::with_quota(quota);
        let mode: BudgetMode = env.parsed("BUDGET_MODE", BudgetMode::Greedy)?;
        let pacing = PacingPolicy {
            mode,
            call_tolerance: env.millis("CALL_TOLERANCE_MS", d.pacing.call_tolerance)?,
            headroom: env.fraction("HEADROOM", 0.0, 0.0, 0.5)?,
            slow_start: SlowStart {
                duration: env.seconds("SLOW_START_S", d.pacing.slow_start.duration)?,
                from_fraction: env.fraction("SLOW_START_FRACTION", 0.1, 0.01, 1.0)?,
            },
        };
        let idle = env.seconds("IDLE_EXIT_S", Duration::from_secs(30))?;
        let max_in_flight: usize = env.parsed("MAX_IN_FLIGHT", 64)?;
        if max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                name: "MAX_IN_FLIGHT".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let visibility_timeout = env.seconds("QUEUE_VISIBILITY_TIMEOUT_S", d.visibility_timeout)?;
        if visibility_timeout < Duration::from_secs(30) || visibility_timeout > sqs::MAX_VISIBILITY
        {
            return Err(ConfigError::Invalid {
                name: "QUEUE_VISIBILITY_TIMEOUT_S".into(),
                value: visibility_timeout.as_secs().to_string(),
                reason: "must be from 30 s (held messages are kept by extending it) to 43200 s (SQS's 12 h)".into(),
            });
        }
        let retention = env.seconds("QUEUE_RETENTION_S", d.retention)?;
        if retention < Duration::from_secs(60) || retention > sqs::MAX_RETENTION {
            return Err(ConfigError::Invalid {
                name: "QUEUE_RETENTION_S".into(),
                value: retention.as_secs().to_string(),
                reason: "must be SQS's MessageRetentionPeriod: 60 to 1209600".into(),
            });
        }
        Ok(OrchestratorConfig {
            pacing,
            hold_horizon: env.seconds("HOLD_HORIZON_S", d.hold_horizon)?,
            visibility_timeout,
            retention,
            circuit: circuit_policy(env)?,
            dispatch_lead: env.millis("DISPATCH_LEAD_MS", d.dispatch_lead)?,
            persist_interval: env.seconds("PERSIST_INTERVAL_S", d.persist_interval)?,
            stop_margin: env.seconds("STOP_MARGIN_S", d.stop_margin)?,
            idle_exit: (!idle.is_zero()).then_some(idle),
            lease_ttl: env.seconds("LEASE_TTL_S", d.lease_ttl)?,
            max_in_flight,
            owner: env
                .get("AWS_LAMBDA_LOG_STREAM_NAME")
                .unwrap_or_else(|| format!("orchestrator-{}", uuid::Uuid::new_v4())),
            ..d
        })
    }
}

pub use qo_core::config::circuit_policy;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_overrides() {
        let c = OrchestratorConfig::from_env(&env(&[("QUOTA_SPEC", "20/s"), ("IDLE_EXIT_S", "0")]))
            .expect("valid");
        assert_eq!(c.quota.to_string(), "20/s");
        assert_eq!(c.idle_exit, None);
        assert_eq!(c.dispatch_lead, Duration::from_millis(250));
        assert_eq!(c.circuit.failure_threshold.get(), 3);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = OrchestratorConfig::from_env(&env(&[("QUOTA_SPEC", "20/fortnight")])).unwrap_err();
        assert!(
            e.to_string().contains("QUOTA_SPEC") && e.to_string().contains("fortnight"),
            "{e}"
        );
        let e = OrchestratorConfig::from_env(&env(&[("HEADROOM", "0.9")])).unwrap_err();
        assert!(e.to_string().contains("HEADROOM=\"0.9\""), "{e}");
        let e =
            OrchestratorConfig::from_env(&env(&[("CIRCUIT_FAILURE_THRESHOLD", "0")])).unwrap_err();
        assert!(e.to_string().contains("CIRCUIT_FAILURE_THRESHOLD"), "{e}");
    }
}
