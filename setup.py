"""The two build steps pyproject.toml cannot declare (everything else is declared there).

1. The C kernels are compiled into the wheel (engine/prebuilt/<kernel>-<cpu level>.so, one per
   portable CPU level of engine/kernels.py's VARIANTS; the loader picks the best one /proc/cpuinfo
   allows). We compile at install time rather than only at first use because the machines that serve
   often have no compiler (the slim Docker image, a locked-down host): there the first-use build
   fails and the decode step runs ~5x slower in PyTorch, silently. The sources ship too, so a CPU no
   prebuilt level fits still compiles at first use. No compiler here: a warning, and a wheel without
   prebuilt kernels (never a failed install).
2. The shipped default model (models/default in the repository) goes in as engine/models/default,
   package data where `default_model_dir()` finds it (the folder's name is the served model's name);
   no top-level `models` package in site-packages.
An editable install (`make setup`) does neither: the checkout compiles at first use and reads models/default.
"""
import importlib.util
import shutil
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = ROOT / "models" / "default"
# What serving needs, and the card that says what it is (its eval/ and loss curve stay in the repository).
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.tiktoken", "summary.json", "MODEL_CARD.md")


def kernels_module():
    """engine/kernels.py alone (stdlib only at import), without importing the engine package and torch."""
    spec = importlib.util.spec_from_file_location("code_assistant_kernels", ROOT / "engine" / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithKernelsAndModel(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        engine = Path(self.build_lib) / "engine"
        kernels = kernels_module()
        shutil.rmtree(engine / kernels.PREBUILT.name, ignore_errors=True)  # no kernel left from an older table
        for problem in kernels.build_prebuilt(engine / kernels.PREBUILT.name):
            self.warn(f"prebuilt kernel not built, it will compile at first use where it can: {problem}")
        model = engine / "models" / "default"
        model.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES:
            shutil.copyfile(DEFAULT_MODEL / name, model / name)


class WithMachineCode(Distribution):
    """A platform wheel (installed to platlib): the prebuilt kernels are machine code."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """py3-none-<platform>: the kernels are loaded with ctypes, so no Python ABI is tied in."""

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


setup(distclass=WithMachineCode, cmdclass={"build_py": BuildPyWithKernelsAndModel, "bdist_wheel": PlatformWheel})
