"""``pet-operator``: the command (parse and check the configuration, set up logging, run)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

# the configuration lives in pet_operator.config; its names stay importable from here
from pet_operator.config import DEFAULT_DRAIN_DELAY as DEFAULT_DRAIN_DELAY
from pet_operator.config import Config as Config
from pet_operator.config import ConfigError as ConfigError
from pet_operator.config import build_parser as build_parser
from pet_operator.config import check_files as check_files
from pet_operator.config import parse_config as parse_config


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    # Kopf logs "Handler ... succeeded" for every watch event of every object: at thousands of pets
    # that is most of the log and a measurable share of the CPU. Below DEBUG only its warnings stay.
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv)
        check_files(config)
    except ConfigError as exc:
        print(f"pet-operator: error: {exc}", file=sys.stderr)
        return 2
    from pet_operator import rest

    try:
        rest.load(config.kubeconfig)  # a kubeconfig the operator cannot use is said now, not as a traceback
    except rest.ConfigError as exc:
        print(f"pet-operator: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    from pet_operator.app import run  # imported late: kopf is heavy and --help should be quick

    return run(config)


if __name__ == "__main__":
    sys.exit(main())
