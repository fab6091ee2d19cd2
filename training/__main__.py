"""``python -m training build NAME [--out DIR] [--force] [--data-dir DIR]`` and
``python -m training verify NAME [--data-dir DIR]``, run from the repository root."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from itclust_hub._errors import ItClustError, cli_words

from .pipeline import build, verify
from .recipe import DATA_DIR, load_recipe


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="Build and verify the curated itclust-hub references from their recipes.")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="build a curated reference from its recipe (evaluation included)")
    make.add_argument("recipe", help="recipe name in training/recipes (e.g. pancreas-human) or a .json path")
    make.add_argument("--out", type=Path, help="reference folder (default: the bundled itclust_hub/references/NAME, "
                                                "which also updates the packaged index and links model_cards/NAME.md to the card)")
    make.add_argument("--force", action="store_true", help="overwrite an existing reference folder")
    make.add_argument("--data-dir", type=Path, default=DATA_DIR, help=f"where the recipe's data files are ({DATA_DIR})")
    make.add_argument("--progress", action="store_true", help="progress bar of the final fit")
    check = commands.add_parser("verify", help="refit a reference and check it matches the bundled one (weights within a tolerance, same labels)")
    check.add_argument("recipe", help="recipe name or .json path")
    check.add_argument("--folder", type=Path, help="reference folder to compare with (default: the bundled one)")
    check.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the recipe's data files are")
    return parser


def main(argv=None) -> int:
    """Run one command; errors are one line on stderr and exit status 1."""
    args = _parser().parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        if args.command == "build":
            build(recipe, args.out, args.force, args.data_dir, progress=args.progress or None)
            return 0
        checks = verify(recipe, args.folder, args.data_dir)
        for name, (passed, found) in checks.items():
            print(f"{name}: {'ok' if passed else 'FAILED'}, {found}")
        return 0 if all(passed for passed, _ in checks.values()) else 1
    except ItClustError as err:
        print(f"Error: {cli_words(str(err))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
