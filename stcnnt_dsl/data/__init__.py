"""From imaging files to `[T, C, H, W]` and back: read and write images, open data sets,
predict and evaluate whole models on them.

Needs the data extra (`pip install "stcnnt-dsl[data]"`): nibabel, pydicom, Pillow,
tifffile, MONAI, SciPy and tqdm do the reading, windows and metrics; this package holds
only the mapping to `[T, C, H, W]`, the valid-size logic and the errors. See docs/data.md.
"""

from .dataset import Case, Dataset, check_values, open_dataset
from .evaluate import evaluate
from .files import predict_files
from .image import Image, read_image, write_image
from .predict import (
    HeadOutput,
    load_checkpoint,
    normalize,
    predict_image,
    read_checkpoint,
    sliding_window,
    valid_patch,
)

__all__ = [
    "Case",
    "Dataset",
    "HeadOutput",
    "Image",
    "check_values",
    "evaluate",
    "load_checkpoint",
    "normalize",
    "open_dataset",
    "predict_files",
    "predict_image",
    "read_checkpoint",
    "read_image",
    "sliding_window",
    "valid_patch",
    "write_image",
]
