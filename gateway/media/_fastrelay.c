/* The relay's common case in C: one epoll over every call's RTP socket, and for each ready
 * socket the datagram that needs nothing but a PT byte and a send.
 *
 * Why: at 1,000 calls the relay spends ~10 us of Python per packet (a loop callback, a
 * recvfrom that builds an address tuple, `Relay.receive_rtp`, a sendto that parses one);
 * the kernel's share is the same for every relay. This module does that common case for
 * all ready sockets in one call from the event loop, and hands every other datagram, with
 * the address Python's recvfrom would give, back to `Relay.receive_rtp` unchanged.
 *
 * It keeps no relay state of its own. Each datagram is judged on the `Leg` object's
 * current attributes, read through the slot offsets of `gateway.media.relay.Leg`: a
 * packet that is not the next of its stream, from its latched source, of its audio payload
 * type, with a plain 12-byte header, or on a leg that converts G.711 laws, plays a feedback
 * tone or uses SRTP (either side), goes the Python way; so does a masked leg's packet
 * unless it is a plain 20 ms mu-law frame. So no change of mode (a capture starting)
 * can find a stale copy here: the fast path forwards exactly the packets that
 * `Relay.receive_rtp` would forward bit-exact with nothing but the PT byte remapped (and
 * the renumbering after withheld RFC 4733 packets), queues the detector and masker rows it
 * would queue, and updates the same fields it would (`rx_next`, `last_rx_s`, the sampled
 * RFC 3550 A.8 jitter pair).
 *
 * `release_unchanged` is the core's own per-row step after a masker call that changed no row
 * (`Relay._run_masker`, bound by `Relay.accelerate`): the same legs' `held` swapped, the same
 * packets handed back for the edge to send; it does no I/O, and any row off its common case
 * goes back to the core untouched.
 *
 * Linux only (epoll); IPv4 sockets only (the edge keeps IPv6 media on per-socket readers).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#ifndef __linux__
#error "the fast relay needs Linux epoll"
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_DATAGRAM 2048
#define MAX_EVENTS 1024
#define DET_PACKET_BYTES 172 /* 12-byte header + 160 bytes: one 20 ms G.711 frame */
#define NO_PT 255

/* Leg slots read or written per datagram (names as in gateway/media/relay.py). */
enum {
    F_RTP_SRC, F_SRTP, F_PT_MAP, F_AUDIO_PT, F_RX_NEXT, F_INSPECT, F_MASKING, F_XLATE,
    F_SLOT, F_IS_ALAW, F_SEQ_OFFSET, F_PEER, F_RTP_DEST, F_FEEDBACK, F_LAST_RX_S, F_DIRECTION,
    F_RX_SSRC, F_RX_PAIR_SEQ, F_RX_TRANSIT, F_RX_JITTER, F_RX_PAIRS, F_CLOCK_HZ, F_CAPTURING, F_HELD,
    N_FIELDS
};
static const char *FIELD_NAMES[N_FIELDS] = {
    "rtp_src", "srtp", "pt_map", "audio_pt", "rx_next", "inspect", "masking", "xlate",
    "slot", "is_alaw", "seq_offset", "peer", "rtp_dest", "feedback", "last_rx_s", "direction",
    "rx_ssrc", "rx_pair_seq", "rx_transit", "rx_jitter", "rx_pairs", "clock_hz", "capturing", "held",
};

typedef struct {
    PyObject *leg;          /* strong ref; NULL: free entry */
    int peer_fd;
    int direction;          /* 0 caller->agent, 1 agent->caller: index of the counters */
    PyObject *src_key;      /* strong ref to the rtp_src tuple `src` was parsed from */
    struct sockaddr_in src;
    int src_ok;
    PyObject *dest_key;     /* strong ref to the peer's rtp_dest tuple `dest` was parsed from */
    struct sockaddr_in dest;
    int dest_ok;
} Entry;

typedef struct {
    PyObject_HEAD
    int epfd;
    PyTypeObject *leg_type;
    Py_ssize_t off[N_FIELDS];
    unsigned jitter_mask;
    long jitter_warmup;     /* Relay._jitter_warmup: pairs averaged before the fixed gain */
    double jitter_gain;     /* Relay._jitter_gain */
    Entry *entries;         /* indexed by fd */
    PyObject *fds;          /* {leg: fd of its own RTP socket}, for send_all */
    int n_entries;
    int n_registered;
} FastRelay;

