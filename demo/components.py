"""The page's API-facing components: a label that shows the decision, and file inputs whose API panel
shows a real slice (a placeholder for a scan) and that take one file where a list is expected.

None defines its own __init__: Gradio builds a component's page props and API info from the
__init__ signature, so a `label` swallowed by **kwargs would vanish from both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components.label import LabelData
from gradio.data_classes import ListFiles


class DecisionLabel(gr.Label):
    """A gr.Label that shows the model's decided label, which is not always its top confidence.

    The package's decision rule puts Malignant recall first, so a slice can be labelled
    Malignant while Normal has the highest probability. gr.Label always names the top
    confidence; this one shows the label it is given, with the confidences beside it (none for
    a refused input), in the same value format, page widget and API type as gr.Label.
    """

    def get_block_name(self) -> str:
        return "label"

    def postprocess(self, value: LabelData | Any) -> LabelData | dict | None:
        if isinstance(value, LabelData):
            return value
        return super().postprocess(value)


class SliceFile(gr.File):
    """gr.File whose "Use via API" example is a real slice of the repository, not Gradio's sample_file.pdf.

    The panel prints ``handle_file('<url>')`` verbatim, not prefixed with the server's address,
    so a path relative to the repository is what a reader with a clone can run.
    """

    api_example = "examples/normal-case-320.jpg"

    def get_block_name(self) -> str:  # the page uses the stock File widget
        return "file"

    def example_payload(self) -> Any:
        one = {"path": self.api_example, "url": self.api_example, "orig_name": Path(self.api_example).name,
               "meta": {"_type": "gradio.FileData"}}
        return one if self.file_count == "single" else [one]

    def example_value(self) -> Any:
        return self.api_example if self.file_count == "single" else [self.api_example]


class _OneOrMany(ListFiles):
    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> ListFiles:
        return super().model_validate([obj] if isinstance(obj, dict) else obj, *args, **kwargs)


class SliceFiles(SliceFile):
    """A several-files input that also takes one file: gradio_client sends a lone handle_file() as one
    FileData, which Gradio's list validation would refuse with a raw error before the handler runs."""

    @property
    def data_model(self) -> type:  # read by Blocks.preprocess_data
        return _OneOrMany

    @data_model.setter
    def data_model(self, _: type) -> None:  # gr.File.__init__ assigns ListFiles
        pass


class ScanFiles(SliceFiles):
    """The scan input: its "Use via API" example is a named placeholder for the caller's own zip. No scan ships
    with the repository, and one example JPEG sent as a "scan" would show a call nobody makes."""

    api_example = "path/to/your-scan.zip"
