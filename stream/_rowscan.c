/*
 * _rowscan: the decoder's native fast path (see stream/decode.py, "Native path").
 *
 * Why it exists: for 186-feature events most of the decoder's time was orjson building one
 * Python float per feature and one dict entry per name, only for the values to be packed into
 * a float64 row a moment later. This scanner reads each message once and writes its feature
 * values straight into the caller's float64 matrix; no Python object is made per feature.
 *
 * What it is not: a validator. It only says yes to messages whose shape it fully understands,
 * and returns None for anything else, so that the Python paths (which define what is
 * accepted) decide. For a message it says yes to it returns the "header": the message's bytes
 * with the top-level "features" member cut out, which Python parses with orjson and validates
 * with pydantic exactly as before. Everything outside the cut is kept verbatim, so a header
 * that is not valid JSON fails there and the message goes the Python way.
 *
 * It says yes only when:
 *  - the message is one JSON object (whitespace around it allowed), whose top-level keys carry
 *    no escape, and which has exactly one "features" key;
 *  - features is an array of exactly n_features JSON numbers, or an object whose keys are the
 *    manifest's names, unescaped, in the manifest's order, each exactly once, with no other key,
 *    and with JSON numbers as values;
 *  - every number converts to a finite double without over- or underflow to zero, and integer
 *    literals have at most 18 digits (orjson's int range is wider; those go the Python way).
 *
 * Numbers are converted as orjson + pydantic convert them: a literal with a fraction or an
 * exponent is rounded once to the nearest double (Clinger's exact fast case, else CPython's
 * correctly rounded PyOS_string_to_double, which ignores the locale); an integer literal is an
 * integer first, then rounded to double, so "-0" is +0.0 (int 0), and "-0.0" is -0.0.
 * The scan runs without the GIL (the consumer's network thread and the Redis writer go on
 * meanwhile); the few messages with a number that needs CPython's routine are scanned again
 * with it. tests/unit/test_decode_native.py checks the native, fast and exact paths bit for bit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct {
    const char *p;
    const char *end;
    int allow_slow; /* PyOS_string_to_double may be called (the GIL is held) */
    int wants_slow; /* set when a number needed it and it was not allowed */
} Cursor;

/* The manifest's names as raw bytes, read while the GIL is held (the tuple outlives the scan). */
typedef struct {
    const char **bytes;
    Py_ssize_t *lengths;
    int present; /* 0: mappings are left to Python */
} Names;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r')
            c->p++;
        else
            break;
    }
}

/* Exact powers of ten as doubles (10^0 .. 10^22 are exactly representable). */
static const double POW10[23] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

typedef unsigned __int128 u128;

static int bit_length(u128 x) {
    uint64_t hi = (uint64_t)(x >> 64), lo = (uint64_t)x;
    if (hi)
        return 128 - __builtin_clzll(hi);
    return lo ? 64 - __builtin_clzll(lo) : 0;
}

/* 10^0 .. 10^21 as exact integers (filled at import). */
static u128 POW10_INT[22];

static void fill_powers(void) {
    POW10_INT[0] = 1;
    for (int i = 1; i < 22; i++)
        POW10_INT[i] = POW10_INT[i - 1] * 10;
}

/* The double nearest to (q + f) * 2^exp2, where 0 <= f < 1 and f > 0 exactly when inexact:
 * round half to even on the bits below the 53 kept, the remainder counting as sticky.
 * 0 when the result would not be a normal double (left to the general routine). */
static int round_to_double(u128 q, int inexact, int exp2, double *out) {
    int bits = bit_length(q);
    uint64_t m;
    if (bits <= 53) {
        if (inexact)
            return 0; /* callers scale q to 55+ bits when a remainder is possible */
        m = (uint64_t)q;
    } else {
        int extra = bits - 53;
        m = (uint64_t)(q >> extra);
        int round_bit = (int)((q >> (extra - 1)) & 1);
        int sticky = inexact || (q & ((((u128)1) << (extra - 1)) - 1)) != 0;
        if (round_bit && (sticky || (m & 1))) {
            m++;
            if (m == (1ULL << 53)) {
                m >>= 1;
                extra++;
            }
        }
        exp2 += extra;
    }
    double v = ldexp((double)m, exp2); /* exact: m has at most 53 bits */
    if (!isfinite(v) || v < DBL_MIN)
        return 0;
    *out = v;
    return 1;
}

/* mantissa * 10^exp10 rounded once to double, for mantissa < 10^19 and -21 <= exp10 <= 19:
 * a product that fits 128 bits, or a quotient of mantissa * 2^s by 10^-exp10 carried to 55+
 * bits (s chosen so that it is; the dividend stays within 128 bits while 10^-exp10 < 2^73). */
