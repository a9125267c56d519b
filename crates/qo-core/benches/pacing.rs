//! The pacing decision, beside the `governor` crate's limiter measured in the same run.
//!
//! Each iteration takes the slot now if it conforms (one call that checks and records, as
//! governor's `check` does), with time moving forward by half the emission interval per
//! iteration (so half the answers are "not yet").

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use governor::clock::FakeRelativeClock;
use governor::{Quota, RateLimiter};
use qo_core::Timestamp;
use qo_core::quota::{Pacer, PacingPolicy};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pacing decision, 20/s");

    group.bench_function("qo-core Pacer (one tier)", |b| {
        let mut pacer = Pacer::new("20/s".parse().expect("spec"), PacingPolicy::default());
        let mut now = Timestamp::from_secs(1_800_000_000);
        b.iter(|| {
            now = now.plus(Duration::from_millis(25));
            let _ = black_box(pacer.take(black_box(now)));
        })
    });

    group.bench_function("qo-core Pacer (s, min, day@calendar, month)", |b| {
        let spec = "20/s,1000/min,100000/day@calendar,3000000/month"
            .parse()
            .expect("spec");
        let mut pacer = Pacer::new(spec, PacingPolicy::default());
        let mut now = Timestamp::from_secs(1_800_000_000);
        b.iter(|| {
            now = now.plus(Duration::from_millis(25));
            let _ = black_box(pacer.take(black_box(now)));
        })
    });

    group.bench_function("governor RateLimiter (direct, fake clock)", |b| {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_second(NonZeroU32::new(20).expect("nonzero"));
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
        b.iter(|| {
            clock.advance(Duration::from_millis(25));
            let _ = black_box(limiter.check());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
