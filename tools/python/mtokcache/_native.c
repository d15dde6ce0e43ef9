/* The hot paths of mtokcache in C: reading a record out of its chunk (FORMAT 3.2, 4.1, 4.2) and
 * compressing one for the writer. Everything else, and every error, stays in Python.
 *
 * The reading functions take the happy path only: a record they cannot take exactly as the
 * Python reader would (any damage, any unusual but valid spelling of the header) makes them
 * return None, and the caller reads it again with the pure-Python code, which accepts it or
 * names what is wrong. So this file needs no error messages of its own, and it must never
 * accept what the Python reader refuses: every test below is at least as strict as its twin in
 * reader.py (named in the comments).
 *
 * Reading holds the GIL throughout: its zstd context and scratch buffer are shared by every
 * call, and a record is microseconds of work. Encoding lets go of it while it compresses, with
 * a context per thread. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>

#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_c_literalCompressionMode: a parameter, set through the stable API */
#include <zstd.h>

#define MAX_PAYLOAD (64u << 20) /* reader.MAX_PAYLOAD */
#define LABEL_MAX 2147483647LL  /* reader.LABEL_MAX */
#define MAX_LAYOUTS 1024        /* as reader._TAILS */
#define MAX_KEYS 32             /* metadata keys taken on the fast path; more go to Python */
#define OUT_ALIGN 64

enum { T_LATENTS, T_LOGVAR, T_INDICES, T_GROUPS };
enum { D_F32, D_F16, D_BF16, D_U32, D_U16, D_U8 };
static const int dtype_size[] = {4, 2, 2, 4, 2, 1};

typedef struct {
    int kind, dtype, size;
    Py_ssize_t count, begin; /* elements; byte offset in the data section */
} Tensor;

/* A record layout the Python reader has checked (reader._check_layout): the header text after the
 * metadata object, and the data section's length, name it exactly (reader._TAILS). */
typedef struct {
    char *tail;
    Py_ssize_t tail_len, data_len, k;
    int ntensors;
    Tensor t[4];
    int cls; /* the first layout with these tensors: headers differ in padding alone, batches mix them */
    /* What a record of this layout becomes (reader._learn_native): per f32 flag a tuple of
     * (name, NumPy dtype, shape, byte offset) of its arrays, and {name: stored dtype}. */
    PyObject *arrays[2], *dtypes;
} Layout;

static Layout layouts[MAX_LAYOUTS];
static int nlayouts;
static ZSTD_DCtx *dctx;
static PyObject *ndarray_type; /* numpy.ndarray (set_array_type) */
static PyObject *key_id, *key_view, *key_label, *key_source_size, *key_crop_box, *key_sha, *key_index, *key_dtypes;
static uint8_t *scratch;
static size_t scratch_cap;

static uint8_t *scratch_for(size_t n) {
    if (n > scratch_cap) {
        uint8_t *p = realloc(scratch, n);
        if (!p) return NULL;
        scratch = p;
        scratch_cap = n;
    }
    return scratch;
}

static inline uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* The record in `slot` of a chunk, decompressed into the scratch buffer; NULL where the Python
 * reader's _chunk_offsets and Cache._stored would refuse, or might. */
static const uint8_t *record_in_chunk(const uint8_t *chunk, Py_ssize_t size, Py_ssize_t slot, Py_ssize_t R,
                                      size_t *out_len) {
    if (size < 8) return NULL;
    uint32_t n = le32(chunk);
    if (n < 1 || n > R || 4 * ((Py_ssize_t)n + 2) > size) return NULL;
    const uint8_t *table = chunk + 4;
    if (le32(table) != 0) return NULL;
    uint32_t prev = 0;
    for (uint32_t i = 1; i <= n; i++) { /* the whole table, as every Python read checks it */
        uint32_t o = le32(table + 4 * i);
        if (o < prev) return NULL;
        prev = o;
    }
    Py_ssize_t base = 4 * ((Py_ssize_t)n + 2);
    if ((Py_ssize_t)prev != size - base) return NULL;
    if (slot < 0 || slot >= (Py_ssize_t)n) return NULL;
    uint32_t a = le32(table + 4 * slot), b = le32(table + 4 * (slot + 1));
    const uint8_t *frame = chunk + base + a;
    size_t flen = b - a;
    /* A zstd frame (not a skippable one) with its content size declared, a content checksum
     * (bit 2 of the frame header descriptor) and nothing after it in the slot. */
    if (flen < 5 || le32(frame) != 0xFD2FB528u || !(frame[4] & 0x04)) return NULL;
    unsigned long long declared = ZSTD_getFrameContentSize(frame, flen);
    if (declared == ZSTD_CONTENTSIZE_UNKNOWN || declared == ZSTD_CONTENTSIZE_ERROR || declared > MAX_PAYLOAD)
        return NULL;
    size_t whole = ZSTD_findFrameCompressedSize(frame, flen);
    if (ZSTD_isError(whole) || whole != flen) return NULL;
    uint8_t *dst = scratch_for(declared ? declared : 1);
    if (!dst) return NULL;
    if (!dctx && !(dctx = ZSTD_createDCtx())) return NULL;
    size_t got = ZSTD_decompressDCtx(dctx, dst, declared, frame, flen); /* checks the XXH64 checksum */
    if (ZSTD_isError(got) || got != declared) return NULL;
    *out_len = got;
    return dst;
}

