"""The ``songrec`` command line: ask a finished run for songs like one you know.

    songrec recommend "Song title" [--artist NAME] [-k 10] [--run DIR] [--format table|json|csv]
    songrec recommend --id SONG_ID
    songrec recommend --like "energy=80,danceability=70,tempo=120,genre=pop,emotion=joy"
    songrec summary [--run DIR]

Exit status: 0 found, 1 not found (or the run is missing), 2 usage (bad arguments, an ambiguous title).
No Spark is started: the tables are read with DuckDB and numpy.
"""

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

from songrec import recommend as rec
from songrec.errors import SongrecError

DEFAULT_RUN = os.environ.get("SONGREC_RUN", "data/run")


def _print_table(rows: list[dict], fmt: str, header: str | None) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=[*rec.OUT_COLUMNS, "song_id"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    if header:
        print(header)
    cells = [[str(r["rank"]), r["artist"] or "", r["title"] or "", r["genre"] or "", r["emotion"] or "",
              f"{r['score']:.4f}"] for r in rows]  # fmt: skip
    names = ["rank", "artist", "title", "genre", "emotion", "score"]
    widths = [min(max([len(n)] + [len(c[i]) for c in cells]), 40) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v[:w].ljust(w) for v, w in zip(c, widths, strict=True)))


def cmd_recommend(args: argparse.Namespace) -> int:
    run = rec.Run(Path(args.run).expanduser())
    started = time.perf_counter()
    try:
        if args.like:
            rows = rec.recommend_like(run, args.like, args.k)
            header = f"songs like {{{args.like}}}"
        else:
            if args.title is None and args.id is None:
                print("error: give a TITLE, --id SONG_ID or --like SPEC", file=sys.stderr)
                return 2
            song_id = rec.resolve_song(run, args.title, args.artist, args.id)
            song = rec.song_row(run, song_id)
            rows = rec.neighbors_of(run, song_id, args.k)
            header = (
                f"songs like {song['title']!r} by {song['artist']} ({song['genre']}, {song['emotion']}; id {song_id})"
            )
    except rec.Ambiguous as exc:
        print(f"error: {exc}", file=sys.stderr)
        for song_id, artist, title in exc.matches[:20]:
            print(f"  --id {song_id}   {artist} - {title}", file=sys.stderr)
        return 2
    except rec.UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except rec.NotFound as exc:
        print(f"not found: {exc}", file=sys.stderr)
        if exc.suggestions:
            print("closest titles: " + "; ".join(exc.suggestions), file=sys.stderr)
        return 1
    except SongrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _print_table(rows, args.format, header if args.format == "table" else None)
    if args.format == "table":
        print(f"({len(rows)} songs in {time.perf_counter() - started:.3f} s from {run.root})", file=sys.stderr)
    return 0 if rows else 1


def cmd_summary(args: argparse.Namespace) -> int:
    """Where a run's outputs are, its headline metrics, and one example recommendation."""
    run = rec.Run(Path(args.run).expanduser())
    try:
        metrics = json.loads((run.table("report") / "metrics.json").read_text())
    except (SongrecError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    root = run.root.resolve()  # the root only: table paths are stable links to committed versions
    print(f"outputs under {root}:")
    for name in ("songs", "features", "rejects", "meta", "model", "embeddings", "neighbors", "report"):
        print(f"  {name + '/':<12} {root / name}")
    print(f"  open the report: {root / 'report' / 'index.html'}")
    counts = metrics.get("counts", {})
    if counts:
        print("rows: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    recall, relevance = metrics.get("recall", {}), metrics.get("relevance", {})
    print(f"recall@10 vs exact search: {recall.get('at_10')}   recall@{metrics.get('k')}: {recall.get('at_k')}")
    for method in ("embedding", "audio12_l2", "audio12_tags_cos"):
        if method in relevance:
            r = relevance[method]
            print(
                f"  {method:<17} planted-style precision@10 {r.get('planted_precision_at_10')}"
                f"   similar-song hit rate@K {r.get('similar_hit_rate_at_k')}"
            )
    stages = metrics.get("stages", {})
    if stages:
        print("stages: " + ", ".join(f"{k} {v.get('seconds', '-')} s" for k, v in stages.items()))
    import duckdb

    row = (
        duckdb.connect()
        .execute("SELECT song_id, title FROM read_parquet(?) ORDER BY hash(song_id) LIMIT 1", [run.files("songs")])
        .fetchone()
    )
    print(f"\nexample: songrec recommend --id {row[0]} --run {args.run}")
    return cmd_recommend(
        argparse.Namespace(run=args.run, like=None, title=None, artist=None, id=row[0], k=5, format="table")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="songrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("recommend", help="songs like a given song or profile")
    p.add_argument("title", nargs="?", help="song title (case-insensitive, exact)")
    p.add_argument("--artist", help="disambiguate a title by artist")
    p.add_argument("--id", type=int, help="look up by song_id instead of title")
    p.add_argument("--like", metavar="SPEC", help='a profile such as "energy=80,tempo=120,genre=pop,emotion=joy"')
    p.add_argument("-k", type=int, default=10, help="how many neighbours (default 10)")
    p.add_argument(
        "--run", default=DEFAULT_RUN, help=f"the run root holding songs/ and neighbors/ (default {DEFAULT_RUN})"
    )
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(func=cmd_recommend)
    p = sub.add_parser("summary", help="where a run's outputs are, its headline metrics and an example")
    p.add_argument("--run", default=DEFAULT_RUN, help=f"the run root (default {DEFAULT_RUN})")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "k", 1) < 1:
        print("error: -k must be >= 1", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