static inline PyObject *slot_get(PyObject *obj, Py_ssize_t off) {
    return *(PyObject **)((char *)obj + off);
}

static inline void slot_set(PyObject *obj, Py_ssize_t off, PyObject *value) {
    PyObject **p = (PyObject **)((char *)obj + off);
    PyObject *old = *p;
    Py_INCREF(value);
    *p = value;
    Py_XDECREF(old);
}

/* (host, port) with a dotted-quad host -> sockaddr_in; 0 when it is anything else. */
static int parse_addr(PyObject *addr, struct sockaddr_in *out) {
    if (!PyTuple_CheckExact(addr) || PyTuple_GET_SIZE(addr) != 2)
        return 0;
    PyObject *host = PyTuple_GET_ITEM(addr, 0), *port = PyTuple_GET_ITEM(addr, 1);
    if (!PyUnicode_Check(host) || !PyLong_CheckExact(port))
        return 0;
    const char *h = PyUnicode_AsUTF8(host);
    long p = PyLong_AsLong(port);
    if (h == NULL || p < 0 || p > 65535) {
        PyErr_Clear();
        return 0;
    }
    memset(out, 0, sizeof(*out));
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)p);
    return inet_pton(AF_INET, h, &out->sin_addr) == 1;
}

/* The sockaddr for an address tuple, re-parsed only when the tuple object changed. */
static int cached_addr(PyObject *addr, PyObject **key, struct sockaddr_in *sa, int *ok) {
    if (addr != *key) {
        Py_XINCREF(addr);
        Py_XSETREF(*key, addr);
        *ok = addr != NULL && addr != Py_None && parse_addr(addr, sa);
    }
    return *ok;
}

static inline int long_is(PyObject *v, long want) {
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow;
    long x = PyLong_AsLongAndOverflow(v, &overflow);
    return !overflow && x == want;
}

static inline long long_or(PyObject *v, long dflt) {
    if (v == NULL || !PyLong_CheckExact(v))
        return dflt;
    int overflow;
    long x = PyLong_AsLongAndOverflow(v, &overflow);
    return overflow ? dflt : x;
}

static void entry_clear(Entry *e) {
    Py_CLEAR(e->leg);
    Py_CLEAR(e->src_key);
    Py_CLEAR(e->dest_key);
    e->src_ok = e->dest_ok = 0;
}

static int FastRelay_init(FastRelay *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"leg_type", "jitter_mask", "jitter_warmup", "jitter_gain", NULL};
    PyObject *leg_type;
    unsigned int jitter_mask;
    long jitter_warmup;
    double jitter_gain;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!Ild", kwlist, &PyType_Type, &leg_type, &jitter_mask,
                                     &jitter_warmup, &jitter_gain))
        return -1;
    if (self->epfd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "FastRelay already initialised");
        return -1;
    }
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *descr = PyDict_GetItemString(((PyTypeObject *)leg_type)->tp_dict, FIELD_NAMES[i]);
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) {
            PyErr_Format(PyExc_TypeError, "leg type has no slot %s", FIELD_NAMES[i]);
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "slot %s is not an object slot", FIELD_NAMES[i]);
            return -1;
        }
        self->off[i] = m->offset;
    }
    Py_INCREF(leg_type);
    self->leg_type = (PyTypeObject *)leg_type;
    self->jitter_mask = jitter_mask;
    self->jitter_warmup = jitter_warmup;
    self->jitter_gain = jitter_gain;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (self->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *FastRelay_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    FastRelay *self = (FastRelay *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->epfd = -1;
        self->entries = NULL;
        self->n_entries = 0;
        self->n_registered = 0;
        self->leg_type = NULL;
        self->fds = PyDict_New();
        if (self->fds == NULL) {
            Py_DECREF(self);
            return NULL;
        }
    }
    return (PyObject *)self;
}

