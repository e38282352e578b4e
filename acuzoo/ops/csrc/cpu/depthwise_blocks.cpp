// The depthwise ACU on the CPU by channel blocks: cpu.depthwise_blocks and
// cpu.depthwise_bands.
//
// On small planes the plane kernels (depthwise_planes.cpp) spend most of each vector on
// padding and short rows. Here each channel's synapses are
// first merged into its dense kernel: the sum over synapses of weight x bilinear weight
// at each integer offset (Theorem 2; synapses sharing a tap share its read). The layer is
// then a depthwise correlation with one vector lane per channel: a tap is one
// multiply-add of a channel vector, whatever the plane size and the memory format.
// The backward gathers the input gradient with the flipped kernel and takes the dense
// kernel's gradient (one dot of the output gradient with each offset read, over the box
// of every tap a synapse reads or differentiates), then turns those dots into the weight
// and position sums with the synapses' bilinear value and slope weights.
// Two schemes, one kernel each: depthwise_blocks reads the channels-last tensors in place,
// at any stride (depthwise_blocks_in_place.h), gathering the taps of pixels near the left
// and right edges into zero-padded runs; depthwise_bands (stride 1) copies bands of
// channels with zero borders, sized to stay in L2, which costs less where many pixels are
// near the edges (wide merged kernels). Either way a backward task owns some channels for
// a fixed range of samples, and those ranges' dots are added in order: bitwise
// reproducible for any thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../common/depthwise.h"
#include "depthwise_blocks_in_place.h"
#include "kernels.h"
#include "reduce_rows.h"
#include "taps.h"

