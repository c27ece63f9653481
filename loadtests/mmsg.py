"""sendmmsg/recvmmsg on one UDP socket through ctypes: the load generator's light edge.

The relay benchmark's generator and receiver must cost far less than the relays they
measure. One `sendmmsg` per tick sends a contiguous range of pre-built packets, each to
its own destination; one `recvmmsg` reads up to a batch of datagrams with their kernel
receive timestamps (SO_TIMESTAMPNS control messages), which numpy decodes in one pass.
No per-packet Python on either side. Linux only (glibc's sendmmsg/recvmmsg, x86-64/arm64
struct layouts computed by ctypes).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from time import time_ns

import numpy as np

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Also the cmsg type (SCM_TIMESTAMPNS == SO_TIMESTAMPNS on Linux)."""
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_CMSG_HDR = struct.calcsize("@Nii")
"""struct cmsghdr: cmsg_len (size_t), cmsg_level, cmsg_type; its data follows aligned to size_t."""
_CMSG_TS_SPACE = _CMSG_HDR + 16
"""CMSG_SPACE(sizeof(struct timespec)) on 64-bit Linux."""
_SOCKADDR_IN = struct.Struct("=H2s4s8x")

_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int


class MmsgError(OSError):
    """sendmmsg/recvmmsg failed with an errno other than EAGAIN."""


def _sockaddr_in(addr: tuple[str, int]) -> bytes:
    return _SOCKADDR_IN.pack(socket.AF_INET, addr[1].to_bytes(2, "big"), socket.inet_aton(addr[0]))


def _hdr_view(msgs: ctypes.Array, count: int) -> np.ndarray:
    """A numpy view of an mmsghdr array's length fields (offsets from ctypes, not guessed)."""
    base = _MMsgHdr.msg_hdr.offset
    dtype = np.dtype({"names": ["controllen", "flags", "msg_len"],
                      "formats": [np.uintp, np.intc, np.uintc],
                      "offsets": [base + _MsgHdr.msg_controllen.offset, base + _MsgHdr.msg_flags.offset,
                                  _MMsgHdr.msg_len.offset],
                      "itemsize": ctypes.sizeof(_MMsgHdr)})
    return np.frombuffer(msgs, dtype=dtype, count=count)


def set_buffer(sock: socket.socket, option: int, size_bytes: int) -> int:
    """Set SO_RCVBUF/SO_SNDBUF, forcing past the sysctl cap when allowed (root); returns what the kernel set."""
    force = {socket.SO_RCVBUF: SO_RCVBUFFORCE, socket.SO_SNDBUF: SO_SNDBUFFORCE}[option]
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size_bytes)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, option, size_bytes)
    return sock.getsockopt(socket.SOL_SOCKET, option)


