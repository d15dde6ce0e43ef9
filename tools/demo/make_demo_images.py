#!/usr/bin/env python3
"""Writes the demo dataset tools/demo/images: real photographs that ship inside scikit-image
(its `skimage/data` folder: astronaut, camera, chelsea, coffee, coins, hubble_deep_field, ihc,
moon, motorcycle_left, retina, rocket), as an ImageFolder tree of JPEGs (long side 384 px,
quality 90; gray photos stay gray).

    python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install -r tools/requirements-fixtures.txt
    .venv-fixtures/bin/python tools/demo/make_demo_images.py
"""
import os
from PIL import Image
import skimage.data as data

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "images")
CLASSES = {
    "animals": ["chelsea"],
    "objects": ["coffee", "rocket", "motorcycle_left", "coins"],
    "people": ["astronaut", "camera"],
    "science": ["hubble_deep_field", "moon", "retina", "immunohistochemistry"],
}

for cls, names in CLASSES.items():
    os.makedirs(os.path.join(OUT, cls), exist_ok=True)
    for name in names:
        arr = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
        img = Image.fromarray(arr)
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        scale = 384 / max(img.size)
        if scale < 1:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        img.save(os.path.join(OUT, cls, f"{name}.jpg"), quality=90)
        print(cls, name, img.size, img.mode)
