/* MLCA's CPU kernels for one element type, included by _mlca_c.c once per type with
 *   T    the element type (float or double),
 *   SFX  the suffix of the function names (f or d).
 *
 * Shapes (all C-contiguous): x, g, out (P = B*C planes, H, W) -- (B, H, W, C) for the
 * channels_last functions at the end; local, gmix, glocal (P, ls*ls) bin-major inside a plane --
 * for the channels_last functions local and gmix are (B, ls*ls, C) instead; sig (B, C + ls*ls*C): per batch the C global gates, then the local
 * gates in the seed's sequence order (bin-major: element bin*C + c).
 *
 * Adaptive pooling from n to m uses the bins [floor(i*n/m), ceil((i+1)*n/m)), i < m. The four
 * maps MLCA needs are separable and come from two windows per axis (see struct axis in
 * _mlca_c.c): P (pool H x W -> ls x ls) averages each pooling window; U (adaptive "unpool"
 * ls x ls -> H x W) averages the bins in each pixel's unpooling window; U^T and P^T use the same
 * unpooling windows (the bins that hold pixel h are exactly [floor(h*ls/H), ceil((h+1)*ls/H)))
 * with the other side's weights. Every sum runs over window members only, never over a zero
 * weight, so NaN/Inf stay in the bins and pixels that hold them, as with adaptive pooling.
 */

#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define FN(name) CAT(name, SFX)

/* sum of v[0..n) in 4 interleaved partial sums (no single chain of n dependent adds; the order
 * is fixed, so the result does not depend on threads). */
static inline T FN(sum_lanes)(const T *v, int64_t n)
{
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += v[i];
        s1 += v[i + 1];
        s2 += v[i + 2];
        s3 += v[i + 3];
    }
    for (; i < n; ++i)
        s0 += v[i];
    return (s0 + s1) + (s2 + s3);
}

/* sum_i a[i] * b[i] in double, 8 interleaved partial sums (vectorises; fixed order). */
static inline double FN(dot_lanes)(const T *a, const T *b, int64_t n)
{
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; ++l)
            acc[l] += (double)a[i + l] * (double)b[i + l];
    for (; i < n; ++i)
        acc[0] += (double)a[i] * (double)b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* s[j] = sum of row[j*kw .. j*kw + kw) for j < ls, summed left to right. The common widths get
 * a compile-time kw (fully unrolled bins); others a generic loop. */
#define BLOCK_SUMS_K(KW)                                                                          \
    for (int64_t j = 0; j < ls; ++j) {                                                            \
        const T *b_ = row + j * (KW);                                                             \
        T a_ = b_[0];                                                                             \
        for (int u_ = 1; u_ < (KW); ++u_)                                                         \
            a_ += b_[u_];                                                                         \
        s[j] = a_;                                                                                \
    }
static inline void FN(block_sums)(const T *restrict row, int64_t ls, int64_t kw, T *restrict s)
{
    switch (kw) {
    case 1: BLOCK_SUMS_K(1) break;
    case 2: BLOCK_SUMS_K(2) break;
    case 3: BLOCK_SUMS_K(3) break;
    case 4: BLOCK_SUMS_K(4) break;
    case 8: BLOCK_SUMS_K(8) break;
    case 16: BLOCK_SUMS_K(16) break;
    default: BLOCK_SUMS_K(kw) break;
    }
}
#undef BLOCK_SUMS_K

/* local[p] = P(x[p]) for planes [p0, p1); acc: W + ls scratch. */
static void FN(pool_planes)(const T *restrict x, T *restrict local, int64_t p0, int64_t p1,
                           int64_t H, int64_t W, int64_t ls, const struct axis *ah,
                           const struct axis *aw, T *restrict acc)
{
    T *restrict s = acc + W;
    for (int64_t p = p0; p < p1; ++p) {
        const T *restrict xp = x + p * H * W;
        T *restrict lp = local + p * ls * ls;
        for (int64_t i = 0; i < ls; ++i) {
            const int64_t rs = ah->pool_start[i], re = ah->pool_end[i];
            const T *restrict r = xp + rs * W;
            for (int64_t w = 0; w < W; ++w)
                acc[w] = r[w];
            for (int64_t h = rs + 1; h < re; ++h) {
                r = xp + h * W;
                for (int64_t w = 0; w < W; ++w)
                    acc[w] += r[w];
            }
            if (aw->blocks) {
                const int64_t kw = W / ls;
                const T inv = (T)1 / (T)((re - rs) * kw);
                FN(block_sums)(acc, ls, kw, s);
                for (int64_t j = 0; j < ls; ++j)
                    lp[i * ls + j] = s[j] * inv;
                continue;
            }
            for (int64_t j = 0; j < ls; ++j) {
                const int64_t cs = aw->pool_start[j], ce = aw->pool_end[j];
                lp[i * ls + j] = FN(sum_lanes)(acc + cs, ce - cs) / (T)((re - rs) * (ce - cs));
            }
        }
    }
}

/* y[i] = sum_t w[t] * v[i + t - pad] over i in [i0, i1), zero padding outside [0, n): the
 * same-padded cross-correlation of nn.Conv1d. The interior (every tap inside [0, n)) runs with
 * the taps in registers, positions inner (vectorises; k = 3, 5, 7, 9 unrolled); the at most
 * pad positions at each end sum their valid taps only. */
#define CONV_K(K)                                                                                 \
    for (int64_t i = lo; i < hi; ++i) {                                                           \
        T a_ = 0;                                                                                 \
        for (int t_ = 0; t_ < (K); ++t_)                                                          \
            a_ += wt[t_] * v[i + t_ - pad];                                                       \
        y[i] = a_;                                                                                \
    }
static void FN(conv_same)(const T *restrict v, int64_t n, const T *restrict wt, int64_t k,
                          T *restrict y, int64_t i0, int64_t i1)
{
    const int64_t pad = (k - 1) / 2;
    int64_t lo = i0 > pad ? i0 : pad;
    lo = lo < i1 ? lo : i1;
    int64_t hi = i1 < n - pad ? i1 : n - pad;
    hi = hi > lo ? hi : lo;
    for (int64_t i = i0; i < i1; ++i) {
        if (i == lo)
            i = hi; /* skip the interior */
        if (i >= i1)
            break;
        T a = 0;
        for (int64_t t = 0; t < k; ++t) {
            const int64_t j = i + t - pad;
            if (j >= 0 && j < n)
                a += wt[t] * v[j];
        }
        y[i] = a;
    }
    switch (k) {
    case 3: CONV_K(3) break;
    case 5: CONV_K(5) break;
    case 7: CONV_K(7) break;
    case 9: CONV_K(9) break;
    default: CONV_K(k) break;
    }
}
#undef CONV_K

