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
 * 4. RequestFramer: client requests framed across reads (resp.RequestParser), multibulk and
 *    inline (split_inline), with Redis's limits and error texts; twin: resp.PyRequestParser.
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
#include <structmember.h>
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

/* ---------------------------------------------------------------------------------------
 * RequestFramer(limits, authenticated=True): client requests framed across reads.
 *
 * The C twin of resp.PyRequestParser, with its interface and its results: the same commands,
 * the same raw bytes, the same error texts at the same point, the same state between reads
 * (its docstring describes the protocol: frame / error / again / offer, accept / decline /
 * stream, held / buffered). tests/unit/test_framer_fuzz.py runs the two side by side over
 * random streams cut at random points; keep them in step.
 *
 * Resumable: a command cut by the end of a read keeps its state here (the arguments framed so
 * far, its declared count, the current bulk's declared length, how far a line was searched
 * for its end), and the next read continues from there; no byte is scanned twice, and a
 * bulk's body is not looked at until all of it is in.
 *
 * Buffering: when nothing is buffered (the common case, a pipeline of whole commands) a read
 * is framed where it lies and only the unfinished command at its end is copied into `buf`; a
 * read that continues a buffered command is appended to it. `buf` starts at the current
 * command's first byte, so a 512 MB value arriving in 64 KB reads is copied into it once
 * (growth by realloc, which moves big blocks with mremap, not memcpy), and its argument and
 * raw bytes are copied out once when it is complete, as in the twin.
 *
 * Why C: framing is the first thing done to every request. This one framer replaced a C prefix
 * framer (whole canonical commands at the front of a read) plus the Python one that finished
 * what it left (a read cut mid-command was scanned twice, then framed in Python). Measured
 * with callgrind over RequestParser.frame of a 16-command read (-P 16 GETs / SETs): ~21,300 /
 * ~24,900 instructions per read, against ~23,400 / ~27,100 for the prefix framer; a pipeline
 * cut in two reads, 6.3 us against ~105 us (timeit).
 * --------------------------------------------------------------------------------------- */

#define ARG_OVERHEAD 48  /* resp.ARG_OVERHEAD: what a framed argument costs beyond its bytes */
#define LIMIT_CAP (PY_SSIZE_T_MAX / 8)  /* limits are clamped here: no offset arithmetic overflows */

/* A request's length header as resp._length reads it (Redis's string2ll): digits and an
 * optional '-', no leading zero, no '+', at most 20 characters. 0 with the value in *out, or
 * -1. Values past LLONG_MAX saturate there (every limit is below it). */
static int request_len_slow(const char *p, const char *e, long long *out) {
    Py_ssize_t n = e - p;
    int neg = 0;
    if (n < 1 || n > 20)
        return -1;
    if (*p == '-') {
        neg = 1;
        if (++p == e || *p == '0') return -1;
    } else if (*p == '0' && n > 1) {
        return -1;
    }
    long long v = 0;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9') return -1;
        int d = *p - '0';
        v = v > (LLONG_MAX - d) / 10 ? LLONG_MAX : v * 10 + d;
    }
    *out = neg ? -v : v;
    return 0;
}

/* The common case inline (a positive length of up to 18 digits: no sign, no leading zero, no
 * overflow to watch): two headers per GET, and callgrind counted ~50 instructions per header
 * through the general loop against ~15 here. */
static inline int request_len(const char *p, const char *e, long long *out) {
    if (e - p >= 1 && e - p <= 18 && *p >= '1' && *p <= '9') {
        long long v = *p++ - '0';
        for (; p < e; p++) {
            unsigned d = (unsigned)(unsigned char)*p - '0';
            if (d > 9) return -1;
            v = v * 10 + d;
        }
        *out = v;
        return 0;
    }
    return request_len_slow(p, e, out);
}

/* The common header in one pass (no memchr call, no second parse): 1 to 18 digits, the first
 * not 0, then CRLF, all in b[p:end). Returns the CR's offset with the value in *v, or -1, and
 * then the general path (find_crlf + request_len) decides, with the answer it would have given
 * anyway: such a header is one request_len accepts, and its CRLF the first one after p. */