static void FastRelay_dealloc(FastRelay *self) {
    for (int i = 0; i < self->n_entries; i++)
        entry_clear(&self->entries[i]);
    PyMem_Free(self->entries);
    if (self->epfd >= 0)
        close(self->epfd);
    Py_XDECREF(self->leg_type);
    Py_XDECREF(self->fds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *FastRelay_fileno(FastRelay *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->epfd);
}

static PyObject *FastRelay_add(FastRelay *self, PyObject *args) {
    int fd, peer_fd;
    PyObject *leg;
    if (!PyArg_ParseTuple(args, "iOi", &fd, &leg, &peer_fd))
        return NULL;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "FastRelay is closed");
        return NULL;
    }
    if (Py_TYPE(leg) != self->leg_type) {
        PyErr_SetString(PyExc_TypeError, "not a Leg");
        return NULL;
    }
    if (fd < 0 || peer_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "bad file descriptor");
        return NULL;
    }
    PyObject *dir = slot_get(leg, self->off[F_DIRECTION]);
    long direction = long_or(dir, -1);
    if (direction != 0 && direction != 1) {
        PyErr_SetString(PyExc_ValueError, "leg has no direction");
        return NULL;
    }
    if (fd >= self->n_entries) {
        int n = self->n_entries ? self->n_entries : 256;
        while (n <= fd)
            n *= 2;
        Entry *grown = PyMem_Realloc(self->entries, sizeof(Entry) * (size_t)n);
        if (grown == NULL)
            return PyErr_NoMemory();
        memset(grown + self->n_entries, 0, sizeof(Entry) * (size_t)(n - self->n_entries));
        self->entries = grown;
        self->n_entries = n;
    }
    Entry *e = &self->entries[fd];
    if (e->leg != NULL) {
        PyErr_SetString(PyExc_ValueError, "descriptor already registered");
        return NULL;
    }
    PyObject *fd_obj = PyLong_FromLong(fd);
    if (fd_obj == NULL || PyDict_SetItem(self->fds, leg, fd_obj) < 0) {
        Py_XDECREF(fd_obj);
        return NULL;
    }
    Py_DECREF(fd_obj);
    struct epoll_event ev = {.events = EPOLLIN, .data = {.fd = fd}};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        PyDict_DelItem(self->fds, leg);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_INCREF(leg);
    e->leg = leg;
    e->peer_fd = peer_fd;
    e->direction = (int)direction;
    self->n_registered++;
    Py_RETURN_NONE;
}

static PyObject *FastRelay_remove(FastRelay *self, PyObject *arg) {
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd < 0 || fd >= self->n_entries || self->entries[fd].leg == NULL)
        Py_RETURN_NONE;
    if (self->epfd >= 0)
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL); /* may fail if already closed: harmless */
    if (PyDict_DelItem(self->fds, self->entries[fd].leg) < 0)
        PyErr_Clear();
    entry_clear(&self->entries[fd]);
    self->n_registered--;
    Py_RETURN_NONE;
}

static PyObject *FastRelay_close(FastRelay *self, PyObject *Py_UNUSED(ignored)) {
    for (int i = 0; i < self->n_entries; i++)
        entry_clear(&self->entries[i]);
    PyDict_Clear(self->fds);
    self->n_registered = 0;
    if (self->epfd >= 0) {
        close(self->epfd);
        self->epfd = -1;
    }
    Py_RETURN_NONE;
}

/* Whether `Relay.receive_rtp` would forward this datagram with only its PT byte remapped
 * (and, on an inspected leg, queue it for the detector). Fills *out_pt and *queue. */
