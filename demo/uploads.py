"""Upload lifecycle: an upload lives while its page is open; delete nothing else; never share an output file.

Gradio's upload route stores each file under a content hash (same bytes and name, same
path) and records it in `Blocks.upload_file_set`. Example files live in the same cache,
at the same kind of path (an upload of an example's bytes under its name lands on it),
so `keep_examples` holds them in the component's `keep_in_cache`, as Gradio does for
its own default values. A path is this app's to delete only when Gradio's upload route
wrote it and no component keeps it: an API client that names a cached example or an
output file gets it classified, never deleted.

An upload stays while a request uses it, while an upload of it waits for its request,
and while a session that used it holds it: from that session's first request on the file
until the session ends (Gradio's `unload`: the page's tab closed or reloaded, or a
gradio_client Client closed) or until the session has not used it for IDLE_S seconds.
So "Classify" can be pressed again on the same upload, and identical uploads from
different clients (one path) go only when no session holds them any more.

The app's hold alone decides: Gradio's cache cleaner (`delete_cache`) deletes a file of any
of its records (the upload route's, and each component's, which preprocessing adds the
upload to) once its ctime is older than its age, so the janitor renews the ctime of every
held file before each pass (a chmod to the same mode), and the cleaner only ever deletes
uploads no request has used. Holds are capped: a session holds at most
MAX_SESSION_FILES files and MAX_SESSION_BYTES, all sessions together MAX_HELD_BYTES; past
a cap the holds unused longest are released first. The janitor also sweeps what uploads
leave behind in Gradio's upload folder: empty folders, and the upload route's temporary
files of uploads that never finished.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
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

IDLE_S = 600.0
"""Seconds an upload stays after its session's last request on it, with the page still open."""
MAX_SESSION_FILES = 2000
"""Most files one session (a page, a gradio_client Client) holds: one whole scan at its own limit (MAX_MEMBERS)."""
MAX_SESSION_BYTES = 2**30
"""Most bytes one session holds."""
MAX_HELD_BYTES = 4 * 2**30
"""Most bytes all sessions hold together."""
LEFTOVER_AGE_S = 600.0
"""Age after which an empty folder or an unfinished upload's temporary file in the upload folder is removed."""
UPLOAD_LIFETIME = (f"Your upload is kept on the server while this page is open, for at most {IDLE_S / 60:.0f} "
                   "minutes after its last use, and deleted when you close the page. A page holds at most "
                   f"{MAX_SESSION_BYTES / 2**30:.0f} GB of uploads, the server {MAX_HELD_BYTES / 2**30:.0f} GB: "
                   "past that, the uploads unused longest are deleted first.")
UPLOAD_GONE = ("Cannot classify this file: it is no longer on the server (an upload is kept while its page is "
               f"open, and deleted when the page is closed, after {IDLE_S / 60:.0f} minutes unused, or when the "
               "server holds too many uploads). Upload the file again")


class _UploadRecord(set):
    """Gradio's record of uploaded paths, reporting uploads and the cache cleaner's removals.

    Gradio's upload route moves the file into place and records it without yielding to
    its event loop, so when a request runs every upload of its file so far has been
    counted. Iteration (what Gradio's cache cleaner walks, every `delete_cache` frequency)
    first lets idle holds lapse, then walks a snapshot without the paths still held or in
    use: the cleaner's age rule (ctime) never deletes an upload a page still holds.
    """

    def __init__(self, paths: Iterable[str], on_upload: Callable[[list[str]], None],
                 on_forget: Callable[[list[str]], None], keep: Callable[[], AbstractSet[str]]):
        super().__init__(paths)
        self._on_upload, self._on_forget, self._keep = on_upload, on_forget, keep

    def update(self, *groups: Iterable[str]) -> None:
        for group in groups:
            group = list(group)
            self._on_upload(group)
            super().update(group)

    def __isub__(self, paths: AbstractSet[str]) -> Self:
        self._on_forget(list(paths))
        super().__isub__(paths)
        return self

    def __iter__(self) -> Iterator[str]:
        keep = self._keep()
        return iter([path for path in list(set.__iter__(self)) if os.path.realpath(path) not in keep])


