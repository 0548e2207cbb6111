//! Latency as a fixed log-bucket histogram: eight buckets per power of two of microseconds,
//! from 1 µs to about 134 s. Every process and every flush uses the same buckets, so two
//! histograms merge by adding counts element by element, and a percentile read from the sum
//! is exactly what it would be from one histogram of all the calls. The price is resolution:
//! a percentile is reported as the middle of its bucket, at most 1/16 (6.25%) from the exact
//! order statistic.

use std::time::Duration;

/// Sub-buckets per power of two: 2^SUB_BITS.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Latencies are clamped here (2^27 − 1 µs, about 134 s: beyond any deadline the server allows).
const MAX_MICROS: u64 = (1 << 27) - 1;
/// Buckets 0..SUB hold 0..SUB µs exactly; then SUB per power of two up to 2^27.
pub const BUCKETS: usize = (27 - SUB_BITS as usize + 1) * SUB;

/// The bucket of a latency in microseconds.
pub fn index(micros: u64) -> usize {
    let v = micros.min(MAX_MICROS);
    if v < SUB as u64 {
        return v as usize;
    }
    let exponent = 63 - v.leading_zeros();
    let sub = ((v >> (exponent - SUB_BITS)) as usize) & (SUB - 1);
    (exponent - SUB_BITS + 1) as usize * SUB + sub
}

/// The microseconds bucket `i` holds: `[low, high)`.
pub fn bounds(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, i as u64 + 1);
    }
    let shift = (i / SUB) as u32 - 1;
    let sub = (i % SUB) as u64;
    ((SUB as u64 + sub) << shift, (SUB as u64 + sub + 1) << shift)
}

/// Counts per bucket, as the request path fills them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Histogram(Box<[u64; BUCKETS]>);

impl Default for Histogram {
    fn default() -> Self {
        Self(Box::new([0; BUCKETS]))
    }
}

impl Histogram {
    pub fn observe(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0[index(micros)] += 1;
    }

    pub fn add(&mut self, other: &Histogram) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// The counts without trailing empty buckets: what is stored (most calls are fast, so most
    /// rows are far shorter than `BUCKETS`).
    pub fn trimmed(&self) -> &[u64] {
        let end = self.0.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
        &self.0[..end]
    }
}

/// The `q`-quantile (0 < q ≤ 1) of stored counts, in milliseconds: the middle of the bucket
/// holding the ⌈q·n⌉-th smallest latency. `None` when nothing was counted.
pub fn quantile_ms(counts: &[i64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().map(|&c| c.max(0) as u64).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        seen += c.max(0) as u64;
        if seen >= rank {
            let (low, high) = bounds(i);
            return Some((low + high) as f64 / 2.0 / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator: the same cases every run, no extra dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// Latencies spread over every scale, as log-uniform as a shift makes them.
        fn latency(&mut self) -> u64 {
            let scale = self.next() % 27;
            self.next() % (1 << scale).max(1) + (1 << scale) / 2
        }
    }

    fn stored(h: &Histogram) -> Vec<i64> {
        h.trimmed().iter().map(|&c| c as i64).collect()
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        assert_eq!(bounds(0), (0, 1));
        for i in 1..BUCKETS {
            assert_eq!(bounds(i - 1).1, bounds(i).0, "bucket {i}");
        }
        assert_eq!(bounds(BUCKETS - 1).1, MAX_MICROS + 1);
    }

    #[test]
    fn every_value_falls_in_its_buckets_bounds() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let edges = (0..64).map(|s| 1u64 << s).flat_map(|v| [v.saturating_sub(1), v, v + 1]);
        for v in edges.chain((0..100_000).map(|_| rng.latency())) {
            let (low, high) = bounds(index(v));
            let clamped = v.min(MAX_MICROS);
            assert!(low <= clamped && clamped < high, "{v} in bucket {} = [{low}, {high})", index(v));
            // A bucket is at most an eighth of its lower bound wide.
            assert!((high - low) * 8 <= low.max(8), "[{low}, {high})");
        }
    }

    #[test]
    fn quantiles_are_within_a_sixteenth_of_the_exact_order_statistic() {
        let mut rng = XorShift(42);
        for case in 0..300 {
            let n = 1 + (rng.next() % 2_000) as usize;
            let mut values: Vec<u64> = (0..n).map(|_| rng.latency().max(16)).collect();
            let mut h = Histogram::default();
            for &v in &values {
                h.observe(Duration::from_micros(v));
            }
            values.sort_unstable();
            for q in [0.5, 0.9, 0.99, 1.0] {
                let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
                let exact = values[rank - 1].min(MAX_MICROS) as f64 / 1000.0;
                let got = quantile_ms(&stored(&h), q).unwrap();
                assert!((got - exact).abs() <= exact / 16.0 + 1e-9, "case {case}, q {q}: {got} ms against {exact} ms");
            }
        }
    }

    #[test]
    fn merged_histograms_answer_as_one_histogram_of_all_calls() {
        let mut rng = XorShift(7);
        for _ in 0..100 {
            let (mut a, mut b, mut all) = (Histogram::default(), Histogram::default(), Histogram::default());
            for _ in 0..(rng.next() % 500) {
                let v = Duration::from_micros(rng.latency());
                if rng.next() % 3 == 0 { a.observe(v) } else { b.observe(v) }
                all.observe(v);
            }
            // As the database adds stored arrays of different lengths.
            let (sa, sb) = (stored(&a), stored(&b));
            let merged: Vec<i64> = (0..sa.len().max(sb.len()))
                .map(|i| sa.get(i).copied().unwrap_or(0) + sb.get(i).copied().unwrap_or(0))
                .collect();
            assert_eq!(merged, stored(&all));
            a.add(&b);
            assert_eq!(a, all);
            for q in [0.5, 0.99] {
                assert_eq!(quantile_ms(&merged, q), quantile_ms(&stored(&all), q));
            }
        }
    }

    #[test]
    fn empty_and_extreme_inputs() {
        assert_eq!(quantile_ms(&[], 0.5), None);
        assert_eq!(quantile_ms(&[0, 0], 0.99), None);
        let mut h = Histogram::default();
        h.observe(Duration::from_secs(3600));
        assert_eq!(h.trimmed().len(), BUCKETS);
        h.observe(Duration::ZERO);
        assert_eq!(quantile_ms(&stored(&h), 0.5), Some(0.0005));
        assert!(quantile_ms(&stored(&h), 1.0).unwrap() > 120_000.0);
    }
}
