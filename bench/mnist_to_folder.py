"""Write MNIST's IDX files out as an image folder: OUT/train/DIGIT/NNNNN.png and OUT/test/DIGIT/NNNNN.png.

    python bench/mnist_to_folder.py --data=../shared/data --out=/tmp/mnist-png

Real data in the layout of your own images, to train through the folder path (`--config.data.name=folder
--config.data.path=OUT`) and compare it with the IDX path on the same images.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.idx import MNIST  # noqa: E402  (the repository root must be on the path first)


def write_folder(data, out):
    """Write every MNIST image of `data` as a PNG under `out`; returns how many were written."""
    from PIL import Image

    arrays = MNIST.load({"path": data, "download": False})
    count = 0
    for split, images, labels in (("train", arrays.train_images, arrays.train_labels),
                                  ("test", arrays.test_images, arrays.test_labels)):
        for index, (image, label) in enumerate(zip(images[:, 0].numpy(), labels.tolist())):
            folder = Path(out) / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:05d}.png")
            count += 1
    return count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the folder holding MNIST/raw")
    parser.add_argument("--out", required=True, help="the image folder to write")
    args = parser.parse_args()
    print(f"wrote {write_folder(args.data, args.out)} PNG files under {args.out}")
