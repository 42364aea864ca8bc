"""The coupled trainer: K objectives in lockstep under shared randomness.

One initial model is deep-copied per objective; one seeded data stream draws each batch and its
two augmented views once, and every model takes its step on exactly those views; each model has
its own optimiser and warm-up + cosine schedule. Epoch e's sampler and augmentation RNG are
seeded from (seed, e) alone, so a run resumed from an epoch checkpoint continues bit-identically
(on the CPU). Alignment with the CL model is tracked on a fixed un-augmented reference set.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm.auto import tqdm

import repsim
from repsim.core.deprecation import deprecated_arguments
from repsim.core.io import atomic_write, atomic_write_text
from repsim.networks.data import in_channels

from . import distributed as D
from .config import TrainConfig
from .data import (
    BalancedBatchSampler,
    LabelledSubset,
    TwoViews,
    augmentation,
    dataset_labels,
    load_split,
    stratified_indices,
)
from .losses import balanced, contrastive, cross_entropy, supcon
from .models import create_model
from .tracking import (
    alignment_rows,
    final_inference_rows,
    final_probe_rows,
    knn_rows,
    model_features,
    theory_rows,
)

_CKPT = re.compile(r"epoch_(\d+)\.pt$")
_EVAL_CACHE_BYTES = 1 << 30  # 1 GiB: e.g. 10,000 CIFAR images in float32 take 123 MB


def width_option(cfg: TrainConfig) -> dict:
    """``width=`` for :func:`zoo.models.create_model` when the config sets one (else the backbone's default)."""
    return {} if cfg.width is None else {"width": cfg.width}


def objective_of(run: str) -> str:
    return "cl" if run == "cl_control" else run


def loss_for(run: str, out: dict, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The objective's loss on one step's outputs (the two views stacked along the batch)."""
    objective = objective_of(run)
    if objective == "ce":
        logits = out["logits"]
        half = logits.shape[0] // 2
        return cross_entropy(logits[:half], logits[half:], y)
    z = out["projection"]
    half = z.shape[0] // 2
    z1, z2, y = D.gather_with_grad(z[:half]), D.gather_with_grad(z[half:]), D.gather_labels(y)
    if objective == "cl":
        return contrastive(z1, z2, cfg.tau, include_positive=cfg.include_positive).loss
    if objective == "dcl":
        return contrastive(z1, z2, cfg.tau, include_positive=False).loss
    if objective == "nscl":
        return contrastive(z1, z2, cfg.tau, include_positive=cfg.include_positive, labels=y, negatives_only=True).loss
    if objective == "supcon":
        return supcon(z1, z2, y, tau=cfg.supcon_tau)
    if objective == "balanced":
        return balanced(z1, z2, alpha=cfg.balanced_alpha, lam=cfg.balanced_lam)
    raise ValueError(f"unknown objective {objective!r}")


def make_optimizer(model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    import timm.optim
    import timm.scheduler

    lr = cfg.scaled_lr()
    # no weight decay on biases and norm layers, as SimCLR/LARS recipes do
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "lars":
        opt = timm.optim.Lars(groups, lr=lr, momentum=0.9, trust_clip=False)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    total = cfg.epochs * steps_per_epoch
    sched = timm.scheduler.CosineLRScheduler(
        opt,
        t_initial=total,
        lr_min=0.0,
        warmup_t=min(cfg.warmup_epochs * steps_per_epoch, total - 1),
        warmup_lr_init=lr * 1e-3,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    return opt, sched


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


class _ShardedBatches:
    def __init__(self, sampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield D.shard(list(batch))


class Trainer:
    def __init__(self, config: TrainConfig) -> None:
        self.cfg = cfg = config.resolved()
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        D.init_from_env(self.device.type)
        self.out = Path(cfg.out)
        train_raw, self.n_classes = load_split(cfg.data, True, cfg.classes, cfg.seed, cfg.image_size, augment=True)
        ref, _ = load_split(cfg.data, False, cfg.classes, cfg.seed, cfg.image_size)
        bank, _ = load_split(cfg.data, True, cfg.classes, cfg.seed, cfg.image_size)
        if cfg.train_samples is not None:  # the same samples for training, the kNN bank and the probes
            keep = stratified_indices(dataset_labels(train_raw), cfg.train_samples, cfg.seed)
            train_raw, bank = LabelledSubset(train_raw, keep), LabelledSubset(bank, keep)
        self.train_set = TwoViews(train_raw, augmentation(cfg.kind, cfg.image_size))
        self.train_labels = dataset_labels(train_raw)
        self.ref_loader = self._eval_loader(ref, cfg.reference_samples)
        self.bank_loader = self._eval_loader(bank, 10_000)
        torch.manual_seed(cfg.seed)
        initial = create_model(
            backbone=cfg.backbone,
            num_classes=self.n_classes,
            in_channels=in_channels(cfg.kind),
            proj_hidden=cfg.proj_hidden,
            proj_out=cfg.proj_out,
            **width_option(cfg),
        )
        if cfg.channels_last:
            initial = initial.to(memory_format=torch.channels_last)
        self.models = {run: copy.deepcopy(initial).to(self.device) for run in cfg.run_names}
        self.steps_per_epoch = len(self._batch_sampler(0))
        self.optim = {run: make_optimizer(m, cfg, self.steps_per_epoch) for run, m in self.models.items()}
        if D.is_distributed():
            # the head an objective does not use (projector for CE, classifier otherwise) gets no gradient
            self.train_models = {
                run: nn.parallel.DistributedDataParallel(m, find_unused_parameters=True)
                for run, m in self.models.items()
            }
        else:
            self.train_models = self.models
        self.epoch, self.step, self.log = 0, 0, []
        self.epochs_trained = 0  # epochs trained by this process (a resumed run does not count the loaded ones)
        self._features = None  # (epoch, reference features, bank features) of the last evaluation
        self.lr_sum = 0.0  # sum of the CL model's learning rates over the steps taken (the theory's sum eta_t)

    def _eval_loader(self, ds, cap):
        """The un-augmented reference set or kNN bank, transformed once and kept as tensors when that fits
        ``_EVAL_CACHE_BYTES``: every evaluation runs every model over it, and on small images the per-sample
        transforms cost more than the forward passes (digits: 8 of 15 s of a one-epoch run)."""
        if cap is not None and len(ds) > cap:
            ds = torch.utils.data.Subset(ds, range(cap))
        loader = DataLoader(ds, batch_size=512, shuffle=False, num_workers=self.cfg.num_workers)
        first = ds[0][0]
        if not isinstance(first, Tensor) or first.numel() * first.element_size() * len(ds) > _EVAL_CACHE_BYTES:
            return loader
        batches = list(loader)
        images = torch.cat([x for x, _ in batches])
        cached = torch.utils.data.TensorDataset(images, torch.cat([torch.as_tensor(y) for _, y in batches]))
        return DataLoader(cached, batch_size=512, shuffle=False)

    def _batch_sampler(self, epoch: int):
        cfg = self.cfg
        if cfg.balanced_batches:
            sampler = BalancedBatchSampler(self.train_labels, cfg.batch_size, cfg.seed)
            sampler.set_epoch(epoch)
        else:
            g = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
            sampler = BatchSampler(RandomSampler(self.train_set, generator=g), cfg.batch_size, drop_last=True)
        if len(sampler) == 0:
            raise ValueError(f"batch_size {cfg.batch_size} is larger than the training set ({len(self.train_set)})")
        return _ShardedBatches(sampler)

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_path(self, epoch: int) -> Path:
        return self.out / "checkpoints" / f"epoch_{epoch:04d}.pt"

    def save_checkpoint(self) -> Path:
        state = {
            "epoch": self.epoch,
            "step": self.step,
            "log": self.log,
            "lr_sum": self.lr_sum,
            "config": dataclasses.asdict(self.cfg),
            "models": {r: m.state_dict() for r, m in self.models.items()},
            "optimizers": {r: o.state_dict() for r, (o, _) in self.optim.items()},
            "schedulers": {r: s.state_dict() for r, (_, s) in self.optim.items()},
        }
        return atomic_write(self.checkpoint_path(self.epoch), lambda tmp: torch.save(state, tmp))

    def latest_checkpoint(self) -> Path | None:
        found = [
            (int(m.group(1)), p) for p in (self.out / "checkpoints").glob("epoch_*.pt") if (m := _CKPT.search(p.name))
        ]
        return max(found)[1] if found else None

    def resume(self) -> bool:
        path = self.latest_checkpoint()
        if path is None:
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)  # untrusted input: tensors only
        ignore = {"progress", "device", "num_workers", "out"}
        saved, now = state["config"], dataclasses.asdict(self.cfg)
        differ = sorted(k for k in now if k not in ignore and saved.get(k) != now[k])
        if differ:
            raise ValueError(f"cannot resume from {path}: the config differs in {differ}; use a new --out folder")
        for run, m in self.models.items():
            m.load_state_dict(state["models"][run])
            self.optim[run][0].load_state_dict(state["optimizers"][run])
            self.optim[run][1].load_state_dict(state["schedulers"][run])
        self.epoch, self.step, self.log = state["epoch"], state["step"], list(state["log"])
        self.lr_sum = state["lr_sum"]
        return True

    # ---------------------------------------------------------------- training
    def train_epoch(self) -> dict[str, float]:
        cfg, epoch = self.cfg, self.epoch
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # the augmentations' RNG for this epoch
        loader = DataLoader(
            self.train_set,
            batch_sampler=self._batch_sampler(epoch),
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch)),
            pin_memory=self.device.type == "cuda",
        )
        sums = dict.fromkeys(self.models, 0.0)
        for model in self.train_models.values():
            model.train()
        steps = tqdm(
            loader,
            desc=f"epoch {epoch + 1} steps",
            leave=False,
            mininterval=10,  # long CPU epochs log a line now and then, not a flood
            disable=not (cfg.progress and D.rank() == 0),
        )
        for v1, v2, y in steps:
            x = torch.cat([v1, v2]).to(self.device, non_blocking=True)
            if cfg.channels_last:
                x = x.to(memory_format=torch.channels_last)
            y = y.to(self.device)
            for run, model in self.train_models.items():  # the same views for every model
                opt, sched = self.optim[run]
                if run == "cl":
                    self.lr_sum += opt.param_groups[0]["lr"]
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                    out = model(x)
                loss = loss_for(run, out, y, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step_update(self.step + 1)
                sums[run] += loss.item()
            self.step += 1
        self.epoch += 1
        return {run: s / self.steps_per_epoch for run, s in sums.items()}

    def _reference_features(self):
        """Encoder/projector features of the reference set and encoder features of the kNN bank, per run;
        cached for the current epoch, so the final probes reuse the last evaluation's forward passes."""
        if self._features is None or self._features[0] != self.epoch:
            ref = {run: model_features(m, self.ref_loader, self.device) for run, m in self.models.items()}
            bank = {
                run: model_features(m, self.bank_loader, self.device, ["encoder"]) for run, m in self.models.items()
            }
            self._features = (self.epoch, ref, bank)
        _, ref, bank = self._features
        encoder = lambda feats: {r: (f["encoder"], y) for r, (f, y) in feats.items()}  # noqa: E731
        return ref, encoder(bank), encoder(ref)

    def evaluate(self) -> list[dict]:
        ref, bank, queries = self._reference_features()
        features = {run: f for run, (f, _) in ref.items()}
        rows = alignment_rows(features, self.models)
        if "nscl" in features:
            rows += theory_rows(
                features["cl"]["projector"], self.lr_sum, self.step, self.cfg.batch_size, self.n_classes, self.cfg.tau
            )
        return rows + knn_rows(bank, queries)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def run(self, resume: bool = False, max_epochs: int | None = None) -> Path:
        """Train to ``cfg.epochs`` (from the latest checkpoint with ``resume``), then write the final files.

        ``max_epochs``: train at most this many epochs in this call, checkpoint and return unfinished (no final
        files); calling again with ``resume=True`` continues exactly where it stopped.
        """
        cfg = self.cfg
        if max_epochs is not None and max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0 or None, got {max_epochs}")
        main = D.rank() == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.json")
        if resume and self.resume() and main:
            print(f"resumed from epoch {self.epoch} ({self.latest_checkpoint()})")
        if self.epoch == 0 and main:  # the shared start: every model identical, CKA 1
            self.log += [{"epoch": 0, "step": 0, **row} for row in self.evaluate()]
        stop = cfg.epochs if max_epochs is None else min(cfg.epochs, self.epoch + max_epochs)
        bar = tqdm(
            range(self.epoch, stop),
            initial=self.epoch,
            total=cfg.epochs,
            desc="epochs",
            disable=not (cfg.progress and main),
        )
        for _ in bar:
            losses = self.train_epoch()
            self.epochs_trained += 1
            bar.set_postfix({r: f"{v:.3f}" for r, v in losses.items()})
            if main:
                base = {"epoch": self.epoch, "step": self.step}
                self.log += [
                    {**base, "objective": r, "layer": "", "measure": "loss", "value": v} for r, v in losses.items()
                ]
                if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                    self.log += [{**base, **row} for row in self.evaluate()]
                    self.write_log()
                if self.epoch % cfg.checkpoint_every == 0 or self.epoch in (cfg.epochs, stop):
                    self.save_checkpoint()
        if not self.finished:
            if main:
                self.write_log()
            D.close()
            return self.out
        if main:
            self.finish()
        D.close()
        return self.out

    def _add_final_intervals(self, features: dict[str, dict[str, Tensor]]) -> None:
        """CIs on the last evaluation's alignment rows, and the paired NSCL - rival rows (alignment.csv)."""
        intervals, paired = final_inference_rows(features, self.cfg.inference_resamples, self.cfg.seed)
        last = max(row["epoch"] for row in self.log)
        index = {(r["objective"], r["layer"], r["measure"]): r for r in intervals}
        for row in self.log:
            key = (row.get("objective"), row.get("layer"), row.get("measure"))
            if row["epoch"] == last and key in index:
                row.update(ci_low=index[key]["ci_low"], ci_high=index[key]["ci_high"])
        self.log += [{"epoch": last, "step": self.step, **row} for row in paired]

    def write_log(self) -> Path:
        return atomic_write_text(self.out / "alignment.csv", pd.DataFrame(self.log).to_csv(index=False))

    def finish(self) -> None:
        from .report import write_report

        for run, m in self.models.items():
            repsim.save_state_dict(m.state_dict(), self.out / "models" / f"{run}.safetensors")
        if not self.cfg.final_probes:
            self.write_log()
            return
        ref, bank, queries = self._reference_features()
        if self.cfg.inference_resamples:
            self._add_final_intervals({run: f for run, (f, _) in ref.items()})
        rows = final_probe_rows(bank, queries, self.cfg.seed, self.cfg.probe_l2_grid)
        probes_path = atomic_write_text(self.out / "final_probes.csv", pd.DataFrame(rows).to_csv(index=False))
        written = [self.write_log(), probes_path, *write_report(self.out, self.cfg)]
        print("wrote:\n" + "\n".join(f"  {p}" for p in [*written, self.out / "models", self.out / "checkpoints"]))


@deprecated_arguments(positional=("resume",))
def train(config: TrainConfig, *, resume: bool = False) -> Path:
    """Train ``config``'s objectives in lockstep; returns the output folder."""
    return Trainer(config).run(resume=resume)
