// Depthwise correlations whose vector lanes are channels, reading channels-last tensors in
// place (no copies): the kernels behind cpu.depthwise_blocks (depthwise_blocks.cpp), and
// the pieces it shares with cpu.depthwise_bands (Box, Sink, kGroup).
//
// A "tap kernel" is a per-channel dense kernel over a box of integer offsets, stored
// tap-major with the channels of a tap contiguous (cpad apart). The correlation reads the
// input at (sr * oh + i, sc * ow + j) for output pixel (oh, ow) and tap (i, j), zero
// outside the plane: stride sr x sc forward, and with the kernels of stride_classes() the
// input gradient of a strided layer (a sum of stride-1 correlations of grad_out).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "taps.h"

namespace acu {

// A rectangle of integer tap offsets (dr, dc), grown tap by tap; empty at first.
struct Box {
  int r0 = 0, r1 = -1, c0 = 0, c1 = -1;
  bool empty() const { return r1 < r0; }
  int cols() const { return empty() ? 0 : c1 - c0 + 1; }
  int64_t taps() const { return empty() ? 0 : static_cast<int64_t>(r1 - r0 + 1) * cols(); }
  int64_t index(int dr, int dc) const { return static_cast<int64_t>(dr - r0) * cols() + (dc - c0); }
  void extend(int dr, int dc) {
    if (empty()) {
      r0 = r1 = dr, c0 = c1 = dc;
      return;
    }
    r0 = std::min(r0, dr), r1 = std::max(r1, dr), c0 = std::min(c0, dc), c1 = std::max(c1, dc);
  }
};

// A run of columns [c0, c1] in one row of taps, grown column by column; empty at first.
struct RowSpan {
  int c0 = 0, c1 = -1;
  void extend(int c) {
    if (c1 < c0) {
      c0 = c1 = c;
      return;
    }
    c0 = std::min(c0, c), c1 = std::max(c1, c);
  }
};

// Output pixels computed together (one accumulator each): a tap's kernel vector is loaded
// once per group and eight multiply-adds are in flight.
constexpr int kGroup = 8;

// One block of L channels read from a channels-last tensor; a tail block (Full false)
// reads only its `lanes` channels (the rest zero), never past the tensor's end.
template <typename T, bool Full>
inline typename Lanes<T>::vec read_block(const T* p, int64_t lanes) {
  using V = typename Lanes<T>::vec;
  if constexpr (Full) {
    return load_vec<V>(p);
  } else {
    T part[Lanes<T>::n] = {};
    std::copy_n(p, lanes, part);
    return load_vec<V>(part);
  }
}

// Where a block's results go: pixel (h, w) at `at` + h * s.h + w * s.w (channels-last,
// the block's first channel), `lanes` valid channels of the vector.
template <typename T>
struct Sink {
  T* at;
  Strides s;
  int64_t lanes;
  void put(int h, int w, const typename Lanes<T>::vec& v) const {
    T* to = at + h * s.h + w * s.w;
    if (lanes == Lanes<T>::n) {
      store_vec(to, v);
      return;
    }
    T tmp[Lanes<T>::n];
    store_vec(tmp, v);
    std::copy_n(tmp, lanes, to);
  }
};

template <typename T>
struct TapKernel {
  Box box;
  int64_t cpad = 0;
  const T* data = nullptr;
};

// The plane a correlation reads in place: one sample, channels-last; rows sr and columns
// sc apart per output pixel.
template <typename T>
struct Reads {
  const T* at;
  Strides s;
  int H, W;
  int sr, sc;
};

// Interior pixels also go by quads: kQuadPixels adjacent output pixels times kQuadBlocks
// blocks of channels, so that each pixel's read is one run of kQuadBlocks * L contiguous
// values rather than a single vector every C values, which the memory system serves
// faster.
constexpr int kQuadPixels = 4;
constexpr int kQuadBlocks = 4;

// G adjacent output pixels of one row and NB adjacent blocks of channels (in, kern and out
// at the first block's channel), tap rows [i_lo, i_hi] and every tap column, all of which
// read inside the plane. init: the blocks' start values (bias), or null.
template <int G, bool Full, int NB, typename T>
void inplace_group(const Reads<T>& in, int oh, int ow, int i_lo, int i_hi, const T* kern, const Box& box,
                   int64_t cpad, const T* init, const Sink<T>& out) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n;
  static_assert(Full || NB == 1, "a partial block goes alone");
  V acc[G][NB];
  for (int b = 0; b < NB; ++b) {
    const V start = init ? load_vec<V>(init + b * L) : V{};
    for (int q = 0; q < G; ++q) acc[q][b] = start;
  }
  const int64_t step = in.sc * in.s.w;  // between adjacent output pixels
  for (int i = i_lo; i <= i_hi; ++i) {
    const T* k = kern + static_cast<int64_t>(i - box.r0) * box.cols() * cpad;
    const T* x = in.at + (in.sr * oh + i) * in.s.h + (in.sc * ow + box.c0) * in.s.w;
    for (int j = box.c0; j <= box.c1; ++j, k += cpad, x += in.s.w) {
      V kv[NB];
      for (int b = 0; b < NB; ++b) kv[b] = load_vec<V>(k + b * L);
      for (int q = 0; q < G; ++q) {
        for (int b = 0; b < NB; ++b) acc[q][b] += kv[b] * read_block<T, Full>(x + q * step + b * L, out.lanes);
      }
    }
  }
  // Pixel by pixel, so that a pixel's blocks are written as one run.
  for (int q = 0; q < G; ++q) {
    if constexpr (Full) {
      T* to = out.at + oh * out.s.h + (ow + q) * out.s.w;
      for (int b = 0; b < NB; ++b) store_vec(to + b * L, acc[q][b]);
    } else {
      out.put(oh, ow + q, acc[q][0]);
    }
  }
}

