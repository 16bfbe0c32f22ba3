"""Images per second of EfficientNet-Lite0 (ONNX, onnxruntime, CPU) on this machine.

    .venv/bin/python benchmarks/model_speed.py [IMAGES] [BATCH]

Decodes, preprocesses and classifies the demo photos (cycled) in batches, as the local server
does for one request; prints img/s for the model alone. The end-to-end demo figure is in the
summary of `./run_local.sh --model efficientnet_lite0`.
"""
import os
import sys
import time

from localserver.classifiers import EFFICIENTNET_LITE0, load_classifier
from localserver.demo import PHOTO_CLASSES, PHOTOS_DIR


def main(argv) -> int:
    images = int(argv[0]) if argv else 128
    batch = int(argv[1]) if len(argv) > 1 else 8
    blobs = []
    for name in PHOTO_CLASSES:
        with open(os.path.join(PHOTOS_DIR, name), "rb") as f:
            blobs.append(f.read())
    classifier = load_classifier(EFFICIENTNET_LITE0)
    classifier.predict(blobs[:1])  # warm-up
    started = time.perf_counter()
    for start in range(0, images, batch):
        classifier.predict([blobs[i % len(blobs)] for i in range(start, min(images, start + batch))])
    elapsed = time.perf_counter() - started
    print(f"efficientnet_lite0: {images} images in batches of {batch}: {elapsed:.2f} s, "
          f"{images / elapsed:.1f} img/s on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
