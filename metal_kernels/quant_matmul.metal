// y[m, n] = sum_k x[m, k] * W[n, k] for M <= 16 rows of x, with W read straight from GGUF
// blocks (llama.cpp's block_q4_K, block_q6_K, block_q8_0; one weight row is K / block
// values blocks, rows back to back). Sections: the header (shared), then one kernel body
// per block type; the wrapper in quant_matmul.py builds each with mx.fast.metal_kernel.
//
// Work split: a SIMD group owns ROWS output rows; its 32 lanes stride over the row in
// "units" of 16 weights (half a Q8_0 block; a sixteenth of a Q4_K/Q6_K superblock). A
// lane dequantizes a unit once per weight row and dots it with all M rows of x, so the
// weights are read once whatever M is. Partial sums meet in one simd_sum per (row, m).
// Alignment: Q6_K and Q8_0 blocks (210 and 34 bytes) are only 2-byte aligned, so blocks
// are read as bytes and halves, never wider words. Static data members are declared
// `constant` (Metal keeps program-scope data in that address space; MLX's STEEL_CONST).
//
// === header ===
constant constexpr int ROWS = 2;               // output rows per SIMD group
constant constexpr int SIMDGROUPS = 2;         // SIMD groups per threadgroup
constant constexpr int UNIT = 16;              // weights a lane dequantizes at a time

// Q8_0: {half d; int8 qs[32]}, w = d * q.
struct BlockQ8_0 {
  static constant constexpr int VALUES = 32;
  static constant constexpr int BYTES = 34;
  static void dequant(const device uint8_t* block, int unit, thread float* w) {
    float d = float(*(const device half*)block);
    const device int8_t* qs = (const device int8_t*)(block + 2) + unit * UNIT;
    for (int i = 0; i < UNIT; i++) w[i] = d * float(qs[i]);
  }
  static int position(int unit, int i) { return unit * UNIT + i; }
};