static int is_plain(FastRelay *self, Entry *e, PyObject *leg, const unsigned char *buf, ssize_t n,
                    const struct sockaddr_in *from, unsigned *out_pt, int *queue, long *seq_offset,
                    int masked_ok, int *masked) {
    const Py_ssize_t *off = self->off;
    if (n < 12 || buf[0] != 0x80)
        return 0;
    PyObject *src = slot_get(leg, off[F_RTP_SRC]);
    if (!cached_addr(src, &e->src_key, &e->src, &e->src_ok))
        return 0;
    if (from->sin_port != e->src.sin_port || from->sin_addr.s_addr != e->src.sin_addr.s_addr)
        return 0;
    if (slot_get(leg, off[F_SRTP]) != Py_None)
        return 0;
    unsigned pt = buf[1] & 0x7F;
    if (!long_is(slot_get(leg, off[F_AUDIO_PT]), (long)pt))
        return 0;
    PyObject *pt_map = slot_get(leg, off[F_PT_MAP]);
    if (pt_map == NULL || !PyBytes_CheckExact(pt_map) || PyBytes_GET_SIZE(pt_map) != 128)
        return 0;
    *out_pt = (unsigned char)PyBytes_AS_STRING(pt_map)[pt];
    if (*out_pt == NO_PT)
        return 0;
    unsigned seq = ((unsigned)buf[2] << 8) | buf[3];
    if (!long_is(slot_get(leg, off[F_RX_NEXT]), (long)seq))
        return 0; /* a gap, a late packet, a new stream: RFC 3550 A.1 the long way */
    *seq_offset = long_or(slot_get(leg, off[F_SEQ_OFFSET]), -1);
    if (*seq_offset < 0 || *seq_offset > 0xFFFF)
        return 0;
    if (slot_get(leg, off[F_XLATE]) != Py_None)
        return 0;
    PyObject *inspect = slot_get(leg, off[F_INSPECT]);
    *queue = 0;
    *masked = 0;
    if (inspect == Py_True && (buf[1] & 0x80))
        return 0; /* a talkspurt starts: the core gives the detector the suppressed silence */
    if (inspect == Py_True) {
        PyObject *masking = slot_get(leg, off[F_MASKING]);
        if (masking == Py_True) {
            /* A masked caller packet: a row for the masker (the core's masking branch), for a
             * plain 20 ms mu-law frame only; the peer is not involved until the masker is. */
            if (!masked_ok || n != DET_PACKET_BYTES || slot_get(leg, off[F_IS_ALAW]) != Py_False)
                return 0;
            *masked = 1;
        } else if (masking != Py_False) {
            return 0;
        }
        long slot = long_or(slot_get(leg, off[F_SLOT]), -2);
        if (slot == -2)
            return 0;
        if (slot >= 0) {
            if (n != DET_PACKET_BYTES)
                return 0;
            *queue = 1;
        }
    } else if (inspect == Py_False) {
        if (slot_get(leg, off[F_FEEDBACK]) != Py_None)
            return 0;
    } else {
        return 0;
    }
    if (*masked)
        return 1;
    PyObject *peer = slot_get(leg, off[F_PEER]);
    if (peer == NULL || Py_TYPE(peer) != self->leg_type)
        return 0;
    if (slot_get(peer, off[F_SRTP]) != Py_None)
        return 0;
    if (!cached_addr(slot_get(peer, off[F_RTP_DEST]), &e->dest_key, &e->dest, &e->dest_ok))
        return 0;
    return 1;
}

/* The core's `_renumber`: packets withheld from the peer leave no gap in its sequence numbers. */
static inline void renumber(unsigned char *buf, unsigned seq, long seq_offset) {
    if (seq_offset) {
        unsigned out_seq = (seq - (unsigned)seq_offset) & 0xFFFF;
        buf[2] = (unsigned char)(out_seq >> 8);
        buf[3] = (unsigned char)(out_seq & 0xFF);
    }
}

/* Python's float modulo (the result takes the divisor's sign), as `Relay._jitter_pair` uses it. */
static double py_fmod(double x, double m) {
    double r = fmod(x, m);
    if (r != 0.0) {
        if ((m < 0) != (r < 0))
            r += m;
    } else {
        r = copysign(0.0, m);
    }
    return r;
}

/* `Relay._jitter_pair`, operation for operation (RFC 3550 A.8 on one sampled pair of packets
 * in `jitter_mask + 1`): same doubles in, same doubles out. Returns -1 on a Python error. */
