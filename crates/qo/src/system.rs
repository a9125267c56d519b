//! The whole system in one process: the orchestrator's loop and the worker over the ports they
//! share, the worker behind an invoker that delivers as Lambda's asynchronous queue does.
//!
//! One place builds it, for `qo local` (in memory or over the AWS adapters against a local
//! endpoint), `qo bench` and the tests that run both sides together. It owns the rules that
//! tie the two sides' settings: the orchestrator's circuit is the worker's, and each
//! orchestrator run hydrates from the store as a new Lambda invocation would.

use std::sync::Arc;

use tracing::warn;

use qo_core::ports::{IdempotencyStore, JobSink, JobSource, LeaseStore, RecordStore};
use qo_core::{Observer, Timestamp, TokioClock, WorkerEvent};
use qo_memory::{InvokerOptions, LocalInvoker, MemoryError};
use qo_orchestrator::{OrchestratorConfig, OrchestratorError, Ports, RunReport};
use qo_worker::{HttpCall, Worker, WorkerConfig};

/// What a [`System`] is built from.
pub struct Parts<Q, S, H> {
    /// The clock both sides read (tokio's: paused in tests).
    pub clock: Arc<TokioClock>,
    /// The job queue: the orchestrator receives from it, the worker re-queues to it.
    pub queue: Q,
    /// The state store both sides share (quota, circuit, control, claims).
    pub store: S,
    /// The worker's HTTP layer.
    pub http: H,
    /// The worker's settings. Its circuit policy is the orchestrator's too.
    pub worker: WorkerConfig,
    /// The orchestrator's settings (its `circuit` is replaced by the worker's).
    pub orchestrator: OrchestratorConfig,
    /// How the invoker delivers events to the worker.
    pub invoker: InvokerOptions,
    /// Where both sides' observations go.
    pub observer: Arc<dyn Observer>,
}

/// The worker as the invoker runs it.
type SharedWorker<Q, S, H> = Arc<Worker<S, Q, Arc<TokioClock>, H>>;

/// The orchestrator and the worker over shared ports, ready to run.
pub struct System<Q, S, H> {
    clock: Arc<TokioClock>,
    queue: Q,
    store: S,
    worker: SharedWorker<Q, S, H>,
    invoker: LocalInvoker,
    orchestrator: OrchestratorConfig,
    observer: Arc<dyn Observer>,
}

impl<Q, S, H> System<Q, S, H>
where
    Q: JobSource + JobSink + Clone + 'static,
    S: RecordStore + LeaseStore + IdempotencyStore + Clone + 'static,
    H: HttpCall + 'static,
{
    /// Wires the parts: the worker over the store and the queue, behind an invoker with the
    /// given delivery; fails when the invoker's options are out of Lambda's range.
    pub fn assemble(parts: Parts<Q, S, H>) -> Result<Self, MemoryError> {
        let Parts {
            clock,
            queue,
            store,
            http,
            worker,
            mut orchestrator,
            invoker,
            observer,
        } = parts;
        orchestrator.circuit = worker.circuit;
        let worker = Arc::new(
            Worker::new(worker, http, store.clone(), queue.clone(), clock.clone())
                .with_observer(observer.clone()),
        );
        let handler = {
            let worker = worker.clone();
            move |ev: WorkerEvent| {
                let worker = worker.clone();
                // An error is a function error: Lambda retries the event (1 min, then 2 min)
                // and then sends it to the on-failure destination.
                async move {
                    worker.handle(ev).await.inspect_err(|e| {
                        warn!(error = %e, "worker failed");
                    })
                }
            }
        };
        let invoker = LocalInvoker::with_options(clock.clone(), Arc::new(handler), invoker)?;
        Ok(System {
            clock,
            queue,
            store,
            worker,
            invoker,
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

    /// Waits until the invoker has no event in flight (every delivery and retry ended).
    pub async fn wait_idle(&self) {
        self.invoker.wait_idle().await;
    }

    /// The invoker (its failures: the events Lambda would send to the on-failure destination).
    pub fn invoker(&self) -> &LocalInvoker {
        &self.invoker
    }

    /// The worker.
    pub fn worker(&self) -> &SharedWorker<Q, S, H> {
        &self.worker
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
