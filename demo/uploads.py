"""Upload lifecycle: delete what a request uploaded, nothing else; never share an output file.

Gradio's upload route stores each file under a content hash (same bytes and name, same
path) and records it in `Blocks.upload_file_set`. Example files live in the same cache,
at the same kind of path (an upload of an example's bytes under its name lands on it),
so `keep_examples` holds them in the component's `keep_in_cache`, as Gradio does for
its own default values. A path is this app's to delete only when Gradio's upload route
wrote it and no component keeps it: an API client that names a cached example or an
output file gets it classified, never deleted.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import gradio as gr
import numpy as np
from gradio.processing_utils import save_file_to_cache
from gradio.utils import get_upload_folder
from PIL import Image

UPLOAD_GONE = ("Cannot classify this file: it is no longer on the server (uploads are deleted "
               "shortly after their requests). Upload the file again")


class UploadJanitor:
    """Deletes each uploaded file once no request uses it, after a grace period.

    Identical uploads from different clients are one path: deleting it the moment the
    first request ends would fail a second request whose upload is already done but which
    has not started yet. The grace period (seconds after the last request using the
    file) covers that, and the page's "Classify" after its preview of the upload.
    """

    def __init__(self, blocks: gr.Blocks, grace_s: float):
        self.blocks = blocks
        self.grace_s = grace_s
        self._users: Counter[str] = Counter()
        self._lock = threading.Lock()

    def uploads_among(self, paths: list[str]) -> list[str]:
        """The paths that Gradio's upload route wrote and no component keeps (examples)."""
        uploaded = {os.path.realpath(path) for path in frozenset(self.blocks.upload_file_set)}
        kept = {os.path.realpath(path) for block in list(self.blocks.blocks.values())
                for path in frozenset(getattr(block, "keep_in_cache", ()))}
        resolved = [os.path.realpath(path) for path in paths]
        return [path for path in resolved if path in uploaded and path not in kept]

    @contextmanager
    def using(self, paths: list[str]) -> Iterator[None]:
        """Hold the request's files while it runs; afterwards schedule its uploads' deletion."""
        if any(not Path(path).is_file() for path in paths):
            raise gr.Error(f"{UPLOAD_GONE}.", print_exception=False)
        uploads = self.uploads_among(paths)
        with self._lock:
            self._users.update(uploads)
        try:
            yield
        finally:
            with self._lock:
                self._users.subtract(uploads)
            for path in uploads:
                if self.grace_s <= 0:
                    self._delete_if_unused(path)
                    continue
                timer = threading.Timer(self.grace_s, self._delete_if_unused, args=(path,))
                timer.daemon = True
                timer.start()

    def _delete_if_unused(self, path: str) -> None:
        with self._lock:
            if self._users[path] <= 0:
                del self._users[path]
                Path(path).unlink(missing_ok=True)


def keep_examples(paths: list[str], component: gr.components.Component) -> list[str]:
    """Copy the example files into Gradio's cache and keep them there for the server's life.

    Gradio's own copies of a gr.File example are ordinary cache files: its cache cleaner
    (`delete_cache`) would remove them after a few minutes and the examples would stop
    working. No directory is served: only these copies are reachable.
    """
    cached = [save_file_to_cache(path, component.GRADIO_CACHE) for path in paths]
    component.keep_in_cache.update(cached)
    return cached


def unique_png(pixels: np.ndarray, name: str) -> str:
    """Write a PNG that belongs to this request alone, in Gradio's cache, and return its path.

    Gradio would store a returned array under the hash of its bytes, so two requests with
    the same output share one file, rewritten in place while the other's download reads
    it. A fresh directory per call gives every answer its own file; Gradio's cache
    cleaner (`delete_cache`) removes it with its other outputs.
    """
    directory = Path(get_upload_folder()) / f"output-{secrets.token_hex(16)}"
    directory.mkdir(parents=True)
    path = directory / name
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    return str(path)
