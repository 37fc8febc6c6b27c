"""The parts of the Gradio page that are not layout, one job per module (app.py wires them).

handlers.py   every event handler of the page and the API, as methods of one Handlers object
uploads.py    which files may be deleted and when (held while the page that used them is open)
components.py the API-facing components: the decision label, file inputs with a real API example
pictures.py   the pictures the page shows: preview and Grad-CAM overlay with its colour key, uint8
texts.py      what the page says: labels and their meaning, notes, refusals, the model card
scan_view.py  the Whole scan tab: the curve along the body (greyed for no diagnosis), the top slices, the table
batching.py   concurrent /predict requests share one model call, each decoded in its own thread
startup.py    a lean TensorFlow import, the background warm-up, the example files
"""
