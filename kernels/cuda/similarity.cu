// Exact similarity scores of one query against every resident row, for hyprstream-kernels'
// CUDA backend (compiled at run time by NVRTC through cudarc).
//
// One warp per row: lanes stride over the row's dims (coalesced 128-byte loads), then a warp
// shuffle reduction. The query sits in shared memory. Rows are L2-normalised on upload when
// the metric is cosine, so cosine and dot need only q·x; l2 uses |q|² + |x|² − 2 q·x.
// Metric codes: 0 cosine, 1 dot, 2 l2. Dead rows (deleted) score +inf.

extern "C" __global__ void score_rows(
    const float* __restrict__ rows,
    const float* __restrict__ sq_norms,
    const unsigned char* __restrict__ live,
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
    const float* x = rows + row * (long long)dim;
    float dot = 0.0f;
    for (int i = lane; i < dim; i += 32) {
        dot = fmaf(x[i], q[i], dot);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        dot += __shfl_down_sync(0xffffffffu, dot, offset);
    }
    if (lane == 0) {
        float d;
        if (!live[row]) {
            d = __int_as_float(0x7f800000);  // +inf
        } else if (metric == 0) {
            d = (sq_norms[row] == 0.0f || query_sq_norm == 0.0f) ? 1.0f : 1.0f - dot;
        } else if (metric == 1) {
            d = -dot;
        } else {
            d = fmaxf(query_sq_norm + sq_norms[row] - 2.0f * dot, 0.0f);
        }
        out[row] = d;
    }
}
