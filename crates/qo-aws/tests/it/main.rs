//! The integration tests of `qo-aws`, one test binary: each adapter over the real SDK against
//! a local endpoint (`dynamo`, `sqs` and `secrets` against a private moto server each, `lambda`
//! against a small imitation of the Invoke API), sharing the set-up in `common`. Run one
//! module with `cargo test -p qo-aws --test it sqs`.

mod common;
mod dynamo;
mod lambda;
mod results;
mod secrets;
mod sqs;
