"""The two training streams: labelled face-store frames and the unlabelled pool, as uint8 batches.

Exact resume without storing loader internals: batch ``k`` of a stream (its items and the
random numbers of its augmentation) is a pure function of (seed, stream, rank, k). A resumed
run rebuilds the loaders at ``k = step`` and sees exactly the batches the interrupted run would
have seen, whatever the number of workers or how far they had prefetched.

Workers send uint8 HWC tensors (a quarter of float32's bytes); the loop converts and normalises
on the device. The views are cheap PIL ops: a random resized crop + flip (weak), then timm's
RandAugment on top (strong). A decoded unlabelled image stays a PIL image from the decoder to
the output array (no array round trip). With ``data.views: device`` the workers send the faces
and the views' drawn parameters instead, and the step makes the views (``device_views``).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import DataLoader, Dataset

from abaw_kit.classes import NUM_CLASSES
from abaw_kit.config import DataConfig, TrainConfig
from abaw_kit.data.store import FaceStore
from abaw_kit.errors import AbawError
from abaw_kit.train.device_views import StrongParamDrawer, WeakParams, weak_params
from abaw_kit.unlabeled.index import BrokenImage
from abaw_kit.workspace import Workspace

LABELLED_STREAM, UNLABELLED_STREAM = 1, 2
ASPECT_RANGE = (0.9, 1.1)  # aligned faces: crop jitter, barely any distortion
LEFTOVERS = "few_label_leftovers"  # pool source: labelled frames the few-label protocol withholds
INDEX_SOURCE = "unlabelled_index"  # pool source: the unlabelled index of `abaw ingest`
AFFWILD_SOURCE = "affwild_unlabelled"  # pool source: Aff-Wild2 train frames labelled -1
NO_UNLABELLED = ("no unlabelled data: run `abaw ingest SOURCE` first, or use --ssl none")
MAX_BROKEN_RUN = 1000  # more broken images in a row than this is damage, not the odd bad file


# ---------------------------------------------------------------------------------------------
# Sampling


class ResumableBatchSampler:
    """Endless ``(k, positions)`` batches for one rank; batch k depends only on (seed, k).

    The global stream is a sequence of epochs, each a fresh permutation of the items (or, with
    ``weights``, ``num_items`` draws with replacement: class-balanced sampling). Global batch k
    holds ``batch_size * world_size`` consecutive positions; rank r takes its r-th slice, so
    ranks never overlap within a batch (DistributedSampler-equivalent sharding). The position
    to save is just the next batch number (the training step); ``start`` restores it.

    ``segments``: ``(first step, world size)`` of each stretch of the run, oldest first, the
    last one this process count's (a resume on another number of processes starts one): the
    stream then goes on at the item after the last one seen, whatever the earlier world sizes.
    """

    def __init__(self, num_items: int, batch_size: int, *, seed: int,
                 weights: np.ndarray | None = None, rank: int = 0, world_size: int = 1,
                 start: int = 0, segments: Sequence[tuple[int, int]] | None = None) -> None:
        if num_items <= 0:
            raise ValueError("cannot sample from an empty set")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.segments = [(int(a), int(b)) for a, b in segments] if segments else [(0, world_size)]
        if self.segments[-1][1] != world_size:
            raise ValueError(f"the last segment {self.segments[-1]} is not this world size "
                             f"({world_size})")
        self.weights = None if weights is None else np.asarray(weights, np.float64) / np.sum(
            weights)
        self._cached: tuple[int, np.ndarray] | None = None

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        k = self.start
        while True:
            yield k, self.batch(k)
            k += 1

    def batch(self, k: int) -> np.ndarray:
        begin = self._items_before(k) + self.rank * self.batch_size
        parts, count = [], self.batch_size
        while count:
            epoch, offset = divmod(begin, self.num_items)
            take = self._epoch(epoch)[offset:offset + count]
            parts.append(take)
            begin, count = begin + len(take), count - len(take)
        return np.concatenate(parts)

    def _items_before(self, k: int) -> int:
        """Positions the global stream used in batches 0..k-1, over all segments."""
        items = 0
        ends = [start for start, _ in self.segments[1:]] + [None]
        for (start, world), end in zip(self.segments, ends, strict=True):
            if k <= start:
                break
            items += ((k if end is None else min(k, end)) - start) * world * self.batch_size
        return items

    def _epoch(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = (rng.permutation(self.num_items) if self.weights is None else
                     rng.choice(self.num_items, size=self.num_items, p=self.weights))
            self._cached = (epoch, order)
        return self._cached[1]


def balanced_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Per-item sampling weight count(class)^-power: power 1 gives every class equal mass."""
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    per_class = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    return per_class[labels]


