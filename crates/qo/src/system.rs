//! The whole system in one process: the orchestrator's loop and the worker over the ports they
//! share, the worker behind an invoker that delivers as Lambda's asynchronous queue does.
//!
//! One place builds it, for `qo local` (in memory or over the AWS adapters against a local
//! endpoint), `qo bench` and the tests that run both sides together. It owns the rules that
//! tie the two sides' settings: the orchestrator's circuit is the worker's, each orchestrator
//! run hydrates from the store as a new Lambda invocation would, and several worker functions
//! form a pool the orchestrator names (`WORKER_FUNCTION_NAMES`), each behind its own invoker.

use std::sync::Arc;

use tracing::warn;

use qo_core::ports::{
    IdempotencyStore, JobSink, JobSource, LeaseStore, PoolInvoker, RecordStore, ResultSink,
};
use qo_core::{Observer, Timestamp, TokioClock, WorkerEvent};
use qo_memory::{FailureRecord, InvokerOptions, InvokerStats, LocalInvoker, MemoryError};
use qo_orchestrator::{OrchestratorConfig, OrchestratorError, Ports, RunReport};
use qo_worker::{AroundCall, HttpCall, Worker, WorkerConfig};

/// What a [`System`] is built from.
pub struct Parts<Q, S, H> {
    /// The clock both sides read (tokio's: paused in tests).
    pub clock: Arc<TokioClock>,
    /// The job queue: the orchestrator receives from it, the worker re-queues to it.
    pub queue: Q,
    /// The state store both sides share (quota, circuit, control, claims).
    pub store: S,
    /// The worker's HTTP layer, one per worker function. One runs the worker as a single
    /// function; several form a pool ([`pool_names`]): each function its own invoker (its own
    /// execution environments, with the options below) and its own name in the re-queues it
    /// makes, and the orchestrator's `worker_functions` names them all.
    pub http: Vec<H>,
    /// The worker's settings (each function's name set from the pool). Its circuit policy is
    /// the orchestrator's too.
    pub worker: WorkerConfig,
    /// The orchestrator's settings (its `circuit` is replaced by the worker's).
    pub orchestrator: OrchestratorConfig,
    /// How each function's invoker delivers events to the worker.
    pub invoker: InvokerOptions,
    /// Where both sides' observations go.
    pub observer: Arc<dyn Observer>,
    /// Where the worker delivers jobs' results (to the worker's `destinations`); `None`:
    /// nowhere.
    pub results: Option<Arc<dyn ResultSink>>,
    /// The user's code around each call (`None`: the stock worker's, which calls each job as
    /// it is and keeps its answer).
    pub around: Option<Arc<dyn AroundCall>>,
}

/// The orchestrator and the worker over shared ports, ready to run.
pub struct System<Q, S> {
    clock: Arc<TokioClock>,
    queue: Q,
    store: S,
    invoker: PoolInvoker<LocalInvoker>,
    orchestrator: OrchestratorConfig,
    observer: Arc<dyn Observer>,
}

