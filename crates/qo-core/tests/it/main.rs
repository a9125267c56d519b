//! The integration tests of `qo-core`, one test binary: the property tests of the pacing
//! invariants (`properties`), the deployment's numbers checked against `template.yaml`
//! (`template`), and the settings table checked against the code and the template
//! (`settings`), and no module cycle in any crate (`modules`). Run one module with `cargo test -p qo-core --test it properties`.

mod modules;
mod properties;
mod settings;
mod template;