static int exact_quotient(uint64_t mantissa, int exp10, double *out) {
    u128 power = POW10_INT[exp10 < 0 ? -exp10 : exp10];
    if (exp10 >= 0)
        return round_to_double((u128)mantissa * power, 0, 0, out);
    int shift = 55 + bit_length(power) - bit_length(mantissa);
    if (shift < 0)
        shift = 0; /* the quotient has 55+ bits unscaled */
    u128 dividend = (u128)mantissa << shift;
    u128 q = dividend / power;
    return round_to_double(q, dividend % power != 0, -shift, out);
}

/* One JSON number at c->p into *out; 0 = not a number this path handles. */
static int read_number(Cursor *c, double *out) {
    const char *start = c->p, *p = c->p, *end = c->end;
    int negative = 0, is_integer = 1, n_sig = 0, n_digits = 0;
    uint64_t mantissa = 0;
    int exp10 = 0; /* value = mantissa * 10^exp10 while n_sig <= 19 */

    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p >= end)
        return 0;
    if (*p == '0') {
        p++;
        n_digits = 1;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') {
            if (n_sig < 19)
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
            else
                exp10++;
            n_sig++;
            n_digits++;
            p++;
        }
    } else {
        return 0;
    }
    if (p < end && *p == '.') {
        is_integer = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (n_sig == 0 && *p == '0') {
                exp10--; /* leading zeros of the fraction: not significant */
            } else {
                if (n_sig < 19) {
                    mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                    exp10--;
                }
                n_sig++;
            }
            p++;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_integer = 0;
        p++;
        int exp_negative = 0, e = 0;
        if (p < end && (*p == '+' || *p == '-')) {
            exp_negative = *p == '-';
            p++;
        }
        if (p >= end || *p < '0' || *p > '9')
            return 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (e < 100000)
                e = e * 10 + (*p - '0');
            p++;
        }
        exp10 += exp_negative ? -e : e;
    }
    c->p = p;
    if (is_integer) {
        if (n_digits > 18)
            return 0;
        double v = (double)(int64_t)mantissa; /* int -> double, rounded once, as float(int) */
        *out = negative && mantissa ? -v : v; /* "-0" is the int 0: +0.0 */
        return 1;
    }
    if (mantissa == 0) {
        *out = negative ? -0.0 : 0.0;
        return 1;
    }
    if (n_sig <= 15 && exp10 >= -22 && exp10 <= 22) {
        /* Clinger: both operands exact, one correctly rounded operation. */
        double v = (double)mantissa;
        v = exp10 < 0 ? v / POW10[-exp10] : v * POW10[exp10];
        *out = negative ? -v : v;
        return 1;
    }
    if (n_sig <= 19 && exp10 >= -21 && exp10 <= 19) {
        /* 16-19 significant digits (what float32 values printed as float64 look like): exact
         * integer arithmetic, then one rounding. CPython's general routine takes ~1 us on these. */
        double v;
        if (exact_quotient(mantissa, exp10, &v)) {
            *out = negative ? -v : v;
            return 1;
        }
    }
    /* The general case, correctly rounded and locale-independent, but a CPython call: only with
     * the GIL (a second pass over the few messages that need it). The literal ends at p, which
     * holds a byte that cannot continue a number (or the bytes object's trailing NUL). */
    if (!c->allow_slow) {
        c->wants_slow = 1;
        return 0;
    }
    char *parsed_end = NULL;
    double v = PyOS_string_to_double(start, &parsed_end, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (parsed_end != p || !isfinite(v) || v == 0.0)
        return 0; /* overflow, underflow to zero, or a literal CPython reads otherwise */
    *out = v;
    return 1;
}

/* A string starting at the opening quote: moves past the closing quote. Escapes are stepped
 * over, not checked (orjson checks the header later). */
static int skip_string(Cursor *c) {
    const char *p = c->p + 1, *end = c->end;
    while (p < end) {
        char ch = *p;
        if (ch == '"') {
            c->p = p + 1;
            return 1;
        }
        p += ch == '\\' ? 2 : 1;
    }
    return 0;
}

/* Any JSON value, only to find where it ends; brackets must pair up (a stack of kinds). */
static int skip_value(Cursor *c) {
    char stack[MAX_DEPTH];
    int depth = 0;
    const char *end = c->end;
    do {
        if (c->p >= end)
            return 0;
        char ch = *c->p;
        if (ch == '"') {
            if (!skip_string(c))
                return 0;
        } else if (ch == '{' || ch == '[') {
            if (depth == MAX_DEPTH)
                return 0;
            stack[depth++] = ch == '{' ? '}' : ']';
            c->p++;
        } else if (ch == '}' || ch == ']') {
            if (depth == 0 || stack[depth - 1] != ch)
                return 0;
            depth--;
            c->p++;
        } else if (ch == ',' || ch == ':' || ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            if (depth == 0)
                return 0; /* an empty value */
            c->p++;
        } else {
            /* a number or a literal: up to the next delimiter */
            while (c->p < end) {
                ch = *c->p;
                if (ch == ',' || ch == '}' || ch == ']' || ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' ||
                    ch == ':' || ch == '"' || ch == '{' || ch == '[')
                    break;
                c->p++;
            }
        }
    } while (depth > 0);
    return 1;
}

