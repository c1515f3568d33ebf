"""Safe decoding, ids, atomic writes and redaction (no model needed)."""

from __future__ import annotations

import os

import pytest

from tests.corpus import image_files
from tight_pipeline.data import storage


@pytest.mark.parametrize(
    "name, expected",
    [
        ("truncated.jpg", "truncated"), ("corrupt.png", "corrupt"), ("zero.png", "empty file"),
        ("page.html", "HTML"), ("notes.txt", "cannot identify"), ("tiny.png", "min_side"),
        ("bomb.png", "refused before decoding"),
    ],
)
def test_bad_files_are_refused_with_their_cause(name, expected):
    with pytest.raises(storage.ImageDecodeError, match=expected):
        storage.decode_image(image_files()[name])


@pytest.mark.parametrize("name", ["good.jpg", "cmyk.jpg", "sixteen.png", "palette.png", "gray.png", "rgba.png", "rotated.jpg"])
def test_odd_modes_become_rgb(name):
    img, notes = storage.decode_image(image_files()[name])
    assert img.mode == "RGB"
    if name == "rotated.jpg":
        assert img.height > img.width and any("EXIF" in n for n in notes)
    if name == "rgba.png":
        assert any("transparency" in n for n in notes)
        # alpha 128 on white: pixels move halfway towards 255
        assert min(img.getpixel((0, 0))) >= 120


def test_bomb_is_refused_without_decoding_pixels():
    import time

    t0 = time.perf_counter()
    with pytest.raises(storage.ImageDecodeError):
        storage.decode_image(image_files()["bomb.png"], storage.ImageLimits(max_pixels=10_000_000))
    assert time.perf_counter() - t0 < 1.0  # 10^10 pixels were never allocated


@pytest.mark.parametrize("bad", ["../x", "a/b", "x\x00y", "%2e%2e", "", ".hidden", "a..b", "x" * 200, "a b", None, 5])
def test_unsafe_ids_are_rejected(bad):
    with pytest.raises(ValueError, match="not a safe id"):
        storage.check_id(bad, "item_id")


def test_output_keys_are_deterministic_and_inside_the_prefix():
    key = storage.output_key("s3://bucket/out", "abc123", "mug-1", "de-DE")
    assert key == "s3://bucket/out/abc123/mug-1/de-DE.png"
    with pytest.raises(ValueError):
        storage.output_key("s3://bucket/out", "abc123", "../../etc", "x")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    url = str(tmp_path / "a" / "b.bin")
    storage.write_bytes_atomic(url, b"1" * 1000)
    storage.write_bytes_atomic(url, b"2" * 10)
    assert open(url, "rb").read() == b"2" * 10
    assert os.listdir(tmp_path / "a") == ["b.bin"]


def test_redact_removes_secrets_from_env_and_urls(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value-xyz")
    text = storage.redact("failed with key s3cr3t-value-xyz at https://user:pa55word@host/x")
    assert "s3cr3t-value-xyz" not in text and "pa55word" not in text and "***" in text


def test_scheme_allow_list():
    storage.check_scheme("s3://b/k")
    storage.check_scheme("/local/path")
    with pytest.raises(storage.StorageError, match="not allowed"):
        storage.check_scheme("http://example.com/x.png")
    with pytest.raises(storage.StorageError):
        storage.check_scheme("file:///etc/passwd", allowed=("s3",))


def test_file_roots_confine_local_reads(tmp_path, monkeypatch):
    inside = tmp_path / "catalog" / "a.png"
    monkeypatch.setenv("TIGHT_PIPELINE_FILE_ROOTS", str(tmp_path / "catalog"))
    storage.check_scheme(str(inside))
    storage.check_scheme(f"file://{inside}")
    storage.check_scheme("s3://bucket/a.png")  # object stores are governed by their own credentials
    for outside in ("/etc/passwd", f"file://{tmp_path}/catalog/../secret.txt", f"{tmp_path}/catalog-evil/x.png"):
        with pytest.raises(storage.StorageError, match="outside the allowed roots"):
            storage.check_scheme(outside)


def test_browser_urls_presign_object_store_outputs_only_when_asked(s3, monkeypatch):
    import urllib.request

    fs = s3.filesystem()
    if not fs.exists("presign"):
        fs.mkdir("presign")
    fs.pipe("presign/sheet.png", b"\x89PNG\r\n\x1a\nfake")
    monkeypatch.delenv("TIGHT_PIPELINE_PRESIGN_S", raising=False)
    assert storage.browser_url("s3://presign/sheet.png") is None  # off by default: shown as a path
    assert storage.browser_url("/tmp/x.png") is None
    assert storage.browser_url("https://cdn.example/x.png") == "https://cdn.example/x.png"
    monkeypatch.setenv("TIGHT_PIPELINE_PRESIGN_S", "600")
    url = storage.browser_url("s3://presign/sheet.png")
    assert url.startswith(s3.endpoint) and "Signature" in url and s3.secret_key not in url
    with urllib.request.urlopen(url, timeout=30) as resp:  # what a browser does with the link
        assert resp.read() == b"\x89PNG\r\n\x1a\nfake"