namespace acu {
namespace {

// In place, a backward task takes this many blocks of channels (of one sample range).
constexpr int64_t kDotsChunk = 8;
// A backward task covers one of (at most) this many fixed sample ranges of a band.
constexpr int64_t kSampleRanges = 8;
// A band's buffer (one sample, borders included) holds about this many elements: the
// backward's three stay in a core's L2.
constexpr int64_t kBandElements = int64_t(64) << 10;
// The widest band: enough channels per pixel for long copies from channels-last tensors.
constexpr int64_t kMaxBandChannels = 512;

// A band buffer holds channels [c0, c0 + nl) of one sample by blocks of L channels (the
// vector width): block by block, pixel by pixel, L values per pixel (the lanes past nl
// zero). A tap's read of a pixel for one block is one vector, and the pixels of a row are
// L apart: fixed offsets the compiler folds into the loads. Rows carry kGroup - 1 zero
// pixels on each side, so that a group of pixels, or a run of kGroup taps, that reaches the
// plane at all stays inside its row.
struct Plane {
  int H, W;
  static constexpr int pad = kGroup - 1;
  int64_t pitch() const { return W + 2 * pad; }
  // Pixels of one block (borders included), and the index of pixel (h, w) in a block.
  int64_t pixels() const { return H * pitch(); }
  int64_t pixel(int h, int w) const { return h * pitch() + pad + w; }
};

// Channels per band: as many whole vectors as keep a band's buffer near kBandElements,
// spread evenly over the bands.
int64_t band_channels(const Geometry& g, int64_t L) {
  const int64_t cpad = (g.c_out + L - 1) / L * L;
  const int64_t pixels = g.height * (g.width + 2 * Plane::pad);
  const int64_t widest = std::clamp<int64_t>(kBandElements / pixels / L * L, L, kMaxBandChannels);
  const int64_t bands = (cpad + widest - 1) / widest;
  return ((cpad + bands - 1) / bands + L - 1) / L * L;
}

// Channels [c0, c0 + nl) of one channels-last sample into a band buffer: a pixel's
// channels are one run (s.c is 1, or the tensor has a single channel).
template <typename T>
void block_in(const T* src, const Strides& s, const Plane& p, int64_t nl, T* dst) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n;
  const int64_t full = nl / L, rest = nl % L, step = p.pixels() * L;
  for (int h = 0; h < p.H; ++h) {
    for (int w = 0; w < p.W; ++w) {
      const T* from = src + h * s.h + w * s.w;
      T* to = dst + p.pixel(h, w) * L;
      for (int64_t b = 0; b < full; ++b) store_vec(to + b * step, load_vec<V>(from + b * L));
      if (rest == 0) continue;
      T* tail = to + full * step;
      for (int64_t l = 0; l < rest; ++l) tail[l] = from[full * L + l];
      for (int64_t l = rest; l < L; ++l) tail[l] = T(0);
    }
  }
}

// The layer's synapses merged per channel: the boxes of the taps they read (value) and
// read or differentiate (slope), and each channel's dense kernel over the value box,
// stored tap-major with the channels of a tap contiguous (cpad apart).
template <typename T>
struct Merged {
  Box value, slope;
  // Per row of the slope box, the columns whose dots some synapse uses (the box's
  // corners are never used by synapses on integers: 21 of 25 dots at init); filled with
  // the synapses' tap lists (list_synapse_taps).
  std::vector<RowSpan> slope_rows;
  int64_t cpad = 0;
  std::vector<T> kernel;
};

// The displacements of one axis's taps that touch the plane: all of them (slope), or
// those with a non-zero value. Returns false when none does. The taps are a run from
// a.first; only on an integer (3 taps) are the value's end taps zero.
template <typename T>
bool axis_span(const AxisTaps<T>& a, int size, bool values_only, int& lo, int& hi) {
  const bool inner = values_only && a.count == 3;
  lo = std::max(a.first + (inner ? 1 : 0), 1 - size);
  hi = std::min(a.first + a.count - 1 - (inner ? 1 : 0), size - 1);
  return lo <= hi;
}

// The value and slope boxes of every synapse of every set.
template <typename T>
Merged<T> merged_boxes(const std::vector<AxisTaps<T>>& taps, const Geometry& g) {
  const int H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  Merged<T> m;
  for (int64_t k = 0; k < g.sets * g.synapses; ++k) {
    int r0, r1, c0, c1;
    for (const bool values : {true, false}) {
      if (!axis_span(taps[2 * k], H, values, r0, r1) || !axis_span(taps[2 * k + 1], W, values, c0, c1)) continue;
      Box& box = values ? m.value : m.slope;
      box.extend(r0, c0);
      box.extend(r1, c1);
    }
  }
  return m;
}

// A layer's taps and boxes, kept while its positions' values and plane stay the same: the
// forward and the backward of one training step both need them, and with many channels
// computing them costs far more than comparing the positions (see bench/RESULTS.md).
template <typename T>
struct Prepared {
  std::vector<AxisTaps<T>> taps;
  Merged<T> boxes;  // value and slope boxes; no kernel
  // Every synapse's taps that touch the plane, synapse by synapse (set-major): those with a
  // value, as (index in the value box, bilinear weight), and those with a value or a slope,
  // as (index in the slope box, value, d/dalpha, d/dbeta) weights. Synapse i's run from
  // value_begin[i] (slope_begin[i]) to the next's. The kernel's merge and the backward's
  // sums then walk flat lists instead of testing every axis tap again, per channel and call.
  struct ValueTap {
    int32_t index;
    T cv;
  };
  struct SlopeTap {
    int32_t index;
    T cv, ca, cb;
  };
  std::vector<ValueTap> value_taps;
  std::vector<SlopeTap> slope_taps;
  std::vector<int64_t> value_begin, slope_begin;
};

// Fills prep's tap lists and its boxes' row spans, in one walk over the synapses' taps. A
// tap with a value weight (cv != 0) lies in the value box (axis_span's inner taps).
template <typename T>
void list_synapse_taps(Prepared<T>& prep, const Geometry& g) {
  const int H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  Merged<T>& boxes = prep.boxes;
  prep.value_taps.clear(), prep.slope_taps.clear();
  prep.value_begin.assign(1, 0), prep.slope_begin.assign(1, 0);
  boxes.slope_rows.assign(boxes.slope.empty() ? 0 : boxes.slope.r1 - boxes.slope.r0 + 1, RowSpan{});
  for (int64_t i = 0; i < g.sets * g.synapses; ++i) {
    for_each_tap(&prep.taps[2 * i], 1, H, W, [&](int64_t, int dr, int dc, T cv, T ca, T cb) {
      if (cv != T(0)) prep.value_taps.push_back({static_cast<int32_t>(boxes.value.index(dr, dc)), cv});
      prep.slope_taps.push_back({static_cast<int32_t>(boxes.slope.index(dr, dc)), cv, ca, cb});
      boxes.slope_rows[dr - boxes.slope.r0].extend(dc);
    });
    prep.value_begin.push_back(static_cast<int64_t>(prep.value_taps.size()));
    prep.slope_begin.push_back(static_cast<int64_t>(prep.slope_taps.size()));
  }
}

// The calling thread's Prepared for these positions (contiguous) on g's plane. The result
// stays valid until this thread calls again.
template <typename T>
const Prepared<T>& prepared(const at::Tensor& positions, const Geometry& g) {
  thread_local std::vector<unsigned char> key;
  thread_local int64_t key_h = -1, key_w = -1, key_sets = -1;
  thread_local Prepared<T> cached;
  const size_t bytes = static_cast<size_t>(positions.numel()) * sizeof(T);
  const auto* data = reinterpret_cast<const unsigned char*>(positions.const_data_ptr<T>());
  const bool same = key_h == g.height && key_w == g.width && key_sets == g.sets && key.size() == bytes &&
                    (bytes == 0 || std::memcmp(key.data(), data, bytes) == 0);
  if (!same) {
    cached.taps = all_taps<T>(positions);
    cached.boxes = merged_boxes(cached.taps, g);
    list_synapse_taps(cached, g);
    key.assign(data, data + bytes);
    key_h = g.height, key_w = g.width, key_sets = g.sets;
  }
  return cached;
}

template <typename T>
Merged<T> merge(const Prepared<T>& prep, const T* w, const Geometry& g, int64_t L, bool want_kernel) {
  const int64_t K = g.synapses, per_set = g.c_out / g.sets;
  Merged<T> m = prep.boxes;
  m.cpad = (g.c_out + L - 1) / L * L;
  if (!want_kernel) return m;
  m.kernel.assign(m.value.taps() * m.cpad, T(0));
  // By ranges of channels on every thread (each writes its own channels): with many
  // channels the merge is a sizeable share of a call's fixed cost.
  T* kernel = m.kernel.data();
  at::parallel_for(0, g.c_out, 64, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first = (c / per_set) * K;
      for (int64_t k = 0; k < K; ++k) {
        const T wk = w[c * K + k];
        for (int64_t t = prep.value_begin[first + k]; t < prep.value_begin[first + k + 1]; ++t) {
          kernel[prep.value_taps[t].index * m.cpad + c] += wk * prep.value_taps[t].cv;
        }
      }
    }
  });
  return m;
}