/* A key at the opening quote, without escapes: its bytes are [*key, *key + *len). */
static int read_plain_key(Cursor *c, const char **key, Py_ssize_t *len) {
    const char *p = c->p + 1, *end = c->end;
    const char *start = p;
    while (p < end) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') {
            *key = start;
            *len = p - start;
            c->p = p + 1;
            return 1;
        }
        if (ch == '\\' || ch < 0x20)
            return 0;
        p++;
    }
    return 0;
}

static int expect(Cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        skip_ws(c);
        return 1;
    }
    return 0;
}

static int read_array_row(Cursor *c, Py_ssize_t n_features, double *row) {
    c->p++; /* '[' */
    skip_ws(c);
    for (Py_ssize_t j = 0; j < n_features; j++) {
        if (!read_number(c, &row[j]))
            return 0;
        if (!expect(c, j + 1 < n_features ? ',' : ']'))
            return 0;
    }
    return n_features > 0;
}

static int read_mapping_row(Cursor *c, const Names *names, Py_ssize_t n_features, double *row) {
    c->p++; /* '{' */
    skip_ws(c);
    for (Py_ssize_t j = 0; j < n_features; j++) {
        const char *key;
        Py_ssize_t len;
        if (c->p >= c->end || *c->p != '"' || !read_plain_key(c, &key, &len))
            return 0;
        if (len != names->lengths[j] || memcmp(key, names->bytes[j], (size_t)len) != 0)
            return 0;
        if (!expect(c, ':') || !read_number(c, &row[j]))
            return 0;
        if (!expect(c, j + 1 < n_features ? ',' : '}'))
            return 0;
    }
    return n_features > 0;
}

enum { BAIL = 0, TAKEN = 1, WANTS_SLOW = 2 };

/* One message, pure C (no Python call unless c->allow_slow): TAKEN with the span to cut out of
 * it (the features member and one comma) in [*cut_start, *cut_end), BAIL when the Python paths
 * must decide, WANTS_SLOW when it can be taken once a number is converted the slow way. */
static int scan_one(const char *base, Py_ssize_t size, int allow_slow, const Names *names, Py_ssize_t n_features,
                    double *row, Py_ssize_t *cut_from, Py_ssize_t *cut_to) {
    Cursor c = {base, base + size, allow_slow, 0};
    const char *cut_start = NULL, *cut_end = NULL, *last_comma = NULL;

    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return BAIL;
    c.p++;
    skip_ws(&c);
    for (;;) {
        const char *member_start = c.p, *key;
        Py_ssize_t len;
        if (c.p >= c.end || *c.p != '"' || !read_plain_key(&c, &key, &len))
            return BAIL;
        if (!expect(&c, ':'))
            return BAIL;
        int is_features = len == 8 && memcmp(key, "features", 8) == 0;
        if (is_features) {
            if (cut_start != NULL || c.p >= c.end)
                return BAIL; /* a second "features": the last one wins in orjson; let it decide */
            int ok = 0;
            if (*c.p == '[')
                ok = read_array_row(&c, n_features, row);
            else if (*c.p == '{' && names->present)
                ok = read_mapping_row(&c, names, n_features, row);
            if (!ok)
                return c.wants_slow ? WANTS_SLOW : BAIL;
        } else if (!skip_value(&c)) {
            return BAIL;
        }
        const char *member_end = c.p;
        skip_ws(&c);
        if (c.p >= c.end)
            return BAIL;
        if (*c.p == ',') {
            if (is_features) { /* cut the member and the comma after it */
                cut_start = member_start;
                cut_end = c.p + 1;
            }
            last_comma = c.p;
            c.p++;
            skip_ws(&c);
            continue;
        }
        if (*c.p != '}')
            return BAIL;
        if (is_features) { /* the last member: cut the comma before it, if any */
            cut_start = last_comma != NULL ? last_comma : member_start;
            cut_end = member_end;
        }
        c.p++;
        break;
    }
    skip_ws(&c);
    if (c.p != c.end || cut_start == NULL)
        return BAIL;
    *cut_from = cut_start - base;
    *cut_to = cut_end - base;
    return TAKEN;
}

PyDoc_STRVAR(scan_rows_doc,
"scan_rows(values, names, n_features, out) -> list[bytes | None]\n\n"
"values: list of messages; names: tuple of the manifest's names as UTF-8 bytes, or None to take\n"
"only the array form; out: a writable C-contiguous float64 buffer of len(values) * n_features.\n"
"Row i of out holds message i's features when item i of the result is bytes (its header);\n"
"None: the message is left to the Python paths (row i is then undefined).");