def class_loss_weights(counts: np.ndarray, power: float) -> torch.Tensor:
    """Cross-entropy class weights count^-power, scaled so the average frame weighs 1."""
    counts = np.asarray(counts, np.float64)
    weights = np.where(counts > 0, np.maximum(counts, 1.0) ** -power, 0.0)
    weights /= max(float((weights * counts).sum() / counts.sum()), 1e-12)
    return torch.tensor(weights, dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Views


class Views:
    """Weak (resized crop + flip) and strong (weak + RandAugment) views of a 112x112 face."""

    def __init__(self, cfg: DataConfig) -> None:
        self.size = cfg.input_size
        self.scale = tuple(cfg.crop_scale)
        self.hflip = cfg.hflip
        self.randaugment = make_randaugment(cfg.randaugment, cfg.input_size)
        self.on_device = cfg.views == "device"
        self.strong_drawer = (StrongParamDrawer(self.randaugment, cfg.randaugment)
                              if self.on_device else None)

    def weak(self, face: np.ndarray | Image.Image, rng: np.random.Generator) -> Image.Image:
        """``face``: a uint8 HWC array or an RGB PIL image (the same view of the same pixels)."""
        image = face if isinstance(face, Image.Image) else Image.fromarray(face)
        box, flip = self.weak_params(image.size, rng)
        image = image.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def weak_params(self, face_size: tuple[int, int], rng: np.random.Generator
                    ) -> tuple[tuple[int, int, int, int], bool]:
        """The weak view's crop box (left, top, right, bottom) and flip, drawn from ``rng``: the
        one draw of both the PIL path and the device path (``data.views``)."""
        width, height = face_size
        area = width * height * rng.uniform(*self.scale)
        aspect = math.exp(rng.uniform(*np.log(ASPECT_RANGE)))
        crop_w = min(width, round(math.sqrt(area * aspect)))
        crop_h = min(height, round(math.sqrt(area / aspect)))
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        return (left, top, left + crop_w, top + crop_h), bool(rng.random() < self.hflip)

    def strong(self, weak: Image.Image) -> Image.Image:
        return self.randaugment(weak)

    def faces_and_weak_params(self, faces: Sequence[np.ndarray | Image.Image],
                              rng: np.random.Generator) -> tuple[torch.Tensor, WeakParams]:
        """Device views: the decoded faces (all at the store's 112 px) as one uint8 batch +
        their weak-view parameters, drawn as ``weak`` draws them."""
        stacked = np.stack([np.asarray(face, dtype=np.uint8) for face in faces])
        height, width = stacked.shape[1:3]
        drawn = [self.weak_params((width, height), rng) for _ in faces]
        return (torch.from_numpy(stacked),
                weak_params([box for box, _ in drawn], [flip for _, flip in drawn]))


def make_randaugment(spec: str, size: int) -> Any:
    """timm's RandAugment scaled to the face size; a bad spec is a config error."""
    hparams = {"translate_const": int(size * 0.45), "img_mean": (128, 128, 128)}
    try:
        return rand_augment_transform(spec, hparams)
    except (AssertionError, ValueError, KeyError, IndexError) as exc:
        raise AbawError(f"data.randaugment '{spec}': not a timm RandAugment spec such as "
                        f"'rand-m9-n2-mstd0.5' ({type(exc).__name__}: {exc})") from None


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Seed python's and numpy's global RNGs (timm RandAugment uses them), then restore them.

    Restoring keeps augmentation in the main process (num_workers=0) from disturbing the
    training RNG, so results do not depend on the number of workers.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def batch_rng(seed: int, stream: int, rank: int, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, rank, k])


