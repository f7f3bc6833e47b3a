/*
 * proxy._speedups: the two byte loops of the hot path in C, with pure-Python twins.
 *
 * 1. twemproxy's key hash functions (twemproxy's results, bit for bit);
 * 2. scan_reply: where a RESP2/RESP3 reply from a server ends (resp.ReplyParser);
 * 3. the fan-out kernels: KetamaRoute.split (route a key list on a ketama continuum, group it by
 *    server, encode each server's sub-command), merge_arrays (reassemble MGET parts in key
 *    order), and encode_command. Measured with py-spy under
 *    redis-benchmark MGET of 10 keys at -P 16: split + merge were ~55% of the proxy's CPU in
 *    Python.
 *
 * Each function takes bytes and returns what proxy/hashing.py's pure-Python function of the
 * same name returns (twemproxy 0.5's result for that key); tests/unit/test_hashing.py checks
 * the two against each other and against known answers. The Python versions remain the
 * reference and the fallback when this module cannot be built.
 *
 * Why C: routing a GET hashes its key; fnv1a_64 over a 16-byte key costs ~1.5 us as a Python
 * byte loop and ~0.05 us here, which is a fifth of the proxy's whole per-request budget at
 * 16-deep pipelines (measured with py-spy under redis-benchmark -P 16).
 *
 * Key bytes are C `char` in twemproxy, signed on x86: where twemproxy widens a byte to a larger
 * integer, it is sign-extended here too (SX below), so keys with bytes >= 0x80 hash the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SX(b) ((uint32_t)(int32_t)(int8_t)(b))
#define SX64(b) ((uint64_t)(int64_t)(int8_t)(b))

static uint32_t one_at_a_time(const uint8_t *k, size_t n) {
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v += SX(k[i]);
        v += v << 10;
        v ^= v >> 6;
    }
    v += v << 3;
    v ^= v >> 11;
    v += v << 15;
    return v;
}

static uint16_t crc16tab[256];
static uint32_t crc32tab[256];

static void init_tables(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i << 8;
        for (int j = 0; j < 8; j++)
            c = (c & 0x8000) ? ((c << 1) ^ 0x1021) : (c << 1);
        crc16tab[i] = (uint16_t)(c & 0xFFFF);
        uint32_t r = i;
        for (int j = 0; j < 8; j++)
            r = (r & 1) ? ((r >> 1) ^ 0xEDB88320u) : (r >> 1);
        crc32tab[i] = r;
    }
}

static uint32_t crc16(const uint8_t *k, size_t n) {
    uint32_t crc = 0;  /* never masked to 16 bits, as in twemproxy */
    for (size_t i = 0; i < n; i++)
        crc = (crc << 8) ^ crc16tab[((crc >> 8) ^ k[i]) & 0xFF];
    return crc;
}

static uint32_t crc32_plain(const uint8_t *k, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        crc = crc32tab[(crc ^ k[i]) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

static uint32_t crc32_15(const uint8_t *k, size_t n) {
    return (crc32_plain(k, n) >> 16) & 0x7FFF;
}

static uint32_t fnv1_64(const uint8_t *k, size_t n) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h *= 0x100000001B3ull;
        h ^= SX64(k[i]);
    }
    return (uint32_t)h;
}

static uint32_t fnv1a_64(const uint8_t *k, size_t n) {
    uint32_t h = (uint32_t)0xCBF29CE484222325ull;  /* twemproxy's 32-bit accumulator */
    for (size_t i = 0; i < n; i++) {
        h ^= SX(k[i]);
        h *= (uint32_t)0x100000001B3ull;
    }
    return h;
}

static uint32_t fnv1_32(const uint8_t *k, size_t n) {
    uint32_t h = 0x811C9DC5u;
    for (size_t i = 0; i < n; i++) {
        h *= 0x01000193u;
        h ^= SX(k[i]);
    }
    return h;
}

static uint32_t fnv1a_32(const uint8_t *k, size_t n) {
    uint32_t h = 0x811C9DC5u;
    for (size_t i = 0; i < n; i++) {
        h ^= SX(k[i]);
        h *= 0x01000193u;
    }
    return h;
}

#define GET16(p) ((uint32_t)(p)[0] | ((uint32_t)(p)[1] << 8))

static uint32_t hsieh(const uint8_t *k, size_t n) {
    uint32_t h = 0, tmp;
    size_t rem = n & 3;
    for (size_t blocks = n >> 2; blocks > 0; blocks--) {
        h += GET16(k);
        tmp = (GET16(k + 2) << 11) ^ h;
        h = (h << 16) ^ tmp;
        k += 4;
        h += h >> 11;
    }
    switch (rem) {
    case 3:
        h += GET16(k);
        h ^= h << 16;
        h ^= SX(k[2]) << 18;
        h += h >> 11;
        break;
    case 2:
        h += GET16(k);
        h ^= h << 11;
        h += h >> 17;
        break;
    case 1:
        h += SX(k[0]);
        h ^= h << 10;
        h += h >> 1;
    }
    h ^= h << 3;
    h += h >> 5;
    h ^= h << 4;
    h += h >> 17;
    h ^= h << 25;
    h += h >> 6;
    return h;
}

