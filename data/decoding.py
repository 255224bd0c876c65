"""Image files to pixels, and pixels to a batch: decoding (16-bit images scaled, never clipped), normalising and
shifting, and the dataset DataLoader workers decode a streamed folder with. PIL is imported only when decoding."""
import torch

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # PIL's modes of 16-bit grey images: scaled to 8 bits, not clipped


def decode(path, mode, size):
    """uint8 array [C, H, W] of the image at `path`, in `mode` ('L' or 'RGB'), resized to `size` (h, w) if given."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = eight_bit(image).convert(mode)
        if size is not None and (image.height, image.width) != tuple(size):
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def eight_bit(image):
    """`image` decoded, a 16-bit grey one scaled to 8 bits (PIL's own conversion would clip it at 255)."""
    import numpy as np
    from PIL import Image

    image.load()
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    return Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8), "L")


def prepare(images, mean, std, shift=0, dy=None, dx=None, memory_format=torch.contiguous_format):
    """uint8 images [B, C, H, W] -> float, normalised per channel, each moved by its (dy, dx) - shift pixels."""
    channels = images.shape[1]
    mean_t = torch.tensor(mean, device=images.device).view(1, channels, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, channels, 1, 1)
    images = (images.float() / 255.0 - mean_t) / std_t
    if shift:
        images = shifted(images, dy.to(images.device), dx.to(images.device), shift,
                         [-m / s for m, s in zip(mean, std)])
    return images.contiguous(memory_format=memory_format)


def shifted(images, dy, dx, shift, background):
    """Each image moved by (dy - shift, dx - shift) pixels, padding with the `background` value of each channel."""
    b, c, h, w = images.shape
    padded = torch.tensor(background, device=images.device).view(1, c, 1, 1).expand(b, c, h + 2 * shift,
                                                                                   w + 2 * shift).clone()
    padded[:, :, shift:shift + h, shift:shift + w] = images
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)


class ImageFiles(torch.utils.data.Dataset):
    """Image files decoded in DataLoader workers; a batch's keys are (index, dy, dx) and it is prepared there too."""

    def __init__(self, entries, mode, size, mean, std, shift, channels_last):
        self.entries, self.mode, self.size, self.mean, self.std, self.shift = entries, mode, size, mean, std, shift
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __len__(self):
        return len(self.entries)

    def raw(self, indices):
        """(uint8 images [B, C, H, W], int64 labels) of the files at `indices`."""
        images = torch.stack([torch.from_numpy(decode(self.entries[i][0], self.mode, self.size)) for i in indices])
        return images, torch.tensor([self.entries[i][1] for i in indices])

    def __getitems__(self, keys):
        index, dy, dx = keys
        images, labels = self.raw(index.tolist())
        return prepare(images, self.mean, self.std, self.shift, dy, dx, self.memory_format), labels


def unused_generator():
    """A generator of the DataLoader's own: it draws a seed for its workers at every pass, which would otherwise come
    from torch's global generator and change the model's dropout (nothing here uses the workers' seeds)."""
    return torch.Generator().manual_seed(0)


def decode_all(entries, mode, size, workers=0):
    """(uint8 images [N, C, H, W], int64 labels) of every (path, label) in `entries`, decoded by `workers` processes."""
    dataset = ImageFiles(entries, mode, size, None, None, 0, False)
    chunks: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
        range(len(entries)), batch_size=512, num_workers=workers,  # type: ignore[arg-type]  # a range is a dataset
                                         collate_fn=dataset.raw, generator=unused_generator())
    images, labels = zip(*chunks)
    return torch.cat(images), torch.cat(labels)
