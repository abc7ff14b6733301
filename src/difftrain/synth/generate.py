"""`difftrain synth`: sample a run into a dataset of files, in rounds of batches until every class has its
count after filtering; resumable, and shared out over the processes of a launch.

Batch g (numbered over the whole dataset) draws its noise from `batch_generator(seed, g)` and its classes
from the round plan (plan.py), so neither the process count nor an interruption changes a single file.
Under a launch every process draws its batches of a wave (one each), the main process judges them in
batch order, writes the files and the progress state, and tells the others what to draw next.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from difftrain import atomic
from difftrain.distributed import from_main_process, is_main_process, on_main_process, processes
from difftrain.errors import UserError
from difftrain.folder_lock import folder_lock
from difftrain.store.run import Run, open_run
from difftrain.sampling import SamplingSpec, check_fits_in_memory, class_quotas, generate
from difftrain.synth import state
from difftrain.synth.filters import ORDER, FilterSpec, Judge, parse_filters
from difftrain.synth.plan import round_sizes, round_slots, shortfall
from difftrain.synth.writer import check_class_name


# The score a rejection records: the number its filter judged.
SCORE = {"memorization": "training_ratio", "dedup": "kept_distance", "confidence": "confidence"}

# A model that learned most of its images without a label (data.unlabelled) follows the asked class weakly at
# guidance 1: on MNIST at 1% many samples were another digit. At 2 they were the asked one, and on the digits at 10%
# its samples helped a classifier most (docs/benchmarks.md); the price is some privacy margin, which the report shows.
UNLABELLED_GUIDANCE = 2.0


def synth_spec(run: Run, seed: int = 0, **overrides) -> SamplingSpec:
    """The sampler `synth` uses: the run's with `overrides`, at guidance UNLABELLED_GUIDANCE when none is given and
    the run is class-conditional, trained with data.unlabelled and configured without guidance (sample.guidance 1)."""
    if (overrides.get("guidance") is None and run.num_classes and run.config.data.unlabelled
            and run.config.sample.guidance == 1):
        overrides["guidance"] = UNLABELLED_GUIDANCE
    return run.sampling_spec(seed, **overrides)


def _quiet(message: str) -> None:
    """The `warn` of processes other than the main one: one process says it."""


@dataclass
class Wave:
    """Consecutive batches that the processes draw at once, one each: the first one's number and every sample's class."""

    first_batch: int
    slots: list[int]  # index into the requested classes


def requested_classes(run: Run, per_class: int | None, n: int | None,
                      classes: list[str] | None) -> tuple[list[str | None], list[int]]:
    """(class names, targets): the chosen classes with per_class each (or n shared out as `Run.sampling_labels` does:
    balanced, or in the training mix), or [None] with n for an unconditional model."""
    name = run.path
    if run.num_classes:
        if n is not None and per_class is not None:
            raise UserError("give --per-class N (of each class) or --n N (in all), not both")
        if n is None and (per_class is None or per_class < 1):
            raise UserError(f"give --per-class N (at least 1): how many images of each class {name} should make, "
                            "or --n N in all")
        chosen = list(classes) if classes else run.class_names
        unknown = [c for c in chosen if c not in run.class_names]
        if unknown:
            raise UserError(f"--classes: {', '.join(unknown)} not among the classes of {name} ({', '.join(run.class_names)})")
        if len(set(chosen)) != len(chosen):
            raise UserError("--classes names a class twice; name each once")
        for c in chosen:
            check_class_name(c)
        if n is not None:
            counts = run.class_counts if run.modality.proportional_classes else None
            weights = [counts[run.class_names.index(c)] for c in chosen] if counts else [1] * len(chosen)
            return chosen, class_quotas(n, weights)
        return chosen, [per_class] * len(chosen)
    if per_class is not None or classes:
        raise UserError(f"{name} is unconditional (it has no classes): give --n N, the number of images, instead of "
                        f"{'--per-class' if per_class is not None else '--classes'}")
    if n is None or n < 1:
        raise UserError(f"give --n N (at least 1): how many images {name} should make")
    return [None], [n]


def _training_data(run: Run, needed_by: str):
    """The run's prepared training dataset; a clear error naming what needs it when it is gone."""
    from difftrain.data import load_dataset

    path = Path(run.dataset["path"])
    if not path.is_dir():
        raise UserError(f"{needed_by} needs the run's training data {path} (named in {run.path / 'dataset.json'}), "
                        f"which is gone: put it back there, or leave {needed_by} out")
    ds = load_dataset(path)
    if tuple(ds.sample_shape) != run.sample_shape:
        raise UserError(f"{path} holds {tuple(ds.sample_shape)} images, but {run.path} makes {run.sample_shape}: it is not "
                        f"the data the run was trained on; leave {needed_by} out")
    return ds


