"""Base datasets: RGB images as float tensors (3, H, W) in [0, 1]."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..image_io.files import Pixels, is_image_path, read_image, to_8bit_rgb
from . import register


def to_uint8_rgb(pixels: Pixels) -> torch.Tensor:
    """An image (a PIL image, or a 16-bit array as :func:`read_image` gives them) as 8-bit
    RGB (3, H, W)."""
    array = np.array(to_8bit_rgb(pixels), dtype=np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_float(image: torch.Tensor) -> torch.Tensor:
    """8-bit (3, H, W) -> float32 value / 255, as torchvision's ToTensor."""
    return image.float().div(255)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An image as float32 RGB (3, H, W) in [0, 1] (torchvision's ToTensor)."""
    return to_float(to_uint8_rgb(image))


def _read_uint8(path: str | os.PathLike) -> torch.Tensor:
    """The upright (EXIF orientation applied) image at ``path`` as 8-bit RGB (3, H, W)."""
    return to_uint8_rgb(read_image(path))


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as float32 RGB (3, H, W) in [0, 1], upright."""
    return to_float(_read_uint8(path))


@register("image-folder")
class ImageFolder(Dataset):
    """The images of a folder in sorted file-name order, each seen ``repeat`` times per epoch.

    Args:
        root_path: folder of images; files that are not images by
            :func:`~lte_cuda.image_io.files.is_image_path` are skipped.
        split_file, split_key: take the file names from ``json.load(split_file)[split_key]``
            instead of listing the folder (published option).
        first_k: keep only the first k names.
        repeat: virtual length multiplier (an epoch of DIV2K is 800 images x 20).
        cache: ``'in_memory'`` decodes every image once up front and keeps it as 8 bits
            (a quarter of the published float cache: DIV2K train takes 6.6 GB, not 26);
            ``'none'`` decodes on each access. The published ``'bin'`` (a pickle cache of the
            decoded pixels) gives the same pixels as decoding, so it is read as ``'none'``.
    """

    def __init__(
        self,
        root_path: str,
        split_file: str | None = None,
        split_key: str | None = None,
        first_k: int | None = None,
        repeat: int = 1,
        cache: str = "none",
    ) -> None:
        if cache not in ("none", "in_memory", "bin"):
            raise ValueError(f"cache must be 'none' or 'in_memory', got {cache!r}")
        if split_file is None:
            if not os.path.isdir(root_path):
                raise FileNotFoundError(f"image folder not found: {root_path}")
            names = sorted(n for n in os.listdir(root_path) if is_image_path(Path(n)))
        else:
            with open(split_file) as f:
                names = json.load(f)[split_key]
        if first_k is not None:
            names = names[:first_k]
        if not names:
            raise ValueError(f"no images in {root_path}")
        self.names: list[str] = names
        self.paths = [os.path.join(root_path, n) for n in names]
        self.repeat = repeat
        self.images = [_read_uint8(p) for p in self.paths] if cache == "in_memory" else None

    def __len__(self) -> int:
        return len(self.paths) * self.repeat

    def __getitem__(self, idx: int) -> torch.Tensor:
        i = idx % len(self.paths)
        return to_float(self.images[i]) if self.images is not None else load_image(self.paths[i])


@register("paired-image-folders")
class PairedImageFolders(Dataset):
    """Pairs (image of folder 1, image of folder 2) by sorted position, e.g. (LR, HR).

    Keyword arguments other than the two roots go to both :class:`ImageFolder`\\ s.
    """

    def __init__(self, root_path_1: str, root_path_2: str, **kwargs) -> None:
        self.dataset_1 = ImageFolder(root_path_1, **kwargs)
        self.dataset_2 = ImageFolder(root_path_2, **kwargs)
        if len(self.dataset_1) != len(self.dataset_2):
            raise ValueError(
                f"paired folders differ in size: {root_path_1} has {len(self.dataset_1)} "
                f"images, {root_path_2} has {len(self.dataset_2)}"
            )
        self.names = self.dataset_2.names

    def __len__(self) -> int:
        return len(self.dataset_1)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset_1[idx], self.dataset_2[idx]

    def pair_paths(self, idx: int) -> tuple[str, str]:
        """The files of pair ``idx`` (folder 1's, folder 2's), for messages."""
        return (
            self.dataset_1.paths[idx % len(self.dataset_1.paths)],
            self.dataset_2.paths[idx % len(self.dataset_2.paths)],
        )


@register("skimage-photos")
class SkimagePhotos(Dataset):
    """Sample photos bundled with scikit-image (by function name of ``skimage.data``), with
    matplotlib (``matplotlib:NAME``, a JPEG of its sample data: only ``grace_hopper`` is a photo)
    and with scikit-learn (``sklearn:china``, ``sklearn:flower``; CC BY 2.0 Flickr photos).

    Grey-level images are repeated into three channels and an alpha channel is dropped, so any
    bundled image can be used. A loader that returns several arrays (``stereo_motorcycle``: left
    view, right view, float disparity) contributes each of its 8-bit images. Held in memory (they
    are small). The photos named in this project's configs ship with the packages; a few other
    ``skimage.data`` loaders (e.g. ``eagle``) download their image on first use.

    Args:
        names: e.g. ``['astronaut', 'stereo_motorcycle', 'matplotlib:grace_hopper', 'sklearn:china']``.
        repeat: virtual length multiplier.
    """

    def __init__(self, names: list[str], repeat: int = 1) -> None:
        if not names:
            raise ValueError(f"names must list at least one bundled photo, got {names!r}")
        self.names = list(names)
        self.repeat = repeat
        self.images = []
        for name in self.names:
            for array in _bundled_uint8_images(name):
                if array.ndim == 2:
                    array = np.repeat(array[:, :, None], 3, axis=2)
                self.images.append(
                    torch.from_numpy(array[:, :, :3].copy()).permute(2, 0, 1).contiguous()
                )

    def __len__(self) -> int:
        return len(self.images) * self.repeat

    def __getitem__(self, idx: int) -> torch.Tensor:
        return to_float(self.images[idx % len(self.images)])


def _bundled_uint8_images(name: str) -> list[np.ndarray]:
    """The 8-bit arrays of one bundled sample photo (see :class:`SkimagePhotos`)."""
    if name.startswith("matplotlib:"):
        import matplotlib.cbook  # optional dependency, only needed for these names

        stem = name.removeprefix("matplotlib:")
        path = matplotlib.cbook.get_sample_data(f"{stem}.jpg", asfileobj=False)
        if not os.path.isfile(path):
            raise ValueError(f"matplotlib's sample data has no photo {stem!r} (looked for {path})")
        return [np.asarray(to_8bit_rgb(read_image(path)))]
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image  # optional dependency, only for these names

        stem = name.removeprefix("sklearn:")
        try:
            return [np.asarray(load_sample_image(f"{stem}.jpg"))]
        except ValueError as error:  # sklearn's message lists the photos it has
            raise ValueError(f"names: scikit-learn has no sample photo {stem!r}: {error}") from None
    import skimage.data  # optional dependency, only needed for this dataset

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"skimage.data has no image {name!r}")
    try:
        loaded = loader()
    except ModuleNotFoundError as error:  # not shipped: scikit-image would download it
        # scikit-image names the package (pooch) only in its message.
        found = re.search(r"dependency, (\w+)", str(error))
        package = error.name or (found.group(1) if found else "pooch")
        raise ValueError(
            f"names: skimage.data.{name} is not bundled with scikit-image: loading it needs "
            f"the package {package}, which is not installed, and a download"
        ) from None
    arrays = [np.asarray(a) for a in (loaded if isinstance(loaded, tuple) else (loaded,))]
    images = [a for a in arrays if a.dtype == np.uint8]
    if not images:
        dtypes = ", ".join(str(a.dtype) for a in arrays)
        raise ValueError(f"skimage.data.{name} is {dtypes}, expected an 8-bit image")
    return images
