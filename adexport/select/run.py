"""``adx select``: train, export, evaluate and benchmark each candidate method; rank; pick; report.

Writes ``DIR/select.json`` (every figure), ``DIR/select.html`` (table and scatter), ``DIR/select.svg``
(the scatter alone) and ``DIR/best`` (the pick's bundle).

Per candidate (one-pass methods first, so the time trained ones may take is known when they start):
fit with its defaults on ``train/good`` (trained networks within the budget: epochs scaled from a
one-epoch probe fit), export to an ONNX bundle (with its parity check), evaluate torch-free on the
selection set, benchmark on the target device in a fresh process (batch 1 and larger batches).
Each finished candidate is written to ``DIR/candidates/NAME.json`` at once; a rerun with the same
arguments skips those. A candidate that fails is recorded with its one-line reason and the others go
on. The sets the pick is made and reported on: :mod:`adexport.select.split`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from adexport.select.rank import METRIC_LABELS, METRICS, Pick, format_duration, pareto_front, pick, ranked, rows_of
from adexport.select.split import Materialised, data_fingerprint, materialise, plan_validation
from adx_runtime.bundle import write_json_atomic
from adx_runtime.errors import AdxError, ConfigError, Interrupted
from adx_runtime.progress import SILENT, Progress

RUN_FILE = "run.json"
RUN_FORMAT = "adexport-select"
CANDIDATES = "candidates"
BUNDLES = "bundles"
BEST = "best"
#: Batch sizes benchmarked: 1 gives the latency ranked on; the best throughput of all is reported.
BENCH_BATCHES = (1, 4, 16)
#: Seconds kept back per trained candidate for its export, evaluation and benchmark, until one
#: finished candidate has measured them.
DEFAULT_RESERVE_S = 30.0
#: Seconds a candidate's benchmark should take at most (it times fewer batches, never under 3, to stay near it).
BENCH_CAP_S = 60.0


@dataclass
class SelectOptions:
    """Everything but the data and the output folder; what a rerun must repeat to resume."""

    methods: Sequence[str] | None = None  # None: every registered method
    budget_s: float | None = None  # wall-time budget of all candidates together (None: no limit)
    max_latency_ms: float | None = None
    device: str = "cpu"
    metric: str = "image_auroc"
    seed: int = 0
    #: ``{method: ["KEY=VALUE", ...]}`` (``--set METHOD.KEY=VALUE``), parsed per candidate so a bad
    #: one fails that candidate only.
    assignments: dict[str, list[str]] = field(default_factory=dict)
    #: Typed overrides per method for library users and tests (applied under ``assignments``).
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    bench_batches: Sequence[int] = BENCH_BATCHES
    bench_runs: int = 10
    bench_warmup: int = 2
    bench_process: bool = True  # benchmark in a fresh process (honest peak RSS); False: in this one
    fresh: bool = False  # discard a previous run's candidates in DIR


@dataclass
class SelectResult:
    out: Path
    candidates: list[dict[str, Any]]
    front: list[str]
    pick: Pick
    report: dict[str, Any] | None  # the pick's metrics on the report set
    validation: dict[str, Any]
    skipped: list[str]  # candidates resumed from an earlier run
    wall_seconds: float
    options: SelectOptions
    summary: dict[str, Any]


def parse_set_items(items: Sequence[str], methods: Sequence[str]) -> dict[str, list[str]]:
    """``METHOD.KEY=VALUE`` items -> ``{method: ["KEY=VALUE"]}``; a method not among the candidates is refused."""
    out: dict[str, list[str]] = {}
    for item in items:
        head, eq, _ = item.partition("=")
        method, dot, key = head.partition(".")
        if not eq or not dot or not key.strip():
            raise ConfigError(f"--option {item!r}: adx select takes METHOD.KEY=VALUE (e.g. padim.n_features=50), "
                              "so each option goes to one method")
        if method not in methods:
            raise ConfigError(f"--option {item!r} names method {method!r}, which is not a candidate; candidates: "
                              f"{', '.join(methods)}")
        out.setdefault(method, []).append(item[len(method) + 1:])
    return out


def _identity(dataset: Path, category: str, opts: SelectOptions) -> dict[str, Any]:
    return {"format": RUN_FORMAT, "dataset": str(dataset.resolve()), "category": category, "seed": opts.seed,
            "device": opts.device, "budget_s": opts.budget_s, "data": data_fingerprint(dataset, category)}


def _candidate_key(method: str, opts: SelectOptions) -> dict[str, Any]:
    # What a finished candidate's figures depend on beyond the run's identity.
    return {"assignments": list(opts.assignments.get(method, [])),
            "options": {k: repr(v) for k, v in sorted(opts.options.get(method, {}).items())},
            "bench_batches": list(opts.bench_batches), "bench_runs": opts.bench_runs}


def _prepare_out(out: Path, identity: dict[str, Any], fresh: bool, progress: Progress) -> None:
    """Refuse a folder that is not ours or holds a run with other arguments (unless ``fresh``)."""
    run_file = out / RUN_FILE
    if out.exists() and not run_file.is_file() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and holds no adx select run ({RUN_FILE} missing); give an empty or new --out")
    if run_file.is_file():
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{run_file} cannot be read ({exc}); give another --out") from None
        if previous.get("format") != RUN_FORMAT:
            raise ConfigError(f"{run_file} is not an adx select run; give another --out")
        diff = [f"{k} {previous.get(k)!r} -> {v!r}" for k, v in identity.items() if previous.get(k) != v]
        if diff and not fresh:
            done = len(list((out / CANDIDATES).glob("*.json"))) if (out / CANDIDATES).is_dir() else 0
            raise ConfigError(f"{out} holds a selection run with other arguments or data ({'; '.join(diff)}); its "
                              f"{done} finished candidates cannot be reused: give another --out, or --fresh to "
                              "discard them")
        if fresh:
            for sub in (CANDIDATES, BUNDLES, BEST, "work"):
                if (out / sub).exists():
                    shutil.rmtree(out / sub)
            progress.note(f"--fresh: discarded the earlier run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, identity)


def _bank_device(device: str) -> str:
    # On a GPU box FAISS searches there too when it can (as `adx bench` does); on a CPU box, the CPU.
    return "auto" if device == "cuda" else "cpu"


def _finite(value: Any) -> Any:
    """NaN and infinity (a diverged network's scores) become None: JSON has no such numbers, and an
    undefined figure must not rank."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return text if isinstance(exc, AdxError) else f"{type(exc).__name__}: {text}"


@dataclass
class _Clock:
    """Wall time against the budget: time spent by earlier runs' finished candidates counts too."""

    budget_s: float | None
    spent_before: float
    t0: float = field(default_factory=time.perf_counter)

    @property
    def used(self) -> float:
        return self.spent_before + time.perf_counter() - self.t0

    @property
    def left(self) -> float | None:
        return None if self.budget_s is None else self.budget_s - self.used


def _fit(method: str, overrides: dict[str, Any], select_root: Path, category: str, opts: SelectOptions,
         clock: _Clock, share_s: float | None, reserve_s: float, progress: Progress,
         train_fn: Callable[..., Any]) -> tuple[Any, dict[str, Any]]:
    """Fit one candidate; returns (fitted, what was decided about epochs)."""
    from adexport.methods import get_method  # noqa: PLC0415
    from adexport.methods.base import make_config  # noqa: PLC0415

    entry = get_method(method)
    kwargs = dict(device=opts.device, progress=progress)
    if not entry.trained:
        return train_fn(select_root, category, method, options=overrides, **kwargs), {"rule": "one-pass fit"}
    default_epochs = int(make_config(entry.config_cls, overrides).epochs)
    if "epochs" in overrides:
        fitted = train_fn(select_root, category, method, options=overrides, **kwargs)
        return fitted, {"default": default_epochs, "used": overrides["epochs"], "rule": "epochs as set"}
    if share_s is None:
        fitted = train_fn(select_root, category, method, options=overrides, **kwargs)
        return fitted, {"default": default_epochs, "used": default_epochs, "rule": "the method's default (no budget)"}
    # A one-epoch probe fit measures this machine; its training phase is the per-epoch time, the
    # rest (feature set-up, calibration) is paid once more by the real fit.
    t0 = time.perf_counter()
    probe = train_fn(select_root, category, method, options={**overrides, "epochs": 1}, **kwargs)
    probe_s = time.perf_counter() - t0
    per_epoch = float(probe.report.phases.get("training", probe_s)) or probe_s
    overhead = max(0.0, probe_s - per_epoch)
    room = share_s - probe_s - reserve_s - overhead
    epochs = int(max(1, min(default_epochs, room // per_epoch if per_epoch > 0 else default_epochs)))
    decided = {"default": default_epochs, "used": epochs, "probe_seconds": round(probe_s, 2),
               "per_epoch_seconds": round(per_epoch, 3), "share_seconds": round(share_s, 1),
               "rule": (f"budget: {format_duration(share_s)} for this candidate, {per_epoch:.2f} s per epoch "
                        f"measured by a 1-epoch probe fit -> {epochs} of {default_epochs} epochs")}
    if epochs == 1:
        return probe, decided
    progress.note(f"    {decided['rule']}")
    return train_fn(select_root, category, method, options={**overrides, "epochs": epochs}, **kwargs), decided


def _metrics_of(ev: Any) -> dict[str, Any]:
    m = ev.metrics
    return {"image_auroc": m.get("image_auroc"), "image_f1_max": m.get("image_f1_max"),
            "pixel_auroc": m.get("pixel_auroc"), "aupro": m.get("aupro"), "n_images": m.get("n_images"),
            "n_failed": m.get("n_failed")}


def run_candidate(method: str, work: Materialised, out: Path, opts: SelectOptions, clock: _Clock,
                  share_s: float | None, reserve_s: float, progress: Progress,
                  train_fn: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Fit, export, evaluate, benchmark one method; never raises for the method's own failures."""
    from adexport.export import export_bundle  # noqa: PLC0415
    from adexport.fit_pipeline import train  # noqa: PLC0415
    from adexport.methods import get_method  # noqa: PLC0415
    from adexport.methods.base import make_config, merge_options  # noqa: PLC0415
    from adx_runtime.bench import bench_in_subprocess, run_bench  # noqa: PLC0415
    from adx_runtime.evaluate import evaluate  # noqa: PLC0415

    category = work.plan.category
    record: dict[str, Any] = {"method": method, "status": "failed", "key": _candidate_key(method, opts)}
    phase = "options"
    t_start = time.perf_counter()
    try:
        entry = get_method(method)
        overrides = {**opts.options.get(method, {}),
                     **merge_options(entry.config_cls, None, opts.assignments.get(method, []))}
        if "seed" not in overrides and any(f == "seed" for f in getattr(entry.config_cls, "__dataclass_fields__", {})):
            overrides["seed"] = opts.seed
        make_config(entry.config_cls, overrides)  # a bad option fails here, before any fit
        record["options"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()}
        phase = "fit"
        t0 = time.perf_counter()
        fitted, epochs = _fit(method, overrides, work.select_root, category, opts, clock, share_s, reserve_s,
                              progress, train_fn or train)
        record["fit_seconds"] = time.perf_counter() - t0
        record["epochs"] = epochs
        phase = "export"
        t0 = time.perf_counter()
        bundle = out / BUNDLES / method
        export_bundle(fitted, bundle, overwrite=True, progress=progress)
        record["export_seconds"] = time.perf_counter() - t0
        record["bundle"] = f"{BUNDLES}/{method}"  # relative to DIR: a moved run folder still resumes
        phase = "evaluation"
        t0 = time.perf_counter()
        ev = evaluate(bundle, work.select_root, category, device=opts.device, bank_device=_bank_device(opts.device),
                      progress=progress)
        record["eval_seconds"] = time.perf_counter() - t0
        record["selection"] = _metrics_of(ev)
        record["warnings"] = list(ev.warnings)
        phase = "benchmark"
        t0 = time.perf_counter()
        images = [r.path for r in ev.scored][:16]
        runs = _bench_runs(opts, record["eval_seconds"] / max(1, len(ev.scored)))
        kwargs = dict(images=images, batch_sizes=tuple(opts.bench_batches), runs=runs,
                      warmup=opts.bench_warmup, device=opts.device, bank_device=_bank_device(opts.device))
        bench = bench_in_subprocess(bundle, **kwargs) if opts.bench_process else run_bench(bundle, **kwargs)
        record["bench_seconds"] = time.perf_counter() - t0
        record["bench"] = {**_bench_summary(bench, opts.bench_process), "runs": runs}
        record["status"] = "ok"
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001  (one candidate's failure of any kind must not stop the others)
        record["phase"] = phase
        record["reason"] = _one_line(exc)
    record["seconds"] = time.perf_counter() - t_start
    return record


def _bench_runs(opts: SelectOptions, seconds_per_image: float) -> int:
    """Timed batches per batch size: ``opts.bench_runs``, fewer (at least 3) where the evaluation's pace
    says they would take over :data:`BENCH_CAP_S` (a slow bundle would otherwise spend minutes here)."""
    per_run = seconds_per_image * sum(opts.bench_batches)
    if per_run <= 0 or per_run * (opts.bench_runs + opts.bench_warmup) <= BENCH_CAP_S:
        return opts.bench_runs
    return min(opts.bench_runs, max(3, int(BENCH_CAP_S / per_run) - opts.bench_warmup))


def _bench_summary(b: dict[str, Any], own_process: bool) -> dict[str, Any]:
    per_batch = {str(x["batch_size"]): {"p50_ms": x["latency_ms_per_batch"]["p50"],
                                        "p99_ms": x["latency_ms_per_batch"]["p99"],
                                        "images_per_s": x["throughput_images_per_s"]} for x in b["results"]}
    first = min(b["results"], key=lambda x: x["batch_size"])
    best = max(b["results"], key=lambda x: x["throughput_images_per_s"])
    return {
        "latency_batch": first["batch_size"],
        "p50_ms": first["latency_ms_per_batch"]["p50"] / first["batch_size"],
        "p99_ms": first["latency_ms_per_batch"]["p99"] / first["batch_size"],
        "best_batch": best["batch_size"], "images_per_s": best["throughput_images_per_s"],
        "per_batch": per_batch, "bundle_mb": b["bundle_mb"],
        "peak_rss_mb": b["peak_rss_mb"] if own_process else None,  # in-process RSS would count torch too
        "providers": b["providers"], "device": b["device"],
    }


def _load_finished(out: Path, method: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The candidate's record from an earlier run, if it finished with the same key and its bundle is there."""
    try:
        rec = json.loads((out / CANDIDATES / f"{method}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if rec.get("status") != "ok" or rec.get("key") != key or not (out / str(rec.get("bundle", "-"))).is_dir():
        return None
    return rec


def run_select(dataset: str | Path, category: str | None, out: str | Path, opts: SelectOptions | None = None, *,
               progress: Progress = SILENT, train_fn: Callable[..., Any] | None = None) -> SelectResult:
    """The whole of ``adx select``; writes ``DIR/select.json``, ``DIR/select.html`` and ``DIR/best``."""
    from adexport.methods import get_method, method_names  # noqa: PLC0415
    from adexport.select.report import write_html  # noqa: PLC0415
    from adx_runtime.datasets import load_split  # noqa: PLC0415

    opts = opts or SelectOptions()
    t_run = time.perf_counter()
    dataset, out = Path(dataset), Path(out)
    if opts.metric not in METRICS:
        raise ConfigError(f"--metric {opts.metric!r} is not known; valid: {', '.join(METRICS)}")
    if opts.device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {opts.device!r} is not known; valid: cpu, cuda")
    if opts.max_latency_ms is not None and not opts.max_latency_ms > 0:
        raise ConfigError(f"--max-latency-ms must be more than 0, got {opts.max_latency_ms}")
    methods = list(dict.fromkeys(opts.methods or method_names()))
    for m in methods:
        get_method(m)  # an unknown name is refused before any work, with the valid names
    entries = {m: get_method(m) for m in methods}
    # One-pass fits first: the time the trained networks may share is then known when they start.
    order = [m for m in methods if not entries[m].trained] + [m for m in methods if entries[m].trained]

    plan = plan_validation(dataset, category, opts.seed)
    identity = _identity(dataset, plan.category, opts)
    _prepare_out(out, identity, opts.fresh, progress)
    work = materialise(plan, out / "work", opts.seed)
    if opts.metric == "aupro" and not load_split(work.select_root, plan.category).has_masks:
        raise ConfigError("--metric aupro needs a ground-truth mask for every defective selection image; these have "
                          "none: use --metric image_auroc or f1")
    progress.note(f"selection set: {plan.note}")
    trained = [m for m in order if entries[m].trained]
    if trained and opts.budget_s is None:
        progress.note(f"no --budget: {', '.join(trained)} train for their default epochs (on a CPU, minutes each); "
                      "--budget scales them to the time you give")
    (out / CANDIDATES).mkdir(exist_ok=True)

    finished: dict[str, dict[str, Any]] = {}
    for m in order:
        rec = _load_finished(out, m, _candidate_key(m, opts))
        if rec is not None:
            finished[m] = rec
    resumed = [m for m in order if m in finished]
    if resumed:
        progress.note(f"resuming: {', '.join(resumed)} finished in an earlier run with these arguments; not redone")
    clock = _Clock(opts.budget_s, sum(float(finished[m].get("seconds", 0.0)) for m in resumed))
    results: dict[str, dict[str, Any]] = dict(finished)
    todo = [m for m in order if m not in finished]
    for i, m in enumerate(todo):
        n = f"[{len(resumed) + i + 1}/{len(order)}] {m}"
        left = clock.left
        if left is not None and left <= 0:
            results[m] = {"method": m, "status": "skipped", "phase": "budget", "key": _candidate_key(m, opts),
                          "reason": f"budget spent ({format_duration(clock.used)} of {format_duration(opts.budget_s or 0)})"}
            progress.note(f"{n}: skipped, {results[m]['reason']}")
            continue
        done_times = [r for r in results.values() if r.get("status") == "ok"]
        post_fit = sorted(r.get("export_seconds", 0) + r.get("eval_seconds", 0) + r.get("bench_seconds", 0)
                          for r in done_times)
        reserve = post_fit[len(post_fit) // 2] if post_fit else DEFAULT_RESERVE_S
        trained_left = sum(1 for x in todo[i:] if entries[x].trained)
        share = left / trained_left if left is not None and entries[m].trained and trained_left else None
        if share is not None:
            # The median, at most a quarter of the share: one slow bank's benchmark must not starve the networks.
            reserve = min(reserve, 0.25 * share)
        if left is not None:
            when = f"{format_duration(left)} of the {format_duration(opts.budget_s or 0)} budget left"
        elif done_times:
            mean = sum(r["seconds"] for r in done_times) / len(done_times)
            when = f"about {format_duration(mean * (len(todo) - i))} left (mean per candidate so far, no budget)"
        else:
            when = "no budget"
        progress.note(f"{n}: fit, export, evaluate, benchmark ({when})")
        try:
            rec = _finite(run_candidate(m, work, out, opts, clock, share, reserve, progress, train_fn))
        except KeyboardInterrupt:
            kept = [x for x, r in results.items() if r.get("status") == "ok"]
            raise Interrupted(f"interrupted during {m}; {len(kept)} finished candidates are kept in "
                              f"{out / CANDIDATES} ({', '.join(kept) or 'none'}): run the same command again to "
                              "go on from there") from None
        results[m] = rec
        write_json_atomic(out / CANDIDATES / f"{m}.json", rec)
        if rec["status"] == "ok":
            acc = rec["selection"].get(METRICS[opts.metric])
            progress.note(f"{n}: done in {format_duration(rec['seconds'])}: {METRIC_LABELS[opts.metric]} "
                          f"{'n/a' if acc is None else f'{acc:.3f}'}, {rec['bench']['p50_ms']:.1f} ms/image at batch 1")
        else:
            progress.note(f"{n}: FAILED in {rec['phase']}: {rec['reason']}")

    candidates = [results[m] for m in order]
    rows = rows_of(candidates, opts.metric)
    front = pareto_front(rows)
    chosen = pick(rows, opts.max_latency_ms)
    report = None
    if chosen.name is not None:
        best_bundle = out / results[chosen.name]["bundle"]
        _copy_best(best_bundle, out / BEST)
        if work.report_root is not None:
            from adx_runtime.evaluate import evaluate  # noqa: PLC0415

            ev = evaluate(out / BEST, work.report_root, plan.category, device=opts.device,
                          bank_device=_bank_device(opts.device))
            report = _metrics_of(ev)
    elif (out / BEST).exists():
        shutil.rmtree(out / BEST)  # an earlier run's pick is not this run's
    order_rank = [r.name for r in ranked(rows)]
    summary = {
        "format": RUN_FORMAT, "dataset": identity["dataset"], "category": plan.category,
        "metric": opts.metric, "latency": "p50 ms per image at batch 1 on --device",
        "max_latency_ms": opts.max_latency_ms, "budget_s": opts.budget_s, "device": opts.device, "seed": opts.seed,
        "validation": plan.summary(), "ranking": order_rank, "pareto_front": front,
        "pick": {"method": chosen.name, "reason": chosen.reason, "bundle": str(out / BEST) if chosen.name else None},
        "report_set": report, "resumed": resumed, "wall_seconds": time.perf_counter() - t_run,
        "candidates": {c["method"]: c for c in candidates},
    }
    write_json_atomic(out / "select.json", _finite(summary))
    result = SelectResult(out, candidates, front, chosen, report, plan.summary(), resumed,
                          summary["wall_seconds"], opts, summary)
    write_html(result, out / "select.html")
    return result


def _copy_best(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
