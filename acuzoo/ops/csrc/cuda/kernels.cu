// CUDA kernels of the ACU: launch and reduction code around the shared arithmetic of
// common/math.h. Inputs in half/bfloat16/float/double; taps, positions and every sum in the
// op-math type (float for the 16-bit types). No float atomics: the input gradient is a
// gather (each input element summed by one thread) and the weight/position gradients are
// per-block partial sums, tree-reduced in a fixed order, then reduced across blocks in a
// fixed order (reduce_rows): two runs give bitwise the same gradients.
// Only c10's CUDA headers are included (not ATen/cuda/CUDAContext.h, which pulls in the
// cuBLAS/cuSPARSE headers that a bare toolkit may lack).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <sstream>

#include "../common/columns.h"
#include "../common/depthwise.h"
#include "../common/driver.h"
#include "../common/math.h"

namespace acu {
namespace {

constexpr int kThreads = 256;        // power of two: the block reductions halve it
constexpr int64_t kChunk = 8192;     // output elements per block in the depthwise param grads
constexpr int64_t kColumnsBytes = int64_t(256) << 20;  // cap on one chunk's bilinear columns
// A depthwise block keeps its channel's table (~36 ints per synapse) in shared memory, whose
// default limit is 48 KiB: cuda.depthwise serves layers up to this many synapses, and says
// so through the op cuda_depthwise_max_synapses.
constexpr int64_t kMaxDepthwiseSynapses = 300;

inline int blocks_for(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 22));
}

// Sums vals[i] over the block into shared[i * kThreads], in a fixed tree order.
template <typename A, int N>
__device__ __forceinline__ void block_sum(A (&vals)[N], A* shared) {
  const int tid = threadIdx.x;
#pragma unroll
  for (int i = 0; i < N; ++i) shared[i * kThreads + tid] = vals[i];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (tid < s) {
#pragma unroll
      for (int i = 0; i < N; ++i) shared[i * kThreads + tid] += shared[i * kThreads + tid + s];
    }
    __syncthreads();
  }
}

inline Dims dims_of(const Geometry& g) {
  return {g.c_in, g.height, g.width, g.out_h, g.out_w, g.synapses,
          static_cast<int>(g.stride_h), static_cast<int>(g.stride_w), g.c_out / g.sets};
}

inline Units units_of(const Geometry& g) {
  return {g.units, g.units / g.groups, g.units / g.sets, g.c_per_group, g.c_per_group * g.synapses, g.batch};
}

#define ACU_GRID_STRIDE(idx, total)                                                        \
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < (total); \
       idx += int64_t(gridDim.x) * blockDim.x)

// ---- depthwise ---------------------------------------------------------------------
// One thread per channel builds the channel's sparse table (common/math.h); the forward,
// input-gradient and cell-dot kernels then work inside one channel per block, with the
// table's lists in shared memory. Indices inside a plane are 32-bit (a GPU's 64-bit
// division costs several times a 32-bit one).

template <typename S, typename A>
__global__ void build_tables_kernel(const A* __restrict__ pos, const S* __restrict__ w, int* __restrict__ ints,
                                    A* __restrict__ vals, int64_t channels, int64_t per_set, TableLayout t) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  short map[kMapSize];
  build_channel_table<A, S>(pos, c / per_set, w + c * t.K, t, ints + c * t.ints(), vals + c * t.values(), map);
}

// Planes cut into tiles of at most `tile` elements; block b works on tile b % tiles of
// plane b / tiles.
struct PlaneTiles {
  int tiles;
  int tile;
};

inline PlaneTiles plane_tiles(int64_t elements) {
  const int tile = static_cast<int>(std::min<int64_t>(std::max<int64_t>(elements, 1), 2048));
  return {static_cast<int>((elements + tile - 1) / tile), tile};
}