/* From local (P, ls*ls): gvec (B, C) the bin means and seq (B, ls*ls*C) the bin-major sequence,
 * for planes [p0, p1). */
static void FN(gather_small)(const T *local, T *gvec, T *seq, int64_t p0, int64_t p1, int64_t C,
                             int64_t bins)
{
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / C, c = p % C;
        const T *lp = local + p * bins;
        T *sq = seq + b * bins * C + c;
        for (int64_t q = 0; q < bins; ++q)
            sq[q * C] = lp[q];
        gvec[p] = FN(sum_lanes)(lp, bins) / (T)bins;
    }
}

/* Gates in place: v[i] = sigmoid(v[i]), i < n. */
static CLONES void FN(sigmoid_range)(T *restrict v, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
        v[i] = FN(sigmoid)(v[i]);
}

/* pre[b] = [conv(gvec[b], wg) | conv(seq[b], wl)] for batches [b0, b1), rows of C + L
 * (L = ls*ls*C): the gates, through the sigmoid when ``gate`` (each task applies it to the slice
 * it just wrote), else before it. A worksharing loop: call inside a parallel region. */
static void FN(gate_convs)(const T *gvec, const T *seq, T *pre, const T *wg, const T *wl,
                           int64_t b0, int64_t b1, int64_t C, int64_t L, int64_t k, int gate)
{
    const int64_t nb = b1 - b0, nl = conv_tasks(nb, L), ng = conv_tasks(nb, C), row = C + L;
#pragma omp for schedule(static, 1)
    for (int64_t task = 0; task < nl + ng; ++task) {
        T *y;
        int64_t c0, c1;
        if (task < nl) {
            const int64_t per = nl / nb, b = b0 + task / per;
            c0 = (task % per) * CONV_CHUNK;
            c1 = c0 + CONV_CHUNK < L ? c0 + CONV_CHUNK : L;
            y = pre + b * row + C;
            FN(conv_same)(seq + b * L, L, wl, k, y, c0, c1);
        } else {
            const int64_t t2 = task - nl, per = ng / nb, b = b0 + t2 / per;
            c0 = (t2 % per) * CONV_CHUNK;
            c1 = c0 + CONV_CHUNK < C ? c0 + CONV_CHUNK : C;
            y = pre + b * row;
            FN(conv_same)(gvec + b * C, C, wg, k, y, c0, c1);
        }
        if (gate)
            FN(sigmoid_range)(y + c0, c1 - c0);
    }
}

/* mix of plane (b, c) from the gates: mix[bin] = sg (1 - lw) + sl[bin] lw (the seed's blend). */
static void FN(plane_mix)(const T *sig, int64_t b, int64_t c, int64_t C, int64_t bins, T lw,
                          T *mix)
{
    const T *sb = sig + b * (C + bins * C);
    const T g = sb[c] * ((T)1 - lw);
    for (int64_t q = 0; q < bins; ++q)
        mix[q] = g + sb[C + q * C + c] * lw;
}

/* m (ls, W) = the W direction of U (adjoint 0: each pixel averages its unpooling window's
 * bins) or of P^T (adjoint 1: each pixel sums its window's bins, each divided by the length of
 * that bin's pooling window and by ``hdiv``) applied to the rows of s (ls, ls). */
static void FN(spread_w)(const T *s, int64_t ls, int64_t W, const struct axis *aw, int adjoint,
                         T hdiv, T *m)
{
    for (int64_t i = 0; i < ls; ++i) {
        const T *si = s + i * ls;
        T *mi = m + i * W;
        if (aw->blocks) {
            const int64_t kw = W / ls;
            const T scale = adjoint ? (T)1 / ((T)kw * hdiv) : (T)1;
            for (int64_t j = 0; j < ls; ++j) {
                const T v = adjoint ? si[j] * scale : si[j];
                for (int64_t w = 0; w < kw; ++w)
                    mi[j * kw + w] = v;
            }
            continue;
        }
        for (int64_t w = 0; w < W; ++w) {
            const int64_t js = aw->unpool_start[w], je = aw->unpool_end[w];
            T acc = 0;
            if (adjoint) {
                for (int64_t j = js; j < je; ++j)
                    acc += si[j] * ((T)aw->pool_inv[j] / hdiv);
            } else {
                for (int64_t j = js; j < je; ++j)
                    acc += si[j];
                acc = acc * (T)aw->unpool_inv[w];
            }
            mi[w] = acc;
        }
    }
}

/* The H-direction row of pixel row h from m (ls, W): U averages the window's rows (adjoint 0),
 * P^T sums them divided by their pooling bins' lengths (adjoint 1). Returns m's row itself for a
 * one-row window (for P^T only in the block case, where spread_w has divided by kh already).
 * ``last`` (2 entries, {-1, -1} at the start of a plane) remembers the window tmp holds: the
 * windows of consecutive rows repeat, and a repeated one is not rebuilt. */
static inline const T *FN(row_h)(const T *m, int64_t W, int64_t h, const struct axis *ah,
                                int adjoint, T *restrict tmp, int64_t *last)
{
    const int64_t is = ah->unpool_start[h], ie = ah->unpool_end[h];
    if (ie - is == 1 && (!adjoint || ah->blocks))
        return m + is * W;
    if (last[0] == is && last[1] == ie)
        return tmp;
    last[0] = is;
    last[1] = ie;
    for (int64_t w = 0; w < W; ++w)
        tmp[w] = 0;
    for (int64_t i = is; i < ie; ++i) {
        const T f = adjoint ? (T)ah->pool_inv[i] : (T)ah->unpool_inv[h];
        const T *restrict mi = m + i * W;
        for (int64_t w = 0; w < W; ++w)
            tmp[w] += mi[w] * f;
    }
    return tmp;
}

