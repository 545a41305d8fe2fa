"""Search a gallery for query images with a trained model: ranked matches and rank-list pictures.

python tools/search.py --config_file CONFIG --weight MODEL.pth \\
    --query QUERY_IMAGES --gallery GALLERY_FOLDER_OR_FEATURES.npy_OR_SAVED_GALLERY [KEY VALUE ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from datasets.image_list import ImageRecord, collect_images
from model.trained import check_same_model
from processor import FeatureExtractor, distance_matrix
from utils.errors import exits_on_user_error
from deploy.gallery import Gallery
from deploy.gallery_store import Entry, is_gallery
from tools.common import (DEFAULT_TOPK, ToolError, add_label_arguments, add_overwrite_argument,
                          add_sie_count_arguments, configure_logging, positive_int, tool_parser)
from tools.loading import default_folder, load_extractor, load_tool_config
from tools.drawing import draw_rank_list, save_png
from tools.feature_files import load_feature_index
from utils.distance import DISTANCE_UNIT, pairwise_distance
from utils.files import check_output_folder

logger = logging.getLogger("transreid.tools")


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(
        "Rank a gallery for each query image: prints the top-k matches with their distances "
        "(TEST.DIST_METRIC on features normalised per TEST.FEAT_NORM, as test.py) and saves one "
        "rank-list PNG per query: the query, then its matches, framed green (same identity), "
        "red (another) or grey (identity unknown). Identities come from Market-style names "
        "(0002_c1s1_000451_03.jpg), list files or the gallery's CSV index.",
        "python tools/search.py --config_file configs/Market/vit_transreid_stride.yml "
        "--weight logs/market/transformer_120.pth --query person.jpg --gallery my_crops/ "
        "--topk 10 --rerank", exported_ok=True)
    # One value per --query: a greedy list would swallow the KEY VALUE overrides that follow.
    parser.add_argument("--query", required=True, action="append",
                        help="query image, folder (recursive) or list file; repeat --query for "
                             "more")
    parser.add_argument("--gallery", required=True,
                        help="gallery: a folder of images (recursive), a list file, a .npy feature "
                             "matrix written by tools/extract_features.py (with its .csv index; "
                             "extract it with the same model and config), or a gallery folder "
                             "saved by tools/gallery.py (ranked by cosine distance, 1 - cos, "
                             "with its own index)")
    parser.add_argument("--topk", type=positive_int, default=DEFAULT_TOPK,
                        help=f"matches per query (default {DEFAULT_TOPK})")
    parser.add_argument("--output-dir", default="",
                        help="folder of the rank-list pictures (default: OUTPUT_DIR/search_results, "
                             "beside the weights without OUTPUT_DIR; search_results-2 and so on "
                             "after the first)")
    parser.add_argument("--rerank", action="store_true",
                        help="k-reciprocal re-ranking (sets TEST.RE_RANKING True; parameters "
                             "TEST.RE_RANKING_K1/K2/LAMBDA)")
    add_label_arguments(parser)
    add_sie_count_arguments(parser)
    add_overwrite_argument(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args


def gallery_features(args: argparse.Namespace, extractor: FeatureExtractor,
                     ) -> Tuple[torch.Tensor, List[ImageRecord]]:
    if args.gallery.endswith(".npy"):
        features, records, provenance = load_feature_index(args.gallery)
        check_same_model(provenance, extractor.provenance, args.gallery)
        return torch.from_numpy(features), records
    records = collect_images(args.gallery)
    return extractor.extract_records(records, desc="gallery features"), records


def format_matches(query: ImageRecord, matches: Sequence[ImageRecord],
                   distances: Sequence[float]) -> str:
    """The query and a table of its matches, one line each."""
    def identity(record: ImageRecord) -> str:
        return "?" if record.pid is None else str(record.pid)

    lines = [f"query {query.path} (id {identity(query)})",
             f"  {'rank':>4}  {'distance':>10}  {'id':>6}  path  (distance: {DISTANCE_UNIT})"]
    lines += [f"  {rank:>4}  {distance:>10.4f}  {identity(match):>6}  {match.path}"
              for rank, (match, distance) in enumerate(zip(matches, distances), 1)]
    return "\n".join(lines)


def require_pictures(gallery: Sequence[ImageRecord], orders: np.ndarray, source: str) -> None:
    """Fail before drawing anything if a match's image is gone (a saved gallery may be old)."""
    missing = sorted({gallery[i].path for i in orders.ravel() if not os.path.isfile(gallery[i].path)})
    if missing:
        raise ToolError(f"{len(missing)} matched image(s) listed by '{source}' no longer exist, "
                        f"e.g. '{missing[0]}'; re-run tools/extract_features.py on the gallery")