class UploadJanitor:
    """Deletes each upload once no request uses it, no upload of it waits, and no session holds it."""

    def __init__(self, blocks: gr.Blocks, idle_s: float = IDLE_S, clock: Callable[[], float] = time.monotonic):
        self.blocks = blocks
        self.idle_s = idle_s
        self.folder = Path(get_upload_folder())
        self._clock = clock
        self._waiting: Counter[str] = Counter()
        self._using: Counter[str] = Counter()
        self._held: dict[str, dict[str, tuple[float, int]]] = {}  # session -> {real path: (last use, inode)}
        self._sizes: dict[str, int] = {}  # each held upload's bytes, as its last request found it
        self._recorded: dict[str, set[str]] = {}
        self._inodes: dict[str, int] = {}  # each upload's inode as its last request read it
        self._lock = threading.RLock()
        if not any(files is getattr(blocks, "upload_file_set", None) for files in blocks.temp_file_sets):
            raise RuntimeError("this Gradio version keeps no Blocks.upload_file_set: uploads cannot be tracked")
        self._record = _UploadRecord(blocks.upload_file_set, self._uploaded, self._forgotten, self._kept)
        for path in set.__iter__(self._record):
            self._recorded.setdefault(os.path.realpath(path), set()).add(path)
        blocks.temp_file_sets[:] = [self._record if files is blocks.upload_file_set else files
                                    for files in blocks.temp_file_sets]
        blocks.upload_file_set = self._record
        blocks.unload(self.session_ended)  # also turns on the heartbeat that reports the session's end

    def _uploaded(self, paths: list[str]) -> None:
        with self._lock:
            for path in paths:
                real = os.path.realpath(path)
                self._waiting[real] += 1
                self._recorded.setdefault(real, set()).add(path)

    def _forgotten(self, paths: list[str]) -> None:
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

    def _kept(self) -> set[str]:
        """Let idle holds lapse (deleting what they alone kept), renew the ctime of what stays (Gradio's cleaner
        ages files by it), sweep leftovers; then the paths held or in use."""
        self._lapse()
        with self._lock:
            held = {path for paths in self._held.values() for path in paths}
            kept = held | {path for path, count in self._using.items() if count > 0}
        for path in kept:
            _renew_ctime(path)
        _sweep_leftovers(self.folder, LEFTOVER_AGE_S)
        return kept

    def uploads_among(self, paths: list[str]) -> list[str]:
        kept = {os.path.realpath(path) for block in list(self.blocks.blocks.values())
                for path in frozenset(getattr(block, "keep_in_cache", ()))}
        resolved = [os.path.realpath(path) for path in paths]
        with self._lock:
            return [path for path in resolved if path in self._recorded and path not in kept]

    @contextmanager
    def using(self, paths: list[str], request: gr.Request | None = None) -> Iterator[None]:
        """Hold the request's files while it runs, and for its session afterwards.

        A request takes (uncounts) one waiting upload of a path only where the file there is new to
        its session (an inode it has not read): the page's preview takes the upload and its later
        Classify clicks do not, while a gradio_client that uploads the same file again for each call
        takes each of its uploads. An upload only previewed goes when its page closes.
        """
        self._lapse()
        if any(not Path(path).is_file() for path in paths):
            raise gr.Error(f"{UPLOAD_GONE}.", print_exception=False)
        uploads = self.uploads_among(paths)
        session = getattr(request, "session_hash", None)
        found = {path: os.stat(path) for path in uploads}
        inodes = {path: info.st_ino for path, info in found.items()}
        with self._lock:
            self._inodes.update(inodes)
            self._sizes.update({path: info.st_size for path, info in found.items()})
            seen = self._held.get(session, {}) if session else {}
            for path in uploads:
                if self._waiting[path] > 0 and seen.get(path, (0.0, None))[1] != inodes[path]:
                    self._waiting[path] -= 1
            self._using.update(uploads)
            if session:
                now = self._clock()
                self._held.setdefault(session, {}).update({path: (now, inodes[path]) for path in uploads})
        try:
            yield
        finally:
            with self._lock:
                self._using.subtract(uploads)
                if session and session in self._held:  # idle time counts from the end of the last use
                    now = self._clock()
                    self._held[session].update({path: (now, inodes[path]) for path in uploads})
                    self._release_over_caps(session)
                self._delete_unused(uploads)

    def discard(self, paths: list[str]) -> None:
        """Delete uploads a request refuses before using them (no session holds them for it)."""
        uploads = self.uploads_among(paths)
        with self._lock:
            for path in uploads:
                if self._waiting[path] > 0:
                    self._waiting[path] -= 1
            self._delete_unused(uploads)

    def held_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.get(path, 0) for path in {p for held in self._held.values() for p in held})

    def _release_over_caps(self, session: str) -> None:
        """Release the holds unused longest (of this session, then of all) until every cap is met (with the lock)."""
        def over(holds: list[tuple[float, str, str]], files: int, size: int) -> list[tuple[float, str, str]]:
            holds.sort()
            count, total, released = len(holds), sum(self._sizes.get(path, 0) for _, _, path in holds), []
            for last, owner, path in holds:
                if count <= files and total <= size:
                    break
                if self._using[path] <= 0:
                    released.append((last, owner, path))
                    count -= 1
                    total -= self._sizes.get(path, 0)
            return released

        mine = [(last, session, path) for path, (last, _) in self._held[session].items()]
        released = over(mine, MAX_SESSION_FILES, MAX_SESSION_BYTES)
        for _, owner, path in released:
            del self._held[owner][path]
        everyone = {}
        for owner, held in self._held.items():
            for path, (last, _) in held.items():
                everyone[path] = max(everyone.get(path, (last, owner, path)), (last, owner, path))
        extra = over(list(everyone.values()), len(everyone), MAX_HELD_BYTES)
        for _, _, path in extra:
            for held in self._held.values():
                held.pop(path, None)
        self._delete_unused([path for _, _, path in released + extra])

    def session_ended(self, request: gr.Request) -> None:
        """Gradio's `unload` handler: the session's tab (or client) is gone; its uploads go unless shared."""
        with self._lock:
            self._delete_unused(list(self._held.pop(request.session_hash, {})))

    def _lapse(self) -> None:
        """Drop each session's holds unused for idle_s, and delete what only they kept."""
        cutoff = self._clock() - self.idle_s
        with self._lock:
            lapsed = []
            for session, held in list(self._held.items()):
                for path, (last, _) in list(held.items()):
                    if last < cutoff:
                        del held[path]
                        lapsed.append(path)
                if not held:
                    del self._held[session]
            self._delete_unused(lapsed)

    def _delete_unused(self, paths: Iterable[str]) -> None:
        """Delete each path no request uses, no upload waits for and no session holds (call with the lock)."""
        held = {path for paths_held in self._held.values() for path in paths_held}
        for path in set(paths):
            if self._using[path] <= 0 and self._waiting[path] <= 0 and path not in held:
                self._using.pop(path, None)
                self._waiting.pop(path, None)
                _delete_if_same(path, self._inodes.pop(path, None))
                self._sizes.pop(path, None)
                for spelling in self._recorded.pop(path, ()):
                    set.discard(self._record, spelling)