// inplace_group for G output pixels near the left or right edge, whose taps may fall
// outside the row: each tap row's reads are first gathered into a zero-padded run of
// vectors (column sc * ow + c0 + u at u), so that no read needs a bound.
template <int G, bool Full, typename T>
void edge_group(const Reads<T>& in, int oh, int ow, int i_lo, int i_hi, const T* kern, const Box& box, int64_t cpad,
                const T* init, const Sink<T>& out, typename Lanes<T>::vec* gathered) {
  using V = typename Lanes<T>::vec;
  V acc[G];
  const V start = init ? load_vec<V>(init) : V{};
  for (int q = 0; q < G; ++q) acc[q] = start;
  const int cols = box.cols(), run = in.sc * (G - 1) + cols, first = in.sc * ow + box.c0;
  for (int i = i_lo; i <= i_hi; ++i) {
    const T* row = in.at + (in.sr * oh + i) * in.s.h;
    for (int u = 0; u < run; ++u) {
      const int col = first + u;
      gathered[u] = col >= 0 && col < in.W ? read_block<T, Full>(row + col * in.s.w, out.lanes) : V{};
    }
    const T* k = kern + static_cast<int64_t>(i - box.r0) * cols * cpad;
    for (int j = 0; j < cols; ++j, k += cpad) {
      const V kv = load_vec<V>(k);
      for (int q = 0; q < G; ++q) acc[q] += kv * gathered[in.sc * q + j];
    }
  }
  for (int q = 0; q < G; ++q) out.put(oh, ow + q, acc[q]);
}

// Scratch for edge_group: one run of gathered vectors.
template <typename T>
std::vector<typename Lanes<T>::vec> edge_scratch(const Box& box, int sc) {
  return std::vector<typename Lanes<T>::vec>(sc * (kGroup - 1) + std::max(box.cols(), 1));
}

