"""Training: ``vgs train --data DIR --out RUN``.

A run folder holds ``config.yaml``, ``metrics.csv``, TensorBoard logs (``tb/``),
``checkpoints/last.pt`` (written atomically every epoch and every few minutes),
``checkpoints/best.pt`` (best dev mean recall) and plots.  ``--resume`` continues
from ``last.pt`` on exactly the batches an uninterrupted run would have seen:
batch order, augmentation and dropout are all seeded per ``(seed, epoch)`` and the
RNG state is saved with every checkpoint.  (With ``train.negative_queue`` the queued
impostors are not saved: a resumed run refills its queue in that many steps.)

Multi-GPU / multi-node: launch with ``torchrun``; each process trains on its shard
of the batches (DistributedDataParallel, NCCL on GPU, gloo on CPU).
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from .progress import tqdm

from .config import Config, from_dict, save_config, to_dict
from .data.loader import Batch, BucketBatchSampler, CachedImages, PairDataset, collate
from .data.pipeline import describe, feature_statistics, open_split
from .errors import VGSError, first_line
from .evaluate import encode_split, mean_recall, pairs_protocol
from .io import load_checkpoint, save_checkpoint, write_text
from .loss import ContrastiveLoss, Impostors, voice_info_nce
from .models.audio import frame_mask
from .models.factory import build_model, pixel_config
from .negatives import ImpostorQueue, distinct_rows, image_clusters

METRIC_FIELDS = ["epoch", "step", "train_loss", "lr", "skipped_steps", "minutes",
                 "dev_s2i_r1", "dev_s2i_r5", "dev_s2i_r10", "dev_i2s_r1", "dev_i2s_r5", "dev_i2s_r10", "dev_mean_recall"]


@dataclass
class TrainState:
    """Everything needed to continue a run, besides model/optimizer weights."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    best: float = -1.0
    minutes: float = 0.0
    skipped_steps: int = 0
    epoch_loss_sum: float = 0.0  # this epoch's losses so far (kept across a mid-epoch resume)
    epoch_loss_count: int = 0
    history: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- set-up


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def distributed_context() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def pooled_audio(frames: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``B x D x T'`` frame embeddings and ``B`` lengths -> ``B x D`` unit-length means over the real frames."""
    mask = frame_mask(lengths, frames.shape[-1]).to(frames.dtype)
    mean = (frames * mask[:, None, :]).sum(-1) / mask.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.nn.functional.normalize(mean, dim=1)


def parameter_groups(model: torch.nn.Module, loss_fn: torch.nn.Module, config: Config) -> list[dict]:
    """The trainable parameters as optimizer groups: the pretrained trunk blocks that ``model.image_top_blocks``
    trains get ``train.top_lr_scale`` of the learning rate (a fresh head's rate would wreck their weights)."""
    top = model.image.top
    top_ids = {id(p) for p in top.parameters()} if top is not None else set()
    rest = [p for p in [*model.trainable_parameters(), *loss_fn.parameters()] if p.requires_grad and id(p) not in top_ids]
    groups = [{"params": rest}]
    if top is not None:
        groups.append({"params": [p for p in top.parameters() if p.requires_grad], "lr": config.train.lr * config.train.top_lr_scale})
    return groups


def make_optimizer(params: list, config: Config) -> torch.optim.Optimizer:
    """The configured optimizer over ``params`` (parameters, or groups that may set their own ``lr``)."""
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(step: int, total: int, config: Config) -> float:
    """Linear warm-up, then constant or cosine decay to 2% of the peak."""
    t = config.train
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps))
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- the trainer


