/* MLCA's CPU kernels for one element type, included by _mlca_c.c once per type with
 *   T    the element type (float or double),
 *   SFX  the suffix of the function names (f or d).
 *
 * Shapes (all C-contiguous): x, g, out (P = B*C planes, H, W); local, gmix, glocal (P, ls*ls)
 * bin-major inside a plane; sig (B, C + ls*ls*C): per batch the C global gates, then the local
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

/* local[p] = P(x[p]) for planes [p0, p1); acc: W scratch. */
static void FN(pool_planes)(const T *x, T *local, int64_t p0, int64_t p1, int64_t H, int64_t W,
                           int64_t ls, const struct axis *ah, const struct axis *aw, T *acc)
{
    for (int64_t p = p0; p < p1; ++p) {
        const T *xp = x + p * H * W;
        T *lp = local + p * ls * ls;
        for (int64_t i = 0; i < ls; ++i) {
            const int64_t rs = ah->pool_start[i], re = ah->pool_end[i];
            const T *r = xp + rs * W;
            for (int64_t w = 0; w < W; ++w)
                acc[w] = r[w];
            for (int64_t h = rs + 1; h < re; ++h) {
                r = xp + h * W;
                for (int64_t w = 0; w < W; ++w)
                    acc[w] += r[w];
            }
            for (int64_t j = 0; j < ls; ++j) {
                const int64_t cs = aw->pool_start[j], ce = aw->pool_end[j];
                T s = 0;
                for (int64_t w = cs; w < ce; ++w)
                    s += acc[w];
                lp[i * ls + j] = s / (T)((re - rs) * (ce - cs));
            }
        }
    }
}

/* y[i] = sum_t w[t] * v[i + t - pad] over i in [i0, i1), zero padding outside [0, n): the
 * same-padded cross-correlation of nn.Conv1d. Taps outer, positions inner (vectorises). */
static void FN(conv_same)(const T *v, int64_t n, const T *wt, int64_t k, T *y, int64_t i0,
                          int64_t i1)
{
    const int64_t pad = (k - 1) / 2;
    for (int64_t i = i0; i < i1; ++i)
        y[i] = 0;
    for (int64_t t = 0; t < k; ++t) {
        const int64_t lo = i0 > pad - t ? i0 : pad - t;
        const int64_t hi = i1 < n + pad - t ? i1 : n + pad - t;
        const T wv = wt[t];
        for (int64_t i = lo; i < hi; ++i)
            y[i] += wv * v[i + t - pad];
    }
}

/* The adjoint of conv_same: y[j] = sum_t w[t] * v[j - t + pad], j in [j0, j1). */
static void FN(conv_same_t)(const T *v, int64_t n, const T *wt, int64_t k, T *y, int64_t j0,
                            int64_t j1)
{
    const int64_t pad = (k - 1) / 2;
    for (int64_t j = j0; j < j1; ++j)
        y[j] = 0;
    for (int64_t t = 0; t < k; ++t) {
        const int64_t lo = j0 > t - pad ? j0 : t - pad;
        const int64_t hi = j1 < n + t - pad ? j1 : n + t - pad;
        const T wv = wt[t];
        for (int64_t j = lo; j < hi; ++j)
            y[j] += wv * v[j - t + pad];
    }
}

/* From local (P, ls*ls): gvec (B, C) the bin means and seq (B, ls*ls*C) the bin-major sequence,
 * for planes [p0, p1). */
static void FN(gather_small)(const T *local, T *gvec, T *seq, int64_t p0, int64_t p1, int64_t C,
                             int64_t bins)
{
    for (int64_t p = p0; p < p1; ++p) {
        const int64_t b = p / C, c = p % C;
        const T *lp = local + p * bins;
        T *sq = seq + b * bins * C + c;
        T s = 0;
        for (int64_t q = 0; q < bins; ++q) {
            s += lp[q];
            sq[q * C] = lp[q];
        }
        gvec[p] = s / (T)bins;
    }
}

