"""Small synthetic DICOM files written with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    rescale: tuple[float, float] | None = None,
    frames: int = 1,
    with_pixels: bool = True,
) -> Path:
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = (
        "1.2.840.10008.5.1.4.1.1.1.1" if with_pixels else "1.2.840.10008.5.1.4.1.1.88.11"
    )
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX" if with_pixels else "SR"
    ds.PatientID = "SYNTHETIC"
    if with_pixels:
        data = np.asarray(pixels, dtype=np.uint16)
        if frames > 1:
            data = np.stack([data] * frames)
            ds.NumberOfFrames = frames
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            16,
            bits_stored,
            bits_stored - 1,
            0,
        )
        ds.PixelData = data.tobytes()
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        if rescale is not None:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if voi_lut is not None:
            item = Dataset()
            item.LUTDescriptor = [len(voi_lut), 0, 16]
            item.LUTData = np.asarray(voi_lut, dtype="<u2").tobytes()
            ds.VOILUTSequence = Sequence([item])
    ds.save_as(path, enforce_file_format=True)
    return path
