// Per-element arithmetic of the ACU, written once for the CPU and CUDA kernels.
//
// A synapse at (alpha, beta) reads the input with the 1-D hat weights of each axis
// (floor-based bilinear interpolation, zero outside the image). Its derivative with
// respect to a coordinate follows DESIGN.md: -1 / +1 on the two neighbours between
// integers, and the mean of the one-sided derivatives on an integer, which reads the
// taps one beyond the support: (x[f+1] - x[f-1]) / 2.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ACU_HD __host__ __device__ __forceinline__
#else
#define ACU_HD inline
#endif

namespace acu {

// The taps of one axis: displacements first .. first + count - 1, with their hat
// weights (value) and the derivatives of those weights with respect to the coordinate.
template <typename A>
struct AxisTaps {
  int first;
  int count;  // 2 between integers; 3 on an integer (the slope reads both neighbours)
  A value[3];
  A slope[3];
};

ACU_HD float floor_of(float v) { return floorf(v); }
ACU_HD double floor_of(double v) { return floor(v); }

template <typename A>
ACU_HD AxisTaps<A> axis_taps(A coord) {
  AxisTaps<A> taps;
  const A f = floor_of(coord);
  const A t = coord - f;
  if (t == A(0)) {
    taps.first = static_cast<int>(f) - 1;
    taps.count = 3;
    taps.value[0] = A(0);
    taps.value[1] = A(1);
    taps.value[2] = A(0);
    taps.slope[0] = A(-0.5);
    taps.slope[1] = A(0);
    taps.slope[2] = A(0.5);
  } else {
    taps.first = static_cast<int>(f);
    taps.count = 2;
    taps.value[0] = A(1) - t;
    taps.value[1] = t;
    taps.value[2] = A(0);
    taps.slope[0] = A(-1);
    taps.slope[1] = A(1);
    taps.slope[2] = A(0);
  }
  return taps;
}

// The output index m whose tap d reads input index i (i = m * s + d), or -1.
ACU_HD int output_index(int i, int d, int s, int out_size) {
  const int q = i - d;
  if (q < 0 || q % s != 0) return -1;
  const int m = q / s;
  return m < out_size ? m : -1;
}

// Bilinear read of one plane at (r + alpha, c + beta): value, d/dalpha and d/dbeta.
template <typename A>
struct Read3 {
  A value;
  A d_alpha;
  A d_beta;
};

template <typename A, typename S>
ACU_HD Read3<A> read_plane(const S* plane, int height, int width, int r, int c,
                           const AxisTaps<A>& ta, const AxisTaps<A>& tb) {
  Read3<A> out{A(0), A(0), A(0)};
  for (int i = 0; i < ta.count; ++i) {
    const int rr = r + ta.first + i;
    if (rr < 0 || rr >= height) continue;
    for (int j = 0; j < tb.count; ++j) {
      const int cc = c + tb.first + j;
      if (cc < 0 || cc >= width) continue;
      const A cv = ta.value[i] * tb.value[j];
      const A ca = ta.slope[i] * tb.value[j];
      const A cb = ta.value[i] * tb.slope[j];
      if (cv == A(0) && ca == A(0) && cb == A(0)) continue;  // the corners of an integer tap
      const A x = static_cast<A>(plane[static_cast<int64_t>(rr) * width + cc]);
      out.value += cv * x;
      out.d_alpha += ca * x;
      out.d_beta += cb * x;
    }
  }
  return out;
}

// Value only (forward, im2col): skips the zero-weight taps of an integer coordinate.
template <typename A, typename S>
ACU_HD A read_value(const S* plane, int height, int width, int r, int c,
                    const AxisTaps<A>& ta, const AxisTaps<A>& tb) {
  A out = A(0);
  for (int i = 0; i < ta.count; ++i) {
    const A wa = ta.value[i];
    const int rr = r + ta.first + i;
    if (wa == A(0) || rr < 0 || rr >= height) continue;
    for (int j = 0; j < tb.count; ++j) {
      const A wb = tb.value[j];
      const int cc = c + tb.first + j;
      if (wb == A(0) || cc < 0 || cc >= width) continue;
      out += wa * wb * static_cast<A>(plane[static_cast<int64_t>(rr) * width + cc]);
    }
  }
  return out;
}

// Transposed read (input gradient, col2im) as a gather: the sum over the outputs whose
// synapse reads input (r, c) of their gradient times the bilinear weight.
template <typename A, typename S>
ACU_HD A gather_plane(const S* grad_plane, int out_h, int out_w, int sh, int sw, int r, int c,
                      const AxisTaps<A>& ta, const AxisTaps<A>& tb) {
  A out = A(0);
  for (int i = 0; i < ta.count; ++i) {
    const A wa = ta.value[i];
    if (wa == A(0)) continue;
    const int m = output_index(r, ta.first + i, sh, out_h);
    if (m < 0) continue;
    for (int j = 0; j < tb.count; ++j) {
      const A wb = tb.value[j];
      if (wb == A(0)) continue;
      const int n = output_index(c, tb.first + j, sw, out_w);
      if (n < 0) continue;
      out += wa * wb * static_cast<A>(grad_plane[static_cast<int64_t>(m) * out_w + n]);
    }
  }
  return out;
}

// ---- one output or input element of each kernel -------------------------------------
// The CUDA kernels are these functions plus launch and reduction code; the CPU "twin"
// (cpu/twin.cpp) loops over the same functions, so their arithmetic and indexing are
// tested against the reference on machines without a GPU.

struct Dims {
  int64_t C, H, W, Ho, Wo, K;  // C: input channels
  int sh, sw;
  int64_t per_set;  // output channels per position set
};

// Columns layout: (n, unit, ci * K + k, pixel), i.e. a (nb, U * rows, Ho, Wo) image whose
// grouped 1x1 convolution is the ACU; a unit reads one group with one set.
struct Units {
  int64_t units, per_group, per_set, c_per_group, rows, batch;
};

template <typename A>
ACU_HD void synapse_taps(const A* pos, int64_t p, int64_t k, int64_t K, AxisTaps<A>& ta, AxisTaps<A>& tb) {
  ta = axis_taps<A>(pos[(p * K + k) * 2]);
  tb = axis_taps<A>(pos[(p * K + k) * 2 + 1]);
}

// ---- depthwise: a channel's ACU as a sparse kernel ------------------------------------
// Every synapse of one channel reads a few integer offsets of the input (2x2 between
// integers, up to 3x3 on an integer coordinate, whose slope reads both neighbours). A
// channel table lists them once per channel, merged by offset:
//   taps:  offset -> sum over synapses of w_k * hat weight (the forward and input gradient);
//   cells: every offset a value or slope read touches, and for each synapse slot
//          (k, i, j) of its 3x3 window the cell it reads with (value, d/dalpha, d/dbeta)
//          coefficients. The weight/position gradients are then dots of the output gradient
//          with the input at each cell (one read per cell, not per synapse), combined per
//          synapse at the end (combine_synapse_sums).
// The table is built by one thread per channel (GPU) or per channel (twin), in synapse
// order, so the sums are the same every run.

constexpr int kSlotsPerSynapse = 9;  // a 3x3 window of one synapse's reads
constexpr int kDotsPerPass = 32;     // cell dots one GPU thread keeps in registers

// Layout of one channel's table: ints then op-math values, cap = 9 * K entries each.
struct TableLayout {
  int K, cap;
  // ints: [0] taps, [1] cells, [2..5] tap box (min/max row, min/max col), [6..9] cell box,
  // then tap_dr, tap_dc, cell_dr, cell_dc (cap each), slot_cell (9 * K, -1 = no read).
  ACU_HD static TableLayout of(int64_t K) { return {static_cast<int>(K), kSlotsPerSynapse * static_cast<int>(K)}; }
  ACU_HD int ints() const { return 10 + 4 * cap + kSlotsPerSynapse * K; }
  ACU_HD int tap_dr() const { return 10; }
  ACU_HD int tap_dc() const { return 10 + cap; }
  ACU_HD int cell_dr() const { return 10 + 2 * cap; }
  ACU_HD int cell_dc() const { return 10 + 3 * cap; }
  ACU_HD int slot_cell() const { return 10 + 4 * cap; }
  // values: tap weights (cap), then the slots' (value, d/dalpha, d/dbeta) coefficients.
  ACU_HD int values() const { return cap + 3 * kSlotsPerSynapse * K; }
  ACU_HD int tap_w() const { return 0; }
  ACU_HD int slot_coef() const { return cap; }
};

// Index of offset (dr, dc) in a list, appended if new. Offsets inside a 16x16 window
// around the origin are found through `map` (the usual case: a linear search per read
// would cost the GPU's single builder thread O(cap^2)); others by a linear search.
constexpr int kMapHalf = 8, kMapSide = 2 * kMapHalf, kMapSize = kMapSide * kMapSide;

ACU_HD int find_or_add(int* dr_list, int* dc_list, int& count, short* map, int dr, int dc) {
  const bool mapped = dr >= -kMapHalf && dr < kMapHalf && dc >= -kMapHalf && dc < kMapHalf;
  const int slot = (dr + kMapHalf) * kMapSide + dc + kMapHalf;
  if (mapped) {
    const int at = map[slot];
    if (at >= 0) return at;
  } else {
    for (int e = 0; e < count; ++e) {
      if (dr_list[e] == dr && dc_list[e] == dc) return e;
    }
  }
  dr_list[count] = dr;
  dc_list[count] = dc;
  if (mapped) map[slot] = static_cast<short>(count);
  return count++;
}

ACU_HD void box_of(const int* dr, const int* dc, int n, int* box) {
  box[0] = 0, box[1] = 0, box[2] = 0, box[3] = 0;  // empty lists read nothing: any pixel is inside
  for (int e = 0; e < n; ++e) {
    if (e == 0 || dr[e] < box[0]) box[0] = dr[e];
    if (e == 0 || dr[e] > box[1]) box[1] = dr[e];
    if (e == 0 || dc[e] < box[2]) box[2] = dc[e];
    if (e == 0 || dc[e] > box[3]) box[3] = dc[e];
  }
}

// Builds the table of channel c (position set p, weights w of the channel's K synapses).
// map: kMapSize shorts of scratch.
template <typename A, typename S>
ACU_HD void build_channel_table(const A* pos, int64_t p, const S* w, const TableLayout& t, int* ints, A* vals,
                                short* map) {
  for (int e = 0; e < kMapSize; ++e) map[e] = -1;
  int taps = 0, cells = 0;
  int* tap_dr = ints + t.tap_dr();
  int* tap_dc = ints + t.tap_dc();
  A* tap_w = vals + t.tap_w();
  // Taps first (their own map), then cells (the map reset).
  for (int k = 0; k < t.K; ++k) {
    const AxisTaps<A> ta = axis_taps<A>(pos[(p * t.K + k) * 2]), tb = axis_taps<A>(pos[(p * t.K + k) * 2 + 1]);
    const A wk = static_cast<A>(w[k]);
    for (int i = 0; i < ta.count; ++i) {
      for (int j = 0; j < tb.count; ++j) {
        const A cv = ta.value[i] * tb.value[j];
        if (cv == A(0)) continue;
        const int before = taps;
        const int e = find_or_add(tap_dr, tap_dc, taps, map, ta.first + i, tb.first + j);
        tap_w[e] = (e == before ? A(0) : tap_w[e]) + wk * cv;
      }
    }
  }
  for (int e = 0; e < kMapSize; ++e) map[e] = -1;
  int* cell_dr = ints + t.cell_dr();
  int* cell_dc = ints + t.cell_dc();
  int* slot_cell = ints + t.slot_cell();
  A* coef = vals + t.slot_coef();
  for (int k = 0; k < t.K; ++k) {
    const AxisTaps<A> ta = axis_taps<A>(pos[(p * t.K + k) * 2]), tb = axis_taps<A>(pos[(p * t.K + k) * 2 + 1]);
    for (int slot = 0; slot < kSlotsPerSynapse; ++slot) {
      const int i = slot / 3, j = slot % 3, at = k * kSlotsPerSynapse + slot;
      A cv = A(0), ca = A(0), cb = A(0);
      if (i < ta.count && j < tb.count) {
        cv = ta.value[i] * tb.value[j];
        ca = ta.slope[i] * tb.value[j];
        cb = ta.value[i] * tb.slope[j];
      }
      coef[3 * at] = cv;
      coef[3 * at + 1] = ca;
      coef[3 * at + 2] = cb;
      slot_cell[at] = (cv == A(0) && ca == A(0) && cb == A(0))
                          ? -1
                          : find_or_add(cell_dr, cell_dc, cells, map, ta.first + i, tb.first + j);
    }
  }
  ints[0] = taps;
  ints[1] = cells;
  box_of(tap_dr, tap_dc, taps, ints + 2);
  box_of(cell_dr, cell_dc, cells, ints + 6);
}

// Whether every offset of a box read from (r0, c0) falls inside an h x w plane.
ACU_HD bool box_inside(const int* box, int r0, int c0, int h, int w) {
  return r0 + box[0] >= 0 && r0 + box[1] < h && c0 + box[2] >= 0 && c0 + box[3] < w;
}

// Forward of one output: the taps read from (r0, c0) = (m * sh, j * sw) of plane xp.
template <typename A, typename S>
ACU_HD A sparse_forward_at(const S* xp, int h, int w, int r0, int c0, const int* dr, const int* dc, const A* tw,
                           int n, bool inside) {
  A acc = A(0);
  if (inside) {
    const S* at = xp + static_cast<int64_t>(r0) * w + c0;
    for (int e = 0; e < n; ++e) acc += tw[e] * static_cast<A>(at[dr[e] * w + dc[e]]);
  } else {
    for (int e = 0; e < n; ++e) {
      const int r = r0 + dr[e], c = c0 + dc[e];
      if (r >= 0 && r < h && c >= 0 && c < w) acc += tw[e] * static_cast<A>(xp[static_cast<int64_t>(r) * w + c]);
    }
  }
  return acc;
}

// Input gradient of input (r, c) = (R * sh + pr, C * sw + pc), as a gather from the
// output gradient gp (ho x wo): tap e reaches it from output ((r - dr) / sh, (c - dc) / sw)
// when both divide. Callers walk the sh x sw classes (pr, pc) in step across threads, so
// the divisibility test takes the same branch in every thread of a GPU warp. ST > 0: both
// strides are ST, known at compile time.
template <int ST, typename A, typename S>
ACU_HD A sparse_gather_at(const S* gp, int ho, int wo, int sh, int sw, int R, int C, int pr, int pc, const int* dr,
                          const int* dc, const A* tw, int n) {
  const int st_h = ST > 0 ? ST : sh, st_w = ST > 0 ? ST : sw;
  A acc = A(0);
  for (int e = 0; e < n; ++e) {
    const int qr = pr - dr[e], qc = pc - dc[e];
    if (qr % st_h != 0 || qc % st_w != 0) continue;
    const int m = R + qr / st_h, j = C + qc / st_w;
    if (m >= 0 && m < ho && j >= 0 && j < wo) acc += tw[e] * static_cast<A>(gp[static_cast<int64_t>(m) * wo + j]);
  }
  return acc;
}

// Adds g times the input at cells e0 .. e0 + E - 1 (those below n) read from (r0, c0) to
// dots. E is fixed so that the dots live in registers on the GPU.
template <int E, typename A, typename S>
ACU_HD void cell_dots_at(const S* xp, int h, int w, int r0, int c0, const int* dr, const int* dc, int e0, int n,
                         bool inside, A g, A (&dots)[E]) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int q = 0; q < E; ++q) {
    const int e = e0 + q;
    if (e >= n) break;
    const int r = r0 + dr[e], c = c0 + dc[e];
    if (inside || (r >= 0 && r < h && c >= 0 && c < w)) dots[q] += g * static_cast<A>(xp[static_cast<int64_t>(r) * w + c]);
  }
}