def _labelled_training_data(run: Run, names: list[str | None], needed_by: str):
    """The run's training data, which must have labels and items of every requested class (a classifier learns them)."""
    ds = _training_data(run, needed_by)
    if not ds.num_classes:
        raise UserError(f"{needed_by} needs labelled training data; {ds.path} has no labels: leave it out")
    missing = [c for c in names if c not in ds.class_names]
    if missing:
        raise UserError(f"{needed_by}: {ds.path} has no items of class(es) {', '.join(missing)} for a classifier to learn: "
                        "leave it out, or those classes out of --classes")
    return ds


class Synthesis:
    """The main process's side: what is kept so far, the round plan, judging, writing and recording each batch."""

    def __init__(self, out: Path, run: Run, classes: list[str | None], targets: list[int], batch_size: int, judge: Judge,
                 progress: Callable[[int, int], None] | None):
        self.out, self.run, self.classes, self.targets, self.batch_size = out, run, classes, targets, batch_size
        self.judge, self.progress = judge, progress
        self.modality = run.modality
        self.kept = [0] * len(classes)
        self.generated = [0] * len(classes)
        self.files: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        self.surplus = 0
        self.kept_samples: list[np.ndarray] = []  # as written (see `canonical`), for dedup and the report
        self.next_batch = 0
        self.round: list[int] = []
        self.round_first = 0

    def canonical(self, samples: np.ndarray) -> np.ndarray:
        """Samples as their files hold them, so the filters judge what is written and a resumed run reads back
        exactly what it judged."""
        return self.modality.canonical(samples)

    def next_wave(self, world: int) -> Wave | None:
        """The next `world` batches of the current round (a new round when it is done); None when nothing is left."""
        if not any(shortfall(self.targets, self.kept)):
            return None  # every class is full: the rest of a round would only be surplus
        start = (self.next_batch - self.round_first) * self.batch_size
        if start >= len(self.round):
            self.round = round_slots(round_sizes(self.targets, self.kept, self.generated))
            self.round_first, start = self.next_batch, 0
            if not self.round:
                return None
        return Wave(self.next_batch, self.round[start:start + world * self.batch_size])

    def replay(self, records: list[dict[str, Any]]) -> None:
        """Apply the records of an earlier, interrupted run, checking that they follow the same plan."""
        for record in records:
            wave = self.next_wave(1)
            if wave is None or record["batch"] != wave.first_batch or record["slots"] != wave.slots:
                raise UserError(f"{state.record_file(self.out, record['batch'])} does not follow this run's plan: "
                                f"pass --overwrite to start {self.out} again")
            self._apply(record, self.modality.synth_read(self.out, record["files"]) if record["files"] else None)

    def take(self, wave: Wave, samples: np.ndarray) -> None:
        """Judge, write and record each batch of a wave, in batch order."""
        for b, start in enumerate(range(0, len(wave.slots), self.batch_size)):
            stop = start + self.batch_size
            self._take_batch(wave.first_batch + b, wave.slots[start:stop], self.canonical(samples[start:stop]))

    def _take_batch(self, batch: int, slots: list[int], samples: np.ndarray) -> None:
        kept = np.concatenate(self.kept_samples) if self.kept_samples else samples[:0]
        room = [t - k for t, k in zip(self.targets, self.kept, strict=True)]
        verdicts = self.judge.judge(samples, slots, room, kept)
        record: dict[str, Any] = {"batch": batch, "slots": slots, "files": [], "rejected": [], "surplus": 0}
        numbers = list(self.kept)
        keep, names = [], []
        for index, (slot, verdict) in enumerate(zip(slots, verdicts, strict=True)):
            name = self.classes[slot]
            label = None if name is None else self.run.class_names.index(name)
            if verdict.removed_by == "surplus":
                record["surplus"] += 1
            elif verdict.removed_by is not None:
                record["rejected"].append({"batch": batch, "index": index, "label": label, "class": name,
                                           "filter": verdict.removed_by, "score": verdict.scores[SCORE[verdict.removed_by]],
                                           "scores": verdict.scores})
            else:
                keep.append(index)
                names.append((name, numbers[slot]))
                numbers[slot] += 1
                record["files"].append({"label": label, "class": name, "batch": batch, "index": index, "scores": verdict.scores})
        files = self.modality.synth_write(self.out, batch, samples[keep], names)
        record["files"] = [{**where, **entry} for where, entry in zip(files, record["files"], strict=True)]
        state.write_record(self.out, record)  # after its files: a record names only files that are there
        kept_here = [f["index"] for f in record["files"]]
        self._apply(record, samples[kept_here] if kept_here else None)

    def _apply(self, record: dict[str, Any], kept_samples: np.ndarray | None) -> None:
        for slot in record["slots"]:
            self.generated[slot] += 1
        for f in record["files"]:
            self.kept[self.classes.index(f["class"])] += 1
        self.files += record["files"]
        self.rejected += record["rejected"]
        self.surplus += record["surplus"]
        if kept_samples is not None:
            self.kept_samples.append(kept_samples)
        self.next_batch = record["batch"] + 1
        self.report_progress()

    def report_progress(self) -> None:
        if self.progress is not None:
            self.progress(sum(self.kept), sum(self.targets))

    def kept_arrays(self) -> np.ndarray:
        """All kept samples, in the manifest's order."""
        if self.kept_samples:
            return np.concatenate(self.kept_samples)
        return np.zeros((0, *self.modality.shape), self.modality.dtype)


