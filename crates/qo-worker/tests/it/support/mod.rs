//! Shared test rig: the worker over qo-memory's store and queue, a recording sink, an observer
//! that keeps every observation, and a fake HTTP layer for paused-time tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use qo_core::ports::{DeadLetter, JobSink, QueueError, RecordKey, Versioned, load_record};
use qo_core::{Clock, Control, Observation, Observer, Timestamp, TokioClock};
use qo_core::{
    event::{HealthCheckEvent, JobEvent, WorkerEvent},
    job::{Job, Origin},
};
use qo_memory::{MemoryQueue, MemoryStore, QueueOptions};
use qo_worker::{ApiResponse, HttpCall, HttpError, Outcome, Worker, WorkerConfig};

/// One re-queue as the worker asked for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Requeue {
    pub body: String,
    pub origin: Origin,
    pub delay: Duration,
}

/// A [`JobSink`] that records what it is asked and passes it on to a [`MemoryQueue`]; it can be
/// told to fail, every call (`fail`) or the re-queues of a body containing `poison`.
#[derive(Clone)]
pub struct RecordingSink {
    pub queue: MemoryQueue,
    pub requeues: Arc<Mutex<Vec<Requeue>>>,
    pub fail: Arc<Mutex<bool>>,
    pub poison: Arc<Mutex<Option<&'static str>>>,
}

