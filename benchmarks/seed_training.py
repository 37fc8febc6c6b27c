"""Seed-style training, the baseline of row 7: `python -m benchmarks.seed_training --data DIR`.

What the seed did: random augmentation (horizontal flips, small shifts; the
ImageDataGenerator recipe as Keras preprocessing layers) in front of the frozen ImageNet
ResNet50, global average pooling and a softmax Dense layer, fitted end to end, so every
training and validation image goes through ResNet50 again every epoch. Images are decoded
and resized once up front (the seed's ImageDataGenerator re-read them from disk every
epoch, which only made it slower).

Scored fairly against `python -m training`: it trains on the training slices of the
first fold of the same patient-grouped CV (`training.cv.grouped_folds` with the same
K, repeats and seed; a grouped 15% of them held back as the seed's validation set by
:func:`grouped_split`) and is scored on that fold's test slices, the very slices
`python -m training` reports as its first CV fold (metrics.json `cv_folds[0]`). Prints one
JSON line: timings and test metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict

import numpy as np

from training import data

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SPLITS = ("train", "val", "test")


def grouped_split(
    dataset: data.Dataset,
    groups: list[int],
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    tries: int = 200,
) -> list[str]:
    """A split name ("train", "val" or "test") per item, by whole groups, class by class.

    Each class's groups are dealt separately (so every split gets every class when the
    class has a group for it), greedily to the split furthest below its share of
    images; of `tries` seeded shuffles, the one closest to the fractions in both images
    and groups wins (so a test split is not one big scan).
    """
    targets = np.asarray(fractions, dtype=float)
    if targets.shape != (len(SPLITS),) or (targets < 0).any() or not np.isclose(targets.sum(), 1.0):
        raise ValueError(f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    split_of_group: dict[int, str] = {}
    for label, members in _groups_by_class(dataset, groups).items():
        ids = sorted(members)
        sizes = np.array([members[group] for group in ids])
        assignment = _best_assignment(sizes, targets, rng, tries)
        if len(set(assignment.tolist())) < np.count_nonzero(targets):
            print(f"warning: {label} has only {len(ids)} group(s): some split gets none of it", file=sys.stderr)
        split_of_group.update((group, SPLITS[split]) for group, split in zip(ids, assignment))
    return [split_of_group[group] for group in groups]


def _groups_by_class(dataset: data.Dataset, groups: list[int]) -> dict[str, dict[int, int]]:
    """Class -> {group: images}; a group whose duplicates carry two labels goes with its majority."""
    labels_of: dict[int, Counter] = defaultdict(Counter)
    for item, group in zip(dataset.items, groups):
        labels_of[group][item.label] += 1
    order = {label: rank for rank, label in enumerate(dataset.labels)}
    by_class: dict[str, dict[int, int]] = {label: {} for label in dataset.labels}
    for group, counts in labels_of.items():
        label = min(counts, key=lambda name: (-counts[name], order[name]))
        by_class[label][group] = sum(counts.values())
    return {label: members for label, members in by_class.items() if members}


def _best_assignment(sizes: np.ndarray, targets: np.ndarray, rng: np.random.Generator, tries: int) -> np.ndarray:
    best, best_cost = None, np.inf
    for _ in range(tries):
        assignment = _greedy_assignment(sizes, targets, rng.permutation(len(sizes)))
        cost = _misfit(np.bincount(assignment, weights=sizes, minlength=len(targets)), targets * sizes.sum())
        cost += _misfit(np.bincount(assignment, minlength=len(targets)), targets * len(sizes))
        if cost < best_cost:
            best, best_cost = assignment, cost
    return best


def _misfit(counts: np.ndarray, goal: np.ndarray) -> float:
    """Chi-square distance, so a miss of 5 images weighs more in test than in train."""
    wanted = goal > 0
    return float(np.sum((counts[wanted] - goal[wanted]) ** 2 / goal[wanted]))


def _greedy_assignment(sizes: np.ndarray, targets: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each group in turn to the split with the largest unfilled fraction of its target.

    An empty split has the largest possible (1), so with three groups or more every split
    with a non-zero fraction gets one.
    """
    goal = targets * sizes.sum()
    filled = np.zeros(len(targets))
    assignment = np.zeros(len(sizes), dtype=int)
    for group in order:
        unfilled = np.where(goal > 0, 1.0 - filled / np.where(goal > 0, goal, 1.0), -np.inf)
        split = int(np.argmax(unfilled))
        assignment[group] = split
        filled[split] += sizes[group]
    return assignment


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="as python -m training --seed: shuffles the CV folds")
    parser.add_argument("--folds", type=int, default=5, help="as python -m training --folds")
    parser.add_argument("--repeats", type=int, default=5, help="as python -m training --repeats")
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args(argv)

    import keras

    from lung_classifier.model import backbone
    from lung_classifier.model.network import CAFFE_BGR_MEAN
    from training import cv
    from training.evaluate import macro_f1

    keras.utils.set_random_seed(args.seed)
    dataset = data.scan_folder(args.data, progress=False)
    labels = list(dataset.labels)
    groups = data.group_items(dataset)
    y = np.array([labels.index(item.label) for item in dataset.items])
    fold = cv.grouped_folds(y, np.array(groups), args.folds, args.repeats, args.seed)[0]
    part = {"test": np.isin(np.arange(len(y)), fold.test)}
    training = data.Dataset([dataset.items[i] for i in fold.train])
    held_back = grouped_split(training, [groups[i] for i in fold.train], (0.85, 0.15, 0.0), seed=args.seed)
    for name in ("train", "val"):
        part[name] = np.isin(np.arange(len(y)), fold.train[[split == name for split in held_back]])
    size = args.input_size
    images = np.stack([keras.utils.img_to_array(keras.utils.load_img(item.path, target_size=(size, size)))
                       for item in dataset.items])
    prepared = time.perf_counter()

    resnet = backbone.load_resnet50(backbone.resolve_weights(), input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    augmented = keras.layers.RandomFlip("horizontal", seed=args.seed)(inputs)
    augmented = keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=args.seed)(augmented)
    bgr = keras.ops.flip(augmented, axis=-1) - keras.ops.convert_to_tensor(CAFFE_BGR_MEAN)
    pooled = keras.layers.GlobalAveragePooling2D()(resnet(bgr, training=False))
    outputs = keras.layers.Dense(len(labels), activation="softmax")(pooled)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    epoch_seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.began)
            print(f"epoch {epoch + 1}/{args.epochs}: {epoch_seconds[-1]:.1f} s, "
                  f"val_accuracy {logs.get('val_accuracy', float('nan')):.3f}", file=sys.stderr, flush=True)

    fit_started = time.perf_counter()
    model.fit(images[part["train"]], y[part["train"]], validation_data=(images[part["val"]], y[part["val"]]),
              epochs=args.epochs, batch_size=32, shuffle=True, verbose=0, callbacks=[Timer()])
    fitted = time.perf_counter()
    predicted = model.predict(images[part["test"]], batch_size=32, verbose=0).argmax(axis=1)
    truth = y[part["test"]]
    print(json.dumps({
        "epochs": args.epochs,
        "epoch_seconds": epoch_seconds,
        "prepare_seconds": prepared - started,
        "fit_seconds": fitted - fit_started,
        "test_seconds": time.perf_counter() - fitted,
        "n": {name: int(mask.sum()) for name, mask in part.items()},
        "evaluated_on": f"fold 1 of {args.folds} of repeat 1 (grouped CV, seed {args.seed})",
        "test_accuracy": float((predicted == truth).mean()),
        "test_macro_f1": float(macro_f1(truth, predicted, len(labels))),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
