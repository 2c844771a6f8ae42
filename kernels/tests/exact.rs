//! Exact search against a float64 brute-force reference on fresh random data.
use hyprstream_kernels::{search_block, Metric, PreparedQuery, TopK};
use rand::Rng;

fn reference(metric: Metric, q: &[f32], rows: &[f32], dim: usize) -> Vec<f64> {
    rows.chunks_exact(dim)
        .map(|x| {
            let qx: f64 = q.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
            match metric {
                Metric::Dot => -qx,
                Metric::L2 => q.iter().zip(x).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum(),
                Metric::Cosine => {
                    let qq: f64 = q.iter().map(|a| (*a as f64).powi(2)).sum();
                    let xx: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
                    if qq == 0.0 || xx == 0.0 { 1.0 } else { 1.0 - qx / (qq.sqrt() * xx.sqrt()) }
                }
            }
        })
        .collect()
}

fn check(metric: Metric, n: usize, dim: usize, k: usize, masked: bool) {
    let mut rng = rand::rng();
    let rows: Vec<f32> = (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let q: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let valid: Vec<bool> = (0..n).map(|i| !masked || i % 3 != 0).collect();
    let query = PreparedQuery::new(metric, q.clone());
    let mut top = TopK::new(k);
    let mut scratch = Vec::new();
    // Two blocks, to exercise merging across blocks.
    let split = n / 2;
    search_block(&query, &rows[..split * dim], Some(&valid[..split]), None, 0, &mut scratch, &mut top);
    search_block(&query, &rows[split * dim..], Some(&valid[split..]), None, split as u64, &mut scratch, &mut top);
    let got = top.into_sorted();

    let dist = reference(metric, &q, &rows, dim);
    let mut expected: Vec<(f64, u64)> =
        (0..n).filter(|&i| valid[i]).map(|i| (dist[i], i as u64)).collect();
    expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    expected.truncate(k);
    assert_eq!(got.len(), expected.len(), "{metric:?}: result count");
    for (g, (d, id)) in got.iter().zip(&expected) {
        let tol = 1e-5 * d.abs().max(1.0);
        assert!((g.distance as f64 - d).abs() <= tol, "{metric:?}: distance {} vs {d}", g.distance);
        // Ties within tolerance may swap ids; otherwise ids must agree.
        if g.id != *id {
            assert!((dist[g.id as usize] - d).abs() <= tol, "{metric:?}: id {} vs {id}", g.id);
        }
    }
}

#[test]
fn every_metric_matches_float64_reference() {
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
        check(metric, 5000, 384, 10, false);
        check(metric, 3001, 37, 7, true); // odd dim: exercises the remainder lanes
    }
}

#[test]
fn k_larger_than_rows_returns_every_valid_row() {
    check(Metric::L2, 20, 16, 100, true);
}

#[test]
fn empty_input_returns_nothing() {
    let query = PreparedQuery::new(Metric::Cosine, vec![1.0; 8]);
    let mut top = TopK::new(5);
    search_block(&query, &[], None, None, 0, &mut Vec::new(), &mut top);
    assert!(top.into_sorted().is_empty());
}

#[test]
fn large_blocks_use_threads_and_agree() {
    check(Metric::Cosine, 70_000, 64, 10, true);
}

#[test]
fn zero_vectors_have_cosine_distance_one() {
    let query = PreparedQuery::new(Metric::Cosine, vec![1.0, 0.0]);
    assert_eq!(query.distance(&[0.0, 0.0]), 1.0);
    assert!((query.distance(&[2.0, 0.0])).abs() < 1e-7);
}

mod flat_index {
    use super::reference;
    use hyprstream_kernels::{FlatIndex, Metric, RowFilter};
    use rand::Rng;