impl RecordingSink {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        RecordingSink {
            queue: MemoryQueue::with_options(clock, QueueOptions::template()),
            requeues: Arc::default(),
            fail: Arc::default(),
            poison: Arc::default(),
        }
    }

    pub fn requeues(&self) -> Vec<Requeue> {
        self.requeues.lock().expect("lock").clone()
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.queue.dead_letters()
    }

    /// From now on, fails every re-queue of a body containing `part` (`None`: none).
    pub fn poison(&self, part: Option<&'static str>) {
        *self.poison.lock().expect("lock") = part;
    }

    fn check(&self, op: &'static str, body: &str) -> Result<(), QueueError> {
        let poisoned = op == "requeue"
            && (*self.poison.lock().expect("lock")).is_some_and(|p| body.contains(p));
        if *self.fail.lock().expect("lock") || poisoned {
            Err(QueueError::Backend {
                op,
                source: "injected queue failure".into(),
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl JobSink for RecordingSink {
    async fn dead_letter(&self, letter: DeadLetter) -> Result<(), QueueError> {
        self.check("dead_letter", &letter.body)?;
        self.queue.dead_letter(letter).await
    }

    async fn requeue(
        &self,
        body: &str,
        origin: &Origin,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.check("requeue", body)?;
        self.requeues.lock().expect("lock").push(Requeue {
            body: body.to_string(),
            origin: origin.clone(),
            delay,
        });
        self.queue.requeue(body, origin, delay).await
    }
}

/// Keeps every observation.
#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<Observation>>>);

impl Seen {
    pub fn all(&self) -> Vec<Observation> {
        self.0.lock().expect("lock").clone()
    }

    pub fn called(&self) -> Vec<Observation> {
        self.all()
            .into_iter()
            .filter(|o| matches!(o, Observation::Called { .. }))
            .collect()
    }
}

impl Observer for Seen {
    fn observe(&self, o: Observation) {
        self.0.lock().expect("lock").push(o);
    }
}

/// An HTTP layer in memory: answers with a fixed response and records when it was called.
pub struct FakeHttp {
    pub clock: TokioClock,
    pub answer: Mutex<Result<ApiResponse, HttpError>>,
    pub calls: Mutex<Vec<Timestamp>>,
    pub health_calls: Mutex<Vec<Timestamp>>,
    pub key: Mutex<Option<String>>,
}

impl FakeHttp {
    pub fn new(clock: TokioClock, answer: Result<ApiResponse, HttpError>) -> Self {
        FakeHttp {
            clock,
            answer: Mutex::new(answer),
            calls: Mutex::default(),
            health_calls: Mutex::default(),
            key: Mutex::default(),
        }
    }

    pub fn calls(&self) -> Vec<Timestamp> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait]
impl HttpCall for FakeHttp {
    async fn call(&self, _job: &Job) -> Result<ApiResponse, HttpError> {
        self.calls.lock().expect("lock").push(self.clock.now());
        self.answer.lock().expect("lock").clone()
    }

    async fn health(&self) -> Result<ApiResponse, HttpError> {
        self.health_calls
            .lock()
            .expect("lock")
            .push(self.clock.now());
        self.answer.lock().expect("lock").clone()
    }

    fn set_api_key(&self, key: Option<&str>) -> Result<bool, qo_worker::WorkerError> {
        let mut current = self.key.lock().expect("lock");
        let next = key.map(str::to_string);
        let changed = *current != next;
        *current = next;
        Ok(changed)
    }
}

/// A configuration for `base` with the defaults, then `extra` variables. The call tolerance is
/// two seconds unless `extra` says otherwise: loopback tests run in real time on a busy machine.
pub fn config(base: &str, extra: &[(&str, &str)]) -> WorkerConfig {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("API_BASE_URL".into(), base.into());
    env.insert("CALL_TOLERANCE_MS".into(), "2000".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    WorkerConfig::from_env(&env).expect("config")
}

/// Everything a test looks at.
pub struct Rig<H: HttpCall> {
    pub worker: Worker<MemoryStore, RecordingSink, TokioClock, H>,
    pub store: MemoryStore,
    pub sink: RecordingSink,
    pub clock: TokioClock,
    pub seen: Seen,
}

impl<H: HttpCall> Rig<H> {
    /// Handles `event`; the worker must not fail.
    pub async fn handle(&self, event: WorkerEvent) -> Outcome {
        self.worker.handle(event).await.expect("handled")
    }

    /// Handles a job on `/x` ([`job`] with body `{"path":"/x"}`); the worker must not fail.
    pub async fn handle_x(&self, message_id: &str, slot_at: Timestamp, epoch: u64) -> Outcome {
        self.handle(job(r#"{"path":"/x"}"#, message_id, slot_at, epoch))
            .await
    }

    /// The control record as stored now (the default when there is none).
    pub async fn control(&self) -> Versioned<Control> {
        load_record::<Control>(&self.store, RecordKey::Control)
            .await
            .expect("control")
    }
}

pub fn rig<H: HttpCall>(config: WorkerConfig, http: H, clock: TokioClock) -> Rig<H> {
    let store = MemoryStore::new();
    let sink = RecordingSink::new(Arc::new(clock.clone()));
    let seen = Seen::default();
    let worker = Worker::new(config, http, store.clone(), sink.clone(), clock.clone())
        .with_observer(Arc::new(seen.clone()));
    Rig {
        worker,
        store,
        sink,
        clock,
        seen,
    }
}

/// A job event for `body` (a job's JSON), to call at `slot_at`, dispatched under `epoch`; the
/// job was enqueued two seconds before the slot.
pub fn job_event(body: &str, message_id: &str, slot_at: Timestamp, epoch: u64) -> JobEvent {
    JobEvent {
        job: Job::parse(body).expect("job"),
        origin: Origin {
            message_id: message_id.to_string(),
            attempt: 0,
            throttled: 0,
            enqueued_at: Some(slot_at.minus(Duration::from_secs(2))),
            group_id: None,
            dedup_id: None,
            function: None,
        },
        slot_at,
        epoch,
        dispatched_at: slot_at.minus(Duration::from_millis(250)),
    }
}

pub fn job(body: &str, message_id: &str, slot_at: Timestamp, epoch: u64) -> WorkerEvent {
    WorkerEvent::Job(job_event(body, message_id, slot_at, epoch))
}

pub fn health(epoch: u64, sent_at: Timestamp) -> WorkerEvent {
    WorkerEvent::HealthCheck(HealthCheckEvent {
        epoch,
        sent_at,
        slot_at: None,
    })
}