static uint32_t murmur(const uint8_t *k, size_t n) {
    const uint32_t m = 0x5BD1E995u;
    uint32_t h = (0xDEADBEEFu * (uint32_t)n) ^ (uint32_t)n;
    size_t len = n;
    while (len >= 4) {
        uint32_t w;
        memcpy(&w, k, 4);  /* little-endian hosts, as twemproxy assumes */
        w *= m;
        w ^= w >> 24;
        w *= m;
        h *= m;
        h ^= w;
        k += 4;
        len -= 4;
    }
    switch (len) {
    case 3: h ^= (uint32_t)k[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)k[1] << 8;  /* fall through */
    case 1: h ^= k[0]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

#define ROT(x, k) (((x) << (k)) | ((x) >> (32 - (k))))

static uint32_t jenkins(const uint8_t *k, size_t n) {
    uint32_t a, b, c;
    a = b = c = 0xDEADBEEFu + (uint32_t)n + 13u;
    while (n > 12) {
        uint32_t w[3];
        memcpy(w, k, 12);
        a += w[0]; b += w[1]; c += w[2];
        a -= c; a ^= ROT(c, 4);  c += b;
        b -= a; b ^= ROT(a, 6);  a += c;
        c -= b; c ^= ROT(b, 8);  b += a;
        a -= c; a ^= ROT(c, 16); c += b;
        b -= a; b ^= ROT(a, 19); a += c;
        c -= b; c ^= ROT(b, 4);  b += a;
        n -= 12;
        k += 12;
    }
    if (n == 0)
        return c;
    uint8_t tail[12] = {0};
    memcpy(tail, k, n);
    uint32_t w[3];
    memcpy(w, tail, 12);
    a += w[0]; b += w[1]; c += w[2];
    c ^= b; c -= ROT(b, 14);
    a ^= c; a -= ROT(c, 11);
    b ^= a; b -= ROT(a, 25);
    c ^= b; c -= ROT(b, 16);
    a ^= c; a -= ROT(c, 4);
    b ^= a; b -= ROT(a, 14);
    c ^= b; c -= ROT(b, 24);
    return c;
}

/*
 * scan_reply(buf, pos, left) -> (pos, left)
 *
 * Walks reply frames in buf from pos while `left` elements remain to be seen (left = 1 for a
 * new reply; aggregates add their element counts). Returns where it stopped and how many
 * elements are still missing: left == 0 means one complete reply ends at pos; left > 0 means
 * the bytes ran out (call again from the returned state once more arrive, nothing rescanned).
 * Bulk payloads are skipped by length, never searched. ValueError on a corrupt stream.
 * The Python twin is resp._py_scan_reply; tests check they agree.
 */
static int parse_len(const char *p, const char *e, long long *out) {
    int neg = 0;
    long long v = 0;
    if (p < e && *p == '-') { neg = 1; p++; }
    if (p >= e) return -1;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
        if (v > (1LL << 40)) return -1;
    }
    *out = neg ? -v : v;
    return 0;
}

/* The scan itself, shared by scan_reply and merge_arrays. Returns NULL or an error text. */
static const char *scan(const char *b, Py_ssize_t end, Py_ssize_t *pos_io, Py_ssize_t *left_io) {
    Py_ssize_t pos = *pos_io, left = *left_io;
    const char *bad = NULL;
    while (left > 0 && pos < end) {
        char kind = b[pos];
        const char *cr = memchr(b + pos + 1, '\r', (size_t)(end - pos - 1));
        if (cr == NULL || cr + 1 >= b + end)
            break;  /* the line is not complete yet */
        if (cr[1] != '\n') { bad = "CR without LF"; break; }
        Py_ssize_t eol = cr - b;
        long long n = 0;
        switch (kind) {
        case '+': case '-': case ':': case '_': case ',': case '#': case '(':
            pos = eol + 2;
            left--;
            continue;
        case '$': case '!': case '=':
            if (parse_len(b + pos + 1, cr, &n) < 0) { bad = "invalid bulk length"; break; }
            if (n < 0) { pos = eol + 2; left--; continue; }
            if (eol + 2 + n + 2 > end)
                goto out;  /* payload not all here: resume at this header */
            pos = eol + 2 + n + 2;
            left--;
            continue;
        case '*': case '~': case '>': case '%': case '|':
            if (parse_len(b + pos + 1, cr, &n) < 0) { bad = "invalid aggregate length"; break; }
            pos = eol + 2;
            if (n < 0) { left--; continue; }
            if (kind == '%') n *= 2;
            else if (kind == '|') n = n * 2 + 1;  /* attributes, then the reply they annotate */
            left += (Py_ssize_t)n - 1;
            continue;
        default:
            bad = "unexpected reply type byte";
        }
        break;
    }
out:
    *pos_io = pos;
    *left_io = left;
    return bad;
}

static PyObject *py_scan_reply(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t pos, left;
    if (!PyArg_ParseTuple(args, "y*nn", &view, &pos, &left))
        return NULL;
    const char *bad = NULL;
    if (pos < 0 || pos > view.len)
        bad = "position out of range";
    else
        bad = scan((const char *)view.buf, view.len, &pos, &left);
    PyBuffer_Release(&view);
    if (bad != NULL) {
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    return Py_BuildValue("nn", pos, left);
}

/*
 * split_replies(buf, pos, left) -> (replies, start, pos, left)
 *
 * Every complete reply in buf, as bytes, in order; scanning starts from the resume state
 * (pos, left) of a reply that began at offset 0 ((0, 1) for a fresh one). start is where the
 * first incomplete reply begins (len(buf) when none), (pos, left) its resume state. One call
 * per server read instead of one scan_reply call per reply: callgrind counted ~1,300
 * instructions per reply in scan_reply's argument parsing and result tuple alone.
 * Python twin: resp._py_split_replies.
 */
static PyObject *py_split_replies(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "split_replies(buf, pos, left)");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t left = PyLong_AsSsize_t(args[2]);
    if ((pos == -1 || left == -1) && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *b = (const char *)view.buf;
    Py_ssize_t end = view.len, start = 0;
    int whole_ok = PyBytes_CheckExact(args[0]);
    PyObject *out = PyList_New(0);
    PyObject *result = NULL;
    if (out == NULL)
        goto done;
    if (pos < 0 || pos > end || left < 0) {
        PyErr_SetString(PyExc_ValueError, "position out of range");
        goto done;
    }
    while (start < end) {
        const char *bad = scan(b, end, &pos, &left);
        if (bad != NULL) {
            PyErr_SetString(PyExc_ValueError, bad);
            goto done;
        }
        if (left)
            break;
        PyObject *item = (whole_ok && start == 0 && pos == end)
            ? Py_NewRef(args[0])  /* the read is exactly one reply: no copy */
            : PyBytes_FromStringAndSize(b + start, pos - start);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto done;
        }
        Py_DECREF(item);
        start = pos;
        left = 1;
    }
    {  /* (out, start, pos, left), built by hand: Py_BuildValue parses its format each call */
        PyObject *a = PyLong_FromSsize_t(start), *p2 = PyLong_FromSsize_t(pos);
        PyObject *l = PyLong_FromSsize_t(left);
        if (a != NULL && p2 != NULL && l != NULL)
            result = PyTuple_Pack(4, out, a, p2, l);
        Py_XDECREF(a);
        Py_XDECREF(p2);
        Py_XDECREF(l);
    }
done:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return result;
}

/*
 * frame_requests(buf, max_args, max_bulk) -> (commands, consumed)
 *
 * The complete, canonically framed multibulk requests at the start of buf: each as
 * (args, raw), args a list of bytes and raw the request's own bytes (canonical framing is what
 * encode_command would write, so raw can be forwarded as it is). It stops at the first request
 * that is incomplete or anything else (inline, *0, *-1, a non-$ element, a length with a sign
 * or leading zero, a limit passed, a missing CRLF): consumed is where that request starts, and
 * resp.RequestParser's hiredis path takes it from there, errors included. So this is only a
 * prefix accelerator: it accepts a subset of what the full parser accepts, with the same result.
 */
static int canon_len(const char *p, const char *e, long long limit, long long *out) {
    /* digits only, no leading zero (except "0" itself), at most limit */
    if (p >= e || (*p == '0' && e - p > 1)) return -1;
    long long v = 0;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
        if (v > limit) return -1;
    }
    *out = v;
    return 0;
}