class Trainer:
    """Owns the model, data, optimizer and run folder for one training run."""

    def __init__(self, config: Config, out: str | Path, resume: bool = False, progress: bool = True):
        self.config = config.validate()
        self.out = Path(out)
        self.rank, self.world, local_rank = distributed_context()
        self.device = pick_device(local_rank)
        self.progress = progress and self.rank == 0
        self.autocast = self._autocast_enabled()
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        config.image = pixel_config(config)  # the run's config.yaml states the pixel statistics it trains with
        self.model = build_model(config).to(self.device)
        self.loss_fn = ContrastiveLoss(config.train.loss, config.train.margin, config.train.init_temperature).to(self.device)
        if self.world > 1 and self.rank != 0:
            dist.barrier()  # rank 0 builds the caches first; the others then read them
        self.train_set = open_split(config, "train", self.model.image, train=True, device=str(self.device),
                                    progress=self.progress, workers=config.train.workers)
        self.dev_set = self._open_dev()
        if self.world > 1 and self.rank == 0:
            dist.barrier()
        mean, std = feature_statistics(self.train_set, seed=config.train.seed)
        self.model.audio.input_norm.set_statistics(mean.to(self.device), std.to(self.device))
        groups = self.train_set.caption_index if config.train.voice_pairs else None
        self.sampler = BucketBatchSampler(self.train_set.lengths(), config.train.batch_size, seed=config.train.seed, groups=groups,
                                          rank=self.rank, world_size=self.world, clusters=self._item_clusters())
        if len(self.sampler) == 0:
            raise VGSError(f"{config.data}: {len(self.train_set)} training pairs is fewer than one batch of {config.train.batch_size}")
        self.optimizer = make_optimizer(parameter_groups(self.model, self.loss_fn, config), config)
        self.total_steps = config.train.epochs * len(self.sampler)
        if config.train.max_steps:
            self.total_steps = min(self.total_steps, config.train.max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, self.total_steps, config))
        if config.train.channels_last:
            self.model.image.to(memory_format=torch.channels_last)
        self.ddp_model: torch.nn.Module = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.train.compile:
            self.ddp_model = torch.compile(self.ddp_model)
        self.queue = ImpostorQueue(config.train.negative_queue) if config.train.negative_queue else None
        self.state = TrainState()
        self._bad_in_a_row = 0  # non-finite steps since the last good one
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        elif (self.out / "checkpoints" / "last.pt").exists():
            raise VGSError(f"{self.out}: a run already exists here; pass --resume to continue it or choose another --out")
        elif config.train.init_from:
            self._warm_start(config.train.init_from)
        if self.rank == 0:
            save_config(config, self.out / "config.yaml")
        self.writer = self._tensorboard()

    def _item_clusters(self) -> np.ndarray | None:
        """Each training pair's image cluster (``train.batch_clusters``), or None for random batches."""
        k = self.config.train.batch_clusters
        if not k:
            return None
        images = self.train_set.images
        if not isinstance(images, CachedImages):
            raise VGSError("train.batch_clusters: image clusters come from cached trunk features; "
                           "use a frozen trunk with train.cache_image_features=true")
        rows = np.array([images.index[image_id] for image_id in self.train_set.image_ids])
        return image_clusters(images.features, rows, k)[self.train_set.image_index]

    def _open_dev(self) -> PairDataset | None:
        try:
            return open_split(self.config, self.config.train.eval_split, self.model.image, device=str(self.device),
                              progress=self.progress, workers=self.config.train.workers)
        except VGSError as exc:
            if self.rank == 0:
                print(f"warning: no dev evaluation ({exc})")
            return None

    def _tensorboard(self) -> Any:
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but keep training if it is broken
            return None
        return SummaryWriter(str(self.out / "tb"), purge_step=self.state.global_step or None)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_payload(self) -> dict:
        return {
            "config": to_dict(self.config),
            "model": self.model.state_dict(),
            "loss": self.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": to_dict(self.state),
            "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def save(self, best: bool = False) -> None:
        if self.rank != 0:
            return
        payload = self.checkpoint_payload()
        save_checkpoint(self.out / "checkpoints" / "last.pt", payload)
        if best:
            save_checkpoint(self.out / "checkpoints" / "best.pt", payload)

    def _resume(self) -> None:
        path = self.out / "checkpoints" / "last.pt"
        payload = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(payload["model"])
        self.loss_fn.load_state_dict(payload["loss"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.state = from_dict(TrainState, payload["state"], "checkpoint.state")
        torch.set_rng_state(payload["rng"]["torch"].cpu())
        _set_numpy_state(payload["rng"]["numpy"])
        _set_python_state(payload["rng"]["python"])
        if torch.cuda.is_available() and payload["rng"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["rng"]["cuda"]])
        if self.rank == 0:
            print(f"resumed {path}: epoch {self.state.epoch + 1}, batch {self.state.batch_in_epoch}, step {self.state.global_step}")

    def _warm_start(self, source: str) -> None:
        """Fine-tune: the model (and, from a checkpoint, the learned temperature) start from ``source``;
        the optimizer, schedule and step count start fresh. The input statistics stay this data's."""
        from .api import _check_trunk, _read_model, _stored_trunk_identity
        from .export import TRUNK_PREFIX
        from .pretrained import resolve_model

        source = resolve_model(source)
        path, _, state, loss_state = _read_model(source, "best")
        trunk = _stored_trunk_identity(source)  # an export without its trunk: ours must be that one
        if trunk is not None:
            _check_trunk(self.model, self.config, trunk, path)
        state = {k: v for k, v in state.items() if not k.startswith("audio.input_norm.")}
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise VGSError(f"train.init_from: {path}: weights do not fit this model ({first_line(exc, 200)})") from exc
        missing = [k for k in missing if not k.startswith("audio.input_norm.") and not (trunk and k.startswith(TRUNK_PREFIX))]
        if missing or unexpected:
            raise VGSError(f"train.init_from: {path}: weights do not fit this model "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        if loss_state is not None:
            self.loss_fn.load_state_dict(loss_state)
        if self.rank == 0:
            print(f"initialized from {path}")

    def _autocast_enabled(self) -> bool:
        """bf16 autocast: ``train.amp`` on CUDA; on CPU only with ``train.amp_cpu`` and bf16 instructions.

        Without them (AVX2 CPUs) torch emulates bf16: a 4096 x 1024 by 1024 x 1024 product took 10.1 s
        against 84 ms in float32, a 3 x 3 convolution 29x longer (2 AMD EPYC AVX2 cores), so a recipe
        that asks for ``amp_cpu`` trains in float32 there, with a warning."""
        t = self.config.train
        if not t.amp or (self.device.type != "cuda" and not t.amp_cpu):
            return False
        if self.device.type != "cuda" and not cpu_bf16_instructions():
            if self.rank == 0:
                print("warning: train.amp_cpu: this CPU has no bf16 instructions (AVX-512 BF16 or AMX), where bf16 "
                      "autocast runs 30-120x slower than float32; training in float32")
            return False
        return True

    # ------------------------------------------------------------------ one step

    def _forward_loss(self, batch: Batch) -> torch.Tensor:
        t = self.config.train
        images_in = batch.images.contiguous(memory_format=torch.channels_last) if t.channels_last else batch.images
        image_ids = batch.image_index.to(self.device)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            images, audio, lengths = self.ddp_model(images_in, batch.audio, batch.lengths, self.train_set.images.is_features)
            sim = self.model.similarity(images, audio, lengths)
            impostors = self._queued_impostors(images, audio, lengths, image_ids) if self.queue else None
        loss = self.loss_fn(sim.float(), batch.image_index, impostors=impostors)
        if t.voice_loss_weight > 0 and batch.caption_index is not None:
            loss = loss + t.voice_loss_weight * voice_info_nce(pooled_audio(audio.float(), lengths), batch.caption_index)
        if self.queue is not None:
            self.queue.push(images, image_ids, audio, lengths)
        return loss

    def _queued_impostors(self, images: torch.Tensor, audio: torch.Tensor, lengths: torch.Tensor,
                          image_ids: torch.Tensor) -> Impostors:
        """The batch against the queue: ``B x D x H x W`` images, ``B x D x T'`` frames with ``B`` lengths, the
        pairs' ``B`` image ids."""
        assert self.queue is not None
        rows, expand = distinct_rows(images, image_ids)  # each distinct image scored once
        images = images[rows]
        queued_images, queued_image_ids = self.queue.images()
        queued_captions, queued_caption_ids = self.queue.captions()
        return Impostors(self.model.similarity(images, queued_captions)[expand].float(),
                         image_ids[:, None] == queued_caption_ids[None, :],
                         self.model.similarity(queued_images, audio, lengths).float(),
                         queued_image_ids[:, None] == image_ids[None, :])

    def train_step(self, batch: Batch) -> float | None:
        """One optimisation step; returns the loss, or None when it was non-finite and skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers() if b.is_floating_point()}
        loss = self._forward_loss(batch.to(self.device))
        if not torch.isfinite(loss):
            self._restore_buffers(buffers)  # batch-norm statistics of a bad batch are discarded too
            return self._skip("loss", loss.item())
        loss.backward()
        if self.world > 1:
            for p in self.loss_fn.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.train.grad_clip or float("inf"))
        if not torch.isfinite(norm):
            self._restore_buffers(buffers)
            return self._skip("gradient norm", norm.item())
        self.optimizer.step()
        self.scheduler.step()
        self.state.global_step += 1
        self._bad_in_a_row = 0
        return loss.item()

    def _restore_buffers(self, saved: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, buffer in self.model.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])

    def _skip(self, what: str, value: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        self._bad_in_a_row += 1
        if self.rank == 0:
            tqdm.write(f"warning: non-finite {what} ({value}) at step {self.state.global_step}; step skipped "
                       f"({self.state.skipped_steps} so far)")
        if self._bad_in_a_row >= self.config.train.max_bad_steps:
            raise VGSError(f"training stopped: {self._bad_in_a_row} consecutive steps had a non-finite {what}. "
                           f"Lower --lr, check the data, or raise train.max_bad_steps. The last good checkpoint is "
                           f"{self.out / 'checkpoints' / 'last.pt'}")
        return None

    # ------------------------------------------------------------------ loop

    def evaluate(self) -> dict | None:
        if self.dev_set is None or self.rank != 0:
            return None
        encoded = encode_split(self.model, self.dev_set, device=str(self.device),
                               max_images=self.config.train.eval_max_items, progress=False)
        result = pairs_protocol(encoded, self.model, seed=self.config.train.seed)
        self.model.train()
        return result

    def fit(self) -> TrainState:
        """Train until ``epochs`` (or ``max_minutes``) are done. Returns the final state."""
        t = self.config.train
        started = time.perf_counter() - self.state.minutes * 60
        last_checkpoint = time.perf_counter()
        loader_workers = 0 if self.train_set.images.is_features else t.workers
        stop_early = False
        while self.state.epoch < t.epochs and self.state.global_step < self.total_steps and not stop_early:
            epoch = self.state.epoch
            if self.state.batch_in_epoch == 0:
                torch.manual_seed(t.seed * 100_003 + epoch)  # dropout & sampling: a function of (seed, epoch)
            self.sampler.set_epoch(epoch, self.state.batch_in_epoch)
            self.train_set.set_epoch(epoch)
            # A private generator: creating the loader must not consume the global RNG (exact resume).
            loader = DataLoader(self.train_set, batch_sampler=self.sampler, collate_fn=partial(collate, multiple=self.model.audio.downsample), num_workers=loader_workers,
                                pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(t.seed + epoch))
            self.model.train()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", disable=not self.progress,
                       initial=self.state.batch_in_epoch,
                       total=self.state.batch_in_epoch + min(len(self.sampler), self.total_steps - self.state.global_step))
            for batch in bar:
                loss = self.train_step(batch)
                self.state.batch_in_epoch += 1
                if loss is not None:
                    self.state.epoch_loss_sum += loss
                    self.state.epoch_loss_count += 1
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                    if self.writer is not None and self.state.global_step % 10 == 0:
                        self.writer.add_scalar("train/loss", loss, self.state.global_step)
                        self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.state.global_step)
                self.state.minutes = (time.perf_counter() - started) / 60
                if (t.max_minutes and self.state.minutes >= t.max_minutes) or self.state.global_step >= self.total_steps:
                    stop_early = True
                    break
                if t.checkpoint_every_minutes and time.perf_counter() - last_checkpoint > t.checkpoint_every_minutes * 60:
                    self.save()
                    last_checkpoint = time.perf_counter()
            bar.close()
            epoch_done = not stop_early or self.state.batch_in_epoch >= len(self.sampler) + self.sampler.start_batch
            mean_loss = self.state.epoch_loss_sum / self.state.epoch_loss_count if self.state.epoch_loss_count else None
            if epoch_done:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self.state.epoch_loss_sum, self.state.epoch_loss_count = 0.0, 0
            self._end_of_epoch(epoch, mean_loss, force_eval=stop_early or self.state.epoch >= t.epochs)
            last_checkpoint = time.perf_counter()
        if self.writer is not None:
            self.writer.close()
        if self.rank == 0 and self.state.history:
            from .plots import training_curves

            training_curves(self.out / "metrics.csv", self.out / "curves.png")
        if self.world > 1:
            dist.barrier()
        return self.state

    def _end_of_epoch(self, epoch: int, mean_loss: float | None, force_eval: bool) -> None:
        t = self.config.train
        result = self.evaluate() if (force_eval or (epoch + 1) % t.eval_every == 0) else None
        done = self.state.batch_in_epoch / max(1, len(self.sampler) + self.sampler.start_batch) if self.state.epoch == epoch else 1.0
        row: dict[str, Any] = {"epoch": round(epoch + done, 3) if done < 1 else epoch + 1, "step": self.state.global_step,
                               "train_loss": round(mean_loss, 5) if mean_loss is not None else "",
                               "lr": f"{self.scheduler.get_last_lr()[0]:.3e}", "skipped_steps": self.state.skipped_steps,
                               "minutes": round(self.state.minutes, 2)}
        improved = False
        if result is not None:
            for direction, short in (("speech_to_image", "s2i"), ("image_to_speech", "i2s")):
                for key in ("r1", "r5", "r10"):
                    row[f"dev_{short}_{key}"] = round(result[direction][key]["mean"], 4)
            row["dev_mean_recall"] = round(mean_recall(result), 4)
            improved = row["dev_mean_recall"] > self.state.best
            self.state.best = max(self.state.best, row["dev_mean_recall"])
            if self.writer is not None:
                for key, value in row.items():
                    if key.startswith("dev_"):
                        self.writer.add_scalar(key.replace("dev_", "dev/"), value, self.state.global_step)
        if self.rank == 0:
            self.state.history.append(row)
            self._write_metrics()
            summary = ", ".join(f"{k}={v}" for k, v in row.items() if k in ("train_loss", "dev_s2i_r10", "dev_i2s_r10", "dev_mean_recall"))
            tqdm.write(f"epoch {epoch + 1}: {summary}")
        self.save(best=improved)

    def _write_metrics(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.state.history)
        write_text(self.out / "metrics.csv", buffer.getvalue())


def _numpy_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def _set_numpy_state(state: dict) -> None:
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"]))


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_state(state: list) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))


def cpu_bf16_instructions() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles)."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe is not None and probe() for probe in probes)


def train(config: Config, out: str | Path, resume: bool = False, progress: bool = True) -> TrainState:
    """Train a model as configured; write the run folder ``out``. Returns the final state."""
    if config.data:  # stored absolute, so the run folder works from any folder (vgs.api.resolve_data)
        config.data = str(Path(config.data).expanduser().resolve())
    trainer = Trainer(config, out, resume=resume, progress=progress)
    if trainer.rank == 0:
        print(f"training {describe(config)} on {len(trainer.train_set)} pairs "
              f"({len(trainer.sampler)} batches/epoch, device {trainer.device}, {trainer.world} process(es))")
    state = trainer.fit()
    return state
