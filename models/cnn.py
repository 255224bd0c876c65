"""The baseline network: a small convolutional classifier for 28x28 grey images."""
import torch
from torch import nn

from utils.errors import UserError


class CNN(nn.Module):
    """Conv blocks (conv, BatchNorm, ReLU, 2x2 max-pool) for each entry of `channels`, then a hidden layer and 10 logits."""

    def __init__(self, channels=(32, 64), kernel_size=5, hidden=128, dropout=0.1, image_size=28, num_classes=10):
        super().__init__()
        blocks, in_channels, size = [], 1, image_size
        for out_channels in channels:
            blocks += [nn.Conv2d(in_channels, out_channels, kernel_size, bias=False),  # BatchNorm supplies the bias
                       nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_channels, size = out_channels, (size - kernel_size + 1) // 2
        if size < 1:
            raise ValueError(f"{len(channels)} conv blocks of kernel {kernel_size} shrink a {image_size}px image to nothing")
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * size * size, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def make_model(config, device):
    """The CNN described by `config['model']`, on `device`."""
    cfg = config["model"]
    try:
        model = CNN(channels=tuple(cfg["channels"]), kernel_size=cfg["kernel_size"], hidden=cfg["hidden"],
                    dropout=cfg["dropout"])
    except ValueError as e:
        raise UserError(f"model config does not fit: {e}; use fewer channels entries or a smaller kernel_size") from None
    memory_format = torch.channels_last if cfg.get("channels_last", False) else torch.preserve_format
    return model.to(device=device, memory_format=memory_format)
