"""Test guards loaded into every Python process of a test (put this folder on PYTHONPATH; the
subprocesses that dvc starts inherit it). Both are off unless their variable is set.

CHIMUFFIN_NETGUARD_LOG=<file>: refuse and record every name lookup other than localhost or this
machine's own host name, and every connection or datagram to a non-loopback address (AF_UNIX and
loopback are allowed).
Records go to the file because libraries often swallow the error (telemetry, error reports).

CHIMUFFIN_FORBID_TLC=<file>: refuse and record any import of the `tlc` package.
"""

import os
import sys


def _record(log: str, what: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"pid {os.getpid()} ({' '.join(sys.argv)[:160]}): {what}\n")


def _install_netguard(log: str) -> None:
    import errno
    import ipaddress
    import socket

    # This machine's own name counts as local (the 3LC Object Service looks it up; /etc/hosts
    # answers). Connections are still refused unless the address it gives is loopback.
    own = {"", "localhost", "localhost.localdomain", "ip6-localhost", socket.gethostname()}

    def is_local(host) -> bool:
        if host is None:
            return True
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        host = str(host)
        if host in own:
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    def lookup(fn, name):
        def guarded(host, *args, **kwargs):
            if not is_local(host):
                _record(log, f"{name}({host!r})")
                raise socket.gaierror(socket.EAI_NONAME, f"network guard: lookup of {host!r}")
            return fn(host, *args, **kwargs)
        return guarded

    def connect(fn, name):
        def guarded(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
                _record(log, f"{name}({address!r})")
                raise OSError(errno.ENETUNREACH, f"network guard: {name} to {address!r}")
            return fn(self, address, *args)
        return guarded

    def sendto(fn):
        def guarded(self, data, *args):
            address = args[-1]
            if self.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
                _record(log, f"sendto({address!r})")
                raise OSError(errno.ENETUNREACH, f"network guard: sendto {address!r}")
            return fn(self, data, *args)
        return guarded

    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        setattr(socket, name, lookup(getattr(socket, name), name))
    socket.socket.connect = connect(socket.socket.connect, "connect")
    socket.socket.connect_ex = connect(socket.socket.connect_ex, "connect_ex")
    socket.socket.sendto = sendto(socket.socket.sendto)


def _install_tlc_tripwire(log: str) -> None:
    import importlib.abc

    class ForbidTlc(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "tlc" or name.startswith("tlc."):
                _record(log, f"import {name}")
                raise ImportError(f"test guard: `import {name}` is forbidden here")
            return None

    sys.meta_path.insert(0, ForbidTlc())


if os.environ.get("CHIMUFFIN_NETGUARD_LOG"):
    _install_netguard(os.environ["CHIMUFFIN_NETGUARD_LOG"])
if os.environ.get("CHIMUFFIN_FORBID_TLC"):
    _install_tlc_tripwire(os.environ["CHIMUFFIN_FORBID_TLC"])
