"""The parts of the Gradio page that are not layout, one job per module.

uploads.py   which files a request may delete, and unique files for what it returns
rendering.py the pictures the page shows: preview and Grad-CAM overlay, in uint8, at display size
texts.py     what the page says: the result notes, the label shown, the model card, the dataset attribution
label.py     a gr.Label that shows the decided label, not the most confident class
scan_view.py the Whole scan tab: the curve along the body, the top slices, the table
batching.py  concurrent /predict requests share one model call, each decoded in its own thread
startup.py   a lean TensorFlow import and the background warm-up
"""