// Small planes get small blocks (a 7x7 plane keeps 64 threads busy, not 256).
inline int plane_threads(const PlaneTiles& t) { return std::min(kThreads, std::max(32, (t.tile + 31) / 32 * 32)); }

// Shared copy of a channel's table: the first n_ints ints and n_vals values.
template <typename A>
__device__ __forceinline__ void load_table(const int* __restrict__ ints, const A* __restrict__ vals, int n_ints,
                                           int n_vals, int* s_ints, A* s_vals) {
  for (int e = threadIdx.x; e < n_ints; e += blockDim.x) s_ints[e] = ints[e];
  for (int e = threadIdx.x; e < n_vals; e += blockDim.x) s_vals[e] = vals[e];
  __syncthreads();
}

// Shared memory of the tap kernels: tap lists (ints up to tap_dc's end) and tap weights.
template <typename A>
size_t tap_smem_bytes(const TableLayout& t) {
  return static_cast<size_t>(t.cell_dr()) * sizeof(int) + static_cast<size_t>(t.cap) * sizeof(A) + 16;
}

template <typename A>
__device__ __forceinline__ A* after_ints(unsigned char* smem, int n_ints) {
  const size_t offset = (static_cast<size_t>(n_ints) * sizeof(int) + 15) / 16 * 16;
  return reinterpret_cast<A*>(smem + offset);
}

template <typename S, typename A>
__global__ void dw_forward_kernel(const S* __restrict__ x, const int* __restrict__ ints, const A* __restrict__ vals,
                                  const S* __restrict__ bias, S* __restrict__ out, Dims d, TableLayout t,
                                  PlaneTiles pt) {
  extern __shared__ __align__(16) unsigned char dw_smem[];
  int* s_ints = reinterpret_cast<int*>(dw_smem);
  A* s_vals = after_ints<A>(dw_smem, t.cell_dr());
  const int64_t plane = blockIdx.x / pt.tiles;
  const int tile = static_cast<int>(blockIdx.x - plane * pt.tiles);
  const int64_t c = plane % d.C;
  load_table<A>(ints + c * t.ints(), vals + c * t.values(), t.cell_dr(), t.cap, s_ints, s_vals);
  const int h = static_cast<int>(d.H), w = static_cast<int>(d.W);
  const int wo = static_cast<int>(d.Wo), pixels = static_cast<int>(d.Ho * d.Wo);
  const int start = tile * pt.tile, stop = min(start + pt.tile, pixels);
  const S* xp = x + plane * d.H * d.W;
  S* op = out + plane * pixels;
  const A b = bias ? static_cast<A>(bias[c]) : A(0);
  const int n = s_ints[0];
  for (int pix = start + threadIdx.x; pix < stop; pix += blockDim.x) {
    const int m = pix / wo, j = pix - m * wo;
    const int r0 = m * d.sh, c0 = j * d.sw;
    const bool inside = box_inside(s_ints + 2, r0, c0, h, w);
    op[pix] = static_cast<S>(b + sparse_forward_at<A>(xp, h, w, r0, c0, s_ints + t.tap_dr(), s_ints + t.tap_dc(),
                                                      s_vals + t.tap_w(), n, inside));
  }
}