static inline Py_ssize_t short_header(const char *b, Py_ssize_t p, Py_ssize_t end, long long *v) {
    Py_ssize_t q = p;
    unsigned d;
    if (q >= end || (d = (unsigned)(unsigned char)b[q] - '0') - 1 > 8)
        return -1;
    long long x = d;
    while (++q < end && (d = (unsigned)(unsigned char)b[q] - '0') <= 9) {
        if (q - p >= 18)
            return -1;
        x = x * 10 + d;
    }
    if (q + 1 >= end || b[q] != '\r' || b[q + 1] != '\n')
        return -1;
    *v = x;
    return q;
}

/* Where "\r\n" starts in b[from:stop), or -1 (bytes.find's answer). */
static Py_ssize_t find_crlf(const char *b, Py_ssize_t from, Py_ssize_t stop) {
    while (from + 1 < stop) {
        const char *cr = memchr(b + from, '\r', (size_t)(stop - 1 - from));
        if (cr == NULL) return -1;
        if (cr[1] == '\n') return cr - b;
        from = cr - b + 1;
    }
    return -1;
}

/*
 * split_inline(line) -> list[bytes] | None
 *
 * An inline command line split into arguments as Redis's sdssplitargs splits it; None where
 * Redis answers "unbalanced quotes in request". The rules are resp.split_inline's (its
 * docstring lists them; tests/unit/test_inline_split.py holds a table checked against Redis
 * and runs both). split_line is the loop itself, shared with RequestFramer.
 */
static int is_blank(char c) {  /* C's isspace() in the "C" locale */
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A new list of the arguments; NULL with *unbalanced = 1 for unbalanced quotes, or NULL with
 * an exception set. */
static PyObject *split_line(const char *p, Py_ssize_t n, int *unbalanced) {
    const char *nul = memchr(p, '\0', (size_t)n);  /* sdssplitargs reads a C string */
    if (nul != NULL)
        n = nul - p;
    PyObject *args = PyList_New(0);
    char *cur = PyMem_Malloc((size_t)n + 1);  /* an argument is never longer than its line */
    if (args == NULL || cur == NULL) {
        Py_XDECREF(args);
        PyMem_Free(cur);
        return cur == NULL ? PyErr_NoMemory() : NULL;
    }
    Py_ssize_t i = 0;
    for (;;) {
        while (i < n && is_blank(p[i]))
            i++;
        if (i >= n)
            break;
        Py_ssize_t len = 0;
        char quote = 0;  /* '"' or '\'' inside quotes */
        for (;; i++) {
            char c = i < n ? p[i] : 0;
            if (quote) {
                if (i >= n)
                    goto unbalanced;
                if (c == quote) {  /* closing: it must end the argument */
                    if (i + 1 < n && !is_blank(p[i + 1]))
                        goto unbalanced;
                    i++;
                    break;
                }
                if (c == '\\' && quote == '"' && i + 3 < n && p[i + 1] == 'x'
                    && hex_digit(p[i + 2]) >= 0 && hex_digit(p[i + 3]) >= 0) {  /* "\xHH" */
                    cur[len++] = (char)(hex_digit(p[i + 2]) * 16 + hex_digit(p[i + 3]));
                    i += 3;
                } else if (c == '\\' && quote == '"' && i + 1 < n) {  /* "\n", "\"", "\q" -> q */
                    c = p[++i];
                    cur[len++] = c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t'
                               : c == 'b' ? '\b' : c == 'a' ? '\a' : c;
                } else if (c == '\\' && quote == '\'' && i + 1 < n && p[i + 1] == '\'') {
                    i++;  /* '\'' */
                    cur[len++] = '\'';
                } else {
                    cur[len++] = c;
                }
            } else if (i >= n || c == ' ' || c == '\n' || c == '\r' || c == '\t') {
                break;  /* (what ends an unquoted argument: not \v or \f) */
            } else if (c == '"' || c == '\'') {
                quote = c;
            } else {
                cur[len++] = c;
            }
        }
        PyObject *arg = PyBytes_FromStringAndSize(cur, len);
        if (arg == NULL || PyList_Append(args, arg) < 0) {
            Py_XDECREF(arg);
            goto fail;
        }
        Py_DECREF(arg);
    }
    PyMem_Free(cur);
    return args;
unbalanced:
    *unbalanced = 1;
fail:
    PyMem_Free(cur);
    Py_DECREF(args);
    return NULL;
}

static PyObject *py_split_inline(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int unbalanced = 0;
    PyObject *args = split_line((const char *)view.buf, view.len, &unbalanced);
    PyBuffer_Release(&view);
    if (args == NULL && unbalanced)
        Py_RETURN_NONE;
    return args;
}

typedef struct {
    PyObject_HEAD
    PyObject *limits;  /* the RequestLimits it was made with (read once, into the fields below) */
    long long max_args, max_bulk, max_inline, unauth_max_args, unauth_max_bulk, stream_min;
    char authenticated;  /* 0: Redis's unauthenticated limits apply (settable) */
    char again;          /* frame() stopped early: call it again once its commands are dispatched */
    char declined;       /* the current command's offer was declined: buffer it */
    char streaming;      /* accept()ed: stream() takes the reads until the command ends */
    char busy;           /* inside a call that works on buf (a __del__ run by the GC may not re-enter) */
    char *buf;           /* unframed bytes, from the current command's first byte */
    Py_ssize_t len, cap;
    Py_ssize_t pos;      /* how far the current command is framed (an offset into buf) */
    long long count;     /* its declared argument count (-1: header not read yet) */
    long long bulk;      /* the current argument's declared length (-1: header not read yet) */
    PyObject *args;      /* its arguments framed so far (NULL between commands); preallocated, */
    Py_ssize_t nargs;    /* so only the first nargs items are set */
    Py_ssize_t scanned;  /* a line (inline, or a header) without its end yet: where to search on */
    Py_ssize_t args_bytes;  /* what the arguments framed so far take (ARG_OVERHEAD each) */
    Py_ssize_t held;     /* bytes held for unframed requests (attribute, as the twin's) */
    PyObject *error;     /* str: the stream is corrupt (Redis's text); else None */
    PyObject *offer;     /* (args before the big bulk, count, size), or None */
    /* streaming (see PyRequestParser.stream) */
    Py_ssize_t body_left;  /* bytes of the current bulk's body still to pass */
    int crlf_left;         /* ... and of the CRLF after it */
    long long args_left;   /* ... and arguments after that one */
    PyObject *head;        /* bytes: an argument header cut by the end of a read, or NULL */
    PyObject *carry;       /* bytes: what accept() kept back for stream() to check, or NULL */
} FramerObject;

static int framer_busy(FramerObject *self) {
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "RequestFramer: called while it frames");
        return 1;
    }
    return 0;
}