/* -- the metadata object (reader._parse_header's fast path, reader._metadata) ------------------ */

typedef struct {
    const uint8_t *id; Py_ssize_t id_len;
    const uint8_t *sha; Py_ssize_t sha_len;
    long long view, label, source_size[2], crop_box[4];
} Meta;

/* A JSON string without escapes or control characters (anything else: Python decides). */
static const uint8_t *string_at(const uint8_t *p, const uint8_t *end, const uint8_t **s, Py_ssize_t *len) {
    if (p >= end || *p != '"') return NULL;
    const uint8_t *q = ++p;
    while (q < end && *q != '"') {
        if (*q == '\\' || *q < 0x20) return NULL;
        q++;
    }
    if (q >= end) return NULL;
    *s = p;
    *len = q - p;
    return q + 1;
}

/* Decimal digits, at most 18 (no overflow), as reader._dec's common case; a leading '-' when `sign`. */
static int decimal(const uint8_t *s, Py_ssize_t len, int sign, long long *out) {
    int neg = 0;
    if (sign && len > 0 && s[0] == '-') { neg = 1; s++; len--; }
    if (len < 1 || len > 18) return 0;
    long long v = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        v = v * 10 + (s[i] - '0');
    }
    *out = neg ? -v : v;
    return 1;
}

/* "a,b" or "a,b,c,d" of plain digits (reader._ints' common case). */
static int int_list(const uint8_t *s, Py_ssize_t len, int count, long long *out) {
    const uint8_t *end = s + len;
    for (int i = 0; i < count; i++) {
        const uint8_t *q = s;
        while (q < end && *q != ',') q++;
        if (!decimal(s, q - s, 0, &out[i])) return 0;
        if (i < count - 1) {
            if (q >= end) return 0;
            s = q + 1;
        } else if (q != end) {
            return 0;
        }
    }
    return 1;
}

static int key_is(const uint8_t *k, Py_ssize_t len, const char *name) {
    return (size_t)len == strlen(name) && memcmp(k, name, len) == 0;
}

/* Parses `{"__metadata__":{"k":"v",...}` at the start of the header; returns where the tail
 * starts, or NULL. Requires what reader._metadata requires, with the plain spellings only. */
static const uint8_t *metadata(const uint8_t *p, const uint8_t *end, Meta *m) {
    static const char open[] = "{\"__metadata__\":{";
    size_t olen = sizeof(open) - 1;
    if ((size_t)(end - p) < olen || memcmp(p, open, olen) != 0) return NULL;
    const uint8_t *start = p + olen - 1;
    p += olen;
    const uint8_t *keys[MAX_KEYS];
    Py_ssize_t key_lens[MAX_KEYS];
    int nkeys = 0, have_format = 0, have_view = 0, have_label = 0, have_size = 0, have_box = 0;
    m->id = NULL;
    m->sha = (const uint8_t *)"";
    m->sha_len = 0;
    if (p < end && *p == '}') return NULL; /* no id: Python says so */
    for (;;) {
        const uint8_t *k, *v;
        Py_ssize_t klen, vlen;
        if (!(p = string_at(p, end, &k, &klen))) return NULL;
        if (p >= end || *p++ != ':') return NULL;
        if (!(p = string_at(p, end, &v, &vlen))) return NULL;
        if (nkeys == MAX_KEYS) return NULL;
        for (int i = 0; i < nkeys; i++) /* a key named twice: Python refuses it */
            if (key_lens[i] == klen && memcmp(keys[i], k, klen) == 0) return NULL;
        keys[nkeys] = k;
        key_lens[nkeys++] = klen;
        if (key_is(k, klen, "mtok.format")) {
            if (!(vlen == 1 && v[0] == '1')) return NULL;
            have_format = 1;
        } else if (key_is(k, klen, "id")) {
            m->id = v;
            m->id_len = vlen;
        } else if (key_is(k, klen, "view")) {
            if (!decimal(v, vlen, 0, &m->view) || m->view > 65535) return NULL;
            have_view = 1;
        } else if (key_is(k, klen, "label")) {
            if (!decimal(v, vlen, 1, &m->label) || m->label < -1 || m->label > LABEL_MAX) return NULL;
            have_label = 1;
        } else if (key_is(k, klen, "source_size")) {
            if (!int_list(v, vlen, 2, m->source_size)) return NULL;
            have_size = 1;
        } else if (key_is(k, klen, "crop_box")) {
            if (!int_list(v, vlen, 4, m->crop_box)) return NULL;
            have_box = 1;
        } else if (key_is(k, klen, "source_sha256")) {
            m->sha = v;
            m->sha_len = vlen;
        }
        if (p >= end) return NULL;
        if (*p == '}') { p++; break; }
        if (*p++ != ',') return NULL;
    }
    if (!(have_format && m->id && have_view && have_label && have_size && have_box)) return NULL;
    /* Python decodes the header as UTF-8: text beyond ASCII must be valid. */
    for (const uint8_t *q = start; q < p; q++) {
        if (*q >= 0x80) {
            PyObject *u = PyUnicode_DecodeUTF8((const char *)start, p - start, "strict");
            if (!u) { PyErr_Clear(); return NULL; }
            Py_DECREF(u);
            break;
        }
    }
    return p;
}

