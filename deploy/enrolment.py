"""Images into a gallery and out of it, through a model: enrol crops under their identities,
and search a gallery with query crops. The extractor is a `processor.FeatureExtractor` of the
model the gallery was built with (its `extract_records` and `provenance`)."""
from __future__ import annotations

import logging
import os
from collections import Counter
from typing import List, Optional, Sequence, Tuple

from datasets.bases import DISTRACTOR_PID, JUNK_PID
from datasets.image_list import ImageRecord, readable_images

from .gallery import Gallery, Hit
from .gallery_store import Entry, GalleryError, entry_label

logger = logging.getLogger("transreid.gallery")


def add_images(gallery: Gallery, extractor, records: Sequence[ImageRecord],
               label: Optional[str] = None, allow_duplicates: bool = False,
               include_junk: bool = False) -> int:
    """Enrol images: each labelled `label`, else by its own identity (a Market-style name or
    a list file's pid; junk and distractors, which are no identities, are skipped unless
    `include_junk`); camera from the record. An unreadable image stops the enrolment (nothing
    is added) with its name; so does an image the gallery holds already, or one given twice
    (before any feature is computed), unless `allow_duplicates`."""
    check_extractor(gallery, extractor)
    if label is None and not include_junk:
        records = identities_only(records)
    entries = [Entry(entry_label(label) if label is not None else _record_label(r),
                     os.path.abspath(r.path), r.camid) for r in records]
    gallery.check_new_paths([e.path for e in entries], allow_duplicates)
    gallery.add(extractor.extract_records(records, desc="gallery features"), entries,
                allow_duplicates)
    return len(entries)


def search_images(gallery: Gallery, extractor, records: Sequence[ImageRecord],
                  k: int = 10) -> Tuple[List[Tuple[ImageRecord, List[Hit]]], List[str]]:
    """(query, its hits) of each readable query image, and the paths of those that could not
    be read (each named in a warning; the others are searched)."""
    check_extractor(gallery, extractor)
    readable, skipped = readable_images(records)
    if not readable:
        return [], skipped
    features = extractor.extract_records(readable, desc="query features")
    return list(zip(readable, gallery.hits(features, k))), skipped


def check_extractor(gallery: Gallery, extractor) -> None:
    """Refuse a model other than the gallery's; an empty gallery takes the model's record."""
    provenance = extractor.provenance
    if gallery.manifest.provenance is None and not gallery.dim:
        gallery.manifest.provenance = provenance
    gallery.check_model(provenance)


NOT_IDENTITIES = {JUNK_PID: "junk", DISTRACTOR_PID: "distractor"}


def identities_only(records: Sequence[ImageRecord]) -> List[ImageRecord]:
    """`records` without the Market-style junk (pid -1) and distractor (pid 0) images, each
    kind skipped counted in a log line."""
    skipped = Counter(NOT_IDENTITIES[r.pid] for r in records if r.pid in NOT_IDENTITIES)
    for kind, count in sorted(skipped.items()):
        logger.info("skipped %d %s image(s) (pid %d): no identity to enrol them as; "
                    "--include-junk enrols them under that pid", count, kind,
                    next(pid for pid, name in NOT_IDENTITIES.items() if name == kind))
    return [r for r in records if r.pid not in NOT_IDENTITIES]


def _record_label(record: ImageRecord) -> str:
    if record.pid is None:
        raise GalleryError(f"no identity label for '{record.path}': give one (--label NAME), use "
                           "Market-style names (0002_c1s1_000451_03.jpg) or a list file with pids")
    return str(record.pid)
