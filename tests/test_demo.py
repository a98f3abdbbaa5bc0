"""The demo release: official layout, real-data quirks, determinism, and learnable faces."""

from __future__ import annotations

import hashlib
import json
import os
import re
from io import BytesIO
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from abaw_kit.classes import ANNOTATION_HEADER, NUM_CLASSES, SUBMISSION_HEADER
from abaw_kit.demo import generate as demo
from abaw_kit.demo import is_demo
from abaw_kit.demo.generate import demo_counts, generate_demo, read_demo_info
from abaw_kit.errors import AbawError
from abaw_kit.unlabeled.recordio import iter_recordio, read_image_at

SCALE = 0.2
ANNOTATIONS = Path(demo.ANNOTATION_DIR)
TWO_PERSON = "46-30-484x360"
LONG_VIDEO = "video45_1"


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "release", seed=0, scale=SCALE)


def _labels(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert lines[0] == ANNOTATION_HEADER, path
    return [int(line) for line in lines[1:]]


def _crop_dir(root: Path, name: str) -> Path:
    found = [root / d / name for d in (demo.CROPS_DIR, demo.LATE_CROPS_DIR)
             if (root / d / name).is_dir()]
    assert len(found) == 1, f"{name}: crops in {found}"
    return found[0]


def _frames(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_is_the_official_one(release: Path) -> None:
    assert is_demo(release)
    assert {p.name for p in release.iterdir()} == {
        "6th_ABAW_Annotations", "cropped_aligned", "cropped_aligned_new_50_vids", "batch1",
        "batch2", "names_of_videos_in_each_test_set", "test_set_examples", "unlabeled",
        "DEMO.json", "demo_test_labels.txt", "demo_unlabeled_labels.csv"}
    train = sorted(p.stem for p in (release / ANNOTATIONS / "Train_Set").glob("*.txt"))
    val = sorted(p.stem for p in (release / ANNOTATIONS / "Validation_Set").glob("*.txt"))
    quirks = {split: sum(2 if v[4] else 1 for v in videos)
              for split, videos in demo._QUIRK_VIDEOS.items()}
    expected = {split: quirks[split] + round((demo.SUBJECTS_PER_SPLIT[split] - quirks[split])
                                             * SCALE) for split in quirks}
    assert (len(train), len(val)) == (expected["train"], expected["val"])
    assert {f"{TWO_PERSON}_left", f"{TWO_PERSON}_right"} <= set(train)
    assert TWO_PERSON not in train
    assert {p.suffix for p in (release / "batch1").iterdir()} == {".mp4"}
    assert {p.suffix for p in (release / "batch2").iterdir()} == {".avi"}
    info = read_demo_info(release)
    for name, video in info["videos"].items():
        assert (release / video["file"]).is_file(), name
        assert Path(video["file"]).stem == name
    tests = (release / demo.TEST_LIST_FILE).read_text().split()
    assert len(tests) == expected["test"] and not set(tests) & set(train + val)
    for name in train + val + tests:
        assert re.fullmatch(r"\d{5}\.jpg", next(_crop_dir(release, name).iterdir()).name)
    assert len(list((release / demo.LATE_CROPS_DIR).iterdir())) == 2


def test_annotation_files_have_one_label_per_frame(release: Path) -> None:
    info = read_demo_info(release)
    seen: dict[str, set[int]] = {"Train_Set": set(), "Validation_Set": set()}
    for video in info["videos"].values():
        if video["split"] == "test":
            continue
        folder = "Train_Set" if video["split"] == "train" else "Validation_Set"
        for subject in video["subjects"]:
            labels = _labels(release / ANNOTATIONS / folder / f"{subject}.txt")
            assert len(labels) == video["annotated_frames"]
            assert set(labels) <= set(range(-1, NUM_CLASSES))
            seen[folder] |= set(labels)
    for folder, labels in seen.items():
        assert labels == set(range(-1, NUM_CLASSES)), f"{folder} lacks a class or -1 runs"


def test_crops_are_112_rgb_jpegs_with_gaps_where_no_face(release: Path) -> None:
    missing = total = 0
    for ann in sorted((release / ANNOTATIONS).rglob("*.txt")):
        n_labels = len(_labels(ann))
        crops = _crop_dir(release, ann.stem)
        numbers = sorted(int(p.stem) for p in crops.glob("*.jpg"))
        assert len(numbers) == len(list(crops.iterdir()))
        assert numbers[0] >= 1 and numbers[-1] <= n_labels + 2
        present = set(numbers)
        missing += sum(i not in present for i in range(1, n_labels + 1))
        total += n_labels
        with Image.open(crops / f"{numbers[len(numbers) // 2]:05d}.jpg") as image:
            assert (image.format, image.size, image.mode) == ("JPEG", (112, 112), "RGB")
    assert 0 < missing < 0.15 * total


def test_videos_decode_to_the_annotated_frame_count(release: Path) -> None:
    info = read_demo_info(release)
    for name, video in info["videos"].items():
        frames = _frames(release / video["file"])
        assert len(frames) == video["video_frames"], name
        assert frames[0].shape == (192, 256, 3)
        if video["split"] != "test":
            folder = "Train_Set" if video["split"] == "train" else "Validation_Set"
            n_labels = len(_labels(release / ANNOTATIONS / folder / f"{video['subjects'][0]}.txt"))
            extra = 2 if name == LONG_VIDEO else 0  # a real-data quirk, reproduced on purpose
            assert len(frames) == n_labels + extra, name


def _detect(image: np.ndarray) -> list[dict]:
    from skimage import data, feature

    cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())
    return cascade.detect_multi_scale(img=image, scale_factor=1.2, step_ratio=1,
                                      min_size=(40, 40), max_size=(192, 192))


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """A 24x24 grey patch normalised for brightness and contrast: compares faces, not light."""
    grey = np.asarray(Image.fromarray(image).convert("L").resize((24, 24)), dtype=float)
    return (grey - grey.mean()) / (grey.std() + 1e-6)


def test_two_person_video_left_crop_comes_from_left_face(release: Path) -> None:
    frames = _frames(release / "batch1" / f"{TWO_PERSON}.mp4")
    left_dir = _crop_dir(release, f"{TWO_PERSON}_left")
    right_dir = _crop_dir(release, f"{TWO_PERSON}_right")
    checked = 0
    for t in range(len(frames)):
        name = f"{t + 1:05d}.jpg"
        if not ((left_dir / name).is_file() and (right_dir / name).is_file()):
            continue
        boxes = sorted(_detect(frames[t]), key=lambda d: d["c"])
        if len(boxes) != 2 or boxes[0]["c"] + boxes[0]["width"] > boxes[1]["c"]:
            continue
        faces = [_thumbnail(frames[t][b["r"]:b["r"] + b["height"], b["c"]:b["c"] + b["width"]])
                 for b in boxes]
        for crop_dir, own, other in ((left_dir, 0, 1), (right_dir, 1, 0)):
            crop = _thumbnail(np.asarray(Image.open(crop_dir / name))[16:104, 16:96])
            assert np.abs(crop - faces[own]).mean() < np.abs(crop - faces[other]).mean(), name
        checked += 1
    assert checked >= 3, "two faces were found side by side in too few frames"


def test_example_file_lists_every_frame_of_every_test_video(release: Path) -> None:
    info = read_demo_info(release)
    example = (release / demo.TEST_EXAMPLE_FILE).read_text().splitlines()
    hidden = (release / demo.TEST_LABELS_FILE).read_text().splitlines()
    assert example[0] == SUBMISSION_HEADER and hidden[0] == SUBMISSION_HEADER
    listed: dict[str, list[int]] = {}
    for line in example[1:]:
        match = re.fullmatch(r"([^/]+)/(\d{5})\.jpg,", line)
        assert match, line
        listed.setdefault(match[1], []).append(int(match[2]))
    names = (release / demo.TEST_LIST_FILE).read_text().split()
    assert list(listed) == names
    shorter = 0
    without_face = 0
    for name, frames in listed.items():
        assert frames == list(range(1, len(frames) + 1))
        video_frames = info["videos"][name]["video_frames"]
        assert len(frames) in (video_frames, video_frames - demo.EXAMPLE_SHORTFALL)
        shorter += len(frames) < video_frames
        crops = _crop_dir(release, name)
        without_face += sum(not (crops / f"{i:05d}.jpg").is_file() for i in frames)
    assert shorter == 1 and without_face > 0
    assert [h.rsplit(",", 1)[0] for h in hidden[1:]] == [e[:-1] for e in example[1:]]
    assert {int(h.rsplit(",", 1)[1]) for h in hidden[1:]} <= set(range(NUM_CLASSES))


def test_unlabeled_faces_have_hidden_labels_for_every_image(release: Path) -> None:
    table = pd.read_csv(release / demo.UNLABELED_LABELS_FILE)
    counts = read_demo_info(release)["counts"]["unlabeled"]
    folder = table[~table["path"].str.contains("#")]
    assert sorted(folder["path"]) == sorted(
        str(p.relative_to(release)) for p in (release / demo.UNLABELED_FOLDER).rglob("*.jpg"))
    assert len(table) - len(folder) == counts["recordio_images"]
    assert table["label"].between(0, 7).all()
    # drawn with the face-recognition class mix: mostly Neutral and Happiness
    share = np.bincount(table["label"], minlength=8) / len(table)
    assert share[0] + share[4] > 0.6


def test_unlabeled_folder_and_recordio(release: Path) -> None:
    people = sorted((release / demo.UNLABELED_FOLDER).iterdir())
    assert len(people) >= 2
    images = list((release / demo.UNLABELED_FOLDER).rglob("*.jpg"))
    assert len(images) == read_demo_info(release)["counts"]["unlabeled"]["folder_images"]
    with Image.open(images[0]) as image:
        assert (image.size, image.mode) == ((112, 112), "RGB")
    rec_dir = release / demo.UNLABELED_RECORDIO
    records = list(iter_recordio(rec_dir / "train.rec", rec_dir / "train.idx"))[1:]
    identities = {int(r.header.label) for r in records}
    num_ids, height, width = (int(v) for v in (rec_dir / "property").read_text().split(","))
    assert (height, width) == (112, 112)
    assert identities == set(range(num_ids)) and num_ids >= 2
    fd = os.open(rec_dir / "train.rec", os.O_RDONLY)
    try:
        with Image.open(BytesIO(read_image_at(fd, records[-1].offset))) as image:
            assert image.size == (112, 112)
    finally:
        os.close(fd)


def test_class_counts_follow_the_affwild2_imbalance(release: Path) -> None:
    counts = demo_counts(seed=0, scale=1.0)
    assert 4000 <= counts["train"]["frames"] <= 6000
    assert 3500 <= counts["val"]["frames"] <= 5000
    assert 3500 <= counts["test"]["frames"] <= 5000
    for split, official in (("train", demo.TRAIN_CLASS_SHARE), ("val", demo.VAL_CLASS_SHARE)):
        classes = np.array(counts[split]["class_counts"], dtype=float)
        share = classes / classes.sum()
        assert (classes > 0).all()
        assert np.abs(share - official / official.sum()).max() < 0.05, split
        assert set(np.argsort(classes)[-2:]) == {0, 7}  # Neutral and Other lead
    train = np.array(counts["train"]["class_counts"], dtype=float)
    assert train[3] / train.sum() < 0.03  # Fear is rare
    written = read_demo_info(release)["counts"]
    assert {k: written[k] for k in ("train", "val", "test")} == demo_counts(0, SCALE)


def test_same_seed_same_bytes_and_generation_is_idempotent(tmp_path: Path) -> None:
    first = generate_demo(tmp_path / "a", seed=3, scale=0.03)
    second = generate_demo(tmp_path / "b", seed=3, scale=0.03)
    digest = _tree_digest(first)
    assert digest == _tree_digest(second)
    marker = first / demo.DEMO_MARKER
    stamp = marker.stat().st_mtime_ns
    assert generate_demo(first, seed=3, scale=0.03) == first
    assert marker.stat().st_mtime_ns == stamp
    generate_demo(first, seed=4, scale=0.03)  # another seed replaces the release
    assert read_demo_info(first)["seed"] == 4
    changed = _tree_digest(first)
    crops = [k for k in digest if k.endswith(".jpg") and k in changed]
    assert crops and all(digest[k] != changed[k] for k in crops[:20])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_a_deleted_or_truncated_file_is_generated_again(tmp_path: Path) -> None:
    """A matching DEMO.json is not trusted alone: the files it lists must still be whole."""
    release = generate_demo(tmp_path / "demo", seed=3, scale=0.03)
    digest = _tree_digest(release)
    next(p for p in sorted((release / demo.CROPS_DIR).rglob("*.jpg"))).unlink()
    video = next(p for p in sorted((release / "batch1").iterdir()))
    with video.open("r+b") as handle:
        handle.truncate(video.stat().st_size // 2)
    assert generate_demo(release, seed=3, scale=0.03) == release
    assert _tree_digest(release) == digest
    (release / demo.DEMO_MARKER).write_text(json.dumps(  # a marker without the file list
        {k: v for k, v in read_demo_info(release).items() if k != "files"}))
    generate_demo(release, seed=3, scale=0.03)
    assert _tree_digest(release) == digest


def test_refuses_to_overwrite_other_data(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(AbawError, match="not a demo release"):
        generate_demo(tmp_path / "mine", scale=0.03)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_crash_leaves_no_partial_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash_after_first_video(*_args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_write_annotations", crash_after_first_video)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_demo(tmp_path / "release", scale=0.03)
    assert list(tmp_path.iterdir()) == []


def test_lbp_detector_finds_demo_faces_in_videos(release: Path) -> None:
    info = read_demo_info(release)
    found = tried = found_hidden = tried_hidden = 0
    for video in info["videos"].values():
        if len(video["subjects"]) != 1:
            continue
        frames = _frames(release / video["file"])
        crops = _crop_dir(release, video["subjects"][0])
        for t in range(0, len(frames), 7):
            hit = len(_detect(frames[t])) > 0
            if (crops / f"{t + 1:05d}.jpg").is_file():
                found, tried = found + hit, tried + 1
            else:
                found_hidden, tried_hidden = found_hidden + hit, tried_hidden + 1
    assert tried >= 50 and found / tried >= 0.7
    assert found_hidden <= 0.5 * max(tried_hidden, 1)


def test_expressions_are_learnable_from_crops(release: Path) -> None:
    """A linear model on edge features of the face region clearly beats chance (1/8)."""
    from skimage.feature import hog
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    def load(folder: str) -> tuple[np.ndarray, np.ndarray]:
        features, targets = [], []
        for ann in sorted((release / ANNOTATIONS / folder).glob("*.txt")):
            crops = _crop_dir(release, ann.stem)
            for frame, label in enumerate(_labels(ann), start=1):
                path = crops / f"{frame:05d}.jpg"
                if label >= 0 and path.is_file():
                    with Image.open(path) as image:
                        face = image.convert("L").crop((16, 28, 96, 108)).resize((48, 48))
                    pixels = np.asarray(face, dtype=np.float32) / 255.0
                    features.append(hog(pixels, orientations=8, pixels_per_cell=(6, 6),
                                        cells_per_block=(1, 1)))
                    targets.append(label)
        return np.stack(features), np.array(targets)

    x_train, y_train = load("Train_Set")
    x_val, y_val = load("Validation_Set")
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-3
    model = LogisticRegression(C=0.003, max_iter=300, class_weight="balanced")
    model.fit((x_train - mean) / std, y_train)
    predicted = model.predict((x_val - mean) / std)
    score = f1_score(y_val, predicted, average="macro", labels=list(range(NUM_CLASSES)))
    assert score > 0.25


def test_many_people_in_disjoint_splits() -> None:
    """Demo v3 measures generalisation to new people: >= 60 / 20 / 20 annotated people, every
    one a new identity, and >= 400 more people (few photos each) in the unlabelled faces."""
    counts = demo_counts(seed=0, scale=1.0)
    assert counts["train"]["annotation_files"] >= 60
    assert counts["val"]["annotation_files"] >= 20 and counts["test"]["annotation_files"] >= 20
    plan = demo._plan(0, 1.0)
    identities = [s.identity for v in plan for s in v.subjects]
    assert len(set(identities)) == len(identities)  # nobody appears twice, across splits too
    unlabeled = demo._unlabeled_plan_counts(0, 1.0)
    assert unlabeled["identities"] >= 400
    assert unlabeled["images"] / unlabeled["identities"] <= 8


def test_splits_look_alike() -> None:
    """No split is recognisable by its look: per-split spread of skin tone, hair, glasses,
    pose and light overlaps (the between-split spread is no larger than the within-split)."""
    plan = demo._plan(0, 1.0)
    features: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for video in plan:
        for subject in video.subjects:
            ident = subject.identity
            features[video.split].append(np.array([
                np.mean(ident.skin_gain), np.mean(ident.hair_rgb) / 255, float(ident.glasses),
                float(ident.beard > 0), ident.hair_style / 3, ident.face_width * 5,
                np.mean([p.angle for p in subject.poses]) / 5,
                np.mean([light.gain for light in subject.lights]),
                np.mean([light.gradient for light in subject.lights])]))
    per_split = {k: np.stack(v) for k, v in features.items()}
    within = np.mean([x.std(axis=0) for x in per_split.values()], axis=0)
    between = np.stack([x.mean(axis=0) for x in per_split.values()]).std(axis=0)
    assert (between <= within).all(), (between, within)