// One thread per sh x sw patch of input pixels, walking the stride classes in step.
template <int ST, typename S, typename A>
__global__ void dw_grad_input_kernel(const S* __restrict__ go, const int* __restrict__ ints,
                                     const A* __restrict__ vals, S* __restrict__ gx, Dims d, TableLayout t,
                                     PlaneTiles pt) {
  extern __shared__ __align__(16) unsigned char dw_smem[];
  int* s_ints = reinterpret_cast<int*>(dw_smem);
  A* s_vals = after_ints<A>(dw_smem, t.cell_dr());
  const int64_t plane = blockIdx.x / pt.tiles;
  const int tile = static_cast<int>(blockIdx.x - plane * pt.tiles);
  load_table<A>(ints + (plane % d.C) * t.ints(), vals + (plane % d.C) * t.values(), t.cell_dr(), t.cap, s_ints,
                s_vals);
  const int sh = ST > 0 ? ST : d.sh, sw = ST > 0 ? ST : d.sw;
  const int h = static_cast<int>(d.H), w = static_cast<int>(d.W);
  const int ho = static_cast<int>(d.Ho), wo = static_cast<int>(d.Wo);
  const int rows = (h + sh - 1) / sh, cols = (w + sw - 1) / sw;
  const int start = tile * pt.tile, stop = min(start + pt.tile, rows * cols);
  const S* gp = go + plane * d.Ho * d.Wo;
  S* xp = gx + plane * d.H * d.W;
  const int n = s_ints[0];
  for (int q = start + threadIdx.x; q < stop; q += blockDim.x) {
    const int R = q / cols, C = q - R * cols;
    for (int pr = 0; pr < sh; ++pr) {
      for (int pc = 0; pc < sw; ++pc) {
        const int r = R * sh + pr, c = C * sw + pc;
        if (r >= h || c >= w) continue;
        xp[static_cast<int64_t>(r) * w + c] = static_cast<S>(sparse_gather_at<ST, A>(
            gp, ho, wo, sh, sw, R, C, pr, pc, s_ints + t.tap_dr(), s_ints + t.tap_dc(), s_vals + t.tap_w(), n));
      }
    }
  }
}

// Block (chunk, c): partial[chunk, c, cell] = sum over the chunk's output elements of
// channel c of grad * input at the cell. Each thread keeps kDots cells' sums in registers;
// warps reduce by shuffles, then the warps' sums are added in warp order (fixed: the same
// bits every run).
constexpr int kDots = kDotsPerPass;

template <typename S, typename A>
__global__ void __launch_bounds__(kThreads) dw_cell_dots_kernel(const S* __restrict__ go, const S* __restrict__ x,
                                                                const int* __restrict__ ints,
                                                                A* __restrict__ partial, int64_t batch, Dims d,
                                                                TableLayout t) {
  constexpr int kWarps = kThreads / 32;
  extern __shared__ __align__(16) unsigned char dw_smem[];
  __shared__ A warp_sums[kWarps * kDots];
  int* s_ints = reinterpret_cast<int*>(dw_smem);
  const int64_t c = blockIdx.y, chunk = blockIdx.x;
  load_table<A>(ints + c * t.ints(), nullptr, t.slot_cell(), 0, s_ints, nullptr);
  const int h = static_cast<int>(d.H), w = static_cast<int>(d.W);
  const int wo = static_cast<int>(d.Wo), pixels = static_cast<int>(d.Ho * d.Wo);
  const int64_t start = chunk * kChunk, stop = min(start + kChunk, batch * pixels);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = s_ints[1];
  A* dst = partial + (chunk * d.C + c) * t.cap;
  for (int e0 = 0; e0 < n; e0 += kDots) {
    A dots[kDots];
#pragma unroll
    for (int q = 0; q < kDots; ++q) dots[q] = A(0);
    // (n, pix) of element e, stepped without a 64-bit division per element.
    int64_t e = start + threadIdx.x;
    int64_t sample = e / pixels;
    int pix = static_cast<int>(e - sample * pixels);
    for (; e < stop; e += blockDim.x) {
      const int m = pix / wo, j = pix - m * wo;
      const int r0 = m * d.sh, c0 = j * d.sw;
      const int64_t plane = sample * d.C + c;
      const A g = static_cast<A>(go[plane * pixels + pix]);
      cell_dots_at<kDots, A>(x + plane * d.H * d.W, h, w, r0, c0, s_ints + t.cell_dr(), s_ints + t.cell_dc(), e0, n,
                             box_inside(s_ints + 6, r0, c0, h, w), g, dots);
      pix += blockDim.x;
      while (pix >= pixels) {
        pix -= pixels;
        ++sample;
      }
    }
#pragma unroll
    for (int q = 0; q < kDots; ++q) {
      A v = dots[q];
      for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
      if (lane == 0) warp_sums[warp * kDots + q] = v;
    }
    __syncthreads();
    const int q = threadIdx.x;
    if (q < kDots && e0 + q < n) {
      A sum = A(0);
      for (int v = 0; v < kWarps; ++v) sum += warp_sums[v * kDots + q];
      dst[e0 + q] = sum;
    }
    __syncthreads();
  }
}