/* o[w] = x[w] * a[w], w < W; ``stream``: with non-temporal stores (no read of o's lines
 * before writing them, which a plain store of a line not in cache costs). The caller streams only
 * when every row starts 16-byte aligned and W is a multiple of the vector width (see
 * stream_rows), so every store to a streamed line is a non-temporal one: mixing plain stores
 * into a line being written non-temporally makes each partial line a separate memory write
 * (measured 10x slower at W = 13). */
static inline void FN(mul_row)(T *restrict o, const T *restrict xr, const T *restrict a, int64_t W,
                               int stream)
{
    int64_t w = 0;
#ifdef HAVE_STREAM
    if (stream)
        for (; w + VEC_N <= W; w += VEC_N)
            VEC_STREAM(o + w, VEC_MUL(VEC_LOADU(xr + w), VEC_LOADU(a + w)));
#endif
    for (; w < W; ++w)
        o[w] = xr[w] * a[w];
}

/* o[w] = gr[w] * a[w] + q[w], w < W; ``stream`` as in mul_row. */
static inline void FN(fma_row)(T *restrict o, const T *restrict gr, const T *restrict a,
                               const T *restrict q, int64_t W, int stream)
{
    int64_t w = 0;
#ifdef HAVE_STREAM
    if (stream)
        for (; w + VEC_N <= W; w += VEC_N)
            VEC_STREAM(o + w, VEC_ADD(VEC_MUL(VEC_LOADU(gr + w), VEC_LOADU(a + w)),
                                      VEC_LOADU(q + w)));
#endif
    for (; w < W; ++w)
        o[w] = gr[w] * a[w] + q[w];
}

/* Whether rows of width W written to ``out`` can all be streamed (see mul_row). */
static int FN(stream_rows)(const T *out, int64_t W, int requested)
{
#ifdef HAVE_STREAM
    return requested && W % VEC_N == 0 && ((uintptr_t)out & 15) == 0;
#else
    (void)out;
    (void)W;
    (void)requested;
    return 0;
#endif
}

/* out[p] = x[p] * U(mix_p) for planes [p0, p1); buf: bins + (ls + 1) * W scratch.
 * ``ahead`` > 0: while scaling plane p, prefetch plane p + ahead (the plane this thread pools
 * next, in the next batch group), so that the next group's reads from memory overlap this
 * group's writes instead of following them. */
static void FN(scale_planes)(const T *restrict x, T *restrict out, const T *sig, int64_t p0,
                             int64_t p1, int64_t C, int64_t H, int64_t W, int64_t ls, T lw,
                             const struct axis *ah, const struct axis *aw, T *buf, int stream,
                             int64_t ahead, int64_t P)
{
    const int64_t line = 64 / (int64_t)sizeof(T);
    const int64_t bins = ls * ls;
    T *mix = buf, *m = buf + bins, *tmp = m + ls * W;
    for (int64_t p = p0; p < p1; ++p) {
        FN(plane_mix)(sig, p / C, p % C, C, bins, lw, mix);
        FN(spread_w)(mix, ls, W, aw, 0, (T)1, m);
        const T *restrict xp = x + p * H * W;
        T *restrict op = out + p * H * W;
        int64_t last[2] = {-1, -1};
        const T *next = ahead > 0 && p + ahead < P ? x + (p + ahead) * H * W : NULL;
        for (int64_t h = 0; h < H; ++h) {
            const T *restrict a = FN(row_h)(m, W, h, ah, 0, tmp, last);
            if (next != NULL)
                for (int64_t w = 0; w < W; w += line)
                    PREFETCH(next + h * W + w);
            FN(mul_row)(op + h * W, xp + h * W, a, W, stream);
        }
    }
}

/* gmix[p] = U^T(g[p] * x[p]) for planes [p0, p1); acc: ls * W scratch. */
static void FN(gx_pool_planes)(const T *restrict g, const T *restrict x, T *restrict gmix,
                               int64_t p0, int64_t p1, int64_t H, int64_t W, int64_t ls,
                               const struct axis *ah, const struct axis *aw, T *restrict acc)
{
    for (int64_t p = p0; p < p1; ++p) {
        const T *restrict gp = g + p * H * W, *restrict xp = x + p * H * W;
        for (int64_t q = 0; q < ls * W; ++q)
            acc[q] = 0;
        for (int64_t h = 0; h < H; ++h) {
            const int64_t is = ah->unpool_start[h], ie = ah->unpool_end[h];
            const T *restrict gr = gp + h * W, *restrict xr = xp + h * W;
            if (ie - is == 1) {
                T *restrict ai = acc + is * W;
                for (int64_t w = 0; w < W; ++w)
                    ai[w] += gr[w] * xr[w];
                continue;
            }
            const T inv = (T)ah->unpool_inv[h];
            for (int64_t i = is; i < ie; ++i) {
                T *restrict ai = acc + i * W;
                for (int64_t w = 0; w < W; ++w)
                    ai[w] += gr[w] * xr[w] * inv;
            }
        }
        T *gm = gmix + p * ls * ls;
        for (int64_t i = 0; i < ls; ++i) {
            const T *ai = acc + i * W;
            if (aw->blocks) {
                FN(block_sums)(ai, ls, W / ls, gm + i * ls);
                continue;
            }
            for (int64_t j = 0; j < ls; ++j)
                gm[i * ls + j] = 0;
            for (int64_t w = 0; w < W; ++w) {
                const int64_t js = aw->unpool_start[w], je = aw->unpool_end[w];
                if (je - js == 1) {
                    gm[i * ls + js] += ai[w];
                    continue;
                }
                const T inv = (T)aw->unpool_inv[w];
                for (int64_t j = js; j < je; ++j)
                    gm[i * ls + j] += ai[w] * inv;
            }
        }
    }
}