// Output row oh (Wo pixels) of the correlation of one sample, every channel [0, C): pixels
// whose taps all fall inside the row go by groups of up to kGroup, those near the edges by
// edge groups; tap rows outside the plane are skipped. init: per-channel start (bias) or
// null; out: the row's sink (its `lanes` is set per block).
template <typename T>
void correlate_in_place(const Reads<T>& in, const TapKernel<T>& k, int oh, int Wo, int64_t C, const T* init,
                        T* dst, const Strides& so, typename Lanes<T>::vec* scratch) {
  constexpr int64_t L = Lanes<T>::n;
  const Box& box = k.box;
  const int i_lo = box.empty() ? 1 : std::max(box.r0, -in.sr * oh);
  const int i_hi = box.empty() ? 0 : std::min(box.r1, in.H - 1 - in.sr * oh);
  // Pixels ow with every column sc * ow + j, j in [c0, c1], inside [0, W).
  const int inner_lo = std::max(0, ceil_div(-box.c0, in.sc));
  const int inner_hi = std::min(Wo - 1, floor_div(in.W - 1 - box.c1, in.sc));
  auto blocks = [&](auto group, int ow, int64_t c_from = 0) {
    for (int64_t c = c_from; c < C; c += L) {
      const T* start = init ? init + c : nullptr;
      const Sink<T> sink{dst + c, so, std::min(L, C - c)};
      const Reads<T> block{in.at + c, in.s, in.H, in.W, in.sr, in.sc};
      if (C - c >= L) {
        group(std::true_type{}, block, ow, k.data + c, start, sink);
      } else {
        group(std::false_type{}, block, ow, k.data + c, start, sink);
      }
    }
  };
#define ACU_INNER(G)                                                                                     \
  [&](auto full, const Reads<T>& b, int ow, const T* kd, const T* start, const Sink<T>& sink) {              \
    inplace_group<G, decltype(full)::value, 1>(b, oh, ow, i_lo, i_hi, kd, box, k.cpad, start, sink);         \
  }
#define ACU_EDGE(G)                                                                                      \
  [&](auto full, const Reads<T>& b, int ow, const T* kd, const T* start, const Sink<T>& sink) {              \
    edge_group<G, decltype(full)::value>(b, oh, ow, i_lo, i_hi, kd, box, k.cpad, start, sink, scratch);      \
  }
  // Pixels [from, to) by groups of up to kGroup, edge groups or not.
  auto span = [&](int from, int to, bool edge) {
    for (int ow = from; ow < to;) {
      const int n = std::min(kGroup, to - ow);
      switch (n + (edge ? kGroup : 0)) {
        case 1: blocks(ACU_INNER(1), ow); break;
        case 2: blocks(ACU_INNER(2), ow); break;
        case 3: blocks(ACU_INNER(3), ow); break;
        case 4: blocks(ACU_INNER(4), ow); break;
        case 5: blocks(ACU_INNER(5), ow); break;
        case 6: blocks(ACU_INNER(6), ow); break;
        case 7: blocks(ACU_INNER(7), ow); break;
        case kGroup: blocks(ACU_INNER(kGroup), ow); break;
        case kGroup + 1: blocks(ACU_EDGE(1), ow); break;
        case kGroup + 2: blocks(ACU_EDGE(2), ow); break;
        case kGroup + 3: blocks(ACU_EDGE(3), ow); break;
        case kGroup + 4: blocks(ACU_EDGE(4), ow); break;
        case kGroup + 5: blocks(ACU_EDGE(5), ow); break;
        case kGroup + 6: blocks(ACU_EDGE(6), ow); break;
        case kGroup + 7: blocks(ACU_EDGE(7), ow); break;
        default: blocks(ACU_EDGE(kGroup), ow); break;
      }
      ow += n;
    }
  };
  // Interior pixels [from, to): the whole quads of blocks by quads of pixels along the row
  // (one quad of blocks at a time, so that the next pixels' reads overlap the last ones'
  // in L1 even for tall kernels); the other blocks and pixels by groups.
  auto interior = [&](int from, int to) {
    constexpr int64_t quad = kQuadBlocks * L;
    const int64_t whole = C / quad * quad;
    const int quads_end = whole > 0 ? from + (to - from) / kQuadPixels * kQuadPixels : from;
    for (int64_t c = 0; c < whole; c += quad) {
      const Reads<T> block{in.at + c, in.s, in.H, in.W, in.sr, in.sc};
      const Sink<T> sink{dst + c, so, L};
      for (int ow = from; ow < quads_end; ow += kQuadPixels) {
        inplace_group<kQuadPixels, true, kQuadBlocks>(block, oh, ow, i_lo, i_hi, k.data + c, box, k.cpad,
                                                      init ? init + c : nullptr, sink);
      }
    }
    if (whole < C) {
      for (int ow = from; ow < quads_end; ow += kQuadPixels) blocks(ACU_INNER(kQuadPixels), ow, whole);
    }
    span(quads_end, to, false);
  };
#undef ACU_INNER
#undef ACU_EDGE
  if (box.empty() || inner_lo > inner_hi) {
    span(0, Wo, true);
  } else {
    span(0, inner_lo, true);
    interior(inner_lo, inner_hi + 1);
    span(inner_hi + 1, Wo, true);
  }
}

