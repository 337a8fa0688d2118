"""Images in the data pipeline: image-text records from JSON lines (records.py), Pillow decoding to RGB
(decode.py), decoded images cached once in a memory-mapped array (cache.py), light augmentation (augment.py), and
image-text pairs as resumable training batches (dataset.py).

    records.py   ImageTextSource, read_records, held_out (the split by image id)
    decode.py    decode_image: any mode -> RGB on white, resize + centre crop
    cache.py     image_cache: build or reuse the (N, S, S, 3) uint8 cache; bad images listed with their file
    augment.py   random resized crop / flip on a batch, CLIP normalisation
    dataset.py   ImagesConfig, ImageTextDataset, ImageTextBatches
"""

from ptmkit.data.images.cache import ImageCache, image_cache
from ptmkit.data.images.dataset import ImagesConfig, ImageTextBatches, ImageTextDataset
from ptmkit.data.images.decode import ImageError, decode_image
from ptmkit.data.images.records import ImageTextRecord, ImageTextSource, held_out, read_records

__all__ = ["ImageCache", "image_cache", "ImagesConfig", "ImageTextBatches", "ImageTextDataset", "ImageError",
           "decode_image", "ImageTextRecord", "ImageTextSource", "held_out", "read_records"]