/* Append n bytes to buf, growing it by half (amortised: each byte is copied O(1) times). */
static int buf_append(FramerObject *self, const char *p, Py_ssize_t n) {
    if (n <= 0)
        return 0;
    if (n > PY_SSIZE_T_MAX / 2 - self->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = self->len + n;
    if (need > self->cap) {
        Py_ssize_t cap = self->cap + self->cap / 2;
        if (cap < need) cap = need;
        char *grown = PyMem_Realloc(self->buf, (size_t)cap);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->buf = grown;
        self->cap = cap;
    }
    memcpy(self->buf + self->len, p, (size_t)n);
    self->len = need;
    return 0;
}

/* Drop buf's first `start` bytes (framed); an empty buffer is freed, a big mostly idle one
 * shrunk (a client that once sent a big value keeps no big buffer). */
static void buf_consume(FramerObject *self, Py_ssize_t start) {
    if (start <= 0)
        return;
    self->len -= start;
    if (self->len == 0) {
        PyMem_Free(self->buf);
        self->buf = NULL;
        self->cap = 0;
        return;
    }
    memmove(self->buf, self->buf + start, (size_t)self->len);
    if (self->cap > 65536 && self->len < self->cap / 4) {
        Py_ssize_t cap = self->len + self->len / 2;
        char *shrunk = PyMem_Realloc(self->buf, (size_t)cap);
        if (shrunk != NULL) {  /* (else the big one stays: nothing lost) */
            self->buf = shrunk;
            self->cap = cap;
        }
    }
}

static void update_held(FramerObject *self) {
    self->held = self->len + (self->head ? PyBytes_GET_SIZE(self->head) : 0) + self->args_bytes;
}

/* Redis's text for a request that is not a bulk where one must be (the twin's chr(byte)). */
static PyObject *expected_bulk(char got) {
    return PyUnicode_FromFormat("expected '$', got '%c'", (int)(unsigned char)got);
}

/* A bulk length header b[from:to) checked as resp._bulk_length checks it: 0 with *size, or -1
 * with *bad set to Redis's text. */
static int bulk_len(FramerObject *self, const char *from, const char *to, long long *size,
                    const char **bad) {
    if (request_len(from, to, size) < 0 || *size < 0 || *size > self->max_bulk) {
        *bad = "invalid bulk length";
        return -1;
    }
    if (!self->authenticated && *size > self->unauth_max_bulk) {
        *bad = "unauthenticated bulk length";
        return -1;
    }
    return 0;
}

/* (args, raw) appended to out; steals args. 0, or -1 with an exception set. */
static int append_command(PyObject *out, PyObject *args, PyObject *raw) {
    PyObject *item = raw ? PyTuple_New(2) : NULL;
    if (item == NULL) {
        Py_DECREF(args);
        Py_XDECREF(raw);
        return -1;
    }
    PyTuple_SET_ITEM(item, 0, args);
    PyTuple_SET_ITEM(item, 1, raw);
    int rc = PyList_Append(out, item);
    Py_DECREF(item);
    return rc;
}

/*
 * The framing loop: frames b[0:end) from the framer's state, appending every complete command
 * to out. `whole` is the bytes object b is the buffer of, when a read is framed where it lies
 * (a command that is all of it is handed out as that object, uncopied). Returns where the
 * unframed bytes start (the current command's first byte); a corrupt stream sets self->error;
 * -1 with an exception set when memory runs out. The steps and their order are
 * PyRequestParser.frame's, one for one.
 */
static Py_ssize_t frame_core(FramerObject *self, const char *b, Py_ssize_t end, PyObject *whole,
                             PyObject *out) {
    /* The state in locals for the loop (written back at the end: the calls into CPython below
       would otherwise make the compiler reload every field from self after each one). */
    Py_ssize_t start = 0, pos = self->pos, scanned = self->scanned, nargs = self->nargs;
    Py_ssize_t args_bytes = self->args_bytes, framed = 0, nl, from, stop;
    long long count = self->count, bulk = self->bulk, n;
    PyObject *args = self->args;
    const long long max_inline = self->max_inline;
    const int authenticated = self->authenticated;
    const int fast = max_inline >= 20;  /* short_header's answers fit the line limit */
    const char *bad = NULL;  /* a protocol error's text, or: */
    PyObject *bad_text = NULL;
    for (;;) {
        if (count < 0) {  /* at a command boundary */
            if (pos >= end)
                break;
            if (!authenticated && framed) {  /* its AUTH may change the next one's limits */
                self->again = 1;
                break;
            }
            if (b[pos] != '*') {  /* an inline command: one line */
                from = pos > scanned ? pos : scanned;
                const char *lf = memchr(b + from, '\n', (size_t)(end - from));
                if (lf == NULL) {
                    if (end - pos > max_inline) { bad = "too big inline request"; break; }
                    scanned = end;
                    break;
                }
                scanned = 0;
                nl = lf - b;
                int unbalanced = 0;
                PyObject *line = split_line(b + pos, (nl > pos && b[nl - 1] == '\r' ? nl - 1 : nl) - pos,
                                            &unbalanced);
                if (line == NULL) {
                    if (unbalanced) { bad = "unbalanced quotes in request"; break; }
                    goto nomem;
                }
                pos = start = nl + 1;
                if (PyList_GET_SIZE(line) == 0) {
                    Py_DECREF(line);
                    continue;
                }
                /* forwarded re-encoded as multibulk (servers only ever see canonical RESP) */
                if (append_command(out, line, py_encode_command(NULL, line)) < 0)
                    goto nomem;
                framed++;
                continue;
            }
            if (!fast || (nl = short_header(b, pos + 1, end, &n)) < 0) {
                from = pos + 1 > scanned ? pos + 1 : scanned;
                stop = end - (pos + 1) > max_inline ? pos + 1 + (Py_ssize_t)max_inline : end;
                nl = find_crlf(b, from, stop);
                if (nl < 0) {
                    if (end - pos > max_inline) { bad = "too big mbulk count string"; break; }
                    scanned = end - 1;  /* (a CR there may be the header's end) */
                    break;
                }
                if (request_len(b + pos + 1, b + nl, &n) < 0) {
                    bad = "invalid multibulk length";
                    break;
                }
            }
            scanned = 0;
            if (n > self->max_args) {
                bad = "invalid multibulk length";
                break;
            }
            if (!authenticated && n > self->unauth_max_args) {
                bad = "unauthenticated multibulk length";
                break;
            }
            pos = nl + 2;
            if (n <= 0) {  /* *0 and *-1: Redis skips them */
                start = pos;
                continue;
            }
            /* The list is preallocated only as far as the bytes here could fill it (an argument
               takes >= 6 bytes, "$0\r\n\r\n"): a count is never trusted past the bytes behind it. */
            args = PyList_New(n * 6 <= end - pos ? (Py_ssize_t)n : (end - pos) / 6);
            if (args == NULL)
                goto nomem;
            nargs = 0;
            count = n;
        }
        while (nargs < count) {
            if (bulk < 0) {
                if (pos >= end)
                    break;
                if (b[pos] != '$') {
                    if ((bad_text = expected_bulk(b[pos])) == NULL) goto nomem;
                    goto corrupt;
                }
                if (fast && (nl = short_header(b, pos + 1, end, &n)) >= 0) {
                    if (n > self->max_bulk || (!authenticated && n > self->unauth_max_bulk)) {
                        bad = n > self->max_bulk ? "invalid bulk length" : "unauthenticated bulk length";
                        goto corrupt;
                    }
                } else {
                    from = pos + 1 > scanned ? pos + 1 : scanned;
                    stop = end - (pos + 1) > max_inline ? pos + 1 + (Py_ssize_t)max_inline : end;
                    nl = find_crlf(b, from, stop);
                    if (nl < 0) {
                        if (end - pos > max_inline) { bad = "too big bulk count string"; goto corrupt; }
                        scanned = end - 1;
                        break;
                    }
                    if (bulk_len(self, b + pos + 1, b + nl, &n, &bad) < 0)
                        goto corrupt;
                }
                scanned = 0;
                bulk = n;
                pos = nl + 2;
            }
            if (end - pos < bulk + 2) {  /* the bulk is not all in: resume here on the next read */
                if (self->stream_min > 0 && bulk >= self->stream_min && !self->declined) {
                    if (framed) {  /* offered once these are dispatched */
                        self->again = 1;
                    } else {
                        PyObject *before = PyList_GetSlice(args, 0, nargs);
                        PyObject *offer = before ? Py_BuildValue("(NLL)", before, count, bulk) : NULL;
                        if (offer == NULL) goto nomem;
                        Py_SETREF(self->offer, offer);
                    }
                }
                break;
            }
            if (b[pos + bulk] != '\r' || b[pos + bulk + 1] != '\n') {
                bad = "bulk string not terminated by CRLF";
                goto corrupt;
            }
            PyObject *arg = PyBytes_FromStringAndSize(b + pos, (Py_ssize_t)bulk);
            if (arg == NULL)
                goto nomem;
            if (nargs < PyList_GET_SIZE(args)) {
                PyList_SET_ITEM(args, nargs, arg);
            } else {
                int rc = PyList_Append(args, arg);
                Py_DECREF(arg);
                if (rc < 0) goto nomem;
            }
            nargs++;
            args_bytes += (Py_ssize_t)bulk + ARG_OVERHEAD;
            pos += (Py_ssize_t)bulk + 2;
            bulk = -1;
        }
        if (nargs < count)
            break;
        PyObject *done = args;
        args = NULL;
        nargs = 0;
        args_bytes = 0;
        self->declined = 0;
        count = -1;
        PyObject *raw = (whole != NULL && start == 0 && pos == end)
            ? Py_NewRef(whole)  /* the read is exactly this command: no copy */
            : PyBytes_FromStringAndSize(b + start, pos - start);
        start = pos;
        if (append_command(out, done, raw) < 0)
            goto nomem;
        framed++;
    }
    if (bad == NULL)
        goto sync;
corrupt:
    if (bad_text == NULL && (bad_text = PyUnicode_FromString(bad)) == NULL)
        goto nomem;
    Py_SETREF(self->error, bad_text);
sync:
    self->pos = pos;
    self->scanned = scanned;
    self->count = count;
    self->bulk = bulk;
    self->args = args;
    self->nargs = nargs;
    self->args_bytes = args_bytes;
    return start;
nomem:
    start = -1;
    goto sync;
}

static PyObject *Framer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"limits", "authenticated", NULL};
    PyObject *limits;
    int authenticated = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p:RequestFramer", kwlist, &limits, &authenticated))
        return NULL;
    static const char *const names[] = {"max_args", "max_bulk_bytes", "max_inline_bytes",
                                        "unauth_max_args", "unauth_max_bulk", "stream_min_bytes"};
    long long values[6];
    for (int i = 0; i < 6; i++) {
        PyObject *v = PyObject_GetAttrString(limits, names[i]);
        values[i] = v ? PyLong_AsLongLong(v) : -1;
        Py_XDECREF(v);
        if (values[i] == -1 && PyErr_Occurred())
            return NULL;
        if (values[i] > LIMIT_CAP)  /* (the same answers for every length below it) */
            values[i] = LIMIT_CAP;
    }
    FramerObject *self = (FramerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->limits = Py_NewRef(limits);
    self->max_args = values[0];
    self->max_bulk = values[1];
    self->max_inline = values[2];
    self->unauth_max_args = values[3];
    self->unauth_max_bulk = values[4];
    self->stream_min = values[5];
    self->authenticated = (char)authenticated;
    self->count = self->bulk = -1;
    self->error = Py_NewRef(Py_None);
    self->offer = Py_NewRef(Py_None);
    return (PyObject *)self;
}