// Thread (c, k): the synapse's (d/dw, w * d/dalpha, w * d/dbeta) from the cell dots.
template <typename S, typename A>
__global__ void combine_sums_kernel(const int* __restrict__ ints, const A* __restrict__ vals,
                                    const A* __restrict__ dots, const S* __restrict__ w, A* __restrict__ sums,
                                    int64_t channels, TableLayout t) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= channels * t.K) return;
  const int64_t c = i / t.K;
  const int k = static_cast<int>(i - c * t.K);
  combine_synapse_sums<A>(ints + c * t.ints(), vals + c * t.values(), t, dots + c * t.cap, k,
                          static_cast<A>(w[i]), sums + i * 3);
}

// ---- bilinear columns ----------------------------------------------------------------

template <typename S, typename A>
__global__ void im2col_kernel(const S* __restrict__ x, const A* __restrict__ pos, S* __restrict__ cols,
                              int64_t total, Dims d, Units u) {
  ACU_GRID_STRIDE(idx, total) { cols[idx] = static_cast<S>(im2col_element<A>(x, pos, idx, d, u)); }
}

template <typename S, typename A>
__global__ void col2im_kernel(const S* __restrict__ gcols, const A* __restrict__ pos, S* __restrict__ gx,
                              int64_t total, Dims d, Units u) {
  ACU_GRID_STRIDE(idx, total) { gx[idx] = static_cast<S>(col2im_element<A>(gcols, pos, idx, d, u)); }
}

// One thread block per line (n, unit, row) of the columns: the dots of its gradient with
// its slope reads.
template <typename S, typename A>
__global__ void position_partials_kernel(const S* __restrict__ gcols, const S* __restrict__ x,
                                         const A* __restrict__ pos, A* __restrict__ partial, Dims d, Units u,
                                         int64_t sets) {
  __shared__ A shared[2 * kThreads];
  const int64_t line = blockIdx.x;
  A sums[2] = {A(0), A(0)};
  for (int64_t pix = threadIdx.x; pix < d.Ho * d.Wo; pix += kThreads) {
    const Read3<A> t = position_terms<A>(gcols, x, pos, line, pix, d, u);
    sums[0] += t.d_alpha;
    sums[1] += t.d_beta;
  }
  block_sum<A, 2>(sums, shared);
  if (threadIdx.x == 0) {
    A* dst = partial + position_slot(line, d, u, sets);
    dst[0] = shared[0];
    dst[1] = shared[kThreads];
  }
}

// out[m] = sum over rows of partial[:, m]: strided per-thread sums, then a fixed tree.
template <typename A>
__global__ void reduce_rows_kernel(const A* __restrict__ partial, A* __restrict__ out, int64_t rows,
                                   int64_t cols) {
  __shared__ A shared[kThreads];
  const int64_t m = blockIdx.x;
  A sums[1] = {A(0)};
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) sums[0] += partial[r * cols + m];
  block_sum<A, 1>(sums, shared);
  if (threadIdx.x == 0) out[m] = shared[0];
}

#define ACU_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

struct CudaBackend {
  static int64_t columns_chunk(const Geometry& g) {
    const int64_t per_sample = g.units * g.c_per_group * g.synapses * g.out_h * g.out_w * 8;
    return std::max<int64_t>(1, std::min<int64_t>(g.batch, kColumnsBytes / std::max<int64_t>(per_sample, 1)));
  }

