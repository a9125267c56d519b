//! The worker: turns a job event into one HTTP call to the API, at its slot, and classifies the
//! answer (done, back-off and re-queue, circuit failure and re-queue, or dead-letter); and checks
//! the API's health while the circuit is open.
//!
//! The library is generic over the `qo_core` ports, so the same logic runs on AWS (the `worker`
//! binary of `qo-lambda`, over `qo-aws`; this library depends on no AWS SDK crate) and in memory (tests and `qo local`, over `qo-memory`).
//!
//! # Layout
//! - [`around`]: [`AroundCall`], the user's own code around the paced call: the request built
//!   from the job, and what to make of a 2xx answer; [`Passthrough`] by default.
//! - [`config`]: [`WorkerConfig`], read from the environment once.
//! - [`clock`]: [`SystemClock`], the clock of the Lambda binary.
//! - [`credential`]: [`CredentialSource`], the key re-read after a 401 or 403.
//! - [`http`]: the [`HttpCall`] seam, [`ApiResponse`] and [`HttpError`].
//! - [`client`]: [`ApiClient`], the reqwest implementation, and [`build_url`].
//! - [`worker`]: [`Worker`], which carries out the decisions of `plan` (a private module:
//!   the pure plan of a delivered job before its call, and the decision on the API's answer)
//!   one effect per variant.
//! - [`window`]: the API's window read from each answer and reported after a success only
//!   when its calls run ahead of an even spend ([`window::runs_ahead`]).
//! - [`outcome`]: [`Outcome`], the function's JSON result.
//! - [`retry_after`]: parsing `Retry-After`.
//! - [`ratelimit`]: reading the API's rate-limit headers (`RATE_LIMIT_HEADERS`) into an
//!   [`qo_core::ApiWindow`].
//! - [`excerpt`]: bounded body excerpts for dead-letter reasons.
//! - `records` (private): a job's idempotency records at its end, marked done or released.
//! - [`results`]: the result path: a job's [`qo_core::result::JobResult`] built from the
//!   answer and delivered to its destination, retried, or dead-lettered itself.
//! - [`lambda`]: the Lambda [`handler`]; [`budget`]: the timeout budget it keeps, which the
//!   function timeout must cover.
//! - [`error`]: the crate's error, [`WorkerError`].

pub mod around;
pub mod budget;
pub mod client;
pub mod clock;
pub mod config;
pub mod credential;
pub mod error;
pub mod excerpt;
pub mod http;
pub mod lambda;
pub mod outcome;
mod plan;
pub mod ratelimit;
mod records;
pub mod results;
pub mod retry_after;
pub mod window;
pub mod worker;

pub use around::{AfterCall, Answer, AroundCall, HandlerError, Passthrough};
pub use client::{ApiClient, build_url};
pub use clock::SystemClock;
pub use config::WorkerConfig;
pub use credential::{CredentialError, CredentialSource};
pub use error::WorkerError;
pub use http::{ApiResponse, HttpCall, HttpError};
pub use lambda::handler;
pub use outcome::Outcome;
pub use ratelimit::{RateHeaders, RateLimitHeaders};
pub use worker::Worker;
