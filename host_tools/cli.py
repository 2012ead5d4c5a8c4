"""`aedgate`: the host-side command line. Each sub-command lives in its own module with a
`register(subparsers)` function that adds its parser and sets `func`."""
import argparse
import importlib
import sys

# Modules that provide sub-commands, in the order `--help` lists them.
_COMMAND_MODULES = ["keys", "token", "unlock", "monitor", "registry", "service", "provision",
                    "selftest", "console", "broker", "release", "rollout"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2 unless given."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


def build_parser():
    parser = argparse.ArgumentParser(
        prog="aedgate",
        description="Host tools for aedgate AED cabinets: fleet keys, mission tokens, unlocking, "
                    "watching the fleet over MQTT.",
        epilog="Run `aedgate COMMAND --help` for the details and examples of each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module("host_tools.commands." + name)
        except ModuleNotFoundError as e:
            if e.name != "host_tools.commands." + name:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except CliError as e:
        print("aedgate: error: %s" % e, file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run through the package module, so that CliError raised by sub-commands (imported from
    # host_tools.cli) is the class main() catches, not a second copy living in __main__.
    from host_tools.cli import main as _main
    sys.exit(_main())