// One row of N taps for a group of kGroup pixels, its run of kGroup + N - 1 input pixels
// loaded once into registers (adjacent pixels share N - 1 of their reads).
template <int N, int S, typename T>
inline void window_taps(const T* run, const T* k, int64_t cpad, typename Lanes<T>::vec* acc) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n;
  V xv[kGroup + N - 1];
  for (int t = 0; t < kGroup + N - 1; ++t) xv[t] = load_vec<V>(run + t * L);
  for (int j = 0; j < N; ++j) {
    const V kv = load_vec<V>(k + j * cpad);
    const int shift = S > 0 ? j : N - 1 - j;
    for (int q = 0; q < kGroup; ++q) acc[q] += kv * xv[q + shift];
  }
}

// out[p] = init + sum over the box's taps t of kern[t] * src[p + S * t], for one block of
// L channels (src zero outside the plane; kern's taps cpad apart). S = +1 is the forward
// read, S = -1 its transpose (the input gradient). Pixels go by groups of kGroup; a group
// skips the tap columns that miss the plane for all of its pixels, and its pixels past the
// row end are computed but not stored.
template <int S, typename T>
void correlate(const T* src, const Plane& p, const T* kern, const Box& box, int64_t cpad, const T* init,
               const Sink<T>& out) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n;
  const int cols = box.cols();
  const V start = init ? load_vec<V>(init) : V{};
  for (int oh = 0; oh < p.H; ++oh) {
    const int i_lo = S > 0 ? std::max(box.r0, -oh) : std::max(box.r0, oh - p.H + 1);
    const int i_hi = S > 0 ? std::min(box.r1, p.H - 1 - oh) : std::min(box.r1, oh);
    for (int ow = 0; ow < p.W; ow += kGroup) {
      const int last = ow + kGroup - 1;
      const int j_lo = S > 0 ? std::max(box.c0, -last) : std::max(box.c0, ow - p.W + 1);
      const int j_hi = S > 0 ? std::min(box.c1, p.W - 1 - ow) : std::min(box.c1, last);
      V acc[kGroup];
      for (int q = 0; q < kGroup; ++q) acc[q] = start;
      const int n = j_hi - j_lo + 1;
      for (int i = i_lo; i <= i_hi; ++i) {
        const T* k = kern + (static_cast<int64_t>(i - box.r0) * cols + (j_lo - box.c0)) * cpad;
        // The run of input pixels this row of taps reads for the whole group, leftmost first.
        const T* run = src + p.pixel(oh + S * i, ow + (S > 0 ? j_lo : -j_hi)) * L;
        switch (n) {
          case 3: window_taps<3, S>(run, k, cpad, acc); break;
          case 5: window_taps<5, S>(run, k, cpad, acc); break;
          case 7: window_taps<7, S>(run, k, cpad, acc); break;
          default: {
            const T* x = src + p.pixel(oh + S * i, ow + S * j_lo) * L;
            for (int j = j_lo; j <= j_hi; ++j, k += cpad, x += S * L) {
              const V kv = load_vec<V>(k);
              for (int q = 0; q < kGroup; ++q) acc[q] += kv * load_vec<V>(x + q * L);
            }
          }
        }
      }
      const int stored = std::min(kGroup, p.W - ow);
      for (int q = 0; q < stored; ++q) out.put(oh, ow + q, acc[q]);
    }
  }
}

