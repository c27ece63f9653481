/* The masker bank's quiet step in C (optional; dtmf/masker.py runs the same step in numpy).
 *
 * During a capture nearly every call of MaskerBank.process is "quiet": no row has a block loud
 * enough to flag, none is weakly flagged, none has a flag or tone state, every row is delayed.
 * Then nothing is masked and the step only moves state: the held packets go out unchanged, the
 * new packets are held, the last three blocks' features become history, the sample count and
 * (comfort noise) the background tracker advance. In numpy that is ~20 calls whatever the row
 * count; here it is one pass over the rows.
 *
 * It is the numpy step's arithmetic, not an approximation of it: the comparisons are the same
 * comparisons on the same float64 values, the tracker is the same multiply, add and minimum in
 * the same order (built with -ffp-contract=off: no fused multiply-add), and any row that is not
 * quiet makes it return False having written nothing, so that the numpy path runs the batch.
 * The block features (energies, line energies) stay in numpy (its BLAS product) and come in.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define PACKET_SAMPLES 160
#define NEW_BLOCKS 4
#define HIST_BLOCKS 3

static struct {
    int ready;
    Py_ssize_t n_f, hist_e, hist_l, levels, level, n_in, bits;
    double min_energy, weak_energy, rise, rise_abs, inv_block;
} K;

#define BLOCK 40
#define N_PROJ 16
#define AT(view, off) ((char *)(view).buf + (off))

/* Whether a buffer's struct format is one of the type codes in `codes` (native or little-endian). */
static int format_is(const Py_buffer *view, const char *codes)
{
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    return f[0] != '\0' && f[1] == '\0' && strchr(codes, f[0]) != NULL;
}

/* The analysis basis, (40, 16): per sample, cos then sin of the eight DTMF frequencies (sample-major,
 * so that the sixteen accumulators of one sample are one contiguous, vectorisable step). */
static double BASIS[BLOCK][N_PROJ] __attribute__((aligned(16)));
static int basis_ready;

/* Two doubles per step (GCC/clang vector extension, SSE2 on x86-64): each lane is one
 * basis row's own accumulator, so the sums keep their order. */
typedef double v2d __attribute__((vector_size(16)));

/* One block's energy and line energy. This is the definition of the masker's block features
 * when the extension is built (the Python fallback uses numpy's BLAS product, which may
 * round differently): every product is summed in sample order, one accumulator per basis
 * row, no fused multiply-add, so the result is the same on every machine. */
static inline void block_features(const double s[BLOCK], double *energy, double *lines)
{
    v2d acc[N_PROJ / 2];
    for (int j = 0; j < N_PROJ / 2; j++)
        acc[j] = (v2d){0.0, 0.0};
    double e = 0.0;
    for (int i = 0; i < BLOCK; i++) {
        double x = s[i];
        v2d xv = {x, x};
        const v2d *row = (const v2d *)BASIS[i];
        e = e + x * x;
        for (int j = 0; j < N_PROJ / 2; j++)
            acc[j] = acc[j] + xv * row[j];
    }
    double a[N_PROJ];
    memcpy(a, acc, sizeof(a));
    double p[8];
    for (int f = 0; f < 8; f++)
        p[f] = a[f] * a[f] + a[f + 8] * a[f + 8];
    double low = p[0], high = p[4];
    for (int f = 1; f < 4; f++) {
        if (p[f] > low) low = p[f];
        if (p[f + 4] > high) high = p[f + 4];
    }
    *energy = e;
    *lines = (low + high) * (2.0 / BLOCK);
}

static int get(PyObject *obj, Py_buffer *view, const char *what, int writable, Py_ssize_t itemsize, int ndim,
               const char *codes)
{
    int flags = PyBUF_STRIDES | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize || view->ndim != ndim || !format_is(view, codes)) {
        PyErr_Format(PyExc_ValueError, "masker C step: %s has the wrong item type or shape", what);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *set_basis(PyObject *mod, PyObject *arg)
{
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    if (b.itemsize != 8 || b.len != (Py_ssize_t)sizeof(BASIS) || b.format == NULL || strcmp(b.format, "d") != 0) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "basis must be (40, 16) float64");
        return NULL;
    }
    memcpy(BASIS, b.buf, sizeof(BASIS));
    PyBuffer_Release(&b);
    basis_ready = 1;
    Py_RETURN_NONE;
}