static PyObject *py_frame_requests(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "frame_requests(buf: bytes, max_args, max_bulk)");
        return NULL;
    }
    long long max_args = PyLong_AsLongLong(args[1]), max_bulk = PyLong_AsLongLong(args[2]);
    if ((max_args == -1 || max_bulk == -1) && PyErr_Occurred())
        return NULL;
    const char *b = PyBytes_AS_STRING(args[0]);
    Py_ssize_t end = PyBytes_GET_SIZE(args[0]), start = 0;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    while (start < end && b[start] == '*') {
        const char *cr = memchr(b + start + 1, '\r', (size_t)(end - start - 1));
        long long n;
        if (cr == NULL || cr + 1 >= b + end || cr[1] != '\n'
            || canon_len(b + start + 1, cr, max_args, &n) < 0 || n < 1)
            break;
        Py_ssize_t q = cr - b + 2;
        if (n > (end - q) / 6)  /* each argument takes >= 6 bytes ("$0\r\n\r\n"): incomplete, */
            break;              /* and nothing is allocated for a count the bytes cannot hold */
        PyObject *argv = PyList_New((Py_ssize_t)n);
        if (argv == NULL) goto fail;
        long long i;
        for (i = 0; i < n; i++) {
            long long len;
            if (q >= end || b[q] != '$') break;
            const char *c = memchr(b + q + 1, '\r', (size_t)(end - q - 1));
            if (c == NULL || c + 1 >= b + end || c[1] != '\n'
                || canon_len(b + q + 1, c, max_bulk, &len) < 0)
                break;
            Py_ssize_t data = c - b + 2;
            if (data + len + 2 > end || b[data + len] != '\r' || b[data + len + 1] != '\n')
                break;
            PyObject *arg = PyBytes_FromStringAndSize(b + data, (Py_ssize_t)len);
            if (arg == NULL) { Py_DECREF(argv); goto fail; }
            PyList_SET_ITEM(argv, (Py_ssize_t)i, arg);
            q = data + (Py_ssize_t)len + 2;
        }
        if (i < n) {  /* incomplete or unusual: the full parser decides */
            Py_DECREF(argv);
            break;
        }
        PyObject *raw = (start == 0 && q == end)
            ? Py_NewRef(args[0])
            : PyBytes_FromStringAndSize(b + start, q - start);
        PyObject *item = raw ? PyTuple_Pack(2, argv, raw) : NULL;
        Py_DECREF(argv);
        Py_XDECREF(raw);
        if (item == NULL || PyList_Append(out, item) < 0) { Py_XDECREF(item); goto fail; }
        Py_DECREF(item);
        start = q;
    }
    {
        PyObject *consumed = PyLong_FromSsize_t(start);
        if (consumed == NULL) goto fail;
        PyObject *result = PyTuple_Pack(2, out, consumed);
        Py_DECREF(consumed);
        Py_DECREF(out);
        return result;
    }
