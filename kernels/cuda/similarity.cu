// Exact similarity search for hyprstream-kernels' CUDA backend (compiled at run time by NVRTC
// through cudarc). Three kernels:
//
//   score_rows   one query against every resident row: one warp per row, lanes stride over the
//                row's dims (coalesced loads), warp-shuffle reduction; the query in shared
//                memory. Memory-bound: one pass over the matrix.
//   score_batch  up to BN queries against every row in one pass: a tiled SGEMM (64 rows × 64
//                queries per block, 4×4 outputs per thread) that reads each row once per batch.
//   block_topk   per segment of SEGMENT scores, the k smallest (k rounds of a block-wide argmin),
//                so only k candidates per segment cross the bus instead of every score.
//
// Distances: rows are L2-normalised on upload when the metric is cosine, so cosine and dot
// need only q·x. l2 sums (q − x)² itself: the shortcut |q|² + |x|² − 2 q·x loses small distances
// to cancellation when rows lie far from the origin, and the CPU engine's distances are exact.
// One more subtraction per element costs nothing in these memory- or FMA-bound loops.
// Metric codes: 0 cosine, 1 dot, 2 l2. Rows that
// are deleted (live == 0) or filtered out (use_mask && mask == 0) score +inf and are never
// selected.

#define INF_F __int_as_float(0x7f800000)

#define METRIC_L2 2

#define FLOAT_MAX 3.402823466e+38f

// A distance that overflowed float32, pinned to float32's largest value of its sign as the CPU
// engine does (+inf marks excluded rows); NaN ranks farthest.
__device__ __forceinline__ float in_range(float d)
{
    return d != d ? FLOAT_MAX : fminf(fmaxf(d, -FLOAT_MAX), FLOAT_MAX);
}

// `sum` is q·x, or Σ(q − x)² for l2.
__device__ __forceinline__ float finish_distance(
    float sum, float q_sq, float x_sq, int metric, bool keep)
{
    if (!keep) {
        return INF_F;
    }
    if (metric == 0) {
        return (x_sq == 0.0f || q_sq == 0.0f) ? 1.0f : 1.0f - sum;
    }
    if (metric == 1) {
        return in_range(-sum);
    }
    return in_range(sum);
}

extern "C" __global__ void score_rows(
    const float* __restrict__ rows,
    const float* __restrict__ sq_norms,
    const unsigned char* __restrict__ live,
    const unsigned char* __restrict__ mask,
    const int use_mask,
    const float* __restrict__ query,
    const float query_sq_norm,
    const int metric,
    const int dim,
    const int n,
    float* __restrict__ out)
{
    extern __shared__ float q[];
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        q[i] = query[i];
    }
    __syncthreads();

    const int warps_per_block = blockDim.x / 32;
    const long long row = (long long)blockIdx.x * warps_per_block + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n) {
        return;
    }
    const bool keep = live[row] && (!use_mask || mask[row]);
    float sum = 0.0f;
    if (keep) {
        const float* x = rows + row * (long long)dim;
        if (metric == METRIC_L2) {
            for (int i = lane; i < dim; i += 32) {
                const float d = x[i] - q[i];
                sum = fmaf(d, d, sum);
            }
        } else {
            for (int i = lane; i < dim; i += 32) {
                sum = fmaf(x[i], q[i], sum);
            }
        }
    }
    // Every lane of the warp takes part in the shuffles (`keep` is the same for the whole warp).
    for (int offset = 16; offset > 0; offset /= 2) {
        sum += __shfl_down_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) {
        out[row] = finish_distance(sum, query_sq_norm, sq_norms[row], metric, keep);
    }
}

// Tiled SGEMM: out[q * n + row] = distance(queries[q], rows[row]). Block: 16 × 16 threads,
// a 64-row × 64-query tile, BK dims per step staged in shared memory.
#define BM 64
#define BN 64
#define BK 16

