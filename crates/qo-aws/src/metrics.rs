//! CloudWatch metrics in Embedded Metric Format: an [`Observer`] that counts observations and
//! writes one EMF JSON line to stdout per flush. Lambda ships stdout to CloudWatch Logs, which
//! extracts the metrics; no API call and no permission needed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use qo_core::config::Env;
use qo_core::quota::Utilization;
use qo_core::{CircuitPhase, Observation, Observer, ReasonKind, Timestamp};
use serde_json::{Value, json};

/// The `function` of the worker's metrics ([`EmfMetrics::from_env`]).
pub const WORKER: &str = "worker";

/// Counts observations; [`EmfMetrics::flush`] writes them as one EMF record.
///
/// Counters are summed and reset at each flush; gauges (`CircuitOpen`, `Backlog`) keep their
/// last value; the worker's metrics ([`WORKER`]) have no `CircuitOpen` gauge but count
/// `CircuitOpened`, the openings its failures caused; `JobWait` (Milliseconds) lists each call's wait from enqueue to call;
/// `QuotaUtilization` (Percent) is the calls dispatched over the calls the pace
/// allowed while work waited, since the previous flush, and is left out when nothing waited;
/// `ApiRemaining` (Count) is the fewest calls the API said were left in its window since the
/// previous flush, left out when no answer carried rate-limit headers.
#[derive(Debug)]
pub struct EmfMetrics {
    namespace: String,
    stack: String,
    function: &'static str,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    values: BTreeMap<&'static str, f64>,
    gauges: BTreeMap<&'static str, f64>,
    waits_ms: Vec<f64>,
    utilization: Utilization,
    api_remaining: Option<f64>,
}

impl EmfMetrics {
    /// Metrics of `function` ("orchestrator" or "worker") in `METRICS_NAMESPACE` (default
    /// `QuotaOrchestrator`) with the dimension `Stack` = `STACK_NAME` (default
    /// `quota-orchestrator`).
    pub fn from_env(env: &impl Env, function: &'static str) -> Self {
        EmfMetrics {
            namespace: env
                .get("METRICS_NAMESPACE")
                .unwrap_or_else(|| "QuotaOrchestrator".to_string()),
            stack: env
                .get("STACK_NAME")
                .unwrap_or_else(|| "quota-orchestrator".to_string()),
            function,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn with<F: FnOnce(&mut Counts)>(&self, f: F) {
        if let Ok(mut c) = self.counts.lock() {
            f(&mut c);
        }
    }

    /// Adds to a counter.
    pub fn add(&self, name: &'static str, n: f64) {
        self.with(|c| *c.values.entry(name).or_default() += n);
    }

    /// Sets a gauge (last value wins).
    pub fn gauge(&self, name: &'static str, v: f64) {
        self.with(|c| {
            c.gauges.insert(name, v);
        });
    }

    /// The EMF record for the counts so far, and resets the counters (gauges are kept).
    pub fn take_record(&self, now: Timestamp) -> Option<Value> {
        let mut c = self.counts.lock().ok()?;
        if c.values.is_empty()
            && c.gauges.is_empty()
            && c.waits_ms.is_empty()
            && c.utilization.fraction().is_none()
            && c.api_remaining.is_none()
        {
            return None;
        }
        let mut record = serde_json::Map::new();
        let mut defs = Vec::new();
        for (name, v) in std::mem::take(&mut c.values) {
            record.insert(name.to_string(), json!(v));
            defs.push(json!({"Name": name, "Unit": "Count"}));
        }
        for (name, v) in &c.gauges {
            record.insert(name.to_string(), json!(v));
            defs.push(json!({"Name": name, "Unit": "None"}));
        }
        if let Some(fraction) = std::mem::take(&mut c.utilization).fraction() {
            let percent = (fraction * 1000.0).round() / 10.0;
            record.insert("QuotaUtilization".into(), json!(percent));
            defs.push(json!({"Name": "QuotaUtilization", "Unit": "Percent"}));
        }
        if let Some(remaining) = c.api_remaining.take() {
            record.insert("ApiRemaining".into(), json!(remaining));
            defs.push(json!({"Name": "ApiRemaining", "Unit": "Count"}));
        }
        let waits = std::mem::take(&mut c.waits_ms);
        if !waits.is_empty() {
            record.insert("JobWait".into(), json!(waits));
            defs.push(json!({"Name": "JobWait", "Unit": "Milliseconds"}));
        }
        record.insert("Stack".into(), json!(self.stack));
        record.insert("Function".into(), json!(self.function));
        record.insert(
            "_aws".into(),
            json!({
                "Timestamp": now.as_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [["Stack"]],
                    "Metrics": defs,
                }]
            }),
        );
        Some(Value::Object(record))
    }

