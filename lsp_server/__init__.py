"""The language server (pygls): inline completion and completion from the engine or a remote `code-assistant serve`."""