fail:
    Py_DECREF(out);
    return NULL;
}

/*
 * merge_arrays(replies, parts, nkeys) -> bytes | None
 *
 * The MGET merge: replies[j] is a complete array reply whose i-th item answers the client's key
 * positions[j][i], where positions[j] is the last item of the tuple parts[j] (the split's
 * (target, payload, positions) tuples serve as they are). Returns one array of nkeys items in the client's key order, items copied
 * byte for byte (nils stay $-1 or RESP3 _); None if a part is not an array of the expected
 * size or the positions do not cover every key exactly once. Python twin: resp._py_merge_arrays.
 */
static PyObject *py_merge_arrays(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "merge_arrays(replies: list, parts: list, nkeys)");
        return NULL;
    }
    PyObject *parts = args[0], *positions = args[1];
    Py_ssize_t nkeys = PyLong_AsSsize_t(args[2]);
    if (nkeys == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t nparts = PyList_GET_SIZE(parts);
    if (nkeys < 0 || nparts != PyList_GET_SIZE(positions))
        Py_RETURN_NONE;
    const char **starts = PyMem_Calloc((size_t)nkeys + 1, sizeof(char *));
    Py_ssize_t *lens = PyMem_Calloc((size_t)nkeys + 1, sizeof(Py_ssize_t));
    PyObject *result = NULL;
    Py_ssize_t total = 0;
    if (starts == NULL || lens == NULL) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t j = 0; j < nparts; j++) {
        PyObject *raw = PyList_GET_ITEM(parts, j);
        PyObject *part = PyList_GET_ITEM(positions, j);
        if (!PyTuple_Check(part) || PyTuple_GET_SIZE(part) == 0) goto mismatch;
        PyObject *pos_list = PyTuple_GET_ITEM(part, PyTuple_GET_SIZE(part) - 1);
        if (!PyBytes_Check(raw) || !PyList_Check(pos_list)) goto mismatch;
        const char *b = PyBytes_AS_STRING(raw);
        Py_ssize_t end = PyBytes_GET_SIZE(raw);
        const char *cr = end > 1 ? memchr(b, '\r', (size_t)end) : NULL;
        long long count = 0;
        if (b[0] != '*' || cr == NULL || cr + 1 >= b + end || parse_len(b + 1, cr, &count) < 0)
            goto mismatch;
        if (count != PyList_GET_SIZE(pos_list)) goto mismatch;
        Py_ssize_t pos = (cr - b) + 2;
        for (Py_ssize_t i = 0; i < count; i++) {
            Py_ssize_t at = PyLong_AsSsize_t(PyList_GET_ITEM(pos_list, i));
            if (at == -1 && PyErr_Occurred()) goto done;
            if (at < 0 || at >= nkeys || starts[at] != NULL) goto mismatch;
            Py_ssize_t item = pos, left = 1;
            if (scan(b, end, &pos, &left) != NULL || left != 0) goto mismatch;
            starts[at] = b + item;
            lens[at] = pos - item;
            total += pos - item;
        }
    }
    for (Py_ssize_t k = 0; k < nkeys; k++)
        if (starts[k] == NULL) goto mismatch;
    {
        char head[32];
        int hlen = snprintf(head, sizeof head, "*%zd\r\n", nkeys);
        result = PyBytes_FromStringAndSize(NULL, hlen + total);
        if (result == NULL) goto done;
        char *out = PyBytes_AS_STRING(result);
        memcpy(out, head, (size_t)hlen);
        out += hlen;
        for (Py_ssize_t k = 0; k < nkeys; k++) {
            memcpy(out, starts[k], (size_t)lens[k]);
            out += lens[k];
        }
    }
    goto done;