// dots[(i, j)] += sum over rows h and pixels w of g[h, w] * x[h + i, w + j], for one block
// of L channels and J adjacent tap columns j0 .. j0 + J - 1 at once (one accumulator each).
template <int J, typename T>
void row_dots(const T* g, const T* x, const Plane& p, int i, int j0, int h_lo, int h_hi, T* dots) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n;
  const int w_lo = std::max(0, -(j0 + J - 1)), w_hi = std::min(p.W, p.W - j0);
  V acc[J];
  for (int q = 0; q < J; ++q) acc[q] = V{};
  for (int h = h_lo; h < h_hi; ++h) {
    const T* gp = g + p.pixel(h, w_lo) * L;
    const T* xp = x + p.pixel(h + i, w_lo + j0) * L;
    for (int w = w_lo; w < w_hi; ++w, gp += L, xp += L) {
      const V gv = load_vec<V>(gp);
      for (int q = 0; q < J; ++q) acc[q] += gv * load_vec<V>(xp + q * L);
    }
  }
  for (int q = 0; q < J; ++q) store_vec(dots + q * L, load_vec<V>(dots + q * L) + acc[q]);
}

// dots[t] += sum over pixels p of g[p] * x[p + t] for the taps t of the box in each row's
// span, one block of L channels (one vector per tap; x zero outside the plane).
template <typename T>
void tap_dots(const T* g, const T* x, const Plane& p, const Box& box, const RowSpan* rows, T* dots) {
  constexpr int64_t L = Lanes<T>::n;
  for (int i = box.r0; i <= box.r1; ++i) {
    const int h_lo = std::max(0, -i), h_hi = std::min(p.H, p.H - i);
    const RowSpan& cols = rows[i - box.r0];
    for (int j0 = cols.c0; j0 <= cols.c1; j0 += kGroup) {
      T* d = dots + box.index(i, j0) * L;
      switch (std::min(kGroup, cols.c1 - j0 + 1)) {
        case 1: row_dots<1>(g, x, p, i, j0, h_lo, h_hi, d); break;
        case 2: row_dots<2>(g, x, p, i, j0, h_lo, h_hi, d); break;
        case 3: row_dots<3>(g, x, p, i, j0, h_lo, h_hi, d); break;
        case 4: row_dots<4>(g, x, p, i, j0, h_lo, h_hi, d); break;
        case 5: row_dots<5>(g, x, p, i, j0, h_lo, h_hi, d); break;
        case 6: row_dots<6>(g, x, p, i, j0, h_lo, h_hi, d); break;
        case 7: row_dots<7>(g, x, p, i, j0, h_lo, h_hi, d); break;
        default: row_dots<kGroup>(g, x, p, i, j0, h_lo, h_hi, d); break;
      }
    }
  }
}

