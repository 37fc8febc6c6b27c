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
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import gradio as gr
import numpy as np
from gradio.processing_utils import save_file_to_cache
from gradio.utils import get_upload_folder
from PIL import Image

UPLOAD_GONE = ("Cannot classify this file: it is no longer on the server (an upload is deleted as soon as "
               "it has been classified). Upload the file again")


class _UploadRecord(set):
    """Gradio's record of uploaded paths that also reports each upload as it is recorded,
    and each path Gradio's cache cleaner drops from it.

    Gradio's upload route moves the file into place and records it without yielding to
    its event loop, so no request can start in between: when a request runs, every
    upload of its file so far has been counted. Iteration walks a snapshot: the cleaner
    iterates in a worker thread while uploads and deletions change the record.
    """

    def __init__(self, paths: Iterable[str], on_upload: Callable[[list[str]], None],
                 on_forget: Callable[[list[str]], None]):
        super().__init__(paths)
        self._on_upload = on_upload
        self._on_forget = on_forget

    def update(self, *groups: Iterable[str]) -> None:
        for group in groups:
            group = list(group)
            self._on_upload(group)
            super().update(group)

    def __isub__(self, paths: AbstractSet[str]) -> Self:  # the cache cleaner's removal
        self._on_forget(list(paths))
        super().__isub__(paths)
        return self

    def __iter__(self) -> Iterator[str]:
        return iter(list(set.__iter__(self)))


class UploadJanitor:
    """Deletes each uploaded file as soon as the requests it was uploaded for are done.

    Identical uploads from different clients are one path. So the janitor counts
    uploads of each path that no request has taken yet, and the requests using it;
    the file goes when both are zero, and Gradio's record forgets it then (it never
    forgets a file deleted under it, so its record would grow with every upload).
    A request that only looks (the page's preview) does not take its upload: the
    "Classify" that follows does. Every step costs the same however many files the
    server has seen.
    """

    def __init__(self, blocks: gr.Blocks):
        self.blocks = blocks
        self._waiting: Counter[str] = Counter()  # uploads not yet taken by a request
        self._using: Counter[str] = Counter()  # requests running with the file
        self._recorded: dict[str, set[str]] = {}  # each recorded upload's real path -> Gradio's spellings
        self._lock = threading.Lock()
        if not any(files is getattr(blocks, "upload_file_set", None) for files in blocks.temp_file_sets):
            raise RuntimeError("this Gradio version keeps no Blocks.upload_file_set: uploads cannot be tracked")
        self._record = _UploadRecord(blocks.upload_file_set, self._uploaded, self._forgotten)
        for path in self._record:
            self._recorded.setdefault(os.path.realpath(path), set()).add(path)
        blocks.temp_file_sets[:] = [self._record if files is blocks.upload_file_set else files
                                    for files in blocks.temp_file_sets]
        blocks.upload_file_set = self._record

    def _uploaded(self, paths: list[str]) -> None:
        with self._lock:
            for path in paths:
                real = os.path.realpath(path)
                self._waiting[real] += 1
                self._recorded.setdefault(real, set()).add(path)

    def _forgotten(self, paths: list[str]) -> None:
        """Gradio's cache cleaner deleted these never-classified uploads: drop their counts too."""
        with self._lock:
            for path in paths:
                real = os.path.realpath(path)
                spellings = self._recorded.get(real, set())
                spellings.discard(path)
                if not spellings:
                    self._recorded.pop(real, None)
                    if self._using[real] <= 0:
                        self._using.pop(real, None)
                        self._waiting.pop(real, None)

    def uploads_among(self, paths: list[str]) -> list[str]:
        """The paths that Gradio's upload route wrote and no component keeps (examples)."""
        kept = {os.path.realpath(path) for block in list(self.blocks.blocks.values())
                for path in frozenset(getattr(block, "keep_in_cache", ()))}
        resolved = [os.path.realpath(path) for path in paths]
        with self._lock:
            return [path for path in resolved if path in self._recorded and path not in kept]

    @contextmanager
    def using(self, paths: list[str], take: bool = True) -> Iterator[None]:
        """Hold the request's files while it runs, then delete its uploads nobody else waits for.

        `take=False` (a preview) leaves the uploads to the request that will classify them.
        """
        if any(not Path(path).is_file() for path in paths):
            raise gr.Error(f"{UPLOAD_GONE}.", print_exception=False)
        uploads = self.uploads_among(paths)
        inodes = {path: os.stat(path).st_ino for path in uploads}
        with self._lock:
            if take:
                self._waiting.subtract(uploads)
            self._using.update(uploads)
        try:
            yield
        finally:
            with self._lock:
                self._using.subtract(uploads)
                for path, inode in inodes.items():
                    if self._using[path] <= 0 and self._waiting[path] <= 0:
                        self._using.pop(path, None)
                        self._waiting.pop(path, None)
                        _delete_if_same(path, inode)
                        for spelling in self._recorded.pop(path, ()):
                            self._record.discard(spelling)


def _delete_if_same(path: str, inode: int) -> None:
    """Delete `path` if it is still the file the request read, not a fresh identical upload.

    Moved aside first (atomic), then checked: an upload that lands on the path meanwhile is
    put back (its bytes are the same by construction), so it is never lost.
    """
    aside = f"{path}.{secrets.token_hex(8)}.deleting"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if os.stat(aside).st_ino == inode:
        os.unlink(aside)
    else:
        os.rename(aside, path)


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
