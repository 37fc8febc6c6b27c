"""LungClassifier: from_pretrained / predict / analyze / save_pretrained / push_to_hub.

Loading happens once (an ONNX Runtime session, or a SavedModel's concrete signatures), so every
later call runs the model without tracing or rebuilding anything.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from . import evidence, package
from .model import precision as precisions
from .package import onnx_build
from .decoding import windowing
from .decoding.images import ImageInput, Slice, read_slice
from .decoding.series import ScanSource
from .batch import Outcome, T, analyze_many
from .model.preprocessing import prepare_batch
from .package import hub
from .scan.analysis import ScanResult, analyze_scan
from .verdict import UNLIKE_FEATURES, Analysis, answer

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from .model.onnx_runtime import OnnxNetwork
    from .model.saved_model import SavedModelNetwork

DEFAULT_MODEL = Path(__file__).parent / "default_model"


@dataclass(frozen=True)
class Source:
    """Where a package lives locally, and where it came from."""

    directory: Path
    origin: str  # full description, for logs: may hold a filesystem path
    name: str  # short display name: never a server path
    root: Path  # where the package's symlinks may lead: the Hub cache links to its blob store
    ignore: frozenset[str] = frozenset()  # files that may sit unlisted in it (the Hub's own)


def resolve_source(source: str | Path | None, *, revision: str | None = None, token: bool | str | None = None,
                   cache_dir: str | Path | None = None, force_download: bool = False,
                   local_files_only: bool = False, saved_model: bool = False) -> Source:
    """Find a package: the embedded default, a local directory, or a Hub repo (fetched here)."""
    if source is None:
        return Source(DEFAULT_MODEL, f"the embedded default model ({DEFAULT_MODEL})", "embedded default model",
                      DEFAULT_MODEL)
    path = Path(source).expanduser()
    if path.exists():
        return Source(path, f"local package {path}", f"local package {path.resolve().name}", path)
    repo_id = hub.parse_repo_id(str(source))
    if repo_id is None or str(source).startswith((".", "/", "~")):
        raise package.PackageError(f"{source}: no such local package directory, and not a Hub repo id (owner/name)")
    where = f"{repo_id}@{revision}" if revision else repo_id
    snapshot = hub.download(repo_id, revision=revision, token=token, cache_dir=cache_dir,
                            force_download=force_download, local_files_only=local_files_only,
                            saved_model=saved_model)
    # snapshots/<commit>/ inside the repo's cache folder, whose blobs/ its files link to
    return Source(snapshot, f"Hugging Face Hub repo {where}", f"Hub repo {where}", snapshot.parent.parent,
                  hub.HUB_FILES)


class LungClassifier:
    """A loaded model package; thread-safe for concurrent predictions."""

    def __init__(self, directory: Path, config: dict[str, Any], origin: str, source_name: str | None = None,
                 explanations: Callable[[], Path] | None = None):
        """``explanations``: where an ONNX Runtime build finds the SavedModel that draws its Grad-CAM heatmaps
        (called, and the graph loaded, on the first explain=True only)."""
        self.directory = directory
        self.config = config
        self.origin = origin
        self.source_name = source_name or origin
        self.labels: tuple[str, ...] = tuple(config["labels"])
        self.input_size: int = config["input"]["size"]
        head = package.read_head(directory / package.HEAD, len(self.labels))
        self.ood_threshold: float = float(head.ood_threshold)
        """The head's threshold, which the graph's flag uses: messages quote this one."""
        self.dicom_window = windowing.dicom_window(config)
        if not isinstance(config.get("evidence"), dict) or not config["evidence"].get("sources"):
            raise package.PackageError(f"{origin} predates evidence per source (its config.json has no 'evidence' "
                                       "block): retrain it with python -m training")
        self.sources: list[evidence.SourceEvidence] = evidence.from_config(config["evidence"], self.labels)
        """What the package validated per training source: recognition, calibration, rule-out threshold."""
        rebuilt = config.get("rebuilt")
        self.precision: str = rebuilt.get("precision", "float32") if isinstance(rebuilt, dict) else "as shipped"
        """The backbone's number format: "int8", "float32" or "bfloat16" when built here, "as shipped" when trusted."""
        self.runtime: str = rebuilt.get("runtime", "tensorflow") if isinstance(rebuilt, dict) else "tensorflow"
        """What runs the backbone: "onnxruntime" or "tensorflow" (see lung_classifier.model.precision)."""
        self.network = self._network(head)
        self._explanations = explanations
        self._explainer = self.network if self.runtime == "tensorflow" else None
        self._explainer_lock = threading.Lock()
        self._explainer_loading: threading.Thread | None = None  # set once, under _starting
        self._starting = threading.Lock()

    def _network(self, head: Any) -> "OnnxNetwork | SavedModelNetwork":
        if self.runtime == "onnxruntime":
            from .model.onnx_runtime import OnnxNetwork

            int8 = self.directory / onnx_build.INT8_GRAPH if self.precision == "int8" else None
            return OnnxNetwork(head, self.directory / onnx_build.FLOAT32_GRAPH, int8)
        from .model.saved_model import SavedModelNetwork

        return SavedModelNetwork(self.directory / package.SAVED_MODEL)

    def load_explainer_in_background(self) -> None:
        """Start loading :meth:`explainer` in a background thread, once: a page that will ask for heatmaps calls
        this when it opens, so its first one waits for less (and an API client, who gets none, never waits)."""
        with self._starting:  # not _explainer_lock, which a load holds for seconds
            if self._explainer is None and self._explainer_loading is None:
                self._explainer_loading = threading.Thread(target=self.explainer, name="grad-cam-load", daemon=True)
                self._explainer_loading.start()

    def explainer(self) -> SavedModelNetwork:
        """The graph that draws Grad-CAM heatmaps: the SavedModel itself, or for an ONNX Runtime build the
        TensorFlow rebuild of the same package, loaded on first use (TensorFlow is imported then, not before)."""
        with self._explainer_lock:
            if self._explainer is None:
                from .model.saved_model import SavedModelNetwork

                if self._explanations is None:
                    raise package.PackageError(f"{self.origin}: this ONNX Runtime build has no graph for Grad-CAM")
                self._explainer = SavedModelNetwork(self._explanations() / package.SAVED_MODEL)
            return self._explainer

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, revision: str | None = None,
                        weights: str | None = None, token: bool | str | None = None,
                        cache_dir: str | Path | None = None, force_download: bool = False,
                        local_files_only: bool = False, trust_saved_model: bool = False,
                        allow_other_weights: bool = False, precision: str = "auto",
                        runtime: str = "auto") -> "LungClassifier":
        """Load a package: None (embedded default), a local directory, or a Hub repo id.

        Only the package's config and head arrays are trusted: the graph is rebuilt from
        the head and the standard ImageNet ResNet50 (``weights`` names its file; see
        lung_classifier.model.backbone), once per machine. ``trust_saved_model=True`` loads the
        package's own SavedModel instead: an arbitrary TensorFlow graph, which can read and
        write files, so only for packages you trust. Weights other than those the head was
        trained on are an error unless ``allow_other_weights=True`` (then a warning).
        ``revision``, ``token``, ``cache_dir``, ``force_download`` and ``local_files_only``
        are huggingface_hub's, for Hub repos. ``runtime`` runs the backbone: "onnxruntime"
        (no TensorFlow until a Grad-CAM heatmap is asked for), "tensorflow", or "auto" (ONNX
        Runtime where installed). ``precision`` is its number format: "auto" (int8 on ONNX
        Runtime where the CPU has VNNI, bfloat16 on TensorFlow where it has AVX-512 BF16 or AMX,
        else float32), "int8", "float32" or "bfloat16"; the head always computes in float32
        and answers near a boundary are recomputed in float32 (lung_classifier.model.precision).
        """
        found = resolve_source(source, revision=revision, token=token, cache_dir=cache_dir,
                               force_download=force_download, local_files_only=local_files_only,
                               saved_model=trust_saved_model)
        config = package.read_config(found.directory, saved_model=trust_saved_model, root=found.root,
                                     ignore=found.ignore)
        engine, chosen = precisions.resolve(precision, runtime)
        if trust_saved_model and package.has_saved_model(config):
            if runtime == "onnxruntime":
                raise ValueError("runtime='onnxruntime' runs the graph built here from the head; a trusted "
                                 "SavedModel runs on TensorFlow as shipped (drop one of the two)")
            engine = "tensorflow"
        if engine == "tensorflow":
            full, full_config = package.full_package(found.directory, config, weights,
                                                     trust_saved_model=trust_saved_model,
                                                     allow_other_weights=allow_other_weights, precision=precision)
            return cls(full, full_config, found.origin, found.name)
        if chosen == "int8" and precision == "auto" and not onnx_build.has_calibration(config):
            chosen = "float32"  # a package trained before int8 ranges were measured
        full, full_config = onnx_build.onnx_package(found.directory, config, weights,
                                                    allow_other_weights=allow_other_weights, precision=chosen)

        def explanations() -> Path:
            return package.full_package(found.directory, config, weights,
                                        allow_other_weights=allow_other_weights)[0]

        return cls(full, full_config, found.origin, found.name, explanations)

    def read(self, image: ImageInput) -> Slice:
        """Decode an input as this package expects (DICOM at its window); analyze() takes the result too."""
        return read_slice(image, dicom_window=self.dicom_window)

    def predict(self, image: ImageInput | Slice) -> dict[str, Any]:
        """Analysis.as_dict() for one slice: a flagged slice has label None, its verdict the notice."""
        return self.analyze(image).as_dict()

    def predict_batch(self, images: Sequence[ImageInput | Slice]) -> list[dict[str, Any]]:
        """Like predict, for many images run as one batch."""
        return [result.as_dict() for result in self.analyze_batch(images)]

    def analyze(self, image: ImageInput | Slice, explain: bool = False) -> Analysis:
        """Prediction, OOD score and flag, and with explain=True the Grad-CAM heatmap."""
        return self.analyze_batch([image], explain=explain)[0]

    def analyze_batch(self, images: Sequence[ImageInput | Slice], explain: bool = False) -> list[Analysis]:
        """One model call for many slices; each recognised by its rendering (lung_classifier.evidence) and answered
        by lung_classifier.verdict.answer; a slice given no diagnosis carries the reason in ``ood_reason``."""
        decoded = [image if isinstance(image, Slice) else self.read(image) for image in images]
        if not decoded:
            return []
        pixels = prepare_batch([item.rgb for item in decoded], self.input_size)
        outputs = self.network.predict(pixels)
        if explain:
            outputs["heatmap"] = self.explainer().explain(pixels)["heatmap"]
        recognitions = [evidence.recognise(self.sources, evidence.rendering_statistics(item.rgb), item.dicom)
                        for item in decoded]

        def answered(index: int) -> tuple[np.ndarray, str, bool, str | None]:
            return answer(outputs["probabilities"][index], self.labels, decoded[index], recognitions[index],
                          self.sources, bool(outputs["out_of_distribution"][index]))

        answers = [answered(index) for index in range(len(decoded))]
        unsure = [index for index, (shown, _, _, reason) in enumerate(answers)
                  if self._could_move(shown, reason, float(outputs["ood_score"][index]), recognitions[index].source)]
        if unsure and self.network.rechecks:  # recomputed in float32
            for name, values in self.network.exact(pixels[unsure]).items():
                outputs[name][unsure] = values
            for index in unsure:
                answers[index] = answered(index)
        results = []
        for index, item in enumerate(decoded):
            score = float(outputs["ood_score"][index])
            recognition = recognitions[index]
            shown, label, ruled_out, reason = answers[index]
            results.append(Analysis(
                label=label,
                probabilities={name: float(p) for name, p in zip(self.labels, shown)},
                ood_score=score,
                out_of_distribution=reason is not None,
                ood_reason=reason,
                heatmap=_upsample(outputs["heatmap"][index], item.rgb.shape[:2]) if explain else None,
                ood_threshold=self.ood_threshold,
                malignancy_ruled_out=ruled_out,
                source=recognition.source.title if recognition.source is not None else None,
                rule_out_threshold=recognition.source.rule_out if reason is None and recognition.source else None,
            ))
        return results

    def _could_move(self, shown: np.ndarray, reason: str | None, ood_score: float,
                    source: evidence.SourceEvidence | None) -> bool:
        """An answer reduced precision could have moved (lung_classifier.model.precision.RECHECK): one answered, or
        withheld by the feature guard alone, whose OOD score is near the guard's threshold; or one answered whose
        P(Malignant) is near its source's rule-out threshold or whose two most probable classes are near each other.
        Answers withheld for another reason (its rendering, its source) stand whatever the backbone computed."""
        if source is None or self.precision not in precisions.RECHECK or reason not in (None, UNLIKE_FEATURES):
            return False
        recheck = precisions.RECHECK[self.precision]
        if abs(ood_score - self.ood_threshold) < recheck.ood_band * self.ood_threshold:
            return True
        if reason is not None:
            return False
        top2 = np.sort(shown)[-2:]
        malignant = float(shown[self.labels.index("Malignant")])
        return abs(malignant - source.rule_out) < recheck.rule_out_band or float(top2[1] - top2[0]) < recheck.gap_band

    def analyze_many(self, items: Sequence[T], *, read: Callable[[T], ImageInput] | None = None,
                     batch_size: int = 16, max_pixels: int | None = None,
                     progress: Callable[[int, int], None] | None = None) -> Iterator[Outcome[T]]:
        """Each item's Outcome (analysis, or the reason it has none), in order, ``batch_size`` at a time.

        A file that cannot be decoded fails its own Outcome only; see lung_classifier.batch.
        """
        return analyze_many(self, items, read=read, batch_size=batch_size, max_pixels=max_pixels,
                            progress=progress)

    def analyze_scan(self, source: ScanSource, *, top_k: int = 3, explain: bool = False, batch_size: int = 16,
                     progress: Callable[[int, int], None] | None = None) -> ScanResult:
        """A whole scan: a folder, a zip file, or a list of files (DICOM slices of one series, or images).

        Slices come back in body order with their analyses, plus the scan verdict by the
        package's whole-scan rule and the ``top_k`` slices that drove it (their Grad-CAM
        heatmaps with ``explain=True``). Slices are decoded and analysed ``batch_size`` at a
        time, calling ``progress(done, total)`` once the upload is checked (done 0) and after
        each batch. Uploads that cannot be one scan raise series.ScanError (an ImageError);
        see lung_classifier.decoding.series for the checks and lung_classifier.scan.analysis for what is
        skipped with a note. A package without a whole-scan rule raises PackageError.
        """
        return analyze_scan(self, source, top_k=top_k, explain=explain, batch_size=batch_size, progress=progress)

    def full_package(self) -> Path:
        """This package with its SavedModel, the format's canonical graph (TensorFlow Serving serves it): the
        loaded directory, or for an ONNX Runtime build the TensorFlow rebuild of the same package (built now if
        needed). The ONNX graphs are per-machine builds, never shipped."""
        if self.runtime == "tensorflow":
            return self.directory
        if self._explanations is None:
            raise package.PackageError(f"{self.origin}: this ONNX Runtime build knows no package to save")
        return self._explanations()

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write this full package (:meth:`full_package`) to a directory, verified after copying."""
        package.copy_package(self.full_package(), Path(directory))
        return Path(directory)

    def push_to_hub(self, repo_id: str, *, commit_message: str = "Upload lung CT classifier package",
                    private: bool | None = None, token: str | None = None, branch: str | None = None,
                    create_pr: bool = False) -> CommitInfo:
        """Upload the full package (model card as the repo's README), with ModelHubMixin.push_to_hub's options.

        ``branch`` (created from main if new) receives the commit instead of main; ``create_pr``
        opens a pull request against main. Returns huggingface_hub's CommitInfo, as the mixin does:
        ``.oid`` is the commit sha, ``.pr_url``/``.pr_num`` the pull request's.
        """
        return hub.upload(self.full_package(), repo_id, token=token, private=private, commit_message=commit_message,
                          branch=branch, create_pr=create_pr)


def _upsample(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    resized = Image.fromarray(heatmap.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)