    fn data(n: usize, dim: usize) -> Vec<f32> {
        let mut rng = rand::rng();
        (0..n * dim).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Two segments (ids as fragment << 32 | offset), some rows deleted, a filter: one that
    /// admits most rows (a masked pass over all rows) or, `sparse`, under an eighth of them
    /// (the admitted rows visited by id), listing deleted rows and ids of no row as well.
    fn check(metric: Metric, dim: usize, k: usize, batch: bool, sparse: bool) {
        let (n1, n2) = (1500, 900);
        let (a, b) = (data(n1, dim), data(n2, dim));
        let ids_a: Vec<u64> = (0..n1 as u64).collect();
        let ids_b: Vec<u64> = (0..n2 as u64).map(|i| (7 << 32) | i).collect();
        let mut index = FlatIndex::new(dim, metric);
        index.insert_segment(0, ids_a.clone(), a.clone(), None);
        index.insert_segment(7, ids_b.clone(), b.clone(), None);
        // Delete every 5th row of segment 7.
        let keep: Vec<u64> = ids_b.iter().copied().enumerate().filter(|(i, _)| i % 5 != 0).map(|(_, id)| id).collect();
        index.retain_in_segment(7, &keep);
        assert_eq!(index.len(), n1 + keep.len());
        let admits = |id: u64| if sparse { id % 11 == 4 } else { id % 3 != 1 };
        let strangers = [5_000, (7 << 32) | 5_000, 9 << 32];
        let filter = RowFilter::new(ids_a.iter().chain(&ids_b).copied().filter(|id| admits(*id)).chain(strangers).collect());

        let queries = data(4, dim);
        let got: Vec<_> = if batch {
            index.search_batch(&queries, k, Some(&filter))
        } else {
            queries.chunks(dim).map(|q| index.search(q, k, Some(&filter))).collect()
        };
        for (qi, q) in queries.chunks(dim).enumerate() {
            let mut all: Vec<(f64, u64)> = reference(metric, q, &a, dim).into_iter().zip(ids_a.iter().copied()).collect();
            all.extend(reference(metric, q, &b, dim).into_iter().zip(ids_b.iter().copied()));
            let mut expected: Vec<(f64, u64)> =
                all.into_iter().filter(|(_, id)| admits(*id) && (id >> 32 != 7 || (id & 0xffff_ffff) % 5 != 0)).collect();
            expected.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            expected.truncate(k);
            assert_eq!(got[qi].len(), expected.len());
            for (g, (d, id)) in got[qi].iter().zip(&expected) {
                let tol = 1e-4 * d.abs().max(1.0);
                assert!((g.distance as f64 - d).abs() <= tol, "{metric:?} batch={batch}: {} vs {d}", g.distance);
                let _ = id;
            }
        }
    }

    #[test]
    fn single_and_batched_search_match_reference_with_deletes_and_filters() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            for sparse in [false, true] {
                check(metric, 48, 10, false, sparse);
                check(metric, 48, 10, true, sparse);
                check(metric, 13, 3000, false, sparse); // k beyond the row count
                check(metric, 13, 3000, true, sparse);
            }
        }
    }

    /// l2 rows far from the origin, close to each other (a cluster centred at 1000): the
    /// distances are tiny beside |q|² + |x|², where the batched path's SGEMM form cancels.
    /// Batched and single searches must give the same rows and distances, and both the float64
    /// reference's to 1e-5 relative.
    #[test]
    fn batched_l2_keeps_small_distances_far_from_the_origin() {
        let (n, dim, k) = (3000, 32, 10);
        let mut rng = rand::rng();
        let rows: Vec<f32> = (0..n * dim).map(|_| 1000.0 + rng.random_range(-0.01..0.01)).collect();
        let mut index = FlatIndex::new(dim, Metric::L2);
        index.insert_segment(0, (0..n as u64).collect(), rows.clone(), None);
        // Queries: stored rows themselves (distance 0) and rows nudged by 1e-3.
        let mut queries: Vec<f32> = rows[..4 * dim].to_vec();
        queries.extend(rows[100 * dim..104 * dim].iter().map(|x| x + rng.random_range(-1e-3..1e-3)));
        let batched = index.search_batch(&queries, k, None);
        for (qi, q) in queries.chunks(dim).enumerate() {
            let single = index.search(q, k, None);
            assert_eq!(batched[qi], single, "query {qi}: batched and single searches differ");
            let dist = reference(Metric::L2, q, &rows, dim);
            let mut expected: Vec<(f64, u64)> = dist.iter().copied().zip(0..n as u64).collect();
            expected.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            for (g, (d, id)) in single.iter().zip(&expected) {
                assert!((g.distance as f64 - d).abs() <= 1e-5 * d + 1e-12, "query {qi}: row {} at {} vs row {id} at {d}", g.id, g.distance);
            }
            if qi < 4 {
                assert_eq!(single[0].id, qi as u64, "a stored row is its own nearest");
            }
        }
    }

    /// Distances past float32's range (dot and l2 over values near 1e19) still rank, pinned to
    /// ±f32::MAX, the same on every path: none is dropped as if excluded, none is ±∞ or NaN.
    #[test]
    fn overflowing_distances_rank_the_same_on_every_path() {
        use hyprstream_kernels::{search_block, PreparedQuery, TopK};
        let dim = 4;
        let rows: Vec<f32> = [[4e19, 0.0, 0.0, 0.0], [5e19, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [-3e38, 3e38, 0.0, 0.0]].concat();
        let query = [5e19f32, 0.0, 0.0, 0.0];
        for metric in [Metric::Dot, Metric::L2] {
            let mut index = FlatIndex::new(dim, metric);
            index.insert_segment(0, (0..4).collect(), rows.clone(), None);
            let single = index.search(&query, 4, None);
            let batched = index.search_batch(&query, 4, None).remove(0);
            let mut top = TopK::new(4);
            search_block(&PreparedQuery::new(metric, query.to_vec()), &rows, None, None, 0, &mut Vec::new(), &mut top);
            let scanned = top.into_sorted();
            assert_eq!(single.len(), 4, "{metric:?}: every row ranks");
            assert!(single.iter().all(|n| n.distance.is_finite()), "{metric:?}: {single:?}");
            assert_eq!(batched, single, "{metric:?}: batched");
            assert_eq!(scanned, single, "{metric:?}: scan");
            let got: Vec<(f32, u64)> = single.iter().map(|n| (n.distance, n.id)).collect();
            // dot: both huge rows pass −f32::MAX (ties go to the smaller id); the last row's
            // product is −∞, so its distance is pinned to f32::MAX. l2: row 1 is the query
            // itself, row 0 is 1e19 away (1e38 squared, in range), the others are past range.
            let want = match metric {
                Metric::Dot => vec![(-f32::MAX, 0), (-f32::MAX, 1), (-5e19, 2), (f32::MAX, 3)],
                _ => vec![(0.0, 1), ((4e19f32 - 5e19f32).powi(2), 0), (f32::MAX, 2), (f32::MAX, 3)],
            };
            assert_eq!(got, want, "{metric:?} ranking");
        }
    }

    #[test]
    fn rerank_scores_only_the_candidates_like_a_filtered_search() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let dim = 24;
            let mut index = FlatIndex::new(dim, metric);
            let ids_a: Vec<u64> = (0..800).collect();
            let ids_b: Vec<u64> = (0..500u64).map(|i| (3 << 32) | i).collect();
            index.insert_segment(0, ids_a.clone(), data(800, dim), None);
            index.insert_segment(3, ids_b.clone(), data(500, dim), None);
            index.retain_in_segment(3, &ids_b[1..]);
            // Ids with gaps (a fragment after deletions): found by search, not by offset.
            let ids_c: Vec<u64> = (0..400u64).filter(|i| i % 3 != 0).map(|i| (5 << 32) | i).collect();
            index.insert_segment(5, ids_c.clone(), data(ids_c.len(), dim), None);
            let candidates: Vec<u64> = ids_a.iter().chain(&ids_b[1..]).chain(&ids_c).copied().filter(|id| id % 7 == 2).collect();
            let q = data(1, dim);
            let reranked = index.rerank(&q, &candidates, 10).expect("every candidate is a live row");
            let filtered = index.search(&q, 10, Some(&RowFilter::new(candidates.clone())));
            let pairs = |hits: &[hyprstream_kernels::Neighbor]| hits.iter().map(|h| (h.id, h.distance.to_bits())).collect::<Vec<_>>();
            assert_eq!(pairs(&reranked), pairs(&filtered), "{metric:?}");
            assert_eq!(index.rerank(&q, &candidates, 1000).unwrap().len(), candidates.len());
            // Not a row here, or a deleted one: no answer rather than a short one.
            assert!(index.rerank(&q, &[candidates[0], 5_000], 10).is_none());
            assert!(index.rerank(&q, &[ids_b[0]], 10).is_none());
            assert!(index.rerank(&q, &[(5 << 32) | 3], 10).is_none());
        }
    }

    #[test]
    fn a_search_of_some_segments_equals_a_search_filtered_to_their_rows() {
        for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
            let dim = 20;
            let mut index = FlatIndex::new(dim, metric);
            let ids = |segment: u64, n: u64| (0..n).map(move |i| (segment << 32) | i).collect::<Vec<u64>>();
            index.insert_segment(0, ids(0, 900), data(900, dim), None);
            index.insert_segment(2, ids(2, 300), data(300, dim), None);
            index.insert_segment(4, ids(4, 200), data(200, dim), None);
            index.retain_in_segment(4, &ids(4, 200)[5..]);
            let q = data(1, dim);
            let rows: Vec<u64> = ids(2, 300).into_iter().chain(ids(4, 200).into_iter().skip(5)).collect();
            let pairs = |hits: &[hyprstream_kernels::Neighbor]| hits.iter().map(|h| (h.id, h.distance.to_bits())).collect::<Vec<_>>();
            for k in [1, 10, 600] {
                let some = index.search_segments(&q, k, &[2, 4]);
                assert_eq!(pairs(&some), pairs(&index.search(&q, k, Some(&RowFilter::new(rows.clone())))), "{metric:?} k={k}");
                assert_eq!(some.len(), k.min(495));
            }
            assert!(index.search_segments(&q, 10, &[7]).is_empty());
        }
    }

    #[test]
    fn removed_segments_are_gone() {
        let mut index = FlatIndex::new(2, Metric::L2);
        index.insert_segment(1, vec![1 << 32], vec![0.0, 0.0], None);
        index.insert_segment(2, vec![2 << 32, (2 << 32) + 1], vec![5.0, 5.0, 1.0, 1.0], Some(vec![true, false]));
        assert_eq!(index.len(), 2);
        index.remove_segment(1);
        let hits = index.search(&[0.0, 0.0], 5, None);
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![2 << 32]);
    }
}