extern "C" __global__ void score_batch(
    const float* __restrict__ rows,
    const float* __restrict__ sq_norms,
    const unsigned char* __restrict__ live,
    const unsigned char* __restrict__ mask,
    const int use_mask,
    const float* __restrict__ queries,
    const float* __restrict__ query_sq_norms,
    const int n_queries,
    const int metric,
    const int dim,
    const int n,
    float* __restrict__ out)
{
    __shared__ float xs[BK][BM + 1];
    __shared__ float qs[BK][BN + 1];
    const int tx = threadIdx.x % 16;  // row micro-tile
    const int ty = threadIdx.x / 16;  // query micro-tile
    const long long row0 = (long long)blockIdx.x * BM;
    const int q0 = blockIdx.y * BN;

    float acc[4][4];
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) {
            acc[i][j] = 0.0f;
        }
    }

    for (int k0 = 0; k0 < dim; k0 += BK) {
        // 256 threads load 64 × 16 values of each operand: 4 each, dims fastest (coalesced).
        for (int l = threadIdx.x; l < BM * BK; l += blockDim.x) {
            const int r = l / BK;
            const int kk = l % BK;
            const long long row = row0 + r;
            const int d = k0 + kk;
            xs[kk][r] = (row < n && d < dim) ? rows[row * (long long)dim + d] : 0.0f;
            const int qi = q0 + r;
            qs[kk][r] = (qi < n_queries && d < dim) ? queries[(long long)qi * dim + d] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < BK; kk++) {
            float a[4];
            float b[4];
            for (int i = 0; i < 4; i++) {
                a[i] = xs[kk][tx + 16 * i];
                b[i] = qs[kk][ty + 16 * i];
            }
            if (metric == METRIC_L2) {
                // Padding dims are 0 in both operands: they add (0 − 0)² = 0.
                for (int i = 0; i < 4; i++) {
                    for (int j = 0; j < 4; j++) {
                        const float d = a[i] - b[j];
                        acc[i][j] = fmaf(d, d, acc[i][j]);
                    }
                }
            } else {
                for (int i = 0; i < 4; i++) {
                    for (int j = 0; j < 4; j++) {
                        acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
                    }
                }
            }
        }
        __syncthreads();
    }

    for (int i = 0; i < 4; i++) {
        const long long row = row0 + tx + 16 * i;
        if (row >= n) {
            continue;
        }
        const bool keep = live[row] && (!use_mask || mask[row]);
        const float x_sq = sq_norms[row];
        for (int j = 0; j < 4; j++) {
            const int qi = q0 + ty + 16 * j;
            if (qi < n_queries) {
                out[(long long)qi * n + row] =
                    finish_distance(acc[i][j], query_sq_norms[qi], x_sq, metric, keep);
            }
        }
    }
}

// Per segment of `segment` scores (blockIdx.x) of query blockIdx.y (score rows are `n` long):
// the k smallest finite scores and their row indices, nearest first; unused slots get
// index -1. k rounds: each thread takes the minimum of its strided slice (ties to the lower
// index, as the CPU engine's rule for equal distances), the block reduces to one winner,
// which is then masked out. Scores are read from global memory each round: a segment
// (16 KiB) stays in L1/L2, and k is small.
extern "C" __global__ void block_topk(
    const float* __restrict__ scores,
    const int n,
    const int segment,
    const int k,
    float* __restrict__ out_dist,
    int* __restrict__ out_index)
{
    __shared__ float warp_best[32];
    __shared__ int warp_index[32];
    __shared__ float last_dist;
    __shared__ int last_index;

    const float* s = scores + (long long)blockIdx.y * n;
    const int start = blockIdx.x * segment;
    const int end = min(start + segment, n);
    const long long out_base = ((long long)blockIdx.y * gridDim.x + blockIdx.x) * k;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warps = blockDim.x / 32;

    // (prev_d, prev_i) is the last selected candidate: candidates must come strictly after it
    // in (distance, index) order, so nothing is written back to the score buffer.
    float prev_d = -INF_F;
    int prev_i = -1;
    for (int round = 0; round < k; round++) {
        float best = INF_F;
        int best_i = -1;
        for (int i = start + threadIdx.x; i < end; i += blockDim.x) {
            const float d = s[i];
            const bool after = d > prev_d || (d == prev_d && i > prev_i);
            if (after && (d < best || (d == best && best_i >= 0 && i < best_i))) {
                if (d < INF_F) {
                    best = d;
                    best_i = i;
                }
            }
        }
        for (int offset = 16; offset > 0; offset /= 2) {
            const float od = __shfl_down_sync(0xffffffffu, best, offset);
            const int oi = __shfl_down_sync(0xffffffffu, best_i, offset);
            if (oi >= 0 && (best_i < 0 || od < best || (od == best && oi < best_i))) {
                best = od;
                best_i = oi;
            }
        }
        if (lane == 0) {
            warp_best[warp] = best;
            warp_index[warp] = best_i;
        }
        __syncthreads();
        if (warp == 0) {
            best = lane < warps ? warp_best[lane] : INF_F;
            best_i = lane < warps ? warp_index[lane] : -1;
            for (int offset = 16; offset > 0; offset /= 2) {
                const float od = __shfl_down_sync(0xffffffffu, best, offset);
                const int oi = __shfl_down_sync(0xffffffffu, best_i, offset);
                if (oi >= 0 && (best_i < 0 || od < best || (od == best && oi < best_i))) {
                    best = od;
                    best_i = oi;
                }
            }
            if (lane == 0) {
                out_dist[out_base + round] = best;
                out_index[out_base + round] = best_i;
                last_dist = best;
                last_index = best_i;
            }
        }
        __syncthreads();
        prev_d = last_dist;
        prev_i = last_index;
        if (prev_i < 0) {
            // Segment exhausted: the remaining slots say so.
            for (int r = round + 1 + threadIdx.x; r < k; r += blockDim.x) {
                out_index[out_base + r] = -1;
            }
            return;
        }
        __syncthreads();
    }
}