/* pre (B, C + L) = [conv(gvec, wg) | conv(seq, wl)], L = ls*ls*C: the gates before the sigmoid.
 * Called inside a parallel region (its loop is a worksharing ``omp for``). */
static void FN(gate_convs)(const T *gvec, const T *seq, T *pre, const T *wg, const T *wl,
                           int64_t B, int64_t C, int64_t L, int64_t k)
{
    const int64_t nl = conv_tasks(B, L), ng = conv_tasks(B, C), row = C + L;
#pragma omp for schedule(static)
    for (int64_t task = 0; task < nl + ng; ++task) {
        if (task < nl) {
            const int64_t per = nl / B, b = task / per, c0 = (task % per) * CONV_CHUNK;
            const int64_t c1 = c0 + CONV_CHUNK < L ? c0 + CONV_CHUNK : L;
            FN(conv_same)(seq + b * L, L, wl, k, pre + b * row + C, c0, c1);
        } else {
            const int64_t t2 = task - nl, per = ng / B, b = t2 / per;
            const int64_t c0 = (t2 % per) * CONV_CHUNK;
            const int64_t c1 = c0 + CONV_CHUNK < C ? c0 + CONV_CHUNK : C;
            FN(conv_same)(gvec + b * C, C, wg, k, pre + b * row, c0, c1);
        }
    }
}

/* Forward, steps 1-3: local = P(x) (skipped when x is NULL: local is given) and
 * pre = gate_convs(local) (B, C + ls*ls*C). */
static int FN(forward_small)(const T *x, T *local, T *pre, const T *wg, const T *wl, int64_t B,
                             int64_t C, int64_t H, int64_t W, int64_t ls, int64_t k, int nthreads)
{
    const int64_t P = B * C, bins = ls * ls, L = bins * C;
    struct axis ah = {0}, aw = {0};
    T *gvec = NULL, *seq = NULL;
    int err = axis_init(&ah, H, ls) || axis_init(&aw, W, ls);
    if (!err) {
        gvec = (T *)malloc(sizeof(T) * (size_t)P);
        seq = (T *)malloc(sizeof(T) * (size_t)(B * L));
        err = gvec == NULL || seq == NULL;
    }
    if (!err) {
        const int64_t work = x != NULL ? P * H * W : B * L * k;
#pragma omp parallel num_threads(use_threads(work, nthreads))
        {
            int64_t p0, p1;
            split_range(P, &p0, &p1);
            if (x != NULL) {
                T *acc = (T *)malloc(sizeof(T) * (size_t)W);
                if (acc == NULL) {
#pragma omp atomic write
                    err = 1;
                } else {
                    FN(pool_planes)(x, local, p0, p1, H, W, ls, &ah, &aw, acc);
                    free(acc);
                }
            }
            FN(gather_small)(local, gvec, seq, p0, p1, C, bins);
#pragma omp barrier
            FN(gate_convs)(gvec, seq, pre, wg, wl, B, C, L, k);
        }
    }
    free(gvec);
    free(seq);
    axis_free(&ah);
    axis_free(&aw);
    return err;
}

/* mix of plane (b, c) from the gates: mix[bin] = sg * (1 - lw) + sl[bin] * lw (the seed's blend). */
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
            for (int64_t j = 0; j < ls; ++j) {
                const T v = adjoint ? si[j] / ((T)kw * hdiv) : si[j];
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
                    acc += si[j] / ((T)(aw->pool_end[j] - aw->pool_start[j]) * hdiv);
            } else {
                for (int64_t j = js; j < je; ++j)
                    acc += si[j];
                acc = acc / (T)(je - js);
            }
            mi[w] = acc;
        }
    }
}

/* The H-direction row of pixel row h from m (ls, W): U averages the window's rows (adjoint 0),
 * P^T sums them divided by their pooling bins' lengths (adjoint 1). Returns m's row itself for a
 * one-row window (for P^T only in the block case, where spread_w has divided by kh already). */
