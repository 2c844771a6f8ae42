//! `make gpu-check`: the one command to run on a machine with an NVIDIA GPU.
//!
//! 1. Correctness: GPU top-k equals the CPU engine's on fresh random data, every metric,
//!    after appends, an in-place update, deletes and a compaction; l2 far from the origin.
//! 2. Speed: 1M × 768 single-query and 64-query latency, against the memory-bandwidth floor
//!    (bytes read ÷ the device's measured copy bandwidth).
//! Prints a report; exits non-zero if results differ. Without a GPU it says why and exits 2.
use std::time::Instant;

use hyprstream_kernels::cuda::{measure_copy_bandwidth, unavailable_reason, GpuIndex};
use hyprstream_kernels::{FlatIndex, Metric, Neighbor, RowFilter};

/// Deterministic pseudo-random floats in [-1, 1) (xorshift; no extra dependency).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// GPU and CPU top-k agree: same length, distances within 1e-4 relative (float32 sums in a
/// different order), and no deleted or filtered row.
fn compare(what: &str, g: &[Neighbor], c: &[Neighbor], banned: &[u64]) -> Result<(), String> {
    if g.len() != c.len() {
        return Err(format!("{what}: {} GPU hits vs {} CPU", g.len(), c.len()));
    }
    for (a, b) in g.iter().zip(c) {
        let tol = 1e-4 * b.distance.abs().max(1.0);
        if (a.distance - b.distance).abs() > tol {
            return Err(format!("{what}: distance {} (GPU) vs {} (CPU)", a.distance, b.distance));
        }
    }
    if let Some(h) = g.iter().find(|h| banned.contains(&h.id)) {
        return Err(format!("{what}: row {} should not come back", h.id));
    }
    Ok(())
}