/* gx[p] = g[p] * U(mix_p) + P^T(glocal[p]) for planes [p0, p1); buf: bins + 2 (ls + 1) W. */
static void FN(dx_planes)(const T *restrict g, T *restrict gx, const T *sig,
                          const T *glocal, int64_t p0, int64_t p1, int64_t C, int64_t H,
                          int64_t W, int64_t ls, T lw, const struct axis *ah,
                          const struct axis *aw, T *buf, int stream)
{
    const int64_t bins = ls * ls;
    T *mix = buf, *m = buf + bins, *pt = m + ls * W, *tmp_a = pt + ls * W, *tmp_p = tmp_a + W;
    for (int64_t p = p0; p < p1; ++p) {
        FN(plane_mix)(sig, p / C, p % C, C, bins, lw, mix);
        FN(spread_w)(mix, ls, W, aw, 0, (T)1, m);
        FN(spread_w)(glocal + p * bins, ls, W, aw, 1, ah->blocks ? (T)(H / ls) : (T)1, pt);
        const T *restrict gp = g + p * H * W;
        T *restrict op = gx + p * H * W;
        int64_t last_a[2] = {-1, -1}, last_p[2] = {-1, -1};
        for (int64_t h = 0; h < H; ++h) {
            const T *restrict a = FN(row_h)(m, W, h, ah, 0, tmp_a, last_a);
            const T *restrict q = FN(row_h)(pt, W, h, ah, 1, tmp_p, last_p);
            FN(fma_row)(op + h * W, gp + h * W, a, q, W, stream);
        }
    }
}

/* Per-thread scratch for every plane loop above. */
static size_t FN(scratch)(int64_t W, int64_t ls)
{
    return sizeof(T) * (size_t)(ls * ls + 2 * (ls + 1) * W + W + ls);
}

/* Batches per group: both passes over a group's planes run back to back, so the second finds
 * them in cache (~1 MiB of x per group) instead of reading x from memory twice. */
static int64_t FN(group_batches)(int64_t B, int64_t C, int64_t H, int64_t W)
{
    const int64_t per = C * H * W * (int64_t)sizeof(T);
    int64_t n = (int64_t)(GROUP_BYTES) / (per > 0 ? per : 1);
    return n < 1 ? 1 : (n > B ? B : n);
}

/* The forward: out = x * U(mix(P x)) (B, C, H, W); local = P x (B, C, ls, ls), saved for the
 * backward. One parallel region; per group of batches: pool | gate convs | sigmoid | scale. */
static int FN(forward)(const T *x, T *out, T *local, const T *wg, const T *wl, int64_t B,
                       int64_t C, int64_t H, int64_t W, int64_t ls, int64_t k, T lw, int nthreads,
                       int stream)
{
    const int64_t P = B * C, bins = ls * ls, L = bins * C, row = C + L;
    const int64_t gb = FN(group_batches)(B, C, H, W);
    /* prefetching the next group pays while a group fits in cache (measured: -10 to -16 % at
     * (16, 64..256, 80..20) with inputs from memory; +3 % at 6.5 MB groups) */
    const int64_t ahead = gb * C * H * W * (int64_t)sizeof(T) <= (2 << 20) ? gb * C : 0;
    stream = FN(stream_rows)(out, W, stream);
    struct axis ah = {0}, aw = {0};
    T *gvec = NULL, *seq = NULL, *pre = NULL;
    int err = axis_init(&ah, H, ls) || axis_init(&aw, W, ls);
    if (!err) {
        gvec = (T *)malloc(sizeof(T) * (size_t)P);
        seq = (T *)malloc(sizeof(T) * (size_t)(B * L));
        pre = (T *)malloc(sizeof(T) * (size_t)(B * row));
        err = gvec == NULL || seq == NULL || pre == NULL;
    }
    if (!err) {
#pragma omp parallel num_threads(use_threads(P * H * W, nthreads))
        {
            T *buf = (T *)thread_alloc(FN(scratch)(W, ls), &err);
            for (int64_t b0 = 0; b0 < B; b0 += gb) {
                const int64_t b1 = b0 + gb < B ? b0 + gb : B;
                int64_t p0, p1;
                split_range((b1 - b0) * C, &p0, &p1);
                p0 += b0 * C;
                p1 += b0 * C;
                if (buf != NULL) {
                    FN(pool_planes)(x, local, p0, p1, H, W, ls, &ah, &aw, buf);
                    FN(gather_small)(local, gvec, seq, p0, p1, C, bins);
                }
#pragma omp barrier
                FN(gate_convs)(gvec, seq, pre, wg, wl, b0, b1, C, L, k, 1);
                if (buf != NULL)
                    FN(scale_planes)(x, out, pre, p0, p1, C, H, W, ls, lw, &ah, &aw, buf,
                                     stream, ahead, P);
            }
            free(buf);
            stream_fence(stream);
        }
    }
    free(gvec);
    free(seq);
    free(pre);
    axis_free(&ah);
    axis_free(&aw);
    return err;
}

/* The backward's small temporaries, for both memory layouts: gvec, gyg (P); seq, gyl (B*L);
 * pre, gpre (B*(C+L)); gmix, glocal (P*bins: plane-major for NCHW; for NHWC gmix is bin-major
 * (B, bins, C) and glocal unused); the taps reversed (the adjoint of a correlation is the
 * correlation with reversed taps); pw, the weight-gradient terms pw[which][b][t] in double; and,
 * for NHWC, the per-batch tables mixb, ptb (B*L). */
struct FN(bwd_ws) {
    T *gvec, *gyg, *seq, *gyl, *pre, *gpre, *gmix, *glocal, *wgf, *wlf, *mixb, *ptb;
    double *pw;
};

static void FN(bwd_free)(struct FN(bwd_ws) *s)
{
    free(s->gvec);
    free(s->pw);
}

static int FN(bwd_init)(struct FN(bwd_ws) *s, const T *wg, const T *wl, int64_t B, int64_t C,
                        int64_t ls, int64_t k, int tables)
{
    const int64_t P = B * C, bins = ls * ls, L = bins * C, row = C + L;
    const int64_t total = 2 * P + (tables ? 4 : 2) * B * L + 2 * B * row + 2 * P * bins + 2 * k;
    memset(s, 0, sizeof(*s));
    s->gvec = (T *)malloc(sizeof(T) * (size_t)total);
    s->pw = (double *)calloc((size_t)(2 * B * k), sizeof(double));
    if (s->gvec == NULL || s->pw == NULL) {
        FN(bwd_free)(s);
        return 1;
    }
    s->gyg = s->gvec + P;
    s->seq = s->gyg + P;
    s->gyl = s->seq + B * L;
    s->pre = s->gyl + B * L;
    s->gpre = s->pre + B * row;
    s->gmix = s->gpre + B * row;
    s->glocal = s->gmix + P * bins;
    s->wgf = s->glocal + P * bins;
    s->wlf = s->wgf + k;
    if (tables) {
        s->mixb = s->wlf + k;
        s->ptb = s->mixb + B * L;
    }
    for (int64_t t = 0; t < k; ++t) {
        s->wgf[t] = wg[k - 1 - t];
        s->wlf[t] = wl[k - 1 - t];
    }
    return 0;
}

