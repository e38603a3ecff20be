import assert from "node:assert/strict";
import { describe, it } from "node:test";

import {
  configurationParams,
  DEFAULT_SETTINGS,
  documentSelector,
  type ExtensionSettings,
  needsRestart,
  readSettings,
  toggleUpdate,
  toServerSettings,
} from "../settings";

function reader(values: Partial<Record<keyof ExtensionSettings, unknown>>) {
  return (key: keyof ExtensionSettings): unknown => values[key];
}

describe("readSettings", () => {
  it("gives the server's defaults when nothing is set", () => {
    assert.deepEqual(readSettings(reader({})), DEFAULT_SETTINGS);
  });

  it("keeps what the user set", () => {
    const settings = readSettings(reader({
      enable: false, maxTokens: 128, temperature: 0.4, multiline: true, debounceMs: 0,
      remoteUrl: "https://ca.example.com", serverPath: ".venv/bin/code-assistant", serverArgs: ["--tcp", "0"],
      languages: ["python", "typescript"], model: "models/small", backend: "ollama", remoteModel: "qwen2.5-coder",
      exclude: ["secret/**", " "], typedAheadReuse: false, prefetch: false,
    }));
    assert.deepEqual(settings, {
      enable: false, maxTokens: 128, temperature: 0.4, multiline: true, debounceMs: 0,
      remoteUrl: "https://ca.example.com", serverPath: ".venv/bin/code-assistant", serverArgs: ["--tcp", "0"],
      languages: ["python", "typescript"], model: "models/small", backend: "ollama", remoteModel: "qwen2.5-coder",
      exclude: ["secret/**"], typedAheadReuse: false, prefetch: false,
    });
  });

  it("replaces values of the wrong type by defaults and clamps numbers", () => {
    const settings = readSettings(reader({
      enable: "yes", maxTokens: 100000, temperature: -1, debounceMs: Number.NaN, multiline: 1,
      serverArgs: ["--x", 3, null], languages: [], remoteUrl: "   ", serverPath: "",
    }));
    assert.equal(settings.enable, true);
    assert.equal(settings.maxTokens, 512);
    assert.equal(settings.temperature, 0);
    assert.equal(settings.debounceMs, null, "not a number: the server adapts it");
    assert.equal(settings.multiline, false);
    assert.deepEqual(settings.serverArgs, ["--x"]);
    assert.deepEqual(settings.languages, ["python"]);
    assert.equal(settings.remoteUrl, null);
    assert.equal(settings.serverPath, "code-assistant");
  });

  it("rounds integer settings", () => {
    assert.equal(readSettings(reader({ maxTokens: 47.6 })).maxTokens, 48);
  });
});

describe("toServerSettings", () => {
  it("maps to the names the server reads", () => {
    const settings = readSettings(reader({ maxTokens: 64, multiline: true }));
    assert.deepEqual(toServerSettings(settings, undefined), {
      enable: true, maxTokens: 64, temperature: 0, multiline: true, debounceMs: null, exclude: [],
      typedAheadReuse: true, prefetch: true,
    });
  });

  it("sends the API key only to a remote server", () => {
    const local = readSettings(reader({}));
    assert.equal(toServerSettings(local, "secret").apiKey, undefined);
    const remote = readSettings(reader({ remoteUrl: "http://team:8000" }));
    assert.deepEqual(toServerSettings(remote, "secret"), {
      enable: true, maxTokens: 48, temperature: 0, multiline: false, debounceMs: null, exclude: [],
      typedAheadReuse: true, prefetch: true, remoteUrl: "http://team:8000", backend: "code-assistant", model: null,
      apiKey: "secret",
    });
    assert.equal(toServerSettings(remote, "").apiKey, null, "a cleared key must reach the server as null");
    assert.equal(toServerSettings(remote, undefined).apiKey, null);
  });

  it("wraps settings under codeAssistant for didChangeConfiguration", () => {
    const server = toServerSettings(readSettings(reader({})), undefined);
    assert.deepEqual(configurationParams(server), { settings: { codeAssistant: server } });
  });
});

describe("needsRestart", () => {
  const base = readSettings(reader({}));

  it("is false for settings the running server takes", () => {
    for (const change of [{ enable: false }, { maxTokens: 9 }, { temperature: 1 }, { multiline: true }, { debounceMs: 5 }]) {
      assert.equal(needsRestart(base, { ...base, ...change }), false, JSON.stringify(change));
    }
  });

  it("is true for settings that change the process or its documents", () => {
    for (const change of [{ remoteUrl: "http://x" }, { model: "m" }, { serverPath: "/x" }, { serverArgs: ["-v"] },
      { languages: ["python", "go"] }]) {
      assert.equal(needsRestart(base, { ...base, ...change }), true, JSON.stringify(change));
    }
  });
});

describe("documentSelector", () => {
  it("covers files and untitled buffers of each language", () => {
    assert.deepEqual(documentSelector(readSettings(reader({ languages: ["python", "rust"] }))), [
      { scheme: "file", language: "python" }, { scheme: "untitled", language: "python" },
      { scheme: "file", language: "rust" }, { scheme: "untitled", language: "rust" },
    ]);
  });
});

describe("toggleUpdate", () => {
  it("removes the key when the new value is the default, so toggling twice changes nothing", () => {
    assert.deepEqual(toggleUpdate({ defaultValue: true }, true), { target: "global", value: false });
    assert.deepEqual(toggleUpdate({ defaultValue: true, globalValue: false }, false), { target: "global", value: undefined });
  });

  it("changes the level the effective value comes from", () => {
    assert.deepEqual(toggleUpdate({ defaultValue: true, workspaceValue: true }, true),
      { target: "workspace", value: false });
    assert.deepEqual(toggleUpdate({ defaultValue: true, globalValue: false, workspaceValue: true }, true),
      { target: "workspace", value: undefined });
    assert.deepEqual(toggleUpdate({ defaultValue: true, workspaceValue: false }, false),
      { target: "workspace", value: undefined });
  });
});
