"""The listening socket: bound by us (not by uvicorn) so shutdown can close it without losing
the connections the kernel has already accepted for it.

Closing a listening socket resets every connection still in its accept queue: the client's
handshake completed, it sent its request, and it gets a reset with no answer. On Linux the
service first attaches a socket filter that drops incoming SYNs: no new handshake starts
(the client's kernel retries the SYN after 1 s and then meets a closed port, a clean
"connection refused", or, on a port shared with REUSE_PORT, another process), handshakes
already under way still complete, and the accept queue can be emptied before the close.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys

#: linux/socket.h; classic BPF needs no privilege
SO_ATTACH_FILTER = 26
#: tcp flags byte at offset 13 of the TCP header, which is where a TCP socket filter's packet
#: starts: SYN without ACK is a new connection (drop: return 0 bytes); anything else passes
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x54, 0, 0, 0x12),  # and #(SYN|ACK)
    (0x15, 0, 1, 0x02),  # jeq #SYN, drop, keep
    (0x06, 0, 0, 0),  # drop: ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1
)


def listening_socket(host: str, port: int, *, reuse_port: bool, backlog: int) -> socket.socket:
    """A TCP socket bound to host:port. Listening at once, or, with `reuse_port`
    (SO_REUSEPORT: several processes share the port), only bound: a bound socket that does not
    listen gets no connections, so a process joins the shared port when it starts serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if not reuse_port:
            sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def refuse_new_connections(sock: socket.socket) -> bool:
    """Drop new SYNs to `sock` from now on; False where the platform has no socket filters."""
    if sys.platform != "linux":  # pragma: no cover - Linux serves in every deployment
        return False
    program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in _DROP_SYN))
    fprog = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(program))
    # the kernel copies the program at attach time, so `program` may go once this returns
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    return True


def accept_queue_length(sock: socket.socket) -> int:
    """Connections the kernel has accepted for the listening `sock` that the server has not
    taken yet (TCP_INFO's tcpi_unacked on a listener; 0 where unknown)."""
    if sys.platform != "linux":  # pragma: no cover
        return 0
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    state, unacked = info[0], struct.unpack_from("I", info, 24)[0]
    return int(unacked) if state == 10 else 0  # 10: TCP_LISTEN
