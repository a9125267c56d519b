//! The integration tests of `qo-core`, one test binary: the property tests of the pacing
//! invariants (`properties`) and the deployment's numbers checked against `template.yaml`
//! (`template`). Run one module with `cargo test -p qo-core --test it properties`.

mod properties;
mod template;
