/* mlca.attention._mlca_c: MLCA's fused CPU kernels (float32 and float64; NCHW or channels_last).
 *
 * Why C: on the CPU the PyTorch formulation is a dozen small ops plus a broadcast multiply whose
 * inner loop is one image row; at YOLO's 20x20 and 40x40 maps their per-op and per-row costs
 * dominate. Here the forward is one call: two passes over x (pool; scale) around the small gate
 * work, and the backward one call with two passes (pool of g*x; g*att + P^T), each parallel over
 * the B*C planes inside one OpenMP region.
 *
 * Plain C against CPython's API only (no PyTorch headers: it builds in a second with any C
 * compiler and does not depend on the installed torch's ABI). Tensors arrive as data pointers
 * from mlca/attention/_native.py, which checks dtype, device, contiguity and sizes first.
 * OpenMP: built with -fopenmp on Linux, where the extension's libgomp.so.1 resolves to the one
 * PyTorch has already loaded, so its parallel regions run on PyTorch's thread pool; the thread
 * count is PyTorch's (passed per call). Every reduction is per plane or per batch in a fixed
 * order: results do not depend on the number of threads.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Portability: MSVC spells restrict __restrict and has no __builtin_prefetch. */
#if defined(_MSC_VER) && !defined(__clang__)
#define restrict __restrict
#define PREFETCH(p) ((void)(p))
#else
#define PREFETCH(p) __builtin_prefetch((p), 0, 3)
#endif

/* Below this many elements a call runs on one thread (waking the pool costs more). */
#define PARALLEL_MIN_WORK 32768

static int use_threads(int64_t work, int nthreads)
{
    return (work >= PARALLEL_MIN_WORK && nthreads > 1) ? nthreads : 1;
}

