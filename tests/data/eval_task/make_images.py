"""Writes the small local accuracy task: six drawn images (coloured shapes on white) and
questions about them, in the JSONL format `python -m runtime eval` reads (and that the lmms-eval
task in lmms/ loads). Run from anywhere: `python tests/data/eval_task/make_images.py`."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 210, 20)}
# (file, shape, colour, count)
PICTURES = [("red_square.png", "square", "red", 1), ("blue_circle.png", "circle", "blue", 1),
            ("green_triangle.png", "triangle", "green", 1), ("yellow_square.png", "square", "yellow", 1),
            ("two_red_circles.png", "circle", "red", 2), ("three_blue_squares.png", "square", "blue", 3)]
NUMBERS = {1: "one", 2: "two", 3: "three"}


def draw(shape: str, colour: str, count: int, size: int = 336) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    step = size // count
    for i in range(count):
        x0, y0 = i * step + step // 6, size // 3
        x1, y1 = x0 + step * 2 // 3, y0 + min(step * 2 // 3, size // 3)
        fill = COLOURS[colour]
        if shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        elif shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            pen.polygon(((x0 + x1) // 2, y0, x1, y1, x0, y1), fill=fill)
    return image


def main() -> None:
    rows = []
    for name, shape, colour, count in PICTURES:
        draw(shape, colour, count).save(HERE / "images" / name, optimize=True)
        rows.append({"image": f"images/{name}", "question": "What colour is the shape in the picture?",
                     "answers": [colour]})
        rows.append({"image": f"images/{name}", "question": "How many shapes are in the picture?",
                     "answers": [str(count), NUMBERS[count]]})
    (HERE / "shapes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
