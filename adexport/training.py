"""The training loop of trained networks (RD4AD, RIAD, CutPaste, PRNet), written once.

Bank methods (PatchCore, PaDiM, SPADE) never come here: their fit is one pass of a function.

What every trained method shares:

- :class:`TrainingOptions`: epochs, batch size, optimiser, learning rate and schedule, checkpoint
  interval, seed. A method's config dataclass inherits it (and may change the defaults), so
  ``adx train --set lr=0.001`` and ``adx methods NAME`` see these options like any other.
- :class:`EpochDataset`: the training images decoded and brought to the model's geometry once
  (kept in memory as uint8), then every epoch a seeded shuffle, an optional augmentation step on
  the uint8 arrays, and the runtime's own normalisation. Preprocessing stays one implementation
  (``adx_runtime.preprocess``), used in its two public halves with augmentation between them.
- :func:`train_network`: optimiser and schedule from the options, a progress bar with epoch, loss
  and time left, the mean loss per epoch (the fit report's loss history, drawn as
  ``loss_curve.png`` in the model folder), atomic checkpoints every N epochs, ``--resume``, a
  checkpoint on Ctrl-C, and any torch device.
- :func:`fit_network`: what a trained method's ``fit`` does around that loop, written once: the
  run's identity for checkpoints, the ``training`` phase of the fit clock, and (through
  :meth:`NetworkFit.record`) the fit report's shared lines (images, skipped files, epochs, trained
  parameters, loss history).

Determinism: every random draw of epoch ``e`` comes from generators seeded with ``(seed, e)``
(numpy for the shuffle and augmentation, torch for what the loss draws, e.g. RIAD's masks), so a
run resumed from the checkpoint of epoch ``e`` continues exactly as the uninterrupted run would.
A loss function must draw only from the generator it is given.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from adx_runtime.datasets import Sample
from adx_runtime.errors import ConfigError, ImageDecodeError, Interrupted
from adx_runtime.images import decode_image
from adexport.data import working_tiles_source
from adx_runtime.preprocess import PreprocessConfig, geometric_array, normalise_pixels
from adx_runtime.progress import SILENT, Progress
from adx_runtime.tiling import tile_layout

if TYPE_CHECKING:  # adexport.methods imports this module: its trained configs inherit TrainingOptions
    from adexport.methods.base import FittedMethod
    from adexport.methods.fit_report import PhaseClock

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
CHECKPOINT_FORMAT = "adexport-training-checkpoint"

#: ``augment(images (B, H, W, C) uint8, rng) -> {"image": (B', H, W, C) uint8, other arrays...}``.
#: Arrays other than ``image`` (labels, masks) are passed to the loss as tensors unchanged.
Augment = Callable[[np.ndarray, np.random.Generator], dict[str, np.ndarray]]
#: ``loss_fn(model, batch, generator) -> scalar loss``; ``batch["image"]`` is ``(B, C, H, W)``.
LossFn = Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator], torch.Tensor]
#: The method's fitted class, handed back by :meth:`NetworkFit.record` with its report filled in.
Fitted = TypeVar("Fitted", bound="FittedMethod")


@dataclass
class TrainingOptions:
    """Options of the shared training loop; trained methods' configs inherit them."""

    epochs: int = 20  # passes over the training images
    batch_size: int = 16  # images per optimiser step (before augmentation)
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3  # learning rate at the start of the schedule
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # L2 penalty of the optimiser
    schedule: str = "constant"  # constant | cosine (decays to 0 over the epochs)
    checkpoint_every: int = 5  # epochs between checkpoints (0: only on Ctrl-C)
    seed: int = 0  # weights, shuffling, augmentation and masks

    #: Valid ranges, checked by ``check_options`` (adexport.methods.options) with the subclass's own.
    LIMITS: ClassVar[dict[str, str]] = {
        "epochs": ">= 1", "batch_size": ">= 1", "lr": "> 0", "betas": "in [0, 1)", "momentum": "in [0, 1)",
        "weight_decay": ">= 0", "checkpoint_every": ">= 0", "seed": "seed"}

    def __post_init__(self) -> None:
        # Imported here: adexport.methods imports this module (its trained configs inherit this class).
        from adexport.methods.options import check_options  # noqa: PLC0415

        check_options(self)  # types, finite numbers and every range in LIMITS, the subclass's included
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer {self.optimizer!r} is not known; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule {self.schedule!r} is not known; valid: {', '.join(SCHEDULES)}")


