"""The made-up foreign images and the choice of outlier patients (cxr/foreign.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr.foreign import CHEST_VARIANTS, chest_variant, outlier_fit_part

names = st.lists(st.from_regex(r"site_p[0-9]{1,4}-[1-3]\.png", fullmatch=True), min_size=1, max_size=60)


@given(paths=names, share=st.floats(0.05, 1.0))
@settings(max_examples=60, deadline=None)
def test_outlier_choice_keeps_a_patients_images_together_and_is_stable(
    paths: list[str], share: float
) -> None:
    chosen = outlier_fit_part([f"/data/{p}" for p in paths], share)
    by_patient: dict[str, set[bool]] = {}
    for path, fit in zip(paths, chosen):
        by_patient.setdefault(path.split("-")[0], set()).add(bool(fit))
    assert all(len(v) == 1 for v in by_patient.values())  # no patient on both sides
    assert (outlier_fit_part([f"/other/{p}" for p in paths], share) == chosen).all()  # folder does not matter


@given(paths=names, low=st.floats(0.05, 0.5), high=st.floats(0.5, 1.0))
@settings(max_examples=40, deadline=None)
def test_a_larger_share_only_adds_patients(paths: list[str], low: float, high: float) -> None:
    small, large = outlier_fit_part(paths, low), outlier_fit_part(paths, high)
    assert not (small & ~large).any()


def test_half_of_many_patients_is_about_half() -> None:
    paths = [f"site_p{i}-1.png" for i in range(2000)]
    assert 0.45 < outlier_fit_part(paths, 0.5).mean() < 0.55
    assert outlier_fit_part(paths, 1.0).all()


def test_chest_variants_keep_the_pixels_and_change_the_layout() -> None:
    image = np.arange(8 * 6 * 3, dtype=np.uint8).reshape(8, 6, 3)
    for kind in CHEST_VARIANTS:
        variant = chest_variant(image, kind, 1)
        assert variant.dtype == np.uint8 and variant.flags["C_CONTIGUOUS"]
        assert not np.array_equal(variant, image)
    assert (chest_variant(image, "inverted") == 255 - image).all()


def _dicom(path, patient: str):
    import pydicom

    from tests.dicom_fixtures import write_dicom

    write_dicom(path, np.full((8, 8), 1000, np.uint16))
    ds = pydicom.dcmread(path)
    ds.PatientID = patient
    ds.save_as(path)
    return str(path)


def test_a_dicom_files_patient_is_its_patient_id_not_its_name(tmp_path) -> None:
    from cxr.foreign import outlier_patient

    first = _dicom(tmp_path / "1.2.840.1.dcm", "P17")
    second = _dicom(tmp_path / "1.2.840.2.dcm", "P17")
    nameless = _dicom(tmp_path / "site_p3-1.dcm", "")
    assert outlier_patient(first) == outlier_patient(second) == "P17"
    assert outlier_patient(nameless) == "site_p3"  # no PatientID: the file name's patient
    assert outlier_patient("missing/site_p9-2.png") == "site_p9"


def test_measuring_leaves_out_exactly_the_patients_learnt_from() -> None:
    from cxr.foreign import not_learnt_from, patient_key

    paths = [f"/x/site_p{i}-{j}.png" for i in range(10) for j in (1, 2)]
    facts = {"site_classifier": {"patients_sha256": [patient_key("site_p1"), patient_key("site_p4")]}}
    kept = not_learnt_from(paths, facts)
    assert len(kept) == 16 and not any("site_p1-" in p or "site_p4-" in p for p in kept)
    assert not_learnt_from(paths, {}) == paths  # a guard without a site classifier