static int jitter_pair(FastRelay *self, PyObject *leg, const unsigned char *buf, unsigned seq, double now) {
    const Py_ssize_t *off = self->off;
    unsigned long ts = ((unsigned long)buf[4] << 24) | ((unsigned long)buf[5] << 16) | ((unsigned long)buf[6] << 8) | buf[7];
    unsigned long ssrc = ((unsigned long)buf[8] << 24) | ((unsigned long)buf[9] << 16) | ((unsigned long)buf[10] << 8) | buf[11];
    if (!long_is(slot_get(leg, off[F_RX_SSRC]), (long)ssrc))
        return 0;
    PyObject *clock = slot_get(leg, off[F_CLOCK_HZ]);
    PyObject *prev = slot_get(leg, off[F_RX_TRANSIT]);
    PyObject *jit = slot_get(leg, off[F_RX_JITTER]);
    if (clock == NULL || prev == NULL || jit == NULL || !PyLong_CheckExact(clock) || !PyFloat_CheckExact(prev)
        || !PyFloat_CheckExact(jit))
        return 1; /* not the types the core keeps: let Python take the packet */
    double transit = now * PyLong_AsDouble(clock) - (double)ts;
    if (long_is(slot_get(leg, off[F_RX_PAIR_SEQ]), (long)seq)) {
        double d = py_fmod(transit - PyFloat_AS_DOUBLE(prev) + 2147483648.0, 4294967296.0) - 2147483648.0;
        double j = PyFloat_AS_DOUBLE(jit);
        long pairs = long_or(slot_get(leg, off[F_RX_PAIRS]), -1);
        if (pairs < 0)
            return 1;
        if (pairs < self->jitter_warmup) {
            pairs += 1;
            j += (fabs(d) - j) / (double)pairs;
            PyObject *p = PyLong_FromLong(pairs);
            if (p == NULL)
                return -1;
            slot_set(leg, off[F_RX_PAIRS], p);
            Py_DECREF(p);
        } else {
            j += (fabs(d) - j) * self->jitter_gain;
        }
        PyObject *jo = PyFloat_FromDouble(j);
        if (jo == NULL)
            return -1;
        slot_set(leg, off[F_RX_JITTER], jo);
        Py_DECREF(jo);
    }
    PyObject *t = PyFloat_FromDouble(transit);
    PyObject *n = PyLong_FromLong((long)((seq + 1) & 0xFFFF));
    if (t == NULL || n == NULL) {
        Py_XDECREF(t);
        Py_XDECREF(n);
        return -1;
    }
    slot_set(leg, off[F_RX_TRANSIT], t);
    slot_set(leg, off[F_RX_PAIR_SEQ], n);
    Py_DECREF(t);
    Py_DECREF(n);
    return 0;
}

/* Append (leg, datagram, (host, port)) for `Relay.receive_rtp`. */
static int hand_back(PyObject **slow, PyObject *leg, const unsigned char *buf, ssize_t n,
                     const struct sockaddr_in *from) {
    char host[INET_ADDRSTRLEN];
    if (*slow == NULL && (*slow = PyList_New(0)) == NULL)
        return -1;
    if (inet_ntop(AF_INET, &from->sin_addr, host, sizeof(host)) == NULL)
        host[0] = '\0';
    PyObject *item = Py_BuildValue("(Oy#(si))", leg, (const char *)buf, (Py_ssize_t)n, host,
                                   (int)ntohs(from->sin_port));
    if (item == NULL)
        return -1;
    int rc = PyList_Append(*slow, item);
    Py_DECREF(item);
    return rc;
}

/* drain(now, det_slots, det_payloads, mask_rows=None) -> (slow, counts)
 *
 * Reads one datagram from each ready socket (the poll is level-triggered: a socket with
 * more queued is ready again next time). Plain datagrams are sent from the peer leg's
 * socket at once and, on an inspected leg with a detector slot, their slot and bytes are
 * appended to the detector FIFO lists. `slow` is None or a list of (leg, datagram,
 * address) for `Relay.receive_rtp`, in arrival order. With a `mask_rows` list, a masked
 * caller leg's plain 20 ms mu-law packet is appended to it as (leg, packet, 12, now), as the
 * core's masking branch does (renumbered when the leg withheld packets), instead of going
 * the Python way. `counts` is (relayed, bytes received, receive errors, send errors) per
 * direction, then (detector rows queued, any A-law row, masker rows queued).
 */
