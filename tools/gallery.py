"""A lasting gallery of known identities: build it, add to it, remove from it, search it.

python tools/gallery.py build  --gallery DIR --config_file CONFIG --weight MODEL.pth --images SRC [--label NAME] [--allow-duplicates]
python tools/gallery.py add    --gallery DIR --config_file CONFIG --weight MODEL.pth --images SRC [--label NAME] [--allow-duplicates]
python tools/gallery.py remove --gallery DIR (--label NAME | --path IMAGE) [--compact]
python tools/gallery.py search --gallery DIR --config_file CONFIG --weight MODEL.pth --query SRC [--topk K]
python tools/gallery.py info   --gallery DIR
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets.image_list import ImageRecord, collect_images
from processor import FeatureExtractor
from utils.errors import exits_on_user_error
from deploy.enrolment import add_images, search_images
from deploy.gallery import Gallery, Hit
from deploy.vector_index import EXACT, INDEX_KINDS
from deploy.gallery_manifest import MAX_DISTANCE
from tools.common import (DEFAULT_TOPK, add_label_arguments, add_sie_count_arguments,
                          bounded_float, configure_logging, non_negative_int, positive_int,
                          tool_parser)
from tools.loading import load_extractor, load_tool_config
from utils.errors import ToolError

logger = logging.getLogger("transreid.tools")

EXAMPLE = ("python tools/gallery.py {command} --gallery my_gallery --config_file "
           "configs/Market/vit_transreid_stride.yml --weight logs/market/transformer_120.pth")


# A false-accept rate, and a match threshold in the gallery's unit: a cosine distance 1 - cos.
far_value = bounded_float(0.0, 1.0, low_open=True, high_open=True, what="a false-accept rate")
distance_value = bounded_float(0.0, MAX_DISTANCE, what="a cosine distance (1 - cos)")


def model_parser(command: str, description: str) -> argparse.ArgumentParser:
    """The parent of the subcommands that run the model: config, weights and SIE labels."""
    parser = tool_parser(description, EXAMPLE.format(command=command), exported_ok=True)
    parser.add_argument("--gallery", required=True, help="the gallery folder")
    add_label_arguments(parser)
    add_sie_count_arguments(parser)
    return parser


def add_enrol_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, action="append",
                        help="image, folder (recursive) or list file to enrol; repeat for more")
    parser.add_argument("--label", default=None,
                        help="identity label of every image given (default: each image's pid "
                             "from a Market-style name or the list file; a number is its value: "
                             "0112 is 112)")
    parser.add_argument("--include-junk", action="store_true",
                        help="enrol Market-style junk (pid -1) and distractor (pid 0) images "
                             "too, under those pids; by default they are skipped, as no identity")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--calibrate-far", type=far_value, metavar="FAR",
                           help="set the match threshold for this false-accept rate from the "
                                "gallery's own entries (identities seen by two cameras)")
    threshold.add_argument("--threshold", type=distance_value, metavar="DIST",
                           help="set the match threshold (cosine distance 1 - cos, 0 to 2); test.py's "
                                "test_results.json gives one for FAR 1e-3 (gallery_threshold)")
    parser.add_argument("--threshold-far", type=far_value, metavar="FAR",
                        help="the false-accept rate that --threshold stands for (recorded)")
    parser.add_argument("--allow-duplicates", action="store_true",
                        help="enrol images the gallery already holds (or given twice) again; "
                             "by default they are refused, as each would find itself twice")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="A lasting, searchable gallery of known identities: enrol images through a "
                    "trained model, remove them by label or path, and search it top-k with a "
                    "match / no-match decision at the gallery's threshold.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build", add_help=False, help="create a gallery from images",
        parents=[model_parser("build", "Create a gallery folder and enrol images.")])
    add_enrol_arguments(build)
    build.add_argument("--index", choices=INDEX_KINDS, default=EXACT,
                       help="search: flat (exact, default); pq (approximate, for galleries "
                            "of millions: compact codes, the best candidates re-ranked "
                            "exactly); hnsw or ivf")
    build.add_argument("--overwrite", action="store_true", help="replace an existing gallery")
    add = commands.add_parser("add", add_help=False, help="enrol more images",
                              parents=[model_parser("add", "Enrol more images in a gallery.")])
    add_enrol_arguments(add)
    search = commands.add_parser(
        "search", add_help=False, help="who is each query image?",
        parents=[model_parser("search", "Top-k entries of each query image with distances and "
                                        "match decisions; unreadable images are named and "
                                        "skipped.")])
    search.add_argument("--query", required=True, action="append",
                        help="query image, folder (recursive) or list file; repeat for more")
    search.add_argument("--topk", type=positive_int, default=DEFAULT_TOPK,
                        help=f"hits per query (default {DEFAULT_TOPK})")
    search.add_argument("--index", choices=INDEX_KINDS, default=None,
                        help="search this way instead of the gallery's saved choice")
    remove = commands.add_parser("remove", help="remove entries by label or image path")
    remove.add_argument("--gallery", required=True, help="the gallery folder")
    which = remove.add_mutually_exclusive_group(required=True)
    which.add_argument("--label", help="remove every entry of this identity label")
    which.add_argument("--path", help="remove the entries of this image")
    remove.add_argument("--compact", action="store_true",
                        help="then rewrite the gallery without removed rows (rewrites all)")
    info = commands.add_parser("info", help="what a gallery holds")
    info.add_argument("--gallery", required=True, help="the gallery folder")
    info.add_argument("--labels", type=non_negative_int, default=50, metavar="N",
                      help="list the entry counts of the first N labels (default 50)")
    return parser


def model_extractor(args: argparse.Namespace) -> FeatureExtractor:
    """The extractor of --weight: PyTorch weights or an exported .onnx / .xml."""
    return load_extractor(args, load_tool_config(args), camera=args.camera, view=args.view)


def images_of(sources: Sequence[str]) -> List[ImageRecord]:
    return [record for source in sources for record in collect_images(source)]


def enrol(gallery: Gallery, args: argparse.Namespace, extractor: FeatureExtractor) -> None:
    if args.threshold_far is not None and args.threshold is None:
        raise ToolError("--threshold-far goes with --threshold DIST (the FAR it stands for)")
    records = images_of(args.images)
    enrolled = add_images(gallery, extractor, records, args.label, args.allow_duplicates,
                          args.include_junk)
    if args.calibrate_far is not None:
        gallery.calibrate(args.calibrate_far)
    elif args.threshold is not None:
        gallery.set_threshold(args.threshold, args.threshold_far)
    gallery.save()
    if gallery.index_file_stale():  # an approximate gallery: load it without building its index
        gallery.save_index()
    skipped = f" ({len(records) - enrolled} skipped, see above)" if enrolled < len(records) else ""
    print(f"{enrolled} image(s) enrolled{skipped}; gallery '{args.gallery}' holds {len(gallery)} "
          f"entries of {len(gallery.labels())} identities")


def run_build(args: argparse.Namespace) -> None:
    extractor = model_extractor(args)
    # Created (locked, and checked not to be a gallery already) before any image is read.
    with Gallery.create(args.gallery, extractor.provenance, args.index,
                        args.overwrite) as gallery:
        enrol(gallery, args, extractor)


def run_add(args: argparse.Namespace) -> None:
    with Gallery.open(args.gallery, writable=True) as gallery:
        enrol(gallery, args, model_extractor(args))


def format_hits(query: ImageRecord, hits: Sequence[Hit]) -> str:
    """The query, then one line per hit: rank, distance, match, label, camera, path."""
    def decision(hit: Hit) -> str:
        return "?" if hit.match is None else ("match" if hit.match else "-")

    lines = [f"query {query.path}",
             f"  {'rank':>4}  {'distance':>9}  {'match':>5}  {'label':>10}  {'cam':>3}  path"]
    lines += [f"  {rank:>4}  {hit.distance:>9.4f}  {decision(hit):>5}  {hit.entry.label:>10}  "
              f"{'?' if hit.entry.camera is None else hit.entry.camera:>3}  {hit.entry.path}"
              for rank, hit in enumerate(hits, 1)]
    return "\n".join(lines)


def run_search(args: argparse.Namespace) -> None:
    gallery = Gallery.open(args.gallery, index=args.index)
    extractor = model_extractor(args)
    results, skipped = search_images(gallery, extractor, images_of(args.query), args.topk)
    if gallery.threshold is None:
        print("(the gallery has no threshold: set one with add --calibrate-far or --threshold)")
    for query, hits in results:
        print(format_hits(query, hits))
    for path in skipped:
        print(f"skipped (cannot be read): {path}")


def run_remove(args: argparse.Namespace) -> None:
    with Gallery.open(args.gallery, writable=True) as gallery:
        removed = gallery.remove(label=args.label, path=args.path)
        if args.compact:
            gallery.compact()
        else:
            gallery.save()
    print(f"removed {removed} entr{'y' if removed == 1 else 'ies'}; {len(gallery)} left")


def saved_index(manifest) -> str:
    if not manifest.ann:
        return ""
    return f" (saved: {manifest.ann['name']}, {manifest.ann['rows']} rows)"


def run_info(args: argparse.Namespace) -> None:
    gallery = Gallery.open(args.gallery)
    manifest = gallery.manifest
    provenance = manifest.provenance or {}
    far = "" if manifest.threshold_far is None else f" (FAR {manifest.threshold_far:g})"
    threshold = "none" if manifest.threshold is None else f"{manifest.threshold:.4f}{far}"
    print(f"gallery    {args.gallery}\n"
          f"entries    {len(gallery)} of {len(gallery.labels())} identities, {gallery.dim}-d\n"
          f"threshold  {threshold}\n"
          f"index      {gallery.index_kind}{saved_index(manifest)}\n"
          f"files      {len(manifest.segments)} segment(s), {manifest.num_tombstones} removed rows\n"
          f"model      {provenance.get('weight', 'unknown')} "
          f"(sha256 {str(provenance.get('weight_sha256', '?'))[:12]})")
    labels = sorted(gallery.labels().items())
    for label, count in labels[:args.labels]:
        print(f"  {label:>10}  {count}")
    if len(labels) > args.labels:
        print(f"  ... and {len(labels) - args.labels} more labels (--labels N to list more)")


COMMANDS = {"build": run_build, "add": run_add, "search": run_search, "remove": run_remove,
            "info": run_info}


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    COMMANDS[args.command](args)
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