def _checkpoint_settings(run: Run, which: str, ema: bool, warn) -> tuple[Any, dict[str, Any]]:
    from difftrain.hashing import sha256_file

    ckpt = run.checkpoint(which, warn)
    file = "ema.safetensors" if ema else "model.safetensors"
    digest = ckpt.info.get("sha256", {}).get(file) or sha256_file(ckpt.path / file)
    return ckpt, {"checkpoint": str(ckpt.path.resolve()), "weights_sha256": digest, "weights": "ema" if ema else "model"}


def synthesize(run_dir: str | Path, out_dir: str | Path, *, per_class: int | None = None, n: int | None = None,
               classes: list[str] | None = None, spec: SamplingSpec | None = None, filters: str | list[FilterSpec] | None = None,
               checkpoint: str | None = None, ema: bool = True, batch_size: int | None = None, device: str = "cpu",
               overwrite: bool = False, report: bool = True, optimize_for: str | None = None,
               progress: Callable[[int, int], None] | None = None, report_progress: Callable[[str], None] | None = None,
               report_options: dict[str, Any] | None = None, warn=print) -> dict[str, Any]:
    """Write a synthetic dataset of the run into `out_dir` and return its manifest (see docs/synth.md).

    `per_class` images of each of `classes` (default: all) for a class-conditional run, `n` for an unconditional one;
    `spec` the sampler (default: the run's); `filters` a --filter string or specs; `checkpoint` 'latest' (None), 'best'
    or a folder. `optimize_for="utility"` first chooses the guidance, the checkpoint, a confidence filter and the count
    per class (at most `per_class`) by a search on held-back real items (synth/search.py), kept in OUT so that running
    it again reuses it. Running it again continues an interrupted dataset. `progress(kept, requested)` is called after
    every batch; `report_options` go to synth/report.write_report (e.g. steps, repeats). Under a multi-process launch
    every process calls it and draws its share; only the main process writes. A second command on the same OUT is
    refused while this one holds it (folder_lock.py).
    """
    with folder_lock(out_dir, "--out"):  # one writer of OUT at a time
        from difftrain.synth.manifest import finish

        main = is_main_process()
        warn = warn if main else _quiet
        out = Path(out_dir)
        run = open_run(run_dir)
        spec = spec or synth_spec(run)
        spec.check()
        names, targets = requested_classes(run, per_class, n, classes)
        check_fits_in_memory(sum(targets), run.modality, "--per-class" if per_class is not None else "--n")  # kept in memory
        if spec.guidance != 1 and not run.num_classes:
            raise UserError(f"--guidance {spec.guidance:g} needs a class-conditional model; {run.path} is unconditional (use 1)")
        specs = (parse_filters(filters, run.modality.dedup_distance()) if filters is None or isinstance(filters, str)
                 else list(filters))
        batch_size = batch_size or run.config.sample.batch_size
        if batch_size < 1:
            raise UserError(f"--batch-size must be at least 1 (got {batch_size})")
        search = None
        if optimize_for is not None:
            search = _optimize(run, out, optimize_for, names, per_class, spec, specs, checkpoint, ema, batch_size, device,
                               overwrite, report_progress or (lambda stage: None))
            chosen, overwrite = search["chosen"], False
            spec, checkpoint = dataclasses.replace(spec, guidance=chosen["guidance"]), chosen["checkpoint"]
            if chosen["confidence"] is not None:
                specs = sorted([*specs, FilterSpec("confidence", chosen["confidence"])], key=lambda s: ORDER.index(s.name))
            per_class, targets = chosen["per_class"], [chosen["per_class"]] * len(names)
        ckpt, weights = _checkpoint_settings(run, checkpoint or "latest", ema, warn)
        settings = {"run": str(run.path.resolve()), **weights, "sampler": spec.sampler, "steps": spec.steps,
                    "schedule": spec.schedule, "guidance": spec.guidance, "seed": spec.seed,
                    "classes": None if names == [None] else names, "per_class": per_class, "n": n,
                    "filters": [s.describe() for s in specs], "batch_size": batch_size,
                    "device": torch.device(device).type,  # CPU and GPU kernels round differently: no mixing in one dataset
                    "optimized_for": optimize_for}
        denoiser = run.denoiser(ckpt, ema=ema, device=device)

        def start() -> Synthesis:
            judge = _judge(run, specs, names)  # before OUT is started: a filter that cannot run leaves no trace
            job = Synthesis(out, run, names, targets, batch_size, judge, progress)
            records = state.open_state(out, settings, overwrite)
            atomic.remove_leftovers(out)  # OUT is ours (checked): half-written files of a killed run are never read
            job.replay(records)
            job.report_progress()
            return job

        job = on_main_process(start)
        world = processes()[1]
        model_labels = None if names == [None] else np.asarray([run.class_names.index(c) for c in names], dtype=np.int64)
        while True:
            wave = from_main_process(on_main_process(lambda: job.next_wave(world)))
            if wave is None:
                break
            labels = None if model_labels is None else model_labels[wave.slots]
            samples = generate(denoiser, run.modality, len(wave.slots), labels, spec, batch_size=batch_size, device=device,
                               across_processes=True, first_batch=wave.first_batch)
            on_main_process(lambda: job.take(wave, samples))  # noqa: B023 - called at once, in this iteration
        return from_main_process(on_main_process(lambda: finish(
            job, settings, ckpt, spec, report=report, warn=warn, search=search, report_progress=report_progress,
            report_options=report_options)))


