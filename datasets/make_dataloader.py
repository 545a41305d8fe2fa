"""Data loaders of a config: the reference's `make_dataloader` and its collate functions."""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import (BatchSampler, DataLoader, DistributedSampler, Sampler,
                              default_collate)

from config import ConfigError
from config.choices import UNLABELLED_MODES
from utils.device import loader_workers, uses_gpu

from .bases import BaseImageDataset, DatasetError, ImageDataset, Sample, SeededImageDataset
from .cluster_sampler import IterationSampler, RandomMultipleGallerySampler
from .device_augment import WorkerAugment
from .registry import build_dataset
from .samplers import (RandomIdentitySampler, RandomIdentitySampler_DDP, SeededIndices,
                       ShuffleSampler)
from .transforms import build_test_transforms, build_train_transforms

logger = logging.getLogger("transreid.datasets")


def train_collate_fn(batch):
    """-> (images, pids, camids, viewids), all tensors; with INPUT.DEVICE_AUGMENT, whose
    samples carry `(uint8 image, params)` pairs (WorkerAugment), -> (uint8 images, pids,
    camids, viewids, params) for DeviceAugment."""
    imgs, pids, camids, viewids, _ = zip(*batch)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
    labels = as_tensor(pids), as_tensor(camids), as_tensor(viewids)
    if isinstance(imgs[0], tuple):
        # default_collate stacks straight into shared memory in a worker.
        images, params = default_collate(list(imgs))
        return (images, *labels, params)
    return (torch.stack(imgs, dim=0), *labels)


def val_collate_fn(batch):
    """-> (images, pids, camids, camids_batch, viewids, img_paths): pids and camids as tuples
    of ints (for the evaluator), camids_batch and viewids as tensors (for the model)."""
    imgs, pids, camids, viewids, img_paths = zip(*batch)
    return (torch.stack(imgs, dim=0), pids, camids, torch.tensor(camids, dtype=torch.int64),
            torch.tensor(viewids, dtype=torch.int64), img_paths)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _load_dataset(cfg, trial: int, require_train: bool = True) -> BaseImageDataset:
    """Parse (and, for the synthetic data, render) the dataset; under torch.distributed rank 0
    goes first so that only one process renders."""
    if not _distributed():
        return build_dataset(cfg, trial, require_train)
    if dist.get_rank() == 0:
        dataset = build_dataset(cfg, trial, require_train)
        dist.barrier()
        return dataset
    dist.barrier()
    return build_dataset(cfg, trial, require_train)


def _check_views(cfg, dataset: BaseImageDataset) -> None:
    if cfg.MODEL.SIE_VIEW and not dataset.has_views:
        raise ConfigError(f"MODEL.SIE_VIEW is on but {dataset.display_name} has no view labels; "
                         "set MODEL.SIE_VIEW False (view labels exist for veri, "
                         "synthetic_vehicle and list datasets with a view column)")


def _warn_untrained_sie_rows(cfg, dataset: BaseImageDataset) -> None:
    """SIE rows of cameras or views absent from training stay at their random start."""
    for key, column, name in (("SIE_CAMERA", 2, "camera"), ("SIE_VIEW", 3, "view")):
        if not cfg.MODEL[key]:
            continue
        trained = {sample[column] for sample in dataset.train}
        unseen = sorted({sample[column] for sample in dataset.query + dataset.gallery} - trained)
        if unseen:
            logger.warning("MODEL.%s is on but %s %s id(s) %s appear only in query/gallery: their "
                           "SIE embeddings are never trained", key, dataset.display_name, name,
                           unseen)


def _loader_options(cfg) -> dict:
    return dict(num_workers=loader_workers(cfg.DATALOADER.NUM_WORKERS),
                pin_memory=uses_gpu(cfg.MODEL.DEVICE))


def _train_transform(cfg):
    """The reference's transforms, or with INPUT.DEVICE_AUGMENT only their worker half."""
    if cfg.INPUT.DEVICE_AUGMENT:
        logger.info("INPUT.DEVICE_AUGMENT: the loader yields uint8 images and augmentation "
                    "parameters; flip, crop, normalisation and erasing run on the device")
        return WorkerAugment(cfg)
    return build_train_transforms(cfg)


