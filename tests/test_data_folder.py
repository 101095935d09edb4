"""ImageNet-style class folders: exact pixels for lossless files, resize/crop geometry, errors naming files."""

import numpy as np
import pytest
import torch

from spiketwin.data.folder import ImageFolder

Image = pytest.importorskip("PIL.Image", reason="ImageFolder needs Pillow (extra 'vision')")


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_reads_classes_and_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)  # h=40, w=60: shorter side already 40
    b = rng.integers(0, 256, (40, 40), dtype=np.uint8)  # greyscale -> RGB
    save(tmp_path / "n02_dog" / "x.png", a)
    save(tmp_path / "n01_cat" / "sub" / "y.PNG", b)
    smooth = np.stack(np.broadcast_arrays(*np.ogrid[0:200:5, 0:240:4], 90), -1).astype(np.uint8)  # 40x60 ramps
    save(tmp_path / "n01_cat" / "z.jpeg", smooth)
    (tmp_path / "n01_cat" / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, size=32, resize=40)
    assert ds.classes == ["n01_cat", "n02_dog"] and ds.targets == [0, 0, 1] and len(ds) == 3
    assert [p.name for p, _ in ds.samples] == ["z.jpeg", "y.PNG", "x.png"]  # a folder's files, then sub-folders
    x, label = ds[2]
    assert label == 1 and x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = torch.from_numpy(a[4:36, 14:46].copy()).permute(2, 0, 1)  # centre crop of 40x60
    assert torch.equal((x * 255).round().to(torch.uint8), expected)
    grey = (ds[1][0] * 255).round().to(torch.uint8)
    assert torch.equal(grey[0], torch.from_numpy(b[4:36, 4:36].copy())) and torch.equal(grey[0], grey[2])
    jpeg = ds[0][0] * 255
    assert (jpeg - torch.from_numpy(smooth[4:36, 14:46]).permute(2, 0, 1)).abs().mean() < 3  # lossy, same picture


def test_resize_shorter_side_then_crop_and_transform(tmp_path):
    save(tmp_path / "a" / "big.png", np.full((300, 500, 3), 200, np.uint8))
    ds = ImageFolder(tmp_path, size=224, transform=lambda x: x.flip(-1))
    assert ds.resize == 256
    x, _ = ds[0]
    assert x.shape == (3, 224, 224) and torch.allclose(x, torch.full_like(x, 200 / 255))
    assert ImageFolder(tmp_path, size=(16, 24), resize=30)[0][0].shape == (3, 16, 24)


def test_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no class sub-folders"):
        ImageFolder(tmp_path)
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match="no images with extensions"):
        ImageFolder(tmp_path)
    save(tmp_path / "a" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = ImageFolder(tmp_path, size=8)
    with pytest.raises(ValueError, match=r"cannot decode .*a/broken\.jpg"):
        ds[0]
    raw = (tmp_path / "a" / "ok.png").read_bytes()
    (tmp_path / "a" / "ok.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cannot decode .*a/ok\.png"):
        ds[1]
    with pytest.raises(ValueError, match="smaller than the crop"):
        ImageFolder(tmp_path, size=8, resize=4)