def _delete_if_same(path: str, inode: int | None) -> None:
    """Moved aside (atomic), then deleted only if it is the file the last request read (inode);
    an identical upload that landed on the path meanwhile is put back."""
    aside = f"{path}.{secrets.token_hex(8)}.deleting"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if inode is None or os.stat(aside).st_ino == inode:
        os.unlink(aside)
        try:
            os.rmdir(os.path.dirname(path))  # the upload route's folder for these bytes, when it is now empty
        except OSError:
            pass
    else:
        os.rename(aside, path)


def _renew_ctime(path: str) -> None:
    """Make a held file look new to Gradio's cache cleaner, which deletes by ctime: a chmod to the same mode."""
    try:
        os.chmod(path, stat.S_IMODE(os.stat(path).st_mode))
    except OSError:
        pass  # gone meanwhile: the next request says so


def _sweep_leftovers(folder: Path, age_s: float) -> None:
    """Remove, from Gradio's upload folder, empty folders and the upload route's temporary files (top-level
    `tmp*`, moved into place when an upload completes) older than `age_s`: uploads that never finished."""
    cutoff = time.time() - age_s
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                os.rmdir(entry.path)  # only when empty
            elif entry.is_file(follow_symlinks=False) and entry.name.startswith("tmp"):
                os.unlink(entry.path)
        except OSError:
            continue


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
