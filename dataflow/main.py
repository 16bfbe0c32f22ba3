"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): the job of `python -m pipeline.run`.

The template launcher runs this file with every template parameter as `--name=value`, plus
the Dataflow flags it adds itself (runner, project, region, staging, `--setup_file` from
FLEX_TEMPLATE_PYTHON_SETUP_FILE, and `--template_location`, where the job description goes).
The one difference from the command line: a boolean parameter arrives as `--flag=true` or
`--flag=false`, which `flex_argv` turns into the plain flag or drops. Everything else is
`pipeline.run.main`, so the template never drifts from the package.
"""
import sys
from typing import FrozenSet, List, Optional, Sequence

from pipeline import run
from pipeline.options import options_parser

TRUE_VALUES = frozenset(("true", "1", "yes"))
FALSE_VALUES = frozenset(("false", "0", "no", ""))


def switch_flags() -> FrozenSet[str]:
    """Every flag that takes no value (`--skip_existing`), of this pipeline and of Beam."""
    parser = options_parser()
    return frozenset(flag for action in parser._actions  # pylint: disable=protected-access
                     if action.nargs == 0 for flag in action.option_strings)


def flex_argv(argv: Sequence[str]) -> List[str]:
    """The launcher's `--switch=true|false` as the command line has it: `--switch` or nothing.

    Other values are left as they are, so the pipeline reports them as a bad invocation.
    """
    switches = switch_flags()
    result = []
    for arg in argv:
        flag, has_value, value = arg.partition("=")
        if has_value and flag in switches:
            if value.strip().lower() in TRUE_VALUES:
                result.append(flag)
                continue
            if value.strip().lower() in FALSE_VALUES:
                continue
        result.append(arg)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run.main(flex_argv(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