static int Framer_traverse(FramerObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->limits);
    Py_VISIT(self->args);
    Py_VISIT(self->offer);
    return 0;
}

static int Framer_clear(FramerObject *self) {
    Py_CLEAR(self->limits);
    Py_CLEAR(self->args);
    Py_CLEAR(self->offer);
    return 0;
}

static void Framer_dealloc(FramerObject *self) {
    PyObject_GC_UnTrack(self);
    Framer_clear(self);
    Py_CLEAR(self->error);
    Py_CLEAR(self->head);
    Py_CLEAR(self->carry);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* After an exception inside frame() (no memory) the state may point into a read that is gone:
 * drop it, and frame nothing more (the caller closes the connection on the exception). */
static PyObject *out_of_memory;  /* its error text, made at import (nothing to allocate then) */

static void framer_broken(FramerObject *self) {
    PyMem_Free(self->buf);
    self->buf = NULL;
    self->len = self->cap = self->pos = self->scanned = self->nargs = self->args_bytes = 0;
    self->count = self->bulk = -1;
    Py_CLEAR(self->args);
    Py_SETREF(self->error, Py_NewRef(out_of_memory));
}

/* frame(data=b"") -> list[(args, raw)]: PyRequestParser.frame. */
static PyObject *Framer_frame(FramerObject *self, PyObject *const *argv, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "frame(data=b'')");
        return NULL;
    }
    if (framer_busy(self))
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL || self->error != Py_None)
        return out;
    Py_buffer view = {0};
    if (nargs && PyObject_GetBuffer(argv[0], &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    const char *data = (const char *)view.buf;
    Py_ssize_t n = view.len, start;
    self->busy = 1;
    self->again = 0;
    if (self->offer != Py_None || self->streaming) {  /* waiting for accept/decline: keep it */
        if (buf_append(self, data, n) < 0)
            goto fail;
    } else if (self->len == 0) {  /* frame the read where it lies; keep its unfinished tail */
        start = frame_core(self, data, n, nargs && PyBytes_CheckExact(argv[0]) ? argv[0] : NULL, out);
        if (start < 0 || buf_append(self, data + start, n - start) < 0)
            goto fail;
        self->pos -= start;
        if (self->scanned)
            self->scanned -= start;
    } else {  /* it continues the buffered command */
        if (buf_append(self, data, n) < 0)
            goto fail;
        start = frame_core(self, self->buf, self->len, NULL, out);
        if (start < 0)
            goto fail;
        buf_consume(self, start);
        self->pos -= start;
        if (self->scanned)
            self->scanned -= start;
    }
    update_held(self);
    self->busy = 0;
    if (nargs)
        PyBuffer_Release(&view);
    return out;
fail:
    framer_broken(self);
    self->busy = 0;
    if (nargs)
        PyBuffer_Release(&view);
    Py_DECREF(out);
    return NULL;
}

/* feed(data): PyRequestParser.feed (bytes kept without framing them). */
static PyObject *Framer_feed(FramerObject *self, PyObject *data) {
    if (framer_busy(self))
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = buf_append(self, (const char *)view.buf, view.len);
    PyBuffer_Release(&view);
    if (rc < 0)
        return NULL;
    update_held(self);
    Py_RETURN_NONE;
}

static PyObject *Framer_buffered(FramerObject *self, PyObject *unused) {
    (void)unused;
    return PyLong_FromSsize_t(self->len + (self->head ? PyBytes_GET_SIZE(self->head) : 0));
}

static PyObject *Framer_decline(FramerObject *self, PyObject *unused) {
    (void)unused;
    Py_SETREF(self->offer, Py_NewRef(Py_None));
    self->declined = 1;
    Py_RETURN_NONE;
}

/* accept() -> bytes: PyRequestParser.accept (the offered command's bytes so far). */
static PyObject *Framer_accept(FramerObject *self, PyObject *unused) {
    (void)unused;
    if (framer_busy(self))
        return NULL;
    if (self->offer == Py_None) {
        PyErr_SetString(PyExc_ValueError, "accept: nothing is offered");
        return NULL;
    }
    Py_ssize_t size = (Py_ssize_t)self->bulk, have = self->len - self->pos;
    PyObject *head = NULL, *carry = NULL;
    if (have > size) {  /* the byte after the body is checked by stream(), like the rest */
        carry = PyBytes_FromStringAndSize(self->buf + self->pos + size, have - size);
        if (carry == NULL)
            return NULL;
        have = size;
    }
    head = PyBytes_FromStringAndSize(self->buf, self->pos + have);
    if (head == NULL) {
        Py_XDECREF(carry);
        return NULL;
    }
    Py_XSETREF(self->carry, carry);
    Py_SETREF(self->offer, Py_NewRef(Py_None));
    self->streaming = 1;
    self->body_left = size - have;
    self->crlf_left = 2;
    self->args_left = self->count - self->nargs - 1;
    PyMem_Free(self->buf);
    self->buf = NULL;
    self->len = self->cap = self->pos = 0;
    self->count = self->bulk = -1;
    Py_CLEAR(self->args);
    self->nargs = 0;
    self->args_bytes = 0;
    update_held(self);
    return head;
}

/* prefix (may be NULL) + p[0:n] as bytes; `whole` when that is all of it. */
static PyObject *joined(PyObject *prefix, const char *p, Py_ssize_t n, PyObject *whole) {
    if (prefix == NULL)
        return whole != NULL ? Py_NewRef(whole) : PyBytes_FromStringAndSize(p, n);
    Py_ssize_t k = PyBytes_GET_SIZE(prefix);
    PyObject *out = PyBytes_FromStringAndSize(NULL, k + n);
    if (out != NULL) {
        memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(prefix), (size_t)k);
        memcpy(PyBytes_AS_STRING(out) + k, p, (size_t)n);
    }
    return out;
}