def _train_loader(cfg, dataset: BaseImageDataset) -> DataLoader:
    train_set = SeededImageDataset(dataset.train, _train_transform(cfg),
                                   cfg.DATALOADER.READ_RETRIES)
    batch_size, seed = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.SEED
    options = _loader_options(cfg)
    # The augmentation seeds come with the indices, so the workers may live across epochs, and
    # the loader's own generator keeps it from drawing on the training random state.
    options.update(persistent_workers=options["num_workers"] > 0,
                   generator=torch.Generator().manual_seed(seed))
    sampler_name = cfg.DATALOADER.SAMPLER  # one of config.choices.SAMPLERS (load_config)
    distributed = cfg.MODEL.DIST_TRAIN and _distributed()
    world_size, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
    if sampler_name == "softmax_triplet" and distributed:
        sampler = RandomIdentitySampler_DDP(dataset.train, batch_size,
                                            cfg.DATALOADER.NUM_INSTANCE, seed)
        batch_sampler = BatchSampler(SeededIndices(sampler, seed, rank),
                                     batch_size // world_size, drop_last=True)
        return DataLoader(train_set, batch_sampler=batch_sampler, collate_fn=train_collate_fn,
                          **options)
    sampler: Sampler[int]
    if sampler_name == "softmax_triplet":
        sampler = RandomIdentitySampler(dataset.train, batch_size, cfg.DATALOADER.NUM_INSTANCE,
                                        seed)
    elif distributed:
        # The reference shuffles the whole set on every rank; each rank takes its share here.
        sampler = DistributedSampler(train_set, shuffle=True, seed=seed)
    else:
        sampler = ShuffleSampler(len(train_set), seed)
    # drop_last: a last batch of one image would stop training in the BN neck.
    return DataLoader(train_set, batch_size=batch_size // world_size,
                      sampler=SeededIndices(sampler, seed, rank), collate_fn=train_collate_fn,
                      drop_last=True, **options)


class PseudoLabelLoader:
    """Training without labels (MODEL.TRAIN_MODE 'usl', 'uda'): CLUSTER.ITERS_PER_EPOCH
    batches of the images clustered this epoch, labelled by cluster, P clusters x
    DATALOADER.NUM_INSTANCE crops per batch (RandomMultipleGallerySampler); rebuilt by `relabel`
    before each epoch."""

    def __init__(self, cfg, samples: Sequence[Sample],
                 tracks: Optional[Sequence[int]] = None) -> None:
        self.cfg, self.samples = cfg, list(samples)
        # The track of each sample (-1 for none), which the clustering joins; None: no tracks.
        self.tracks = None if tracks is None else list(tracks)
        self.loader: Optional[DataLoader] = None

    def relabel(self, labels: Sequence[int]) -> None:
        """Train on the images whose label is not -1, their label as identity."""
        clustered = [(path, int(label), camid, viewid)
                     for (path, _, camid, viewid), label in zip(self.samples, labels) if label >= 0]
        cfg, seed = self.cfg, self.cfg.SOLVER.SEED
        sampler = IterationSampler(
            RandomMultipleGallerySampler(clustered, cfg.DATALOADER.NUM_INSTANCE, seed),
            cfg.SOLVER.IMS_PER_BATCH, cfg.CLUSTER.ITERS_PER_EPOCH)
        train_set = SeededImageDataset(clustered, _train_transform(cfg),
                                       cfg.DATALOADER.READ_RETRIES)
        self.loader = DataLoader(train_set, batch_size=cfg.SOLVER.IMS_PER_BATCH,
                                 sampler=SeededIndices(sampler, seed), drop_last=True,
                                 collate_fn=train_collate_fn, **_loader_options(cfg))

    def _built(self) -> DataLoader:
        if self.loader is None:
            raise RuntimeError("PseudoLabelLoader.relabel must run before each epoch")
        return self.loader

    def __iter__(self):
        return iter(self._built())

    def __len__(self) -> int:
        return self.cfg.CLUSTER.ITERS_PER_EPOCH

    @property
    def sampler(self):
        return self._built().sampler

    @property
    def batch_sampler(self):
        return self._built().batch_sampler


def _eval_loader(cfg, samples) -> DataLoader:
    eval_set = ImageDataset(samples, build_test_transforms(cfg), cfg.DATALOADER.READ_RETRIES)
    return DataLoader(eval_set, batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False,
                      collate_fn=val_collate_fn, **_loader_options(cfg))


class LazyLoader:
    """A loader built when first used. The reference's `make_dataloader` returns
    `train_loader_normal` (the training images in test mode), which training never iterates;
    its workers need not start unless someone does."""

    def __init__(self, build: Callable[[], DataLoader]) -> None:
        self._build = build
        self._loader: Optional[DataLoader] = None

    @property
    def loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = self._build()
        return self._loader

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not built yet, or being copied: no loader to ask
            raise AttributeError(name)
        return getattr(self.loader, name)


def training_tracks(cfg, dataset: BaseImageDataset) -> Optional[list]:
    """The tracks that CLUSTER.TRACKS asks the clustering to join: None for 'none'."""
    source = cfg.CLUSTER.TRACKS
    if source == 'none':
        return None
    if dataset.train_tracks is None:
        raise ConfigError(f"CLUSTER.TRACKS is '{source}' but DATASETS.NAMES "
                          f"'{cfg.DATASETS.NAMES}' gives no tracks: set CLUSTER.TRACKS 'none', or read tracks with DATASETS.NAMES "
                          f"'unlabelled' and CLUSTER.TRACKS 'folders' or 'names'")
    if source != 'dataset' and dataset.labelled:
        raise ConfigError(f"CLUSTER.TRACKS '{source}' is how DATASETS.NAMES 'unlabelled' reads "
                          f"tracks; DATASETS.NAMES '{cfg.DATASETS.NAMES}' gives its own: set "
                          f"CLUSTER.TRACKS 'dataset'")
    if len(dataset.train_tracks) != len(dataset.train):
        raise ValueError(f"{dataset.display_name}: {len(dataset.train_tracks)} tracks for "
                         f"{len(dataset.train)} training images")
    return dataset.train_tracks


def _pseudo_label_loader(cfg, dataset: BaseImageDataset) -> PseudoLabelLoader:
    return PseudoLabelLoader(cfg, dataset.train, training_tracks(cfg, dataset))


def make_dataloader(cfg, trial: int = 0) -> Tuple[DataLoader, DataLoader, DataLoader, int, int,
                                                  int, int]:
    """-> (train_loader, train_loader_normal, val_loader, num_query, num_classes, camera_num,
    view_num), as the reference. The val set is the query followed by the gallery.

    `trial` selects VehicleID's query/gallery draw (0..TEST.VEHICLEID_TRIALS-1, see
    `make_val_loader`); other datasets ignore it.
    """
    dataset = _load_dataset(cfg, trial)
    _check_views(cfg, dataset)
    _warn_untrained_sie_rows(cfg, dataset)
    num_classes, camera_num, view_num = (dataset.num_train_pids, dataset.num_cameras,
                                         dataset.num_views)
    logger.info("Number of classes: %d, cameras: %d, views: %d", num_classes, camera_num,
                view_num)
    unlabelled = cfg.MODEL.TRAIN_MODE in UNLABELLED_MODES
    if not (unlabelled or dataset.labelled):
        raise ConfigError(f"{dataset.display_name} have no identities to train on with "
                          f"MODEL.TRAIN_MODE '{cfg.MODEL.TRAIN_MODE}'; set MODEL.TRAIN_MODE 'usl'")
    train_loader = (_pseudo_label_loader(cfg, dataset) if unlabelled
                    else _train_loader(cfg, dataset))
    train_loader_normal = LazyLoader(lambda: _eval_loader(cfg, dataset.train))
    val_loader = _eval_loader(cfg, dataset.query + dataset.gallery)
    return (train_loader, train_loader_normal, val_loader, len(dataset.query), num_classes,
            camera_num, view_num)


def load_eval_dataset(cfg, trial: int = 0) -> BaseImageDataset:
    """The dataset as evaluation needs it: query and gallery, and the training split only if
    it is there (a test-only tree is enough). Its `num_cameras` / `num_views` count the ids of
    the splits found."""
    dataset = _load_dataset(cfg, trial, require_train=False)
    if not dataset.labelled:
        raise DatasetError(f"{dataset.display_name} under DATASETS.ROOT_DIR "
                           f"'{cfg.DATASETS.ROOT_DIR}' have no query or gallery to evaluate on; "
                           f"evaluate with a labelled DATASETS.NAMES")
    _check_views(cfg, dataset)
    return dataset


def make_val_loader(cfg, trial: int = 0,
                    dataset: Optional[BaseImageDataset] = None) -> Tuple[DataLoader, int]:
    """-> (val_loader, num_query) of one evaluation trial, without building train loaders or
    needing the training split; `dataset` reuses one from `load_eval_dataset`.

    For VehicleID, trial t draws the query/gallery split from (SOLVER.SEED, t); run trials
    0..TEST.VEHICLEID_TRIALS-1 and average. For other datasets every trial is the same.
    """
    if dataset is None:
        dataset = load_eval_dataset(cfg, trial)
    return _eval_loader(cfg, dataset.query + dataset.gallery), len(dataset.query)


def set_train_epoch(loader: DataLoader, epoch: int) -> None:
    """Make the next pass over `loader` draw epoch `epoch`'s order, whatever its sampler."""
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        set_epoch: Any = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
            return