// The kernels run channels-last: a pixel's band of channels is one run to copy. Other
// layouts are transposed once by ATen (much faster than strided copies per band).
at::Tensor channels_last(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

// How the channel blocks read their planes: in place from the channels-last tensors (any
// stride), or through band copies with zero borders (stride 1).
enum class Scheme { in_place, bands };

at::Tensor blocks_forward(const at::Tensor& input_, const at::Tensor& weight, const at::Tensor& positions,
                          const std::optional<at::Tensor>& bias, const Geometry& g, Scheme scheme) {
  const at::Tensor input = channels_last(input_);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "acu_blocks_forward_cpu", [&] {
    using T = scalar_t;
    constexpr int64_t L = Lanes<T>::n;
    const Merged<T> m = merge(prepared<T>(positions, g), weight.const_data_ptr<T>(), g, L, true);
    out = at::empty({g.batch, g.c_out, g.out_h, g.out_w}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
    std::vector<T> bias_lanes(bias.has_value() ? m.cpad : 0, T(0));
    if (bias.has_value()) std::copy_n(bias->const_data_ptr<T>(), g.c_out, bias_lanes.begin());
    const T* init = bias_lanes.empty() ? nullptr : bias_lanes.data();
    const int64_t C = g.c_out;
    const Strides li = sample_strides(input), lo = sample_strides(out);
    const T* x = input.const_data_ptr<T>();
    T* y = out.mutable_data_ptr<T>();
    if (scheme == Scheme::in_place) {
      const TapKernel<T> k{m.value, m.cpad, m.kernel.data()};
      const int H = static_cast<int>(g.height), W = static_cast<int>(g.width);
      const int sh = static_cast<int>(g.stride_h), sw = static_cast<int>(g.stride_w);
      at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
        auto scratch = edge_scratch<T>(k.box, sw);
        for (int64_t r = begin; r < end; ++r) {
          const int64_t n = r / g.out_h;
          const Reads<T> in{x + n * input.stride(0), li, H, W, sh, sw};
          correlate_in_place(in, k, static_cast<int>(r % g.out_h), static_cast<int>(g.out_w), C, init,
                             y + n * out.stride(0), lo, scratch.data());
        }
      });
      return;
    }
    const int64_t band = band_channels(g, L), bands = (C + band - 1) / band;
    at::parallel_for(0, g.batch * bands, 1, [&](int64_t begin, int64_t end) {
      const Plane p{static_cast<int>(g.height), static_cast<int>(g.width)};
      const int64_t step = p.pixels() * L;
      std::vector<T> xb(band / L * step, T(0));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / bands, c0 = (item % bands) * band, nl = std::min(band, C - c0);
        block_in(x + n * input.stride(0) + c0, li, p, nl, xb.data());
        for (int64_t b = 0; b < nl; b += L) {
          const Sink<T> sink{y + n * out.stride(0) + c0 + b, lo, std::min(L, nl - b)};
          correlate<1>(xb.data() + b / L * step, p, m.kernel.data() + c0 + b, m.value, m.cpad,
                       init ? init + c0 + b : nullptr, sink);
        }
      }
    });
  });
  return in_format_of(out, input_);
}