/* -- tensors ------------------------------------------------------------------------------------ */

static inline float half_to_float(uint16_t h) {
    /* Exact, as NumPy's float16 -> float32 (npy_halfbits_to_floatbits). */
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = h & 0x7c00u, sig = h & 0x03ffu, f;
    if (exp == 0) {
        if (sig == 0) {
            f = sign;
        } else {
            int e = 0;
            sig <<= 1;
            while (!(sig & 0x0400u)) { sig <<= 1; e++; }
            f = sign | ((uint32_t)(127 - 15 - e) << 23) | ((sig & 0x03ffu) << 13);
        }
    } else if (exp == 0x7c00u) {
        f = sign | 0x7f800000u | (sig << 13);
    } else {
        f = sign | ((exp >> 10) + 112) << 23 | (sig << 13);
    }
    float out;
    memcpy(&out, &f, 4);
    return out;
}

/* Element i of a stored tensor (byte planes undone when `shuffled`), widened to 32 bits. */
static inline uint32_t element(const uint8_t *src, Py_ssize_t n, int size, int shuffled, Py_ssize_t i) {
    uint32_t v = 0;
    for (int j = 0; j < size; j++) v |= (uint32_t)src[shuffled ? j * n + i : i * size + j] << (8 * j);
    return v;
}

/* Writes tensor `t` of a record (data section at `data`) to `dst` as `out` bytes per element:
 * the stored bytes (out == size), float32 from a float dtype (f32), or wider integers. */
static void put_tensor(const Tensor *t, const uint8_t *data, int shuffled, int f32, int out, uint8_t *dst) {
    const uint8_t *src = data + t->begin;
    Py_ssize_t n = t->count;
    int s = t->size;
    int is_float = t->kind == T_LATENTS || t->kind == T_LOGVAR;
    if (s == 1) {
        if (out == 1) memcpy(dst, src, n);
        else for (Py_ssize_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = src[i];
    } else if (!shuffled && out == s && !(is_float && f32 && t->dtype != D_F32)) {
        memcpy(dst, src, n * s);
    } else if (s == 2 && out == 2) {
        const uint8_t *lo = src, *hi = src + n;
        uint16_t *o = (uint16_t *)dst;
        for (Py_ssize_t i = 0; i < n; i++) o[i] = (uint16_t)(lo[i] | hi[i] << 8); /* shuffled here */
    } else if (is_float && f32 && t->dtype == D_BF16) {
        uint32_t *o = (uint32_t *)dst;
        if (shuffled)
            for (Py_ssize_t i = 0; i < n; i++) o[i] = (uint32_t)src[i] << 16 | (uint32_t)src[n + i] << 24;
        else
            for (Py_ssize_t i = 0; i < n; i++) o[i] = (uint32_t)src[2 * i] << 16 | (uint32_t)src[2 * i + 1] << 24;
    } else if (is_float && f32 && t->dtype == D_F16) {
        float *o = (float *)dst;
        for (Py_ssize_t i = 0; i < n; i++) o[i] = half_to_float((uint16_t)element(src, n, 2, shuffled, i));
    } else if (s == 4 && shuffled) {
        const uint8_t *p0 = src, *p1 = src + n, *p2 = src + 2 * n, *p3 = src + 3 * n;
        uint32_t *o = (uint32_t *)dst;
        for (Py_ssize_t i = 0; i < n; i++)
            o[i] = (uint32_t)p0[i] | (uint32_t)p1[i] << 8 | (uint32_t)p2[i] << 16 | (uint32_t)p3[i] << 24;
    } else { /* widening u16 indices to u32 */
        uint32_t *o = (uint32_t *)dst;
        for (Py_ssize_t i = 0; i < n; i++) o[i] = element(src, n, s, shuffled, i);
    }
}

/* Whether every group id is a kept token (reader: "group id ... is not a kept token"). */
static int groups_ok(const Tensor *t, const uint8_t *data, Py_ssize_t k, int shuffled) {
    const uint8_t *src = data + t->begin;
    uint32_t worst = 0;
    for (Py_ssize_t i = 0; i < t->count; i++) {
        uint32_t v = element(src, t->count, t->size, shuffled, i);
        worst = v > worst ? v : worst;
    }
    return worst < (uint32_t)k;
}

/* A record of a known layout: its layout number, data section and metadata; -1 if it is not one. */
static int parse_record(const uint8_t *rec, size_t len, int shuffled, const uint8_t **data, Meta *m) {
    if (len < 8) return -1;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | rec[i];
    if (hlen > len - 8) return -1;
    const uint8_t *hdr = rec + 8, *hend = hdr + hlen;
    const uint8_t *tail = metadata(hdr, hend, m);
    if (!tail) return -1;
    Py_ssize_t tail_len = hend - tail, data_len = (Py_ssize_t)(len - 8 - hlen);
    for (int i = 0; i < nlayouts; i++) {
        Layout *l = &layouts[i];
        if (l->data_len == data_len && l->tail_len == tail_len && memcmp(l->tail, tail, tail_len) == 0) {
            *data = hend;
            for (int j = 0; j < l->ntensors; j++)
                if (l->t[j].kind == T_GROUPS && !groups_ok(&l->t[j], hend, l->k, shuffled)) return -1;
            return i;
        }
    }
    return -1;
}

static int get_chunk(PyObject *obj, Py_buffer *view) {
    return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE);
}

