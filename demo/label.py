"""A gr.Label that shows the model's decided label, which is not always its top confidence.

The package's decision rule puts Malignant recall first, so a slice can be labelled
Malignant while Normal has the highest probability. gr.Label always names the top
confidence; this one shows the label it is given, with the confidences beside it, in
the same value format (and the same page widget and API type) as gr.Label.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.components.label import LabelData


class DecisionLabel(gr.Label):
    def get_block_name(self) -> str:
        return "label"

    def postprocess(self, value: LabelData | Any) -> LabelData | dict | None:
        if isinstance(value, LabelData):
            return value
        return super().postprocess(value)