/* gwl, gwg (k) = the weight-gradient terms summed over batches in order (the same bits for any
 * thread count); which 0: the local conv, 1: the global one. */
static void FN(weight_grads)(const struct FN(bwd_ws) *s, int64_t B, int64_t k, T *gwg, T *gwl)
{
    for (int64_t t = 0; t < k; ++t) {
        double sl = 0, sg = 0;
        for (int64_t b = 0; b < B; ++b) {
            sl += s->pw[b * k + t];
            sg += s->pw[B * k + b * k + t];
        }
        gwl[t] = (T)sl;
        gwg[t] = (T)sg;
    }
}

/* The transposed gate convs, gpre = [conv^T(gyg, wg) | conv^T(gyl, wl)] per batch, and the
 * weight-gradient terms pw[which][b][t] = sum_i gy[i] v[i + t - pad] (double), for batches
 * [b0, b1) once gyg, gyl are complete. Worksharing loops: every thread of a region calls it. */
static void FN(gate_convs_backward)(const struct FN(bwd_ws) *ws, int64_t b0, int64_t b1, int64_t B,
                                    int64_t C, int64_t ls, int64_t k)
{
    const int64_t L = ls * ls * C, pad = (k - 1) / 2, nb = b1 - b0;
    const T *gvec = ws->gvec, *seq = ws->seq, *gyg = ws->gyg, *gyl = ws->gyl;
    double *pw = ws->pw;
    FN(gate_convs)(gyg, gyl, ws->gpre, ws->wgf, ws->wlf, b0, b1, C, L, k, 0);
#pragma omp for schedule(static, 1)
    for (int64_t task = 0; task < 2 * nb * k; ++task) {
        const int64_t which = task / (nb * k), b = b0 + (task / k) % nb, t = task % k;
        const T *gy = which ? gyg + b * C : gyl + b * L;
        const T *v = which ? gvec + b * C : seq + b * L;
        const int64_t n = which ? C : L;
        const int64_t lo = pad - t > 0 ? pad - t : 0;
        const int64_t hi = n + pad - t < n ? n + pad - t : n;
        pw[which * B * k + b * k + t] =
            hi > lo ? FN(dot_lanes)(gy + lo, v + lo + t - pad, hi - lo) : 0.0;
    }
}

/* The backward of the gates (steps 2-4) for batches [b0, b1), called by every thread of a region
 * with its share [p0, p1) of those batches' planes, once gmix = dL/dmix (P, bins) is complete:
 * recomputes the gates into pre, then gyl/gyg (the gradients before the sigmoids), the transposed
 * convolutions into gpre, the weight-gradient terms pw[which][b][t] (double) and
 * glocal = dL/dlocal (P, bins). Contains barriers: every thread must call it. */
static void FN(gate_chain_backward)(const struct FN(bwd_ws) *ws, const T *wg, const T *wl, T lw,
                                    int64_t b0, int64_t b1, int64_t p0, int64_t p1, int64_t B,
                                    int64_t C, int64_t ls, int64_t k)
{
    const int64_t bins = ls * ls, L = bins * C, row = C + L;
    const T *gvec = ws->gvec, *seq = ws->seq, *gmix = ws->gmix;
    T *pre = ws->pre, *gyl = ws->gyl, *gyg = ws->gyg, *gpre = ws->gpre, *glocal = ws->glocal;
    FN(gate_convs)(gvec, seq, pre, wg, wl, b0, b1, C, L, k, 1);
    /* gradients of the gates' pre-activations (mix = sg (1 - lw) + sl lw) */
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / C, c = p % C;
        const T *sb = pre + b * row;
        const T *gm = gmix + p * bins;
        for (int64_t q = 0; q < bins; ++q) {
            const T s = sb[C + q * C + c];
            gyl[b * L + q * C + c] = gm[q] * lw * s * ((T)1 - s);
        }
        const T s = sb[c];
        gyg[p] = FN(sum_lanes)(gm, bins) * ((T)1 - lw) * s * ((T)1 - s);
    }
#pragma omp barrier
    FN(gate_convs_backward)(ws, b0, b1, B, C, ls, k);
    /* glocal[b, c, bin] = dL/dseq[b, bin*C + c] + dL/dgvec[b, c] / bins */
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / C, c = p % C;
        const T gg = gpre[b * row + c] / (T)bins;
        const T *gs = gpre + b * row + C + c;
        T *gl = glocal + p * bins;
        for (int64_t q = 0; q < bins; ++q)
            gl[q] = gs[q * C] + gg;
    }
}

/* The backward from g = dL/dout (B, C, H, W), x and the saved local: gx = dL/dx (skipped when
 * NULL), gwg, gwl = dL/dw (k). Per group of batches: U^T(g x) and the gates | the gate chain |
 * the transposed convs and weight-gradient terms | g U(mix) + P^T(dlocal). Weight gradients are
 * accumulated in double per (batch, tap) and summed over batches in order: the same bits for any
 * thread count. */
