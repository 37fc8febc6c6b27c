"""Every input -> one checked RGB uint8 slice, within bounded memory, decoded in a worker process.

limits.py (sizes, the memory budget, the workers' limits, ImageError) <- images.py (paths, bytes,
PIL, arrays) and dicom.py (header, geometry, window; rle.py decodes RLE Lossless, dicom_jpeg.py
reads JPEG Lossless, JPEG-LS and JPEG 2000 frames, codestream.py bounds what their headers make
the decoder allocate, then GDCM decodes them); pool.py runs every file's decode in a worker
process (worker.py, messages in protocol.py), so a decoder's crash costs one file;
windowing.py (the window the training slices were rendered at); series.py (a folder, zip or
list of files -> one scan's ordered slices, checked before any pixel is decoded).
"""
