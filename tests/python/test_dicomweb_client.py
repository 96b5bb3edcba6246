"""Interoperability: a real, unmodified DICOMweb client (dicomweb-client) stores, finds and
retrieves a study on a real `brankas serve`, with real DICOM files from pydicom's test data.
"""

import copy

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

NIK_SYSTEM = "https://fhir.kemkes.go.id/id/nik"
NIK = "3171054708900010"


def fresh(name, patient_id=NIK):
    """One of pydicom's test files as a new study (new UIDs) of `patient_id`."""
    ds = dcmread(get_testdata_file(name))
    ds.PatientID = patient_id
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="module")
def dicomweb(server):
    root = server["url"].rsplit("/fhir", 1)[0]
    headers = {"Authorization": f"Bearer {server['token']}"}
    r = requests.post(f"{server['url']}/Patient", headers={**headers, "Content-Type": "application/fhir+json"},
                      json={"resourceType": "Patient", "identifier": [{"system": NIK_SYSTEM, "value": NIK}], "gender": "female", "birthDate": "1990-08-07"},
                      timeout=30)
    assert r.status_code == 201, r.text
    return DICOMwebClient(url=f"{root}/dicomweb", headers=headers)


def test_store_search_and_retrieve_a_study(dicomweb):
    ct = fresh("CT_small.dcm")
    second = copy.deepcopy(ct)
    second.SOPInstanceUID = generate_uid()
    second.file_meta.MediaStorageSOPInstanceUID = second.SOPInstanceUID

    result = dicomweb.store_instances([ct, second])
    assert len(result.ReferencedSOPSequence) == 2
    assert "FailedSOPSequence" not in result

    studies = dicomweb.search_for_studies(search_filters={"PatientID": NIK})
    assert [s["0020000D"]["Value"][0] for s in studies] == [ct.StudyInstanceUID]
    series = dicomweb.search_for_series(study_instance_uid=ct.StudyInstanceUID)
    assert [s["0020000E"]["Value"][0] for s in series] == [ct.SeriesInstanceUID]
    instances = dicomweb.search_for_instances(study_instance_uid=ct.StudyInstanceUID, series_instance_uid=ct.SeriesInstanceUID)
    assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted([ct.SOPInstanceUID, second.SOPInstanceUID])

    got = dicomweb.retrieve_study(ct.StudyInstanceUID)
    by_uid = {d.SOPInstanceUID: d for d in got}
    assert set(by_uid) == {ct.SOPInstanceUID, second.SOPInstanceUID}
    assert by_uid[ct.SOPInstanceUID].PixelData == ct.PixelData, "the pixels come back as sent"
    one = dicomweb.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert one.PatientID == NIK and one.PixelData == ct.PixelData

    meta = dicomweb.retrieve_instance_metadata(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert meta["00100020"]["Value"] == [NIK]
    assert "7FE00010" not in meta or "Value" not in meta["7FE00010"], "metadata carries no pixel data"


def test_an_unknown_patient_is_refused(dicomweb):
    ct = fresh("CT_small.dcm", patient_id="3171050000000009")
    with pytest.raises(requests.HTTPError) as refused:
        dicomweb.store_instances([ct])
    assert refused.value.response.status_code == 409
    assert dicomweb.search_for_studies(search_filters={"PatientID": "3171050000000009"}) == []


def test_frames_rendered_and_thumbnail_for_a_viewer(dicomweb):
    import io

    from PIL import Image

    ct = fresh("CT_small.dcm")
    dicomweb.store_instances([ct])
    ids = (ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)

    frames = dicomweb.retrieve_instance_frames(*ids, frame_numbers=[1], media_types=("application/octet-stream",))
    assert frames == [ct.PixelData], "frame 1 is the native pixel data"

    png = dicomweb.retrieve_instance_rendered(*ids, media_types=("image/png",))
    img = Image.open(io.BytesIO(png))
    assert (img.format, img.size, img.mode) == ("PNG", (ct.Columns, ct.Rows), "L")
    lo, hi = img.getextrema()
    assert hi - lo > 100, "windowed, not flat"
    jpeg = dicomweb.retrieve_instance_rendered(*ids, media_types=("image/jpeg",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    # The thumbnail: at most 128 pixels a side.
    thumb = requests.get(f"{dicomweb.base_url}/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}/thumbnail",
                         headers={**dicomweb._session.headers, "Accept": "image/jpeg"}, timeout=30)
    assert thumb.status_code == 200, thumb.text
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128

    # A frame that does not exist.
    with pytest.raises(requests.HTTPError) as missing:
        dicomweb.retrieve_instance_frames(*ids, frame_numbers=[2], media_types=("application/octet-stream",))
    assert missing.value.response.status_code == 404


def stored_frames(ds):
    """The compressed bitstream of each frame, as pydicom splits the encapsulated data."""
    from pydicom.encaps import generate_frames

    return list(generate_frames(ds.PixelData, number_of_frames=int(getattr(ds, "NumberOfFrames", 1))))


def frames_raw(dicomweb, ids, frames, accept):
    """A frames request with an exact Accept header: (status, content type, [(part type,
    transfer syntax, bytes)])."""
    from email.parser import BytesParser
    from email.policy import HTTP

    url = f"{dicomweb.base_url}/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}/frames/{frames}"
    r = requests.get(url, headers={**dicomweb._session.headers, "Accept": accept}, timeout=30)
    if r.status_code != 200:
        return r.status_code, r.headers.get("content-type"), []
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + r.headers["content-type"].encode() + b"\r\n\r\n" + r.content)
    parts = [(p.get_content_type(), p["content-type"].params.get("transfer-syntax"), p.get_payload(decode=True)) for p in msg.iter_parts()]
    return r.status_code, r.headers["content-type"], parts


def test_compressed_instances_for_a_viewer(dicomweb):
    """A viewer (OHIF asks `transfer-syntax=*`) gets compressed frames as stored; a client
    asking for plain octets gets RLE and 8-bit JPEG decoded; rendered and thumbnail work for
    those, and what is not decoded here (JPEG 2000) is a 406 that says how to ask."""
    import io

    import numpy as np
    from PIL import Image

    # RLE, 16-bit monochrome: decoded exactly as pydicom decodes it.
    rle = fresh("MR_small_RLE.dcm")
    dicomweb.store_instances([rle])
    ids = (rle.StudyInstanceUID, rle.SeriesInstanceUID, rle.SOPInstanceUID)
    frames = dicomweb.retrieve_instance_frames(*ids, frame_numbers=[1], media_types=("application/octet-stream",))
    assert frames == [rle.pixel_array.astype("<u2").tobytes()], "RLE decoded to native little-endian samples"
    status, ct, parts = frames_raw(dicomweb, ids, "1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*')
    assert status == 200 and parts == [("application/octet-stream", "1.2.840.10008.1.2.5", stored_frames(rle)[0])], (status, ct)
    png = dicomweb.retrieve_instance_rendered(*ids, media_types=("image/png",))
    img = Image.open(io.BytesIO(png))
    assert (img.size, img.mode) == ((rle.Columns, rle.Rows), "L")
    assert np.ptp(np.asarray(img)) > 100, "windowed, not flat"

    # RLE, RGB, two frames.
    rgb = fresh("SC_rgb_rle_2frame.dcm")
    dicomweb.store_instances([rgb])
    ids = (rgb.StudyInstanceUID, rgb.SeriesInstanceUID, rgb.SOPInstanceUID)
    frames = dicomweb.retrieve_instance_frames(*ids, frame_numbers=[1, 2], media_types=("application/octet-stream",))
    assert frames == [rgb.pixel_array[0].tobytes(), rgb.pixel_array[1].tobytes()]

    # JPEG baseline: as stored for a viewer, byte for byte; decoded for plain octets, close to
    # what pydicom (through Pillow) decodes; rendered; a thumbnail.
    jp = fresh("SC_rgb_jpeg_dcmtk.dcm")
    dicomweb.store_instances([jp])
    ids = (jp.StudyInstanceUID, jp.SeriesInstanceUID, jp.SOPInstanceUID)
    status, ct, parts = frames_raw(dicomweb, ids, "1", "multipart/related; type=application/octet-stream; transfer-syntax=*")
    assert status == 200 and parts == [("application/octet-stream", "1.2.840.10008.1.2.4.50", stored_frames(jp)[0])], (status, ct)
    as_jpeg = dicomweb.retrieve_instance_frames(*ids, frame_numbers=[1], media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
    assert as_jpeg == stored_frames(jp)
    native = dicomweb.retrieve_instance_frames(*ids, frame_numbers=[1], media_types=("application/octet-stream",))[0]
    mine = np.frombuffer(native, dtype=np.uint8).reshape(jp.Rows, jp.Columns, 3).astype(int)
    assert np.abs(mine - jp.pixel_array.astype(int)).mean() < 3, "decoded to the same RGB (within IDCT rounding)"
    rendered = Image.open(io.BytesIO(dicomweb.retrieve_instance_rendered(*ids, media_types=("image/png",))))
    assert (rendered.size, rendered.mode) == ((jp.Columns, jp.Rows), "RGB")
    thumb = requests.get(f"{dicomweb.base_url}/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}/thumbnail",
                         headers={**dicomweb._session.headers, "Accept": "image/jpeg"}, timeout=30)
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"

    # JPEG 2000: served as stored only.
    j2k = fresh("JPEG2000.dcm")
    dicomweb.store_instances([j2k])
    ids = (j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID)
    status, ct, parts = frames_raw(dicomweb, ids, "1", "multipart/related; type=application/octet-stream; transfer-syntax=*")
    assert status == 200 and parts[0][2] == stored_frames(j2k)[0]
    status, _, _ = frames_raw(dicomweb, ids, "1", "multipart/related; type=application/octet-stream")
    assert status == 406
    with pytest.raises(requests.HTTPError) as refused:
        dicomweb.retrieve_instance_rendered(*ids, media_types=("image/jpeg",))
    assert refused.value.response.status_code == 406
    assert "transfer-syntax=*" in refused.value.response.text