static PyObject *FastRelay_drain(FastRelay *self, PyObject *args) {
    PyObject *now, *det_slots, *det_payloads, *mask_rows = Py_None;
    if (!PyArg_ParseTuple(args, "O!O!O!|O", &PyFloat_Type, &now, &PyList_Type, &det_slots,
                          &PyList_Type, &det_payloads, &mask_rows))
        return NULL;
    if (mask_rows != Py_None && !PyList_CheckExact(mask_rows)) {
        PyErr_SetString(PyExc_TypeError, "mask_rows must be a list or None");
        return NULL;
    }
    int masked_ok = mask_rows != Py_None;
    PyObject *start12 = NULL;
    if (masked_ok && (start12 = PyLong_FromLong(12)) == NULL)
        return NULL;
    if (self->epfd < 0) {
        PyErr_SetString(PyExc_ValueError, "FastRelay is closed");
        return NULL;
    }
    struct epoll_event events[MAX_EVENTS];
    int ready = epoll_wait(self->epfd, events, MAX_EVENTS, 0);
    if (ready < 0) {
        if (errno == EINTR)
            ready = 0;
        else
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    long relayed[2] = {0, 0}, relayed_bytes[2] = {0, 0}, recv_err[2] = {0, 0}, send_err[2] = {0, 0};
    long queued = 0, alaw = 0, mask_queued = 0;
    PyObject *slow = NULL;
    unsigned char buf[MAX_DATAGRAM];
    const Py_ssize_t *off = self->off;
    for (int i = 0; i < ready; i++) {
        int fd = events[i].data.fd;
        if (fd < 0 || fd >= self->n_entries || self->entries[fd].leg == NULL)
            continue;
        Entry *e = &self->entries[fd];
        struct sockaddr_storage from_ss;
        socklen_t from_len = sizeof(from_ss);
        ssize_t n = recvfrom(fd, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from_ss, &from_len);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                recv_err[e->direction]++; /* e.g. ICMP port unreachable reported on this socket */
            continue;
        }
        if (from_ss.ss_family != AF_INET) {
            recv_err[e->direction]++; /* cannot happen: only IPv4 sockets are registered */
            continue;
        }
        const struct sockaddr_in *from = (const struct sockaddr_in *)&from_ss;
        /* A datagram longer than the buffer was truncated: hand back what Python's
         * recvfrom(MAX_DATAGRAM) would have read, it decides. */
        PyObject *leg = e->leg;
        unsigned out_pt = NO_PT;
        int queue = 0;
        long seq_offset = 0;
        int masked = 0;
        if (!is_plain(self, e, leg, buf, n, from, &out_pt, &queue, &seq_offset, masked_ok, &masked)) {
            if (PyErr_Occurred() || hand_back(&slow, leg, buf, n, from) < 0)
                goto error;
            continue;
        }
        unsigned seq = ((unsigned)buf[2] << 8) | buf[3];
        if ((seq & self->jitter_mask) < 2) {
            int rc = jitter_pair(self, leg, buf, seq, PyFloat_AS_DOUBLE(now));
            if (rc < 0)
                goto error;
            if (rc > 0) {
                if (hand_back(&slow, leg, buf, n, from) < 0)
                    goto error;
                continue;
            }
        }
        PyObject *next = PyLong_FromLong((long)((seq + 1) & 0xFFFF));
        if (next == NULL)
            goto error;
        if (queue) {
            PyObject *slot = slot_get(leg, off[F_SLOT]);
            PyObject *packet = PyBytes_FromStringAndSize((const char *)buf, n);
            if (packet == NULL) {
                Py_DECREF(next);
                goto error;
            }
            int rc = PyList_Append(det_slots, slot);
            if (rc == 0)
                rc = PyList_Append(det_payloads, packet);
            Py_DECREF(packet);
            if (rc < 0) {
                Py_DECREF(next);
                goto error;
            }
            queued++;
            if (slot_get(leg, off[F_IS_ALAW]) == Py_True)
                alaw = 1;
        }
        slot_set(leg, off[F_RX_NEXT], next);
        Py_DECREF(next);
        slot_set(leg, off[F_LAST_RX_S], now);
        if (masked) {
            renumber(buf, seq, seq_offset);
            PyObject *row = Py_BuildValue("(Oy#OO)", leg, (const char *)buf, (Py_ssize_t)n, start12, now);
            if (row == NULL)
                goto error;
            int rc = PyList_Append(mask_rows, row);
            Py_DECREF(row);
            if (rc < 0)
                goto error;
            mask_queued++;
            relayed_bytes[e->direction] += n;
            continue;
        }
        if (out_pt != (buf[1] & 0x7Fu))
            buf[1] = (unsigned char)((buf[1] & 0x80) | out_pt);
        renumber(buf, seq, seq_offset);
        relayed[e->direction]++;
        relayed_bytes[e->direction] += n;
        if (sendto(e->peer_fd, buf, (size_t)n, 0, (struct sockaddr *)&e->dest, sizeof(e->dest)) < 0)
            send_err[e->direction]++;
    }
    PyObject *result = Py_BuildValue("(O(lllllllllll))", slow ? slow : Py_None,
                                     relayed[0], relayed_bytes[0], recv_err[0], send_err[0],
                                     relayed[1], relayed_bytes[1], recv_err[1], send_err[1], queued, alaw,
                                     mask_queued);
    Py_XDECREF(slow);
    Py_XDECREF(start12);
    return result;
error:
    Py_XDECREF(slow);
    Py_XDECREF(start12);
    return NULL;
}