/* features_blocks(x, feats): x (m, 40) float64 (any strides) -> feats (m, 2) float64: energy, lines. */
static PyObject *features_blocks(PyObject *mod, PyObject *args)
{
    PyObject *o_x, *o_out;
    if (!PyArg_ParseTuple(args, "OO", &o_x, &o_out))
        return NULL;
    if (!basis_ready) {
        PyErr_SetString(PyExc_RuntimeError, "masker basis is not set");
        return NULL;
    }
    Py_buffer x, out;
    if (get(o_x, &x, "x", 0, 8, 2, "d") < 0)
        return NULL;
    if (get(o_out, &out, "feats", 1, 8, 2, "d") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    PyObject *result = NULL;
    if (x.shape[1] != BLOCK || out.shape[0] != x.shape[0] || out.shape[1] < 2) {
        PyErr_SetString(PyExc_ValueError, "features_blocks: x must be (m, 40) and feats (m, 2), float64");
        goto done;
    }
    for (Py_ssize_t r = 0; r < x.shape[0]; r++) {
        double s[BLOCK];
        for (int i = 0; i < BLOCK; i++)
            s[i] = *(double *)AT(x, r * x.strides[0] + i * x.strides[1]);
        block_features(s, (double *)AT(out, r * out.strides[0]), (double *)AT(out, r * out.strides[0] + out.strides[1]));
    }
    result = Py_None;
    Py_INCREF(result);
done:
    PyBuffer_Release(&out);
    PyBuffer_Release(&x);
    return result;
}

/* features_packets(frames, energies, lines): frames (k, 160) int16 (any strides) -> the four
 * blocks' energies and line energies into columns 3..6 of energies (k, >= 7) and lines (k, >= 7). */
static PyObject *features_packets(PyObject *mod, PyObject *args)
{
    PyObject *o_f, *o_e, *o_l;
    if (!PyArg_ParseTuple(args, "OOO", &o_f, &o_e, &o_l))
        return NULL;
    if (!basis_ready) {
        PyErr_SetString(PyExc_RuntimeError, "masker basis is not set");
        return NULL;
    }
    Py_buffer f, e, l;
    int got = 0;
    PyObject *result = NULL;
    if (get(o_f, &f, "frames", 0, 2, 2, "h") < 0) goto done;
    got = 1;
    if (get(o_e, &e, "energies", 1, 8, 2, "d") < 0) goto done;
    got = 2;
    if (get(o_l, &l, "lines", 1, 8, 2, "d") < 0) goto done;
    got = 3;
    if (f.shape[1] != PACKET_SAMPLES || e.shape[0] != f.shape[0] || l.shape[0] != f.shape[0] || e.shape[1] < 7
        || l.shape[1] < 7) {
        PyErr_SetString(PyExc_ValueError, "features_packets: frames (k, 160) int16, energies and lines (k, >= 7) float64");
        goto done;
    }
    for (Py_ssize_t r = 0; r < f.shape[0]; r++) {
        for (int b = 0; b < NEW_BLOCKS; b++) {
            double s[BLOCK];
            for (int i = 0; i < BLOCK; i++)
                s[i] = (double)*(int16_t *)AT(f, r * f.strides[0] + (b * BLOCK + i) * f.strides[1]);
            block_features(s, (double *)AT(e, r * e.strides[0] + (HIST_BLOCKS + b) * e.strides[1]),
                           (double *)AT(l, r * l.strides[0] + (HIST_BLOCKS + b) * l.strides[1]));
        }
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (got >= 3) PyBuffer_Release(&l);
    if (got >= 2) PyBuffer_Release(&e);
    if (got >= 1) PyBuffer_Release(&f);
    return result;
}

static PyObject *configure(PyObject *mod, PyObject *args)
{
    if (!PyArg_ParseTuple(args, "nnnnnnnddddd", &K.n_f, &K.hist_e, &K.hist_l, &K.levels, &K.level, &K.n_in,
                          &K.bits, &K.min_energy, &K.weak_energy, &K.rise, &K.rise_abs, &K.inv_block))
        return NULL;
    if (K.n_f <= K.bits + 1 || K.hist_l + 7 > K.n_f || K.levels + NEW_BLOCKS >= K.n_f) {
        PyErr_SetString(PyExc_ValueError, "masker state layout does not fit its row");
        return NULL;
    }
    K.ready = 1;
    Py_RETURN_NONE;
}



/* The bool columns' positions and flush's constants (configure_flush). */
static struct {
    int ready;
    Py_ssize_t filler;
    int b_flags_end, b_unsteady, b_confirmed, b_held_valid, b_capture;
    double min_window_energy, weak_energy, share, steady, gap;
} FQ;

static PyObject *configure_flush(PyObject *mod, PyObject *args)
{
    if (!PyArg_ParseTuple(args, "niiiiiddddd", &FQ.filler, &FQ.b_flags_end, &FQ.b_unsteady, &FQ.b_confirmed,
                          &FQ.b_held_valid, &FQ.b_capture, &FQ.min_window_energy, &FQ.weak_energy, &FQ.share, &FQ.steady, &FQ.gap))
        return NULL;
    if (!K.ready || FQ.filler >= K.bits || FQ.b_held_valid >= 24 || FQ.b_unsteady >= 8 || FQ.b_capture >= 24
        || FQ.b_held_valid < 16 || FQ.b_capture < 16) {
        PyErr_SetString(PyExc_ValueError, "masker flush layout does not fit its row");
        return NULL;
    }
    FQ.ready = 1;
    Py_RETURN_NONE;
}

/* quiet_step(fs, held, slots, frames, wef, out, comfort[, changed]) -> bool
 *   fs (cap, n_f) float64, held (cap, 160) int16: the bank's state, updated when quiet;
 *   slots (k,) intp; frames (k, 160) int16 (any strides); wef (2, n, 8) float64 with this
 *   call's new blocks' energies and line energies in columns 3..6 of rows 0..k-1;
 *   out (k, 160) int16: receives the held packets.
 *   changed (k,) bool, optional: with it, a quiet row need not be delayed. A capture whose
 *   look-ahead restarts (its held packet left without its successor: `flush`, or the capture
 *   just began) gets a filler row (zeros; the caller fills comfort noise) and changed = 1,
 *   and holds this packet from now on; a row outside a capture passes its own packet,
 *   unchanged. That is what the numpy step does with such rows when they are quiet; without
 *   `changed` they make the batch the numpy step's, as before. */
static PyObject *quiet_step(PyObject *mod, PyObject *args)
{
    PyObject *o_fs, *o_held, *o_slots, *o_frames, *o_wef, *o_out, *o_changed = Py_None;
    int comfort;
    if (!PyArg_ParseTuple(args, "OOOOOOp|O", &o_fs, &o_held, &o_slots, &o_frames, &o_wef, &o_out, &comfort, &o_changed))
        return NULL;
    int restart = o_changed != Py_None;
    if (!K.ready || (restart && !FQ.ready)) {
        PyErr_SetString(PyExc_RuntimeError, "masker step is not configured");
        return NULL;
    }
    Py_buffer fs, held, slots, frames, wef, out, changed;
    int got = 0;
    PyObject *result = NULL;
    if (get(o_fs, &fs, "fs", 1, 8, 2, "d") < 0) goto done;
    got = 1;
    if (get(o_held, &held, "held", 1, 2, 2, "h") < 0) goto done;
    got = 2;
    if (get(o_slots, &slots, "slots", 0, sizeof(Py_ssize_t), 1, "lqn") < 0) goto done;
    got = 3;
    if (get(o_frames, &frames, "frames", 0, 2, 2, "h") < 0) goto done;
    got = 4;
    if (get(o_wef, &wef, "wef", 0, 8, 3, "d") < 0) goto done;
    got = 5;
    if (get(o_out, &out, "out", 1, 2, 2, "h") < 0) goto done;
    got = 6;
    if (restart) {
        if (get(o_changed, &changed, "changed", 1, 1, 1, "?") < 0) goto done;
        got = 7;
    }

    Py_ssize_t k = slots.shape[0];
    Py_ssize_t cap = fs.shape[0];
    if (fs.shape[1] != K.n_f || held.shape[0] != cap || held.shape[1] != PACKET_SAMPLES
        || frames.shape[0] != k || frames.shape[1] != PACKET_SAMPLES || out.shape[0] != k
        || out.shape[1] != PACKET_SAMPLES || wef.shape[0] != 2 || wef.shape[1] < k || wef.shape[2] < 7
        || (restart && changed.shape[0] != k)) {
        PyErr_SetString(PyExc_ValueError, "masker step: arrays do not match");
        goto done;
    }
    /* Word 0 of a row whose only bit set is `unsteady`. */
    uint64_t unsteady_only = 0;
    if (restart)
        ((unsigned char *)&unsteady_only)[FQ.b_unsteady] = 1;
    /* Pass 1: is every row quiet? Nothing is written until it is known. */
    for (Py_ssize_t r = 0; r < k; r++) {
        Py_ssize_t s = *(Py_ssize_t *)AT(slots, r * slots.strides[0]);
        if (s < 0 || s >= cap) {
            PyErr_SetString(PyExc_IndexError, "masker step: slot out of range");
            goto done;
        }
        const char *row = AT(fs, s * fs.strides[0]);
        const double *f = (const double *)row;  /* rows of a C-contiguous (cap, n_f) array */
        if (fs.strides[1] != 8) {
            PyErr_SetString(PyExc_ValueError, "masker step: fs rows must be contiguous");
            goto done;
        }
        uint64_t w0, w1;
        memcpy(&w0, row + K.bits * 8, 8);
        memcpy(&w1, row + K.bits * 8 + 8, 8);
        if (w1)
            goto quiet_no;
        if (w0) {
            /* Only `unsteady` set, and truly so (not both capture and held): a restart or a direct row. */
            const unsigned char *b = (const unsigned char *)(row + K.bits * 8);
            if (!restart || w0 != unsteady_only || (b[FQ.b_capture] && b[FQ.b_held_valid]))
                goto quiet_no;
        }
        for (int j = 0; j < HIST_BLOCKS + NEW_BLOCKS; j++) {
            double e, l;
            if (j < HIST_BLOCKS) {
                e = f[K.hist_e + j];
                l = f[K.hist_l + j];
            } else {
                e = *(double *)AT(wef, r * wef.strides[1] + j * wef.strides[2]);
                l = *(double *)AT(wef, wef.strides[0] + r * wef.strides[1] + j * wef.strides[2]);
            }
            double floor = e >= K.weak_energy ? e : K.weak_energy;  /* np.maximum: no NaN here */
            if (e >= K.min_energy || l * 2.0 >= floor)
                goto quiet_no;
        }
    }
    /* Pass 2: every row is quiet; move the state. */
    for (Py_ssize_t r = 0; r < k; r++) {
        Py_ssize_t s = *(Py_ssize_t *)AT(slots, r * slots.strides[0]);
        double *f = (double *)AT(fs, s * fs.strides[0]);
        int16_t *h = (int16_t *)AT(held, s * held.strides[0]);
        int16_t *o = (int16_t *)AT(out, r * out.strides[0]);
        double e[NEW_BLOCKS], l[NEW_BLOCKS];
        for (int j = 0; j < NEW_BLOCKS; j++) {
            e[j] = *(double *)AT(wef, r * wef.strides[1] + (HIST_BLOCKS + j) * wef.strides[2]);
            l[j] = *(double *)AT(wef, wef.strides[0] + r * wef.strides[1] + (HIST_BLOCKS + j) * wef.strides[2]);
        }
        unsigned char *b = (unsigned char *)(f + K.bits);
        int delayed = !restart || (b[FQ.b_capture] && b[FQ.b_held_valid]);
        int filler = !delayed && b[FQ.b_capture];
        for (int i = 0; i < PACKET_SAMPLES; i++) {
            int16_t x = *(int16_t *)AT(frames, r * frames.strides[0] + i * frames.strides[1]);
            o[i * (out.strides[1] / 2)] = delayed ? h[i * (held.strides[1] / 2)] : (filler ? 0 : x);
            h[i * (held.strides[1] / 2)] = x;
        }
        if (restart)
            *(unsigned char *)AT(changed, r * changed.strides[0]) = (unsigned char)filler;
        if (filler) {  /* the look-ahead starts again with this packet: held, steady */
            b[FQ.b_held_valid] = 1;
            b[FQ.b_unsteady] = 0;
        }
        if (comfort) {
            /* levels[0] = level; levels[j + 1] = minimum(energy_j * (1/40), levels[j] * rise + abs) */
            double lv = f[K.level];
            f[K.levels] = lv;
            for (int j = 0; j < NEW_BLOCKS; j++) {
                double p = e[j] * K.inv_block;
                double t = lv * K.rise;
                t = t + K.rise_abs;
                lv = p <= t ? p : t;
                f[K.levels + j + 1] = lv;
            }
        }
        for (int j = 0; j < HIST_BLOCKS; j++) {
            f[K.hist_e + j] = e[NEW_BLOCKS - HIST_BLOCKS + j];
            f[K.hist_l + j] = l[NEW_BLOCKS - HIST_BLOCKS + j];
        }
        f[K.n_in] = f[K.n_in] + (double)PACKET_SAMPLES;
    }
    result = Py_True;
    Py_INCREF(result);
    goto done;
quiet_no:
    result = Py_False;
    Py_INCREF(result);
done:
    if (got >= 7) PyBuffer_Release(&changed);
    if (got >= 6) PyBuffer_Release(&out);
    if (got >= 5) PyBuffer_Release(&wef);
    if (got >= 4) PyBuffer_Release(&frames);
    if (got >= 3) PyBuffer_Release(&slots);
    if (got >= 2) PyBuffer_Release(&held);
    if (got >= 1) PyBuffer_Release(&fs);
    return result;
}

/* flush_quiet(fs, held, slots, out) -> bytes
 *   The held packets of `slots` released without their successor (`MaskerBank.flush`) where
 *   flush's own shortcut applies: the packet is held, no loose flag of blocks -2..3, no
 *   confirmed window or tone state, and the held blocks 1..3 make no window that may confirm
 *   (`_window_may_confirm`, the same comparisons on the same float64 values). Such a row
 *   leaves unchanged: out[r] = held, and the slot's state moves as flush moves it (not held,
 *   unsteady, filler = level). Returns one byte per row: 1 done here, 0 left alone (not held,
 *   or flush's full rule applies) for the caller to flush one by one. */
static inline int window_may_confirm(double e0, double e1, double e2, double l0, double l1, double l2)
{
    double e = e0 + e1;
    e = e + e2;
    double floor = FQ.weak_energy > e0 ? FQ.weak_energy : e0;  /* Python's max(e0, weak) */
    if (!(e >= FQ.min_window_energy || 2.0 * l0 >= floor))
        return 0;
    double ls = l0 + l1;
    ls = ls + l2;
    if (!(ls >= FQ.share * e))
        return 0;
    double hi = l0;  /* Python's max(l0, l1, l2): the first of equals */
    if (l1 > hi) hi = l1;
    if (l2 > hi) hi = l2;
    double t = FQ.steady * hi, g = FQ.gap * hi;
    return l0 >= t && (l1 >= t || e1 <= g) && (l2 >= t || e2 <= g);
}

static PyObject *flush_quiet(PyObject *mod, PyObject *args)
{
    PyObject *o_fs, *o_held, *o_slots, *o_out;
    if (!PyArg_ParseTuple(args, "OOOO", &o_fs, &o_held, &o_slots, &o_out))
        return NULL;
    if (!K.ready || !FQ.ready) {
        PyErr_SetString(PyExc_RuntimeError, "masker flush is not configured");
        return NULL;
    }
    Py_buffer fs, held, slots, out;
    int got = 0;
    PyObject *result = NULL;
    if (get(o_fs, &fs, "fs", 1, 8, 2, "d") < 0) goto done;
    got = 1;
    if (get(o_held, &held, "held", 0, 2, 2, "h") < 0) goto done;
    got = 2;
    if (get(o_slots, &slots, "slots", 0, sizeof(Py_ssize_t), 1, "lqn") < 0) goto done;
    got = 3;
    if (get(o_out, &out, "out", 1, 2, 2, "h") < 0) goto done;
    got = 4;
    Py_ssize_t k = slots.shape[0], cap = fs.shape[0];
    if (fs.shape[1] != K.n_f || fs.strides[1] != 8 || held.shape[0] != cap || held.shape[1] != PACKET_SAMPLES
        || out.shape[0] != k || out.shape[1] != PACKET_SAMPLES) {
        PyErr_SetString(PyExc_ValueError, "masker flush: arrays do not match");
        goto done;
    }
    for (Py_ssize_t r = 0; r < k; r++) {
        Py_ssize_t s = *(Py_ssize_t *)AT(slots, r * slots.strides[0]);
        if (s < 0 || s >= cap) {
            PyErr_SetString(PyExc_IndexError, "masker flush: slot out of range");
            goto done;
        }
    }
    result = PyBytes_FromStringAndSize(NULL, k);
    if (result == NULL) goto done;
    char *done_row = PyBytes_AS_STRING(result);
    for (Py_ssize_t r = 0; r < k; r++) {
        Py_ssize_t s = *(Py_ssize_t *)AT(slots, r * slots.strides[0]);
        double *f = (double *)AT(fs, s * fs.strides[0]);
        unsigned char *b = (unsigned char *)(f + K.bits);
        done_row[r] = 0;
        if (!b[FQ.b_held_valid])
            continue;
        int busy = 0;
        for (int i = 0; i < FQ.b_flags_end; i++)
            busy |= b[i];
        for (int i = FQ.b_confirmed; i < FQ.b_held_valid; i++)
            busy |= b[i];
        if (busy || window_may_confirm(f[K.hist_e], f[K.hist_e + 1], f[K.hist_e + 2],
                                       f[K.hist_l], f[K.hist_l + 1], f[K.hist_l + 2]))
            continue;
        const int16_t *h = (const int16_t *)AT(held, s * held.strides[0]);
        int16_t *o = (int16_t *)AT(out, r * out.strides[0]);
        for (int i = 0; i < PACKET_SAMPLES; i++)
            o[i * (out.strides[1] / 2)] = h[i * (held.strides[1] / 2)];
        b[FQ.b_held_valid] = 0;
        b[FQ.b_unsteady] = 1;
        f[FQ.filler] = f[K.level];
        done_row[r] = 1;
    }
done:
    if (got >= 4) PyBuffer_Release(&out);
    if (got >= 3) PyBuffer_Release(&slots);
    if (got >= 2) PyBuffer_Release(&held);
    if (got >= 1) PyBuffer_Release(&fs);
    return result;
}

static PyMethodDef methods[] = {
    {"set_basis", set_basis, METH_O, "Set the (40, 16) analysis basis (once, from dtmf.masker)."},
    {"features_blocks", features_blocks, METH_VARARGS, "Energy and line energy of (m, 40) float64 blocks into (m, 2)."},
    {"features_packets", features_packets, METH_VARARGS,
     "Energies and line energies of (k, 160) int16 packets' four blocks into columns 3..6 of two (k, 8) arrays."},
    {"configure", configure, METH_VARARGS, "Set the state layout and constants (once, from dtmf.masker)."},
    {"configure_flush", configure_flush, METH_VARARGS, "Set flush_quiet's layout and constants (once, from dtmf.masker)."},
    {"flush_quiet", flush_quiet, METH_VARARGS,
     "flush_quiet(fs, held, slots, out) -> bytes: release held packets that flush leaves unchanged."},
    {"quiet_step", quiet_step, METH_VARARGS,
     "MaskerBank.process's step when every row is quiet: True and the state moved, or False and nothing written."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dtmf._maskstep", NULL, -1, methods};

PyMODINIT_FUNC PyInit__maskstep(void) { return PyModule_Create(&module); }
