"""PKU VehicleID (Liu et al., Deep Relative Distance Learning, CVPR 2016).

Test protocol (as the reference): for every test vehicle one image is drawn into the gallery and
the others become queries; the draw is repeated for `TEST.VEHICLEID_TRIALS` trials and the
results averaged. Trial `t` draws from `(seed, t)`, so every trial is reproducible. Query images
get camera 0 and gallery images camera 1, so that the same-camera filter of the evaluation never
discards a true match.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

from .bases import NO_VIEW, BaseImageDataset, DatasetError, Sample

logger = logging.getLogger("transreid.datasets")

TEST_SIZES = (800, 1600, 2400)
NUM_TRAIN_IDS = 13164
QUERY_CAM, GALLERY_CAM = 0, 1


class VehicleID(BaseImageDataset):
    dataset_dir = "VehicleID_V1.0"
    display_name = "VehicleID"

    def __init__(self, root: str, test_size: int = 800, seed: int = 0, trial: int = 0,
                 verbose: bool = True, require_train: bool = True, num_trials: int = 10):
        if test_size not in TEST_SIZES:
            raise DatasetError(f"DATASETS.VEHICLEID_TEST_SIZE is {test_size}; choose one of "
                               f"{TEST_SIZES}")
        self.test_size, self.seed, self.trial = test_size, seed, trial
        self.num_trials = num_trials
        super().__init__(root, verbose, require_train=require_train)

    def expected_tree(self) -> str:
        return "\n".join([f"  {self.folder}/", "    image/  (<name>.jpg)",
                          "    train_test_split/",
                          "      train_list.txt  (lines '<name> <vehicle id>')"]
                         + [f"      test_list_{n}.txt" for n in TEST_SIZES])

    def _load_splits(self) -> Tuple[List[Sample], List[Sample], List[Sample]]:
        split_dir = os.path.join(self.dataset_dir, "train_test_split")
        train_list = os.path.join(split_dir, "train_list.txt")
        test_list = os.path.join(split_dir, f"test_list_{self.test_size}.txt")
        self.require(self.dataset_dir, split_dir, *self.training_paths(train_list), test_list)
        self.split_sources = dict(train=train_list, query=test_list, gallery=test_list)
        logger.info("VehicleID: test list %s, query/gallery trial %d", test_list, self.trial)

        train_images = (self._read_list(train_list, expected_ids=NUM_TRAIN_IDS)
                        if os.path.isfile(train_list) else {})
        test_images = self._read_list(test_list, expected_ids=self.test_size)
        train = [self._sample(name, pid, QUERY_CAM)
                 for pid in sorted(train_images) for name in train_images[pid]]
        query, gallery = self._draw_query_gallery(test_images)
        return train, query, gallery

    def _draw_query_gallery(self, images_of: Dict[int, List[str]]
                            ) -> Tuple[List[Sample], List[Sample]]:
        """One random image of every vehicle into the gallery, the others into the query."""
        rng = np.random.default_rng([self.seed, self.trial])
        query, gallery = [], []
        for pid in sorted(images_of):
            names = images_of[pid]
            pick = int(rng.integers(len(names)))
            gallery.append(self._sample(names[pick], pid, GALLERY_CAM))
            query += [self._sample(n, pid, QUERY_CAM) for i, n in enumerate(names) if i != pick]
        return query, gallery

    def _sample(self, name: str, pid: int, camid: int) -> Sample:
        return os.path.join(self.dataset_dir, "image", name + ".jpg"), pid, camid, NO_VIEW

    def _read_list(self, path: str, expected_ids: int) -> Dict[int, List[str]]:
        images_of: Dict[int, List[str]] = defaultdict(list)
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                    raise DatasetError(f"{path}:{line_no}: '{line.strip()}' is not "
                                       "'<image name> <vehicle id>'")
                images_of[int(fields[1])].append(fields[0])
        if len(images_of) != expected_ids:
            # The reference asserts these counts; a subset is still usable, so only warn.
            logger.warning("%s holds %d vehicles, the benchmark has %d", path, len(images_of),
                           expected_ids)
        return images_of
