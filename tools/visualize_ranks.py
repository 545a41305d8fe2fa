"""Rank-list pictures and a CMC / mAP summary for a benchmark test set, e.g. after test.py.

python tools/visualize_ranks.py --config_file CONFIG --weight MODEL.pth [--query-index I,J,...]
    [--num-queries N] [KEY VALUE ...]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from datasets import load_eval_dataset, make_val_loader
from datasets.image_list import ImageRecord
from processor import distance_matrix, make_evaluator
from utils.errors import exits_on_user_error
from tools.common import ToolError, add_overwrite_argument, configure_logging, tool_parser
from tools.loading import default_folder, load_extractor, load_tool_config
from tools.drawing import draw_cmc_summary, draw_rank_list, new_figure, save_png
from utils.distance import pairwise_distance
from utils.files import check_output_folder

logger = logging.getLogger("transreid.tools")

SUMMARY_NAME = "summary.png"


def index_list(text: str) -> List[int]:
    """'0,17,42' -> [0, 17, 42] (one token, so that KEY VALUE overrides may follow)."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser(
        "Draw rank lists of chosen or random queries of the test set of DATASETS.NAMES, scored "
        "as test.py scores them (gallery images of the query's identity and camera are left "
        "out, as the benchmark protocol does), and one summary picture of the CMC curve and mAP.",
        "python tools/visualize_ranks.py --config_file configs/Market/vit_transreid_stride.yml "
        "--weight logs/market/transformer_120.pth --query-index 0,17,42 TEST.RE_RANKING True",
        exported_ok=True)
    parser.add_argument("--query-index", type=index_list, default=None, metavar="I,J,...",
                        help="comma-separated indices of the queries to draw (0 = first query "
                             "of the test set); overrides --num-queries")
    parser.add_argument("--num-queries", type=int, default=5,
                        help="number of random queries to draw when --query-index is not given "
                             "(default 5)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random query choice (default 0)")
    parser.add_argument("--topk", type=int, default=10, help="matches per query (default 10)")
    parser.add_argument("--output-dir", default="",
                        help="folder of the pictures (default: OUTPUT_DIR/rank_lists, beside the "
                             "weights without OUTPUT_DIR; rank_lists-2 and so on after the first)")
    add_overwrite_argument(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.topk < 1 or args.num_queries < 1:
        parser.error("--topk and --num-queries must be at least 1")
    return args


def choose_queries(args: argparse.Namespace, num_query: int) -> List[int]:
    if args.query_index is not None:
        bad = [i for i in args.query_index if not 0 <= i < num_query]
        if bad:
            raise ToolError(f"--query-index {bad} out of range: the test set has {num_query} "
                            f"queries (0..{num_query - 1})")
        return list(args.query_index)
    rng = np.random.default_rng(args.seed)
    return sorted(rng.choice(num_query, size=min(args.num_queries, num_query), replace=False).tolist())


def picture_name(query_index: int) -> str:
    return f"query_{query_index:05d}.png"


def protocol_ranking(distances: np.ndarray, q_pid: int, q_camid: int, g_pids: np.ndarray,
                     g_camids: np.ndarray) -> np.ndarray:
    """Gallery indices by increasing distance, without the query's own identity-and-camera
    images, which the benchmark protocol (eval_func) does not count."""
    order = np.argsort(distances, kind="stable")
    junk = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
    return order[~junk]


@exits_on_user_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    cfg = load_tool_config(args)
    new_figure(1, 1, "the CMC summary")  # before any work: matplotlib may be missing
    output_dir = args.output_dir or default_folder(cfg, "rank_lists")
    # As test.py: query and gallery only, and the model sized by its checkpoint.
    dataset = load_eval_dataset(cfg)
    extractor = load_extractor(args, cfg, dataset)
    cfg = extractor.cfg  # an exported file's input settings on top: the loader feeds it
    val_loader, num_query = make_val_loader(cfg, dataset=dataset)
    chosen = choose_queries(args, num_query)
    check_output_folder(output_dir, [*(picture_name(i) for i in chosen), SUMMARY_NAME],
                        [args.run_config, cfg.TEST.WEIGHT], args.overwrite)
    feats, pids, camids, paths = extractor.extract_loader(val_loader)
    evaluator = make_evaluator(cfg, num_query)
    evaluator.update((feats, pids, camids))
    cmc, mAP, distmat, *_ = evaluator.compute()
    records = [ImageRecord(path, pid, camid) for path, pid, camid in zip(paths, pids, camids)]
    queries, gallery = records[:num_query], records[num_query:]
    if distmat is None:
        # The whole matrix was too large to keep; re-ranking then sees only the chosen queries.
        distmat = distance_matrix(cfg, feats[chosen], feats[num_query:])
    else:
        distmat = distmat[chosen]
    g_pids, g_camids = np.asarray(pids[num_query:]), np.asarray(camids[num_query:])
    for query_index, distances in zip(chosen, distmat):
        query = queries[query_index]
        order = protocol_ranking(distances, query.pid, query.camid, g_pids, g_camids)[:args.topk]
        # Ranked as the evaluator ranks; shown as the cosine distance, every tool's unit.
        shown = pairwise_distance(feats[query_index:query_index + 1].float().cpu(),
                                  feats[num_query:][torch.as_tensor(order)].float().cpu(),
                                  "cosine")[0].numpy()
        picture = os.path.join(output_dir, picture_name(query_index))
        save_png(draw_rank_list(query, [gallery[i] for i in order], shown), picture)
        logger.info("query %d (%s): rank list in %s", query_index, query.path, picture)
    title = f"{cfg.DATASETS.NAMES}: {os.path.basename(cfg.TEST.WEIGHT)}"
    save_png(draw_cmc_summary(cmc, mAP, title), os.path.join(output_dir, SUMMARY_NAME))
    logger.info("mAP %.1f%%, Rank-1 %.1f%%; pictures in %s", 100 * mAP, 100 * cmc[0], output_dir)
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
