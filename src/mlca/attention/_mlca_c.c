/* mlca.attention._mlca_c: MLCA's fused CPU kernels (float32 and float64, NCHW-contiguous).
 *
 * Why C: on the CPU the PyTorch formulation is a dozen small ops plus a broadcast multiply whose
 * inner loop is one image row; at YOLO's 20x20 and 40x40 maps their per-op and per-row costs
 * dominate. Here the forward is two passes over x (pool; scale) around one sigmoid, and the
 * backward two passes (pool of g*x; g*att + P^T), each parallel over the B*C planes.
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

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
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
    int blocks; /* n is a multiple of ls: every window is one bin / kh pixels */
};

static void axis_free(struct axis *a)
{
    free(a->pool_start);
    memset(a, 0, sizeof(*a));
}

static int axis_init(struct axis *a, int64_t n, int64_t ls)
{
    memset(a, 0, sizeof(*a));
    int64_t *buf = (int64_t *)malloc(sizeof(int64_t) * (size_t)(2 * ls + 2 * n));
    if (buf == NULL)
        return 1;
    a->pool_start = buf;
    a->pool_end = buf + ls;
    a->unpool_start = buf + 2 * ls;
    a->unpool_end = buf + 2 * ls + n;
    for (int64_t i = 0; i < ls; ++i) {
        a->pool_start[i] = i * n / ls;
        a->pool_end[i] = ((i + 1) * n + ls - 1) / ls;
    }
    for (int64_t h = 0; h < n; ++h) {
        a->unpool_start[h] = h * ls / n;
        a->unpool_end[h] = ((h + 1) * ls + n - 1) / n;
    }
    a->blocks = n % ls == 0;
    return 0;
}

/* Positions per task of the 1-D convolutions (a task = one slice of one batch's sequence). */
#define CONV_CHUNK 8192

static int64_t conv_tasks(int64_t B, int64_t n)
{
    return B * ((n + CONV_CHUNK - 1) / CONV_CHUNK);
}

#define T float
#define SFX f
#include "_mlca_c_kernels.h"
#undef T
#undef SFX

#define T double
#define SFX d
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

static PyObject *py_forward_small(PyObject *self, PyObject *args)
{
    int dbl, nthreads;
    unsigned long long x, local, pre, wg, wl;
    Py_ssize_t B, C, H, W, ls, k;
    /* x = 0: local is given (the backward's recomputation of the gates) */
    if (!PyArg_ParseTuple(args, "pKKKKKnnnnnni", &dbl, &x, &local, &pre, &wg, &wl, &B, &C, &H,
                          &W, &ls, &k, &nthreads))
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = dbl ? forward_small_d(PTR(x), PTR(local), PTR(pre), PTR(wg), PTR(wl), B, C, H, W, ls,
                                k, nthreads)
              : forward_small_f(PTR(x), PTR(local), PTR(pre), PTR(wg), PTR(wl), B, C, H, W, ls,
                                k, nthreads);
    Py_END_ALLOW_THREADS
    return done(err);
}

static PyObject *py_forward_scale(PyObject *self, PyObject *args)
{
    int dbl, nthreads;
    unsigned long long x, out, sig;
    Py_ssize_t B, C, H, W, ls;
    double lw;
    if (!PyArg_ParseTuple(args, "pKKKnnnnndi", &dbl, &x, &out, &sig, &B, &C, &H, &W, &ls, &lw,
                          &nthreads))
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = dbl ? forward_scale_d(PTR(x), PTR(out), PTR(sig), B, C, H, W, ls, lw, nthreads)
              : forward_scale_f(PTR(x), PTR(out), PTR(sig), B, C, H, W, ls, (float)lw, nthreads);
    Py_END_ALLOW_THREADS
    return done(err);
}

static PyObject *py_backward_pool(PyObject *self, PyObject *args)
{
    int dbl, nthreads;
    unsigned long long g, x, gmix;
    Py_ssize_t B, C, H, W, ls;
    if (!PyArg_ParseTuple(args, "pKKKnnnnni", &dbl, &g, &x, &gmix, &B, &C, &H, &W, &ls,
                          &nthreads))
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = dbl ? backward_pool_d(PTR(g), PTR(x), PTR(gmix), B, C, H, W, ls, nthreads)
              : backward_pool_f(PTR(g), PTR(x), PTR(gmix), B, C, H, W, ls, nthreads);
    Py_END_ALLOW_THREADS
    return done(err);
}

static PyObject *py_backward_small(PyObject *self, PyObject *args)
{
    int dbl, nthreads;
    unsigned long long local, sig, gmix, wg, wl, glocal, gwg, gwl;
    double lw;
    Py_ssize_t B, C, ls, k;
    if (!PyArg_ParseTuple(args, "pKKKKKdnnnnKKKi", &dbl, &local, &sig, &gmix, &wg, &wl, &lw, &B,
                          &C, &ls, &k, &glocal, &gwg, &gwl, &nthreads))
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = dbl ? backward_small_d(PTR(local), PTR(sig), PTR(gmix), PTR(wg), PTR(wl), lw, B, C, ls,
                                 k, PTR(glocal), PTR(gwg), PTR(gwl), nthreads)
              : backward_small_f(PTR(local), PTR(sig), PTR(gmix), PTR(wg), PTR(wl), (float)lw, B,
                                 C, ls, k, PTR(glocal), PTR(gwg), PTR(gwl), nthreads);
    Py_END_ALLOW_THREADS
    return done(err);
}

static PyObject *py_backward_dx(PyObject *self, PyObject *args)
{
    int dbl, nthreads;
    unsigned long long g, gx, sig, glocal;
    Py_ssize_t B, C, H, W, ls;
    double lw;
    if (!PyArg_ParseTuple(args, "pKKKKnnnnndi", &dbl, &g, &gx, &sig, &glocal, &B, &C, &H, &W,
                          &ls, &lw, &nthreads))
        return NULL;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = dbl ? backward_dx_d(PTR(g), PTR(gx), PTR(sig), PTR(glocal), B, C, H, W, ls, lw,
                              nthreads)
              : backward_dx_f(PTR(g), PTR(gx), PTR(sig), PTR(glocal), B, C, H, W, ls, (float)lw,
                              nthreads);
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
    {"forward_small", py_forward_small, METH_VARARGS,
     "forward_small(dbl, x, local, pre, wg, wl, B, C, H, W, ls, k, nthreads): local = pool(x) "
     "(x = 0: local given); pre = the gates' pre-activations (B, C + ls*ls*C)"},
    {"forward_scale", py_forward_scale, METH_VARARGS,
     "forward_scale(dbl, x, out, sig, B, C, H, W, ls, lw, nthreads): out = x * U(mix(sig))"},
    {"backward_pool", py_backward_pool, METH_VARARGS,
     "backward_pool(dbl, g, x, gmix, B, C, H, W, ls, nthreads): gmix = U^T(g * x)"},
    {"backward_small", py_backward_small, METH_VARARGS,
     "backward_small(dbl, local, sig, gmix, wg, wl, lw, B, C, ls, k, glocal, gwg, gwl, nthreads)"},
    {"backward_dx", py_backward_dx, METH_VARARGS,
     "backward_dx(dbl, g, gx, sig, glocal, B, C, H, W, ls, lw, nthreads): "
     "gx = g * U(mix) + P^T(glocal)"},
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
