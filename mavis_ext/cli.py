"""The `mavis` command. Each subcommand lives in its own module (mavis_ext/commands/<name>.py)
exposing ``add_arguments(parser)`` and ``run(args) -> int``; they are imported lazily so that
`mavis --help` stays fast and a broken optional part never breaks the others."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "generate": "guided generation with value models (mavis_ext.commands.generate)",
    "train": "train value models by iterative KL-regularized soft policy iteration",
    "eval": "exact evaluation of MAVIS policies: the demo testbed, or --world hard (multi-seed, held-out prompts, top-k optimum)",
    "demo": "the main job: testbed -> training -> weight sweep -> table, plots, op latency",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mavis", description="Multi-objective value-guided decoding (MAVIS).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, help_text in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(f"mavis_ext.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"mavis_ext.commands.{name}":
                raise
            continue  # subcommand not shipped in this build
        modules[name] = mod
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip().splitlines()[0])
        mod.add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
