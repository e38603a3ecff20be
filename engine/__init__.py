"""The inference engine: the one API the HTTP server, the language server and the benchmarks call."""
from .engine import Chunk, Completion, Engine, EngineBusy, EngineConfig, EngineError
from .model_dir import ModelDirError
from .prompt import ContextFile
from .sampling import SamplingError, SamplingParams

__all__ = ["Chunk", "Completion", "ContextFile", "Engine", "EngineBusy", "EngineConfig", "EngineError",
           "ModelDirError", "SamplingError", "SamplingParams"]