// What both backward schemes share: channels-last tensors, the merged kernel and boxes,
// and the dots of every fixed sample range, (range, tap, channel), cpad channels apart.
template <typename T>
struct Backward {
  const Geometry& g;
  const Merged<T>& m;
  const T* go;  // grad_out
  const T* x;   // input
  T* gx;        // grad_input (input's shape), or null
  Strides sg, sx;
  int64_t sample_g, sample_x;  // elements per sample
  int64_t n_taps, per_range, ranges;
  T* dots;  // null when the sums are not wanted
  int64_t samples_end(int64_t r) const { return std::min(g.batch, (r + 1) * per_range); }
  // A task's accumulators (nl channels from c0, n_taps vectors per block) into dots.
  void publish(const T* acc, int64_t r, int64_t c0, int64_t nl) const {
    constexpr int64_t L = Lanes<T>::n;
    for (int64_t b = 0; b < nl; b += L) {
      for (int64_t t = 0; t < n_taps; ++t) {
        std::copy_n(acc + b * n_taps + t * L, std::min(L, nl - b), dots + (r * n_taps + t) * m.cpad + c0 + b);
      }
    }
  }
};

// In place: the input gradient by input rows, as the stride classes' correlations of
// grad_out; the dots by (sample range, chunk of blocks), rows and blocks in a fixed order
// within each task.
template <typename T>
void backward_in_place(const Backward<T>& job) {
  constexpr int64_t L = Lanes<T>::n;
  const Geometry& g = job.g;
  const int64_t C = g.c_out;
  const int H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  const int Ho = static_cast<int>(g.out_h), Wo = static_cast<int>(g.out_w);
  const int sh = static_cast<int>(g.stride_h), sw = static_cast<int>(g.stride_w);
  if (job.gx) {
    std::vector<T> storage;
    const auto classes = stride_classes(TapKernel<T>{job.m.value, job.m.cpad, job.m.kernel.data()}, sh, sw, storage);
    const Strides strided{job.sx.c, sh * job.sx.h, sw * job.sx.w};
    at::parallel_for(0, g.batch * g.height, 1, [&](int64_t begin, int64_t end) {
      auto scratch = edge_scratch<T>(job.m.value, 1);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / g.height;
        const int u = static_cast<int>(r % g.height), pr = u % sh, a = u / sh;
        const Reads<T> in{job.go + n * job.sample_g, job.sg, Ho, Wo, 1, 1};
        for (int pc = 0; pc < sw && pc < W; ++pc) {
          T* dst = job.gx + n * job.sample_x + pr * job.sx.h + pc * job.sx.w;
          correlate_in_place(in, classes[pr * sw + pc], a, ceil_div(W - pc, sw), C, static_cast<const T*>(nullptr),
                             dst, strided, scratch.data());
        }
      }
    });
  }
  if (!job.dots) return;
  const int64_t chunk = kDotsChunk * L, chunks = (C + chunk - 1) / chunk;
  const Box& box = job.m.slope;
  const RowSpan* rows = job.m.slope_rows.data();
  const int64_t block_stride = job.n_taps * L;  // between adjacent blocks' dots
  at::parallel_for(0, job.ranges * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(chunk * job.n_taps);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t r = item / chunks, c0 = (item % chunks) * chunk, nl = std::min(chunk, C - c0);
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t n = r * job.per_range; n < job.samples_end(r); ++n) {
        const T* gn = job.go + n * job.sample_g + c0;
        const T* xn = job.x + n * job.sample_x + c0;
        for (int h = 0; h < Ho; ++h) {
          for (int64_t b = 0; b < nl;) {
            T* d = acc.data() + b * job.n_taps;
            const Reads<T> xr{xn + b, job.sx, H, W, sh, sw};
            if (nl - b >= kQuadBlocks * L) {
              inplace_tap_dots<true, kQuadBlocks>(gn + b, job.sg, Wo, xr, h, box, rows, L, d, block_stride);
              b += kQuadBlocks * L;
            } else if (nl - b >= L) {
              inplace_tap_dots<true, 1>(gn + b, job.sg, Wo, xr, h, box, rows, L, d, block_stride);
              b += L;
            } else {
              inplace_tap_dots<false, 1>(gn + b, job.sg, Wo, xr, h, box, rows, nl - b, d, block_stride);
              b += L;
            }
          }
        }
      }
      job.publish(acc.data(), r, c0, nl);
    }
  });
}