/* Puts the record's metadata into `d` under reader._metadata's keys; 0, or -1 with an error set. */
static int put_meta(PyObject *d, const Meta *m) {
    PyObject *v[6];
    v[0] = PyUnicode_DecodeUTF8((const char *)m->id, m->id_len, "strict");
    v[1] = PyLong_FromLongLong(m->view);
    v[2] = PyLong_FromLongLong(m->label);
    v[3] = Py_BuildValue("(LL)", m->source_size[0], m->source_size[1]);
    v[4] = Py_BuildValue("(LLLL)", m->crop_box[0], m->crop_box[1], m->crop_box[2], m->crop_box[3]);
    v[5] = PyUnicode_DecodeUTF8((const char *)m->sha, m->sha_len, "strict");
    PyObject *keys[6] = {key_id, key_view, key_label, key_source_size, key_crop_box, key_sha};
    int rc = 0;
    for (int i = 0; i < 6; i++)
        if (!v[i] || (rc == 0 && PyDict_SetItem(d, keys[i], v[i]) < 0)) rc = -1;
    for (int i = 0; i < 6; i++) Py_XDECREF(v[i]);
    return rc;
}

/* Output bytes per element of tensor t: single records keep integer dtypes; batches widen
 * indices to u32 and groups to u16 (as Cache.batch). */
static int out_size(const Tensor *t, int f32, int batch) {
    if ((t->kind == T_LATENTS || t->kind == T_LOGVAR) && f32) return 4;
    if (batch && t->kind == T_INDICES) return 4;
    if (batch && t->kind == T_GROUPS) return 2;
    return t->size;
}

static Py_ssize_t aligned(Py_ssize_t n) { return (n + OUT_ALIGN - 1) / OUT_ALIGN * OUT_ALIGN; }

/* The record in slot args[1] of chunk args[0] (R = args[2], byte planes when args[3]): its layout
 * number, with its data section and metadata; -1 when it leaves the fast path, -2 with an
 * error set. */
static int record_arg(PyObject *const *args, const uint8_t **data, Meta *m) {
    Py_ssize_t slot = PyLong_AsSsize_t(args[1]), R = PyLong_AsSsize_t(args[2]);
    int shuffled = PyObject_IsTrue(args[3]);
    if (PyErr_Occurred()) return -2;
    Py_buffer chunk;
    if (get_chunk(args[0], &chunk) < 0) return -2;
    size_t len;
    const uint8_t *rec = record_in_chunk(chunk.buf, chunk.len, slot, R, &len);
    int li = rec ? parse_record(rec, len, shuffled, data, m) : -1;
    PyBuffer_Release(&chunk);
    return li;
}

/* decode(chunk, slot, R, shuffled, f32, index) -> the record's dict, as reader._decode makes it,
 * or None. Its arrays are views of one bytearray holding the tensors in the layout's order,
 * each at a multiple of 64 bytes. */
static PyObject *decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) { PyErr_SetString(PyExc_TypeError, "decode(chunk, slot, R, shuffled, f32, index)"); return NULL; }
    int shuffled = PyObject_IsTrue(args[3]), f32 = PyObject_IsTrue(args[4]) == 1;
    const uint8_t *data;
    Meta m;
    int li = record_arg(args, &data, &m);
    if (li == -2) return NULL;
    if (li < 0 || !ndarray_type || !layouts[li].arrays[f32]) Py_RETURN_NONE;
    Layout *l = &layouts[li];
    Py_ssize_t total = 0;
    for (int j = 0; j < l->ntensors; j++) total = aligned(total) + l->t[j].count * out_size(&l->t[j], f32, 0);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, total);
    if (!out) return NULL;
    uint8_t *o = (uint8_t *)PyByteArray_AS_STRING(out);
    Py_ssize_t at = 0;
    for (int j = 0; j < l->ntensors; j++) {
        at = aligned(at);
        int os = out_size(&l->t[j], f32, 0);
        put_tensor(&l->t[j], data, shuffled, f32, os, o + at);
        at += l->t[j].count * os;
    }
    PyObject *d = PyDict_New(), *dtypes = NULL;
    if (!d) goto fail;
    PyObject *arrays = l->arrays[f32];
    for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(arrays); j++) {
        PyObject *spec = PyTuple_GET_ITEM(arrays, j); /* (name, dtype, shape, offset) */
        PyObject *argv[4] = {PyTuple_GET_ITEM(spec, 2), PyTuple_GET_ITEM(spec, 1), out, PyTuple_GET_ITEM(spec, 3)};
        PyObject *arr = PyObject_Vectorcall(ndarray_type, argv, 4, NULL);
        if (!arr) goto fail;
        int rc = PyDict_SetItem(d, PyTuple_GET_ITEM(spec, 0), arr);
        Py_DECREF(arr);
        if (rc < 0) goto fail;
    }
    if (put_meta(d, &m) < 0 || PyDict_SetItem(d, key_index, args[5]) < 0) goto fail;
    if (!(dtypes = PyDict_Copy(l->dtypes)) || PyDict_SetItem(d, key_dtypes, dtypes) < 0) goto fail;
    Py_DECREF(dtypes);
    Py_DECREF(out);
    return d;
