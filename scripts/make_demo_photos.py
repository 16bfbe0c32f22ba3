"""Write the demo photos (localserver/photos/*.jpg) from scikit-image's data module.

Run once, in any throwaway virtualenv with scikit-image and Pillow (the project does not
depend on scikit-image):

    python3 -m venv /tmp/photos && /tmp/photos/bin/pip install scikit-image==0.26.0 pillow
    /tmp/photos/bin/python scripts/make_demo_photos.py localserver/photos

Each photo's source and licence is in localserver/photos/SOURCES.md.
"""
import os
import sys

from PIL import Image
import skimage.data

PHOTOS = {  # file name: scikit-image data function
    "cat.jpg": "chelsea",
    "coffee.jpg": "coffee",
    "rocket.jpg": "rocket",
    "camera.jpg": "camera",
}


def main(argv) -> int:
    folder = argv[0] if argv else os.path.join("localserver", "photos")
    os.makedirs(folder, exist_ok=True)
    for name, function in PHOTOS.items():
        pixels = getattr(skimage.data, function)()
        path = os.path.join(folder, name)
        Image.fromarray(pixels).convert("RGB").save(path, "JPEG", quality=85)
        print(f"photos: wrote {path} ({os.path.getsize(path):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
