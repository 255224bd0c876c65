"""The baseline network: a small convolutional classifier, built for the images and classes the data reports."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from utils.config import require
from utils.cores import check_fits_in_memory
from utils.errors import UserError

if TYPE_CHECKING:  # for the hints only: the data's description comes from data/
    from data.registry import DataInfo


class CNN(nn.Module):
    """A conv block (conv, BatchNorm, ReLU, 2x2 max-pool) per entry of `channels`, a hidden layer, and a logit per
    class, for images of `in_channels` x `image_size` (height, width).

    With `pool_first`, each block pools right after its convolution (conv, max-pool, BatchNorm, ReLU): BatchNorm and
    ReLU then work on a map four times smaller, which makes a training step about a quarter faster on a CPU, where
    those passes over memory cost as much as the convolutions.
    """

    def __init__(self, channels=(32, 64), kernel_size=5, hidden=128, dropout=0.1, image_size=(28, 28), num_classes=10,
                 pool_first=False, in_channels=1):
        super().__init__()
        height, width = (feature_size(side, len(channels), kernel_size) for side in image_size)
        if min(height, width) < 1:
            raise ValueError(f"{len(channels)} conv blocks of kernel {kernel_size} shrink a {image_size} image "
                             f"to nothing")
        blocks = []
        for out_channels in channels:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, bias=False)  # BatchNorm supplies the bias
            norm: list[nn.Module] = [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            pool: list[nn.Module] = [nn.MaxPool2d(2)]
            blocks += [conv, *(pool + norm if pool_first else norm + pool)]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def norm_map_pixels(config: dict, info: DataInfo) -> int:
    """The fewest values per image and channel a BatchNorm of the CNN normalises: the map of its last block."""
    cfg, sides = config["model"], []
    for side in (info.height, info.width):
        for _ in cfg["channels"]:
            convolved = side - cfg["kernel_size"] + 1
            normalised, side = (convolved // 2 if cfg.get("pool_first", False) else convolved), convolved // 2
        sides.append(normalised)
    return sides[0] * sides[1]


def feature_size(image_size, num_blocks, kernel_size):
    """Side of the feature map after `num_blocks` conv blocks (valid convolution, then 2x2 pooling)."""
    for _ in range(num_blocks):
        image_size = (image_size - kernel_size + 1) // 2
    return image_size


def check_config(config: dict, info: DataInfo, smallest_batch: int | None = None) -> None:
    """Refuse a network that the images `info` describes cannot go through, that this machine's memory cannot train,
    or whose last BatchNorm would see a single value in a training step of `smallest_batch` images."""
    require(config, "model.channels", list, low=1)
    require(config, "model.kernel_size", int, low=1)
    require(config, "model.hidden", int, low=1)
    require(config, "model.dropout", float, low=0, below=1)
    for key in ("channels_last", "pool_first"):
        require(config, f"model.{key}", bool, optional=True)
    cfg = config["model"]
    side = min(info.height, info.width)
    if feature_size(side, len(cfg["channels"]), cfg["kernel_size"]) < 1:
        raise UserError(f"model.channels {cfg['channels']} with model.kernel_size {cfg['kernel_size']} shrink the "
                        f"{info.height}x{info.width} images to nothing; use fewer channels entries or a smaller "
                        f"kernel_size")
    check_fits_in_memory(parameter_count(config, info), f"the CNN of model.channels {cfg['channels']} and "
                                                        f"model.hidden {cfg['hidden']}")
    if smallest_batch is not None and smallest_batch * norm_map_pixels(config, info) == 1:
        raise UserError(f"data.batch_size {config['data']['batch_size']} leaves a last training batch of one image "
                        f"per process, and the CNN's last BatchNorm sees 1x1 maps: it cannot normalise a single "
                        f"value; change data.batch_size or data.val_size by one")


def parameter_count(config: dict, info: DataInfo) -> int:
    """How many parameters the CNN of `config['model']` has for the images `info` describes (without building it)."""
    cfg, count, in_channels = config["model"], 0, info.channels
    for out_channels in cfg["channels"]:
        count += in_channels * out_channels * cfg["kernel_size"] ** 2 + 2 * out_channels  # conv, BatchNorm
        in_channels = out_channels
    height, width = (feature_size(side, len(cfg["channels"]), cfg["kernel_size"]) for side in (info.height, info.width))
    features = in_channels * height * width
    return count + (features + 1) * cfg["hidden"] + (cfg["hidden"] + 1) * info.num_classes


def make_model(config: dict, info: DataInfo, device: torch.device) -> CNN:
    """The CNN described by `config['model']` for the data `info` describes (a DataInfo), on `device`."""
    check_config(config, info)
    cfg = config["model"]
    model = CNN(channels=tuple(cfg["channels"]), kernel_size=cfg["kernel_size"], hidden=cfg["hidden"],
                dropout=cfg["dropout"], image_size=(info.height, info.width), num_classes=info.num_classes,
                pool_first=cfg.get("pool_first", False), in_channels=info.channels)
    memory_format = torch.channels_last if cfg.get("channels_last", False) else torch.preserve_format
    return model.to(device).to(memory_format=memory_format)