static int FN(backward)(const T *g, const T *x, const T *local, const T *wg, const T *wl, T lw,
                        int64_t B, int64_t C, int64_t H, int64_t W, int64_t ls, int64_t k, T *gx,
                        T *gwg, T *gwl, int nthreads, int stream)
{
    const int64_t P = B * C, bins = ls * ls;
    const int64_t gb = FN(group_batches)(B, C, H, W);
    stream = gx != NULL && FN(stream_rows)(gx, W, stream);
    struct axis ah = {0}, aw = {0};
    struct FN(bwd_ws) ws;
    int err = axis_init(&ah, H, ls) || axis_init(&aw, W, ls) ||
              FN(bwd_init)(&ws, wg, wl, B, C, ls, k, 0);
    if (!err) {
#pragma omp parallel num_threads(use_threads(P * H * W, nthreads))
        {
            T *buf = (T *)thread_alloc(FN(scratch)(W, ls), &err);
            for (int64_t b0 = 0; b0 < B; b0 += gb) {
                const int64_t b1 = b0 + gb < B ? b0 + gb : B, nb = b1 - b0;
                int64_t p0, p1;
                split_range(nb * C, &p0, &p1);
                p0 += b0 * C;
                p1 += b0 * C;
                if (buf != NULL)
                    FN(gx_pool_planes)(g, x, ws.gmix, p0, p1, H, W, ls, &ah, &aw, buf);
                FN(gather_small)(local, ws.gvec, ws.seq, p0, p1, C, bins);
#pragma omp barrier
                FN(gate_chain_backward)(&ws, wg, wl, lw, b0, b1, p0, p1, B, C, ls, k);
#pragma omp barrier
                if (buf != NULL && gx != NULL)
                    FN(dx_planes)(g, gx, ws.pre, ws.glocal, p0, p1, C, H, W, ls, lw, &ah, &aw,
                                  buf, stream);
            }
            free(buf);
            stream_fence(stream);
        }
        FN(weight_grads)(&ws, B, k, gwg, gwl);
        FN(bwd_free)(&ws);
    }
    axis_free(&ah);
    axis_free(&aw);
    return err;
}

/* ---- channels_last (NHWC): x, g, out, gx are (B, H, W, C). The bin-major gate sequence
 * (bin*C + c) is NHWC's own order, so pooling accumulates one C-vector per bin and scaling
 * multiplies each pixel's C-vector by its window's gate vector; tasks are (batch, bin row) for
 * the pooling passes and (batch, image row) for the scaling passes. ---- */

/* acc (ls, C) = the sums over the pooling window of bin row i of batch b: each pixel's C-vector
 * is added to every bin whose window holds it. adjoint 0: of x (pooling, P before the division
 * by the window area); adjoint 1: of g * x, each pixel weighted 1 / (|I(h)| |J(w)|) (U^T). */
static void FN(nhwc_bin_row)(const T *restrict x, const T *restrict g, int64_t b, int64_t i,
                             int64_t H, int64_t W, int64_t C, const struct axis *ah,
                             const struct axis *aw, int adjoint, T *restrict acc)
{
    const int64_t ls = aw->ls;
    for (int64_t q = 0; q < ls * C; ++q)
        acc[q] = 0;
    for (int64_t h = ah->pool_start[i]; h < ah->pool_end[i]; ++h) {
        const T fh = adjoint ? (T)ah->unpool_inv[h] : (T)1;
        const T *restrict xr = x + (b * H + h) * W * C;
        const T *restrict gr = adjoint ? g + (b * H + h) * W * C : NULL;
        for (int64_t w = 0; w < W; ++w) {
            const int64_t js = aw->unpool_start[w], je = aw->unpool_end[w];
            const T *restrict v = xr + w * C;
            for (int64_t j = js; j < je; ++j) {
                T *restrict a = acc + j * C;
                if (adjoint) {
                    const T f = fh * (T)aw->unpool_inv[w];
                    const T *restrict gv = gr + w * C;
                    for (int64_t c = 0; c < C; ++c)
                        a[c] += gv[c] * v[c] * f;
                } else {
                    for (int64_t c = 0; c < C; ++c)
                        a[c] += v[c];
                }
            }
        }
    }
}

/* The window average (adjoint 0: U) or sum (adjoint 1: P^T, whose table is pre-scaled) of the
 * rows [r0, r1) of a table t with rows ``stride`` apart, C values each: the row itself when the
 * window has one row, else written to tmp. */
static const T *FN(nhwc_window)(const T *t, int64_t stride, int64_t r0, int64_t r1, int64_t C,
                                int adjoint, T *restrict tmp)
{
    if (r1 - r0 == 1)
        return t + r0 * stride;
    for (int64_t c = 0; c < C; ++c)
        tmp[c] = 0;
    for (int64_t r = r0; r < r1; ++r) {
        const T *restrict v = t + r * stride;
        for (int64_t c = 0; c < C; ++c)
            tmp[c] += v[c];
    }
    if (!adjoint) {
        const T inv = (T)1 / (T)(r1 - r0);
        for (int64_t c = 0; c < C; ++c)
            tmp[c] *= inv;
    }
    return tmp;
}

/* One image row h of batch b: out = x * U(mix) (pt NULL), or out = x * U(mix) + P^T (pt: the
 * pre-scaled P^T table; x is then g); mix, pt: this batch's (ls*ls, C) tables.
 * buf: 2 ls C + 4 C scratch. */
static void FN(nhwc_scale_row)(const T *restrict x, T *restrict out, const T *mix, const T *pt,
                               int64_t b, int64_t h, int64_t H, int64_t W, int64_t C,
                               const struct axis *ah, const struct axis *aw, T *buf, int stream)
{
    const int64_t ls = aw->ls;
    T *rm = buf, *rp = buf + ls * C, *ta = rp + ls * C, *tp = ta + C, *ua = tp + C, *up = ua + C;
    const int64_t is = ah->unpool_start[h], ie = ah->unpool_end[h];
    /* the row's (ls, C) tables: averaged over the H window (U), summed over it (P^T) */
    const T *rowm = mix + is * ls * C, *rowp = pt != NULL ? pt + is * ls * C : NULL;
    if (ie - is > 1) {
        for (int64_t j = 0; j < ls; ++j) {
            const T *m = FN(nhwc_window)(mix + j * C, ls * C, is, ie, C, 0, ta);
            for (int64_t c = 0; c < C; ++c)
                rm[j * C + c] = m[c];
            if (pt != NULL) {
                const T *q = FN(nhwc_window)(pt + j * C, ls * C, is, ie, C, 1, tp);
                for (int64_t c = 0; c < C; ++c)
                    rp[j * C + c] = q[c];
            }
        }
        rowm = rm;
        rowp = pt != NULL ? rp : NULL;
    }
    const T *restrict xr = x + (b * H + h) * W * C;
    T *restrict orow = out + (b * H + h) * W * C;
    for (int64_t w = 0; w < W; ++w) {
        const int64_t js = aw->unpool_start[w], je = aw->unpool_end[w];
        const T *a = FN(nhwc_window)(rowm, C, js, je, C, 0, ua);
        if (rowp == NULL) {
            FN(mul_row)(orow + w * C, xr + w * C, a, C, stream);
        } else {
            const T *q = FN(nhwc_window)(rowp, C, js, je, C, 1, up);
            FN(fma_row)(orow + w * C, xr + w * C, a, q, C, stream);
        }
    }
}

