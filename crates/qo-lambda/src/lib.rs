//! The two Lambda functions of quota-orchestrator, as thin binaries: each reads its
//! configuration once, builds the AWS SDK clients once per cold start, and hands every event
//! to its library (`qo-orchestrator`, `qo-worker`). Only this package (and `qo-aws`, the
//! adapters, and `qo`, the operations tool) depends on the AWS SDK.
//!
//! # Layout
//! - `src/bin/orchestrator.rs`: the orchestrator function (the template's `Binary:
//!   orchestrator`), over DynamoDB, SQS and Lambda.
//! - `src/bin/worker.rs`: the worker function (`Binary: worker`), over DynamoDB, SQS and the
//!   API key from Secrets Manager or SSM.
//! - `tests/`: the binaries started as Lambda starts them (refusals at init, EMF on stdout) and
//!   the end-to-end run over moto and `cargo lambda watch`.
