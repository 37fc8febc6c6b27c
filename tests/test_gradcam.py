"""Grad-CAM of the shipped default model is faithful on real slices (a deletion test), and flows through conv5."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import need_shared_data
from training import faithfulness

SLICES = 60


@pytest.mark.slow
def test_deleting_the_heatmaps_top_region_hurts_more_than_random_regions(tmp_path_factory):
    from lung_classifier import LungClassifier
    from lung_classifier.decoding.images import load_rgb
    from training.data import scan_folder

    dataset = scan_folder(need_shared_data(), progress=False)
    items = dataset.items[:: max(1, len(dataset.items) // SLICES)][:SLICES]
    assert len(items) >= 50
    classifier = LungClassifier.from_pretrained()
    rgbs = [load_rgb(item.path) for item in items]
    explained = classifier.analyze_batch(rgbs, explain=True)
    before = np.array([r.probabilities[r.label] for r in explained])
    rng = np.random.default_rng(0)

    def drop(regions: list[np.ndarray]) -> np.ndarray:
        deleted = [np.where(region[..., None], 0, rgb).astype(np.uint8) for region, rgb in zip(regions, rgbs)]
        after = classifier.analyze_batch(deleted)
        return before - np.array([a.probabilities[r.label] for a, r in zip(after, explained)])

    bodies = [faithfulness.body_mask(rgb.astype(np.float32)) for rgb in rgbs]
    heatmap_drop = drop([faithfulness.top_region(r.heatmap, body) for r, body in zip(explained, bodies)])
    random_drop = np.mean([drop([faithfulness.random_region(body, rng) for body in bodies]) for _ in range(3)], axis=0)
    assert heatmap_drop.mean() > random_drop.mean(), (heatmap_drop.mean(), random_drop.mean())


def test_regions_are_inside_the_body_and_of_the_asked_size():
    image = np.zeros((100, 100, 3), np.float32)
    yy, xx = np.mgrid[:100, :100]
    ring = ((yy - 50) ** 2 + (xx - 50) ** 2 < 40**2) & ((yy - 50) ** 2 + (xx - 50) ** 2 > 15**2)
    image[ring] = 200.0  # tissue ring around a dark "lung"
    body = faithfulness.body_mask(image)
    assert body[50, 50]  # the dark inside is filled in: it is body, not background
    assert not body[2, 2]
    heatmap = np.where(xx > 50, 1.0, 0.0) + yy / 1000.0
    top = faithfulness.top_region(heatmap, body, 0.2)
    assert top.sum() == round(0.2 * body.sum()) and not (top & ~body).any()
    assert heatmap[top].min() >= heatmap[body & ~top].max()
    blob = faithfulness.random_region(body, np.random.default_rng(0), 0.2)
    assert blob.sum() == round(0.2 * body.sum()) and not (blob & ~body).any()


def test_grad_cam_at_conv4_depends_on_conv5(tiny_package):
    """The conv4 map's gradient flows through conv5: zeroing conv5's head weights changes the conv4 CAM."""
    import tensorflow as tf

    from conftest import synthetic_slice, tiny_backbone
    from lung_classifier.model.head import Head
    from lung_classifier.model.network import TAPS, LungModel, build_extractor
    from lung_classifier.model.preprocessing import prepare_batch

    head = Head.load(tiny_package / "head.npz")
    images = tf.constant(prepare_batch([np.asarray(synthetic_slice("Malignant", 7).convert("RGB"))], 64))
    extractor = build_extractor(tiny_backbone())
    _, full = LungModel(extractor, head, 64).cam_maps(images)
    conv5_columns = slice(8 + 16, 8 + 16 + 32)
    kernel = head.kernel.copy()
    kernel[conv5_columns] = 0.0
    outputs, without_conv5 = LungModel(extractor, Head(**{**head.__dict__, "kernel": kernel}), 64).cam_maps(images)
    assert int(outputs["label"][0]) == 2  # same decided class, so only the path through conv5 differs
    assert not np.allclose(full[TAPS[1]].numpy(), without_conv5[TAPS[1]].numpy())