mismatch:
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_Free(starts);
    PyMem_Free(lens);
    return result;
}

typedef uint32_t (*hashfn)(const uint8_t *, size_t);

static PyObject *call(hashfn fn, PyObject *arg) {
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(arg, &data, &len) < 0)
        return NULL;
    return PyLong_FromUnsignedLong(fn((const uint8_t *)data, (size_t)len));
}

#define WRAP(name, fn) \
    static PyObject *py_##name(PyObject *self, PyObject *arg) { (void)self; return call(fn, arg); }

WRAP(one_at_a_time, one_at_a_time)
WRAP(crc16, crc16)
WRAP(crc32, crc32_15)
WRAP(crc32a, crc32_plain)
WRAP(fnv1_64, fnv1_64)
WRAP(fnv1a_64, fnv1a_64)
WRAP(fnv1_32, fnv1_32)
WRAP(fnv1a_32, fnv1a_32)
WRAP(hsieh, hsieh)
WRAP(murmur, murmur)
WRAP(jenkins, jenkins)

static const struct { const char *name; hashfn fn; } HASHES[] = {
    {"one_at_a_time", one_at_a_time}, {"crc16", crc16}, {"crc32", crc32_15},
    {"crc32a", crc32_plain}, {"fnv1_64", fnv1_64}, {"fnv1a_64", fnv1a_64},
    {"fnv1_32", fnv1_32}, {"fnv1a_32", fnv1a_32}, {"hsieh", hsieh}, {"murmur", murmur},
    {"jenkins", jenkins},
};

/* Write "<mark><n>\r\n" (n >= 0); return its length. Hand-rolled: sprintf was a visible
 * share of encode_command's time for short arguments. */