// By bands (stride 1): a task owns a band of channels for one sample range and copies each
// sample's band of grad_out (and input) into zero-bordered buffers shared by both
// gradients.
template <typename T>
void backward_by_bands(const Backward<T>& job) {
  constexpr int64_t L = Lanes<T>::n;
  const Geometry& g = job.g;
  TORCH_INTERNAL_ASSERT(g.stride_h == 1 && g.stride_w == 1 && job.sample_g == job.sample_x);
  const int64_t C = g.c_out, band = band_channels(g, L), bands = (C + band - 1) / band;
  at::parallel_for(0, bands * job.ranges, 1, [&](int64_t begin, int64_t end) {
    const Plane p{static_cast<int>(g.height), static_cast<int>(g.width)};
    const int64_t step = p.pixels() * L;
    std::vector<T> xb(job.dots ? band / L * step : 0, T(0)), gb(band / L * step, T(0)), acc(band * job.n_taps);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t c0 = (item / job.ranges) * band, r = item % job.ranges, nl = std::min(band, C - c0);
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t n = r * job.per_range; n < job.samples_end(r); ++n) {
        block_in(job.go + n * job.sample_g + c0, job.sg, p, nl, gb.data());
        if (job.dots) block_in(job.x + n * job.sample_x + c0, job.sx, p, nl, xb.data());
        for (int64_t b = 0; b < nl; b += L) {
          const T* gblock = gb.data() + b / L * step;
          if (job.gx) {
            const Sink<T> sink{job.gx + n * job.sample_x + c0 + b, job.sx, std::min(L, nl - b)};
            correlate<-1>(gblock, p, job.m.kernel.data() + c0 + b, job.m.value, job.m.cpad,
                          static_cast<const T*>(nullptr), sink);
          }
          if (job.dots) tap_dots(gblock, xb.data() + b / L * step, p, job.m.slope, job.m.slope_rows.data(),
                                  acc.data() + b * job.n_taps);
        }
      }
      if (job.dots) job.publish(acc.data(), r, c0, nl);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> blocks_backward(const at::Tensor& grad_out_, const at::Tensor& input_,
                                                   const at::Tensor& weight, const at::Tensor& positions,
                                                   const Geometry& g, bool need_x, bool need_sums, Scheme scheme) {
  const at::Tensor grad_out = channels_last(grad_out_);
  const auto cl = grad_out.options().memory_format(at::MemoryFormat::ChannelsLast);
  // The input is read only for the sums; its gradient takes its shape.
  const at::Tensor input = need_sums ? channels_last(input_) : at::empty({0, 0, 0, 0}, cl);
  at::Tensor gx = need_x ? at::empty(input_.sizes(), cl) : at::Tensor();
  const int64_t C = g.c_out, K = g.synapses;
  at::Tensor sums = need_sums ? at::zeros({C, K, 3}, grad_out.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "acu_blocks_backward_cpu", [&] {
    using T = scalar_t;
    constexpr int64_t L = Lanes<T>::n;
    const Prepared<T>& prep = prepared<T>(positions, g);
    const T* w = weight.const_data_ptr<T>();
    const Merged<T> m = merge(prep, w, g, L, need_x);
    const int64_t n_taps = need_sums ? m.slope.taps() : 0;
    const int64_t per_range = (g.batch + kSampleRanges - 1) / kSampleRanges;
    const int64_t ranges = (g.batch + per_range - 1) / per_range;
    std::vector<T> dots(static_cast<size_t>(ranges * n_taps * m.cpad));
    // Input and its gradient: one shape, both channels-last and contiguous.
    const at::Tensor& x_like = need_sums ? input : gx;
    const Backward<T> job{g,
                          m,
                          grad_out.const_data_ptr<T>(),
                          need_sums ? input.const_data_ptr<T>() : nullptr,
                          need_x ? gx.mutable_data_ptr<T>() : nullptr,
                          sample_strides(grad_out),
                          sample_strides(x_like),
                          grad_out.stride(0),
                          x_like.stride(0),
                          n_taps,
                          per_range,
                          ranges,
                          need_sums ? dots.data() : nullptr};
    if (scheme == Scheme::in_place) {
      backward_in_place(job);
    } else {
      backward_by_bands(job);
    }
    if (!need_sums) return;
    // The ranges' dots added in order (one pass over contiguous channels), then turned
    // into each channel's synapse sums.
    for (int64_t r = 1; r < ranges; ++r) {
      const T* from = dots.data() + r * n_taps * m.cpad;
      for (int64_t i = 0; i < n_taps * m.cpad; ++i) dots[i] += from[i];
    }
    T* s = sums.mutable_data_ptr<T>();
    const int64_t per_set = C / g.sets;
    at::parallel_for(0, C, 64, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t first = (c / per_set) * K;
        for (int64_t k = 0; k < K; ++k) {
          T* out = s + (c * K + k) * 3;
          for (int64_t t = prep.slope_begin[first + k]; t < prep.slope_begin[first + k + 1]; ++t) {
            const auto& tap = prep.slope_taps[t];
            const T d = dots[tap.index * m.cpad + c];
            out[0] += tap.cv * d;
            out[1] += w[c * K + k] * tap.ca * d;
            out[2] += w[c * K + k] * tap.cb * d;
          }
        }
      }
    });
  });
  return {need_x ? in_format_of(gx, input_) : gx, sums};
}

Gradients blocks_gradients(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask, Scheme scheme) {
  const auto [gx, sums] = blocks_backward(grad_out, input, weight, positions, g, mask[0], mask[1] || mask[2], scheme);
  return depthwise_gradients(gx, sums, g, mask, reduce_rows);
}

}  // namespace

namespace cpu {

at::Tensor depthwise_blocks_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                    const std::optional<at::Tensor>& bias, const Geometry& g) {
  return blocks_forward(input, weight, positions, bias, g, Scheme::in_place);
}

Gradients depthwise_blocks_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                    const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask) {
  return blocks_gradients(grad_out, input, weight, positions, g, mask, Scheme::in_place);
}

at::Tensor depthwise_bands_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& positions,
                                   const std::optional<at::Tensor>& bias, const Geometry& g) {
  return blocks_forward(input, weight, positions, bias, g, Scheme::bands);
}

Gradients depthwise_bands_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                   const at::Tensor& positions, const Geometry& g, std::array<bool, 3> mask) {
  return blocks_gradients(grad_out, input, weight, positions, g, mask, Scheme::bands);
}

}  // namespace cpu
}  // namespace acu
