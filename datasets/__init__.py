"""Re-ID datasets, samplers and data loaders (see make_dataloader)."""
from .bases import (BaseImageDataset, DatasetError, DatasetNotFoundError, ImageDataset,
                    read_image)
from .make_dataloader import (load_eval_dataset, make_dataloader, make_val_loader,
                              set_train_epoch, train_collate_fn, val_collate_fn)
from .registry import FACTORY, build_dataset, register_dataset
from .samplers import RandomIdentitySampler, RandomIdentitySampler_DDP, ShuffleSampler
from .synthetic import SyntheticSettings, ensure_synthetic_person, ensure_synthetic_vehicle

__all__ = [
    "make_dataloader", "make_val_loader", "load_eval_dataset", "set_train_epoch",
    "train_collate_fn", "val_collate_fn", "build_dataset", "register_dataset", "FACTORY",
    "BaseImageDataset", "ImageDataset", "read_image", "DatasetError", "DatasetNotFoundError",
    "RandomIdentitySampler", "RandomIdentitySampler_DDP", "ShuffleSampler", "SyntheticSettings",
    "ensure_synthetic_person", "ensure_synthetic_vehicle",
]
