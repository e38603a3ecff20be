import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { nextServerState, statusView } from "../status";

describe("statusView", () => {
  it("spins while the server starts", () => {
    const view = statusView({ server: "starting", enabled: true, remoteUrl: null });
    assert.match(view.text, /sync~spin/);
    assert.match(view.tooltip, /loading the model/);
    assert.equal(view.severity, "normal");
    assert.match(statusView({ server: "starting", enabled: true, remoteUrl: "http://team" }).tooltip, /http:\/\/team/);
  });

  it("shows ready and where completions come from", () => {
    const local = statusView({ server: "ready", enabled: true, remoteUrl: null });
    assert.match(local.text, /\$\(check\)/);
    assert.match(local.tooltip, /this machine/);
    assert.match(local.tooltip, /turn completions off/);
    const remote = statusView({ server: "ready", enabled: true, remoteUrl: "https://ca.example.com" });
    assert.match(remote.tooltip, /https:\/\/ca\.example\.com/);
  });

  it("shows completions turned off, with how to turn them on", () => {
    const view = statusView({ server: "ready", enabled: false, remoteUrl: null });
    assert.match(view.text, /circle-slash/);
    assert.match(view.tooltip, /turn completions on/);
    assert.equal(view.severity, "warning");
  });

  it("shows an error with its message", () => {
    const view = statusView({ server: "error", enabled: true, remoteUrl: null, error: "spawn code-assistant ENOENT" });
    assert.match(view.text, /\$\(error\)/);
    assert.match(view.tooltip, /ENOENT/);
    assert.equal(view.severity, "error");
  });
});

describe("nextServerState", () => {
  it("follows a normal start and stop", () => {
    let state = nextServerState("stopped", "starting");
    assert.equal(state, "starting");
    state = nextServerState(state, "running");
    assert.equal(state, "ready");
    assert.equal(nextServerState(state, "stopped"), "stopped");
  });

  it("reports a server that stops before it is ready as an error", () => {
    assert.equal(nextServerState("starting", "stopped"), "error");
    assert.equal(nextServerState("error", "stopped"), "error");
    assert.equal(nextServerState("ready", "failed"), "error");
  });
});
