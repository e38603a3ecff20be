/* Attention of a few queries per row over that row's blocks in the paged KV pool, on the CPU.
 *
 * Decode steps and draft verification have 1-16 queries a row; reading each row's keys and values
 * straight from its blocks (one pass, online softmax) avoids gathering them into a padded batch
 * first, and int8 keys and values are dequantized as they are read, so a step reads a quarter of
 * the bytes. Built by engine/paged_attention.py with the machine's C compiler; kv_cache.py falls
 * back to gather + scaled_dot_product_attention without it.
 *
 * q, out: (B, H, T, D) float32, contiguous.  k, v: one layer of the pool, (n_blocks, bs, Hkv, D)
 * float32 or int8 (then k_scale, v_scale: (n_blocks, bs, Hkv)).  tables: (B, max_blocks).
 * positions: (B, T), the query positions; a row's first n_real[b] queries are real, the rest are
 * padding and get zeros.  window > 0 limits a query at p to keys in (p - window, p].
 */
#include <math.h>
#include <stdint.h>

#define MAX_HEAD_DIM 256
#define MAX_BLOCK 256

#define MAX_HEADS 128

/* One query position of one row, for heads [h0, h1), over keys [start, p] of the row's blocks.
 * The heads are the inner loop so that each cached token's keys (and then values) are read as one
 * contiguous run (one head at a time strides across the pool: int8, 64 rows x 264 positions x 12
 * heads, 10.8 -> 8.2 ms a layer). Inlined with D a constant where it can be, so the inner loops
 * unroll and the accumulators stay in registers (fp32, same shape: 14.6 -> 10.6 ms). */
static inline __attribute__((always_inline)) void attend_heads(
    const float *q, const void *k, const void *v, const float *k_scale, const float *v_scale,
    const int64_t *table, int64_t start, int64_t p, int64_t h0, int64_t h1, int64_t group, int64_t Hkv,
    const int64_t D, int64_t bs, int64_t q_stride, float scale, float *out, int64_t out_stride)
{
    float acc[MAX_HEADS * MAX_HEAD_DIM], scores[MAX_HEADS * MAX_BLOCK], m[MAX_HEADS], l[MAX_HEADS];
    const int64_t nh = h1 - h0;
    for (int64_t x = 0; x < nh * D; x++) acc[x] = 0.0f;
    for (int64_t x = 0; x < nh; x++) { m[x] = -1e30f; l[x] = 0.0f; }  /* below any score */
    for (int64_t j = start; j <= p;) {
        const int64_t block = table[j / bs], first = j % bs;
        const int64_t n = (bs - first < p - j + 1) ? bs - first : p - j + 1;
        for (int64_t i = 0; i < n; i++) {
            const int64_t token = (block * bs + first + i) * Hkv;
            for (int64_t x = 0; x < nh; x++) {
                const int64_t row = token + (h0 + x) / group;
                const float *qv = q + (h0 + x) * q_stride;
                float dot = 0.0f;
                if (k_scale) {
                    const int8_t *kr = (const int8_t *)k + row * D;
#pragma omp simd reduction(+:dot)
                    for (int64_t d = 0; d < D; d++) dot += qv[d] * (float)kr[d];
                    dot *= k_scale[row];
                } else {
                    const float *kr = (const float *)k + row * D;
#pragma omp simd reduction(+:dot)
                    for (int64_t d = 0; d < D; d++) dot += qv[d] * kr[d];
                }
                scores[x * MAX_BLOCK + i] = dot * scale;
            }
        }
        for (int64_t x = 0; x < nh; x++) {
            float *sx = scores + x * MAX_BLOCK, top = m[x];
            for (int64_t i = 0; i < n; i++) top = sx[i] > top ? sx[i] : top;
            if (top > m[x]) {  /* rescale what was summed under the old maximum */
                const float c = expf(m[x] - top);
                l[x] *= c;
                for (int64_t d = 0; d < D; d++) acc[x * D + d] *= c;
                m[x] = top;
            }
            const float mx = m[x];
#pragma omp simd
            for (int64_t i = 0; i < n; i++) sx[i] = expf(sx[i] - mx);
            for (int64_t i = 0; i < n; i++) l[x] += sx[i];
        }
        for (int64_t i = 0; i < n; i++) {
            const int64_t token = (block * bs + first + i) * Hkv;
            for (int64_t x = 0; x < nh; x++) {
                const int64_t row = token + (h0 + x) / group;
                float w = scores[x * MAX_BLOCK + i], *ax = acc + x * D;
                if (v_scale) {
                    const int8_t *vr = (const int8_t *)v + row * D;
                    w *= v_scale[row];
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) ax[d] += w * (float)vr[d];
                } else {
                    const float *vr = (const float *)v + row * D;
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) ax[d] += w * vr[d];
                }
            }
        }
        j += n;
    }
    for (int64_t x = 0; x < nh; x++) {
        const float inv = 1.0f / l[x];
        for (int64_t d = 0; d < D; d++) out[(h0 + x) * out_stride + d] = acc[x * D + d] * inv;
    }
}

void paged_attention(const float *q, const void *k, const void *v, const float *k_scale, const float *v_scale,
                     const int64_t *tables, int64_t max_blocks, const int64_t *positions, const int64_t *n_real,
                     float *out, int64_t B, int64_t H, int64_t Hkv, int64_t T, int64_t D, int64_t bs,
                     int64_t window, int64_t n_threads)
{
    const int64_t group = H / Hkv;
    const float scale = 1.0f / sqrtf((float)D);
    /* Work items: (row, query, slice of heads); heads are split only as far as the threads need. */
    int64_t splits = 1;
    while (B * T * splits < 4 * n_threads && splits * 2 <= H / group) splits *= 2;
    const int64_t per_split = (H + splits - 1) / splits;
#pragma omp parallel for collapse(3) schedule(dynamic) num_threads(n_threads)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t t = 0; t < T; t++) {
            for (int64_t s = 0; s < splits; s++) {
                /* a slice covers whole groups of query heads that share a key head */
                const int64_t h0 = (s * per_split) / group * group;
                const int64_t h1 = s == splits - 1 ? H : ((s + 1) * per_split) / group * group;
                const int64_t q_stride = T * D;  /* q and out are (B, H, T, D) */
                const float *qb = q + (b * H * T + t) * D;
                float *ob = out + (b * H * T + t) * D;
                if (t >= n_real[b]) {
                    for (int64_t h = h0; h < h1; h++)
                        for (int64_t d = 0; d < D; d++) ob[h * q_stride + d] = 0.0f;
                    continue;
                }
                const int64_t p = positions[b * T + t];
                const int64_t start = (window > 0 && p - window + 1 > 0) ? p - window + 1 : 0;
                const int64_t *table = tables + b * max_blocks;
                switch (D) {  /* the head sizes of the families we load */
                case 32: attend_heads(qb, k, v, k_scale, v_scale, table, start, p, h0, h1, group, Hkv, 32, bs,
                                      q_stride, scale, ob, q_stride); break;
                case 64: attend_heads(qb, k, v, k_scale, v_scale, table, start, p, h0, h1, group, Hkv, 64, bs,
                                      q_stride, scale, ob, q_stride); break;
                case 128: attend_heads(qb, k, v, k_scale, v_scale, table, start, p, h0, h1, group, Hkv, 128, bs,
                                       q_stride, scale, ob, q_stride); break;
                default: attend_heads(qb, k, v, k_scale, v_scale, table, start, p, h0, h1, group, Hkv, D, bs,
                                      q_stride, scale, ob, q_stride);
                }
            }
        }
    }
}