fail:
    Py_XDECREF(dtypes);
    Py_XDECREF(d);
    Py_DECREF(out);
    return NULL;
}

/* layout(chunk, slot, R, shuffled) -> the layout number of a record (for a batch's arrays), -1
 * when the record leaves the fast path. */
static PyObject *layout(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "layout(chunk, slot, R, shuffled)"); return NULL; }
    const uint8_t *data;
    Meta m;
    int li = record_arg(args, &data, &m);
    return li == -2 ? NULL : PyLong_FromLong(li);
}

/* decode_rows(chunk, slots, R, shuffled, f32, layout, outs, labels, views, row) -> None | ids.
 * Decodes the records in `slots` (a sequence of slot numbers) of one chunk into rows row,
 * row + 1, ... of a batch: `outs` holds one writable buffer per tensor of the layout, in its
 * order, of [B, count] elements (out_size with batch widening); labels and views are int32 [B].
 * None when any record is not of `layout` or leaves the fast path (the caller then decodes the
 * batch in Python; rows written so far are simply overwritten). */
static PyObject *decode_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "decode_rows(chunk, slots, R, shuffled, f32, layout, outs, labels, views, row)");
        return NULL;
    }
    Py_ssize_t R = PyLong_AsSsize_t(args[2]);
    int shuffled = PyObject_IsTrue(args[3]), f32 = PyObject_IsTrue(args[4]);
    long li = PyLong_AsLong(args[5]);
    Py_ssize_t row = PyLong_AsSsize_t(args[9]);
    if (PyErr_Occurred()) return NULL;
    if (li < 0 || li >= nlayouts) { PyErr_SetString(PyExc_ValueError, "unknown layout"); return NULL; }
    Layout *l = &layouts[li];
    PyObject *slots = PySequence_Fast(args[1], "slots must be a sequence");
    if (!slots) return NULL;
    Py_ssize_t nslots = PySequence_Fast_GET_SIZE(slots);
    if (!PyTuple_Check(args[6]) || PyTuple_GET_SIZE(args[6]) != l->ntensors) {
        Py_DECREF(slots);
        PyErr_SetString(PyExc_ValueError, "outs must be a tuple of one buffer per tensor");
        return NULL;
    }
    Py_buffer chunk, outs[4], labels, views;
    int nouts = 0, have_chunk = 0, have_labels = 0, have_views = 0;
    PyObject *ids = NULL, *result = NULL;
    if (get_chunk(args[0], &chunk) < 0) goto done;
    have_chunk = 1;
    for (; nouts < l->ntensors; nouts++)
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args[6], nouts), &outs[nouts], PyBUF_WRITABLE) < 0) goto done;
    if (PyObject_GetBuffer(args[7], &labels, PyBUF_WRITABLE) < 0) goto done;
    have_labels = 1;
    if (PyObject_GetBuffer(args[8], &views, PyBUF_WRITABLE) < 0) goto done;
    have_views = 1;
    Py_ssize_t rows = labels.len / 4;
    if (row < 0 || row + nslots > rows || views.len / 4 != rows) { PyErr_SetString(PyExc_ValueError, "rows"); goto done; }
    for (int j = 0; j < l->ntensors; j++)
        if (outs[j].len != rows * l->t[j].count * out_size(&l->t[j], f32, 1)) {
            PyErr_SetString(PyExc_ValueError, "an output buffer has the wrong size");
            goto done;
        }
    if (!(ids = PyList_New(nslots))) goto done;
    for (Py_ssize_t i = 0; i < nslots; i++) {
        Py_ssize_t slot = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(slots, i));
        if (slot == -1 && PyErr_Occurred()) goto done;
        size_t len;
        const uint8_t *rec = record_in_chunk(chunk.buf, chunk.len, slot, R, &len), *data;
        Meta m;
        int got = rec ? parse_record(rec, len, shuffled, &data, &m) : -1;
        if (got < 0 || layouts[got].cls != l->cls) {
            Py_INCREF(Py_None);
            result = Py_None;
            goto done;
        }
        for (int j = 0; j < l->ntensors; j++) {
            int os = out_size(&l->t[j], f32, 1);
            put_tensor(&l->t[j], data, shuffled, f32, os, (uint8_t *)outs[j].buf + (row + i) * l->t[j].count * os);
        }
        ((int32_t *)labels.buf)[row + i] = (int32_t)m.label;
        ((int32_t *)views.buf)[row + i] = (int32_t)m.view;
        PyObject *id = PyUnicode_DecodeUTF8((const char *)m.id, m.id_len, "strict");
        if (!id) goto done;
        PyList_SET_ITEM(ids, i, id);
    }
    result = ids;
    ids = NULL;