/* send_all(sends) -> (left, errors)
 *
 * `sends` is the core's list of (leg, datagram, (host, port)): each leaves from that leg's
 * own RTP socket, as the edge's `_send_all` sends them, without Python's per-call address
 * parsing. `left` is None or the items it could not take (a leg it does not know, an
 * address that is not a dotted quad), for the edge to send; `errors` counts failed sends
 * by the direction of the packets' peer leg (the direction they were received in).
 */
static PyObject *FastRelay_send_all(FastRelay *self, PyObject *sends) {
    if (!PyList_CheckExact(sends)) {
        PyErr_SetString(PyExc_TypeError, "sends must be a list");
        return NULL;
    }
    long errors[2] = {0, 0};
    PyObject *left = NULL, *last_dest = NULL;
    struct sockaddr_in sa;
    int sa_ok = 0;
    Py_ssize_t n = PyList_GET_SIZE(sends);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(sends, i);
        PyObject *leg = NULL, *data = NULL, *dest = NULL;
        int fd = -1;
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 3) {
            leg = PyTuple_GET_ITEM(item, 0);
            data = PyTuple_GET_ITEM(item, 1);
            dest = PyTuple_GET_ITEM(item, 2);
            PyObject *fd_obj = PyDict_GetItemWithError(self->fds, leg);
            if (fd_obj == NULL && PyErr_Occurred())
                goto error;
            if (fd_obj != NULL)
                fd = (int)PyLong_AsLong(fd_obj);
            if (dest != last_dest) {
                last_dest = dest;
                sa_ok = parse_addr(dest, &sa);
            }
        }
        if (fd < 0 || !PyBytes_CheckExact(data) || !sa_ok || fd >= self->n_entries || self->entries[fd].leg != leg) {
            if (left == NULL && (left = PyList_New(0)) == NULL)
                goto error;
            if (PyList_Append(left, item) < 0)
                goto error;
            continue;
        }
        if (sendto(fd, PyBytes_AS_STRING(data), (size_t)PyBytes_GET_SIZE(data), 0, (struct sockaddr *)&sa,
                   sizeof(sa)) < 0)
            errors[1 - self->entries[fd].direction]++;
    }
    PyObject *result = Py_BuildValue("(O(ll))", left ? left : Py_None, errors[0], errors[1]);
    Py_XDECREF(left);
    return result;
error:
    Py_XDECREF(left);
    return NULL;
}

/* release_unchanged(rows, sends, held_since) -> (done, relayed, new_holders or None)
 *
 * The core's per-row step after a masker call that changed no row of a batch of plain rows
 * (`Relay._run_masker`), for as many leading rows as take its common case: the row's leg is
 * capturing, and the packet it held leaves as it arrived (no law conversion, peer without SRTP,
 * destination known, PT kept). Each such row becomes its leg's held packet; the one it replaces
 * is appended to `sends` as (peer, bytes, destination) and its receive time to `held_since`. A
 * leg that held nothing just takes the row and is listed in `new_holders`. It stops, having
 * changed nothing for it, at the first row that is anything else: `done` rows were handled, the
 * core takes the rest. No I/O: the edge sends what the core returns. */
