"""`socmap <stage>`: one subcommand per DVC stage, wiring params.yaml to the stage's `main`.

Each stage module exposes ``main(params)``; it is imported only when its
subcommand runs, and the params (whose choices come from the model modules,
torch among them) only once the command line is parsed: `socmap --help` comes
back at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from socmap.errors import SocmapError
from socmap.paths import DEFAULT_WORLD

STAGES = {
    "simulate": ("socmap.simulate", "write a simulated Bavaria of simulate.worlds to data/<world>/"),
    "sample": ("socmap.sample", "extract one patch per survey row into data/processed/"),
    "split": ("socmap.split", "assign train / val / test / buffer roles into data/splits/"),
    "train": ("socmap.train", "train one model per split run into models/"),
    "baselines": ("socmap.baselines", "the random and quantile forests of each run into data/baselines/"),
    "evaluate": ("socmap.evaluate", "test metrics, baselines and intervals into metrics/evaluate/"),
    "bundle": ("socmap.bundle", "the ensemble the map needs, one folder: data/ensemble/ (the model artifact)"),
    "map": ("socmap.mapping", "SOC maps as Cloud-Optimized GeoTIFFs into data/maps/"),
}

# Options of a stage beyond --params, passed to its main() as keyword arguments.
STAGE_OPTIONS = {
    "simulate": (("--world", DEFAULT_WORLD, "world of simulate.worlds, written to data/WORLD/ and plots/WORLD/"),),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="socmap", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text)
        for flag, default, flag_help in STAGE_OPTIONS.get(name, ()):
            stage.add_argument(flag, default=default, help=f"{flag_help} (default: %(default)s)")
    return parser


def configure_logging(level: int) -> None:
    """One line per message: time, module, message (the train stage's worker processes log so too)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.WARNING if args.quiet else logging.INFO)
    try:
        from socmap.config import load_params

        params = load_params(args.params)
        module = importlib.import_module(STAGES[args.stage][0])
        options = {flag[2:]: getattr(args, flag[2:]) for flag, _, _ in STAGE_OPTIONS.get(args.stage, ())}
        module.main(params, **options)
    except SocmapError as exc:
        print(f"socmap {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"socmap {args.stage}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
