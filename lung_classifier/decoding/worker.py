"""The decode worker: a child process that decodes untrusted files with native decoders, one at a time.

GDCM (CharLS, OpenJPEG, its libjpeg) and PIL's decoders (libjpeg-turbo, libpng's zlib,
libtiff, libwebp) are C and C++ code fed bytes from anyone: a crafted file can make them
abort (an uncaught C++ exception), crash or allocate without bound, and in the server's
own process that ends every request at once. Here they run in a process of their own,
started by :mod:`.pool` with ``python -m lung_classifier.decoding.worker MEMORY``: it
imports numpy, pydicom, GDCM and PIL only (never TensorFlow), limits its address space
(``RLIMIT_AS``: its size after imports plus MEMORY bytes) and, before each file, its CPU
time (``RLIMIT_CPU``: the request's ``cpu_s`` more than it has used, rounded up to a
whole second), and answers one request after another until its input closes.

The protocol (:mod:`.protocol`) runs on the pool's pipes, file descriptors 0 and 1, which
are duplicated and then pointed away, so that a library writing to stdout cannot corrupt
it: a request is a JSON header (``path`` or ``size`` of the bytes that follow, ``name``,
``window``, ``cpu_s``), an answer is a JSON header and, for a slice, its H x W x 3 uint8
pixels.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .protocol import read_exactly, receive, send


def _address_space() -> int | None:
    """This process's virtual size now (VmSize), in bytes; None where there is no /proc (macOS: RLIMIT_AS is not
    enforced there anyway; the decode budget and the CPU and wall limits still hold)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def limit_cpu(seconds: float) -> None:
    """Let the next file use at most `seconds` of CPU: the kernel sends SIGXCPU (which ends us) past it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.getrlimit(resource.RLIMIT_CPU)[1]))


def _warm_up() -> None:
    """Load every decoder before the address-space limit is taken, so that the limit is the decodes' own room."""
    import gdcm  # noqa: F401 - loaded now: GDCM's libraries are part of the process's size, not a decode's
    from PIL import Image, features
    from pydicom.pixels import get_decoder

    from . import dicom_jpeg

    for syntax in dicom_jpeg.SYNTAXES:
        get_decoder(syntax)
    Image.init()
    features.check("webp")


def serve(requests: BinaryIO, answers: BinaryIO, memory: int) -> None:
    """Answer decode requests until the pool closes the pipe (or a failure leaves this process unusable)."""
    from .images import decode_here
    from .limits import ImageError

    _warm_up()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a decoder killed for its CPU time leaves no core file
    size = _address_space()
    limit = None if size is None else size + memory
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    send(answers, {"ready": True, "address_space": limit})
    while (request := receive(requests)) is not None:
        source: bytes | Path
        if "path" in request:
            source = Path(request["path"])
        else:
            source = read_exactly(requests, int(request["size"])) or b""
        limit_cpu(float(request["cpu_s"]))
        try:
            found = decode_here(source, str(request["name"]), tuple(request["window"]))
        except ImageError as exc:
            send(answers, {"refused": str(exc)})
            continue
        except MemoryError:
            send(answers, {"failed": f"it needs more than the {memory // 2**20} MiB of memory a decode may use"})
            return  # after a MemoryError a native decoder's state is not to be trusted: the pool starts another
        except Exception as exc:  # noqa: BLE001 - a decoder failing in a way nobody foresaw costs this request only
            send(answers, {"failed": f"its decoder failed ({exc.__class__.__name__}: {str(exc)[:160]})"})
            return
        rgb = np.ascontiguousarray(found.rgb, np.uint8)
        send(answers, {"shape": list(rgb.shape), "dicom": found.dicom, "axial": found.axial}, memoryview(rgb).cast("B"))
        del found, rgb, source


def main() -> None:
    # The pool's pipes are fds 0 and 1: keep private copies, then point 0 at nothing and 1 at stderr (the
    # pool's log of this worker), so that no library's print can reach the protocol.
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    answers = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(requests, answers, int(sys.argv[1]))


if __name__ == "__main__":
    main()