// The input gradient of a correlation with stride sr x sc, as sr * sc stride-1
// correlations of grad_out: input pixel (sr * a + pr, sc * b + pc) gathers
// sum over (m, n) of k[pr - sr * m, pc - sc * n] * grad_out[a + m, b + n]. One tap kernel
// per class (pr, pc), row-major; `storage` holds their taps.
template <typename T>
std::vector<TapKernel<T>> stride_classes(const TapKernel<T>& k, int sr, int sc, std::vector<T>& storage) {
  std::vector<TapKernel<T>> classes;
  std::vector<int64_t> offsets;
  storage.clear();
  for (int pr = 0; pr < sr; ++pr) {
    for (int pc = 0; pc < sc; ++pc) {
      TapKernel<T> sub;
      sub.cpad = k.cpad;
      if (!k.box.empty()) {
        const int m_lo = ceil_div(pr - k.box.r1, sr), m_hi = floor_div(pr - k.box.r0, sr);
        const int n_lo = ceil_div(pc - k.box.c1, sc), n_hi = floor_div(pc - k.box.c0, sc);
        if (m_lo <= m_hi && n_lo <= n_hi) sub.box = Box{m_lo, m_hi, n_lo, n_hi};
      }
      offsets.push_back(static_cast<int64_t>(storage.size()));
      for (int m = sub.box.r0; m <= sub.box.r1; ++m) {
        for (int n = sub.box.c0; n <= sub.box.c1; ++n) {
          const T* from = k.data + k.box.index(pr - sr * m, pc - sc * n) * k.cpad;
          storage.insert(storage.end(), from, from + k.cpad);
        }
      }
      classes.push_back(sub);
    }
  }
  for (size_t i = 0; i < classes.size(); ++i) classes[i].data = storage.data() + offsets[i];
  return classes;
}