fn check_equal(metric: Metric, rows: usize, dim: usize, seed: u64) -> Result<(), String> {
    let data = random(rows * dim, seed);
    let ids: Vec<u64> = (0..rows as u64).collect();
    let mut gpu = GpuIndex::new(0, dim, metric, rows / 3).map_err(|e| e.to_string())?;
    // Three appends (the second forces the device buffers to grow).
    let third = rows / 3;
    for (a, b) in [(0, third), (third, 2 * third), (2 * third, rows)] {
        gpu.append(&ids[a..b], &data[a * dim..b * dim]).map_err(|e| e.to_string())?;
    }
    let mut cpu = FlatIndex::new(dim, metric);
    let mut cpu_data = data.clone();
    // Update row 5 in place, delete rows 7 and 11.
    let replacement = random(dim, seed + 99);
    gpu.update(5, &replacement).map_err(|e| e.to_string())?;
    cpu_data[5 * dim..6 * dim].copy_from_slice(&replacement);
    gpu.remove(7).map_err(|e| e.to_string())?;
    gpu.remove(11).map_err(|e| e.to_string())?;
    cpu.insert_segment(0, ids.clone(), cpu_data, None);
    let keep: Vec<u64> = ids.iter().copied().filter(|&i| i != 7 && i != 11).collect();
    cpu.retain_in_segment(0, &keep);
    let deleted = [7u64, 11];

    // Single queries (score_rows + block_topk), k below and above the device-selection limit.
    for (qi, k) in [(0u64, 10usize), (1, 10), (2, 1), (3, 100), (4, 300)] {
        let q = if qi == 0 { replacement.clone() } else { random(dim, seed + 1000 + qi) };
        let g = gpu.search(&q, k).map_err(|e| e.to_string())?;
        compare(&format!("{metric:?} single k={k}"), &g, &cpu.search(&q, k, None), &deleted)?;
        if qi == 0 && g[0].id != 5 {
            return Err(format!("{metric:?}: the updated row should be its own nearest, got {}", g[0].id));
        }
    }
    // A batch of 70 queries (two score_batch passes: 64 + 6).
    let queries = random(70 * dim, seed + 2000);
    let g = gpu.search_batch(&queries, 10, None).map_err(|e| e.to_string())?;
    let c = cpu.search_batch(&queries, 10, None);
    for (i, (g, c)) in g.iter().zip(&c).enumerate() {
        compare(&format!("{metric:?} batch query {i}"), g, c, &deleted)?;
    }
    // A prefilter: every third row allowed (slots are in append order, equal to ids here).
    let allowed: Vec<u64> = ids.iter().copied().filter(|i| i % 3 == 0).collect();
    let mask: Vec<u8> = ids.iter().map(|i| u8::from(i % 3 == 0)).collect();
    let filter = RowFilter::new(allowed);
    let banned: Vec<u64> = ids.iter().copied().filter(|i| i % 3 != 0).chain(deleted).collect();
    let g = gpu.search_batch(&queries[..dim], 10, Some(&mask)).map_err(|e| e.to_string())?;
    compare(&format!("{metric:?} masked single"), &g[0], &cpu.search(&queries[..dim], 10, Some(&filter)), &banned)?;
    let g = gpu.search_batch(&queries[..8 * dim], 10, Some(&mask)).map_err(|e| e.to_string())?;
    let c = cpu.search_batch(&queries[..8 * dim], 10, Some(&filter));
    for (i, (g, c)) in g.iter().zip(&c).enumerate() {
        compare(&format!("{metric:?} masked batch query {i}"), g, c, &banned)?;
    }
    // k beyond the row count returns every live row.
    let g = gpu.search(&queries[..dim], rows + 5).map_err(|e| e.to_string())?;
    if g.len() != rows - 2 {
        return Err(format!("{metric:?}: k > rows gave {} hits, want {}", g.len(), rows - 2));
    }
    // Delete two rows in three, then move the live rows together (slots renumbered).
    let gone: Vec<usize> = (0..rows).filter(|i| i % 3 != 0).collect();
    gpu.remove_many(&gone).map_err(|e| e.to_string())?;
    gpu.compact().map_err(|e| e.to_string())?;
    let keep: Vec<u64> = ids.iter().copied().filter(|i| i % 3 == 0).collect();
    cpu.retain_in_segment(0, &keep);
    if gpu.dead() != 0 || gpu.len() != keep.len() || gpu.ids() != keep.as_slice() {
        return Err(format!("{metric:?}: after compaction {} live, {} dead; want {} live, 0 dead", gpu.len(), gpu.dead(), keep.len()));
    }
    let g = gpu.search_batch(&queries[..8 * dim], 10, None).map_err(|e| e.to_string())?;
    let c = cpu.search_batch(&queries[..8 * dim], 10, None);
    for (i, (g, c)) in g.iter().zip(&c).enumerate() {
        compare(&format!("{metric:?} compacted batch query {i}"), g, c, &banned)?;
        compare(&format!("{metric:?} compacted single query {i}"), &gpu.search(&queries[i * dim..(i + 1) * dim], 10).map_err(|e| e.to_string())?, c, &banned)?;
    }
    Ok(())
}

