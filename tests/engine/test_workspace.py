"""The workspace token index on documents given to it (tokens: the text's bytes); which files
reach it is tested in tests/project_files."""
import pytest

from engine.workspace import WorkspaceIndex

CORE = "def unique_core_function_name(x):\n    return x + 1\n"


def tokenize(text: str) -> list[int]:
    return list(text.encode("utf-8"))


@pytest.fixture
def index(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "core.py").write_text(CORE)
    built = WorkspaceIndex(tokenize, fingerprint="bytes")
    built.build([(str(tmp_path / "pkg" / "core.py"), CORE), (str(tmp_path / "deep.py"), "VALUE = 'deep'\n")])
    return built


def test_a_changed_file_is_reindexed_without_a_rebuild(index, tmp_path):
    core = tmp_path / "pkg" / "core.py"
    assert index.longest_match(tokenize("def unique_core_function_")).length == len("def unique_core_function_")
    base = index._snapshot.base
    index.update_file(core, "def renamed_function_name(y):\n    return y\n")     # live text (didChange)
    assert index._snapshot.base is base                                          # the base stays
    assert index.longest_match(tokenize("def renamed_function_")).length == len("def renamed_function_")
    assert index.longest_match(tokenize("def unique_core_function_")).length < len("def unique_")
    index.remove_file(tmp_path / "deep.py")
    assert not index.contains(tmp_path / "deep.py") and index.files() == [str(core)]


def test_the_edited_document_is_left_out_of_its_own_matches(index, tmp_path):
    core = str(tmp_path / "pkg" / "core.py")
    history = tokenize("def unique_core_function_")
    assert index.longest_match(history, [core]).length < 10
    # a request that names no path: the copy holding both sides of the cursor is found
    cut = CORE.index("return")
    stale = index.stale_copies(tokenize(CORE[:cut]), tokenize(CORE[cut:] + "# the user's next lines\n"))
    assert stale == [core]
    assert index.stale_copies(tokenize(CORE[:cut]), tokenize("something else entirely")) == []


def test_an_index_file_round_trips_with_its_metadata(index, tmp_path):
    path = tmp_path / "ws.safetensors"
    index.save(path, {"roots": [str(tmp_path)]})
    loaded, metadata = WorkspaceIndex.load(path, tokenize, fingerprint="bytes")
    assert loaded.files() == index.files() and metadata == {"roots": [str(tmp_path)]}
    assert loaded.longest_match(tokenize("def unique_core_f")).length == len("def unique_core_f")


def test_a_relative_path_names_the_file_under_any_root(index):
    history = tokenize("def unique_core_function_")
    assert index.longest_match(history, index.stale_copies(history, [], "pkg/core.py")).length < 10
    assert index.stale_copies(history, [], "other/core.py") == []
