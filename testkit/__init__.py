"""What the tests and the benchmarks both build on, in one home that imports nothing from either.

app_server.py     the real demo (`python app.py`, or another Gradio app) in a subprocess: start, wait, log, stop
dicom_files.py    small CT DICOM files built with pydicom (tags and pixels as a test needs them)
hostile_corpus.py hostile uploads (bombs, truncations, lying headers, compressed DICOM) and a client that sends them
"""
