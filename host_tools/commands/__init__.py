"""The `aedgate` subcommands, one module each: argument parsing, help texts and output; the logic they drive lives in host_tools/."""
