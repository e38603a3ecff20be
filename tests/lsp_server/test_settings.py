from lsp_server.settings import Settings


def test_defaults_match_the_contract():
    s = Settings()
    assert (s.enable, s.max_tokens, s.temperature, s.multiline, s.debounce_ms) == (True, 48, 0.0, False, None)
    assert (s.backend, s.model, s.fim_template, s.typed_ahead_reuse, s.prefetch, s.exclude, s.recent_chunks) == (
        "code-assistant", None, None, True, True, (), True)
    assert (s.remote_url, s.api_key, s.neighbours, s.neighbour_files, s.cache_weight, s.context_tokens) == (
        None, None, True, 4, None, 2048)


def test_nested_and_flat_camel_case_settings():
    nested = Settings().updated({"codeAssistant": {"maxTokens": 16, "multiline": True, "remoteUrl": "http://h:1"}})
    assert (nested.max_tokens, nested.multiline, nested.remote_url) == (16, True, "http://h:1")
    flat = Settings().updated({"debounceMs": 0, "neighbourFiles": 2, "cacheWeight": 0.3})
    assert (flat.debounce_ms, flat.neighbour_files, flat.cache_weight) == (0, 2, 0.3)


def test_wrong_types_and_ranges_are_ignored_and_the_rest_applied():
    s = Settings().updated({"maxTokens": "lots", "temperature": 99, "enable": "yes", "debounceMs": 10,
                            "neighbours": None, "unknown": 1})
    assert (s.max_tokens, s.temperature, s.enable, s.debounce_ms, s.neighbours) == (48, 0.0, True, 10, True)
    assert Settings().updated(None) == Settings() and Settings().updated([1, 2]) == Settings()
    assert Settings(remote_url="http://x").updated({"remoteUrl": None}).remote_url is None


def test_backend_exclusions_and_reuse_settings():
    s = Settings().updated({"backend": "ollama", "model": "qwen2.5-coder:1.5b", "exclude": ["secret/**", "*.gen.py"],
                            "typedAheadReuse": False, "prefetch": False, "fimTemplate": "qwen", "debounceMs": None})
    assert (s.backend, s.model, s.exclude, s.typed_ahead_reuse, s.prefetch, s.fim_template, s.debounce_ms) == (
        "ollama", "qwen2.5-coder:1.5b", ("secret/**", "*.gen.py"), False, False, "qwen", None)
    bad = Settings().updated({"backend": "gpt", "exclude": "secret/**", "prefetch": "no"})
    assert (bad.backend, bad.exclude, bad.prefetch) == ("code-assistant", (), True)


def test_sampling_settings_take_samplingparams_bounds():
    from engine.sampling_params import SAMPLING_BOUNDS, SMALLEST_POSITIVE

    top = SAMPLING_BOUNDS["temperature"].high
    assert Settings().updated({"temperature": top}).temperature == top
    assert Settings().updated({"temperature": top + 0.01}).temperature == 0.0
    assert Settings().updated({"temperature": SMALLEST_POSITIVE / 2}).temperature == 0.0  # would break sampling
    low, high = SAMPLING_BOUNDS["cache_weight"].low, SAMPLING_BOUNDS["cache_weight"].high
    assert Settings().updated({"cacheWeight": high}).cache_weight == high
    assert Settings().updated({"cacheWeight": low - 0.1}).cache_weight is None
    assert Settings().updated({"maxTokens": 0}).max_tokens == 48


def test_the_vscode_extension_offers_what_the_server_takes():
    import json
    from pathlib import Path

    from engine.sampling_params import SAMPLING_BOUNDS

    package = Path(__file__).resolve().parents[2] / "vscode-client" / "package.json"
    offered = json.loads(package.read_text())["contributes"]["configuration"]["properties"]
    temperature = offered["codeAssistant.temperature"]
    assert (temperature["minimum"], temperature["maximum"]) == (0, SAMPLING_BOUNDS["temperature"].high)
    most_tokens = offered["codeAssistant.maxTokens"]["maximum"]
    assert Settings().updated({"maxTokens": most_tokens}).max_tokens == most_tokens