// The (d/dw, w * d/dalpha, w * d/dbeta) sums of synapse k from the channel's cell dots.
template <typename A>
ACU_HD void combine_synapse_sums(const int* ints, const A* vals, const TableLayout& t, const A* dots, int k, A wk,
                                 A* out) {
  A v = A(0), a = A(0), b = A(0);
  for (int slot = 0; slot < kSlotsPerSynapse; ++slot) {
    const int at = k * kSlotsPerSynapse + slot, cell = ints[t.slot_cell() + at];
    if (cell < 0) continue;
    const A* coef = vals + t.slot_coef() + 3 * at;
    v += coef[0] * dots[cell];
    a += coef[1] * dots[cell];
    b += coef[2] * dots[cell];
  }
  out[0] = v;
  out[1] = wk * a;
  out[2] = wk * b;
}

// Columns element idx of (nb, U, rows, Ho * Wo).
template <typename A, typename S>
ACU_HD A im2col_element(const S* x, const A* pos, int64_t idx, const Dims& d, const Units& u) {
  const int64_t pixels = d.Ho * d.Wo;
  const int64_t pix = idx % pixels;
  const int64_t line = idx / pixels;  // (n * U + unit) * rows + row
  const int64_t row = line % u.rows, unit = (line / u.rows) % u.units, n = line / (u.rows * u.units);
  const int64_t ci = row / d.K, k = row % d.K;
  const int64_t c = (unit / u.per_group) * u.c_per_group + ci, p = unit / u.per_set;
  AxisTaps<A> ta, tb;
  synapse_taps(pos, p, k, d.K, ta, tb);
  const int m = static_cast<int>(pix / d.Wo), j = static_cast<int>(pix % d.Wo);
  return read_value<A>(x + (n * d.C + c) * d.H * d.W, static_cast<int>(d.H), static_cast<int>(d.W), m * d.sh,
                       j * d.sw, ta, tb);
}