static Py_ssize_t write_head(char *out, char mark, Py_ssize_t n) {
    char digits_rev[24];
    int d = 0;
    do {
        digits_rev[d++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    char *p = out;
    *p++ = mark;
    while (d > 0) *p++ = digits_rev[--d];
    *p++ = '\r';
    *p++ = '\n';
    return p - out;
}

static Py_ssize_t bulk_head(char *out, Py_ssize_t len) {
    return write_head(out, '$', len);
}

static Py_ssize_t digits(Py_ssize_t n) {
    Py_ssize_t d = 1;
    while (n >= 10) { n /= 10; d++; }
    return d;
}

/*
 * encode_command(args) -> bytes: a command as a RESP multibulk (TypeError if an argument is not
 * bytes). Python twin: resp._py_encode_command.
 */
static PyObject *py_encode_command(PyObject *self, PyObject *args) {
    (void)self;
    if (!PyList_Check(args)) {
        PyErr_SetString(PyExc_TypeError, "encode_command: a list of bytes");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(args), total = 3 + digits(n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(args, i);
        if (!PyBytes_Check(a)) {
            PyErr_SetString(PyExc_TypeError, "encode_command: arguments must be bytes");
            return NULL;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(a);
        total += 5 + digits(len) + len;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *p = PyBytes_AS_STRING(out);
    p += write_head(p, '*', n);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(args, i);
        Py_ssize_t len = PyBytes_GET_SIZE(a);
        p += bulk_head(p, len);
        memcpy(p, PyBytes_AS_STRING(a), (size_t)len);
        p += len;
        *p++ = '\r';
        *p++ = '\n';
    }
    return out;
}

/*
 * KetamaRoute.split(args, step) -> [(servers[i], payload, [positions...]), ...]
 *
 * The fan-out split of MGET/DEL/... (step 1) or MSET (step 2): routes every key on a ketama
 * continuum as pool.route does (twemproxy hash tag, hash, first point >= hash, wrapping),
 * groups the keys by server in order of first appearance, and encodes each server's
 * sub-command (args[0] plus its keys, or key/value pairs) as RESP. points: the sorted continuum
 * values (native uint32); owners: each point's index into `servers` (native uint16).
 * Python twin: ring.Continuum.group + fanout.split + resp.encode_command; tests agree them.
 */
/* twemproxy's ketama dispatch of one key (hash tag applied): the owner index of the first
   point >= hash, wrapping to the first. Shared by KetamaRoute.route and .split. */
static int ketama_owner(const char *k, Py_ssize_t len, const char *t, Py_ssize_t taglen,
                        hashfn fn, const uint32_t *vals, const uint16_t *own, Py_ssize_t npoints) {
    if (taglen == 2 && len > 0) {  /* twemproxy's hash_tag: a non-empty {tag} only */
        const char *open = memchr(k, t[0], (size_t)len);
        if (open != NULL) {
            const char *close = memchr(open + 1, t[1], (size_t)(k + len - open - 1));
            if (close != NULL && close - open > 1) {
                k = open + 1;
                len = close - k;
            }
        }
    }
    uint32_t h = len ? fn((const uint8_t *)k, (size_t)len) : 0;
    Py_ssize_t lo = 0, hi = npoints;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (vals[mid] < h) lo = mid + 1; else hi = mid;
    }
    return own[lo < npoints ? lo : 0];
}

static hashfn find_hash(const char *name) {
    for (size_t h = 0; h < sizeof HASHES / sizeof HASHES[0]; h++)
        if (strcmp(HASHES[h].name, name) == 0) return HASHES[h].fn;
    return NULL;
}

/* The split itself, for KetamaRoute.split: inputs as C arrays. */
static PyObject *split_core(PyObject *argv, Py_ssize_t step, const char *t, Py_ssize_t taglen,
                            hashfn fn, const uint32_t *vals, const uint16_t *own,
                            Py_ssize_t npoints, PyObject *servers) {
    Py_ssize_t nservers = PyList_GET_SIZE(servers);
    PyObject *result = NULL;
    void *block = NULL;
    int *server_of = NULL, *group_of = NULL, *gserver = NULL;
    Py_ssize_t *gkeys = NULL, *gbytes = NULL, *filled = NULL;
    Py_ssize_t argc = PyList_GET_SIZE(argv);
    if (fn == NULL || npoints == 0 || nservers <= 0 || nservers > 65536
        || (taglen != 0 && taglen != 2)
        || (step != 1 && step != 2) || argc < 2 || (argc - 1) % step != 0) {
        PyErr_SetString(PyExc_ValueError, "KetamaRoute.split: bad arguments");
        goto done;
    }
    for (Py_ssize_t i = 0; i < argc; i++) {
        if (!PyBytes_Check(PyList_GET_ITEM(argv, i))) {
            PyErr_SetString(PyExc_TypeError, "KetamaRoute.split: arguments must be bytes");
            goto done;
        }
    }
    Py_ssize_t nkeys = (argc - 1) / step;
    /* One allocation for all the scratch arrays: one place to free them. */
    block = PyMem_Malloc((size_t)nservers * (3 * sizeof(Py_ssize_t) + 2 * sizeof(int))
                         + (size_t)nkeys * sizeof(int));
    if (block == NULL) { PyErr_NoMemory(); goto done; }
    gkeys = (Py_ssize_t *)block;
    gbytes = gkeys + nservers;
    filled = gbytes + nservers;
    group_of = (int *)(filled + nservers);
    gserver = group_of + nservers;
    server_of = gserver + nservers;
    for (Py_ssize_t s2 = 0; s2 < nservers; s2++) {
        group_of[s2] = -1;
        gkeys[s2] = gbytes[s2] = filled[s2] = 0;
    }
    Py_ssize_t ngroups = 0;
    for (Py_ssize_t i = 0; i < nkeys; i++) {
        PyObject *key = PyList_GET_ITEM(argv, 1 + i * step);
        int srv = ketama_owner(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), t, taglen, fn,
                               vals, own, npoints);
        if (srv >= nservers) {
            PyErr_SetString(PyExc_ValueError, "KetamaRoute.split: owner out of range");
            goto done;
        }
        int g = group_of[srv];
        if (g < 0) {
            g = group_of[srv] = (int)ngroups;
            gserver[ngroups++] = srv;
        }
        server_of[i] = g;
        gkeys[g]++;
        for (Py_ssize_t j = 0; j < step; j++) {
            Py_ssize_t alen = PyBytes_GET_SIZE(PyList_GET_ITEM(argv, 1 + i * step + j));
            gbytes[g] += 5 + digits(alen) + alen;
        }
    }
    PyObject *name = PyList_GET_ITEM(argv, 0);
    Py_ssize_t nlen = PyBytes_GET_SIZE(name);
    result = PyList_New(ngroups);
    if (result == NULL) goto done;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        Py_ssize_t nargs = 1 + gkeys[g] * step;
        Py_ssize_t size = 3 + digits(nargs) + 5 + digits(nlen) + nlen + gbytes[g];
        PyObject *payload = PyBytes_FromStringAndSize(NULL, size);
        PyObject *positions = PyList_New(gkeys[g]);
        PyObject *entry = (payload && positions) ? PyTuple_New(3) : NULL;
        if (entry == NULL) {
            Py_XDECREF(payload);
            Py_XDECREF(positions);
            Py_CLEAR(result);
            goto done;
        }
        PyTuple_SET_ITEM(entry, 0, Py_NewRef(PyList_GET_ITEM(servers, gserver[g])));
        PyTuple_SET_ITEM(entry, 1, payload);  /* the tuple owns both now */
        PyTuple_SET_ITEM(entry, 2, positions);
        PyList_SET_ITEM(result, g, entry);
        char *p = PyBytes_AS_STRING(payload);
        p += write_head(p, '*', nargs);
        p += bulk_head(p, nlen);
        memcpy(p, PyBytes_AS_STRING(name), (size_t)nlen);
        p += nlen;
        *p++ = '\r';
        *p++ = '\n';
        gkeys[g] = (Py_ssize_t)(p - PyBytes_AS_STRING(payload));  /* now: write offset */
    }
    {
        for (Py_ssize_t i = 0; i < nkeys; i++) {
            int g = server_of[i];
            PyObject *entry = PyList_GET_ITEM(result, g);
            char *base = PyBytes_AS_STRING(PyTuple_GET_ITEM(entry, 1));
            char *p = base + gkeys[g];
            for (Py_ssize_t j = 0; j < step; j++) {
                PyObject *a = PyList_GET_ITEM(argv, 1 + i * step + j);
                Py_ssize_t alen = PyBytes_GET_SIZE(a);
                p += bulk_head(p, alen);
                memcpy(p, PyBytes_AS_STRING(a), (size_t)alen);
                p += alen;
                *p++ = '\r';
                *p++ = '\n';
            }
            gkeys[g] = p - base;
            PyObject *at = PyLong_FromSsize_t(i);
            if (at == NULL) { Py_CLEAR(result); goto done; }
            PyList_SET_ITEM(PyTuple_GET_ITEM(entry, 2), filled[g]++, at);
        }
        for (Py_ssize_t g = 0; g < ngroups; g++) {  /* every payload filled exactly */
            if (gkeys[g] != PyBytes_GET_SIZE(PyTuple_GET_ITEM(PyList_GET_ITEM(result, g), 1))) {
                PyErr_SetString(PyExc_SystemError, "KetamaRoute.split: size mismatch");
                Py_CLEAR(result);
                goto done;
            }
        }
    }
done:
    PyMem_Free(block);
    return result;
}

/* ---------------------------------------------------------------------------------------
 * KetamaRoute(points, owners, servers, hash, tag).route(key) -> servers[owner]
 *
 * A ring pool's route(key) for ketama with a C hash: hash tag, hash and continuum search in
 * one call, returning the server object. It replaces a Python closure whose frame, hash call
 * and bisect (Python int comparisons) cost ~700 instructions per request (callgrind).
 * Python twin: ring.Continuum.ketama_route (tests compare them).
 * --------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *points;   /* bytes: uint32 point values, sorted */
    PyObject *owners;   /* bytes: uint16 server index per point */
    PyObject *servers;  /* list */
    hashfn fn;
    char tag[2];
    Py_ssize_t taglen;
} KetamaObject;

