//! Latent-space quality, measured on k nearest neighbours in the latent space (Euclidean):
//! - `knn_label_accuracy`: how often a cell's label is the majority label of its k neighbours
//!   (leave-one-out), the separation of cell types;
//! - `knn_batch_mixing`: the mean entropy of the batch labels among a cell's k neighbours divided by
//!   the entropy of the global batch frequencies (1 = perfectly mixed, 0 = batches apart).
//!
//! Exact neighbours on a subsample of query cells against all cells: O(n_query * n * L).

use rayon::prelude::*;

/// The k nearest neighbours (excluding itself) of each query cell.
fn knn(z: &[f32], dim: usize, queries: &[usize], k: usize) -> Vec<Vec<usize>> {
    let n = z.len() / dim;
    queries
        .par_iter()
        .map(|&q| {
            let zq = &z[q * dim..(q + 1) * dim];
            let mut d: Vec<(f32, usize)> = (0..n)
                .filter(|&j| j != q)
                .map(|j| {
                    let zj = &z[j * dim..(j + 1) * dim];
                    (
                        zq.iter()
                            .zip(zj)
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum::<f32>(),
                        j,
                    )
                })
                .collect();
            let k = k.min(d.len());
            if k == 0 {
                return Vec::new();
            }
            d.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
            d[..k].iter().map(|p| p.1).collect()
        })
        .collect()
}

/// Evenly spaced query cells, at most `max_queries`.
fn queries(n: usize, max_queries: usize) -> Vec<usize> {
    let step = n.div_ceil(max_queries.max(1)).max(1);
    (0..n).step_by(step).collect()
}

pub fn knn_label_accuracy(
    z: &[f32],
    dim: usize,
    labels: &[u32],
    k: usize,
    max_queries: usize,
) -> f64 {
    let q = queries(labels.len(), max_queries);
    let nn = knn(z, dim, &q, k);
    let n_lab = labels.iter().max().map_or(1, |m| *m as usize + 1);
    let hits = q
        .iter()
        .zip(&nn)
        .filter(|(&c, nbrs)| {
            let mut votes = vec![0usize; n_lab];
            nbrs.iter().for_each(|&j| votes[labels[j] as usize] += 1);
            let best = votes
                .iter()
                .enumerate()
                .max_by_key(|(i, v)| (**v, usize::MAX - i))
                .map(|p| p.0);
            best == Some(labels[c] as usize)
        })
        .count();
    hits as f64 / q.len().max(1) as f64
}

fn entropy(counts: &[usize]) -> f64 {
    let total: usize = counts.iter().sum();
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total as f64;
            -p * p.ln()
        })
        .sum()
}

pub fn knn_batch_mixing(
    z: &[f32],
    dim: usize,
    batches: &[u32],
    k: usize,
    max_queries: usize,
) -> f64 {
    let n_b = batches.iter().max().map_or(1, |m| *m as usize + 1);
    let mut global = vec![0usize; n_b];
    batches.iter().for_each(|&b| global[b as usize] += 1);
    let h_global = entropy(&global);
    if h_global == 0.0 {
        return 1.0;
    }
    let q = queries(batches.len(), max_queries);
    let nn = knn(z, dim, &q, k);
    let mean: f64 = nn
        .iter()
        .map(|nbrs| {
            let mut c = vec![0usize; n_b];
            nbrs.iter().for_each(|&j| c[batches[j] as usize] += 1);
            entropy(&c)
        })
        .sum::<f64>()
        / q.len().max(1) as f64;
    mean / h_global
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separated_clusters_score_high_and_mixed_batches_score_high() {
        // Two tight clusters far apart; batches alternate within each.
        let mut z = Vec::new();
        let mut lab = Vec::new();
        let mut bat = Vec::new();
        for i in 0..200 {
            let c = (i % 2) as f32 * 100.0;
            z.extend([c + (i as f32 * 0.37).sin(), c + (i as f32 * 0.11).cos()]);
            lab.push((i % 2) as u32);
            bat.push(((i / 2) % 2) as u32);
        }
        assert!(knn_label_accuracy(&z, 2, &lab, 15, 100) > 0.99);
        assert!(knn_batch_mixing(&z, 2, &bat, 15, 100) > 0.8);
        // Batches that coincide with clusters are not mixed.
        assert!(knn_batch_mixing(&z, 2, &lab, 15, 100) < 0.1);
    }
}