static PyObject *FastRelay_release_unchanged(FastRelay *self, PyObject *args) {
    PyObject *rows, *sends, *held_since;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyList_Type, &rows, &PyList_Type, &sends, &PyList_Type, &held_since))
        return NULL;
    const Py_ssize_t *off = self->off;
    Py_ssize_t n = PyList_GET_SIZE(rows), i;
    long relayed = 0;
    PyObject *new_holders = NULL;
    for (i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (!PyTuple_CheckExact(row) || PyTuple_GET_SIZE(row) != 4)
            break;
        PyObject *leg = PyTuple_GET_ITEM(row, 0);
        if (Py_TYPE(leg) != self->leg_type || slot_get(leg, off[F_CAPTURING]) != Py_True)
            break;
        PyObject *held = slot_get(leg, off[F_HELD]);
        if (held == Py_None) {
            if (new_holders == NULL && (new_holders = PyList_New(0)) == NULL)
                return NULL;
            if (PyList_Append(new_holders, leg) < 0)
                goto error;
            slot_set(leg, off[F_HELD], row);
            continue;
        }
        if (held == NULL || !PyTuple_CheckExact(held) || PyTuple_GET_SIZE(held) != 4)
            break;
        PyObject *pkt = PyTuple_GET_ITEM(held, 1);
        if (!PyBytes_CheckExact(pkt) || PyBytes_GET_SIZE(pkt) < 12 || slot_get(leg, off[F_XLATE]) != Py_None)
            break;
        PyObject *peer = slot_get(leg, off[F_PEER]);
        if (peer == NULL || Py_TYPE(peer) != self->leg_type || slot_get(peer, off[F_SRTP]) != Py_None)
            break;
        PyObject *dest = slot_get(peer, off[F_RTP_DEST]);
        if (dest == NULL || dest == Py_None)
            break;
        PyObject *pt_map = slot_get(leg, off[F_PT_MAP]);
        unsigned pt = (unsigned char)PyBytes_AS_STRING(pkt)[1] & 0x7F;
        if (pt_map == NULL || !PyBytes_CheckExact(pt_map) || PyBytes_GET_SIZE(pt_map) != 128
            || (unsigned char)PyBytes_AS_STRING(pt_map)[pt] != pt)
            break;
        PyObject *send = PyTuple_Pack(3, peer, pkt, dest);
        if (send == NULL)
            goto error;
        int failed = PyList_Append(sends, send) < 0 || PyList_Append(held_since, PyTuple_GET_ITEM(held, 3)) < 0;
        Py_DECREF(send);
        if (failed)
            goto error;
        slot_set(leg, off[F_HELD], row); /* the lists above hold what they need of `held` */
        relayed++;
    }
    PyObject *result = Py_BuildValue("(nlO)", i, relayed, new_holders ? new_holders : Py_None);
    Py_XDECREF(new_holders);
    return result;
error:
    Py_XDECREF(new_holders);
    return NULL;
}

/* pending() -> bool: some registered socket has a datagram waiting (one epoll_wait, no wait). */
static PyObject *FastRelay_pending(FastRelay *self, PyObject *Py_UNUSED(ignored)) {
    if (self->epfd < 0)
        Py_RETURN_FALSE;
    struct epoll_event ev;
    int ready = epoll_wait(self->epfd, &ev, 1, 0);
    return PyBool_FromLong(ready > 0);
}

static PyObject *FastRelay_len(FastRelay *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->n_registered);
}

static PyMethodDef FastRelay_methods[] = {
    {"fileno", (PyCFunction)FastRelay_fileno, METH_NOARGS, "The epoll descriptor: readable when a registered socket is."},
    {"add", (PyCFunction)FastRelay_add, METH_VARARGS, "add(fd, leg, peer_fd): relay datagrams arriving on fd for leg, sending from peer_fd."},
    {"remove", (PyCFunction)FastRelay_remove, METH_O, "remove(fd): stop watching fd (before it is closed)."},
    {"drain", (PyCFunction)FastRelay_drain, METH_VARARGS, "drain(now, det_slots, det_payloads, mask_rows=None) -> (slow, counts)."},
    {"send_all", (PyCFunction)FastRelay_send_all, METH_O, "send_all([(leg, datagram, (host, port)), ...]) -> (left, errors)."},
    {"close", (PyCFunction)FastRelay_close, METH_NOARGS, "Forget every socket and close the epoll descriptor."},
    {"registered", (PyCFunction)FastRelay_len, METH_NOARGS, "Sockets registered."},
    {"pending", (PyCFunction)FastRelay_pending, METH_NOARGS, "Whether a registered socket has a datagram waiting."},
    {"release_unchanged", (PyCFunction)FastRelay_release_unchanged, METH_VARARGS,
     "release_unchanged(rows, sends, held_since) -> (done, relayed, new_holders): the core's common row step."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastRelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway.media._fastrelay.FastRelay",
    .tp_basicsize = sizeof(FastRelay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One epoll over the relay's RTP sockets; forwards the plain datagrams in C.",
    .tp_new = FastRelay_new,
    .tp_init = (initproc)FastRelay_init,
    .tp_dealloc = (destructor)FastRelay_dealloc,
    .tp_methods = FastRelay_methods,
};

static struct PyModuleDef fastrelay_module = {
    PyModuleDef_HEAD_INIT, "_fastrelay", "The relay's plain-datagram path in C (see FastRelay).", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastrelay(void) {
    if (PyType_Ready(&FastRelayType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastrelay_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FastRelayType);
    if (PyModule_AddObject(m, "FastRelay", (PyObject *)&FastRelayType) < 0) {
        Py_DECREF(&FastRelayType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
