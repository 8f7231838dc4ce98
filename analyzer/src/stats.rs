//! Small robust statistics: median, MAD, exact and histogram quantiles.

/// Median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// Linear-interpolated quantile `q` in [0, 1] of the values that are not
/// NaN (NaN when there are none).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    quantile_in_place(&mut v, q)
}

/// [`quantile`] of `v` (no NaN in it), reordering it: the two order
/// statistics it interpolates between are selected, not sorted for (the
/// robust baselines take a median per bucket over a trailing window).
fn quantile_in_place(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, &mut below, above) = v.select_nth_unstable_by(lo, f64::total_cmp);
    if pos == lo as f64 {
        return below;
    }
    // The next order statistic: the least of those above.
    let next = above
        .iter()
        .copied()
        .min_by(f64::total_cmp)
        .unwrap_or(below);
    below + (next - below) * (pos - lo as f64)
}

/// Median absolute deviation, scaled by 1.4826 so it estimates σ for normal
/// data.
pub fn mad(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let m = quantile_in_place(&mut v, 0.5);
    if m.is_nan() {
        return f64::NAN;
    }
    for x in &mut v {
        *x = (*x - m).abs();
    }
    1.4826 * quantile_in_place(&mut v, 0.5)
}

/// Quantile of an explicit-bucket histogram by linear interpolation within
/// the bucket, as Prometheus' `histogram_quantile` does: the first bucket's
/// lower edge is 0 (or its upper edge when that is negative), and a quantile
/// that falls in the overflow bucket is the last finite bound.
pub fn histogram_quantile(bounds: &[f64], counts: &[f64], q: f64) -> f64 {
    let total: f64 = counts.iter().sum();
    if total <= 0.0 || counts.len() != bounds.len() + 1 {
        return f64::NAN;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut cumulative = 0.0;
    for (i, c) in counts.iter().enumerate() {
        if cumulative + c >= rank && *c > 0.0 {
            if i == bounds.len() {
                return bounds.last().copied().unwrap_or(f64::NAN);
            }
            let upper = bounds[i];
            let lower = if i == 0 {
                upper.min(0.0)
            } else {
                bounds[i - 1]
            };
            return lower + (upper - lower) * ((rank - cumulative) / c);
        }
        cumulative += c;
    }
    bounds.last().copied().unwrap_or(f64::NAN)
}

/// How many observations of a histogram exceed `threshold`, interpolating
/// linearly inside the bucket that contains it.
pub fn histogram_count_above(bounds: &[f64], counts: &[f64], threshold: f64) -> f64 {
    if counts.len() != bounds.len() + 1 {
        return 0.0;
    }
    let mut above = 0.0;
    for (i, c) in counts.iter().enumerate() {
        let lower = if i == 0 {
            0.0f64.min(bounds.first().copied().unwrap_or(0.0))
        } else {
            bounds[i - 1]
        };
        let upper = bounds.get(i).copied().unwrap_or(f64::INFINITY);
        if lower >= threshold {
            above += c;
        } else if upper > threshold {
            if upper.is_infinite() {
                above += c;
            } else {
                above += c * (upper - threshold) / (upper - lower);
            }
        }
    }
    above
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        // |x - 2| = 1,0,1,98 → median 1 → ×1.4826
        assert!((mad(&[1.0, 2.0, 3.0, 100.0]) - 1.4826).abs() < 1e-9);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn quantile_interpolates() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((quantile(&v, 0.95) - 95.05).abs() < 1e-9);
        assert_eq!(quantile(&[5.0], 0.99), 5.0);
    }

    #[test]
    fn histogram_quantile_matches_prometheus() {
        // 10 in (0,1], 10 in (1,2], 0 above.
        let b = [1.0, 2.0];
        let c = [10.0, 10.0, 0.0];
        assert!((histogram_quantile(&b, &c, 0.5) - 1.0).abs() < 1e-9);
        assert!((histogram_quantile(&b, &c, 0.75) - 1.5).abs() < 1e-9);
        // Overflow bucket → the last finite bound.
        assert_eq!(histogram_quantile(&b, &[0.0, 0.0, 5.0], 0.9), 2.0);
        assert!(histogram_quantile(&b, &[0.0, 0.0, 0.0], 0.9).is_nan());
    }

    #[test]
    fn count_above_interpolates() {
        let b = [1.0, 2.0];
        let c = [10.0, 10.0, 4.0];
        assert!((histogram_count_above(&b, &c, 1.5) - 9.0).abs() < 1e-9);
        assert!((histogram_count_above(&b, &c, 0.0) - 24.0).abs() < 1e-9);
    }
}
