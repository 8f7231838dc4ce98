//! Property tests of the maths the reports rest on: quantiles (exact and
//! from histograms), burn rates over windows, error budget, herd sizes and
//! counter deltas, each against a direct definition.

use herdwatch_analyzer::detect::key_herds;
use herdwatch_analyzer::metrics::cumulative_deltas;
use herdwatch_analyzer::model::Sym;
use herdwatch_analyzer::shape::RecomputeFact;
use herdwatch_analyzer::slo::{BurnSeries, budget_consumed, burn_rate};
use herdwatch_analyzer::stats::{histogram_quantile, mad, quantile};
use proptest::prelude::*;

fn values() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..10_000.0, 1..200)
}

proptest! {
    #[test]
    fn quantiles_are_ordered_bounded_and_hit_the_extremes(v in values(), a in 0.0f64..1.0, b in 0.0f64..1.0) {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(quantile(&v, lo) <= quantile(&v, hi));
        prop_assert!(quantile(&v, lo) >= min && quantile(&v, hi) <= max);
        prop_assert_eq!(quantile(&v, 0.0), min);
        prop_assert_eq!(quantile(&v, 1.0), max);
        let mut reversed = v.clone();
        reversed.reverse();
        prop_assert_eq!(quantile(&v, lo), quantile(&reversed, lo));
    }

    /// Selection finds what sorting would: the quantile and the MAD equal
    /// their textbook definitions on the sorted values, with ties, NaNs
    /// (left out) and every q.
    #[test]
    fn quantile_and_mad_are_their_definitions_over_the_sorted_values(
        v in prop::collection::vec(prop_oneof![
            4 => (0u32..50).prop_map(f64::from),
            4 => -1e6f64..1e6,
            1 => Just(f64::NAN),
        ], 0..120),
        q in 0.0f64..=1.0,
    ) {
        let by_sorting = |v: &[f64], q: f64| {
            let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
            if s.is_empty() {
                return f64::NAN;
            }
            s.sort_by(f64::total_cmp);
            let pos = q * (s.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
        };
        let same = |a: f64, b: f64| (a.is_nan() && b.is_nan()) || a == b;
        prop_assert!(same(quantile(&v, q), by_sorting(&v, q)));
        let m = by_sorting(&v, 0.5);
        let dev: Vec<f64> = v.iter().filter(|x| !x.is_nan()).map(|x| (x - m).abs()).collect();
        prop_assert!(same(mad(&v), 1.4826 * by_sorting(&dev, 0.5)));
    }

    #[test]
    fn a_quantile_has_at_least_its_share_of_values_at_or_below_it(v in values(), q in 0.0f64..1.0) {
        let x = quantile(&v, q);
        let below = v.iter().filter(|y| **y <= x).count() as f64;
        // Linear interpolation between order statistics k and k+1 of n
        // values puts at least k+1 = floor(q (n-1)) + 1 of them at or below.
        let k = (q * (v.len() - 1) as f64).floor();
        prop_assert!(below >= k + 1.0);
    }

    #[test]
    fn histogram_quantiles_fall_in_the_bucket_of_the_exact_one(
        v in prop::collection::vec(0.001f64..20.0, 20..300),
        q in 0.05f64..0.99,
    ) {
        let bounds = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];
        let mut counts = vec![0.0; bounds.len() + 1];
        for x in &v {
            counts[bounds.partition_point(|b| b < x)] += 1.0;
        }
        let est = histogram_quantile(&bounds, &counts, q);
        // The sample of rank ceil(q n) (nearest rank) sits in some bucket;
        // the estimate lies within that bucket's edges.
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        let exact = sorted[rank - 1];
        let i = bounds.partition_point(|b| *b < exact);
        if i < bounds.len() {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            prop_assert!(est >= lower - 1e-12 && est <= bounds[i] + 1e-12,
                "estimate {est} outside ({lower}, {}] holding {exact}", bounds[i]);
        } else {
            prop_assert_eq!(est, *bounds.last().unwrap());
        }
    }

    #[test]
    fn burn_over_a_window_is_the_bad_share_of_that_window_over_the_allowance(
        buckets in prop::collection::vec((0u32..50, 0u32..500), 1..120),
        end_frac in 0.0f64..1.0,
        window in 1usize..200,
        target in prop::sample::select(vec![0.9, 0.99, 0.995, 0.999]),
    ) {
        let total: Vec<f64> = buckets.iter().map(|(b, t)| (*b + *t) as f64).collect();
        let bad: Vec<f64> = buckets.iter().map(|(b, _)| *b as f64).collect();
        let series = BurnSeries::new(&bad, &total, 1.0, target);
        let end = ((buckets.len() - 1) as f64 * end_frac) as usize;
        let start = (end + 1).saturating_sub(window);
        let (b, t): (f64, f64) = (start..=end).map(|i| (bad[i], total[i])).fold((0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
        let direct = if t > 0.0 { (b / t) / (1.0 - target) } else { 0.0 };
        prop_assert!((series.burn(end, window as f64) - direct).abs() <= 1e-9 * direct.max(1.0));
        // Scaling bad and total together leaves the burn as it is.
        prop_assert!((burn_rate(3.0 * b, 3.0 * t, target) - burn_rate(b, t, target)).abs() <= 1e-9 * direct.max(1.0));
    }

    #[test]
    fn the_whole_budget_is_the_allowed_bad_requests_of_the_period(
        rps in 0.1f64..10_000.0,
        days in 1.0f64..90.0,
        target in prop::sample::select(vec![0.9, 0.99, 0.999]),
        share in 0.0f64..2.0,
    ) {
        let allowed = (1.0 - target) * rps * days * 86_400.0;
        let consumed = budget_consumed(share * allowed, rps, target, days);
        prop_assert!((consumed - share).abs() <= 1e-9 * share.max(1.0));
    }

    #[test]
    fn herd_size_is_the_most_recomputes_of_a_key_in_flight_at_once(
        intervals in prop::collection::vec((0u64..10_000, 1u64..3_000, 0usize..4), 1..80),
    ) {
        let keys = ["a", "b", "c", "d"];
        let facts: Vec<RecomputeFact> = intervals
            .iter()
            .map(|(s, d, k)| RecomputeFact {
                service: Sym::from("svc"),
                key: Sym::from(keys[*k]),
                group: Sym::from("g"),
                miss_at: *s,
                start: *s,
                end: s + d,
                db_nanos: *d,
                wait: 0,
                trace_id: [1; 16],
            })
            .collect();
        let refs: Vec<&RecomputeFact> = facts.iter().collect();
        for h in key_herds(&refs) {
            let mine: Vec<&RecomputeFact> = facts.iter().filter(|f| *f.key == *h.key).collect();
            // Brute force: the most intervals holding any one instant (the
            // peak is always at some interval's start; ends are exclusive).
            let brute = mine
                .iter()
                .map(|f| mine.iter().filter(|g| g.start <= f.start && f.start < g.end).count())
                .max()
                .unwrap() as u64;
            prop_assert_eq!(h.herd, brute, "key {}", h.key);
            prop_assert_eq!(h.recomputes, mine.len() as u64);
            prop_assert!(h.herd >= 1 && h.herd <= h.recomputes);
        }
    }

    #[test]
    fn deltas_of_a_counter_add_up_to_its_growth_and_survive_resets(
        steps in prop::collection::vec(0u32..1000, 2..60),
        reset_at in prop::option::of(1usize..59),
    ) {
        // A cumulative counter started at t = 1, sampled every 10; at
        // `reset_at` it restarts from zero with a new start time.
        let mut points = Vec::new();
        let (mut value, mut start) = (0.0, 1u64);
        let mut growth = 0.0;
        for (i, s) in steps.iter().enumerate() {
            let time = 10 * (i as u64 + 1);
            if Some(i) == reset_at {
                value = 0.0;
                start = time - 5;
            }
            value += *s as f64;
            growth += *s as f64;
            points.push((start, time, value));
        }
        let deltas = cumulative_deltas(&points);
        let sum: f64 = deltas.iter().map(|d| d.2).sum();
        prop_assert!(deltas.iter().all(|d| d.2 >= 0.0 && d.0 <= d.1));
        prop_assert!((sum - growth).abs() < 1e-6, "deltas {sum} vs growth {growth}");
    }
}
