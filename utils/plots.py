"""Pictures a run records as images (deepboard shows them in its Images tab) and the notebook shows: drawn with PIL,
in milliseconds, where a plotting library would add a tenth of a second to every run."""

CELL, LEFT, TOP, BOTTOM = 30, 90, 34, 56  # pixels: a matrix cell, and the margins for the labels


def confusion_image(counts, classes, title="confusion matrix (test set)"):
    """A PIL image of `counts` [true class, predicted class]: each cell shaded by its share of its row (its class),
    its count written in it; `classes` names the rows and columns."""
    from PIL import Image, ImageDraw, ImageFont

    counts = counts.tolist() if hasattr(counts, "tolist") else counts
    size = len(classes)
    font = ImageFont.load_default(size=11)
    width, height = LEFT + CELL * size + 16, TOP + CELL * size + BOTTOM
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 6), title, fill="black", anchor="mt", font=font)
    for true, row in enumerate(counts):
        total = max(sum(row), 1)
        for predicted, value in enumerate(row):
            share = value / total
            x, y = LEFT + predicted * CELL, TOP + true * CELL
            colour = (int(247 - 239 * share), int(251 - 203 * share), int(255 - 148 * share))  # white to dark blue
            draw.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=colour, outline=(225, 225, 225))
            if value:
                draw.text((x + CELL // 2, y + CELL // 2), str(value), anchor="mm", font=font,
                          fill="white" if share > 0.5 else "black")
    for index, name in enumerate(classes):
        label = str(name)[:12]
        draw.text((LEFT - 6, TOP + index * CELL + CELL // 2), label, fill="black", anchor="rm", font=font)
        draw.text((LEFT + index * CELL + CELL // 2, TOP + size * CELL + 6), label[:4], fill="black", anchor="mt",
                  font=font)
    draw.text((LEFT + size * CELL // 2, height - 8), "predicted", fill="black", anchor="mb", font=font)
    draw.text((6, TOP + size * CELL // 2), "true", fill="black", anchor="lm", font=font)
    return image