// acc[q] += sum over pixels w of g[w] * x[sc * w + j0 + q], q < J, for one row of NB
// adjacent blocks read in place (g's pixels gw apart, Wo of them; x's xw apart, W of them;
// block b's sums at acc + b * block_stride): the pixels whose J columns all fall inside
// x's row together, the few near the ends column by column. Several blocks per pixel
// read longer contiguous runs (see kQuadBlocks).
template <int J, bool Full, int NB, typename T>
void inplace_row_dots(const T* g, int64_t gw, int Wo, const T* x, int64_t xw, int W, int sc, int j0, int64_t lanes,
                      T* acc, int64_t block_stride) {
  using V = typename Lanes<T>::vec;
  constexpr int64_t L = Lanes<T>::n;
  static_assert(Full || NB == 1, "a partial block goes alone");
  V a[J][NB];
  for (int q = 0; q < J; ++q) {
    for (int b = 0; b < NB; ++b) a[q][b] = V{};
  }
  // Some column inside: sc * w + j0 + J - 1 >= 0 and sc * w + j0 <= W - 1.
  const int lo = std::max(0, ceil_div(-(j0 + J - 1), sc));
  const int hi = std::min(Wo, floor_div(W - 1 - j0, sc) + 1);
  // Every column inside.
  const int in_lo = std::max(lo, ceil_div(-j0, sc));
  const int in_hi = std::max(in_lo, std::min(hi, floor_div(W - j0 - J, sc) + 1));
  auto partial = [&](int w) {
    for (int b = 0; b < NB; ++b) {
      const V gv = read_block<T, Full>(g + w * gw + b * L, lanes);
      for (int q = 0; q < J; ++q) {
        const int col = sc * w + j0 + q;
        if (col >= 0 && col < W) a[q][b] += gv * read_block<T, Full>(x + col * xw + b * L, lanes);
      }
    }
  };
  for (int w = lo; w < std::min(in_lo, hi); ++w) partial(w);
  const T* gp = g + in_lo * gw;
  const T* xp = x + (sc * in_lo + j0) * xw;
  for (int w = in_lo; w < in_hi; ++w, gp += gw, xp += sc * xw) {
    V gv[NB];
    for (int b = 0; b < NB; ++b) gv[b] = read_block<T, Full>(gp + b * L, lanes);
    for (int q = 0; q < J; ++q) {
      for (int b = 0; b < NB; ++b) a[q][b] += gv[b] * read_block<T, Full>(xp + q * xw + b * L, lanes);
    }
  }
  for (int w = in_hi; w < hi; ++w) partial(w);
  for (int b = 0; b < NB; ++b) {
    T* d = acc + b * block_stride;
    for (int q = 0; q < J; ++q) store_vec(d + q * L, load_vec<V>(d + q * L) + a[q][b]);
  }
}

// dots[t] += sum over pixels p of g[p] * x[stride * p + t] for the taps t of the box in
// each row's span (rows[i - box.r0]), for grad_out row h of NB adjacent blocks read in
// place (x zero outside its plane; block b's dots at dots + b * block_stride). Columns go
// kGroup at a time for one block, fewer for several (their accumulators must fit the
// registers).
template <bool Full, int NB, typename T>
void inplace_tap_dots(const T* g, const Strides& sg, int Wo, const Reads<T>& x, int h, const Box& box,
                      const RowSpan* rows, int64_t lanes, T* dots, int64_t block_stride) {
  constexpr int64_t L = Lanes<T>::n;
  constexpr int kCols = NB == 1 ? kGroup : 20 / NB;
  const T* g_row = g + h * sg.h;
  for (int i = std::max(box.r0, -x.sr * h); i <= std::min(box.r1, x.H - 1 - x.sr * h); ++i) {
    const T* x_row = x.at + (x.sr * h + i) * x.s.h;
    const RowSpan& cols = rows[i - box.r0];
    for (int j0 = cols.c0; j0 <= cols.c1; j0 += kCols) {
      T* d = dots + box.index(i, j0) * L;
      const int64_t gw = sg.w, xw = x.s.w;
#define ACU_ROW(J) inplace_row_dots<J, Full, NB>(g_row, gw, Wo, x_row, xw, x.W, x.sc, j0, lanes, d, block_stride)
      switch (std::min(kCols, cols.c1 - j0 + 1)) {
        case 1: ACU_ROW(1); break;
        case 2: ACU_ROW(2); break;
        case 3: ACU_ROW(3); break;
        case 4: ACU_ROW(4); break;
        case 5: ACU_ROW(5); break;
        case 6: if constexpr (kCols >= 6) ACU_ROW(6); break;
        case 7: if constexpr (kCols >= 7) ACU_ROW(7); break;
        default: if constexpr (kCols >= 8) ACU_ROW(kGroup); break;
      }
#undef ACU_ROW
    }
  }
}

}  // namespace acu
