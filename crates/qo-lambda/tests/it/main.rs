//! The integration tests of `qo-lambda`, one test binary: the two Lambda binaries run as
//! Lambda runs them. `orchestrator_startup` and `worker_startup`: each refuses a configuration
//! it cannot honour before it polls the Runtime API (sharing `startup`); `worker_emf`: the
//! worker's metrics on stdout; `e2e_aws`: the whole loop over the real SDK against moto and
//! `cargo lambda watch`. Run one module with `cargo test -p qo-lambda --test it e2e_aws`.

mod e2e_aws;
mod orchestrator_startup;
mod startup;
mod worker_emf;
mod worker_startup;
