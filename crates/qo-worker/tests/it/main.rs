//! The integration tests of `qo-worker`, one test binary: the worker over in-memory ports
//! with a fake or loopback HTTP API (each module a concern: credentials, sample events,
//! loopback HTTP, redrive, timing, batches), sharing the rig in `support`.
//! Run one module with `cargo test -p qo-worker --test it timing`.

mod around;
mod batch;
mod credential;
mod events;
mod loopback;
mod redrive;
mod results;
mod support;
mod timing;