OPTIMIZE_FOR = ("utility",)


def _optimize(run: Run, out: Path, goal: str, names: list[str | None], per_class: int | None, spec: SamplingSpec,
              specs: list[FilterSpec], checkpoint: str | None, ema: bool, batch_size: int, device: str, overwrite: bool,
              progress: Callable[[str], None]) -> dict[str, Any]:
    """--optimize-for: the search's result (synth/search.py), from OUT when it was made with the same request."""
    from difftrain.hashing import sha256_file
    from difftrain.synth.search import COUNTS, GUIDANCE, SELECTION, THRESHOLDS, checkpoint_candidates, search_utility

    if goal not in OPTIMIZE_FOR:
        raise UserError(f"--optimize-for {goal}: choose {', '.join(OPTIMIZE_FOR)}")
    if processes()[1] > 1:
        raise UserError("--optimize-for utility searches in one process: leave --processes out")
    if not run.num_classes or run.modality.synth_task != "classification" or names == [None]:
        raise UserError(f"--optimize-for utility chooses settings by a classifier's accuracy; {run.path} is not a "
                        "class-conditional classification model: leave --optimize-for out")
    if per_class is None:
        raise UserError("--optimize-for utility needs --per-class N: the most items of each class it may write")
    if checkpoint is not None:
        raise UserError("--optimize-for utility chooses the checkpoint: leave --checkpoint out")
    if not ema:
        raise UserError("--optimize-for utility samples the EMA weights")
    if any(s.name == "confidence" for s in specs):
        raise UserError("--optimize-for utility chooses the confidence filter: leave confidence out of --filter")
    dataset = _labelled_training_data(run, names, "--optimize-for utility")
    if overwrite:
        state.start_again(out)
    request = {"run": str(run.path.resolve()), "classes": names, "per_class": per_class, "sampler": spec.sampler,
               "steps": spec.steps, "schedule": spec.schedule, "seed": spec.seed, "batch_size": batch_size,
               "device": torch.device(device).type,
               "weights": {str(p): sha256_file(p / "ema.safetensors") for p in checkpoint_candidates(run)},
               "grid": {"guidance": GUIDANCE, "confidence": THRESHOLDS, "counts": COUNTS, "selection": SELECTION}}
    request = json.loads(json.dumps(request))  # as read back from the file (tuples as lists)
    found = state.read_search(out, request)
    if found is not None:
        progress("search: reusing the earlier search in OUT")
        return found
    result = search_utility(run, dataset, names, per_class, spec, batch_size=batch_size, device=device, progress=progress)
    state.write_search(out, request, result)
    return result


def _judge(run: Run, specs: list[FilterSpec], names: list[str | None]) -> Judge:
    """The filters with the run's training images and the confidence classifier, as they need."""
    chosen = {s.name for s in specs}
    train_images, classifier, classifier_labels, info = None, None, None, {}
    if "confidence" in chosen:
        if not run.num_classes:
            raise UserError(f"--filter confidence needs a class-conditional model; {run.path} is unconditional: "
                            "leave confidence out")
        ds = _labelled_training_data(run, names, "--filter confidence")
        classifier, meta = ds.modality.confidence_classifier(ds, epochs=run.config.eval.classifier_epochs)
        classifier_labels = [ds.class_names.index(c) for c in names]
        info["confidence"] = {"classifier": meta["name"], "classifier_sha256": meta["weights_sha256"],
                              "classifier_test_accuracy": meta["test_accuracy"]}
    if "memorization" in chosen:
        train_images = _training_data(run, "--filter memorization").train_data
    return Judge(specs, run.modality, train_images, classifier, classifier_labels, info)
