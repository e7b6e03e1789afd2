"""The ``ahnet`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import AhnetError, ConfigError


def _summary(args: argparse.Namespace) -> int:
    from .summary import summary_json, summary_text

    print(json.dumps(summary_json(), indent=2) if args.json else summary_text())
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import ROWS, format_predict_table, format_table, parse_size, run_bench, run_predict_bench

    if args.predict:
        if not args.image:
            raise ConfigError("--predict CHECKPOINT needs --image FILE, the volume to predict")
        if args.models or args.train_steps:
            raise ConfigError("--models and --train-steps time networks alone; --predict times whole predictions")
        window = parse_size(args.window, "--window") if args.window else None
        result = run_predict_bench(args.predict, args.image, args.gt, args.device,
                                   1 if args.repeats is None else args.repeats, window, progress=not args.quiet)
        print(format_predict_table(result))
    else:
        if args.image or args.gt or args.window:
            raise ConfigError("--image, --gt and --window go with --predict CHECKPOINT")
        rows = tuple(args.models.split(",")) if args.models else tuple(ROWS)
        train_sizes = tuple(parse_size(size) for size in args.train_sizes.split(","))
        result = run_bench(args.device, parse_size(args.size), 3 if args.repeats is None else args.repeats, rows,
                           args.train_steps, progress=not args.quiet, train_sizes=train_sizes)
        print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from .data.dataset import verify_dataset

    report = verify_dataset(args.dataset, progress=not args.quiet)
    print(report.text())
    return 0 if report.ok else 1


def _train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, Trainer

    given = {k: getattr(args, k) for k in args.given if k in TrainConfig.__dataclass_fields__ and k != "out"}
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues the run in --out with its own configuration; --config starts a "
                              "new run from a saved one")
        config = TrainConfig(data=args.data or "", out=args.out, device=args.device, workers=args.workers,
                             model=args.model)
    else:
        fields = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__ and v is not None}
        if args.config:  # a saved run's settings, then whatever this command line gives
            fields = {**_saved_config(args.config), **given, "out": args.out}
        if not fields.get("data"):
            raise ConfigError("--data is required (an nnU-Net-format data set folder)")
        if args.command == "train3d" and args.stage1_epochs is None:
            fields["stage1_epochs"] = args.epochs if args.init else 0
        if args.command == "train3d" and args.init:  # the transferred network decides what is not given
            from .training import load_checkpoint

            meta = load_checkpoint(args.init, kind="transfer")["model_meta"]
            for key in ("backbone", "preset"):
                fields.setdefault(key, meta[key])
        config = TrainConfig(**fields)
    result = Trainer(config, resume=args.resume, changes=given if args.resume else None).fit()
    if result.get("interrupted"):
        import signal

        print(f"ahnet {args.command}: interrupted by {result['interrupted']} in epoch {result['epochs']}; "
              f"checkpoint saved to {Path(args.out) / 'checkpoint_latest.pt'}; continue with --resume",
              file=sys.stderr)
        return 128 + int(signal.Signals[result["interrupted"]])
    best = result["best_metric"]
    validation = (f"best validation {best:.4f}" if math.isfinite(best)
                  else "no validation cases, checkpoint_best.pt is the last epoch")
    print(f"trained {result['epochs']} epoch(s); {validation}; checkpoints in {args.out}")
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from .training import transfer_checkpoint

    out = transfer_checkpoint(args.checkpoint, args.out, preset=args.preset)
    print(f"AH-Net ({args.preset}) with the transferred encoder written to {out}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .inference import predict
    from .tasks import task_for

    radius = args.nms_radius_mm[0] if len(args.nms_radius_mm) == 1 else tuple(args.nms_radius_mm)
    if not args.checkpoint:
        raise ConfigError("-m/--checkpoint CHECKPOINT is required (a checkpoint_best.pt of train2d / train3d)")
    from .pipeline import resolve_models, run_postprocessing

    largest = args.largest_component
    if largest is None:
        largest = bool(run_postprocessing(args.checkpoint).get("largest_component", False))
    result = predict(resolve_models(args.checkpoint), args.input, args.output, device=args.device, overlap=args.overlap,
                     batch_size=args.batch_size, mirror=args.mirror, save_probabilities=args.save_probabilities,
                     nms_radius_mm=radius, threshold=args.threshold, top_k=args.top_k, overwrite=args.overwrite,
                     max_memory=None if args.max_memory is None else args.max_memory * 2**30,
                     largest_component=largest)
    extra = task_for(result["task"]).predict_note(result)
    skipped = (f" ({result['skipped']} already predicted, kept; --overwrite redoes them)"
               if result.get("skipped") else "")
    print(f"predicted {result['cases']} case(s) into {result['out']}{skipped}{extra}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_model

    try:
        size = None if args.size is None else tuple(int(s) for s in args.size.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size must be like 96x96x32 (XxY for 2D networks), got {args.size!r}") from None
    result = export_model(args.checkpoint, args.format, args.out, size=size, batch=args.batch)
    shape = "x".join(map(str, result["input_shape"]))
    print(f"exported {result['network']} to {result['file']} ({result['format']}, input {shape}); "
          f"largest difference to the checkpoint {result['max_relative_difference']:.1e} (relative)")
    return 0


def _evaluate_seg(args: argparse.Namespace) -> int:
    from .evaluation.segmentation import evaluate_segmentation, resolve_classes

    classes, source = resolve_classes(args.classes, args.dataset, args.gt)
    print(f"classes from {source}: " + ", ".join(f"{k} = {list(v)}" for k, v in classes.items()), file=sys.stderr)
    result = evaluate_segmentation(args.pred, args.gt, json_out=args.json, csv_out=args.csv, classes=classes,
                                   surface_tolerance_mm=None if args.no_surface else args.surface_tolerance_mm)
    print(json.dumps({"dice_global": result.dice_global, "dice_per_case": result.dice_per_case}, indent=2))
    return 0


def _evaluate_det(args: argparse.Namespace) -> int:
    from .evaluation.detection import evaluate_detection

    result = evaluate_detection(args.pred, args.boxes, json_out=args.json, png_out=args.png)
    print(json.dumps({"froc": result["froc"], "lesions": result["lesions"], "volumes": result["volumes"]}, indent=2))
    return 0


def _report_seg(args: argparse.Namespace) -> int:
    from .evaluation.segmentation import resolve_classes
    from .report import segmentation_report

    classes, _ = resolve_classes(args.classes, args.dataset, args.gt)
    out = segmentation_report(args.images, args.pred, args.gt, args.out, classes=classes, max_cases=args.max_cases)
    print(f"report written to {out}")
    return 0


def _report_det(args: argparse.Namespace) -> int:
    from .report import detection_report

    out = detection_report(args.pred, args.boxes, args.out, max_cases=args.max_cases)
    print(f"report written to {out}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from .tasks import task_for

    make = task_for(args.kind).make_phantoms
    kwargs = {"shape": args.shape} if args.shape else {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. faint_fraction=0.5 or lesion_mm=5,20), got {item!r}")
        try:
            kwargs[key] = [float(v) for v in value.split(",")] if "," in value else float(value)
        except ValueError:
            raise ConfigError(f"--set {key}: {value!r} is not a number or a LOW,HIGH pair") from None
    out = make(args.out, cases=args.cases, seed=args.seed, progress=True, overwrite=args.overwrite, **kwargs)
    print(f"{args.cases} synthetic {args.kind} case(s) written to {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, task=args.task, scale=args.scale, device=args.device, seed=args.seed,
                       workers=args.workers)
    print(f"\nahnet demo finished in {summary['seconds'] / 60:.1f} min")
    for name, result in summary["tasks"].items():
        print(f"\n[{name}] report: {result['report']} ({result['held_out']})")
        for label, values in result["headline"].items():
            print(f"  {label:<24} " + ", ".join(f"{k}: {v:.3f}" for k, v in values.items()))
    print(f"\nsummary: {Path(args.out) / 'summary.json'}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .data.importer import add_case

    labels = [name.strip() for name in args.labels.split(",")] if args.labels else None
    case = add_case(args.dataset, args.image, args.label, case=args.case, labels=labels, modality=args.modality,
                    overwrite=args.overwrite, series=args.series)
    print(f"case {case!r} added to {args.dataset}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .pipeline import plan_dataset

    plan, path = plan_dataset(args.dataset, args.out, time_budget=args.time_budget, device=args.device,
                              work=args.work, ct_scheme=args.ct_normalisation, workers=args.workers,
                              folds=args.folds, progress=not args.quiet)
    a, m = plan["ahnet"], plan["mcgcn"]
    spacing = plan["spacing"]
    print(f"plan written to {path}: in-plane spacing {spacing['inplane']} mm, z "
          f"{spacing['z'] or 'kept'}; normalisation {', '.join(n['scheme'] for n in plan['normalisation'])}; "
          f"MC-GCN {m['backbone']} {'x'.join(map(str, m['patch']))} x {m['epochs']} epoch(s), AH-Net "
          f"{'x'.join(map(str, a['patch']))} x {a['stage1_epochs']} + {a['epochs']} epoch(s) of "
          f"{a['iters_per_epoch']} steps" + (f", per fold of {plan['folds']}" if plan["folds"] > 1 else ""))
    return 0


def _preprocess(args: argparse.Namespace) -> int:
    from .pipeline import plan_dataset, preprocess
    from .planning import read_plan

    if args.plan:
        plan = read_plan(args.plan)
    else:
        default = Path(args.work or Path(args.dataset) / "preprocessed") / "plans.json"
        plan = read_plan(default) if default.is_file() else plan_dataset(
            args.dataset, default, work=args.work, workers=args.workers, progress=not args.quiet)[0]
    report = preprocess(args.dataset, plan, work=args.work, workers=args.workers, progress=not args.quiet)
    print(report.text())
    return 0


def _train_run(args: argparse.Namespace) -> int:
    from .pipeline import train_run

    result = train_run(args.dataset, args.out, time_budget=args.time_budget, plan_file=args.plan,
                       pretrained=args.pretrained, device=args.device, work=args.work, workers=args.workers,
                       folds=args.folds, progress=not args.quiet)
    if result["interrupted"]:
        import signal

        print(f"ahnet train: interrupted by {result['interrupted']} in step {result['step']}; run the same "
              "command again to continue", file=sys.stderr)
        return 128 + int(signal.Signals[result["interrupted"]])
    what = (f"model {result['model']}" if result["model"] else
            f"{len(result['models'])} fold models, ensembled by predict")
    print(f"trained in {result['seconds'] / 60:.1f} min; {what} (predict with: ahnet predict -m {args.out} "
          "-i IMAGES -o OUT)")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from .experiments import run_experiment, summary_text

    summary = run_experiment(args.name, args.out, data=args.data, test=args.test, task=args.task, scale=args.scale,
                             device=args.device, seed=args.seed, seeds=args.seeds, workers=args.workers)
    print(f"\n{summary_text(summary)}")
    print(f"\n{Path(args.out) / 'results.md'}, {summary['plot']}")
    return 0


def _size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 96x96x32, got {text!r}") from None
    if len(size) == 2:
        size = (*size, 3)
    if len(size) != 3 or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 96x96x32, got {text!r}")
    return size


def _saved_config(path: str) -> dict:
    """The training settings of a run's config.json (or of a plain JSON object of them)."""
    from .training import TrainConfig

    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable JSON configuration ({type(err).__name__})") from None
    saved = saved.get("config", saved) if isinstance(saved, dict) else saved
    if not isinstance(saved, dict):
        raise ConfigError(f"{path}: expected a JSON object of training settings (a run's config.json)")
    unknown = sorted(set(saved) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{path}: unknown training settings {unknown}")
    return TrainConfig.from_dict(saved).to_dict()


def _window(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH in HU such as -125,225, got {text!r}") from None
    return lo, hi


def _add_train_arguments(p: argparse.ArgumentParser, dims: int) -> None:
    from .training.config import LR_SCHEDULES

    models = ("mc-gcn", "2d-unet") if dims == 2 else ("ahnet", "3d-unet")
    p.add_argument("--data", help="data set folder (nnU-Net v2 raw format, + boxesTr.json for detection)")
    p.add_argument("--out", required=True, help="run folder: config.json, checkpoints, metrics, curve")
    p.add_argument("--model", choices=models, default=models[0], help="the network to train")
    p.add_argument("--backbone", choices=("resnet18", "resnet34", "resnet50"),
                   help="ResNet encoder (default resnet50, or that of the --init checkpoint)")
    p.add_argument("--preset", choices=("paper", "released"),
                   help="network preset (default paper, or that of the --init checkpoint)")
    p.add_argument("--patch", type=_size, default=(128, 128, 3) if dims == 2 else (96, 96, 32),
                   help="patch size XxY (2D) or XxYxZ (3D); paper: 512x512, 256x256x32 DBT, 192x192x64 CT")
    p.add_argument("--batch-size", type=int, default=8 if dims == 2 else 2, help="patches per step")
    p.add_argument("--epochs", type=int, default=10,
                   help="epochs with all parameters trained" + ("" if dims == 2 else " (stage 2)"))
    p.add_argument("--iters-per-epoch", type=int, default=100, help="training steps per epoch")
    p.add_argument("--lr", type=float, default=5e-4 if dims == 2 else 1e-3, help="Adam learning rate (§4)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, help="constant (§4; the default) or poly: within each "
                   "stage the rate falls as lr * (1 - step / steps) ** 0.9, as nnU-Net trains")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the sampling and the weights")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers sampling patches")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="mixed precision on CUDA (auto: bf16 where supported)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (--epochs, --device, --workers, "
                        "--tensorboard, --lean-memory and --recompute may change; any other setting given must equal the run's)")
    p.add_argument("--config", metavar="JSON", help="start from the settings of a run's config.json; options given "
                                                     "here override them")
    p.add_argument("--lean-memory", action="store_true", default=None,
                   help="CPU: let freed memory go back to the system (about 0.7x the peak memory, steps up to "
                   "2-3x slower; docs/performance.md)")
    p.add_argument("--recompute", action="store_true", default=None,
                   help="AH-Net: keep only each block's input and run it again in the backward pass (the same "
                   "numbers on less memory, about 1.3x the step time; docs/performance.md)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write each epoch's losses and metrics to OUT/tensorboard (pip install tensorboard)")
    p.add_argument("--positive-ratio", type=float, default=0.7, help="share of patches on lesions (§4.1)")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no augmentation (default: the paper's rotations, scaling and mirroring, §4.2)")
    p.add_argument("--intensity-augment", action="store_true", default=None,
                   help="also change contrast, brightness and noise per patch, so that the model works on scans "
                   "of other contrast phases and scanners (on in `ahnet train`'s plans)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the cases held out for validation")
    p.add_argument("--val-patches", type=int, default=4, help="fixed validation patches per held-out case")
    p.add_argument("--bn-batches", type=int, default=None,
                   help="re-estimate the batch norms' statistics over this many fixed training batches at the end "
                   "of every epoch, before validation and the checkpoint (default 8; 0: keep running averages)")
    p.add_argument("--no-focal", dest="focal", action="store_false", default=None,
                   help="never switch to the focal loss")
    p.add_argument("--dice-loss", action="store_true", default=None,
                   help="segmentation: add a soft Dice term to the cross-entropy and to its focal form "
                   "(nnU-Net's Dice + CE; on in `ahnet train`'s plans for segmentation)")
    p.add_argument("--focal-gamma", type=float, default=2.0, help="gamma of the focal loss (Lin et al.; Eq. 4)")
    p.add_argument("--focal-d-max", type=float, default=1.0, help="D_max of Eq. 4 (heatmap regression)")
    p.add_argument("--switch-patience", type=int, default=3,
                   help="switch to the focal loss after this many epochs without improvement")
    p.add_argument("--switch-threshold", type=float, default=0.01, help="relative improvement that counts")
    p.add_argument("--switch-epoch", type=int, help="switch to the focal loss at this epoch instead")
    p.add_argument("--window", type=_window, help="CT HU window LOW,HIGH (default -125,225, §4.2)")
    p.add_argument("--inplane-spacing", type=float, help="resample X and Y to this spacing in mm")
    p.add_argument("--sigma-scale", type=float, default=0.25, help="heatmap sigma per box extent (Eq. 5)")
    if dims == 2:
        p.add_argument("--pretrained", metavar="imagenet|FILE",
                       help="ImageNet weights for mc-gcn's ResNet encoder (§3.1): 'imagenet' takes torchvision's "
                       "from torch hub's cache ($TORCH_HOME/hub/checkpoints, downloaded once if absent), FILE a "
                       "local torchvision-format state_dict; without it the encoder starts from random weights")
    else:
        p.add_argument("--init", help="transferred AH-Net checkpoint from `ahnet transfer`")
        p.add_argument("--stage1-epochs", type=int,
                       help="epochs with the transferred encoder frozen (§3.4; default: --epochs with --init)")


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text and action.default not in (None, False)
                and action.default is not argparse.SUPPRESS and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from .evaluation.detection import NMS_RADIUS_MM, NMS_THRESHOLD, NMS_TOP_K
    from .evaluation.segmentation import SURFACE_TOLERANCE_MM
    from .experiments import SCALES

    from . import __version__

    parser = argparse.ArgumentParser(prog="ahnet", description="3D Anisotropic Hybrid Network (AH-Net) toolkit")
    parser.add_argument("--version", action="version", version=f"ahnet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    summary = commands.add_parser("summary", help="conv layers and parameters of every network (Table 2)")
    summary.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    summary.set_defaults(run=_summary)

    bench = commands.add_parser("bench", help="Table 3: forward time, FLOP/s and peak memory of every network")
    bench.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (bf16 autocast on CUDA)")
    bench.add_argument("--size", default="384x256x64", help="volume XxYxZ (Table 3: 384x256x64)")
    bench.add_argument("--repeats", type=int, help="timed forwards per model, after one warm-up (default 3); "
                       "with --predict, whole predictions per pipeline (default 1)")
    bench.add_argument("--models", help="comma-separated rows of the table to run (default all; a wrong name "
                       "lists them)")
    bench.add_argument("--train-steps", type=int, default=0,
                       help="also time this many training steps (forward, backward, Adam; batch 2) of each AH-Net "
                       "row, ours and MONAI's, at each --train-sizes, with peak memory")
    bench.add_argument("--train-sizes", default="96x96x16,192x192x64",
                       help="patch sizes of the training rows (the demo's and the paper's CT patch)")
    bench.add_argument("--json", help="write the results here")
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    bench.add_argument("--predict", metavar="CHECKPOINT",
                       help="instead: `ahnet predict` end to end with this checkpoint (as predict -m), ours against "
                       "MONAI's AHNet with the same weights; labels compared")
    bench.add_argument("--image", metavar="FILE", help="--predict: the NIfTI volume to predict")
    bench.add_argument("--gt", metavar="FILE", help="--predict: its ground-truth labels, for each pipeline's Dice")
    bench.add_argument("--window", metavar="XxYxZ", help="--predict: sliding window (default the training patch); "
                       "MONAI's AHNet computes ours on X, Y multiples of 128 (four pyramid pools) and Z of 32")
    bench.set_defaults(run=_bench)

    demo = commands.add_parser("demo", help="the whole method on built-in synthetic data (about 8 min on a 2-core CPU)")
    demo.add_argument("--out", default="ahnet-demo", help="output folder (default ./ahnet-demo)")
    demo.add_argument("--task", choices=("seg", "det", "both"), default="both",
                      help="CT-like segmentation, DBT-like detection, or both")
    demo.add_argument("--scale", choices=("cpu", "gpu", "tiny"), default="cpu",
                      help="cpu: about 7 min on 2 cores (default); gpu: larger data and networks; tiny: a smoke test")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    demo.add_argument("--seed", type=int, default=0, help="seeds the phantoms and the training")
    demo.add_argument("--workers", type=int, default=2, help="DataLoader workers sampling patches")
    demo.set_defaults(run=_demo)

    experiment = commands.add_parser("experiment", help="rerun a comparison of the paper (table4, table5, "
                                     "ablations; Table 3 is `ahnet bench`)")
    experiment.add_argument("name", choices=("table4", "table5", "ablations"), help="which comparison")
    experiment.add_argument("--out", required=True, help="output folder (rerunning it skips finished networks)")
    experiment.add_argument("--data", help="training data set (default: built-in phantoms)")
    experiment.add_argument("--test", help="held-out data set with labels or boxes (with --data)")
    experiment.add_argument("--task", choices=("seg", "det"), help="phantom task of the ablations (default seg)")
    experiment.add_argument("--scale", choices=("cpu", "gpu", "tiny"), default="cpu",
                            help="data and training sizes (as for ahnet demo)")
    experiment.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    experiment.add_argument("--seed", type=int, default=0, help="seeds the phantoms and the first training")
    experiment.add_argument("--seeds", type=int, metavar="N",
                            help="trainings of each network, with seeds SEED, SEED+1, ...: every number gets a 95%% "
                            "interval over test cases and seeds (default: "
                            + ", ".join(f"{s.seeds} at {name}" for name, s in SCALES.items()) + ")")
    experiment.add_argument("--workers", type=int, default=2, help="DataLoader workers sampling patches")
    experiment.set_defaults(run=_experiment)

    synth = commands.add_parser("synth", help="write a synthetic anisotropic data set (CT-like or DBT-like)")
    synth.add_argument("kind", choices=("seg", "det"), help="seg: CT-like liver/lesion; det: DBT-like boxes")
    synth.add_argument("--out", required=True, help="data set folder to write")
    synth.add_argument("--cases", type=int, default=8, help="how many cases to write")
    synth.add_argument("--seed", type=int, default=0, help="seeds the phantoms")
    synth.add_argument("--shape", type=_size, help="array size XxYxZ (Z = slices); default 128x128x32 (seg), "
                       "128x128x40 (det)")
    synth.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a phantom setting, e.g. faint_fraction=0.5 or lesion_mm=5,20 (docs/synthetic.md)")
    synth.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic data set in --out")
    synth.set_defaults(run=_synth)

    imp = commands.add_parser("import", help="add a NIfTI image or DICOM series (and label) to a data set as a new "
                              "case")
    imp.add_argument("dataset", help="data set folder (created with its dataset.json if absent)")
    imp.add_argument("--image", required=True, help="3D NIfTI image, or a folder holding a DICOM series "
                     "(pip install 'ahnet[dicom]')")
    imp.add_argument("--label", help="its label map (same grid; NIfTI or a DICOM series folder)")
    imp.add_argument("--series", metavar="UID", help="the DICOM series (Series Instance UID) to import when the "
                     "--image folder holds several; the error without it lists them")
    imp.add_argument("--case", help="case name (default: the image's file or folder name)")
    imp.add_argument("--labels", help="names of the label values 0,1,..., e.g. background,liver,lesion (new data set)")
    imp.add_argument("--modality", default="CT", help="channel name; CT gets HU windowing (default CT)")
    imp.add_argument("--overwrite", action="store_true", help="replace a case of the same name")
    imp.set_defaults(run=_import)

    verify = commands.add_parser("verify", help="check a data set's files before training")
    verify.add_argument("dataset", help="data set folder")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(run=_verify)

    def planning_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--work", metavar="DIR", help="where fingerprint, plans and preprocessed cases live "
                       "(default: DATASET/preprocessed)")
        p.add_argument("--workers", type=int, default=2, help="cases prepared in parallel")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    plan = commands.add_parser("plan", help="derive the training recipe (plans.json) from the data and a time budget")
    plan.add_argument("dataset", help="data set folder (nnU-Net v2 raw format)")
    plan.add_argument("--time-budget", metavar="DURATION",
                      help="training time on this machine, e.g. 30m or 12h: sets the iterations from measured steps")
    plan.add_argument("-o", "--out", help="plan file to write (default: WORK/plans.json)")
    plan.add_argument("--folds", type=int, default=1, metavar="K",
                      help="K-fold cross-validation (K runs share the time budget; default 1: no folds)")
    plan.add_argument("--device", default="auto", help="the device the plan is for: auto, cpu or cuda")
    plan.add_argument("--ct-normalisation", choices=("ct", "liver-window", "zscore"), default="ct",
                      help="CT channels: clip to the foreground's 0.5-99.5 percentiles and z-score (ct, as nnU-Net), "
                      "the paper's -125..225 HU window (liver-window), or a z-score per case")
    planning_options(plan)
    plan.set_defaults(run=_plan)

    prep = commands.add_parser("preprocess", help="prepare every case once (memory-mapped) for training")
    prep.add_argument("dataset", help="data set folder (nnU-Net v2 raw format)")
    prep.add_argument("--plan", help="plans.json to follow (default: WORK/plans.json, written by `ahnet plan` if absent)")
    planning_options(prep)
    prep.set_defaults(run=_preprocess)

    train = commands.add_parser("train", help="the whole procedure in one command: plan, preprocess, MC-GCN, "
                                "transfer, AH-Net (resumable)")
    train.add_argument("dataset", help="data set folder (nnU-Net v2 raw format, + boxesTr.json for detection)")
    train.add_argument("--out", required=True, help="run folder (the same command again continues the run)")
    train.add_argument("--time-budget", metavar="DURATION",
                       help="training time, e.g. 30m on a CPU or 12h on a GPU (default 30m, for a new plan)")
    train.add_argument("--plan", help="a plans.json to follow instead of planning (copied into the run)")
    train.add_argument("--folds", type=int, metavar="K",
                       help="K-fold cross-validation: K runs that share the time budget, each validated on its fold; "
                       "predict -m RUN averages the K models (K times the prediction time)")
    train.add_argument("--pretrained", metavar="imagenet|FILE", help="ImageNet weights for MC-GCN's encoder (§3.1)")
    train.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    planning_options(train)
    train.set_defaults(run=_train_run)

    train2d = commands.add_parser("train2d", help="train MC-GCN (or the 2D U-Net) on 3-slice stacks")
    _add_train_arguments(train2d, 2)
    train2d.set_defaults(run=_train)

    transfer = commands.add_parser("transfer", help="MC-GCN checkpoint to AH-Net checkpoint (Eq. 1-3)")
    transfer.add_argument("checkpoint", help="an mc-gcn checkpoint from train2d")
    transfer.add_argument("--out", required=True, help="the AH-Net checkpoint to write")
    transfer.add_argument("--preset", choices=("paper", "released"), default="paper",
                          help="the AH-Net preset to transfer into (docs/presets.md)")
    transfer.set_defaults(run=_transfer)

    train3d = commands.add_parser("train3d", help="train AH-Net (two stages) or the 3D U-Net on 3D patches")
    _add_train_arguments(train3d, 3)
    train3d.set_defaults(run=_train)

    predict = commands.add_parser("predict", help="predict whole volumes with a trained checkpoint")
    predict.add_argument("-m", "--checkpoint",
                         help="training checkpoint (checkpoint_best.pt) or an `ahnet train` run folder; --model, its "
                         "old name, still works")
    predict.add_argument("--model", dest="checkpoint", help=argparse.SUPPRESS)  # --model is an architecture elsewhere
    predict.add_argument("-i", "--input", required=True, help="a NIfTI file or a folder ({case}_0000.nii.gz)")
    predict.add_argument("-o", "--out", "--output", dest="output", required=True, metavar="OUT",
                         help="output folder (--out, as in every command; --output still works)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--overlap", type=float, default=0.5, help="overlap of neighbouring windows")
    predict.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    predict.add_argument("--mirror", action="store_true", help="test-time mirroring in x and y")
    predict.add_argument("--save-probabilities", action="store_true", help="also write class probabilities")
    predict.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                         help="segmentation: keep only the largest connected foreground component (default: as the "
                         "plan of an `ahnet train` run folder says, else off)")
    predict.add_argument("--nms-radius-mm", type=float, nargs="+", default=[NMS_RADIUS_MM],
                         help="detection: NMS neighbourhood radius in mm (one value, or one per file axis)")
    predict.add_argument("--threshold", type=float, default=NMS_THRESHOLD, help="detection: minimum score")
    predict.add_argument("--top-k", type=int, default=NMS_TOP_K, help="detection: at most this many per case")
    predict.add_argument("--overwrite", action="store_true",
                         help="predict again cases whose outputs exist (default: keep them, e.g. after a crash)")
    predict.add_argument("--max-memory", type=float, metavar="GB",
                         help="refuse volumes whose prediction would need more memory (default: what is available)")
    predict.set_defaults(run=_predict)

    export = commands.add_parser("export", help="a checkpoint as a TorchScript or ONNX file, checked against it")
    export.add_argument("checkpoint", help="training checkpoint (checkpoint_best.pt)")
    export.add_argument("--format", required=True, choices=("torchscript", "onnx"), help="file format")
    export.add_argument("-o", "--out", required=True, help="file to write (.pt for TorchScript, .onnx)")
    export.add_argument("--size", help="input size XxYxZ (XxY for 2D networks) the model is traced at "
                        "(default: the training patch, the sliding window's size)")
    export.add_argument("--batch", type=int, default=1, help="windows per call of the exported model")
    export.set_defaults(run=_export)

    evaluate = commands.add_parser("evaluate", help="Dice (seg) or FROC (det) of predictions")
    kinds = evaluate.add_subparsers(dest="kind", required=True, metavar="seg|det")
    seg = kinds.add_parser("seg", help="Dice global and per case of the data set's classes")
    seg.add_argument("--pred", required=True, help="folder of predicted {case}.nii.gz")
    seg.add_argument("--gt", required=True, help="folder of ground-truth {case}.nii.gz")
    seg.add_argument("--json", help="write the result here")
    seg.add_argument("--csv", help="write per-case Dice here")
    seg.add_argument("--classes", help="'lits' (liver = labels 1+2, lesion = 2, as Table 5) or JSON {name: [label values]}; "
                                       "default: the labels of the data set's dataset.json")
    seg.add_argument("--dataset", help="the data set whose dataset.json names the classes (default: the folder "
                                       "holding --gt)")
    seg.add_argument("--surface-tolerance-mm", type=float, default=SURFACE_TOLERANCE_MM, metavar="MM",
                     help="surface Dice counts surface points this close to the other surface (default: %(default)s)")
    seg.add_argument("--no-surface", action="store_true",
                     help="skip HD95 and surface Dice (distance maps: slower than Dice on large volumes)")
    det = kinds.add_parser("det", help="FROC: TPR at 0.01-0.25 (and 1, 2, 4) false positives per volume")
    det.add_argument("--pred", required=True, help="detections.csv from ahnet predict")
    det.add_argument("--boxes", required=True, help="boxes JSON (boxesTr.json format)")
    det.add_argument("--json", help="write the result here")
    det.add_argument("--png", help="write the FROC curve here")
    seg.set_defaults(run=_evaluate_seg)
    det.set_defaults(run=_evaluate_det)

    report = commands.add_parser("report", help="one self-contained HTML page: metrics and pictures")
    report_kinds = report.add_subparsers(dest="kind", required=True, metavar="seg|det")
    seg_report = report_kinds.add_parser("seg", help="Dice tables and 3-view overlays per case")
    seg_report.add_argument("--images", required=True, help="the images that were predicted")
    seg_report.add_argument("--pred", required=True, help="folder of predicted {case}.nii.gz")
    seg_report.add_argument("--gt", required=True, help="folder of ground-truth {case}.nii.gz")
    seg_report.add_argument("--classes", help="'lits' or JSON {name: [label values]}; default: the labels of the "
                                              "data set's dataset.json")
    seg_report.add_argument("--dataset", help="the data set whose dataset.json names the classes (default: the "
                                              "folder holding --gt)")
    det_report = report_kinds.add_parser("det", help="FROC table and curve, heatmap MIPs per case")
    det_report.add_argument("--pred", required=True, help="ahnet predict output folder (detections.csv, heatmaps)")
    det_report.add_argument("--boxes", required=True, help="boxes JSON (boxesTr.json format)")
    for sub in (seg_report, det_report):
        sub.add_argument("--out", required=True, help="the HTML file to write")
        sub.add_argument("--max-cases", type=int, default=12, help="cases with pictures")
    seg_report.set_defaults(run=_report_seg)
    det_report.set_defaults(run=_report_det)
    _set_formatter(parser)
    return parser


def _given_options(argv: list[str] | None, command: str) -> set[str]:
    """The options the user actually typed (argparse fills in every default), so that --resume
    and --config can tell a changed setting from a default."""
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    sub._defaults.clear()
    return set(vars(parser.parse_args(argv))) - {"command"}


def _set_formatter(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = _HelpWithDefaults
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _set_formatter(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.given = _given_options(argv, args.command)
    try:
        return args.run(args)
    except AhnetError as err:
        print(f"ahnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the environment (permissions, a full disk, ...), not a bug: no traceback
        from .fileio import describe_os_error

        where = f"{err.filename}: " if err.filename else ""
        print(f"ahnet {args.command}: error: {where}{describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ahnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