class MmsgSender:
    """Sends rows of a packet array, row i always to destination i, with one sendmmsg per range.

    `packets` is a C-contiguous uint8 array of shape (n, packet_bytes) that the caller
    updates in place (sequence numbers, stamps) before each `send`; the kernel reads it
    during the call, so there is no copy on the Python side.
    """

    def __init__(self, sock: socket.socket, packets: np.ndarray, dests: list[tuple[str, int]]) -> None:
        if packets.ndim != 2 or packets.dtype != np.uint8 or not packets.flags.c_contiguous:
            raise ValueError("packets must be a C-contiguous uint8 array of rows")
        if len(dests) != len(packets):
            raise ValueError("one destination per packet row")
        self.sock = sock
        self.packets = packets
        n, size = packets.shape
        self._names = ctypes.create_string_buffer(b"".join(_sockaddr_in(d) for d in dests), 16 * n)
        self._iov = (_IoVec * n)()
        self._msgs = (_MMsgHdr * n)()
        base = packets.ctypes.data
        names = ctypes.addressof(self._names)
        iov0 = ctypes.addressof(self._iov)
        for i in range(n):
            self._iov[i].iov_base = base + i * size
            self._iov[i].iov_len = size
            h = self._msgs[i].msg_hdr
            h.msg_name = names + 16 * i
            h.msg_namelen = 16
            h.msg_iov = iov0 + i * ctypes.sizeof(_IoVec)
            h.msg_iovlen = 1
        self._msgs0 = ctypes.addressof(self._msgs)
        self._stride = ctypes.sizeof(_MMsgHdr)
        self.errors = 0
        """Messages the kernel refused (counted, skipped)."""

    def send(self, start: int, count: int) -> int:
        """Send rows start..start+count-1; returns how many left (refused ones are counted in `errors`)."""
        return self.send_timed(start, count)[0]

    def send_timed(self, start: int, count: int) -> tuple[int, int, int]:
        """`send`, also returning `time.time_ns()` just before the first syscall and just after the last.

        The kernel sends the messages one after another inside the call, so message k of
        the range left at about t_call + k * (t_done - t_call) / count: the load generator
        uses that instead of one stamp for the whole range.
        """
        if start < 0 or count < 0 or start + count > len(self.packets):
            raise ValueError("row range is outside the packet array")
        fd = self.sock.fileno()
        base = self._msgs0 + start * self._stride
        stride = self._stride
        done = ok = 0
        t_call = time_ns()
        while done < count:
            r = _sendmmsg(fd, base + done * stride, count - done, 0)
            if r > 0:
                done += r
                ok += r
                continue
            if ctypes.get_errno() in (11, 4):  # EAGAIN, EINTR (the socket should be blocking)
                continue
            self.errors += 1  # the kernel refused this message: count it and go on
            done += 1
        return ok, t_call, time_ns()


class MmsgReceiver:
    """Reads up to `batch` datagrams per recvmmsg with their kernel receive timestamps.

    `receive()` returns views into buffers it reuses: read them before the next call.
    A datagram longer than `max_bytes` is truncated (only the first bytes are needed).
    """

    def __init__(self, sock: socket.socket, batch: int = 256, max_bytes: int = 256) -> None:
        if _CMSG_HDR != 16:
            raise OSError("recvmmsg receiver needs the 64-bit Linux cmsghdr layout")
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock = sock
        self.batch = batch
        self.data = np.zeros((batch, max_bytes), dtype=np.uint8)
        self._control = np.zeros((batch, _CMSG_TS_SPACE), dtype=np.uint8)
        self._iov = (_IoVec * batch)()
        self._msgs = (_MMsgHdr * batch)()
        for i in range(batch):
            self._iov[i].iov_base = self.data.ctypes.data + i * max_bytes
            self._iov[i].iov_len = max_bytes
            h = self._msgs[i].msg_hdr
            h.msg_iov = ctypes.addressof(self._iov) + i * ctypes.sizeof(_IoVec)
            h.msg_iovlen = 1
            h.msg_control = self._control.ctypes.data + i * _CMSG_TS_SPACE
        self._hdr = _hdr_view(self._msgs, batch)
        self._msgs0 = ctypes.addressof(self._msgs)
        cm = self._control  # per row: cmsg_len (8 bytes), cmsg_level, cmsg_type, struct timespec
        self._cmsg_level = cm[:, 8:12].view(np.intc)[:, 0]
        self._cmsg_type = cm[:, 12:16].view(np.intc)[:, 0]
        self._ts = cm[:, 16:32].view(np.int64)

    def receive(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One non-blocking recvmmsg: (data rows, lengths, kernel receive time in ns; 0 if missing)."""
        self._hdr["controllen"] = _CMSG_TS_SPACE
        k = _recvmmsg(self.sock.fileno(), self._msgs0, self.batch, MSG_DONTWAIT, None)
        if k < 0:
            err = ctypes.get_errno()
            if err in (11, 4):  # EAGAIN, EINTR
                k = 0
            else:
                raise MmsgError(err, os.strerror(err))
        hdr = self._hdr[:k]
        ok = ((hdr["controllen"] >= _CMSG_TS_SPACE) & (self._cmsg_level[:k] == socket.SOL_SOCKET)
              & (self._cmsg_type[:k] == SO_TIMESTAMPNS))
        ts = self._ts[:k]
        rx_ns = np.where(ok, ts[:, 0] * 1_000_000_000 + ts[:, 1], 0)
        return self.data[:k], hdr["msg_len"].astype(np.int64), rx_ns