@dataclass
class TrainingRun:
    """Where a run keeps its checkpoint and whether it starts from it."""

    checkpoint: Path | None = None  # the checkpoint file (written atomically)
    resume: bool = False  # continue from ``checkpoint``


class TrainingInterrupted(Interrupted):
    """Ctrl-C during training; a checkpoint of the last finished epoch was written."""


def checkpoint_path(out: str | Path) -> Path:
    """The checkpoint file that goes with a model folder ``out``: ``out.checkpoint.pt`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.name}.checkpoint.pt")


# ------------------------------------------------------------------------------------- data
class EpochDataset:
    """Training images held in memory at the model's geometry, served as seeded epochs.

    ``images``: ``(N, H, W, C)`` uint8, the first half of the runtime's preprocessing, done once.

    A tiled input contract keeps each image once at its working size (uint8: a 1024 x 1024 RGB
    image is 3 MB, a 12-MP one 36 MB) and serves its tiles, cut on the fly by the runtime's layout:
    an epoch is every tile of every image, so the cache holds pixels once, not once per overlapping
    tile. ``tiles[i] = (image, y, x)``.
    """

    def __init__(self, samples: Sequence[Sample], preprocess: PreprocessConfig, *, augment: Augment | None = None,
                 progress: Progress = SILENT):
        self.preprocess = preprocess
        self.augment = augment
        arrays, self.skipped = [], []
        tiled = preprocess.tiling is not None
        with progress.task("Reading training images into memory", len(samples)) as advance:
            for s in samples:
                try:
                    arrays.append(working_tiles_source(s.path, preprocess) if tiled
                                  else geometric_array(decode_image(s.path), preprocess))
                except ImageDecodeError as exc:
                    self.skipped.append((exc.path, exc.reason))
                    progress.note(f"skipped {exc.path}: {exc.reason}")
                advance(1)
        if not arrays:
            raise ConfigError("none of the training images could be decoded; see the messages above")
        if tiled:
            self.sources = arrays
            self.tiles = np.array([(i, y, x) for i, a in enumerate(arrays)
                                   for y, x in tile_layout(a.shape[:2], preprocess).offsets()], np.int64)
            self.images = None
        else:
            self.images = np.stack(arrays)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the in-memory pixel cache."""
        return self.images.nbytes if self.images is not None else sum(a.nbytes for a in self.sources)

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.tiles)

    def raw(self, index: np.ndarray) -> np.ndarray:
        """``(k, H, W, C)`` uint8 items (images, or tiles of a tiled contract) at ``index``."""
        if self.images is not None:
            return self.images[index]
        th, tw = self.preprocess.input_size
        return np.stack([self.sources[i][y:y + th, x:x + tw] for i, y, x in self.tiles[index]])

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches only (a last batch of one would upset batch norm), at least one."""
        return max(1, len(self) // batch_size)

    def batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(self))
        size = min(batch_size, len(self))
        for step in range(self.steps_per_epoch(batch_size)):
            raw = self.raw(order[step * size:(step + 1) * size])
            arrays = self.augment(raw, rng) if self.augment else {"image": raw}
            batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if k != "image"}
            batch["image"] = torch.from_numpy(np.stack([normalise_pixels(a, self.preprocess) for a in arrays["image"]]))
            yield batch


# ------------------------------------------------------------------------------------- loop
def learning_rate(options: TrainingOptions, epoch: int) -> float:
    """The learning rate during epoch ``epoch`` (0-based)."""
    if options.schedule == "cosine":
        return options.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / options.epochs))
    return options.lr


def make_optimizer(params: Sequence[nn.Parameter], options: TrainingOptions) -> torch.optim.Optimizer:
    if options.optimizer == "adam":
        return torch.optim.Adam(params, lr=options.lr, betas=tuple(options.betas), weight_decay=options.weight_decay)
    return torch.optim.SGD(params, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0]))


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[float],
              identity: dict[str, Any]) -> dict[str, Any]:
    """Everything a resume needs, copied to the CPU (the live tensors keep changing)."""
    return {"format": CHECKPOINT_FORMAT, "epoch": epoch, "history": list(history), "identity": identity,
            "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            "optimizer": copy.deepcopy(_to_cpu(optimizer.state_dict()))}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _write_checkpoint(path: Path, snapshot: dict[str, Any]) -> None:
    """Atomic: a temporary file beside ``path``, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(snapshot, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path, identity: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                     options: TrainingOptions) -> tuple[list[float], int]:
    """Read and check a checkpoint in full, then load it into ``model`` and ``optimizer``.

    Returns ``(history, epoch)``. Everything is checked before anything is loaded or trained, so a
    damaged file stops the run with one message instead of a traceback later, or a model folder
    written from nonsense.
    """
    if not path.is_file():
        raise ConfigError(f"--resume: there is no checkpoint {str(path)!r}; start the run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}); delete it and start again") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{str(path)!r} is not an adexport training checkpoint; delete it or move it away, or run "
                          "without --resume to start again")

    def damaged(what: str) -> ConfigError:
        return ConfigError(f"checkpoint {str(path)!r} is damaged: {what}; delete it, or run without --resume to "
                           "start again (it is then replaced)")

    missing = [k for k in ("identity", "epoch", "history", "model", "optimizer") if k not in state]
    if missing:
        raise damaged(f"it has no {', '.join(missing)}")
    if not isinstance(state["identity"], dict):
        raise damaged(f"its run identity is a {type(state['identity']).__name__}, not a mapping")
    if state["identity"] != identity:
        raise ConfigError(f"checkpoint {str(path)!r} belongs to a different run: "
                          f"{_identity_difference(state['identity'], identity)}; resume with the same method, options "
                          "and training data, or start fresh without --resume (which replaces the checkpoint)")
    epoch = state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise damaged(f"its epoch is {epoch!r}, not a whole number >= 1 (a checkpoint is written after an epoch)")
    if epoch >= options.epochs:
        raise ConfigError(f"the checkpoint has already finished {epoch} epochs; ask for more with --set epochs=N")
    history = state["history"]
    if not (isinstance(history, list) and len(history) == epoch
            and all(isinstance(h, (int, float)) and not isinstance(h, bool) and math.isfinite(h) for h in history)):
        shown = repr(history) if len(repr(history)) < 60 else f"a {type(history).__name__}"
        raise damaged(f"its history (the mean loss per epoch) is {shown}, not a list of {epoch} finite numbers")
    problem = _state_dict_problem(state["model"], model.state_dict())
    if problem:
        raise damaged(f"its weights do not fit this model ({problem})")
    problem = _optimizer_problem(state["optimizer"], optimizer)
    if problem:
        raise damaged(f"its optimizer state does not fit this model ({problem})")
    try:  # checked above; a failure here is one more kind of damage, still reported in one line
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise damaged(f"it cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return [float(h) for h in history], epoch


def _identity_difference(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """What differs between two run identities, in words (method, the option names, the data)."""
    parts = []
    for key in sorted(set(saved) | set(current), key=str):  # a damaged file may hold keys of any type
        a, b = saved.get(key), current.get(key)
        if a == b:
            continue
        if key == "options" and isinstance(a, dict) and isinstance(b, dict):
            names = sorted((k for k in set(a) | set(b) if a.get(k) != b.get(k)), key=str)
            parts.append(f"options {', '.join(map(str, names))} (checkpoint: "
                         + ", ".join(f"{k}={a.get(k)!r}" for k in names[:4]) + ")")
        elif key == "data" and isinstance(a, dict) and isinstance(b, dict):
            if a.get("category") != b.get("category"):
                parts.append(f"training data: category {a.get('category')!r} in the checkpoint, "
                             f"{b.get('category')!r} now")
            else:
                parts.append(f"training data: {a.get('images')} images in the checkpoint, {b.get('images')} now, "
                             "not the same files (by content)")
        elif key == "method":
            parts.append(f"method {a!r} in the checkpoint, {b!r} now")
        else:
            parts.append(f"{key}")
    return "it differs in " + "; ".join(parts)


def _state_dict_problem(saved: Any, expected: dict[str, torch.Tensor]) -> str | None:
    """Why ``saved`` cannot be this model's state (keys, tensor types, shapes, NaN), or None."""
    if not isinstance(saved, dict):
        return f"a {type(saved).__name__} where a state dict belongs"
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        return "; ".join(filter(None, [f"missing {', '.join(missing[:3])}" if missing else "",
                                       f"unexpected {', '.join(map(str, extra[:3]))}" if extra else ""]))
    for key, want in expected.items():
        got = saved[key]
        if not isinstance(got, torch.Tensor) or got.shape != want.shape or got.dtype != want.dtype:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"{key} is {shape}, the model has {tuple(want.shape)} {want.dtype}"
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            return f"{key} holds NaN or infinite values"
    return None


def _optimizer_problem(saved: Any, optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``saved`` cannot be ``optimizer``'s state: its groups, and each moment's shape, or None."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        return "not an optimizer state"
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups) or any(
            not isinstance(s, dict) or not isinstance(s.get("params"), list) or len(s["params"]) != len(g["params"])
            for s, g in zip(saved["param_groups"], groups)):
        return "its parameter groups differ from the model's trainable parameters"
    params = {pid: p for s, g in zip(saved["param_groups"], groups) for pid, p in zip(s["params"], g["params"])}
    for pid, entry in saved["state"].items():
        if pid not in params or not isinstance(entry, dict):
            return f"state for an unknown parameter {pid!r}"
        for name, value in entry.items():
            if not isinstance(value, torch.Tensor):
                continue
            if name != "step" and value.shape != params[pid].shape:
                return f"{name} of parameter {pid} is {tuple(value.shape)}, the parameter {tuple(params[pid].shape)}"
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                return f"{name} of parameter {pid} holds NaN or infinite values"
    return None


def train_network(
    model: nn.Module,
    loss_fn: LossFn,
    data: EpochDataset,
    options: TrainingOptions,
    *,
    identity: dict[str, Any],
    device: str = "cpu",
    run: TrainingRun | None = None,
    progress: Progress = SILENT,
    description: str = "Training",
) -> list[float]:
    """Train ``model``'s parameters that require gradients; returns the mean loss of every epoch.

    Args:
        identity: what a checkpoint must match to be resumed (:func:`run_identity`: method, options
            other than epochs, the training images by category and content); stored in every checkpoint.
        run: checkpoint file and resume flag; ``None`` trains without checkpoints.

    Raises:
        TrainingInterrupted: on Ctrl-C, after writing a checkpoint of the last finished epoch.
    """
    run = run or TrainingRun()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    optimizer = make_optimizer(params, options)
    history: list[float] = []
    start = 0
    if run.resume:
        if run.checkpoint is None:
            raise ConfigError("--resume needs a checkpoint file")
        history, start = _load_checkpoint(run.checkpoint, identity, model, optimizer, options)
        progress.note(f"resuming from epoch {start} of {options.epochs} ({run.checkpoint})")
    model.to(device)
    for s in optimizer.state.values():  # a resumed optimizer's moments follow the model's device
        for k, v in s.items():
            if isinstance(v, torch.Tensor) and k != "step":
                s[k] = v.to(device)
    steps = data.steps_per_epoch(options.batch_size)
    epoch = start
    boundary = _snapshot(model, optimizer, start, history, identity) if run.checkpoint else None
    try:
        with progress.task(f"{description}: {options.epochs} epochs x {steps} steps", (options.epochs - start) * steps) as advance:
            for epoch in range(start, options.epochs):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(options, epoch)
                generator = _epoch_generator(options.seed, epoch)
                model.train()
                total, count = 0.0, 0
                for batch in data.batches(epoch, options.batch_size, options.seed):
                    batch = {k: v.to(device) for k, v in batch.items()}
                    loss = loss_fn(model, batch, generator)
                    if not torch.isfinite(loss):
                        raise ConfigError(f"the training loss became {loss.item()} at epoch {epoch + 1}; "
                                          "lower the learning rate (--set lr=...)")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(batch["image"])
                    count += len(batch["image"])
                    advance(1)
                history.append(total / count)
                advance(0, description=f"{description}: epoch {epoch + 1}/{options.epochs}, loss {history[-1]:.4f}")
                done = epoch + 1
                if run.checkpoint and done < options.epochs:
                    boundary = _snapshot(model, optimizer, done, history, identity)
                    if options.checkpoint_every and done % options.checkpoint_every == 0:
                        _write_checkpoint(run.checkpoint, boundary)
    except KeyboardInterrupt:
        model.eval()
        if run.checkpoint is None or boundary is None:
            raise
        if not boundary["history"]:
            raise TrainingInterrupted(f"training interrupted in epoch 1 of {options.epochs}, before any epoch "
                                      "finished; nothing to resume, start again") from None
        # The state at the last epoch boundary, not the half-trained weights: resuming replays the
        # unfinished epoch from its own seed, exactly as the uninterrupted run does.
        _write_checkpoint(run.checkpoint, boundary)
        raise TrainingInterrupted(
            f"training interrupted in epoch {epoch + 1} of {options.epochs}; a checkpoint is in "
            f"{run.checkpoint}. Run the same `adx train` command with --resume to go on from there."
        ) from None
    model.eval()
    model.cpu()
    return history


@dataclass
class NetworkFit:
    """What :func:`fit_network` trained: the loss per epoch, the training images, the sizes."""

    history: list[float]  # mean training loss per epoch
    data: EpochDataset  # the training images the loop served (and those it skipped)
    parameters: int  # trained parameters (those that require gradients)
    epochs: int

    def record(self, fitted: Fitted, clock: "PhaseClock", *, sizes: Mapping[str, int] | None = None,
               notes: Sequence[str] = ()) -> Fitted:
        """Fill ``fitted.report`` with the clock's phases and the lines every trained method shares,
        then the method's own ``sizes`` and ``notes``."""
        from adexport.methods.fit_report import record_fit  # noqa: PLC0415  (see TYPE_CHECKING above)

        return record_fit(fitted, clock, fit_images=len(self.data), skipped=self.data.skipped,
                          sizes={"epochs": self.epochs, "parameters": self.parameters, **(sizes or {})},
                          loss_history=self.history, notes=notes)


def fit_network(method: str, model: nn.Module, loss_fn: LossFn, data: EpochDataset, config: TrainingOptions,
                samples: Sequence[Sample], *, clock: "PhaseClock", device: str = "cpu", run: TrainingRun | None = None,
                progress: Progress = SILENT, description: str = "Training") -> NetworkFit:
    """Train ``model`` by :func:`train_network` as one run of ``method`` and close the clock's
    ``training`` phase.

    The run's identity (what a ``--resume`` checkpoint must match) is ``method``, ``config`` and
    ``samples``, the images ``data`` was read from. ``model`` is counted after training: its
    parameters that require gradients are the fit report's ``parameters``.
    """
    # The identity hashes every training file, and only a checkpoint (written or resumed) reads it.
    identity = run_identity(method, config, samples) if run is not None and run.checkpoint is not None else {}
    if identity and data.preprocess.tiling is not None:  # tiles of another size or overlap are other data
        identity["tiling"] = data.preprocess.tiling.to_dict(data.preprocess.resize)
    history = train_network(model, loss_fn, data, config, identity=identity,
                            device=device, run=run, progress=progress, description=description)
    clock.lap("training")
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return NetworkFit(history, data, parameters, config.epochs)


def save_loss_curve(history: Sequence[float], path: str | Path, title: str = "training loss") -> Path | None:
    """Draw the mean loss per epoch as a PNG; ``None`` when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(history) + 1), history, marker="o", ms=3, lw=1.5)
    ax.set(xlabel="epoch", ylabel="mean loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def run_identity(method: str, config: Any, samples: Sequence[Sample]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the method, every option but ``epochs`` and
    ``checkpoint_every`` (a resumed run may ask for more epochs), and the training data by content."""
    from adexport.methods.base import config_to_dict  # noqa: PLC0415

    options = {k: v for k, v in config_to_dict(config).items() if k not in ("epochs", "checkpoint_every")}
    return {"method": method, "options": options, "data": data_identity(samples)}


def data_identity(samples: Sequence[Sample]) -> dict[str, Any]:
    """The training images by category and content: ``{"category", "images", "sha256"}``.

    File names alone do not tell datasets apart (every synthetic and many real categories name
    their images 000.png, 001.png, ...), so the digest covers each file's bytes: sha256 over the
    sorted ``(file name, sha256 of the file)`` pairs. The same pictures in another folder give the
    same identity, so a moved dataset still resumes.
    """
    entries = []
    for s in samples:
        path = Path(s.path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        entries.append((path.name, digest.hexdigest()))
    total = hashlib.sha256()
    for name, digest in sorted(entries):
        total.update(f"{name}\0{digest}\n".encode())
    return {"category": _category(samples), "images": len(entries), "sha256": total.hexdigest()}


def _category(samples: Sequence[Sample]) -> str | None:
    """``CATEGORY`` of ``.../CATEGORY/train/good/x.png`` (else the images' folder name)."""
    if not samples:
        return None
    parents = Path(samples[0].path).parents
    if len(parents) >= 3 and parents[1].name == "train":
        return parents[2].name
    return parents[0].name