static const T *FN(row_h)(const T *m, int64_t W, int64_t h, const struct axis *ah, int adjoint,
                         T *tmp)
{
    const int64_t is = ah->unpool_start[h], ie = ah->unpool_end[h];
    if (ie - is == 1 && (!adjoint || ah->blocks))
        return m + is * W;
    for (int64_t w = 0; w < W; ++w)
        tmp[w] = 0;
    for (int64_t i = is; i < ie; ++i) {
        const T d = adjoint ? (T)(ah->pool_end[i] - ah->pool_start[i]) : (T)1;
        const T *mi = m + i * W;
        for (int64_t w = 0; w < W; ++w)
            tmp[w] += mi[w] / d;
    }
    if (!adjoint && ie - is > 1) {
        const T d = (T)(ie - is);
        for (int64_t w = 0; w < W; ++w)
            tmp[w] = tmp[w] / d;
    }
    return tmp;
}

/* Forward, step 5: out = x * U(mix), the mix rebuilt per plane from the gates. */
static int FN(forward_scale)(const T *x, T *out, const T *sig, int64_t B, int64_t C, int64_t H,
                             int64_t W, int64_t ls, T lw, int nthreads)
{
    const int64_t P = B * C, bins = ls * ls;
    struct axis ah = {0}, aw = {0};
    int err = axis_init(&ah, H, ls) || axis_init(&aw, W, ls);
    if (!err) {
#pragma omp parallel num_threads(use_threads(P * H * W, nthreads))
        {
            T *buf = (T *)malloc(sizeof(T) * (size_t)(bins + (ls + 1) * W));
            if (buf == NULL) {
#pragma omp atomic write
                err = 1;
            } else {
                T *mix = buf, *m = buf + bins, *tmp = m + ls * W;
                int64_t p0, p1;
                split_range(P, &p0, &p1);
                for (int64_t p = p0; p < p1; ++p) {
                    FN(plane_mix)(sig, p / C, p % C, C, bins, lw, mix);
                    FN(spread_w)(mix, ls, W, &aw, 0, (T)1, m);
                    const T *xp = x + p * H * W;
                    T *op = out + p * H * W;
                    for (int64_t h = 0; h < H; ++h) {
                        const T *a = FN(row_h)(m, W, h, &ah, 0, tmp);
                        const T *xr = xp + h * W;
                        T *orow = op + h * W;
                        for (int64_t w = 0; w < W; ++w)
                            orow[w] = xr[w] * a[w];
                    }
                }
                free(buf);
            }
        }
    }
    axis_free(&ah);
    axis_free(&aw);
    return err;
}

/* Backward, first pass: gmix = U^T(g * x) (P, ls*ls). */
static int FN(backward_pool)(const T *g, const T *x, T *gmix, int64_t B, int64_t C, int64_t H,
                             int64_t W, int64_t ls, int nthreads)
{
    const int64_t P = B * C;
    struct axis ah = {0}, aw = {0};
    int err = axis_init(&ah, H, ls) || axis_init(&aw, W, ls);
    if (!err) {
#pragma omp parallel num_threads(use_threads(P * H * W, nthreads))
        {
            T *acc = (T *)malloc(sizeof(T) * (size_t)(ls * W));
            if (acc == NULL) {
#pragma omp atomic write
                err = 1;
            } else {
                int64_t p0, p1;
                split_range(P, &p0, &p1);
                for (int64_t p = p0; p < p1; ++p) {
                    const T *gp = g + p * H * W, *xp = x + p * H * W;
                    for (int64_t q = 0; q < ls * W; ++q)
                        acc[q] = 0;
                    for (int64_t h = 0; h < H; ++h) {
                        const int64_t is = ah.unpool_start[h], ie = ah.unpool_end[h];
                        const T *gr = gp + h * W, *xr = xp + h * W;
                        if (ie - is == 1) {
                            T *ai = acc + is * W;
                            for (int64_t w = 0; w < W; ++w)
                                ai[w] += gr[w] * xr[w];
                            continue;
                        }
                        const T d = (T)(ie - is);
                        for (int64_t i = is; i < ie; ++i) {
                            T *ai = acc + i * W;
                            for (int64_t w = 0; w < W; ++w)
                                ai[w] += gr[w] * xr[w] / d;
                        }
                    }
                    T *gm = gmix + p * ls * ls;
                    for (int64_t i = 0; i < ls; ++i) {
                        const T *ai = acc + i * W;
                        for (int64_t j = 0; j < ls; ++j)
                            gm[i * ls + j] = 0;
                        for (int64_t w = 0; w < W; ++w) {
                            const int64_t js = aw.unpool_start[w], je = aw.unpool_end[w];
                            if (je - js == 1) {
                                gm[i * ls + js] += ai[w];
                                continue;
                            }
                            const T d = (T)(je - js);
                            for (int64_t j = js; j < je; ++j)
                                gm[i * ls + j] += ai[w] / d;
                        }
                    }
                }
                free(acc);
            }
        }
    }
    axis_free(&ah);
    axis_free(&aw);
    return err;
}

