// Decode attention: a few query positions (one for decoding, a handful for speculative
// verification) against a KV cache, with grouped-query attention and the causal mask
// among the queries. Sections: the header, then a kernel body for a float16 (or float32 /
// bfloat16) cache and one for an 8-bit cache in MLX's affine layout (`mx.quantize(x,
// group_size=G, bits=8)`: bytes q packed four to a uint32, and per group of G values of a
// row a scale and a bias; value = scale * q + bias).
//
// Shapes: q and out (B, Hq, L, D); the cache k, v (B, Hkv, S_cap, D), 8-bit: (B, Hkv,
// S_cap, D / 4) uint32 with scales and biases (B, Hkv, S_cap, D / G); its first kv_len
// positions are valid. Query i (0..L-1) sits at position kv_len - L + i and sees keys
// 0 .. kv_len - L + i.
//
// Work split: one threadgroup per (batch * head, query); its NSG SIMD groups take keys
// round-robin, each lane owning D / 32 consecutive elements of q and of the output. Each
// SIMD group keeps an online softmax (running max m, sum l, weighted values o); the
// groups then merge through threadgroup memory: out = sum_s o_s e^(m_s - M) /
// sum_s l_s e^(m_s - M) with M the largest m_s (a group that saw no key has m_s = -inf and
// drops out).
//
// === header ===
template <typename T>
struct KVPlain {
  const device T* k;
  const device T* v;
  float key(ulong index) const { return float(k[index]); }
  float value(ulong index) const { return float(v[index]); }
};

template <typename T>
KVPlain<T> plain_kv(const device T* k, const device T* v) {
  return KVPlain<T>{k, v};
}

// 8-bit values (byte `index` of the packed words: MLX packs little-endian) times the
// scale of their group of G along the row, plus its bias.
template <int G, typename S>
struct KVAffine8 {
  const device uint8_t* k;
  const device uint8_t* v;
  const device S* k_scales;
  const device S* k_biases;
  const device S* v_scales;
  const device S* v_biases;
  float key(ulong index) const { return float(k[index]) * float(k_scales[index / G]) + float(k_biases[index / G]); }
  float value(ulong index) const { return float(v[index]) * float(v_scales[index / G]) + float(v_biases[index / G]); }
};

template <int G, typename S>
KVAffine8<G, S> affine8_kv(const device uint32_t* k, const device uint32_t* v, const device S* k_scales,
                           const device S* k_biases, const device S* v_scales, const device S* v_biases) {
  return KVAffine8<G, S>{(const device uint8_t*)k, (const device uint8_t*)v, k_scales, k_biases, v_scales, v_biases};
}

template <int D, int NSG, typename KV, typename TQ, typename TO>
void sdpa_decode(const device TQ* q, KV kv, device TO* out, const constant int* q_shape, const constant int* k_shape,
                 int kv_len, float scale, threadgroup float* shared_o, threadgroup float* shared_ml,
                 uint simdgroup, uint lane, uint3 group) {
  constexpr int PER_LANE = D / 32;
  const int n_q_heads = q_shape[1];
  const int n_queries = q_shape[2];
  const int n_kv_heads = k_shape[1];
  const int cache_len = k_shape[2];
  const int query = int(group.y);
  const int batch_head = int(group.z);  // b * Hq + h
  const int batch = batch_head / n_q_heads;
  const int kv_head = batch * n_kv_heads + (batch_head % n_q_heads) / (n_q_heads / n_kv_heads);
  const int last_key = kv_len - n_queries + query;  // the causal mask
  const ulong q_row = ulong(batch_head) * ulong(n_queries) + ulong(query);
  const int first = int(lane) * PER_LANE;

  float qv[PER_LANE];
  float o[PER_LANE];
  for (int t = 0; t < PER_LANE; t++) {
    qv[t] = float(q[q_row * D + first + t]) * scale;
    o[t] = 0.0f;
  }
  float m = -INFINITY;
  float l = 0.0f;
  const ulong cache_base = ulong(kv_head) * ulong(cache_len);
  for (int j = int(simdgroup); j <= last_key; j += NSG) {
    const ulong row = (cache_base + ulong(j)) * D + first;
    float partial = 0.0f;
    for (int t = 0; t < PER_LANE; t++) {
      partial += qv[t] * kv.key(row + t);
    }
    const float s = simd_sum(partial);
    const float m_new = max(m, s);
    const float correction = exp(m - m_new);
    const float p = exp(s - m_new);
    l = l * correction + p;
    for (int t = 0; t < PER_LANE; t++) {
      o[t] = o[t] * correction + p * kv.value(row + t);
    }
    m = m_new;
  }

  for (int t = 0; t < PER_LANE; t++) {
    shared_o[simdgroup * D + first + t] = o[t];
  }
  if (lane == 0) {
    shared_ml[simdgroup] = m;
    shared_ml[NSG + simdgroup] = l;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);

  float m_all = -INFINITY;
  for (int s = 0; s < NSG; s++) {
    m_all = max(m_all, shared_ml[s]);
  }
  float denominator = 0.0f;
  for (int s = 0; s < NSG; s++) {
    denominator += shared_ml[NSG + s] * exp(shared_ml[s] - m_all);
  }
  for (int d = int(simdgroup) * 32 + int(lane); d < D; d += NSG * 32) {
    float numerator = 0.0f;
    for (int s = 0; s < NSG; s++) {
      numerator += shared_o[s * D + d] * exp(shared_ml[s] - m_all);
    }
    out[q_row * D + d] = numerator / denominator;
  }
}

// === kernel float ===
threadgroup float shared_o[NSG * D];
threadgroup float shared_ml[2 * NSG];
sdpa_decode<D, NSG>(q, plain_kv(k, v), out, q_shape, k_shape, kv_len, scale, shared_o, shared_ml,
                    simdgroup_index_in_threadgroup, thread_index_in_simdgroup, threadgroup_position_in_grid);

// === kernel affine8 ===
threadgroup float shared_o[NSG * D];
threadgroup float shared_ml[2 * NSG];
sdpa_decode<D, NSG>(q, affine8_kv<G>(k, v, k_scales, k_biases, v_scales, v_biases), out, q_shape, k_shape, kv_len,
                    scale, shared_o, shared_ml, simdgroup_index_in_threadgroup, thread_index_in_simdgroup,
                    threadgroup_position_in_grid);