impl<Q, S> System<Q, S>
where
    Q: JobSource + JobSink + Clone + 'static,
    S: RecordStore + LeaseStore + IdempotencyStore + Clone + 'static,
{
    /// Wires the parts: the worker over the store and the queue, behind an invoker per
    /// function with the given delivery; fails when no HTTP layer is given or the invoker's
    /// options are out of Lambda's range.
    pub fn assemble<H: HttpCall + 'static>(parts: Parts<Q, S, H>) -> Result<Self, MemoryError> {
        let Parts {
            clock,
            queue,
            store,
            http,
            worker,
            mut orchestrator,
            invoker,
            observer,
            results,
            around,
        } = parts;
        orchestrator.circuit = worker.circuit;
        if http.is_empty() {
            return Err(MemoryError::InvalidOption {
                name: "http",
                value: "0 functions".to_string(),
                reason: "the system needs at least one worker function",
            });
        }
        let names = pool_names(http.len());
        let pooled = names.len() > 1;
        if pooled {
            orchestrator.worker_functions = names.clone();
        }
        let mut members = Vec::with_capacity(http.len());
        for (http, name) in http.into_iter().zip(names) {
            let mut config = worker.clone();
            config.function_name = pooled.then(|| name.clone());
            let mut built = Worker::new(config, http, store.clone(), queue.clone(), clock.clone())
                .with_observer(observer.clone());
            if let Some(sink) = &results {
                built = built.with_result_sink(sink.clone());
            }
            if let Some(around) = &around {
                built = built.with_around(around.clone());
            }
            let worker = Arc::new(built);
            let handler = {
                let worker = worker.clone();
                move |ev: WorkerEvent| {
                    let worker = worker.clone();
                    // An error is a function error: Lambda retries the event (1 min, then 2
                    // min) and then sends it to the on-failure destination.
                    async move {
                        worker.handle(ev).await.inspect_err(|e| {
                            warn!(error = %e, "worker failed");
                        })
                    }
                }
            };
            let invoker =
                LocalInvoker::with_options(clock.clone(), Arc::new(handler), invoker.clone())?;
            members.push((name, invoker));
        }
        Ok(System {
            clock,
            queue,
            store,
            invoker: PoolInvoker::new(members),
            orchestrator,
            observer,
        })
    }

    /// One orchestrator run until `deadline` (or until it stops on its own), hydrating from
    /// the store as a new invocation does.
    pub async fn run_until(&self, deadline: Timestamp) -> Result<RunReport, OrchestratorError> {
        let ports = Ports {
            queue: &self.queue,
            store: &self.store,
            invoker: &self.invoker,
            clock: self.clock.as_ref(),
            observer: self.observer.as_ref(),
        };
        qo_orchestrator::run(ports, &self.orchestrator, deadline).await
    }

    /// As [`System::run_until`], as the orchestrator named `owner` (each Lambda invocation
    /// names itself anew, so two runs at once contest the lease).
    pub async fn run_as(
        &self,
        owner: &str,
        deadline: Timestamp,
    ) -> Result<RunReport, OrchestratorError> {
        let config = OrchestratorConfig {
            owner: owner.to_string(),
            ..self.orchestrator.clone()
        };
        let ports = Ports {
            queue: &self.queue,
            store: &self.store,
            invoker: &self.invoker,
            clock: self.clock.as_ref(),
            observer: self.observer.as_ref(),
        };
        qo_orchestrator::run(ports, &config, deadline).await
    }

    /// Waits until no function's invoker has an event in flight (every delivery and retry
    /// ended).
    pub async fn wait_idle(&self) {
        for (_, invoker) in self.invoker.members() {
            invoker.wait_idle().await;
        }
    }

    /// The worker functions by name, each with its invoker (its counts, and the events Lambda
    /// would send to its on-failure destination).
    pub fn functions(&self) -> &[(String, LocalInvoker)] {
        self.invoker.members()
    }

    /// The counts of every function's invoker together.
    pub fn invoker_stats(&self) -> InvokerStats {
        self.functions()
            .iter()
            .fold(InvokerStats::default(), |all, (_, i)| all.plus(i.stats()))
    }

    /// The on-failure destinations' records of every function.
    pub fn failures(&self) -> Vec<FailureRecord> {
        self.functions()
            .iter()
            .flat_map(|(_, i)| i.failures())
            .collect()
    }

    /// The orchestrator's settings, the worker's circuit in them.
    pub fn orchestrator_config(&self) -> &OrchestratorConfig {
        &self.orchestrator
    }

    /// The job queue.
    pub fn queue(&self) -> &Q {
        &self.queue
    }

    /// The state store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<TokioClock> {
        &self.clock
    }
}

/// The names of a system's `n` worker functions: `worker` alone (the orchestrator's name for
/// a single function it is not told of), else `qo-worker-1` to `qo-worker-n`.
pub fn pool_names(n: usize) -> Vec<String> {
    if n <= 1 {
        return vec![qo_orchestrator::pool::UNNAMED.to_string()];
    }
    (1..=n).map(|i| format!("qo-worker-{i}")).collect()
}