done:
    Py_XDECREF(ids);
    Py_DECREF(slots);
    if (have_chunk) PyBuffer_Release(&chunk);
    for (int j = 0; j < nouts; j++) PyBuffer_Release(&outs[j]);
    if (have_labels) PyBuffer_Release(&labels);
    if (have_views) PyBuffer_Release(&views);
    return result;
}

/* learn(tail, data_len, k, tensors, arrays, arrays_f32, dtypes) -> layout number: a layout the
 * Python reader has checked, tensors as ((kind, dtype, count, begin), ...) in header order (kind:
 * 0 latents, 1 logvar, 2 indices, 3 groups; dtype: 0 F32, 1 F16, 2 BF16, 3 U32, 4 U16, 5 U8);
 * arrays: ((name, NumPy dtype, shape, offset), ...) of a decoded record, as stored and with
 * float32 latents; dtypes: {name: stored dtype}. -1 when full. */
static PyObject *learn(PyObject *self, PyObject *args) {
    const char *tail;
    Py_ssize_t tail_len, data_len, k;
    PyObject *tensors, *arrays_raw, *arrays_f32, *dtypes;
    if (!PyArg_ParseTuple(args, "y#nnO!O!O!O!", &tail, &tail_len, &data_len, &k, &PyTuple_Type, &tensors,
                          &PyTuple_Type, &arrays_raw, &PyTuple_Type, &arrays_f32, &PyDict_Type, &dtypes))
        return NULL;
    PyObject *arrays[2] = {arrays_raw, arrays_f32};
    for (int f = 0; f < 2; f++)
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(arrays[f]); j++) {
            PyObject *spec = PyTuple_GET_ITEM(arrays[f], j);
            if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 4) {
                PyErr_SetString(PyExc_ValueError, "arrays: (name, dtype, shape, offset) tuples");
                return NULL;
            }
        }
    for (int i = 0; i < nlayouts; i++)
        if (layouts[i].data_len == data_len && layouts[i].tail_len == tail_len && !memcmp(layouts[i].tail, tail, tail_len))
            return PyLong_FromLong(i);
    Py_ssize_t nt = PyTuple_GET_SIZE(tensors);
    if (nlayouts == MAX_LAYOUTS || nt < 1 || nt > 4) return PyLong_FromLong(-1);
    Layout l = {0};
    l.data_len = data_len;
    l.k = k;
    l.ntensors = (int)nt;
    for (Py_ssize_t j = 0; j < nt; j++) {
        Tensor *t = &l.t[j];
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(tensors, j), "iinn", &t->kind, &t->dtype, &t->count, &t->begin))
            return NULL;
        if (t->kind < 0 || t->kind > 3 || t->dtype < 0 || t->dtype > 5 || t->count < 0 || t->begin < 0) {
            PyErr_SetString(PyExc_ValueError, "bad tensor");
            return NULL;
        }
        t->size = dtype_size[t->dtype];
        if (t->begin + t->count * t->size > data_len) {
            PyErr_SetString(PyExc_ValueError, "tensor outside the data");
            return NULL;
        }
    }
    l.cls = nlayouts;
    for (int i = 0; i < nlayouts; i++) {
        const Layout *o = &layouts[i];
        int same = o->data_len == l.data_len && o->k == l.k && o->ntensors == l.ntensors;
        for (int j = 0; same && j < l.ntensors; j++)
            same = o->t[j].kind == l.t[j].kind && o->t[j].dtype == l.t[j].dtype && o->t[j].count == l.t[j].count &&
                   o->t[j].begin == l.t[j].begin;
        if (same) { l.cls = o->cls; break; }
    }
    if (!(l.tail = malloc(tail_len ? tail_len : 1))) return PyErr_NoMemory();
    memcpy(l.tail, tail, tail_len);
    l.tail_len = tail_len;
    for (int f = 0; f < 2; f++) { Py_INCREF(arrays[f]); l.arrays[f] = arrays[f]; } /* kept for good, as the layout */
    Py_INCREF(dtypes);
    l.dtypes = dtypes;
    layouts[nlayouts] = l;
    return PyLong_FromLong(nlayouts++);
}

/* -- writing ------------------------------------------------------------------------------------ */

/* Each thread that encodes has its own compression context and payload buffer (encode runs
 * without the GIL, so a Writer can compress a batch's records on several threads); freed when
 * the thread ends. */
typedef struct {
    ZSTD_CCtx *cctx;
    int level, raw;
    uint8_t *buf;
    size_t cap;
} Encoder;