/* mixb (B, bins, C) from the gates pre (B, C + bins*C) and, when gpre = dL/dpre is given, ptb
 * (B, bins, C) = dL/dlocal / (pooling window area), where dL/dlocal[b, bin, c] =
 * gpre[b, C + bin*C + c] + gpre[b, c] / bins: the per-batch tables of nhwc_scale_row. Every
 * array is bin-major, so each (batch, bin) row is C contiguous values. A worksharing loop. */
static void FN(nhwc_tables)(const T *pre, const T *gpre, T *mixb, T *ptb, int64_t b0,
                            int64_t b1, int64_t C, int64_t ls, T lw, const struct axis *ah,
                            const struct axis *aw)
{
    const int64_t bins = ls * ls, L = bins * C, row = C + L;
#pragma omp for schedule(static)
    for (int64_t r = b0 * bins; r < b1 * bins; ++r) {
        const int64_t b = r / bins, q = r % bins;
        const T *restrict sg = pre + b * row, *restrict sl = sg + C + q * C;
        T *restrict mr = mixb + b * L + q * C;
        for (int64_t c = 0; c < C; ++c)
            mr[c] = sg[c] * ((T)1 - lw) + sl[c] * lw;
        if (gpre != NULL) {
            const T *restrict gg = gpre + b * row, *restrict gs = gg + C + q * C;
            const T fh = (T)ah->pool_inv[q / ls], fw = (T)aw->pool_inv[q % ls];
            T *restrict pr = ptb + b * L + q * C;
            for (int64_t c = 0; c < C; ++c)
                pr[c] = (gs[c] + gg[c] / (T)bins) * fh * fw;
        }
    }
}

/* out[c] = sum over the bins q of t[q*C + c] (one batch of a bin-major (bins, C) table), in
 * sum_lanes' order (4 interleaved partial sums over q, the tail in the first): the same bits as
 * sum_lanes over the plane's bins. buf: 4 C scratch. */
static void FN(bin_sums)(const T *restrict t, int64_t C, int64_t bins, T *restrict buf,
                         T *restrict out)
{
    T *restrict s0 = buf, *restrict s1 = buf + C, *restrict s2 = buf + 2 * C,
               *restrict s3 = buf + 3 * C;
    for (int64_t c = 0; c < 4 * C; ++c)
        buf[c] = 0;
    int64_t q = 0;
    for (; q + 4 <= bins; q += 4) {
        const T *restrict g0 = t + q * C, *restrict g1 = g0 + C, *restrict g2 = g1 + C,
                          *restrict g3 = g2 + C;
        for (int64_t c = 0; c < C; ++c) {
            s0[c] += g0[c];
            s1[c] += g1[c];
            s2[c] += g2[c];
            s3[c] += g3[c];
        }
    }
    for (; q < bins; ++q) {
        const T *restrict g0 = t + q * C;
        for (int64_t c = 0; c < C; ++c)
            s0[c] += g0[c];
    }
    for (int64_t c = 0; c < C; ++c)
        out[c] = (s0[c] + s1[c]) + (s2[c] + s3[c]);
}

/* gvec (B, C) = the bin means of local (B, bins, C), bin-major, for batches [b0, b1): the same
 * bits as gather_small's means. A worksharing loop; buf: 4 C scratch (NULL: skipped, the
 * caller reports the failed allocation). */
static void FN(nhwc_bin_means)(const T *local, T *gvec, int64_t b0, int64_t b1, int64_t C,
                               int64_t bins, T *buf)
{
#pragma omp for schedule(static)
    for (int64_t b = b0; b < b1; ++b) {
        if (buf == NULL)
            continue;
        T *restrict gv = gvec + b * C;
        FN(bin_sums)(local + b * bins * C, C, bins, buf, gv);
        for (int64_t c = 0; c < C; ++c)
            gv[c] = gv[c] / (T)bins;
    }
}

/* The gate chain of the NHWC backward: gate_chain_backward's steps for all B batches with every
 * array bin-major (gmix = dL/dmix (B, bins, C), complete), so that each step reads and writes
 * rows of C contiguous values: the gates into pre, gyl and gyg (the gradients before the
 * sigmoids; gyg sums the bins in sum_lanes' order), gpre and the weight-gradient terms. Contains
 * worksharing loops: every thread of the region calls it. buf: 4 C scratch (NULL: this thread's
 * allocation failed, the call reports it; the loops still run their barriers). */
static void FN(nhwc_gate_chain_backward)(const struct FN(bwd_ws) *ws, const T *wg, const T *wl,
                                         T lw, int64_t B, int64_t C, int64_t ls, int64_t k,
                                         T *buf)
{
    const int64_t bins = ls * ls, L = bins * C, row = C + L;
    const T *gmix = ws->gmix;
    T *pre = ws->pre, *gyl = ws->gyl, *gyg = ws->gyg;
    FN(gate_convs)(ws->gvec, ws->seq, pre, wg, wl, 0, B, C, L, k, 1);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < B * bins; ++r) {
        const int64_t b = r / bins, q = r % bins;
        const T *restrict s = pre + b * row + C + q * C;
        const T *restrict gm = gmix + b * L + q * C;
        T *restrict gy = gyl + b * L + q * C;
        for (int64_t c = 0; c < C; ++c)
            gy[c] = gm[c] * lw * s[c] * ((T)1 - s[c]);
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
        if (buf == NULL)
            continue;
        const T *restrict sg = pre + b * row;
        T *restrict gg = gyg + b * C;
        FN(bin_sums)(gmix + b * L, C, bins, buf, gg);
        for (int64_t c = 0; c < C; ++c)
            gg[c] = gg[c] * ((T)1 - lw) * sg[c] * ((T)1 - sg[c]);
    }
    FN(gate_convs_backward)(ws, 0, B, B, C, ls, k);
}