/// l2 rows clustered far from the origin (1000 ± 0.01 per dim): distances are tiny beside
/// |q|² + |x|², where the shortcut |q|² + |x|² − 2q·x cancels. GPU single and batched searches
/// must give the CPU engine's exact distances, and a stored row must be its own nearest.
fn check_far_l2(rows: usize, dim: usize, seed: u64) -> Result<(), String> {
    let data: Vec<f32> = random(rows * dim, seed).into_iter().map(|v| 1000.0 + 0.01 * v).collect();
    let ids: Vec<u64> = (0..rows as u64).collect();
    let mut gpu = GpuIndex::new(0, dim, Metric::L2, rows).map_err(|e| e.to_string())?;
    gpu.append(&ids, &data).map_err(|e| e.to_string())?;
    let mut cpu = FlatIndex::new(dim, Metric::L2);
    cpu.insert_segment(0, ids, data.clone(), None);
    let queries = &data[..8 * dim];
    let batch = gpu.search_batch(queries, 10, None).map_err(|e| e.to_string())?;
    for (i, q) in queries.chunks(dim).enumerate() {
        let c = cpu.search(q, 10, None);
        compare(&format!("far l2 single query {i}"), &gpu.search(q, 10).map_err(|e| e.to_string())?, &c, &[])?;
        compare(&format!("far l2 batch query {i}"), &batch[i], &c, &[])?;
        if batch[i].first().map(|h| h.id) != Some(i as u64) {
            return Err(format!("far l2 batch query {i}: row {i} should be its own nearest, got {:?}", batch[i].first()));
        }
    }
    Ok(())
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    if let Some(reason) = unavailable_reason() {
        eprintln!("gpu-check: no GPU here ({reason}); the CPU backend serves searches");
        std::process::exit(2);
    }
    let mut failed = false;
    for metric in [Metric::Cosine, Metric::Dot, Metric::L2] {
        match check_equal(metric, 30_000, 768, 42) {
            Ok(()) => println!("correctness {metric:?}: GPU == CPU (appends, update, deletes; single, batch, masked, k 1..300, k > rows; compacted)"),
            Err(e) => {
                println!("correctness {metric:?}: FAILED: {e}");
                failed = true;
            }
        }
    }

    match check_far_l2(20_000, 768, 43) {
        Ok(()) => println!("correctness L2 far from the origin: GPU == CPU (single, batch)"),
        Err(e) => {
            println!("correctness L2 far from the origin: FAILED: {e}");
            failed = true;
        }
    }

    let (rows, dim) = (1_000_000usize, 768usize);
    let data = random(rows * dim, 7);
    let ids: Vec<u64> = (0..rows as u64).collect();
    let mut gpu = GpuIndex::new(0, dim, Metric::Cosine, rows).expect("GPU index");
    let t = Instant::now();
    gpu.append(&ids, &data).expect("upload");
    println!("upload {rows} × {dim}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    drop(data);

    let queries = random(64 * dim, 8);
    let mut single = Vec::new();
    for q in queries.chunks(dim).take(3) {
        gpu.search(q, 10).expect("warm-up");
    }
    for q in queries.chunks(dim) {
        let t = Instant::now();
        gpu.search(q, 10).expect("search");
        single.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    for q in queries.chunks(dim) {
        gpu.search(q, 10).expect("search");
    }
    let looped_ms = t.elapsed().as_secs_f64() * 1e3;
    gpu.search_batch(&queries, 10, None).expect("warm-up batch");
    let mut batch = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        gpu.search_batch(&queries, 10, None).expect("batch");
        batch.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let batch_ms = percentile(batch, 0.5);
    let bytes = (rows * dim * 4) as f64;
    let bandwidth = measure_copy_bandwidth(0, 1 << 30).expect("bandwidth");
    let floor_ms = bytes / bandwidth * 1e3;
    let p50 = percentile(single.clone(), 0.5);
    println!("device copy bandwidth: {:.0} GB/s; floor for one pass over {:.2} GB: {:.3} ms", bandwidth / 1e9, bytes / 1e9, floor_ms);
    println!("single query 1M × 768: p50 {:.3} ms ({:.2}× the floor), p99 {:.3} ms", p50, p50 / floor_ms, percentile(single, 0.99));
    println!("64 single queries in a loop: {:.2} ms, {:.0} QPS", looped_ms, 64.0 / (looped_ms / 1e3));
    println!(
        "batch of 64 (one SGEMM pass): p50 {:.2} ms, {:.0} QPS, {:.3} ms/query ({:.2}× the one-pass floor for the batch; {:.1} TFLOP/s)",
        batch_ms,
        64.0 / (batch_ms / 1e3),
        batch_ms / 64.0,
        batch_ms / floor_ms,
        2.0 * (rows * dim * 64) as f64 / (batch_ms / 1e3) / 1e12
    );
    println!("memory: {:.2} GB on device", gpu.memory_bytes() as f64 / 1e9);
    if failed {
        std::process::exit(1);
    }
}