static pthread_key_t encoder_key;

static void encoder_free(void *p) {
    Encoder *e = p;
    ZSTD_freeCCtx(e->cctx);
    free(e->buf);
    free(e);
}

static Encoder *encoder_for(size_t need) {
    Encoder *e = pthread_getspecific(encoder_key);
    if (!e) {
        if (!(e = calloc(1, sizeof *e))) return NULL;
        e->level = -1000;
        e->raw = -1;
        if (!(e->cctx = ZSTD_createCCtx()) || pthread_setspecific(encoder_key, e) != 0) {
            ZSTD_freeCCtx(e->cctx);
            free(e);
            return NULL;
        }
    }
    if (need > e->cap) {
        uint8_t *p = realloc(e->buf, need);
        if (!p) return NULL;
        e->buf = p;
        e->cap = need;
    }
    return e;
}

/* encode(header, tensors, shuffle, level, raw_literals) -> zstd frame of the stored record:
 * `header` is the payload's first bytes (u64 length and the padded JSON header), `tensors` a
 * tuple of C-contiguous arrays whose bytes follow it, each byte-shuffled by its item size when
 * `shuffle` (FORMAT 4.2). The frame declares its size and carries its checksum. The shuffle and
 * the compression run without the GIL. */
static PyObject *encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "encode(header, tensors: tuple, shuffle, level, raw_literals)");
        return NULL;
    }
    int shuffle = PyObject_IsTrue(args[2]), raw = PyObject_IsTrue(args[4]);
    int level = (int)PyLong_AsLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t nt = PyTuple_GET_SIZE(args[1]);
    Py_buffer header, t[8];
    if (nt > 8) { PyErr_SetString(PyExc_ValueError, "at most 8 tensors"); return NULL; }
    if (PyObject_GetBuffer(args[0], &header, PyBUF_SIMPLE) < 0) return NULL;
    int got = 0;
    PyObject *frame = NULL;
    size_t total = header.len;
    for (; got < nt; got++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(args[1], got), &t[got], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
        total += t[got].len;
    }
    if (total > MAX_PAYLOAD) { PyErr_SetString(PyExc_ValueError, "record larger than 64 MiB"); goto done; }
    Encoder *e = encoder_for(total);
    if (!e) { PyErr_NoMemory(); goto done; }
    size_t bound = ZSTD_compressBound(total);
    frame = PyBytes_FromStringAndSize(NULL, bound);
    if (!frame) goto done;
    size_t n = 0;
    int refused = 0;
    Py_BEGIN_ALLOW_THREADS
    uint8_t *payload = e->buf;
    memcpy(payload, header.buf, header.len);
    size_t at = header.len;
    for (int j = 0; j < nt; j++) {
        const uint8_t *src = t[j].buf;
        Py_ssize_t sz = t[j].itemsize, count = sz ? t[j].len / sz : 0;
        if (shuffle && sz == 2) {
            for (Py_ssize_t i = 0; i < count; i++) { payload[at + i] = src[2 * i]; payload[at + count + i] = src[2 * i + 1]; }
        } else if (shuffle && sz > 2) {
            for (Py_ssize_t i = 0; i < count; i++)
                for (Py_ssize_t b = 0; b < sz; b++) payload[at + b * count + i] = src[i * sz + b];
        } else {
            memcpy(payload + at, src, t[j].len);
        }
        at += t[j].len;
    }
    if (level != e->level || raw != e->raw) {
        ZSTD_CCtx_reset(e->cctx, ZSTD_reset_session_and_parameters);
        refused = ZSTD_isError(ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_compressionLevel, level)) ||
                  ZSTD_isError(ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_checksumFlag, 1)) ||
                  ZSTD_isError(ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_contentSizeFlag, 1)) ||
                  ZSTD_isError(ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_literalCompressionMode,
                                                      raw ? ZSTD_ps_disable : ZSTD_ps_auto));
        e->level = refused ? -1000 : level;
        e->raw = raw;
    }
    if (!refused) n = ZSTD_compress2(e->cctx, PyBytes_AS_STRING(frame), bound, payload, total);
    Py_END_ALLOW_THREADS
    if (refused) {
        Py_CLEAR(frame);
        PyErr_SetString(PyExc_ValueError, "zstd refused the compression parameters");
    } else if (ZSTD_isError(n)) {
        Py_CLEAR(frame);
        PyErr_Format(PyExc_RuntimeError, "zstd: %s", ZSTD_getErrorName(n));
    } else {
        _PyBytes_Resize(&frame, (Py_ssize_t)n);
    }
done:
    PyBuffer_Release(&header);
    for (int j = 0; j < got; j++) PyBuffer_Release(&t[j]);
    return frame;
}

/* -- opening a shard (reader._values_past_end) -------------------------------------------------- */

static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

/* values_past_end(fd, size, psize, roots) -> [(database, key)]: reader._values_past_end's walk of
 * the trees whose roots are given as ((name, root page), ...), reading pages with pread: the
 * large values whose overflow pages would run past `size`. The same pages and tests as the Python
 * walk (which stays the fallback), so the same answer. */