    /// Writes the counts so far as one EMF line on stdout.
    pub fn flush(&self, now: Timestamp) {
        if let Some(record) = self.take_record(now) {
            println!("{record}");
        }
    }
}

impl Observer for EmfMetrics {
    fn observe(&self, o: Observation) {
        match o {
            Observation::Dispatched { .. } => self.add("Dispatched", 1.0),
            Observation::InvokeFailed { .. } => self.add("InvokeFailed", 1.0),
            Observation::Called { status, wait, .. } => {
                if let Some(wait) = wait {
                    self.with(|c| c.waits_ms.push(wait.as_secs_f64() * 1000.0));
                }
                if status.is_none_or(|s| s >= 500) {
                    self.add("Failures", 1.0);
                }
            }
            Observation::Succeeded { .. } => self.add("Succeeded", 1.0),
            Observation::Throttled { .. } => self.add("Throttled", 1.0),
            Observation::Requeued { ref reason, .. } => {
                self.add("Requeued", 1.0);
                if reason.kind() == ReasonKind::Late {
                    self.add("LateDeliveries", 1.0);
                }
            }
            Observation::DeadLettered { .. } => self.add("DeadLettered", 1.0),
            Observation::Duplicate { .. } => self.add("Duplicates", 1.0),
            Observation::CredentialRejected { .. } => self.add("CredentialRejected", 1.0),
            // Only the orchestrator keeps the `CircuitOpen` gauge: it re-reads the circuit at
            // least every second, so its series follows the circuit both ways. A worker sees
            // the circuit only when its own call opens it or its own health check closes it,
            // and a gauge survives flushes: the environment that opened it would report 1 for
            // the rest of its life, and the alarm (the Maximum over the stack) would page
            // after the circuit closed. The worker counts the openings it caused instead.
            Observation::Circuit { phase, .. } if self.function == WORKER => {
                if phase != CircuitPhase::Closed {
                    self.add("CircuitOpened", 1.0);
                }
            }
            Observation::Circuit { phase, .. } => self.gauge(
                "CircuitOpen",
                if phase == CircuitPhase::Closed {
                    0.0
                } else {
                    1.0
                },
            ),
            Observation::HealthCheckSent { .. } => self.add("HealthChecksSent", 1.0),
            Observation::HealthCheck { .. } => {}
            Observation::Backlog { held } => self.gauge("Backlog", held as f64),
            Observation::BudgetExhausted { .. } => self.add("BudgetExhausted", 1.0),
            Observation::Utilization(u) => self.with(|c| c.utilization.add(u)),
            Observation::Pace {
                rate_per_s,
                ceiling_per_s,
            } => {
                self.gauge("PaceRate", rate_per_s);
                self.gauge("PaceCeiling", ceiling_per_s);
            }
            Observation::PaceDecreased(_) => self.add("PaceDecreases", 1.0),
            Observation::ResultDelivered { .. } => self.add("ResultsDelivered", 1.0),
            Observation::ResultUndelivered { .. } => self.add("ResultsUndelivered", 1.0),
            Observation::Swept {
                resent,
                completed,
                pass_age,
            } => {
                self.add("SweptCopies", resent as f64);
                if completed {
                    self.add("SweepPassesCompleted", 1.0);
                }
                // Gauges outlive a run in a warm environment: a completed pass sets 0.
                let age = pass_age.unwrap_or_default();
                self.gauge("SweepPassAgeSeconds", age.as_secs_f64());
            }
            Observation::ApiRemaining { remaining, .. } => self.with(|c| {
                let r = remaining as f64;
                c.api_remaining = Some(c.api_remaining.map_or(r, |m| m.min(r)));
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    #[test]
    fn writes_an_emf_record() {
        let env: HashMap<String, String> = [("STACK_NAME".to_string(), "s1".to_string())]
            .into_iter()
            .collect();
        let m = EmfMetrics::from_env(&env, "orchestrator");
        m.observe(Observation::Dispatched {
            message_id: "a".into(),
            slot: Timestamp::EPOCH,
        });
        m.observe(Observation::Dispatched {
            message_id: "b".into(),
            slot: Timestamp::EPOCH,
        });
        m.observe(Observation::Circuit {
            phase: CircuitPhase::Open,
            epoch: 1,
        });
        let r = m.take_record(Timestamp::from_millis(5)).expect("record");
        assert_eq!(r["Dispatched"], 2.0);
        assert_eq!(r["CircuitOpen"], 1.0);
        assert_eq!(r["Stack"], "s1");
        assert_eq!(
            r["_aws"]["CloudWatchMetrics"][0]["Namespace"],
            "QuotaOrchestrator"
        );
        assert_eq!(
            r["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0],
            "Stack"
        );
        // Counters reset after a flush; gauges stay.
        let r2 = m.take_record(Timestamp::from_millis(6)).expect("record");
        assert!(r2.get("Dispatched").is_none());
        assert_eq!(r2["CircuitOpen"], 1.0);
    }

    #[test]
    fn a_pass_in_progress_reports_its_age_and_a_completed_one_zero() {
        let m = EmfMetrics::from_env(&HashMap::<String, String>::new(), "orchestrator");
        m.observe(Observation::Swept {
            resent: 40,
            completed: false,
            pass_age: Some(Duration::from_secs(7_200)),
        });
        let r = m.take_record(Timestamp::EPOCH).expect("record");
        assert_eq!(r["SweepPassAgeSeconds"], 7_200.0);
        assert_eq!(r["SweptCopies"], 40.0);
        m.observe(Observation::Swept {
            resent: 3,
            completed: true,
            pass_age: None,
        });
        let r = m.take_record(Timestamp::EPOCH).expect("record");
        assert_eq!(r["SweepPassAgeSeconds"], 0.0);
        assert_eq!(r["SweepPassesCompleted"], 1.0);
    }

    #[test]
    fn the_worker_counts_openings_and_keeps_no_circuit_gauge() {
        let m = EmfMetrics::from_env(&HashMap::<String, String>::new(), WORKER);
        m.observe(Observation::Circuit {
            phase: CircuitPhase::Open,
            epoch: 1,
        });
        let r = m.take_record(Timestamp::EPOCH).expect("record");
        assert_eq!(r["CircuitOpened"], 1.0);
        assert!(r.get("CircuitOpen").is_none(), "{r}");
        // Later invocations of the same environment, after the circuit closed elsewhere:
        // nothing about the circuit, so the orchestrator's 0 is the stack's only value.
        m.observe(Observation::Succeeded { job_id: "j".into() });
        let r2 = m.take_record(Timestamp::from_millis(1)).expect("record");
        assert!(r2.get("CircuitOpen").is_none(), "{r2}");
        assert!(r2.get("CircuitOpened").is_none(), "{r2}");
        // Its own health check closing the circuit: no gauge either.
        m.observe(Observation::Circuit {
            phase: CircuitPhase::Closed,
            epoch: 1,
        });
        assert!(m.take_record(Timestamp::from_millis(2)).is_none());
    }

    #[test]
    fn calls_give_failures_and_waits() {
        let m = EmfMetrics::from_env(&HashMap::<String, String>::new(), "worker");
        for (status, wait_ms) in [(Some(200), 1500), (Some(503), 20), (None, 7)] {
            m.observe(Observation::Called {
                job_id: "j".into(),
                at: Timestamp::EPOCH,
                status,
                wait: Some(std::time::Duration::from_millis(wait_ms)),
            });
        }
        let r = m.take_record(Timestamp::EPOCH).expect("record");
        assert_eq!(r["Failures"], 2.0);
        assert_eq!(r["JobWait"], json!([1500.0, 20.0, 7.0]));
        assert_eq!(r["Function"], "worker");
    }

    #[test]
    fn api_remaining_is_the_low_water_mark_of_the_flush_interval() {
        let m = EmfMetrics::from_env(&HashMap::<String, String>::new(), "worker");
        for remaining in [40, 3, 17] {
            m.observe(Observation::ApiRemaining {
                remaining,
                limit: Some(60),
            });
        }
        let r = m.take_record(Timestamp::EPOCH).expect("record");
        assert_eq!(r["ApiRemaining"], 3.0);
        let defs = r["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metric definitions");
        assert!(defs.contains(&json!({"Name": "ApiRemaining", "Unit": "Count"})));
        // No answer with headers since: no value, not a stale one.
        assert!(m.take_record(Timestamp::from_millis(1)).is_none());
    }

    #[test]
    fn quota_utilization_is_a_percent_over_the_flush_interval() {
        let m = EmfMetrics::from_env(&HashMap::<String, String>::new(), "orchestrator");
        assert!(m.take_record(Timestamp::EPOCH).is_none());
        m.observe(Observation::Utilization(Utilization {
            calls: 90,
            allowed: 100.0,
        }));
        m.observe(Observation::Utilization(Utilization {
            calls: 9,
            allowed: 20.0,
        }));
        let r = m.take_record(Timestamp::from_millis(1)).expect("record");
        assert_eq!(r["QuotaUtilization"], 82.5);
        let defs = r["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .expect("metric definitions");
        assert!(defs.contains(&json!({"Name": "QuotaUtilization", "Unit": "Percent"})));
        // Nothing waited since: no value rather than 0 %.
        m.observe(Observation::Backlog { held: 0 });
        let r2 = m.take_record(Timestamp::from_millis(2)).expect("record");
        assert!(r2.get("QuotaUtilization").is_none(), "{r2}");
    }
}