// Input-gradient element idx of (nb, C, H, W) from the columns' gradient, as a gather.
template <typename A, typename S>
ACU_HD A col2im_element(const S* gcols, const A* pos, int64_t idx, const Dims& d, const Units& u) {
  const int64_t pixels = d.Ho * d.Wo;
  const int col = static_cast<int>(idx % d.W);
  const int r = static_cast<int>((idx / d.W) % d.H);
  const int64_t c = (idx / (d.W * d.H)) % d.C, n = idx / (d.W * d.H * d.C);
  const int64_t group = c / u.c_per_group, ci = c % u.c_per_group;
  A acc = A(0);
  for (int64_t unit = group * u.per_group; unit < (group + 1) * u.per_group; ++unit) {
    const int64_t p = unit / u.per_set;
    for (int64_t k = 0; k < d.K; ++k) {
      AxisTaps<A> ta, tb;
      synapse_taps(pos, p, k, d.K, ta, tb);
      const S* src = gcols + ((n * u.units + unit) * u.rows + ci * d.K + k) * pixels;
      acc += gather_plane<A>(src, static_cast<int>(d.Ho), static_cast<int>(d.Wo), d.sh, d.sw, r, col, ta, tb);
    }
  }
  return acc;
}

// Position terms of one columns-gradient element: line = (n * U + unit) * rows + row
// of the columns, pixel pix; returns (grad * d/dalpha read, grad * d/dbeta read).
template <typename A, typename S>
ACU_HD Read3<A> position_terms(const S* gcols, const S* x, const A* pos, int64_t line, int64_t pix,
                               const Dims& d, const Units& u) {
  const int64_t row = line % u.rows, unit = (line / u.rows) % u.units;
  const int64_t n = line / (u.rows * u.units);
  const int64_t ci = row / d.K, k = row % d.K;
  const int64_t c = (unit / u.per_group) * u.c_per_group + ci;
  AxisTaps<A> ta, tb;
  synapse_taps(pos, unit / u.per_set, k, d.K, ta, tb);
  const int m = static_cast<int>(pix / d.Wo), j = static_cast<int>(pix % d.Wo);
  const A g = static_cast<A>(gcols[line * d.Ho * d.Wo + pix]);
  const Read3<A> r = read_plane<A>(x + (n * d.C + c) * d.H * d.W, static_cast<int>(d.H), static_cast<int>(d.W),
                                   m * d.sh, j * d.sw, ta, tb);
  return {A(0), g * r.d_alpha, g * r.d_beta};
}

// Where position_terms' sums go: partial row (n, q, ci) for unit = p * per_set + q,
// column (p, k, axis) of a (rows, P * K * 2) table.
ACU_HD int64_t position_slot(int64_t line, const Dims& d, const Units& u, int64_t sets) {
  const int64_t row = line % u.rows, unit = (line / u.rows) % u.units;
  const int64_t n = line / (u.rows * u.units);
  const int64_t ci = row / d.K, k = row % d.K;
  const int64_t p = unit / u.per_set, q = unit % u.per_set;
  return ((n * u.per_set + q) * u.c_per_group + ci) * (sets * d.K * 2) + (p * d.K + k) * 2;
}

}  // namespace acu