static int Ketama_init(KetamaObject *self, PyObject *args, PyObject *kwds) {
    (void)kwds;
    PyObject *points, *owners, *servers, *tag;
    const char *hname;
    if (!PyArg_ParseTuple(args, "O!O!O!sO!", &PyBytes_Type, &points, &PyBytes_Type, &owners,
                          &PyList_Type, &servers, &hname, &PyBytes_Type, &tag))
        return -1;
    Py_ssize_t npoints = PyBytes_GET_SIZE(points) / (Py_ssize_t)sizeof(uint32_t);
    hashfn fn = find_hash(hname);
    if (fn == NULL || npoints == 0
        || PyBytes_GET_SIZE(owners) != npoints * (Py_ssize_t)sizeof(uint16_t)
        || (PyBytes_GET_SIZE(tag) != 0 && PyBytes_GET_SIZE(tag) != 2)) {
        PyErr_SetString(PyExc_ValueError, "KetamaRoute: bad arguments");
        return -1;
    }
    const uint16_t *own = (const uint16_t *)PyBytes_AS_STRING(owners);
    for (Py_ssize_t i = 0; i < npoints; i++) {
        if (own[i] >= PyList_GET_SIZE(servers)) {
            PyErr_SetString(PyExc_ValueError, "KetamaRoute: owner out of range");
            return -1;
        }
    }
    Py_XSETREF(self->points, Py_NewRef(points));
    Py_XSETREF(self->owners, Py_NewRef(owners));
    Py_XSETREF(self->servers, Py_NewRef(servers));
    self->fn = fn;
    self->taglen = PyBytes_GET_SIZE(tag);
    if (self->taglen == 2)
        memcpy(self->tag, PyBytes_AS_STRING(tag), 2);
    return 0;
}

