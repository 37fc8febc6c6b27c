"""Every input -> one checked RGB uint8 slice, within bounded memory.

limits.py (sizes, the memory budget, ImageError) <- images.py (paths, bytes, PIL, arrays) and
dicom.py (header, geometry, window; rle.py decodes RLE Lossless, dicom_jpeg.py checks JPEG Lossless,
JPEG-LS and JPEG 2000 codestreams, then GDCM decodes them); windowing.py (the window the training
slices were rendered at); series.py (a folder, zip or list of files -> one scan's
ordered slices, checked before any pixel is decoded).
"""