def stack(images: Sequence[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images]))


# ---------------------------------------------------------------------------------------------
# Datasets (indexed by sampler batches)


class LabelledBatches(Dataset):
    """``(k, positions)`` -> (uint8 [B,S,S,3] weak views, int64 [B] labels); with device views
    (uint8 [B,H,W,3] faces, their ``WeakParams``, int64 [B] labels)."""

    def __init__(self, store: FaceStore, rows: np.ndarray, labels: np.ndarray, views: Views,
                 *, seed: int, rank: int = 0) -> None:
        self.store, self.rows, self.labels = store, rows, labels
        self.views, self.seed, self.rank = views, seed, rank

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        k, positions = item
        rng = batch_rng(self.seed, LABELLED_STREAM, self.rank, k)
        labels = torch.from_numpy(self.labels[positions].astype(np.int64))
        faces = (self.store.face(int(row)) for row in self.rows[positions])
        if self.views.on_device:
            return (*self.views.faces_and_weak_params(list(faces), rng), labels)
        # one face at a time from the memory map: no batch array copied in between
        return stack([self.views.weak(face, rng) for face in faces]), labels


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def image(self, i: int) -> np.ndarray | Image.Image:
        """A face: uint8 HWC array, or an RGB PIL image where the source decodes one."""


class StoreRows:
    """Face-store rows used as unlabelled images (Aff-Wild2 frames labelled -1, or few-label
    leftovers)."""

    def __init__(self, store: FaceStore, rows: np.ndarray) -> None:
        self.store, self.rows = store, np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> np.ndarray:
        return self.store.face(int(self.rows[i]))


class IndexImages:
    """The unlabelled index of `abaw ingest`, at the face size."""

    def __init__(self, index: Any, size: int = 112) -> None:
        self.index, self.size = index, size

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> np.ndarray | Image.Image:
        pil_image = getattr(self.index, "pil_image", None)  # the decoder's own image: no copy
        if pil_image is not None:
            return pil_image(int(i), size=self.size)
        return np.asarray(self.index.image(int(i), size=self.size), dtype=np.uint8)

    def location(self, i: int) -> str:
        where = getattr(self.index, "location", None)
        return where(int(i)) if where is not None else f"unlabelled index image {i}"


