#!/usr/bin/env bash
# llama.cpp, built once per machine from the source inside llama-cpp-python's PyPI sdist (the only
# registry this project may reach): the oracle of the GGUF tests and the other side of the
# capacity and engine benchmarks. Idempotent: a finished build is reused.
#
# Out: $LLAMA_CPP_HOME (default ~/.cache/code-assistant/llama.cpp-$VERSION)
#   src/                          the vendored llama.cpp tree (convert_hf_to_gguf.py, gguf-py/)
#   bin/llama-server, bin/llama-quantize, bin/llama-cli
# Prints the folder on its last line.
set -euo pipefail
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
HOME_DIR=${LLAMA_CPP_HOME:-${CODE_ASSISTANT_CACHE:-$HOME/.cache/code-assistant}/llama.cpp-$VERSION}
PIP=${PIP:-pip}
if [ -x "$HOME_DIR/bin/llama-server" ] && [ -x "$HOME_DIR/bin/llama-quantize" ] && [ -f "$HOME_DIR/src/convert_hf_to_gguf.py" ]; then
  echo "$HOME_DIR"; exit 0
fi
command -v cmake >/dev/null || { echo "build-llama-cpp: cmake not found" >&2; exit 1; }
mkdir -p "$HOME_DIR"
tmp=$(mktemp -d "$HOME_DIR/.build-XXXX")
trap 'rm -rf "$tmp"' EXIT
echo "build-llama-cpp: fetching llama-cpp-python $VERSION's source distribution" >&2
$PIP download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" >&2
tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
rm -rf "$HOME_DIR/src"
mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp "$HOME_DIR/src"
# AMX off: llama.cpp's AMX kernels crashed in this VM's first decode (docs/engine.md, "Speed").
echo "build-llama-cpp: cmake build of llama-server, llama-quantize, llama-cli ($(nproc) jobs; ~5-10 minutes on 2 cores)" >&2
cmake -S "$HOME_DIR/src" -B "$HOME_DIR/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DGGML_NATIVE=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF >"$tmp/cmake.log" 2>&1 \
  || { tail -30 "$tmp/cmake.log" >&2; exit 1; }
cmake --build "$HOME_DIR/build" -j"$(nproc)" --target llama-server llama-quantize llama-cli >"$tmp/build.log" 2>&1 \
  || { tail -30 "$tmp/build.log" >&2; exit 1; }
mkdir -p "$HOME_DIR/bin"
for t in llama-server llama-quantize llama-cli; do cp "$HOME_DIR/build/bin/$t" "$HOME_DIR/bin/"; done
echo "$HOME_DIR"