/* stream(data) -> (part, done): PyRequestParser.stream, step for step. */
static PyObject *Framer_stream(FramerObject *self, PyObject *data) {
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "stream(data: bytes)");
        return NULL;
    }
    if (framer_busy(self))
        return NULL;
    PyObject *all = NULL;     /* a byte accept() left for checking, then data */
    PyObject *prefix = NULL;  /* a header held back from the last read, handed out once checked */
    PyObject *part = NULL, *result = NULL;
    const char *bad = NULL;
    PyObject *bad_text = NULL;
    int done = 0;
    if (self->carry != NULL) {
        all = joined(self->carry, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), NULL);
        if (all == NULL)
            return NULL;
        Py_CLEAR(self->carry);
    } else {
        all = Py_NewRef(data);
    }
    const char *d = PyBytes_AS_STRING(all);
    Py_ssize_t n = PyBytes_GET_SIZE(all), i = 0;
    const Py_ssize_t max_inline = (Py_ssize_t)self->max_inline;
    self->busy = 1;
    for (;;) {
        if (self->body_left) {
            Py_ssize_t take = self->body_left < n - i ? self->body_left : n - i;
            i += take;
            self->body_left -= take;
            if (self->body_left)
                break;
        }
        if (self->crlf_left) {
            while (self->crlf_left && i < n) {
                if (d[i] != (self->crlf_left == 2 ? '\r' : '\n')) {
                    bad = "bulk string not terminated by CRLF";
                    goto corrupt;
                }
                i++;
                self->crlf_left--;
            }
            if (self->crlf_left)
                break;
        }
        if (!self->args_left) {  /* the command ended here: the rest is framed by frame() */
            self->streaming = 0;
            if (buf_append(self, d + i, n - i) < 0)
                goto fail;
            if (i < n)
                update_held(self);
            part = joined(prefix, d, i, i < n ? NULL : all);
            done = 1;
            goto out;
        }
        /* the next argument's header, perhaps cut by the end of a read */
        Py_ssize_t had = self->head ? PyBytes_GET_SIZE(self->head) : 0;
        Py_ssize_t more = n - i < max_inline ? n - i : max_inline;
        PyObject *line = NULL;
        const char *h = d + i;
        if (had) {
            if ((line = joined(self->head, d + i, more, NULL)) == NULL)
                goto fail;
            h = PyBytes_AS_STRING(line);
        }
        Py_ssize_t hlen = had + more;
        if (hlen > 0 && h[0] != '$') {
            bad_text = expected_bulk(h[0]);
            Py_XDECREF(line);
            if (bad_text == NULL) goto fail;
            goto corrupt;
        }
        Py_ssize_t nl = find_crlf(h, 0, hlen);
        if (nl < 0) {
            if (hlen > max_inline) {
                Py_XDECREF(line);
                bad = "too big bulk count string";
                goto corrupt;
            }
            if (line == NULL && hlen > 0 && (line = PyBytes_FromStringAndSize(h, hlen)) == NULL)
                goto fail;
            Py_XSETREF(self->head, line);  /* held back: not handed out before it is checked */
            self->held = hlen;
            part = joined(prefix, d, i, NULL);
            goto out;
        }
        long long size;
        int rc = bulk_len(self, h + 1, h + nl, &size, &bad);
        Py_XDECREF(line);
        if (rc < 0)
            goto corrupt;
        if (had) {  /* (only ever at the start of a read) */
            prefix = self->head;
            self->head = NULL;
        }
        i += nl + 2 - had;
        Py_CLEAR(self->head);
        self->held = 0;
        self->body_left = (Py_ssize_t)size;
        self->crlf_left = 2;
        self->args_left--;
    }
    part = joined(prefix, d, n, all);
    goto out;