/* Backward of steps 2-4, given gmix = dL/dmix (P, ls*ls), the pooled map ``local`` and the gates
 * ``sig``: glocal = dL/dlocal (P, ls*ls); gwg, gwl = dL/dw (k), accumulated in double per batch
 * and summed over batches in order (the same bits for any thread count). */
static int FN(backward_small)(const T *local, const T *sig, const T *gmix, const T *wg,
                              const T *wl, T lw, int64_t B, int64_t C, int64_t ls, int64_t k,
                              T *glocal, T *gwg, T *gwl, int nthreads)
{
    const int64_t P = B * C, bins = ls * ls, L = bins * C, row = C + L, pad = (k - 1) / 2;
    T *gvec = (T *)malloc(sizeof(T) * (size_t)P);
    T *seq = (T *)malloc(sizeof(T) * (size_t)(B * L));
    T *gyl = (T *)malloc(sizeof(T) * (size_t)(B * L));
    T *gyg = (T *)malloc(sizeof(T) * (size_t)P);
    T *gseq = (T *)malloc(sizeof(T) * (size_t)(B * L));
    T *ggvec = (T *)malloc(sizeof(T) * (size_t)P);
    double *pw = (double *)calloc((size_t)(2 * B * k), sizeof(double));
    int err = !gvec || !seq || !gyl || !gyg || !gseq || !ggvec || !pw;
    if (!err) {
        const int64_t nl = conv_tasks(B, L), ng = conv_tasks(B, C);
        const int par = use_threads(B * L * k, nthreads);
#pragma omp parallel num_threads(par)
        {
            int64_t p0, p1;
            split_range(P, &p0, &p1);
            FN(gather_small)(local, gvec, seq, p0, p1, C, bins);
            /* gradients of the gates' pre-activations */
            for (int64_t p = p0; p < p1; ++p) {
                const int64_t b = p / C, c = p % C;
                const T *sb = sig + b * row;
                const T *gm = gmix + p * bins;
                T tot = 0;
                for (int64_t q = 0; q < bins; ++q) {
                    const T s = sb[C + q * C + c];
                    gyl[b * L + q * C + c] = gm[q] * lw * s * ((T)1 - s);
                    tot += gm[q];
                }
                const T s = sb[c];
                gyg[p] = tot * ((T)1 - lw) * s * ((T)1 - s);
            }
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t task = 0; task < nl + ng; ++task) {
                if (task < nl) {
                    const int64_t per = nl / B, b = task / per, c0 = (task % per) * CONV_CHUNK;
                    const int64_t c1 = c0 + CONV_CHUNK < L ? c0 + CONV_CHUNK : L;
                    FN(conv_same_t)(gyl + b * L, L, wl, k, gseq + b * L, c0, c1);
                } else {
                    const int64_t t2 = task - nl, per = ng / B, b = t2 / per;
                    const int64_t c0 = (t2 % per) * CONV_CHUNK;
                    const int64_t c1 = c0 + CONV_CHUNK < C ? c0 + CONV_CHUNK : C;
                    FN(conv_same_t)(gyg + b * C, C, wg, k, ggvec + b * C, c0, c1);
                }
            }
            /* weight gradients, one (batch, tap) pair per task: sum_i gy[i] * v[i + t - pad] */
#pragma omp for schedule(static)
            for (int64_t task = 0; task < 2 * B * k; ++task) {
                const int64_t which = task / (B * k), b = (task / k) % B, t = task % k;
                const T *gy = which ? gyg + b * C : gyl + b * L;
                const T *v = which ? gvec + b * C : seq + b * L;
                const int64_t n = which ? C : L;
                const int64_t lo = pad - t > 0 ? pad - t : 0;
                const int64_t hi = n + pad - t < n ? n + pad - t : n;
                double s = 0;
                for (int64_t i = lo; i < hi; ++i)
                    s += (double)gy[i] * (double)v[i + t - pad];
                pw[task] = s;
            }
            /* glocal[b, c, bin] = gseq[b, bin*C + c] + ggvec[b, c] / bins */
            for (int64_t p = p0; p < p1; ++p) {
                const int64_t b = p / C, c = p % C;
                const T gg = ggvec[p] / (T)bins;
                const T *gs = gseq + b * L + c;
                T *gl = glocal + p * bins;
                for (int64_t q = 0; q < bins; ++q)
                    gl[q] = gs[q * C] + gg;
            }
        }
        for (int64_t t = 0; t < k; ++t) {
            double sl = 0, sg = 0;
            for (int64_t b = 0; b < B; ++b) {
                sl += pw[b * k + t];
                sg += pw[B * k + b * k + t];
            }
            gwl[t] = (T)sl;
            gwg[t] = (T)sg;
        }
    }
    free(gvec);
    free(seq);
    free(gyl);
    free(gyg);
    free(gseq);
    free(ggvec);
    free(pw);
    return err;
}

