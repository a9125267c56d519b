//! `qo status`: quota usage per tier, the circuit, the lease, the operator controls and the
//! queue depths of a deployment.

use std::fmt;
use std::time::SystemTime;

use clap::Args;
use qo_aws::sqs::QueueDepth;
use qo_core::circuit::{Circuit, CircuitPolicy, CircuitState};
use qo_core::config::{Env, ProcessEnv};
use qo_core::ports::{Lease, LeaseStore, RecordKey, load_record};
use qo_core::quota::{
    Decrease, DecreaseBasis, Pacer, PacingPolicy, QuotaSpec, QuotaState, TierReport,
};
use qo_core::{BackoffReason, Control, Timestamp};
use serde::Serialize;

use super::error::OpsError;
use super::output::{emit, ser_opt_time, ser_time, when};
use super::target::{Connection, TargetArgs};

/// Options of `qo status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// The deployed quota: what the orchestrator runs with while no override is set.
    #[arg(long, env = "QUOTA_SPEC", default_value = "10/s")]
    quota: QuotaSpec,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Everything `qo status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// When it was taken.
    #[serde(serialize_with = "ser_time")]
    pub now: Timestamp,
    /// The state table.
    pub table: String,
    /// The quota in force and its usage.
    pub quota: QuotaStatus,
    /// The circuit.
    pub circuit: CircuitStatus,
    /// The orchestrator lease, if one was ever taken.
    pub lease: Option<LeaseStatus>,
    /// Whether an operator paused dispatching.
    pub paused: bool,
    /// No call before this (the API's Retry-After), if set.
    #[serde(serialize_with = "ser_opt_time")]
    pub backoff_until: Option<Timestamp>,
    /// Why the worker set the back-off (a 429, or a refused credential).
    pub backoff_reason: Option<BackoffReason>,
    /// The pace: the rate learned from the API's throttles against the quota's.
    pub pace: PaceStatus,
    /// Who changed the controls last.
    pub updated_by: Option<String>,
    /// When the controls changed last.
    #[serde(serialize_with = "ser_opt_time")]
    pub updated_at: Option<Timestamp>,
    /// The queues: main, retry (if any), dlq.
    pub queues: Vec<QueueDepth>,
    /// Messages on the dead-letter queue (visible, in flight and delayed).
    pub dead_letters: u64,
}

/// The pace now: closed-loop pacing's learned rate under the quota.
#[derive(Clone, Debug, Serialize)]
pub struct PaceStatus {
    /// The rate paced at now, calls per second.
    pub rate_per_s: f64,
    /// The quota's pace, calls per second (the ceiling).
    pub ceiling_per_s: f64,
    /// The last decrease, while the pace is below the ceiling.
    pub lowered: Option<Decrease>,
    /// 429s the worker has counted.
    pub throttles: u64,
}

/// The quota in force.
#[derive(Clone, Debug, Serialize)]
pub struct QuotaStatus {
    /// The spec in force.
    pub spec: String,
    /// Whether it is an operator's override (`qo quota set`) rather than the deployed one.
    pub overridden: bool,
    /// The deployed spec (`--quota` / `QUOTA_SPEC`).
    pub deployed: String,
    /// Usage per tier.
    pub tiers: Vec<TierStatus>,
}

/// One tier's usage.
#[derive(Clone, Debug, Serialize)]
pub struct TierStatus {
    /// The tier, as spec text.
    pub tier: String,
    /// Calls counted in its current window.
    pub used: u64,
    /// Its limit.
    pub limit: u32,
    /// When the window resets (calendar) or its oldest counted call leaves it (rolling).
    #[serde(serialize_with = "ser_opt_time")]
    pub resets_at: Option<Timestamp>,
}

impl From<TierReport> for TierStatus {
    fn from(r: TierReport) -> Self {
        TierStatus {
            tier: r.tier,
            used: r.used,
            limit: r.limit,
            resets_at: r.resets_at,
        }
    }
}

/// The circuit.
#[derive(Clone, Debug, Serialize)]
pub struct CircuitStatus {
    /// `closed`, `open` or `half_open`.
    pub phase: &'static str,
    /// Grows at each opening (and at a forced close).
    pub epoch: u64,
    /// Forced open by an operator (no health checks until `qo circuit close`).
    pub forced: bool,
    /// When it entered its phase.
    #[serde(serialize_with = "ser_opt_time")]
    pub since: Option<Timestamp>,
    /// When the next health check is due (open), or is given up on (half-open).
    #[serde(serialize_with = "ser_opt_time")]
    pub next_health_check: Option<Timestamp>,
}

/// The orchestrator lease.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseStatus {
    /// Its holder.
    pub owner: String,
    /// Its fencing token.
    pub token: u64,
    /// When it expires unless renewed.
    #[serde(serialize_with = "ser_time")]
    pub expires_at: Timestamp,
    /// Whether it is still held (not expired).
    pub live: bool,
}

/// The records and depths a status is made of.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The state table.
    pub table: String,
    /// The quota usage record.
    pub quota: QuotaState,
    /// The control record.
    pub control: Control,
    /// The circuit record.
    pub circuit: Circuit,
    /// The lease.
    pub lease: Option<Lease>,
    /// The queue depths.
    pub depths: Vec<QueueDepth>,
}

impl StatusReport {
    /// The status at `now`: the quota in force is the control record's override, else
    /// `deployed`.
    pub fn build(
        snap: Snapshot,
        now: Timestamp,
        deployed: &QuotaSpec,
        pacing: PacingPolicy,
        circuit_policy: &CircuitPolicy,
    ) -> Self {
        let spec = snap
            .control
            .quota
            .clone()
            .unwrap_or_else(|| deployed.clone());
        let pacer = Pacer::hydrate(spec.clone(), pacing, snap.quota.clone());
        let tiers = pacer
            .report(now)
            .into_iter()
            .map(TierStatus::from)
            .collect();
        let ceiling_per_s = spec.pacing_rate_per_s();
        let rate_per_s = ceiling_per_s * pacer.adaptive_fraction(now);
        let pace = PaceStatus {
            rate_per_s,
            ceiling_per_s,
            lowered: snap
                .quota
                .adaptive
                .last
                .filter(|_| rate_per_s < ceiling_per_s),
            throttles: snap.control.throttles.as_ref().map_or(0, |t| t.count),
        };
        let c = &snap.circuit;
        let (since, forced) = match c.state {
            CircuitState::Closed { since, .. } => (since, false),
            CircuitState::Open {
                opened_at, forced, ..
            } => (opened_at, forced),
            CircuitState::HalfOpen { opened_at, .. } => (opened_at, false),
        };
        let queues = snap.depths;
        let dead_letters = queues
            .iter()
            .filter(|q| q.name == "dlq")
            .map(|q| q.visible + q.in_flight + q.delayed)
            .sum();
        StatusReport {
            now,
            table: snap.table,
            quota: QuotaStatus {
                spec: spec.to_string(),
                overridden: snap.control.quota.is_some(),
                deployed: deployed.to_string(),
                tiers,
            },
            circuit: CircuitStatus {
                phase: c.phase().as_str(),
                epoch: c.epoch,
                forced,
                // A circuit that never changed has no meaningful start.
                since: (since != Timestamp::EPOCH).then_some(since),
                next_health_check: c.probe_due(circuit_policy),
            },
            lease: snap.lease.map(|l| LeaseStatus {
                live: l.expires_at > now,
                owner: l.owner,
                token: l.token,
                expires_at: l.expires_at,
            }),
            paused: snap.control.paused,
            backoff_until: snap.control.backoff_until.max(snap.quota.backoff_until),
            backoff_reason: snap.control.backoff_reason,
            pace,
            updated_by: snap.control.updated_by,
            updated_at: snap.control.updated_at,
            queues,
            dead_letters,
        }
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = self.now;
        writeln!(f, "table         {}", self.table)?;
        let q = &self.quota;
        if q.overridden {
            writeln!(
                f,
                "quota         {} (override; deployed: {})",
                q.spec, q.deployed
            )?;
        } else {
            writeln!(f, "quota         {} (deployed)", q.spec)?;
        }
        for t in &q.tiers {
            let used = format!("{}/{}", t.used, t.limit);
            match t.resets_at {
                Some(r) => writeln!(
                    f,
                    "  {:<20} {used:>11} used, resets {}",
                    t.tier,
                    when(r, now)
                )?,
                None => writeln!(f, "  {:<20} {used:>11} used", t.tier)?,
            }
        }
        let c = &self.circuit;
        let forced = if c.forced { " (forced)" } else { "" };
        write!(f, "circuit       {}{forced}, epoch {}", c.phase, c.epoch)?;
        if let Some(s) = c.since {
            write!(f, ", since {}", when(s, now))?;
        }
        writeln!(f)?;
        match (c.next_health_check, c.phase) {
            (Some(t), "half_open") => {
                writeln!(f, "health check  out; given up on at {}", when(t, now))?
            }
            (Some(t), _) => writeln!(f, "health check  next at {}", when(t, now))?,
            (None, "open") => writeln!(f, "health check  none until `qo circuit close`")?,
            (None, _) => {}
        }
        match &self.lease {
            Some(l) if l.live => writeln!(
                f,
                "lease         held by {} (token {}) until {}",
                l.owner,
                l.token,
                when(l.expires_at, now)
            )?,
            Some(l) => writeln!(
                f,
                "lease         free (last {} (token {}), expired {})",
                l.owner,
                l.token,
                when(l.expires_at, now)
            )?,
            None => writeln!(f, "lease         free (never taken)")?,
        }
        writeln!(
            f,
            "paused        {}",
            if self.paused {
                "yes (`qo resume` to dispatch again)"
            } else {
                "no"
            }
        )?;
        match (self.backoff_until, self.backoff_reason) {
            (Some(b), reason) if b > now => {
                let why = match reason {
                    Some(BackoffReason::Throttled) => " (the API answered 429)".to_string(),
                    Some(BackoffReason::CredentialRejected { status }) => {
                        format!(" (the API refused the credential: HTTP {status})")
                    }
                    None => String::new(),
                };
                writeln!(f, "backoff       until {}{why}", when(b, now))?
            }
            _ => writeln!(f, "backoff       none")?,
        }
        let p = &self.pace;
        match &p.lowered {
            Some(d) => writeln!(
                f,
                "pace          {:.2}/s of {:.2}/s, lowered {} from {:.2}/s ({}); {} 429s counted",
                p.rate_per_s,
                p.ceiling_per_s,
                when(d.at, now),
                d.from_per_s,
                match d.basis {
                    DecreaseBasis::Estimate => format!(
                        "the API accepted {:.2}/s before a 429",
                        d.estimate_per_s.unwrap_or_default()
                    ),
                    DecreaseBasis::Multiplicative => "a 429".to_string(),
                    DecreaseBasis::FullWindow => {
                        "a 429 though our calls alone filled the window (a late arrival)"
                            .to_string()
                    }
                    DecreaseBasis::ApiWindow => format!(
                        "its rate-limit headers left {:.2}/s",
                        d.estimate_per_s.unwrap_or_default()
                    ),
                    DecreaseBasis::Floor => "a 429, at the floor".to_string(),
                },
                p.throttles
            )?,
            None => writeln!(
                f,
                "pace          {:.2}/s (the quota's); {} 429s counted",
                p.rate_per_s, p.throttles
            )?,
        }
        if let (Some(by), Some(at)) = (&self.updated_by, self.updated_at) {
            writeln!(f, "controls      last changed by {by} at {}", when(at, now))?;
        }
        writeln!(
            f,
            "queues        {:>9} {:>9} {:>9}",
            "visible", "in flight", "delayed"
        )?;
        for q in &self.queues {
            writeln!(
                f,
                "  {:<11} {:>9} {:>9} {:>9}",
                q.name, q.visible, q.in_flight, q.delayed
            )?;
        }
        writeln!(f, "dead letters  {}", self.dead_letters)
    }
}

/// Reads the records, the lease and the queue depths, and prints the status.
pub async fn run(args: StatusArgs) -> Result<(), OpsError> {
    let env = ProcessEnv;
    let conn = Connection::open(&args.target, &env).await?;
    let store = conn.store()?;
    let queues = conn.queues(true)?;
    let table = store.table().to_string();
    let in_table = |what: &'static str| {
        let table = table.clone();
        move |source| OpsError::Store {
            what,
            table,
            source,
        }
    };
    let (quota, control, circuit, lease, depths) = tokio::try_join!(
        async {
            load_record::<QuotaState>(&store, RecordKey::Quota)
                .await
                .map_err(in_table("reading the quota record"))
        },
        async {
            load_record::<Control>(&store, RecordKey::Control)
                .await
                .map_err(in_table("reading the control record"))
        },
        async {
            load_record::<Circuit>(&store, RecordKey::Circuit)
                .await
                .map_err(in_table("reading the circuit record"))
        },
        async { store.current().await.map_err(in_table("reading the lease")) },
        async {
            queues.depths().await.map_err(|source| OpsError::Queue {
                what: "reading the queue depths".to_string(),
                source,
            })
        },
    )?;
    let pacing = PacingPolicy {
        call_tolerance: env.millis("CALL_TOLERANCE_MS", PacingPolicy::default().call_tolerance)?,
        ..PacingPolicy::default()
    };
    let circuit_policy = qo_orchestrator::circuit_policy(&env)?;
    let snap = Snapshot {
        table,
        quota: quota.value,
        control: control.value,
        circuit: circuit.value,
        lease,
        depths,
    };
    let now = Timestamp::from_system(SystemTime::now());
    let report = StatusReport::build(snap, now, &args.quota, pacing, &circuit_policy);
    emit(&report, args.json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snapshot() -> Snapshot {
        Snapshot {
            table: "t".into(),
            quota: QuotaState::default(),
            control: Control::default(),
            circuit: Circuit::default(),
            lease: None,
            depths: vec![
                QueueDepth {
                    name: "main",
                    url: "http://q/main".into(),
                    visible: 20,
                    in_flight: 1,
                    delayed: 0,
                },
                QueueDepth {
                    name: "dlq",
                    url: "http://q/dlq".into(),
                    visible: 2,
                    in_flight: 1,
                    delayed: 0,
                },
            ],
        }
    }

    #[test]
    fn a_lowered_pace_and_the_backoff_reason_are_reported() {
        let now = Timestamp::from_secs(1_700_000_000);
        let deployed: QuotaSpec = "20/s".parse().unwrap();
        let mut snap = snapshot();
        let throttles = qo_core::Throttles::record(
            None,
            now.minus(Duration::from_secs(5)),
            now.minus(Duration::from_secs(5)),
        );
        let mut pacer = Pacer::new(deployed.clone(), PacingPolicy::default());
        pacer.on_throttles(&throttles, now.minus(Duration::from_secs(4)), |_| {
            Some(15.0)
        });
        snap.quota = pacer.state().clone();
        snap.control.throttles = Some(throttles);
        snap.control.backoff_until = Some(now.plus(Duration::from_secs(1)));
        snap.control.backoff_reason = Some(BackoffReason::Throttled);
        let report = StatusReport::build(
            snap,
            now,
            &deployed,
            PacingPolicy::default(),
            &CircuitPolicy::default(),
        );
        assert!(
            (report.pace.rate_per_s - 14.7).abs() < 1e-9,
            "{:?}",
            report.pace
        );
        let text = report.to_string();
        assert!(text.contains("pace          14.70/s of 20.00/s"), "{text}");
        assert!(text.contains("accepted 15.00/s before a 429"), "{text}");
        assert!(text.contains("(the API answered 429)"), "{text}");
        assert!(text.contains("1 429s counted"), "{text}");
    }

    #[test]
    fn usage_override_circuit_and_lease_are_reported() {
        let now = Timestamp::from_secs(1_700_000_000);
        let deployed: QuotaSpec = "10/s".parse().unwrap();
        let override_spec: QuotaSpec = "5/s,100/day@calendar".parse().unwrap();
        let mut pacer = Pacer::new(override_spec.clone(), PacingPolicy::default());
        for i in 0..3 {
            let _ = pacer.take_first_from(now.minus(Duration::from_millis(300 - i * 100)));
        }
        let policy = CircuitPolicy::default();
        let mut snap = snapshot();
        snap.quota = pacer.state().clone();
        snap.control.quota = Some(override_spec);
        snap.control.paused = true;
        snap.circuit = Circuit::default().force_open(now.minus(Duration::from_secs(5)), &policy);
        snap.lease = Some(Lease {
            owner: "orch-1".into(),
            token: 4,
            expires_at: now.plus(Duration::from_secs(20)),
        });
        let r = StatusReport::build(snap, now, &deployed, PacingPolicy::default(), &policy);
        assert_eq!(r.quota.spec, "5/s,100/day@calendar");
        assert!(r.quota.overridden);
        assert_eq!(r.quota.tiers.len(), 2);
        assert_eq!(r.quota.tiers[1].used, 3, "{:?}", r.quota.tiers);
        assert_eq!(
            r.quota.tiers[1].resets_at,
            Some(Timestamp::from_secs(1_700_006_400))
        );
        assert_eq!(
            (r.circuit.phase, r.circuit.epoch, r.circuit.forced),
            ("open", 1, true)
        );
        assert_eq!(r.circuit.next_health_check, None);
        assert!(r.paused);
        assert_eq!(r.dead_letters, 3);
        let lease = r.lease.as_ref().unwrap();
        assert!(lease.live);
        let text = r.to_string();
        assert!(
            text.contains("circuit       open (forced), epoch 1"),
            "{text}"
        );
        assert!(text.contains("held by orch-1 (token 4)"), "{text}");
        assert!(text.contains("paused        yes"), "{text}");
        assert!(
            text.contains("  main               20         1         0"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["lease"]["expires_at"], "2023-11-14T22:13:40.000Z");
        assert_eq!(json["circuit"]["phase"], "open");
    }

    #[test]
    fn the_deployed_quota_applies_without_an_override() {
        let now = Timestamp::from_secs(1_700_000_000);
        let deployed: QuotaSpec = "10/s,500/min".parse().unwrap();
        let r = StatusReport::build(
            snapshot(),
            now,
            &deployed,
            PacingPolicy::default(),
            &CircuitPolicy::default(),
        );
        assert_eq!(r.quota.spec, "10/s,500/min");
        assert!(!r.quota.overridden);
        assert!(r.quota.tiers.iter().all(|t| t.used == 0));
        assert_eq!(r.circuit.since, None);
        assert!(r.lease.is_none());
        assert!(r.to_string().contains("lease         free (never taken)"));
    }
}