/* This thread's static share [*lo, *hi) of [0, n) inside a parallel region. */
static void split_range(int64_t n, int64_t *lo, int64_t *hi)
{
#ifdef _OPENMP
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t t = 0, nt = 1;
#endif
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

/* Adaptive-pooling windows along one axis of length n with ls bins.
 * pool_*:   (ls,) bin i of the pooling n -> ls:    [floor(i*n/ls), ceil((i+1)*n/ls))
 * unpool_*: (n,)  window of pixel h in ls -> n:    [floor(h*ls/n), ceil((h+1)*ls/n)),
 *           which is also the set of bins whose pooling window holds h. */
struct axis {
    int64_t *pool_start, *pool_end, *unpool_start, *unpool_end;
    double *pool_inv, *unpool_inv; /* 1 / window length: pooling (ls,), unpooling (n,) */
    int64_t ls;                    /* the number of bins */
    int blocks;                    /* n is a multiple of ls: every window is one bin / kh pixels */
};

static void axis_free(struct axis *a)
{
    free(a->pool_start);
    free(a->pool_inv);
    memset(a, 0, sizeof(*a));
}

static int axis_init(struct axis *a, int64_t n, int64_t ls)
{
    memset(a, 0, sizeof(*a));
    int64_t *buf = (int64_t *)malloc(sizeof(int64_t) * (size_t)(2 * ls + 2 * n));
    double *inv = (double *)malloc(sizeof(double) * (size_t)(ls + n));
    if (buf == NULL || inv == NULL) {
        free(buf);
        free(inv);
        return 1;
    }
    a->pool_start = buf;
    a->pool_end = buf + ls;
    a->unpool_start = buf + 2 * ls;
    a->unpool_end = buf + 2 * ls + n;
    a->pool_inv = inv;
    a->unpool_inv = inv + ls;
    for (int64_t i = 0; i < ls; ++i) {
        a->pool_start[i] = i * n / ls;
        a->pool_end[i] = ((i + 1) * n + ls - 1) / ls;
        a->pool_inv[i] = 1.0 / (double)(a->pool_end[i] - a->pool_start[i]);
    }
    for (int64_t h = 0; h < n; ++h) {
        a->unpool_start[h] = h * ls / n;
        a->unpool_end[h] = ((h + 1) * ls + n - 1) / n;
        a->unpool_inv[h] = 1.0 / (double)(a->unpool_end[h] - a->unpool_start[h]);
    }
    a->ls = ls;
    a->blocks = n % ls == 0;
    return 0;
}

/* Bytes of x per batch group (see group_batches): measured best of 0.5 / 1 / 2 / 4 MiB at the
 * YOLO shapes (2 MiB L2 per core on the development machine). */
#ifndef GROUP_BYTES
#define GROUP_BYTES (1 << 20)
#endif

/* Positions per task of the 1-D convolutions and the sigmoid (a task = one slice of one batch's
 * sequence). */
#define CONV_CHUNK 8192

static int64_t conv_tasks(int64_t B, int64_t n)
{
    return B * ((n + CONV_CHUNK - 1) / CONV_CHUNK);
}

/* sigmoid(x) = 1 / (1 + e^-x). float: e^z by Cody-Waite range reduction (z = n ln2 + r, n
 * rounded with the 1.5 * 2^23 trick) and Cephes' degree-6 polynomial for e^r, 2^n from the
 * exponent bits: branch-free, so the sigmoid loop vectorises (libm's expf call does not), within
 * 2 ulp of e^z on [-87, 88]; z is clamped there first (sigmoid is 0 or 1 beyond it in float).
 * NaN in, NaN out; +-Inf give 0 and 1. double: libm's exp (the float64 path is for accuracy). */
static inline float sigmoid_f(float x)
{
    float z = -x;
    z = z > 88.0f ? 88.0f : z; /* comparisons keep NaN */
    z = z < -87.0f ? -87.0f : z;
    const float n = (z * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = z - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } two_n;
    two_n.i = ((int32_t)n + 127) << 23;
    const float s = 1.0f / (1.0f + p * two_n.f);
    return x != x ? x : (x == -INFINITY ? 0.0f : s);
}

static inline double sigmoid_d(double x)
{
    return 1.0 / (1.0 + exp(-x));
}

/* The sigmoid is compute-bound (the rest is memory-bound and gains nothing from wider vectors):
 * an AVX2 clone where the compiler and the loader support function multi-versioning. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define HAVE_STREAM 1
#endif

/* A thread's scratch inside a parallel region: on failure it flags err, and the call reports a
 * MemoryError after the region (every thread still runs every barrier). */
static void *thread_alloc(size_t n, int *err)
{
    void *p = malloc(n);
    if (p == NULL) {
#pragma omp atomic write
        *err = 1;
    }
    return p;
}

/* Orders this thread's non-temporal stores before the parallel region ends. */
static inline void stream_fence(int stream)
{
#ifdef HAVE_STREAM
    if (stream)
        _mm_sfence();
#else
    (void)stream;
#endif
}

#define T float
#define SFX f
#ifdef HAVE_STREAM
#define VEC_N 4
#define VEC_LOADU _mm_loadu_ps
#define VEC_MUL _mm_mul_ps
#define VEC_ADD _mm_add_ps
#define VEC_STREAM _mm_stream_ps
#endif
#include "_mlca_c_kernels.h"
#undef T
#undef SFX
#undef VEC_N
#undef VEC_LOADU
#undef VEC_MUL
#undef VEC_ADD
#undef VEC_STREAM

#define T double
#define SFX d
#ifdef HAVE_STREAM
#define VEC_N 2
#define VEC_LOADU _mm_loadu_pd
#define VEC_MUL _mm_mul_pd
#define VEC_ADD _mm_add_pd
#define VEC_STREAM _mm_stream_pd
#endif
#include "_mlca_c_kernels.h"
#undef T
#undef SFX

/* ---- Python bindings. Pointers come as ints (Tensor.data_ptr()); ``dbl`` picks float64. ---- */

#define PTR(v) ((void *)(uintptr_t)(v))

static PyObject *done(int err)
{
    if (err)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *py_forward(PyObject *self, PyObject *args)
{
    int dbl, nthreads;
    unsigned long long x, out, local, wg, wl;
    Py_ssize_t B, C, H, W, ls, k;
    double lw;
    int stream = 0, nhwc = 0;
    if (!PyArg_ParseTuple(args, "pKKKKKnnnnnndi|pp", &dbl, &x, &out, &local, &wg, &wl, &B, &C,
                          &H, &W, &ls, &k, &lw, &nthreads, &stream, &nhwc))
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    if (nhwc)
        err = dbl ? forward_nhwc_d(PTR(x), PTR(out), PTR(local), PTR(wg), PTR(wl), B, C, H, W, ls,
                                   k, lw, nthreads, stream)
                  : forward_nhwc_f(PTR(x), PTR(out), PTR(local), PTR(wg), PTR(wl), B, C, H, W, ls,
                                   k, (float)lw, nthreads, stream);
    else
        err = dbl ? forward_d(PTR(x), PTR(out), PTR(local), PTR(wg), PTR(wl), B, C, H, W, ls, k,
                              lw, nthreads, stream)
                  : forward_f(PTR(x), PTR(out), PTR(local), PTR(wg), PTR(wl), B, C, H, W, ls, k,
                              (float)lw, nthreads, stream);
    Py_END_ALLOW_THREADS
    return done(err);
}

static PyObject *py_backward(PyObject *self, PyObject *args)
{
    int dbl, nthreads;
    unsigned long long g, x, local, wg, wl, gx, gwg, gwl;
    double lw;
    Py_ssize_t B, C, H, W, ls, k;
    int stream = 0, nhwc = 0;
    if (!PyArg_ParseTuple(args, "pKKKKKdnnnnnnKKKi|pp", &dbl, &g, &x, &local, &wg, &wl, &lw, &B,
                          &C, &H, &W, &ls, &k, &gx, &gwg, &gwl, &nthreads, &stream, &nhwc))
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    if (nhwc)
        err = dbl ? backward_nhwc_d(PTR(g), PTR(x), PTR(local), PTR(wg), PTR(wl), lw, B, C, H, W,
                                    ls, k, PTR(gx), PTR(gwg), PTR(gwl), nthreads, stream)
                  : backward_nhwc_f(PTR(g), PTR(x), PTR(local), PTR(wg), PTR(wl), (float)lw, B, C,
                                    H, W, ls, k, PTR(gx), PTR(gwg), PTR(gwl), nthreads, stream);
    else
        err = dbl ? backward_d(PTR(g), PTR(x), PTR(local), PTR(wg), PTR(wl), lw, B, C, H, W, ls,
                               k, PTR(gx), PTR(gwg), PTR(gwl), nthreads, stream)
                  : backward_f(PTR(g), PTR(x), PTR(local), PTR(wg), PTR(wl), (float)lw, B, C, H, W,
                               ls, k, PTR(gx), PTR(gwg), PTR(gwl), nthreads, stream);
    Py_END_ALLOW_THREADS
    return done(err);
}

static PyObject *py_openmp(PyObject *self, PyObject *noargs)
{
#ifdef _OPENMP
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"forward", py_forward, METH_VARARGS,
     "forward(dbl, x, out, local, wg, wl, B, C, H, W, ls, k, lw, nthreads, stream=False, "
     "nhwc=False): out = MLCA(x) (B, C, H, W), local = pool(x) (B, C, ls, ls); stream: write out "
     "with non-temporal stores; nhwc: x and out are channels_last"},
    {"backward", py_backward, METH_VARARGS,
     "backward(dbl, g, x, local, wg, wl, lw, B, C, H, W, ls, k, gx, gwg, gwl, nthreads, "
     "stream=False, nhwc=False): gx = dL/dx (gx = 0: not computed), gwg, gwl = dL/dw (k,)"},
    {"openmp", py_openmp, METH_NOARGS, "True when built with OpenMP"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_mlca_c", "MLCA's fused CPU kernels (see _native.py)", -1, methods,
};

PyMODINIT_FUNC PyInit__mlca_c(void)
{
    return PyModule_Create(&module);
}
