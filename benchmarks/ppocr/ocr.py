"""PP-OCR text recognition around an ONNX model: rapidocr's preprocessing, CTC decoding, metrics.

Preprocessing follows rapidocr 3.10.0's ``TextRecognizer`` (``ch_ppocr_rec/main.py``): lines are
sorted by width/height and batched ``rec_batch_num`` = 6 at a time; a batch's width is
48 * max(320/48, the widest line's ratio); each line is resized to height 48 keeping its ratio,
scaled to (x/255 - 0.5)/0.5 in CHW order, and right-padded with zeros. rapidocr resizes with
OpenCV's bilinear ``cv2.resize``; this uses PIL's bilinear resize (the only difference).

Decoding follows its ``CTCLabelDecode``: argmax per time step, merge repeats, drop blank (index 0);
the alphabet is ``blank`` + the model's ``metadata_props['character']`` lines + ``" "``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from PIL import Image

HEIGHT, DEFAULT_WIDTH, BATCH = 48, 320, 6


def alphabet(model: onnx.ModelProto) -> list[str]:
    meta = {p.key: p.value for p in model.metadata_props}
    return ["blank"] + meta["character"].splitlines() + [" "]


def _resize_norm(image: np.ndarray, max_wh_ratio: float) -> np.ndarray:
    width = int(HEIGHT * max_wh_ratio)
    h, w = image.shape[:2]
    ratio = w / float(h)
    resized_w = width if math.ceil(HEIGHT * ratio) > width else int(math.ceil(HEIGHT * ratio))
    resized = np.asarray(Image.fromarray(image).resize((resized_w, HEIGHT), Image.BILINEAR), dtype=np.float32)
    resized = resized.transpose(2, 0, 1) / 255
    resized = (resized - 0.5) / 0.5
    padded = np.zeros((3, HEIGHT, width), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded


def batches(images: list[np.ndarray]) -> list[tuple[list[int], np.ndarray]]:
    """(line indexes, input ``[B, 3, 48, W]``) per batch, in rapidocr's order."""
    ratios = [img.shape[1] / float(img.shape[0]) for img in images]
    order = np.argsort(np.array(ratios))
    found = []
    for start in range(0, len(images), BATCH):
        indexes = [int(i) for i in order[start : start + BATCH]]
        max_ratio = max([DEFAULT_WIDTH / HEIGHT] + [ratios[i] for i in indexes])
        found.append((indexes, np.stack([_resize_norm(images[i], max_ratio) for i in indexes])))
    return found


def decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    texts = []
    for row in probs.argmax(axis=2):
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        texts.append("".join(chars[i] for i in row[keep]))
    return texts


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def recognise(session, batched: list[tuple[list[int], np.ndarray]], chars: list[str], count: int) -> list[str]:
    texts = [""] * count
    name = session.get_inputs()[0].name
    for indexes, x in batched:
        for i, text in zip(indexes, decode(session.run(None, {name: x})[0], chars)):
            texts[i] = text
    return texts


def score(predicted: list[str], truth: list[str]) -> dict:
    """Exact-line accuracy and character error rate, both in percent."""
    exact = sum(p.strip() == t for p, t in zip(predicted, truth))
    errors = sum(edit_distance(p.strip(), t) for p, t in zip(predicted, truth))
    return {"line_accuracy": 100.0 * exact / len(truth), "cer": 100.0 * errors / sum(len(t) for t in truth)}