static PyObject *values_past_end(PyObject *self, PyObject *args) {
    int fd;
    long long size, psize;
    PyObject *roots;
    if (!PyArg_ParseTuple(args, "iLLO!", &fd, &size, &psize, &PyTuple_Type, &roots)) return NULL;
    if (psize < 512 || psize > 65536 || size < 0) { PyErr_SetString(PyExc_ValueError, "page size"); return NULL; }
    uint64_t pages = (uint64_t)size / (uint64_t)psize;
    uint8_t *seen = calloc(pages / 8 + 1, 1);
    uint64_t *todo = malloc(sizeof(uint64_t) * (pages + 1));
    uint8_t *page = malloc((size_t)psize);
    PyObject *bad = PyList_New(0);
    if (!seen || !todo || !page || !bad) {
        free(seen); free(todo); free(page); Py_XDECREF(bad);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t r = 0; r < PyTuple_GET_SIZE(roots); r++) {
        PyObject *name;
        unsigned long long root;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(roots, r), "UK", &name, &root)) goto fail;
        memset(seen, 0, pages / 8 + 1); /* each tree walked on its own, as the Python loop does */
        size_t n = 0;
        if (root < pages) { todo[n++] = root; seen[root / 8] |= 1 << (root % 8); }
        while (n) {
            uint64_t pgno = todo[--n];
            ssize_t got;
            Py_BEGIN_ALLOW_THREADS
            got = pread(fd, page, (size_t)psize, (off_t)(pgno * (uint64_t)psize));
            Py_END_ALLOW_THREADS
            if (got < psize) continue;
            uint16_t flags = le16(page + 10), lower = le16(page + 12);
            if (!(flags & 0x03) || lower < 16 || lower > psize) continue;
            for (int i = 0; i < (lower - 16) / 2; i++) {
                uint16_t ptr = le16(page + 16 + 2 * i);
                if (ptr + 8 > psize) continue;
                uint16_t lo = le16(page + ptr), hi = le16(page + ptr + 2), nflags = le16(page + ptr + 4),
                         ksize = le16(page + ptr + 6);
                if (flags & 0x01) { /* branch: the child's page number */
                    uint64_t child = (uint64_t)lo | (uint64_t)hi << 16 | (uint64_t)nflags << 32;
                    if (child < pages && !(seen[child / 8] & (1 << (child % 8)))) {
                        seen[child / 8] |= 1 << (child % 8);
                        todo[n++] = child;
                    }
                } else if ((nflags & 0x01) && ptr + 8 + ksize + 8 <= psize) { /* F_BIGDATA */
                    uint64_t opg = le64(page + ptr + 8 + ksize);
                    /* opg * psize + 16 + length > size, without overflowing */
                    uint64_t length = (uint64_t)lo | (uint64_t)hi << 16;
                    if (opg > ((uint64_t)size + (uint64_t)psize) / (uint64_t)psize ||
                        opg * (uint64_t)psize + 16 + length > (uint64_t)size) {
                        PyObject *item = Py_BuildValue("(Oy#)", name, (const char *)page + ptr + 8, (Py_ssize_t)ksize);
                        if (!item || PyList_Append(bad, item) < 0) { Py_XDECREF(item); goto fail; }
                        Py_DECREF(item);
                    }
                }
            }
        }
    }
    free(seen); free(todo); free(page);
    return bad;
fail:
    free(seen); free(todo); free(page);
    Py_DECREF(bad);
    return NULL;
}

static PyObject *set_array_type(PyObject *self, PyObject *type) {
    Py_INCREF(type);
    Py_XSETREF(ndarray_type, type);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL, "A record of a known layout, or None."},
    {"decode_rows", (PyCFunction)(void (*)(void))decode_rows, METH_FASTCALL, "Records of one chunk into batch rows."},
    {"layout", (PyCFunction)(void (*)(void))layout, METH_FASTCALL, "A record's layout number, or -1."},
    {"set_array_type", set_array_type, METH_O, "The type decode makes arrays with (numpy.ndarray)."},
    {"learn", learn, METH_VARARGS, "Registers a checked record layout."},
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL, "A record's zstd frame."},
    {"values_past_end", values_past_end, METH_VARARGS, "Large values that run past the end of a shard file."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "mtokcache._native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
    if (!(key_id = PyUnicode_InternFromString("id")) || !(key_view = PyUnicode_InternFromString("view")) ||
        !(key_label = PyUnicode_InternFromString("label")) ||
        !(key_source_size = PyUnicode_InternFromString("source_size")) ||
        !(key_crop_box = PyUnicode_InternFromString("crop_box")) ||
        !(key_sha = PyUnicode_InternFromString("source_sha256")) || !(key_index = PyUnicode_InternFromString("index")) ||
        !(key_dtypes = PyUnicode_InternFromString("dtypes")))
        return NULL;
    if (pthread_key_create(&encoder_key, encoder_free) != 0) return PyErr_NoMemory();
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "zstd_version", ZSTD_versionString()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
