"""The parts of the Gradio page that are not layout, one job per module.

uploads.py   which files a request may delete, and unique files for what it returns
rendering.py the pictures the page shows: preview and Grad-CAM overlay, in uint8, at display size
texts.py     what the page says: the result note, the model card, the dataset attribution
"""
