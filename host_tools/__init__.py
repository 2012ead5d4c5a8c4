"""aedgate host tools: keys, tokens, unlock/dispatch, monitor, provisioning, console."""