static int Ketama_traverse(KetamaObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->servers);
    return 0;
}

static int Ketama_clear(KetamaObject *self) {
    Py_CLEAR(self->points);
    Py_CLEAR(self->owners);
    Py_CLEAR(self->servers);
    return 0;
}

static void Ketama_dealloc(KetamaObject *self) {
    PyObject_GC_UnTrack(self);
    Ketama_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Ketama_route(KetamaObject *self, PyObject *key) {
    if (!PyBytes_Check(key)) {
        PyErr_SetString(PyExc_TypeError, "route: key must be bytes");
        return NULL;
    }
    if (self->points == NULL) {
        PyErr_SetString(PyExc_ValueError, "route: not initialised");
        return NULL;
    }
    Py_ssize_t npoints = PyBytes_GET_SIZE(self->points) / (Py_ssize_t)sizeof(uint32_t);
    int srv = ketama_owner(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), self->tag,
                           self->taglen, self->fn,
                           (const uint32_t *)PyBytes_AS_STRING(self->points),
                           (const uint16_t *)PyBytes_AS_STRING(self->owners), npoints);
    if (srv >= PyList_GET_SIZE(self->servers)) {
        PyErr_SetString(PyExc_ValueError, "route: owner out of range");
        return NULL;
    }
    return Py_NewRef(PyList_GET_ITEM(self->servers, srv));
}

static PyObject *Ketama_split(KetamaObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "split(args: list[bytes], step)");
        return NULL;
    }
    Py_ssize_t step = PyLong_AsSsize_t(args[1]);
    if (step == -1 && PyErr_Occurred())
        return NULL;
    if (self->points == NULL) {
        PyErr_SetString(PyExc_ValueError, "split: not initialised");
        return NULL;
    }
    return split_core(args[0], step, self->tag, self->taglen, self->fn,
                      (const uint32_t *)PyBytes_AS_STRING(self->points),
                      (const uint16_t *)PyBytes_AS_STRING(self->owners),
                      PyBytes_GET_SIZE(self->points) / (Py_ssize_t)sizeof(uint32_t),
                      self->servers);
}

static PyMethodDef Ketama_methods[] = {
    {"route", (PyCFunction)Ketama_route, METH_O, NULL},
    {"split", (PyCFunction)(void (*)(void))Ketama_split, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject KetamaType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy._speedups.KetamaRoute",
    .tp_basicsize = sizeof(KetamaObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Ketama_init,
    .tp_traverse = (traverseproc)Ketama_traverse,
    .tp_clear = (inquiry)Ketama_clear,
    .tp_dealloc = (destructor)Ketama_dealloc,
    .tp_methods = Ketama_methods,
};

static PyMethodDef methods[] = {
    {"one_at_a_time", py_one_at_a_time, METH_O, NULL},
    {"crc16", py_crc16, METH_O, NULL},
    {"crc32", py_crc32, METH_O, NULL},
    {"crc32a", py_crc32a, METH_O, NULL},
    {"fnv1_64", py_fnv1_64, METH_O, NULL},
    {"fnv1a_64", py_fnv1a_64, METH_O, NULL},
    {"fnv1_32", py_fnv1_32, METH_O, NULL},
    {"fnv1a_32", py_fnv1a_32, METH_O, NULL},
    {"hsieh", py_hsieh, METH_O, NULL},
    {"murmur", py_murmur, METH_O, NULL},
    {"jenkins", py_jenkins, METH_O, NULL},
    {"scan_reply", py_scan_reply, METH_VARARGS, NULL},
    {"split_replies", (PyCFunction)(void (*)(void))py_split_replies, METH_FASTCALL, NULL},
    {"frame_requests", (PyCFunction)(void (*)(void))py_frame_requests, METH_FASTCALL, NULL},
    {"merge_arrays", (PyCFunction)(void (*)(void))py_merge_arrays, METH_FASTCALL, NULL},
    {"encode_command", py_encode_command, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_speedups",
    .m_doc = "twemproxy's key hashes and a RESP reply scanner in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    init_tables();
    if (PyType_Ready(&KetamaType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "KetamaRoute", (PyObject *)&KetamaType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