class UnlabelledPool:
    """Several image sources behind one index 0..N-1 (the index FlexMatch keeps state for)."""

    def __init__(self, sources: dict[str, ImageSource]) -> None:
        self.sources = {name: src for name, src in sources.items() if len(src) > 0}
        self.names = list(self.sources)
        self.ends = np.cumsum([len(src) for src in self.sources.values()], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def counts(self) -> dict[str, int]:
        return {name: len(src) for name, src in self.sources.items()}

    def span(self, name: str) -> slice:
        """Pool indices of one source (an empty slice when it has no images)."""
        if name not in self.sources:
            return slice(0, 0)
        which = self.names.index(name)
        return slice(int(self.ends[which - 1]) if which else 0, int(self.ends[which]))

    def image(self, i: int) -> np.ndarray | Image.Image:
        name, offset = self._find(i)
        return self.sources[name].image(offset)

    def location(self, i: int) -> str:
        """Where pool image ``i`` comes from, for messages."""
        name, offset = self._find(i)
        where = getattr(self.sources[name], "location", None)
        return where(offset) if where is not None else f"{name} image {offset}"

    def _find(self, i: int) -> tuple[str, int]:
        which = int(np.searchsorted(self.ends, i, side="right"))
        start = int(self.ends[which - 1]) if which else 0
        return self.names[which], i - start


class UnlabelledBatches(Dataset):
    """``(k, positions)`` -> (uint8 weak views, uint8 strong views, int64 pool indices of the
    images used, int64 pool indices of broken images skipped); with device views (uint8
    faces, ``WeakParams``, ``StrongParams``, then the same two index tensors).

    The skipped ones travel in the batch because loader workers are other processes: the
    main process collects them and reports them at the end of training.
    """

    def __init__(self, pool: UnlabelledPool, views: Views, *, seed: int, rank: int = 0) -> None:
        self.pool, self.views, self.seed, self.rank = pool, views, seed, rank

    def __len__(self) -> int:
        return len(self.pool)

    def __getitem__(self, item: tuple[int, np.ndarray]
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        k, positions = item
        rng = batch_rng(self.seed, UNLABELLED_STREAM, self.rank, k)
        used: list[int] = []
        broken: list[int] = []
        faces = []
        for i in positions:
            index, face = self.usable_image(int(i), broken)
            used.append(index)
            faces.append(face)
        used_t, broken_t = (torch.tensor(used, dtype=torch.int64),
                            torch.tensor(broken, dtype=torch.int64))
        if self.views.on_device:
            assert self.views.strong_drawer is not None
            stacked, crops = self.views.faces_and_weak_params(faces, rng)
            with seeded_globals(int(rng.integers(2**63))):
                augment = self.views.strong_drawer.draw(len(faces))
            return stacked, crops, augment, used_t, broken_t
        weak = [self.views.weak(face, rng) for face in faces]
        with seeded_globals(int(rng.integers(2**63))):
            strong = [self.views.strong(image) for image in weak]
        return stack(weak), stack(strong), used_t, broken_t

    def usable_image(self, i: int, broken: list[int]) -> tuple[int, np.ndarray | Image.Image]:
        """Pool image ``i``, or the next one that decodes (its index is returned too).

        A broken image is skipped, as a full ``ingest --verify`` would have; the replacement
        depends only on ``i`` and the data, so an exact resume sees the same batches. The
        skipped indices are appended to ``broken``.
        """
        tries = min(len(self.pool), MAX_BROKEN_RUN)
        for step in range(tries):
            index = (i + step) % len(self.pool)
            try:
                return index, self.pool.image(index)
            except BrokenImage:
                broken.append(index)
        raise AbawError(f"{tries} unlabelled images in a row do not decode, from "
                        f"{self.pool.location(i)} on: the data is damaged beyond the odd broken "
                        "image; rerun `abaw ingest SOURCE --verify full`")


# ---------------------------------------------------------------------------------------------
# Building the streams


@dataclass
class TrainingData:
    """Both streams of one rank plus what the loop and the report need to know about them."""

    labelled: LabelledBatches
    class_counts: np.ndarray
    sample_weights: np.ndarray | None
    unlabelled: UnlabelledBatches | None
    unlabelled_counts: dict[str, int]
    hidden_labels: np.ndarray | None = None
    """The true class of each pool image where known (-1 elsewhere): withheld labels of the
    few-label protocol, and the demo's record of its unlabelled faces. The loop reports how
    often accepted pseudo-labels are right (``pseudo_acc``). Never used for training."""

    @property
    def num_unlabelled(self) -> int:
        return 0 if self.unlabelled is None else len(self.unlabelled)


def build_training_data(work: Workspace, cfg: TrainConfig, *, rank: int = 0,
                        with_unlabelled: bool = True) -> TrainingData:
    """Labelled frames (optionally a few-label subset) and, for SSL, the unlabelled pool."""
    store = FaceStore(work.store_dir("train"))
    rows = store.rows(labelled=True, with_face=True)
    labels = store.index["label"].to_numpy(np.int64)[rows]
    if len(rows) == 0:
        raise AbawError(f"the train face store {store.split_dir} has no labelled frames with a "
                        "face; run `abaw prepare` on a release with EXPR train annotations")
    keep = few_label_subset(labels, cfg.data.labelled_fraction, cfg.train.seed)
    views = Views(cfg.data)
    counts = np.bincount(labels[keep], minlength=NUM_CLASSES)
    weights = (balanced_weights(labels[keep], cfg.data.balance_power)
               if cfg.data.balance == "sampler" else None)
    labelled = LabelledBatches(store, rows[keep], labels[keep], views, seed=cfg.train.seed,
                               rank=rank)
    unlabelled, sources, hidden = None, {}, None
    if with_unlabelled:
        pool = build_unlabelled_pool(work, cfg.data, store, rows[~keep])
        unlabelled = UnlabelledBatches(pool, views, seed=cfg.train.seed, rank=rank)
        sources = pool.counts()
        hidden = np.full(len(pool), -1, np.int64)
        hidden[pool.span(LEFTOVERS)] = labels[~keep]
        index_span = pool.span(INDEX_SOURCE)
        known = known_unlabelled_classes(work) if index_span.stop > index_span.start else None
        if known is not None and len(known) == index_span.stop - index_span.start:
            hidden[index_span] = known
        hidden = hidden if (hidden >= 0).any() else None
    return TrainingData(labelled, counts, weights, unlabelled, sources, hidden)


def known_unlabelled_classes(work: Workspace) -> np.ndarray | None:
    """Diagnostics only: the true class of each unlabelled-index image where it is known (-1
    elsewhere), or None. Known on the built-in demo, whose generator recorded the class each
    face-recognition image was drawn with, matched to the index by the content hash."""
    from abaw_kit.demo import UNLABELED_LABELS_FILE

    try:
        root = work.data_root() if work.is_demo() else None
        if root is None or not (root / UNLABELED_LABELS_FILE).is_file():
            return None
        truth_file = root / UNLABELED_LABELS_FILE
        truth = pd.read_csv(truth_file, usecols=["label", "hash"], dtype={"hash": str})
        hashes = pq.read_table(work.unlabeled_dir / "index.parquet", columns=["hash"])
    except (AbawError, OSError, ValueError, KeyError, pa.ArrowException):
        return None  # an older demo or no readable record: the diagnostic is simply absent
    by_hash = dict(zip(truth["hash"], truth["label"].astype(np.int64), strict=True))
    return np.array([by_hash.get(h, -1) for h in hashes.column("hash").to_pylist()], np.int64)


def few_label_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask keeping ``fraction`` of each class (at least one frame per present class)."""
    keep = np.ones(len(labels), dtype=bool)
    if fraction >= 1.0:
        return keep
    keep[:] = False
    rng = np.random.default_rng([seed, 7])
    for cls in range(NUM_CLASSES):
        members = np.flatnonzero(labels == cls)
        if len(members):
            chosen = rng.choice(members, size=max(1, round(fraction * len(members))),
                                replace=False)
            keep[chosen] = True
    return keep


def build_unlabelled_pool(work: Workspace, cfg: DataConfig, store: FaceStore,
                          leftover_rows: np.ndarray) -> UnlabelledPool:
    """Unlabelled index (+ Aff-Wild2 frames labelled -1) (+ few-label leftovers)."""
    sources: dict[str, ImageSource] = {}
    if cfg.use_unlabelled_index:
        index = open_unlabelled_index(work)
        if len(index) == 0:
            raise AbawError(f"{NO_UNLABELLED} (the unlabelled index in {work.unlabeled_dir} "
                            "is empty)")
        sources[INDEX_SOURCE] = IndexImages(index)
    if cfg.use_affwild_unlabelled:
        sources[AFFWILD_SOURCE] = StoreRows(store, store.rows(labelled=False))
    sources[LEFTOVERS] = StoreRows(store, leftover_rows)
    pool = UnlabelledPool(sources)
    if len(pool) == 0:
        raise AbawError(f"{NO_UNLABELLED} (data.use_unlabelled_index is off and the train store "
                        "has no unlabelled frames)")
    return pool


def open_unlabelled_index(work: Workspace) -> Any:
    """The index `abaw ingest` built; a clear error when there is none."""
    from abaw_kit.unlabeled.index import UnlabeledIndex

    try:
        return UnlabeledIndex(work.unlabeled_dir)
    except AbawError as exc:
        raise AbawError(f"{NO_UNLABELLED} ({exc}; or --set data.use_unlabelled_index=false to "
                        "use only the Aff-Wild2 frames without a label)") from None


class _UserError:
    """An AbawError met in a loader worker, sent to the main process as a value."""

    def __init__(self, message: str) -> None:
        self.message = message


class _UserErrorsAsValues(Dataset):
    """Runs in the workers: an AbawError becomes a ``_UserError`` value. Why: torch re-raises a
    worker's exception with the worker's whole traceback as its message, so the CLI's one line
    would be 25; ``_Loader`` raises the original message instead."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: Any) -> Any:
        try:
            return self.dataset[item]
        except AbawError as exc:
            return _UserError(str(exc))


class _Loader(DataLoader):
    """A DataLoader that raises a worker's AbawError with its own one-line message."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # Not a generator: the workers must start at iter(), as starting them draws from the
        # torch RNG, which an exact resume restores right after.
        return _RaiseUserErrors(super().__iter__())


class _RaiseUserErrors:
    """The loader's iterator, raising the ``_UserError`` values as AbawError."""

    def __init__(self, batches: Iterator[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        batch = next(self.batches)
        if isinstance(batch, _UserError):
            raise AbawError(batch.message)
        return batch


def make_loader(dataset: Dataset, sampler: ResumableBatchSampler, *, num_workers: int,
                pin_memory: bool) -> DataLoader:
    """Workers build whole batches (one call per batch) and stay alive between uses."""
    return _Loader(_UserErrorsAsValues(dataset), batch_size=None, sampler=sampler,
                   num_workers=num_workers, persistent_workers=num_workers > 0,
                   pin_memory=pin_memory, prefetch_factor=2 if num_workers > 0 else None)


def broken_images_note(data: TrainingData, broken: set[int]) -> str:
    """The end-of-training line about the unlabelled images skipped as broken."""
    assert data.unlabelled is not None
    first = data.unlabelled.pool.location(min(broken))
    return (f"skipped {len(broken)} unlabelled image(s) that do not decode (the first: {first})"
            "; each was replaced by the next image of the pool; `abaw ingest SOURCE --verify "
            "full` drops them for good")


def labelled_workers(cfg: DataConfig, with_unlabelled: bool) -> int:
    """``data.labelled_workers`` with auto (-1) resolved: a labelled batch is B weak views, an
    unlabelled one B * uratio images decoded, weak and RandAugment views, so beside it one
    worker keeps up; alone (ssl none) the labelled stream gets ``num_workers``."""
    if cfg.labelled_workers >= 0:
        return cfg.labelled_workers
    return min(1, cfg.num_workers) if with_unlabelled else cfg.num_workers


def training_loaders(data: TrainingData, cfg: TrainConfig, *, start: int, rank: int,
                     world_size: int, pin_memory: bool,
                     segments: Sequence[tuple[int, int]] | None = None
                     ) -> tuple[DataLoader, DataLoader | None]:
    """Loaders that resume at batch ``start`` (= the training step); ``segments``: see
    ``ResumableBatchSampler``."""
    seed = cfg.train.seed
    labelled_sampler = ResumableBatchSampler(
        len(data.labelled), cfg.data.batch_size, seed=seed * 1000 + LABELLED_STREAM,
        weights=data.sample_weights, rank=rank, world_size=world_size, start=start,
        segments=segments)
    labelled = make_loader(data.labelled, labelled_sampler,
                           num_workers=labelled_workers(cfg.data, data.unlabelled is not None),
                           pin_memory=pin_memory)
    if data.unlabelled is None:
        return labelled, None
    unlabelled_sampler = ResumableBatchSampler(
        len(data.unlabelled), cfg.data.batch_size * cfg.ssl.uratio,
        seed=seed * 1000 + UNLABELLED_STREAM, rank=rank, world_size=world_size, start=start,
        segments=segments)
    unlabelled = make_loader(data.unlabelled, unlabelled_sampler,
                             num_workers=cfg.data.num_workers, pin_memory=pin_memory)
    return labelled, unlabelled
