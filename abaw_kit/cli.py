"""The `abaw` command line: one thin function per subcommand; the work happens in plain functions.

Every command takes --work (workspace), --json (machine-readable result on stdout) and --debug
(show tracebacks). Errors the user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console, RenderableType

from abaw_kit.errors import AbawError, environment_error_message
from abaw_kit.faces.detector import DEFAULT_DETECTOR
from abaw_kit.ssl.registry import available_thresholds
from abaw_kit.tables import kv_table, right, rows_table
from abaw_kit.workspace import Workspace

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ABAW EXPR toolkit: prepare -> ingest -> train -> evaluate -> submit.")
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

WorkOpt = Annotated[Path | None, typer.Option(
    "--work", envvar="ABAW_WORK", help="Workspace folder (default: ./abaw-work).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Run name (default: the latest run).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")]
BatchSizeOpt = Annotated[int | None, typer.Option(
    min=1, help="Frames per batch (default: 256 on CPU; on a GPU 1024 at 112 px, fewer for "
                "larger inputs).")]
ModelOpt = Annotated[str, typer.Option(
    "--model", help="frame | temporal | auto: the temporal model when the run has one "
                    "(`abaw train-temporal`), else the frame model.")]
DetectEveryOpt = Annotated[int, typer.Option(
    min=1, help="Detect every K frames, interpolate boxes between.")]
DetectSizeOpt = Annotated[int | None, typer.Option(
    min=32, help="Long side frames are resized to for detection, e.g. 640 or 320 (boxes are "
                 "scaled back; default: the detector's, 640 for RetinaFace).")]


def user_errors(func: F) -> F:
    """Turn AbawError (and Ctrl-C) into one line + non-zero exit; --debug keeps the traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AbawError as exc:
            if kwargs.get("debug"):
                raise
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # disk full, read-only, a path under a file...: not our bug
            if kwargs.get("debug"):
                raise
            console.print(f"[bold red]error:[/] {environment_error_message(exc)}",
                          highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; rerun the same command to resume[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit(result: dict[str, Any], as_json: bool, *tables: RenderableType) -> None:
    """JSON on stdout for scripts, or rich tables for people."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        return
    out = Console()
    for table in tables:
        out.print(table)


@app.command()
@user_errors
def prepare(
    data_root: Annotated[Path | None, typer.Option(
        "--data-root", envvar="ABAW_DATA",
        help="Aff-Wild2 release root (default: the built-in demo dataset).")] = None,
    source: Annotated[str, typer.Option(
        help="crops | video | auto (crops when present).")] = "auto",
    split: Annotated[list[str] | None, typer.Option(
        "--split", help="Split(s) to prepare (default: train, val, test).")] = None,
    detector: Annotated[str, typer.Option(
        help="Face detector for --source video: retinaface-mobilenet | retinaface | "
             "cascade.")] = DEFAULT_DETECTOR,
    detector_weights: Annotated[Path | None, typer.Option(
        help="Local RetinaFace weights (offline route).")] = None,
    detect_every: DetectEveryOpt = 1,
    detect_size: DetectSizeOpt = None,
    device: DeviceOpt = "cpu",
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Release (organiser crops or videos) -> a training-ready face store per split."""
    from abaw_kit.prepare import PrepareOptions
    from abaw_kit.prepare import prepare as run_prepare
    from abaw_kit.workspace import SPLITS

    options = PrepareOptions(data_root=data_root, source=source,
                             splits=tuple(split) if split else SPLITS, detector=detector,
                             detector_weights=detector_weights, detect_every=detect_every,
                             detect_size=detect_size, device=device)
    result = run_prepare(Workspace.resolve(work), options, progress=not as_json,
                         log=console.print)
    emit(result, as_json, *_prepare_tables(result))


def _prepare_tables(result: dict[str, Any]) -> list[Table]:
    rows = []
    for split, rep in result["splits"].items():
        skipped = "; ".join(f"{k}: {v['count']}" for k, v in rep["skipped"].items()) or "-"
        rows.append((split, rep["videos"], rep["frames"], rep["frames_with_face"],
                     rep["labelled_frames_with_face"], skipped))
    return [rows_table(f"face store in {result['workspace']} (source: {result['source']})",
                       ["split", *right("videos", "frames", "frames with face",
                                        "labelled frames with face", "skipped")], rows)]


@app.command()
@user_errors
def inspect(
    data_root: Annotated[Path | None, typer.Option(
        "--data-root", envvar="ABAW_DATA",
        help="Release root (default: the demo dataset).")] = None,
    frame_counts: Annotated[bool, typer.Option(
        help="Read video frame counts to find annotations longer than their video.")] = True,
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Summarise a release: per split videos, frames, labels, faces, and every inconsistency."""
    from abaw_kit.data.release import find_release
    from abaw_kit.data.release_report import summarize, summary_table
    from abaw_kit.prepare import resolve_data_root

    ws = Workspace.resolve(work)
    root, _ = resolve_data_root(ws.ensure() if data_root is None else ws, data_root)
    counter = None
    if frame_counts:
        from abaw_kit.data.video import video_frame_count

        counter = video_frame_count
    summary = summarize(find_release(root), frame_count=counter)
    emit(summary, as_json, summary_table(summary))


@app.command()
@user_errors
def ingest(
    sources: Annotated[list[Path], typer.Argument(help="RecordIO folders/.rec, image folders, "
                                                       ".tar shards or .parquet files.")],
    format: Annotated[str | None, typer.Option(help="recordio | folder | tar | parquet "
                                                   "(default: detected).")] = None,
    column: Annotated[str | None, typer.Option(help="Parquet image-bytes column.")] = None,
    verify: Annotated[str, typer.Option(help="full | sample | none | auto.")] = "auto",
    align: Annotated[bool, typer.Option(help="Detect and align faces that are not "
                                             "112x112 crops.")] = False,
    detector: Annotated[str, typer.Option(
        help="Face detector for --align.")] = DEFAULT_DETECTOR,
    detector_weights: Annotated[Path | None, typer.Option(help="Local detector weights.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Keep at most N images.")] = None,
    fraction: Annotated[float | None, typer.Option(min=0.0, max=1.0,
                                                   help="Keep this random fraction.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for --limit/--fraction.")] = 0,
    shard: Annotated[str, typer.Option(help="i/n: this process takes shard i of n.")] = "0/1",
    merge: Annotated[bool, typer.Option(help="Merge shard indexes that are already "
                                             "written.")] = False,
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Unlabelled face data (MS1MV2, Glint360K, WebFace, folders) -> the unlabelled index."""
    from abaw_kit.unlabeled import ingest as ingest_mod

    ws = Workspace.resolve(work)
    if not merge:  # refuse an output inside a source before creating any folder
        ingest_mod.check_out_dir(ws.unlabeled_dir, sources)
    ws = ws.ensure()
    if merge:
        result = ingest_mod.merge(ws.unlabeled_dir)
    else:
        det = None
        if align:
            from abaw_kit.faces import make_detector

            det = make_detector(detector, weights=detector_weights)
        result = ingest_mod.ingest(sources, ws.unlabeled_dir, format=format, column=column,
                                   verify=verify, align=align, detector=det, limit=limit,
                                   fraction=fraction, seed=seed, shard=_parse_shard(shard),
                                   progress=not as_json)
    emit(result, as_json, ingest_mod.summary_table(result))


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise AbawError(f"--shard expects i/n (e.g. 0/4), got '{text}'") from None
    if not (count >= 1 and 0 <= index < count):
        raise AbawError(f"--shard {text}: need 0 <= i < n")
    return index, count


@app.command()
@user_errors
def train(
    ssl: Annotated[str | None, typer.Option(
        help=f"{' | '.join(available_thresholds())}.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML config (default: the bundled <ssl>.yaml; demo.yaml on the demo).")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a config key: --set optim.lr=0.001 (repeatable).")] = None,
    run: Annotated[str | None, typer.Option("--run", help="Run name.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Any timm model name.")] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="'timm' for timm's download, 'imagenet' for torchvision's ImageNet file "
             "(offline first), 'none', or a local .safetensors / state-dict file: timm's, "
             "or torchvision's ImageNet file for mobilenetv2_100, resnet18..152.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run named by --run "
                                              "(default: the latest) exactly.")] = False,
    reshard: Annotated[bool, typer.Option(
        help="With --resume: go on with another number of processes (GPUs) than the "
             "checkpoint's; not exact: the data goes on after the last image seen, every rank "
             "is reseeded.")] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda ...")] = None,
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Train an 8-class expression model, optionally semi-supervised (--ssl dtm)."""
    from abaw_kit.config import resolve_train_config
    from abaw_kit.train.run import train as run_train

    ws = Workspace.resolve(work).ensure()
    flags = {"ssl": ssl, "steps": steps, "backbone": backbone, "pretrained": pretrained,
             "device": device}
    resume_from = ws.run_dir(run) if resume else None  # --resume starts from the run's config
    cfg = resolve_train_config(ws, config, set_ or [], flags, resume_from=resume_from)
    result = run_train(ws, cfg, run_name=run, resume=resume, progress=not as_json,
                       reshard=reshard)
    emit(result, as_json, kv_table("training run", _flat(result)))


def _flat(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not isinstance(v, dict | list)}


@app.command()
@user_errors
def embed(
    run: RunOpt = None,
    split: Annotated[list[str] | None, typer.Option(
        "--split", help="Split(s) to embed (default: every split with a face store).")] = None,
    batch_size: BatchSizeOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Recompute videos already embedded with this checkpoint.")] = False,
    device: DeviceOpt = "auto",
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Per-frame embeddings (pooled backbone features, EMA weights) cached in the run."""
    from abaw_kit.embed import embed_run

    ws = Workspace.resolve(work)
    result = embed_run(ws, run, split, device=device, batch_size=batch_size, force=force,
                       progress=not as_json, log=console.print)
    table = rows_table(
        f"embeddings of run {result['run']} ({result['backbone']}, "
        f"{Path(result['checkpoint']).name}, step {result['step']})",
        ["split", *right("videos", "frames embedded", "dim", "skipped as done")],
        [(name, rep["videos"], rep["frames_embedded"], rep["dim"], rep["videos_skipped_done"])
         for name, rep in result["splits"].items()])
    emit(result, as_json, table)


@app.command("train-temporal")
@user_errors
def train_temporal(
    run: RunOpt = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML file whose temporal: section overrides the run's.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Override a temporal key: --set temporal.model=tcn (repeatable).")
    ] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps.")] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="Seed (temporal.seed).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run's temporal model exactly.")
    ] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace the run's temporal model (and its evaluation records).")
    ] = False,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda ...")] = None,
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """A sequence model over the run's frame embeddings (run `abaw embed` first)."""
    from abaw_kit.temporal.train import resolve_temporal_config
    from abaw_kit.temporal.train import train_temporal as run_temporal

    if resume and force:
        raise AbawError("--resume continues the temporal model and --force replaces it; "
                        "give one")
    ws = Workspace.resolve(work)
    run_dir = ws.run_dir(run)
    flags = {"temporal.steps": steps, "temporal.seed": seed, "train.device": device}
    cfg = resolve_temporal_config(run_dir, config, set_ or [], flags, resume=resume)
    result = run_temporal(ws, cfg, run=run_dir.name, resume=resume, force=force,
                          progress=not as_json)
    emit(result, as_json, kv_table("temporal model", _flat(result)))


@app.command()
@user_errors
def evaluate(
    split: Annotated[str, typer.Option(help="Split to score (val).")] = "val",
    run: RunOpt = None,
    smooth: Annotated[str, typer.Option(
        help="none | mean:W | median:W | gauss:SIGMA | auto (W in frames, or seconds as 0.5s). "
             "A window or sigma longer than the split's longest video, or a sigma above 1000 "
             "frames, is an error (never clamped).")
    ] = "auto",
    predictions: Annotated[Path | None, typer.Option(
        "--predictions", help="Score an existing ABAW-format prediction file (no model).")] = None,
    write_predictions: Annotated[Path | None, typer.Option(
        "--write-predictions", help="Also write the split's predictions in challenge format "
                                    "to this new file (an existing one needs --force; never "
                                    "inside the data root).")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an existing --write-predictions file.")] = False,
    model: ModelOpt = "auto",
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Macro-F1 (the challenge metric) with temporal smoothing, per class and per video."""
    from abaw_kit.evaluate import evaluate_split, evaluation_tables

    ws = Workspace.resolve(work)
    result = evaluate_split(ws, split=split, run=run, smooth=smooth, predictions_file=predictions,
                            write_predictions=write_predictions, force=force, device=device,
                            batch_size=batch_size, progress=not as_json, model=model)
    emit(result, as_json, *evaluation_tables(result))


@app.command()
@user_errors
def submit(
    run: RunOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output file, or a folder for a numbered name; an existing file needs "
                      "--force, and nothing is written inside the data root (default: "
                      "<work>/submissions/expr_submission_<n>.txt).")] = None,
    smooth: Annotated[str | None, typer.Option(
        help="Smoothing (default: the choice `evaluate --smooth auto` recorded in the run).")
    ] = None,
    check: Annotated[Path | None, typer.Option(
        "--check", help="Only validate an existing submission file against the example file.")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite an existing --out file.")] = False,
    model: ModelOpt = "auto",
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Write (and validate) the challenge txt file for the test set."""
    from abaw_kit.evaluate import check_file, make_submission

    ws = Workspace.resolve(work)
    if check is not None:
        result = check_file(check, ws)
        title = f"{check} is a valid submission"
    else:
        result = make_submission(ws, run=run, out=out, smooth=smooth, force=force,
                                 device=device, batch_size=batch_size, progress=not as_json,
                                 model=model)
        title = "submission written and validated"
    emit(result, as_json, kv_table(title, _flat(result)))


@app.command()
@user_errors
def predict(
    videos: Annotated[list[Path], typer.Argument(help="Video files (.mp4, .avi, ...).")],
    run: RunOpt = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out-dir", help="Where CSVs and PNGs go, one <name>.csv/.png per video (same-stem "
                          "videos get their parent folder's name in front) (default: "
                          "<work>/predictions).")] = None,
    smooth: Annotated[str | None, typer.Option(
        help="Smoothing (default: the run's choice); a window longer than the video is an "
             "error.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite CSVs and PNGs an earlier predict wrote.")] = False,
    detector: Annotated[str, typer.Option(help="Face detector.")] = DEFAULT_DETECTOR,
    detector_weights: Annotated[Path | None, typer.Option(help="Local detector weights.")] = None,
    detect_every: DetectEveryOpt = 1,
    detect_size: DetectSizeOpt = None,
    device: DeviceOpt = "auto",
    work: WorkOpt = None, as_json: JsonOpt = False, debug: DebugOpt = False,
) -> None:
    """Any video -> detect, align, classify, smooth -> per-frame CSV + PNG timeline."""
    from abaw_kit.predict import predict_videos

    ws = Workspace.resolve(work)
    result = predict_videos(ws, videos, run=run, out_dir=out_dir, smooth=smooth,
                            detector=detector, detector_weights=detector_weights,
                            detect_every=detect_every, detect_size=detect_size,
                            device=device, force=force,
                            progress=not as_json)
    table = rows_table("predictions", ["video", "frames", "frames with face", "csv", "timeline"],
                       [(item["video"], item["frames"], item["frames_with_face"], item["csv"],
                         item["timeline"]) for item in result["videos"]])
    emit(result, as_json, table)


def main() -> None:
    app()