/* Backward, last pass: gx = g * U(mix) + P^T(glocal). */
static int FN(backward_dx)(const T *g, T *gx, const T *sig, const T *glocal, int64_t B, int64_t C,
                           int64_t H, int64_t W, int64_t ls, T lw, int nthreads)
{
    const int64_t P = B * C, bins = ls * ls;
    struct axis ah = {0}, aw = {0};
    int err = axis_init(&ah, H, ls) || axis_init(&aw, W, ls);
    if (!err) {
#pragma omp parallel num_threads(use_threads(P * H * W, nthreads))
        {
            T *buf = (T *)malloc(sizeof(T) * (size_t)(bins + 2 * (ls + 1) * W));
            if (buf == NULL) {
#pragma omp atomic write
                err = 1;
            } else {
                T *mix = buf, *m = buf + bins, *pt = m + ls * W, *tmp_a = pt + ls * W;
                T *tmp_p = tmp_a + W;
                int64_t p0, p1;
                split_range(P, &p0, &p1);
                for (int64_t p = p0; p < p1; ++p) {
                    FN(plane_mix)(sig, p / C, p % C, C, bins, lw, mix);
                    FN(spread_w)(mix, ls, W, &aw, 0, (T)1, m);
                    FN(spread_w)(glocal + p * bins, ls, W, &aw, 1,
                                 ah.blocks ? (T)(H / ls) : (T)1, pt);
                    const T *gp = g + p * H * W;
                    T *op = gx + p * H * W;
                    for (int64_t h = 0; h < H; ++h) {
                        const T *a = FN(row_h)(m, W, h, &ah, 0, tmp_a);
                        const T *q = FN(row_h)(pt, W, h, &ah, 1, tmp_p);
                        const T *gr = gp + h * W;
                        T *orow = op + h * W;
                        for (int64_t w = 0; w < W; ++w)
                            orow[w] = gr[w] * a[w] + q[w];
                    }
                }
                free(buf);
            }
        }
    }
    axis_free(&ah);
    axis_free(&aw);
    return err;
}

#undef FN
#undef CAT
#undef CAT_
