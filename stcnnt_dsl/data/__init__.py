"""From imaging files to `[T, C, H, W]` and back: read and write images, open data sets.

Needs the data extra (`pip install "stcnnt-dsl[data]"`): nibabel, pydicom, Pillow,
tifffile, MONAI and tqdm do the reading, windows and metrics; this package holds only
the mapping to `[T, C, H, W]`, the valid-size logic and the errors. See docs/data.md.
"""

from .dataset import Case, Dataset, check_values, open_dataset
from .image import Image, read_image, write_image

__all__ = ["Case", "Dataset", "Image", "check_values", "open_dataset", "read_image", "write_image"]