/* Scratch per thread of the NHWC passes. */
static size_t FN(nhwc_scratch)(int64_t ls, int64_t C)
{
    return sizeof(T) * (size_t)(2 * ls * C + 4 * C);
}

/* Forward for channels_last x, out (B, H, W, C); local = P x as in forward() but bin-major,
 * (B, ls, ls, C) in memory (a channels_last (B, C, ls, ls) tensor): that is the gate sequence's
 * own order, so local is the sequence the local conv reads, and backward_nhwc reads it back. */
static int FN(forward_nhwc)(const T *x, T *out, T *local, const T *wg, const T *wl, int64_t B,
                            int64_t C, int64_t H, int64_t W, int64_t ls, int64_t k, T lw,
                            int nthreads, int stream)
{
    const int64_t P = B * C, bins = ls * ls, L = bins * C, row = C + L;
    /* Groups of 2 batches when a batch holds 1 MiB of x or more (measured, NHWC: 8 % faster at
     * (16, 64, 80, 80), no change at 40x40 and 52x52); smaller batches in one group (grouping them
     * cost 22 % at 20x20 and 13x13: the pooling tasks are (batch, bin row), too few per group,
     * and the barriers add up). */
    const int64_t gb = FN(group_batches)(B, C, H, W) >= 2 || B < 2 ? B : 2;
    struct axis ah = {0}, aw = {0};
    int err = axis_init(&ah, H, ls) || axis_init(&aw, W, ls);
    T *blk = err ? NULL : (T *)malloc(sizeof(T) * (size_t)(P + B * L + B * row));
    err = err || blk == NULL;
    stream = FN(stream_rows)(out, C, stream);
    if (!err) {
        T *gvec = blk, *mixb = gvec + P, *pre = mixb + B * L;
#pragma omp parallel num_threads(use_threads(P * H * W, nthreads))
        {
            T *buf = (T *)thread_alloc(FN(nhwc_scratch)(ls, C), &err);
            /* per batch group (as forward(): the scale pass reads x from cache) */
            for (int64_t b0 = 0; b0 < B; b0 += gb) {
                const int64_t b1 = b0 + gb < B ? b0 + gb : B;
#pragma omp for schedule(static, 1)
                for (int64_t task = b0 * ls; task < b1 * ls; ++task) {
                    const int64_t b = task / ls, i = task % ls;
                    if (buf == NULL)
                        continue;
                    FN(nhwc_bin_row)(x, NULL, b, i, H, W, C, &ah, &aw, 0, buf);
                    for (int64_t j = 0; j < ls; ++j) {
                        const T inv = (T)ah.pool_inv[i] * (T)aw.pool_inv[j];
                        const T *restrict a = buf + j * C;
                        T *restrict sq = local + b * L + (i * ls + j) * C;
                        for (int64_t c = 0; c < C; ++c)
                            sq[c] = a[c] * inv;
                    }
                }
                FN(nhwc_bin_means)(local, gvec, b0, b1, C, bins, buf);
                FN(gate_convs)(gvec, local, pre, wg, wl, b0, b1, C, L, k, 1);
                FN(nhwc_tables)(pre, NULL, mixb, NULL, b0, b1, C, ls, lw, &ah, &aw);
#pragma omp for schedule(static)
                for (int64_t task = b0 * H; task < b1 * H; ++task)
                    if (buf != NULL)
                        FN(nhwc_scale_row)(x, out, mixb + (task / H) * L, NULL, task / H,
                                           task % H, H, W, C, &ah, &aw, buf, stream);
            }
            free(buf);
            stream_fence(stream);
        }
    }
    free(blk);
    axis_free(&ah);
    axis_free(&aw);
    return err;
}

/* Backward for channels_last g, x, gx (B, H, W, C), local bin-major as forward_nhwc writes it;
 * the rest as backward(). */
static int FN(backward_nhwc)(const T *g, const T *x, const T *local, const T *wg, const T *wl,
                             T lw, int64_t B, int64_t C, int64_t H, int64_t W, int64_t ls,
                             int64_t k, T *gx, T *gwg, T *gwl, int nthreads, int stream)
{
    const int64_t P = B * C, bins = ls * ls, L = bins * C;
    struct axis ah = {0}, aw = {0};
    struct FN(bwd_ws) ws;
    int err = axis_init(&ah, H, ls) || axis_init(&aw, W, ls) ||
              FN(bwd_init)(&ws, wg, wl, B, C, ls, k, 1);
    stream = gx != NULL && FN(stream_rows)(gx, C, stream);
    if (!err) {
        ws.seq = (T *)local; /* bin-major: the saved map is the gate sequence (only read) */
#pragma omp parallel num_threads(use_threads(P * H * W, nthreads))
        {
            T *buf = (T *)thread_alloc(FN(nhwc_scratch)(ls, C), &err);
            /* gmix = U^T(g * x), bin-major (B, bins, C): each (batch, bin row) task sums
             * straight into its ls * C slice */
#pragma omp for schedule(static, 1)
            for (int64_t task = 0; task < B * ls; ++task) {
                const int64_t b = task / ls, i = task % ls;
                FN(nhwc_bin_row)(x, g, b, i, H, W, C, &ah, &aw, 1, ws.gmix + b * L + i * ls * C);
            }
            FN(nhwc_bin_means)(local, ws.gvec, 0, B, C, bins, buf);
            FN(nhwc_gate_chain_backward)(&ws, wg, wl, lw, B, C, ls, k, buf);
            if (gx != NULL) {
                FN(nhwc_tables)(ws.pre, ws.gpre, ws.mixb, ws.ptb, 0, B, C, ls, lw, &ah, &aw);
#pragma omp for schedule(static)
                for (int64_t task = 0; task < B * H; ++task)
                    if (buf != NULL)
                        FN(nhwc_scale_row)(g, gx, ws.mixb + (task / H) * L,
                                           ws.ptb + (task / H) * L, task / H, task % H, H, W, C,
                                           &ah, &aw, buf, stream);
            }
            free(buf);
            stream_fence(stream);
        }
        FN(weight_grads)(&ws, B, k, gwg, gwl);
        FN(bwd_free)(&ws);
    }
    axis_free(&ah);
    axis_free(&aw);
    return err;
}

#undef FN
#undef CAT
#undef CAT_
