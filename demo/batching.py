"""Server-side batching: concurrent single-image requests share one model call.

A batch costs far less per image on a CPU than one call per image. Unlike a web
framework's all-or-nothing batch, each request here is decoded in its own thread first,
so a bad upload fails only its own request, never the others in the batch.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from lung_classifier import Analysis, LungClassifier
from lung_classifier.decoding.images import ImageInput, Slice


class BatchingPredictor:
    """Runs whatever requests are waiting (up to `max_batch`) as one model call.

    No timer: a lone request starts at once, and requests that arrive while the model is
    busy form the next batch, so batches grow exactly as fast as the load does.
    """

    def __init__(self, classifier: LungClassifier, max_batch: int = 16):
        self.classifier = classifier
        self.max_batch = max_batch
        self._requests: queue.Queue[tuple[Slice, Future]] = queue.Queue()
        threading.Thread(target=self._serve, name="batching-predictor", daemon=True).start()

    def analyze(self, image: ImageInput) -> Analysis:
        """Decode here (errors stay with this caller), then wait for the shared model call."""
        future: Future = Future()
        self._requests.put((self.classifier.read(image), future))
        return future.result()

    def _serve(self) -> None:
        while True:
            batch = [self._requests.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._requests.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.classifier.analyze_batch([decoded for decoded, _ in batch])
            except Exception as exc:  # a model failure must reach every waiting caller, not kill the thread
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                future.set_result(result)
