"""Datasets and the published sampling wrappers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lte_cuda.data import (
    DATASETS,
    ImageFolder,
    PairedImageFolders,
    SkimagePhotos,
    SRImplicitDownsampled,
    SRImplicitPaired,
    make_dataset,
    resize_bicubic,
    seed_worker,
)


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth pattern plus noise, 8-bit RGB (h, w, 3)."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 5 + 10 * seed, y * 3, (x + y) * 2], axis=-1)
    noise = np.random.default_rng(seed).integers(0, 40, (h, w, 3))
    return ((base + noise) % 256).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Three PNGs of different sizes, plus a file that is not an image."""
    for i, (h, w) in enumerate([(40, 36), (36, 44), (48, 40)]):
        Image.fromarray(_photo(h, w, i)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def _pixel_index(coord: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the pixel whose centre is ``coord`` on an axis of n pixels."""
    return torch.round(((coord.double() + 1) * n - 1) / 2).long()


def test_registry_has_the_published_names():
    for name in (
        "image-folder",
        "paired-image-folders",
        "sr-implicit-downsampled",
        "sr-implicit-paired",
    ):
        assert name in DATASETS
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        make_dataset({"name": "nope", "args": {}})


def test_resize_bicubic_truncates_then_uses_pil():
    img = torch.rand(3, 21, 19)
    out = resize_bicubic(img, (7, 5))
    # Independent: float32 * 255 truncated to 8 bits, PIL bicubic, / 255.
    array = (img.numpy() * np.float32(255)).astype(np.uint8).transpose(1, 2, 0)
    expected = np.asarray(Image.fromarray(array).resize((5, 7), Image.BICUBIC)) / 255.0
    assert out.shape == (3, 7, 5) and out.dtype == torch.float32
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-7)


def test_image_folder_order_first_k_repeat_and_cache(folder):
    plain = ImageFolder(str(folder), repeat=2)
    cached = ImageFolder(str(folder), repeat=2, cache="in_memory")
    assert plain.names == ["img0.png", "img1.png", "img2.png"]
    assert len(plain) == 6
    for i in range(6):
        assert torch.equal(plain[i], cached[i])
    expected = np.asarray(Image.open(folder / "img1.png")).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(plain[4].numpy(), expected, atol=1e-7)
    assert ImageFolder(str(folder), first_k=2).names == ["img0.png", "img1.png"]
    with pytest.raises(ValueError, match="cache"):
        ImageFolder(str(folder), cache="disk")


def test_image_folder_reads_photos_upright(tmp_path):
    # A camera stores this photo sideways (20 wide, 10 high; left red, right blue) with EXIF
    # orientation 6: shown turned 90 degrees clockwise, 10 wide and 20 high, red on top.
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10, 0], stored[:, 10:, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "camera.png", exif=exif.tobytes())
    photos = ImageFolder(str(tmp_path))
    image = photos[0]
    assert len(photos) == 1 and image.shape == (3, 20, 10)
    assert (image[0, :10] == 1).all() and (image[2, 10:] == 1).all()


def test_image_folder_takes_the_files_a_folder_run_takes(folder):
    # The same image suffixes as `lte-sr upscale` on a folder, and never a partial output.
    Image.fromarray(_photo(8, 8, 3)).save(folder / "anim.GIF")
    Image.fromarray(_photo(8, 8, 4)).save(folder / ".out.png.lte-partial-0123abcd", format="PNG")
    assert ImageFolder(str(folder)).names == ["anim.GIF", "img0.png", "img1.png", "img2.png"]


def test_16_bit_training_images_are_rounded_to_8_bits(tmp_path):
    gray = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "deep.png")
    image = ImageFolder(str(tmp_path))[0]
    expected = torch.tensor([0, 1, 128, 255]) / 255
    assert image.shape == (3, 1, 4) and torch.equal(image[:, 0], expected.expand(3, 4))


def test_paired_folders_pair_by_position_and_check_sizes(folder, tmp_path_factory):
    other = tmp_path_factory.mktemp("lr")
    for i in range(3):
        Image.fromarray(_photo(10, 9, i)).save(other / f"x{i}.png")
    pairs = PairedImageFolders(str(other), str(folder))
    lr, hr = pairs[2]
    assert lr.shape == (3, 10, 9) and hr.shape == (3, 48, 40)
    Image.fromarray(_photo(10, 9, 3)).save(other / "x3.png")
    with pytest.raises(ValueError, match="differ in size"):
        PairedImageFolders(str(other), str(folder))


def test_downsampled_crop_queries_and_cells(folder):
    wrapper = SRImplicitDownsampled(
        ImageFolder(str(folder)), inp_size=8, scale_min=1, scale_max=4, sample_q=50
    )
    wrapper.set_seed(0)
    sizes = set()
    for idx in range(3):
        for epoch in range(4):
            wrapper.set_epoch(epoch)
            s = wrapper[idx]
            assert s["inp"].shape == (3, 8, 8)
            assert s["coord"].shape == (50, 2) and s["gt"].shape == (50, 3)
            hr = round(2 / s["cell"][0, 0].item())
            assert 8 <= hr <= 32 and torch.allclose(s["cell"], torch.full((50, 2), 2 / hr))
            sizes.add(hr)
            # Sampled without replacement: 50 distinct pixels of the HR crop.
            rows, cols = _pixel_index(s["coord"][:, 0], hr), _pixel_index(s["coord"][:, 1], hr)
            assert len(set(zip(rows.tolist(), cols.tolist()))) == 50
            assert rows.min() >= 0 and rows.max() < hr
    assert len(sizes) > 3  # the scale is random


def test_downsampled_lr_is_bicubic_of_the_hr_crop(folder):
    wrapper = SRImplicitDownsampled(
        ImageFolder(str(folder)), inp_size=8, scale_min=2, scale_max=3.5
    )
    wrapper.set_seed(3)
    s = wrapper[1]
    hr = round(2 / s["cell"][0, 0].item())
    crop = s["gt"].t().reshape(3, hr, hr)  # all pixels, row-major
    assert torch.equal(s["inp"], resize_bicubic(crop, (8, 8)))
    # The crop is a window of the source image.
    source = ImageFolder(str(folder))[1]
    windows = source.unfold(1, hr, 1).unfold(2, hr, 1)  # (3, nr, nc, hr, hr)
    match = (windows == crop[:, None, None]).flatten(3).all(-1).all(0)
    assert match.any()


def test_augment_keeps_lr_and_hr_consistent(folder):
    wrapper = SRImplicitDownsampled(ImageFolder(str(folder)), inp_size=8, scale_min=2, augment=True)
    wrapper.set_seed(1)
    for epoch in range(8):
        wrapper.set_epoch(epoch)
        s = wrapper[0]
        crop = s["gt"].t().reshape(3, 16, 16)
        # Flips and transposes commute with bicubic resizing up to PIL's 8-bit rounding.
        assert (s["inp"] - resize_bicubic(crop, (8, 8))).abs().max() <= 2.5 / 255


def test_whole_image_protocol_for_large_scales(folder):
    wrapper = SRImplicitDownsampled(ImageFolder(str(folder)), scale_min=6)
    s = wrapper[2]  # 48 x 40 image
    h_lr, w_lr = math.floor(48 / 6 + 1e-9), math.floor(40 / 6 + 1e-9)
    assert s["inp"].shape == (3, h_lr, w_lr)
    assert s["gt"].shape == (round(h_lr * 6) * round(w_lr * 6), 3)
    hr = ImageFolder(str(folder))[2][:, : h_lr * 6, : w_lr * 6]
    assert torch.equal(s["gt"], hr.reshape(3, -1).t())
    assert torch.equal(s["inp"], resize_bicubic(hr, (h_lr, w_lr)))


def test_paired_wrapper_crops_aligned_windows(folder, tmp_path_factory):
    lr_dir = tmp_path_factory.mktemp("lr")
    hr_img = ImageFolder(str(folder))[0]  # 40 x 36
    Image.fromarray(_photo(10, 9, 7)).save(lr_dir / "a.png")
    wrapper = SRImplicitPaired(PairedImageFolders(str(lr_dir), str(folder), first_k=1), inp_size=4)
    wrapper.set_seed(0)
    lr_img = ImageFolder(str(lr_dir))[0]
    for epoch in range(5):
        wrapper.set_epoch(epoch)
        s = wrapper[0]
        windows = lr_img.unfold(1, 4, 1).unfold(2, 4, 1)
        hits = (windows == s["inp"][:, None, None]).flatten(3).all(-1).all(0).nonzero()
        x0, y0 = hits[0].tolist()
        expected = hr_img[:, x0 * 4 : x0 * 4 + 16, y0 * 4 : y0 * 4 + 16]
        assert torch.equal(s["gt"], expected.reshape(3, -1).t())
        assert torch.allclose(s["cell"], torch.full_like(s["cell"], 2 / 16))
    whole = SRImplicitPaired(PairedImageFolders(str(lr_dir), str(folder), first_k=1))[0]
    assert whole["inp"].shape == (3, 10, 9) and whole["gt"].shape == (40 * 36, 3)


def test_seeded_samples_do_not_depend_on_workers(folder):
    spec = {
        "name": "sr-implicit-downsampled",
        "args": {"inp_size": 6, "scale_max": 4, "augment": True, "sample_q": 20},
    }
    wrapper = make_dataset(spec, {"dataset": ImageFolder(str(folder), repeat=2)})
    wrapper.set_seed(5)
    wrapper.set_epoch(2)

    def batches(workers: int) -> list[dict]:
        loader = DataLoader(wrapper, batch_size=2, num_workers=workers, worker_init_fn=seed_worker)
        return list(loader)

    one, two = batches(0), batches(2)
    for a, b in zip(one, two, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])
    first = wrapper[0]
    wrapper.set_epoch(3)
    assert not torch.equal(first["coord"], wrapper[0]["coord"])


def test_skimage_photos_are_rgb_float():
    photos = SkimagePhotos(["chelsea", "camera"], repeat=3)
    assert len(photos) == 6
    cat, camera = photos[0], photos[3]
    assert cat.shape == (3, 300, 451) and cat.dtype == torch.float32
    assert 0 <= cat.min() and cat.max() <= 1
    assert camera.shape == (3, 512, 512) and torch.equal(camera[0], camera[2])
    with pytest.raises(ValueError, match="no image 'nope'"):
        SkimagePhotos(["nope"])


def test_matplotlib_sample_photo_is_read_by_name():
    photos = SkimagePhotos(["matplotlib:grace_hopper", "coins"])
    hopper, coins = photos[0], photos[1]
    assert hopper.shape == (3, 600, 512) and not torch.equal(hopper[0], hopper[2])  # colour
    assert coins.shape == (3, 303, 384)
    with pytest.raises(ValueError, match="matplotlib's sample data has no photo 'nope'"):
        SkimagePhotos(["matplotlib:nope"])


def test_sklearn_sample_photos_are_read_by_name():
    pytest.importorskip("sklearn")
    photos = SkimagePhotos(["sklearn:china", "sklearn:flower"])
    china, flower = photos[0], photos[1]
    assert china.shape == flower.shape == (3, 427, 640)
    assert not torch.equal(china, flower) and not torch.equal(china[0], china[2])  # colour
    with pytest.raises(ValueError, match="names: scikit-learn has no sample photo 'nope'"):
        SkimagePhotos(["sklearn:nope"])


def test_skimage_stereo_pair_gives_both_views():
    photos = SkimagePhotos(["stereo_motorcycle"])
    assert len(photos) == 2  # left and right views; the float disparity map is not an image
    left, right = photos[0], photos[1]
    assert left.shape == right.shape == (3, 500, 741)
    assert not torch.equal(left, right)
