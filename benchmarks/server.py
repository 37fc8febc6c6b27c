"""Rows 5 and 5c: the real app.py on loopback under concurrent gradio_client load, and its CPU
cost per request (row 6, its cold start, is benchmarks.cold_start's).

Each server is `python app.py --port P [--no-batching]` in its own process; the clients
are threads of this (the benchmark's) process, a separate process from the server, each
with its own gradio_client.Client (as separate users would be), uploading a real slice
per request to /predict. Both share the machine's cores with the server, as a load
generator on the same host always does; CPU time is counted per process, so the
server's CPU per request excludes the clients'. Row 5c also measures Gradio's own floor:
benchmarks.gradio_floor, the same /predict signature and queue with no model, under the
same load.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from testkit.app_server import AppServer, app_command, app_env, free_port, spawn

from .common import (
    Row,
    Stats,
    ms,
    per_s,
    verdict_at_least,
    verdict_at_most,
    x,
)
from .readings import cpu_seconds, rss_bytes

CLIENT_COUNTS = (1, 4, 16)
CPU_BATCH = 16  # the in-process baseline of row 5c: predict_batch of this many paths
CPU_TARGET = 1.3  # row 5c: server CPU per request <= this x the in-process CPU per image
CHUNKS = 5  # throughput is also measured over consecutive fifths (in time) of a run, for its spread
START_TIMEOUT_S = 180.0


@dataclass
class LoadResult:
    batching: bool
    clients: int
    requests: int
    failed: int  # warm-up and timed requests together
    timed_failed: int
    errors: list[str]
    wall_s: float
    latencies: Stats
    chunk_rates: Stats
    rss_marks: dict[int, int]  # request number -> server VmRSS bytes
    server_cpu_s: float  # CPU seconds the server process used during the timed requests
    client_cpu_s: float  # CPU seconds this process (the clients) used meanwhile
    cpu_per_request: Stats  # server CPU seconds per request in consecutive runs of requests (>= 2 x CPU_BATCH)

    @property
    def throughput(self) -> float:
        return (self.requests - self.timed_failed) / self.wall_s

    def growth(self) -> float | None:
        marks = sorted(self.rss_marks)
        if len(marks) < 2:
            return None
        return self.rss_marks[marks[-1]] / self.rss_marks[marks[0]] - 1


@dataclass
class ServerResults:
    rows: list[Row]
    details: list[str] = field(default_factory=list)


class Server:
    """app.py (the embedded default model) in a subprocess; start() returns the seconds to its first answered
    /predict."""

    def __init__(self, batching: bool, log_dir: Path, flags: tuple[str, ...] = ()):
        self.batching = batching
        self.flags = flags  # app.py's model flags (--precision, --runtime...)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_dir / f"app-{'batching' if batching else 'no-batching'}-{self.port}.log"
        self.app: AppServer | None = None

    def start(self, image: Path) -> float:
        from gradio_client import Client, handle_file

        started = time.perf_counter()
        self.app = spawn(self.command(), self.port, self.log_path, app_env())
        client = None
        while True:
            if self.app.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.app.process.returncode}:\n{self.app.log_tail()}")
            if time.perf_counter() - started > START_TIMEOUT_S:
                self.stop()
                raise RuntimeError(f"app.py did not answer within {START_TIMEOUT_S:.0f} s:\n{self.app.log_tail()}")
            try:
                client = client or Client(self.url, verbose=False, analytics_enabled=False, download_files=False)
                client.predict(handle_file(str(image)), api_name="/predict")
                return time.perf_counter() - started
            except Exception:  # not listening yet, or still starting up
                time.sleep(0.1)

    def command(self) -> list[str]:
        return app_command(self.port, *([] if self.batching else ["--no-batching"]), *self.flags)

    @property
    def process(self) -> subprocess.Popen:
        assert self.app is not None
        return self.app.process

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop()


class FloorServer(Server):
    """benchmarks.gradio_floor: app.py's /predict signature and queue, no model work (row 5c's floor)."""

    def __init__(self, log_dir: Path):
        super().__init__(False, log_dir)
        self.log_path = log_dir / f"gradio-floor-{self.port}.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benchmarks.gradio_floor", "--port", str(self.port),
                "--concurrency", str(CPU_BATCH)]


def load_test(server: Server, clients: int, requests: int, paths: list[Path], marks: tuple[int, ...]) -> LoadResult:
    """`clients` threads with a Client each share `requests` timed requests after one warm-up each."""
    from gradio_client import Client, handle_file

    pool = [Client(server.url, verbose=False, analytics_enabled=False, download_files=False) for _ in range(clients)]
    lock = threading.Lock()
    state = {"issued": 0, "done": 0}
    latencies: list[float] = []
    completions: list[float] = []
    errors: list[str] = []
    rss: dict[int, int] = {}
    cpu_marks = [(0, 0.0)]  # (requests done, server CPU seconds since the timed requests began)
    cpu_every = max(2 * CPU_BATCH, requests // CHUNKS)  # each window spans several batched model calls

    def call(client, index: int) -> None:
        result = client.predict(handle_file(str(paths[index % len(paths)])), api_name="/predict")
        if not isinstance(result, dict) or "label" not in result:
            raise RuntimeError(f"unexpected answer {result!r:.200}")

    def warm(client, index: int) -> None:
        try:
            call(client, index)
        except Exception as exc:
            with lock:
                errors.append(f"warm-up: {type(exc).__name__}: {exc}")

    def work(client) -> None:
        while True:
            with lock:
                if state["issued"] >= requests:
                    return
                index = state["issued"]
                state["issued"] += 1
            start = time.perf_counter()
            try:
                call(client, index)
                failure = None
            except Exception as exc:  # every failure counts; none may be hidden
                failure = f"{type(exc).__name__}: {exc}"
            end = time.perf_counter()
            with lock:
                if failure:
                    errors.append(failure)
                latencies.append(end - start)
                completions.append(end)
                state["done"] += 1
                if state["done"] in marks:
                    rss[state["done"]] = rss_bytes(server.pid)
                if state["done"] % cpu_every == 0 or state["done"] == requests:
                    cpu_marks.append((state["done"], cpu_seconds(server.pid) - server_cpu))

    warmers = [threading.Thread(target=warm, args=(c, 7919 * i)) for i, c in enumerate(pool)]
    for thread in warmers:
        thread.start()
    for thread in warmers:
        thread.join()
    warm_errors = len(errors)
    threads = [threading.Thread(target=work, args=(c,)) for c in pool]
    server_cpu, client_cpu = cpu_seconds(server.pid), _own_cpu_seconds()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, _own_cpu_seconds() - client_cpu
    if len(cpu_marks) > 2 and cpu_marks[-1][0] - cpu_marks[-2][0] < cpu_every // 2:
        del cpu_marks[-2]  # a short last window joins the one before
    per_request = [(cpu - before) / (done - earlier)
                   for (earlier, before), (done, cpu) in itertools.pairwise(cpu_marks) if done > earlier]
    for client in pool:
        try:
            client.close()
        except Exception:
            pass
    # Spread: throughput in CHUNKS equal time windows (batched answers arrive in bursts, so
    # windows by request count would divide by near-zero durations).
    window = wall / CHUNKS
    counts = np.bincount(np.minimum(((np.array(completions) - started) / window).astype(int), CHUNKS - 1),
                         minlength=CHUNKS)
    rates = [count / window for count in counts]
    return LoadResult(batching=server.batching, clients=clients, requests=requests,
                      failed=len(errors), timed_failed=len(errors) - warm_errors, errors=errors, wall_s=wall,
                      latencies=Stats.of(latencies), chunk_rates=Stats.of(rates), rss_marks=rss,
                      server_cpu_s=server_cpu, client_cpu_s=client_cpu,
                      cpu_per_request=Stats.of(per_request or [server_cpu / requests]))


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def in_process_cpu(paths: list[Path], repeats: int) -> Stats:
    """Row 5c's baseline: this process's CPU seconds (all threads) per image of predict_batch(CPU_BATCH paths).

    Measured here, before any server starts, with the package loaded as the server loads it;
    like the server's, it includes decoding the files.
    """
    from lung_classifier import LungClassifier

    classifier = LungClassifier.from_pretrained()
    groups = [[paths[(k * CPU_BATCH + j) % len(paths)] for j in range(CPU_BATCH)] for k in range(repeats + 1)]
    classifier.predict_batch(groups[-1])  # warm-up
    samples = []
    for group in groups[:repeats]:
        before = _own_cpu_seconds()
        classifier.predict_batch(group)
        samples.append((_own_cpu_seconds() - before) / CPU_BATCH)
    return Stats.of(samples)


def marks_for(requests: int) -> tuple[int, int]:
    """When to read the server's RSS: the 100th and 500th request, or a quarter and the end of shorter runs."""
    return (100, 500) if requests >= 500 else (max(1, min(100, requests // 4)), requests)


def run(paths: list[Path], requests: dict[int, int], batch_rate: float, one_rate: float,
        log, cpu_repeats: int = 3) -> ServerResults:
    """The in-process CPU baseline, then both servers under each client count in `requests` (its value:
    timed requests)."""
    log(f"in-process CPU of predict_batch({CPU_BATCH}) x{cpu_repeats}")
    baseline_cpu = in_process_cpu(paths, cpu_repeats)
    results: dict[tuple[bool, int], LoadResult] = {}
    idle_rss: dict[bool, int] = {}
    log_dir = Path(tempfile.mkdtemp(prefix="lung-bench-server-"))
    for batching in (True, False):
        server = Server(batching, log_dir)
        log(f"starting app.py{'' if batching else ' --no-batching'} on port {server.port}")
        try:
            started = server.start(paths[0])
            idle_rss[batching] = rss_bytes(server.pid)
            log(f"  first /predict answered {started:.1f} s after process start")
            for clients in sorted(requests):
                log(f"  {clients} client(s), {requests[clients]} requests")
                result = load_test(server, clients, requests[clients], paths, marks_for(requests[clients]))
                results[(batching, clients)] = result
                log(f"    {result.throughput:.2f} req/s, p50 {ms(result.latencies.median)}, "
                    f"p95 {ms(result.latencies.quantile(0.95))}, failed {result.failed}")
                if result.errors:
                    log(f"    first error: {result.errors[0]}")
        finally:
            server.stop()
    most = max(requests)
    floor_server = FloorServer(log_dir)
    log(f"Gradio floor (benchmarks.gradio_floor, no model) on port {floor_server.port}, {most} clients")
    try:
        floor_server.start(paths[0])
        floor = load_test(floor_server, most, requests[most], paths, marks_for(requests[most]))
        log(f"    server CPU {ms(floor.server_cpu_s / floor.requests)}/request, failed {floor.failed}")
    finally:
        floor_server.stop()
    rows = _rows(results, sorted(requests), batch_rate, one_rate, baseline_cpu, floor)
    return ServerResults(rows=rows, details=_details(results, idle_rss))


def _cpu_row(result: LoadResult, baseline: Stats, floor: LoadResult) -> Row:
    """Row 5c: what Gradio, uploads and batching add to the model's own CPU cost, beside Gradio's own floor."""
    per_request = result.server_cpu_s / result.requests
    ratio = per_request / baseline.median
    floor_cpu = floor.server_cpu_s / floor.requests
    return Row(
        f"5c. Server CPU per /predict request, {result.clients} clients",
        ms(per_request), result.cpu_per_request.spread(ms),
        f"in-process predict_batch({CPU_BATCH}) CPU {ms(baseline.median)}/image ({baseline.spread(ms)})",
        x(ratio), f"≤{CPU_TARGET:g}x in-process CPU per image at batch {CPU_BATCH}",
        verdict_at_most(ratio, CPU_TARGET, " in-process CPU"),
        f"server process user+system CPU (/proc/PID/stat, all threads) over {result.requests} timed requests ÷ "
        f"requests (spread: consecutive runs of at least {2 * CPU_BATCH} requests), batching on; clients in the benchmark's own "
        f"process (their CPU: {ms(result.client_cpu_s / result.requests)}/request); both include decoding. "
        f"Above the in-process cost: {ms(per_request - baseline.median)}/request; the same /predict signature and "
        f"queue with no model (benchmarks.gradio_floor, {floor.clients} clients, {floor.requests} requests, "
        f"{floor.failed} failed) costs {ms(floor_cpu)} of server CPU per request, so the target leaves "
        f"{ms(CPU_TARGET * baseline.median - baseline.median)} for Gradio against its floor of {ms(floor_cpu)}",
    )


def _cpu_ceiling(result: LoadResult) -> str:
    """The most requests/s this machine's cores allow when clients and server share them."""
    cores = len(os.sched_getaffinity(0))
    per_request = (result.server_cpu_s + result.client_cpu_s) / result.requests
    return (f"clients and server share the {cores} cores: {ms(result.server_cpu_s / result.requests)} server + "
            f"{ms(result.client_cpu_s / result.requests)} client CPU per request caps this machine at "
            f"{per_s(cores / per_request)}")


def _rows(results, counts: list[int], batch_rate: float, one_rate: float, baseline_cpu: Stats,
          floor: LoadResult) -> list[Row]:
    rows = []
    for batching in (True, False):
        for clients in counts:
            result = results[(batching, clients)]
            name = f"5. Server /predict, {clients} client{'s' if clients > 1 else ''}, batching {'on' if batching else 'off'}"
            latency = (f"p50 {ms(result.latencies.median)}, p95 {ms(result.latencies.quantile(0.95))}; "
                       f"{result.requests} requests, {result.failed} failed")
            failures_ok = result.failed == 0
            if batching and clients == max(CLIENT_COUNTS):  # the row with a throughput target
                ratio = result.throughput / batch_rate
                verdict = verdict_at_least(ratio, 0.8, " of the batch-32 rate")
                if not failures_ok:
                    verdict = f"**no**: {result.failed} failed; " + verdict
                rows.append(Row(name, f"{per_s(result.throughput)}", result.chunk_rates.spread(per_s),
                                f"predict_batch(32) in-process {per_s(batch_rate)}", x(ratio),
                                "≥0.8x batch-32 rate, 0 failed", verdict, f"{latency}; {_cpu_ceiling(result)}"))
                rows.append(_cpu_row(result, baseline_cpu, floor))
                continue
            if batching:
                off = results[(False, clients)].throughput
                baseline, ratio = f"batching off, {clients} client(s): {per_s(off)}", x(result.throughput / off)
            else:
                baseline = f"in-process predict(one image) {per_s(one_rate)}"
                ratio = x(result.throughput / one_rate)
            rows.append(Row(name, f"{per_s(result.throughput)}", result.chunk_rates.spread(per_s), baseline, ratio,
                            "0 failed requests", "yes" if failures_ok else f"**no**: {result.failed} failed",
                            latency))
    growths = {key: r.growth() for key, r in results.items() if r.growth() is not None}
    if growths:
        worst_key = max(growths, key=growths.get)
        worst = results[worst_key]
        first, last = sorted(worst.rss_marks)[0], sorted(worst.rss_marks)[-1]
        growth = growths[worst_key]
        rows.append(Row(
            f"5m. Server memory (VmRSS), request {first} → {last}",
            f"{growth:+.1%} worst of {len(growths)} runs",
            ", ".join(f"{'on' if b else 'off'}/{c}: {g:+.1%}" for (b, c), g in sorted(growths.items())),
            f"RSS at request {first}: {worst.rss_marks[first] / 2**20:.0f} MiB",
            x(worst.rss_marks[last] / worst.rss_marks[first]),
            "growth < 5%",
            "yes" if growth < 0.05 else f"**no**: {growth:+.1%} vs <5% ({(growth - 0.05) * 100:.1f} points over)",
            f"worst: batching {'on' if worst_key[0] else 'off'}, {worst_key[1]} clients "
            f"({worst.rss_marks[first] / 2**20:.0f} → {worst.rss_marks[last] / 2**20:.0f} MiB)",
        ))
    return rows


def _details(results, idle_rss) -> list[str]:
    lines = [
        f"Each run: its timed requests follow one untimed warm-up request per client; throughput = "
        f"successful requests / wall time (spread: answers per second in {CHUNKS} equal time windows of the run); "
        f"RSS = server VmRSS (/proc/PID/status) when the numbered timed request completed; RSS idle = "
        "after the first answered request, before any load. Clients and server share the machine's CPUs; "
        "CPU/request = CPU seconds (user + system, all threads) during the timed requests ÷ requests, for the "
        "server process and for the client threads (this process).",
        "",
        "| Batching | Clients | Requests | Failed | Throughput | p50 | p95 | max | RSS idle | RSS @ first mark | "
        "RSS @ last mark | Growth | Server CPU/request | Client CPU/request |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (batching, clients), r in results.items():
        marks_sorted = sorted(r.rss_marks)
        rss = [f"{r.rss_marks[m] / 2**20:.0f} MiB (#{m})" for m in marks_sorted]
        while len(rss) < 2:
            rss.append("—")
        growth = r.growth()
        lines.append(
            f"| {'on' if batching else 'off'} | {clients} | {r.requests} | {r.failed} | {per_s(r.throughput)} | "
            f"{ms(r.latencies.median)} | {ms(r.latencies.quantile(0.95))} | {ms(r.latencies.high)} | "
            f"{idle_rss.get(batching, 0) / 2**20:.0f} MiB | {rss[0]} | {rss[-1]} | "
            f"{'—' if growth is None else f'{growth:+.1%}'} | {ms(r.server_cpu_s / r.requests)} | "
            f"{ms(r.client_cpu_s / r.requests)} |")
    errors = [e for r in results.values() for e in r.errors]
    if errors:
        lines += ["", f"Errors ({len(errors)}), first: `{errors[0][:300]}`"]
    return lines