def picture_name(index: int, query: ImageRecord) -> str:
    """Unique per query even when two query files share a name."""
    return f"{index:03d}_{os.path.splitext(os.path.basename(query.path))[0]}.png"


def entry_record(entry: Entry) -> ImageRecord:
    """A saved gallery's entry as an image record; labels that are not ids have no pid."""
    return ImageRecord(entry.path, int(entry.label) if entry.label.isdigit() else None, entry.camera)


def rank_in_saved_gallery(args: argparse.Namespace, extractor: FeatureExtractor,
                          queries: Sequence[ImageRecord],
                          ) -> Tuple[List[ImageRecord], np.ndarray, np.ndarray]:
    """(gallery records, distances, orders) of the queries' top-k in a tools/gallery.py folder."""
    if args.rerank:
        raise ToolError(f"--rerank needs every gallery feature at once; '{args.gallery}' is a "
                        "saved gallery searched top-k: drop --rerank")
    gallery = Gallery.open(args.gallery)
    gallery.check_model(extractor.provenance)
    distances, orders = gallery.search(extractor.extract_records(queries, desc="query features"),
                                       args.topk)
    return [entry_record(e) for e in gallery.entries], distances, orders


def rank_in_features(args: argparse.Namespace, cfg, extractor: FeatureExtractor,
                     queries: Sequence[ImageRecord],
                     ) -> Tuple[List[ImageRecord], np.ndarray, np.ndarray]:
    """(gallery records, distances, orders) of the queries' top-k among images or a .npy matrix."""
    gallery_feats, gallery = gallery_features(args, extractor)
    query_feats = extractor.extract_records(queries, desc="query features")
    if gallery_feats.shape[1] != query_feats.shape[1]:
        raise ToolError(f"the gallery '{args.gallery}' holds {gallery_feats.shape[1]}-d features "
                        f"but this model gives {query_feats.shape[1]}-d ones; extract the gallery "
                        "with the same config and weights")
    distmat = distance_matrix(cfg, query_feats, gallery_feats)
    orders = np.argsort(distmat, axis=1, kind="stable")[:, :args.topk]
    # Ranked as the evaluator ranks (TEST.DIST_METRIC, --rerank); shown in the one unit of
    # every distance a user sees, a gallery's.
    shown = pairwise_distance(torch.as_tensor(query_feats).float(),
                              torch.as_tensor(gallery_feats).float(), "cosine").numpy()
    return gallery, np.take_along_axis(shown, orders, 1), orders


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    cfg = load_tool_config(args, ["TEST.RE_RANKING", "True"] if args.rerank else [])
    queries = [record for source in args.query for record in collect_images(source)]
    args.output_dir = args.output_dir or default_folder(cfg, "search_results")
    check_output_folder(args.output_dir, [picture_name(i, q) for i, q in enumerate(queries)],
                        [args.run_config, cfg.TEST.WEIGHT, args.gallery, *args.query],
                        args.overwrite)
    extractor = load_extractor(args, cfg, camera=args.camera, view=args.view)
    cfg = extractor.cfg  # an exported file's input settings on top
    if is_gallery(args.gallery):
        gallery, distances, orders = rank_in_saved_gallery(args, extractor, queries)
    else:
        gallery, distances, orders = rank_in_features(args, cfg, extractor, queries)
    require_pictures(gallery, orders, args.gallery)
    for index, (query, row_distances, order) in enumerate(zip(queries, distances, orders)):
        matches = [gallery[i] for i in order]
        print(format_matches(query, matches, row_distances))
        picture = os.path.join(args.output_dir, picture_name(index, query))
        save_png(draw_rank_list(query, matches, row_distances), picture)
        print(f"  rank list: {picture}")
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
