"""``ingest --align``: turn a photo that is not already a 112x112 crop into an aligned face crop.

Face-recognition sets (MS1MV2, Glint360K) ship aligned 112x112 crops and pass through as they
are; raw folders (or a parquet of photos) need the same ArcFace alignment the Aff-Wild2 crops
have, or the model would see two different kinds of faces.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from abaw_kit.unlabeled.images import CORRUPT
from abaw_kit.unlabeled.sources import Location, Skip
from abaw_kit.workspace import atomic_write_bytes

FACE_SIZE = 112
NO_FACE = "no face found"
ALIGN_FAILED = "face landmarks unusable"
JPEG_QUALITY = 95
BUCKET = 10_000  # files per folder, so no folder holds millions of crops


class FaceAligner:
    """Detect the most confident face, align it to the ArcFace template, save it as JPEG."""

    def __init__(self, detector: Any, aligned_dir: Path,
                 shard: tuple[int, int] = (0, 1)) -> None:
        self.detector = detector
        self.aligned_dir = aligned_dir
        self.shard = shard
        self._swept: set[Path] = set()

    @staticmethod
    def needs_alignment(width: int, height: int) -> bool:
        return (width, height) != (FACE_SIZE, FACE_SIZE)

    def __call__(self, image: Image.Image, source: int, item: int) -> tuple[bytes, Location]:
        from abaw_kit.faces.align import align_face

        try:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as exc:
            raise Skip(CORRUPT, str(exc)) from None
        found = self.detector.detect(rgb[None])[0]
        if len(found) == 0:
            raise Skip(NO_FACE)
        best = int(np.argmax(found.scores))
        try:
            face = align_face(rgb, found.landmarks[best], FACE_SIZE)
        except ValueError as exc:
            raise Skip(ALIGN_FAILED, str(exc)) from None
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        data = buffer.getvalue()
        rel = f"{source}/{item // BUCKET:05d}/{item}.jpg"
        self._sweep((self.aligned_dir / rel).parent, source)
        atomic_write_bytes(self.aligned_dir / rel, data)
        return data, Location(rel, 0, len(data), kind="aligned")

    def _sweep(self, folder: Path, source: int) -> None:
        """Before the first write into a bucket, remove the temporary crops a killed run left
        there; only this shard's items, as other shards may be writing theirs right now."""
        if folder in self._swept:
            return
        self._swept.add(folder)
        index, count = self.shard
        for path in folder.glob(".*.jpg.*") if folder.is_dir() else ():
            item = path.name[1:].split(".", 1)[0]
            if item.isdigit() and (source + int(item)) % count == index:
                path.unlink(missing_ok=True)