corrupt:
    if (bad_text == NULL && (bad_text = PyUnicode_FromString(bad)) == NULL)
        goto fail;
    Py_SETREF(self->error, bad_text);
    part = PyBytes_FromStringAndSize(NULL, 0);
out:
    if (part != NULL)
        result = PyTuple_Pack(2, part, done ? Py_True : Py_False);
fail:
    self->busy = 0;
    Py_XDECREF(part);
    Py_XDECREF(prefix);
    Py_DECREF(all);
    return result;
}

static PyMethodDef Framer_methods[] = {
    {"frame", (PyCFunction)(void (*)(void))Framer_frame, METH_FASTCALL, NULL},
    {"feed", (PyCFunction)Framer_feed, METH_O, NULL},
    {"buffered", (PyCFunction)Framer_buffered, METH_NOARGS, NULL},
    {"decline", (PyCFunction)Framer_decline, METH_NOARGS, NULL},
    {"accept", (PyCFunction)Framer_accept, METH_NOARGS, NULL},
    {"stream", (PyCFunction)Framer_stream, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Framer_members[] = {
    {"limits", T_OBJECT, offsetof(FramerObject, limits), READONLY, NULL},
    {"authenticated", T_BOOL, offsetof(FramerObject, authenticated), 0, NULL},
    {"again", T_BOOL, offsetof(FramerObject, again), READONLY, NULL},
    {"held", T_PYSSIZET, offsetof(FramerObject, held), READONLY, NULL},
    {"error", T_OBJECT, offsetof(FramerObject, error), READONLY, NULL},
    {"offer", T_OBJECT, offsetof(FramerObject, offer), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FramerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy._speedups.RequestFramer",
    .tp_doc = "Client requests framed across reads: the C twin of resp.PyRequestParser.",
    .tp_basicsize = sizeof(FramerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Framer_new,
    .tp_traverse = (traverseproc)Framer_traverse,
    .tp_clear = (inquiry)Framer_clear,
    .tp_dealloc = (destructor)Framer_dealloc,
    .tp_methods = Framer_methods,
    .tp_members = Framer_members,
};

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
    {"split_inline", py_split_inline, METH_O, NULL},
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
    if (PyType_Ready(&KetamaType) < 0 || PyType_Ready(&FramerType) < 0)
        return NULL;
    if (out_of_memory == NULL && (out_of_memory = PyUnicode_InternFromString("out of memory")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "KetamaRoute", (PyObject *)&KetamaType) < 0
        || PyModule_AddObjectRef(m, "RequestFramer", (PyObject *)&FramerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
