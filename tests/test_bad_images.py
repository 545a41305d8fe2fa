"""Bad image files: one error naming the file and its fault, no pointless retries, one line
through a DataLoader worker."""
from __future__ import annotations

import errno
import io
import logging
import os
import struct
import zlib

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from datasets.bases import ImageDataset, ImageNotFoundError, ImageReadError, read_image


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(buf, "JPEG")
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png() -> bytes:
    """A 100 000 x 100 000 PNG header in 57 bytes: PIL refuses it from the header alone."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b""))


def make(tmp_path, case: str) -> str:
    path = tmp_path / "0001_c1s1_000001_00.jpg"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated_header":
        path.write_bytes(jpeg_bytes()[:12])
    elif case == "html":
        path.write_text("<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")
    elif case == "folder":
        path.mkdir()
    elif case == "dangling_link":
        os.symlink(tmp_path / "gone.jpg", path)
    elif case == "bomb":
        path.write_bytes(bomb_png())
    elif case == "unreadable":
        path.write_bytes(jpeg_bytes())
        path.chmod(0)
    elif case == "ok":
        path.write_bytes(jpeg_bytes())
    return str(path)


CASES = {
    "empty": r": it is empty \(0 bytes\); replace or remove the file$",
    "truncated_header": r": it is not a readable image \((Truncated File Read|cannot identify "
                        r"image file).*; it starts with b'\\xff\\xd8\\xff",
    "html": r": it is an HTML/XML page saved under an image name, not an image",
    "folder": r": it is a folder, not an image file",
    "dangling_link": r": it is a symbolic link to '.*gone\.jpg', which does not exist",
    "bomb": r": it is implausibly large \(Image size \(10000000000 pixels\) exceeds limit.*raise "
            r"PIL\.Image\.MAX_IMAGE_PIXELS",
    "unreadable": r": this user may not read it \(permission denied\); fix its permissions$",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_file_raises_once_naming_file_and_fault(tmp_path, caplog, case):
    if case == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions, so none is unreadable here")
    path = make(tmp_path, case)
    with caplog.at_level(logging.WARNING, logger="transreid.datasets"):
        with pytest.raises(ImageReadError, match=CASES[case]) as err:
            read_image(path, retries=3, wait_s=0)
    message = str(err.value)
    assert message.startswith(f"cannot read image '{path}': ") and "\n" not in message
    assert "attempt" not in caplog.text  # not retried: rereading cannot fix any of these


def test_permission_denied_is_not_retried_even_for_root(tmp_path, monkeypatch, caplog):
    """What the skipped 'unreadable' case checks, with the refusal simulated."""
    path = make(tmp_path, "ok")

    def refuse(fp, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", fp)
    monkeypatch.setattr(Image, "open", refuse)
    with caplog.at_level(logging.WARNING, logger="transreid.datasets"):
        with pytest.raises(ImageReadError, match=CASES["unreadable"]):
            read_image(path, retries=3, wait_s=0)
    assert "attempt" not in caplog.text


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(ImageNotFoundError,
                       match=r"cannot read image '.*missing\.jpg': it does not exist") as err:
        read_image(str(tmp_path / "missing.jpg"))
    assert isinstance(err.value, FileNotFoundError)


def test_transient_file_system_errors_are_retried(tmp_path, monkeypatch, caplog):
    path = make(tmp_path, "ok")
    real_open, failures = Image.open, []

    def flaky_open(fp, *args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            raise OSError(errno.ESTALE, "Stale file handle", fp)
        return real_open(fp, *args, **kwargs)
    monkeypatch.setattr(Image, "open", flaky_open)
    with caplog.at_level(logging.WARNING, logger="transreid.datasets"):
        assert read_image(path, retries=3, wait_s=0).size == (16, 8)
    assert caplog.text.count("attempt") == 2
    failures.clear()
    with pytest.raises(ImageReadError, match=r"after 2 attempts \(DATALOADER.READ_RETRIES\): "
                                             r"\[Errno 116\] Stale file handle"):
        read_image(path, retries=2, wait_s=0)


def test_dataloader_worker_error_reaches_the_user_as_the_one_line(tmp_path):
    path = make(tmp_path, "html")
    batches = iter(DataLoader(ImageDataset([(path, 1, 0, 1)]), batch_size=1, num_workers=1))
    try:
        with pytest.raises(ImageReadError) as err:
            next(batches)
    finally:
        batches._shutdown_workers()  # now, not at garbage collection after a 5 s join timeout
    assert str(err.value) == (f"cannot read image '{path}': it is an HTML/XML page saved under "
                              "an image name, not an image; replace or remove the file")


def test_worker_wrapped_message_of_a_subclass_and_unrelated_messages():
    wrapped = ("Caught ImageNotFoundError in DataLoader worker process 3.\nOriginal Traceback "
               "(most recent call last):\n  File \"x.py\", line 1, in f\n"
               "datasets.bases.ImageNotFoundError: cannot read image 'a.jpg': it does not exist\n")
    assert str(ImageNotFoundError(wrapped)) == "cannot read image 'a.jpg': it does not exist"
    # Only torch's exact wrapping is unwrapped.
    assert str(ImageReadError(wrapped)) == wrapped
    odd = "Caught ImageReadError in DataLoader worker process 0.\nOriginal Traceback: ?\n"
    assert str(ImageReadError(odd)) == odd
