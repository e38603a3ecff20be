#!/usr/bin/env bash
# Every test: the Python suite, then the VS Code extension's (when present).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
if [ -f vscode-client/package.json ]; then
  (cd vscode-client && npm ci --no-audit --no-fund --loglevel=error && npm test)
fi
