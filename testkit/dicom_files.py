"""Small uncompressed CT DICOM files, built with pydicom, for the tests that need one.

`ct_slice` writes stored values from Hounsfield units through a rescale (slope, intercept),
with only the tags a test asks for; `series_slice` is one slice of a series, with the
ordering tags (position, instance, orientation, series UID) that series.py sorts by.
"""

from __future__ import annotations

import io

import numpy as np

SERIES_UID = "1.2.826.0.1.3680043.8.498.1"
AXIAL = (1, 0, 0, 0, 1, 0)


def ct_slice(hounsfield: np.ndarray | None, *, slope: float = 1.0, intercept: float = -1024.0,
             position: tuple[float, float, float] | None = None, instance: int | None = None,
             orientation: tuple[float, ...] | None = None, series_uid: str | None = None) -> bytes:
    """A MONOCHROME2 CT slice whose uint16 stored values map to `hounsfield` (None: no pixel data at all);
    a tag given as None is left out."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("slice.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.PatientName = "Secret^Patient"  # never read, never shown
    if series_uid is not None:
        dataset.SeriesInstanceUID = series_uid
    if instance is not None:
        dataset.InstanceNumber = instance
    if position is not None:
        dataset.ImagePositionPatient = list(position)
    if orientation is not None:
        dataset.ImageOrientationPatient = list(orientation)
    if hounsfield is not None:
        stored = np.round((np.asarray(hounsfield, np.float64) - intercept) / slope).astype(np.uint16)
        dataset.Rows, dataset.Columns = stored.shape
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.BitsAllocated = dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        dataset.RescaleSlope, dataset.RescaleIntercept = slope, intercept
        dataset.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def series_slice(position: tuple[float, float, float] | None = (0.0, 0.0, 0.0), instance: int | None = 1, *,
                 orientation: tuple[float, ...] | None = AXIAL, series_uid: str | None = SERIES_UID,
                 size: tuple[int, int] = (40, 40), value: int = 1000) -> bytes:
    """One slice of a series: a uniform (rows, columns) `size` of stored `value` (HU = value - 1024), with the
    ordering tags given (None leaves a tag out)."""
    return ct_slice(np.full(size, value - 1024.0), position=position, instance=instance, orientation=orientation,
                    series_uid=series_uid)