  // The channels' sparse tables: (ints, values), one row per channel.
  static std::pair<at::Tensor, at::Tensor> build_tables(const at::Tensor& weight, const at::Tensor& positions,
                                                        const Geometry& g, cudaStream_t stream) {
    const TableLayout t = TableLayout::of(g.synapses);
    at::Tensor ints = at::empty({g.c_in, t.ints()}, positions.options().dtype(at::kInt));
    at::Tensor vals = at::empty({g.c_in, t.values()}, positions.options());
    const int threads = 64;
    const unsigned blocks = static_cast<unsigned>((g.c_in + threads - 1) / threads);
    ACU_DISPATCH(weight.scalar_type(), "acu_depthwise_tables_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      build_tables_kernel<scalar_t, A><<<blocks, threads, 0, stream>>>(
          positions.const_data_ptr<A>(), weight.const_data_ptr<scalar_t>(), ints.mutable_data_ptr<int>(),
          vals.mutable_data_ptr<A>(), g.c_in, g.c_out / g.sets, t);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {ints, vals};
  }

  static at::Tensor depthwise_forward(const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& positions,
                                      const std::optional<at::Tensor>& bias, const Geometry& g) {
    const c10::cuda::CUDAGuard guard(input.device());
    at::Tensor out = at::empty({g.batch, g.c_out, g.out_h, g.out_w}, input.options());
    if (out.numel() == 0) return out;
    auto stream = c10::cuda::getCurrentCUDAStream();
    const auto [ints, vals] = build_tables(weight, positions, g, stream);
    const TableLayout t = TableLayout::of(g.synapses);
    const PlaneTiles pt = plane_tiles(g.out_h * g.out_w);
    const int64_t blocks = g.batch * g.c_in * pt.tiles;
    TORCH_CHECK(blocks < (int64_t(1) << 31), "acuzoo: too many depthwise planes for one launch");
    ACU_DISPATCH(input.scalar_type(), "acu_depthwise_forward_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      dw_forward_kernel<scalar_t, A>
          <<<static_cast<unsigned>(blocks), plane_threads(pt), tap_smem_bytes<A>(t), stream>>>(
              input.const_data_ptr<scalar_t>(), ints.const_data_ptr<int>(), vals.const_data_ptr<A>(),
              bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
              dims_of(g), t, pt);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }

  template <int ST, typename S, typename A>
  static void launch_grad_input(const at::Tensor& grad_out, const at::Tensor& ints, const at::Tensor& vals,
                                at::Tensor& gx, const Geometry& g, cudaStream_t stream) {
    const TableLayout t = TableLayout::of(g.synapses);
    const PlaneTiles pt =
        plane_tiles(((g.height + g.stride_h - 1) / g.stride_h) * ((g.width + g.stride_w - 1) / g.stride_w));
    const int64_t blocks = g.batch * g.c_in * pt.tiles;
    TORCH_CHECK(blocks < (int64_t(1) << 31), "acuzoo: too many depthwise planes for one launch");
    dw_grad_input_kernel<ST, S, A>
        <<<static_cast<unsigned>(blocks), plane_threads(pt), tap_smem_bytes<A>(t), stream>>>(
            grad_out.const_data_ptr<S>(), ints.const_data_ptr<int>(), vals.const_data_ptr<A>(),
            gx.mutable_data_ptr<S>(), dims_of(g), t, pt);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  static std::tuple<at::Tensor, at::Tensor> depthwise_backward(
      const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
      const at::Tensor& positions, const Geometry& g, bool need_x, bool need_sums) {
    const c10::cuda::CUDAGuard guard(input.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor gx = need_x ? at::empty_like(input) : at::Tensor();
    at::Tensor sums;
    const TableLayout t = TableLayout::of(g.synapses);
    const auto [ints, vals] = build_tables(weight, positions, g, stream);
    if (need_x && gx.numel() > 0) {
      ACU_DISPATCH(input.scalar_type(), "acu_depthwise_grad_input_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        // The gather divides by the stride per tap: a compile-time stride where it is common.
        if (g.stride_h == 1 && g.stride_w == 1) {
          launch_grad_input<1, scalar_t, A>(grad_out, ints, vals, gx, g, stream);
        } else if (g.stride_h == 2 && g.stride_w == 2) {
          launch_grad_input<2, scalar_t, A>(grad_out, ints, vals, gx, g, stream);
        } else {
          launch_grad_input<0, scalar_t, A>(grad_out, ints, vals, gx, g, stream);
        }
      });
    }
    if (need_sums) {
      const int64_t elems = g.batch * g.out_h * g.out_w;
      const int64_t chunks = std::max<int64_t>(1, (elems + kChunk - 1) / kChunk);
      at::Tensor partial = at::zeros({chunks, g.c_in * t.cap}, positions.options());
      TORCH_CHECK(g.c_in <= 65535, "acuzoo: the depthwise CUDA kernel handles at most 65535 channels");
      ACU_DISPATCH(input.scalar_type(), "acu_depthwise_grad_params_cuda", [&] {
        using A = at::opmath_type<scalar_t>;
        if (elems > 0) {
          const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(g.c_in));
          const size_t smem = static_cast<size_t>(t.slot_cell()) * sizeof(int);
          dw_cell_dots_kernel<scalar_t, A><<<grid, kThreads, smem, stream>>>(
              grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), ints.const_data_ptr<int>(),
              partial.mutable_data_ptr<A>(), g.batch, dims_of(g), t);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        const at::Tensor dots = reduce_rows(partial);
        sums = at::empty({g.c_in, g.synapses, 3}, positions.options());
        const int64_t pairs = g.c_in * g.synapses;
        combine_sums_kernel<scalar_t, A><<<static_cast<unsigned>((pairs + 127) / 128), 128, 0, stream>>>(
            ints.const_data_ptr<int>(), vals.const_data_ptr<A>(), dots.const_data_ptr<A>(),
            weight.const_data_ptr<scalar_t>(), sums.mutable_data_ptr<A>(), g.c_in, t);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    return {gx, sums};
  }

  static void im2col(const at::Tensor& x, const at::Tensor& positions, at::Tensor& cols,
                     const Geometry& g) {
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t total = cols.numel();
    if (total == 0) return;
    ACU_DISPATCH(x.scalar_type(), "acu_im2col_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      im2col_kernel<scalar_t, A><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(), positions.const_data_ptr<A>(), cols.mutable_data_ptr<scalar_t>(),
          total, dims_of(g), units_of(g));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void col2im(const at::Tensor& gcols, const at::Tensor& positions, at::Tensor& gx,
                     const Geometry& g) {
    const c10::cuda::CUDAGuard guard(gx.device());
    const int64_t total = gx.numel();
    if (total == 0) return;
    TORCH_CHECK(gx.is_contiguous(), "acuzoo: col2im needs a contiguous gradient buffer");
    ACU_DISPATCH(gx.scalar_type(), "acu_col2im_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      col2im_kernel<scalar_t, A><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          gcols.const_data_ptr<scalar_t>(), positions.const_data_ptr<A>(), gx.mutable_data_ptr<scalar_t>(),
          total, dims_of(g), units_of(g));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static at::Tensor position_partials(const at::Tensor& gcols, const at::Tensor& x,
                                      const at::Tensor& positions, const Geometry& g) {
    const c10::cuda::CUDAGuard guard(x.device());
    const Units u = units_of(g);
    at::Tensor partial =
        at::empty({g.batch * u.per_set * g.c_per_group, g.sets * g.synapses * 2}, positions.options());
    const int64_t lines = g.units * u.rows * g.batch;
    if (lines == 0) return partial.zero_();
    TORCH_CHECK(lines < (int64_t(1) << 31), "acuzoo: too many column rows for one launch");
    ACU_DISPATCH(x.scalar_type(), "acu_position_partials_cuda", [&] {
      using A = at::opmath_type<scalar_t>;
      position_partials_kernel<scalar_t, A>
          <<<static_cast<unsigned>(lines), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              gcols.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), positions.const_data_ptr<A>(),
              partial.mutable_data_ptr<A>(), dims_of(g), u, g.sets);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return partial;
  }

  static at::Tensor reduce_rows(const at::Tensor& partial_) {
    const at::Tensor partial = partial_.contiguous();
    const int64_t rows = partial.size(0), cols = partial.size(1);
    at::Tensor out = at::empty({cols}, partial.options());
    if (cols == 0) return out;
    if (rows == 0) return out.zero_();
    AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "acu_reduce_rows_cuda", [&] {
      reduce_rows_kernel<scalar_t><<<static_cast<unsigned>(cols), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          partial.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), rows, cols);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return out;
  }
};

std::string unless_depthwise_in_table(const Geometry& g) {
  std::string why = unless_depthwise(g);
  if (!why.empty() || g.synapses <= kMaxDepthwiseSynapses) return why;
  std::ostringstream out;
  out << "serves at most " << kMaxDepthwiseSynapses << " synapses per channel (its shared-memory table), got "
      << g.synapses;
  return out.str();
}

at::Tensor cuda_depthwise_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                             const std::optional<at::Tensor>& bias, const Geometry& g) {
  return CudaBackend::depthwise_forward(input.contiguous(), weight, positions, bias, g);
}

Gradients cuda_depthwise_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                             const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask) {
  const auto [gx, sums] = CudaBackend::depthwise_backward(grad_out.contiguous(), input.contiguous(), weight, positions,
                                                          g, mask[0], mask[1] || mask[2]);
  return depthwise_gradients(gx, sums, g, mask, CudaBackend::reduce_rows);
}

at::Tensor cuda_columns_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                const std::optional<at::Tensor>& bias, const Geometry& g) {
  return columns_forward<CudaBackend>(input, weight, positions, bias, g);
}

Gradients cuda_columns_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask) {
  return columns_backward<CudaBackend>(grad_out, input, weight, positions, g, mask);
}

// The CUDA kernels by name.
const KernelTable kCudaKernels{c10::DeviceType::CUDA,
                               {
                                   {"cuda.depthwise", unless_depthwise_in_table, cuda_depthwise_forward, cuda_depthwise_backward},
                                   {"cuda.columns", nullptr, cuda_columns_forward, cuda_columns_backward},
                               }};
[[maybe_unused]] const bool kCudaKernelsRegistered = register_kernels(kCudaKernels);

at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef stride, int64_t groups,
                        c10::string_view forward_kernel, c10::string_view /*backward_kernel*/) {
  return run_forward(c10::DeviceType::CUDA, input, weight, positions, bias, stride, groups, forward_kernel);
}

Gradients backward_cuda(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& positions, at::IntArrayRef stride, int64_t groups, std::array<bool, 3> mask,
                        c10::string_view kernel) {
  return run_backward(c10::DeviceType::CUDA, grad_out, input, weight, positions, stride, groups, mask, kernel);
}

int64_t cuda_depthwise_max_synapses() { return kMaxDepthwiseSynapses; }

}  // namespace
}  // namespace acu

TORCH_LIBRARY_FRAGMENT(acuzoo, m) {
  // The synapses per channel cuda.depthwise serves, for the plan (acuzoo/ops/plan.py).
  m.def("cuda_depthwise_max_synapses() -> int", &acu::cuda_depthwise_max_synapses);
}

TORCH_LIBRARY_IMPL(acuzoo, CUDA, m) {
  m.impl("active_conv2d", &acu::forward_cuda);
  m.impl("active_conv2d_backward", &acu::backward_cuda);
}