// Q4_K: {half d; half dmin; uint8 scales[12]; uint8 qs[128]}. Eight sub-blocks of 32
// with 6-bit scales and mins; qs group g (32 bytes) holds sub-block 2g in its low
// nibbles and 2g+1 in its high nibbles. w = (d * sc) * q - dmin * m.
inline void q4k_scale_min(int j, const device uint8_t* s, thread int& sc, thread int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

struct BlockQ4_K {
  static constant constexpr int VALUES = 256;
  static constant constexpr int BYTES = 144;
  // A unit: 8 bytes of group g at byte offset o: 8 low nibbles, then 8 high nibbles.
  static void dequant(const device uint8_t* block, int unit, thread float* w) {
    int g = unit / 4;
    int o = (unit % 4) * 8;
    float d = float(*(const device half*)block);
    float dmin = float(*(const device half*)(block + 2));
    int sc0, m0, sc1, m1;
    q4k_scale_min(2 * g, block + 4, sc0, m0);
    q4k_scale_min(2 * g + 1, block + 4, sc1, m1);
    float d0 = d * float(sc0), min0 = dmin * float(m0);
    float d1 = d * float(sc1), min1 = dmin * float(m1);
    const device uint8_t* q = block + 16 + 32 * g + o;
    for (int i = 0; i < 8; i++) {
      w[i] = d0 * float(q[i] & 0xF) - min0;
      w[8 + i] = d1 * float(q[i] >> 4) - min1;
    }
  }
  static int position(int unit, int i) {
    return 64 * (unit / 4) + (unit % 4) * 8 + (i < 8 ? i : 24 + i);
  }
};

// Q6_K: {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d}. Two halves of 128; in
// half n, value 32k + l (k = 0..3, l = 0..31) takes the low (k = 0, 1) or high (k = 2, 3)
// nibble of ql[64n + l + 32 (k & 1)] and bits 2k, 2k+1 of qh[32n + l]; w = (d * sc) * (q - 32)
// with one scale per 16 values.
struct BlockQ6_K {
  static constant constexpr int VALUES = 256;
  static constant constexpr int BYTES = 210;
  // A unit: l = l0 .. l0+3 of half n, for each k.
  static void dequant(const device uint8_t* block, int unit, thread float* w) {
    int n = unit / 8;
    int l0 = (unit % 8) * 4;
    const device uint8_t* ql = block + 64 * n;
    const device uint8_t* qh = block + 128 + 32 * n;
    const device int8_t* sc = (const device int8_t*)(block + 192) + 8 * n;
    float d = float(*(const device half*)(block + 208));
    for (int k = 0; k < 4; k++) {
      float ds = d * float(sc[2 * k + l0 / 16]);
      for (int i = 0; i < 4; i++) {
        int l = l0 + i;
        int low = ql[l + 32 * (k & 1)];
        int nib = (k >> 1) ? (low >> 4) : (low & 0xF);
        int q = (nib | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
        w[4 * k + i] = ds * float(q);
      }
    }
  }
  static int position(int unit, int i) {
    return 128 * (unit / 8) + 32 * (i / 4) + (unit % 8) * 4 + i % 4;
  }
};

template <typename Q, int M, typename TX, typename TY>
void quant_matmul(const device uint8_t* w, const device TX* x, device TY* y, int n_rows, int k_dim,
                  int row_bytes, uint simdgroup, uint lane, uint group) {
  const int row0 = (int(group) * SIMDGROUPS + int(simdgroup)) * ROWS;
  if (row0 >= n_rows) {
    return;  // the whole SIMD group is past the last row (a partial threadgroup)
  }
  const int units_per_block = Q::VALUES / UNIT;
  const int units = k_dim / UNIT;
  float acc[ROWS][M];
  for (int r = 0; r < ROWS; r++) {
    for (int m = 0; m < M; m++) {
      acc[r][m] = 0.0f;
    }
  }
  for (int u = int(lane); u < units; u += 32) {
    const int block = u / units_per_block;
    const int unit = u % units_per_block;
    float wv[ROWS][UNIT];
    for (int r = 0; r < ROWS; r++) {
      // Rows past the end (the tail) repeat the last row; their sums are never stored.
      const ulong row = ulong(min(row0 + r, n_rows - 1));
      Q::dequant(w + row * ulong(row_bytes) + ulong(block) * ulong(Q::BYTES), unit, wv[r]);
    }
    for (int m = 0; m < M; m++) {
      const device TX* xr = x + ulong(m) * ulong(k_dim) + ulong(block) * ulong(Q::VALUES);
      float xv[UNIT];
      for (int i = 0; i < UNIT; i++) {
        xv[i] = float(xr[Q::position(unit, i)]);
      }
      for (int r = 0; r < ROWS; r++) {
        float s = 0.0f;
        for (int i = 0; i < UNIT; i++) {
          s += wv[r][i] * xv[i];
        }
        acc[r][m] += s;
      }
    }
  }
  for (int r = 0; r < ROWS; r++) {
    for (int m = 0; m < M; m++) {
      const float total = simd_sum(acc[r][m]);
      if (lane == 0 && row0 + r < n_rows) {
        y[ulong(m) * ulong(n_rows) + ulong(row0 + r)] = total;
      }
    }
  }
}

// === kernel q8_0 ===
quant_matmul<BlockQ8_0, M>(w, x, y, w_shape[0], x_shape[1], w_shape[1], simdgroup_index_in_threadgroup,
                           thread_index_in_simdgroup, threadgroup_position_in_grid.x);

// === kernel q4_k ===
quant_matmul<BlockQ4_K, M>(w, x, y, w_shape[0], x_shape[1], w_shape[1], simdgroup_index_in_threadgroup,
                           thread_index_in_simdgroup, threadgroup_position_in_grid.x);

// === kernel q6_k ===
quant_matmul<BlockQ6_K, M>(w, x, y, w_shape[0], x_shape[1], w_shape[1], simdgroup_index_in_threadgroup,
                           thread_index_in_simdgroup, threadgroup_position_in_grid.x);