static PyObject *scan_rows(PyObject *self, PyObject *args) {
    PyObject *values, *names_obj, *out_obj;
    Py_ssize_t n_features;
    if (!PyArg_ParseTuple(args, "O!OnO", &PyList_Type, &values, &names_obj, &n_features, &out_obj))
        return NULL;
    if (n_features < 0) {
        PyErr_SetString(PyExc_ValueError, "n_features must be >= 0");
        return NULL;
    }
    if (names_obj != Py_None) {
        if (!PyTuple_Check(names_obj) || PyTuple_GET_SIZE(names_obj) != n_features) {
            PyErr_SetString(PyExc_ValueError, "names must be None or a tuple of n_features bytes");
            return NULL;
        }
        for (Py_ssize_t j = 0; j < n_features; j++) {
            if (!PyBytes_CheckExact(PyTuple_GET_ITEM(names_obj, j))) {
                PyErr_SetString(PyExc_TypeError, "names must be bytes");
                return NULL;
            }
        }
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    Py_buffer buf;
    if (PyObject_GetBuffer(out_obj, &buf, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    if (buf.len < (Py_ssize_t)(n * n_features * (Py_ssize_t)sizeof(double))) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "out is smaller than len(values) * n_features float64");
        return NULL;
    }
    /* Everything the scan reads, taken while the GIL is held: the list and the names tuple are
     * referenced by the caller for the whole call, and bytes objects are immutable. */
    Py_ssize_t m = n > 0 ? n : 1, d = n_features > 0 ? n_features : 1;
    PyObject **items = PyMem_Malloc((size_t)m * sizeof(PyObject *));
    Py_ssize_t *spans = PyMem_Malloc((size_t)m * 2 * sizeof(Py_ssize_t));
    int *status = PyMem_Malloc((size_t)m * sizeof(int));
    Names names = {PyMem_Malloc((size_t)d * sizeof(char *)), PyMem_Malloc((size_t)d * sizeof(Py_ssize_t)),
                   names_obj != Py_None};
    PyObject *result = NULL;
    Py_ssize_t n_held = 0; /* items[0:n_held] hold references */
    if (items == NULL || spans == NULL || status == NULL || names.bytes == NULL || names.lengths == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t j = 0; names.present && j < n_features; j++) {
        names.bytes[j] = PyBytes_AS_STRING(PyTuple_GET_ITEM(names_obj, j));
        names.lengths[j] = PyBytes_GET_SIZE(PyTuple_GET_ITEM(names_obj, j));
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(values, i);
        items[i] = PyBytes_CheckExact(item) ? Py_NewRef(item) : NULL; /* held: the list could change */
    }
    n_held = n;
    double *rows = (double *)buf.buf;
    /* The scan itself runs without the GIL: the consumer's network thread and the Redis writer
     * go on meanwhile. */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        status[i] = items[i] == NULL ? BAIL
            : scan_one(PyBytes_AS_STRING(items[i]), PyBytes_GET_SIZE(items[i]), 0, &names, n_features,
                       rows + i * n_features, &spans[2 * i], &spans[2 * i + 1]);
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    if (result == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (status[i] == WANTS_SLOW) /* again, with the GIL, allowing CPython's conversion */
            status[i] = scan_one(PyBytes_AS_STRING(items[i]), PyBytes_GET_SIZE(items[i]), 1, &names, n_features,
                                 rows + i * n_features, &spans[2 * i], &spans[2 * i + 1]);
        PyObject *header;
        if (status[i] != TAKEN) {
            header = Py_NewRef(Py_None);
        } else {
            const char *base = PyBytes_AS_STRING(items[i]);
            Py_ssize_t size = PyBytes_GET_SIZE(items[i]), head = spans[2 * i], tail = size - spans[2 * i + 1];
            header = PyBytes_FromStringAndSize(NULL, head + tail);
            if (header == NULL) {
                Py_CLEAR(result);
                goto done;
            }
            char *dst = PyBytes_AS_STRING(header);
            memcpy(dst, base, (size_t)head);
            memcpy(dst + head, base + spans[2 * i + 1], (size_t)tail);
        }
        PyList_SET_ITEM(result, i, header);
    }
done:
    for (Py_ssize_t i = 0; items != NULL && i < n_held; i++)
        Py_XDECREF(items[i]);
    PyMem_Free(items);
    PyMem_Free(spans);
    PyMem_Free(status);
    PyMem_Free(names.bytes);
    PyMem_Free(names.lengths);
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_rows", scan_rows, METH_VARARGS, scan_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rowscan",
    "Native fast path of the event decoder: feature values straight into a float64 matrix.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__rowscan(void) {
    fill_powers();
    return PyModule_Create(&module);
}
