"""The pygls language server: one LSP feature per handler; the completion path lives in completer.py."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter, OrderedDict
from typing import Any, Callable
from urllib.parse import unquote

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcServerNotInitialized
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from project_files.exclusions import IGNORE_FILES, Exclusions

from .completer import Backend, LocalBackend, Suggestion, complete, wants_multiline
from .completion_cache import Cached, CompletionCache, key_of
from .debounce import AdaptiveDebounce
from .documents import (MAX_DOCUMENT_CHARS, MAX_LINE_CHARS, BadPosition, Cursor, clean_text, looks_binary, split_at,
                        utf16_length)
from .prefetch import after_accepting
from .protocol import CodeAssistantProtocol
from .recent_chunks import RecentChunks
from .settings import Settings
from .workspace import EditorWorkspace, folders_of

log = logging.getLogger("lsp_server")

ACCEPT_COMMAND = "codeAssistant.accept"
PARTIAL_ACCEPT_COMMAND = "codeAssistant.partialAccept"
STATS_COMMAND = "codeAssistant.stats"
RULES_CHECK_SECONDS = 2.0     # ignore files changed outside the editor are noticed within this
CHUNK_FLUSH_SECONDS = 0.5     # the recent-chunks ring is updated once the user pauses this long
RECENT_DOCUMENTS = 8          # closed documents kept as neighbour-snippet sources
NEIGHBOUR_SCAN_CHARS = 200_000  # of each neighbouring document, so a huge one cannot stall a keystroke


class CodeAssistantServer(LanguageServer):
    def __init__(self, settings: Settings, load_engine: Callable[[], Any] | None = None, engine=None):
        super().__init__("code-assistant", "0.1.0", text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         protocol_cls=CodeAssistantProtocol)
        self.settings = settings
        self.ready = False
        self.shown: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.partly_accepted: Counter[str] = Counter()
        self.cache = CompletionCache()
        self.debounce = AdaptiveDebounce()
        self.exclusions = Exclusions(global_excludes=None)   # the workspace's rules once `initialize` names it
        self.chunks = RecentChunks()
        self.prefetching: dict[str, tuple[str, asyncio.Task]] = {}  # uri -> (cache key, generation)
        self._chunk_flush: asyncio.TimerHandle | None = None
        self.pending: dict[str, asyncio.Task] = {}      # uri -> the generation a newer request supersedes
        self.recent: OrderedDict[str, str] = OrderedDict()  # closed uri -> its last text
        self.last_text: dict[str, str] = {}                 # open uri -> its text (kept for didClose)
        self.engine = engine
        self._load_engine = load_engine
        self._local: LocalBackend | None = LocalBackend(engine) if engine is not None else None
        self._remote = None
        self._remote_key: tuple | None = None
        self.editor_workspace = EditorWorkspace()
        self.watch_files = False          # the client registers file watchers for us on request
        self.rules_watch: asyncio.Task | None = None

    async def backend(self) -> Backend:
        s = self.settings
        if s.remote_url:
            key = (s.remote_url, s.api_key, s.timeout_ms, s.backend, s.model, s.fim_template)
            if self._remote is None or self._remote_key != key:
                from .remote import RemoteError
                from .remote_backends import create_remote_backend

                if self._remote is not None:
                    await self._remote.close()
                    self._remote = None
                try:
                    remote = create_remote_backend(s)
                except RemoteError as error:
                    raise JsonRpcInvalidParams(str(error)) from None
                await remote.discover()
                self._remote, self._remote_key = remote, key
            return self._remote
        if self._local is None:
            if self._load_engine is None:
                raise JsonRpcInvalidParams("no local model and no remoteUrl configured")
            self.engine = await asyncio.to_thread(self._load_engine)
            self._local = LocalBackend(self.engine)
        self.editor_workspace.attach(self.engine)
        return self._local

    def document_text(self, uri: str) -> tuple[str, str] | None:
        """(text, languageId) of an open document, or None when unknown, binary or too large."""
        if not self.ready:
            raise JsonRpcServerNotInitialized("the server has not been initialized")
        document = self.workspace.text_documents.get(unquote(uri))
        if document is None:
            return None
        source = document.source
        if len(source) > MAX_DOCUMENT_CHARS or looks_binary(source):
            return None
        return clean_text(source), document.language_id or "plaintext"

    def neighbours(self, uri: str, cursor_line: int = 0) -> list[tuple[str, str]]:
        current = unquote(uri)
        open_docs = [(u, d.source) for u, d in self.workspace.text_documents.items() if u != current]
        closed = [(u, text) for u, text in reversed(self.recent.items()) if u != current]
        documents = [(self.display_path(u), clean_text(text[:NEIGHBOUR_SCAN_CHARS]))
                     for u, text in open_docs + closed if not looks_binary(text) and not self.excluded(u)]
        if self.settings.recent_chunks:
            documents += self.chunks.documents(current, cursor_line, allowed=lambda u: not self.excluded(u))
        return documents

    def excluded(self, uri: str) -> bool:
        """Never completed in, never context of any kind: project_files/exclusions.py decides."""
        return self.exclusions.excluded(to_fs_path(unquote(uri)))

    def use_exclusions(self, exclusions: Exclusions) -> None:
        """New rules (settings, an ignore file changed): whatever they exclude leaves every index,
        ring and cache now, and completions made with it are forgotten."""
        self.exclusions = exclusions
        for uri in [u for u in self.recent if self.excluded(u)]:
            del self.recent[uri]
        self.chunks.forget_where(self.excluded)
        self.editor_workspace.use_exclusions(exclusions)
        self.forget_completions()
        log.info(json.dumps({"event": "exclusions", "globs": len(exclusions.globs)}))

    def display_path(self, uri: str) -> str:
        path = to_fs_path(uri) or uri
        root = self.workspace.root_path
        if root and path.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(path, root)
        return os.path.basename(path) or path

    async def suggest(self, uri: str, position: types.Position, invoked: bool, method: str,
                      selected: tuple[types.Range, str] | None = None) -> tuple[Cursor, Suggestion, str] | None:
        """The completion for a request; a newer request for the same document supersedes this one.
        `selected`: the editor's suggest widget will insert this text over this range; complete as if
        it were there."""
        start = time.perf_counter()
        found = self.document_text(uri)
        if found is None:
            _log_request(method, "unknown-or-unsupported-document", start)
            return None
        source, language = found
        if self.excluded(uri):
            _log_request(method, "excluded", start, language=language)
            return None
        encoding = self.position_encoding()
        try:
            if selected is not None:
                source, position = _with_selection(source, selected, encoding)
            cursor = split_at(source, position.line, position.character, encoding)
        except BadPosition as error:
            raise JsonRpcInvalidParams(str(error)) from None
        if len(cursor.line_prefix) + len(cursor.line_suffix) > MAX_LINE_CHARS:
            _log_request(method, "line-too-long", start, language=language)
            return None
        previous = self.pending.get(uri)
        if previous is not None:
            previous.cancel()
        settings = self.settings
        backend = await self.backend()
        multiline = wants_multiline(settings, invoked, cursor)
        key = key_of(cursor, multiline)
        joined = self._prefetched(uri, key)
        if settings.enable and settings.typed_ahead_reuse and joined is None:
            hit = self.cache.lookup(cursor, multiline)
            if hit is not None:
                return self._shown(method, "cache", start, uri, cursor, Suggestion(hit.id, hit.edit, hit.multiline),
                                   language, backend)
        if joined is not None:
            task = asyncio.shield(joined)  # superseding this request leaves the prefetch running
        else:
            neighbours = self.neighbours(uri, cursor.line) if settings.neighbours else []
            debounce_ms = settings.debounce_ms if settings.debounce_ms is not None else self.debounce.delay_ms(cursor)
            task = asyncio.create_task(complete(cursor, settings, backend, invoked, self.display_path(uri), neighbours,
                                                debounce_ms))
        self.pending[uri] = task
        try:
            suggestion = await task
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                _log_request(method, "cancelled", start, language=language)
                raise
            _log_request(method, "superseded", start, language=language)
            return None
        finally:
            if self.pending.get(uri) is task:
                del self.pending[uri]
        if joined is None and not invoked:
            self.debounce.measured((time.perf_counter() - start) * 1000 - debounce_ms)
        if suggestion is None:
            _log_request(method, "empty", start, language=language)
            return None
        self.cache.put(key, Cached(suggestion.id, suggestion.edit, suggestion.multiline))
        return self._shown(method, "prefetched" if joined is not None else "shown", start, uri, cursor, suggestion,
                           language, backend)

    def _shown(self, method: str, outcome: str, start: float, uri: str, cursor: Cursor, suggestion: Suggestion,
               language: str, backend: Backend) -> tuple[Cursor, Suggestion, str]:
        self.shown[language] += 1
        if suggestion.id:
            _spawn(backend.send_event(suggestion.id, "shown", language))
        _log_request(method, outcome, start, suggestion.id, language, len(suggestion.edit.text))
        if self.settings.prefetch:
            self._prefetch(uri, cursor, suggestion, language, backend)
        return cursor, suggestion, language

    def report_server_error(self, error: Exception, source) -> None:
        # pygls reports a frame it could not read as a JsonRpcException, with a popup in the editor;
        # it gets a JSON-RPC error instead (protocol.py). Other errors keep pygls' default.
        if source is JsonRpcException:
            self.protocol.answer_unreadable(error)
        else:
            super().report_server_error(error, source)

    def _prefetched(self, uri: str, key: str) -> asyncio.Task | None:
        """The prefetch running for this place, if any; one for another place is cancelled."""
        running = self.prefetching.get(uri)
        if running is None:
            return None
        running_key, task = running
        if running_key == key and not task.cancelled():
            return task
        task.cancel()
        del self.prefetching[uri]
        return None

    def _prefetch(self, uri: str, cursor: Cursor, suggestion: Suggestion, language: str, backend: Backend) -> None:
        """Compute, in the background, the completion the user will want after accepting this one."""
        following = after_accepting(cursor, suggestion)
        if following is None:
            return
        settings = self.settings
        multiline = wants_multiline(settings, False, following)
        key = key_of(following, multiline)
        if self.cache.get(key) is not None or self._prefetched(uri, key) is not None:
            return
        neighbours = self.neighbours(uri, cursor.line) if settings.neighbours else []
        task = asyncio.create_task(complete(following, settings, backend, False, self.display_path(uri), neighbours, 0))
        self.prefetching[uri] = (key, task)

        def store(done: asyncio.Task) -> None:
            if self.prefetching.get(uri, (None, None))[1] is done:
                del self.prefetching[uri]
            if not done.cancelled() and done.exception() is None and done.result() is not None:
                result = done.result()
                self.cache.put(key, Cached(result.id, result.edit, result.multiline))

        task.add_done_callback(store)

    def forget_completions(self) -> None:
        self.cache.clear()
        for _, task in self.prefetching.values():
            task.cancel()
        self.prefetching.clear()

    def schedule_chunk_flush(self) -> None:
        """Cut queued edits and visits into the recent-chunks ring once the user pauses."""
        if self._chunk_flush is not None:
            self._chunk_flush.cancel()
        self._chunk_flush = asyncio.get_running_loop().call_later(CHUNK_FLUSH_SECONDS, self.chunks.flush)

    def position_encoding(self) -> str:
        encoding = self.workspace.position_encoding
        return str(getattr(encoding, "value", encoding) or "utf-16")


def create_server(settings: Settings, engine=None, load_engine: Callable[[], Any] | None = None) -> CodeAssistantServer:
    server = CodeAssistantServer(settings, load_engine, engine)

    @server.feature(types.INITIALIZE)
    def on_initialize(ls: CodeAssistantServer, params: types.InitializeParams) -> None:
        ls.settings = ls.settings.updated(params.initialization_options)
        root = params.root_path or (to_fs_path(params.root_uri) if params.root_uri else None)
        folders = params.workspace_folders or []
        if folders:
            root = to_fs_path(folders[0].uri) or root
        folders = folders_of(params) or ([root] if root else [])
        ls.exclusions = Exclusions(folders, ls.settings.exclude)
        ls.ready = True
        s = ls.settings
        if s.workspace_index and not s.remote_url:
            ls.editor_workspace = EditorWorkspace(s.workspace_max_files, s.workspace_max_megabytes << 20)
            ls.editor_workspace.set_folders(folders_of(params), ls.exclusions)
            ls.watch_files = bool(params.capabilities.workspace and params.capabilities.workspace.did_change_watched_files
                                  and params.capabilities.workspace.did_change_watched_files.dynamic_registration)

    @server.feature(types.INITIALIZED)
    async def on_initialized(ls: CodeAssistantServer, params: types.InitializedParams) -> None:
        ls.rules_watch = asyncio.ensure_future(_watch_rules(ls))
        if not ls.editor_workspace.folders:
            return
        if ls.watch_files:
            _spawn(_watch_files(ls))
        # Load the model now rather than at the first keystroke; the index is built once it is in.
        _spawn(ls.backend())

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=True))
    def on_save(ls: CodeAssistantServer, params: types.DidSaveTextDocumentParams) -> None:
        if _is_ignore_file(params.text_document.uri):
            ls.use_exclusions(ls.exclusions)   # the rules are read again from the files
        ls.editor_workspace.saved(params.text_document.uri, params.text)

    @server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
    def on_watched_files(ls: CodeAssistantServer, params: types.DidChangeWatchedFilesParams) -> None:
        if any(_is_ignore_file(change.uri) for change in params.changes):
            ls.use_exclusions(ls.exclusions)
        for change in params.changes:
            ls.editor_workspace.watched(change.uri, change.type == types.FileChangeType.Deleted)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def on_configuration(ls: CodeAssistantServer, params: types.DidChangeConfigurationParams) -> None:
        ls.settings = ls.settings.updated(params.settings)
        ls.forget_completions()  # made with the old settings
        if ls.settings.exclude != ls.exclusions.globs:
            ls.use_exclusions(ls.exclusions.with_globs(ls.settings.exclude))
        log.info(json.dumps({"event": "settings", "enable": ls.settings.enable, "multiline": ls.settings.multiline,
                             "remote": bool(ls.settings.remote_url)}))

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def on_close(ls: CodeAssistantServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = unquote(params.text_document.uri)
        task = ls.pending.pop(params.text_document.uri, None)
        if task is not None:
            task.cancel()
        text = ls.last_text.pop(uri, None)
        if text is not None and not ls.excluded(uri):
            ls.recent[uri] = text
            ls.recent.move_to_end(uri)
            while len(ls.recent) > RECENT_DOCUMENTS:
                ls.recent.popitem(last=False)

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def on_open(ls: CodeAssistantServer, params: types.DidOpenTextDocumentParams) -> None:
        _remember(ls, params.text_document.uri)
        ls.excluded(params.text_document.uri)  # reads the ignore files now, not on the first keystroke

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def on_change(ls: CodeAssistantServer, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        text = _remember(ls, uri)
        if text is not None:
            ls.editor_workspace.changed(uri, text)
        ls.debounce.keystroke()
        changes = params.content_changes
        line = changes[-1].range.start.line if changes and getattr(changes[-1], "range", None) else 0
        if ls.settings.recent_chunks and not ls.excluded(uri):
            document = ls.workspace.text_documents.get(unquote(uri))
            if document is not None:
                ls.chunks.touch(unquote(uri), ls.display_path(uri), document.source, line)
                ls.schedule_chunk_flush()

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: CodeAssistantServer,
                                params: types.InlineCompletionParams) -> types.InlineCompletionList:
        invoked = params.context.trigger_kind == types.InlineCompletionTriggerKind.Invoked
        info = params.context.selected_completion_info
        selected = (info.range, info.text) if info is not None and info.range.start.line == info.range.end.line \
            and "\n" not in info.text else None
        found = await ls.suggest(params.text_document.uri, params.position, invoked, "inline", selected)
        if found is None:
            return types.InlineCompletionList(items=[])
        cursor, suggestion, language = found
        if selected is not None:
            # The item must extend what the suggest widget inserts: the same range, its text first.
            edit_range, text = selected[0], selected[1] + suggestion.edit.text
            if suggestion.edit.replaces_line_suffix:
                end = edit_range.end.character + cursor.line_end - cursor.character
                edit_range = types.Range(edit_range.start, types.Position(edit_range.end.line, end))
        else:
            end = cursor.line_end if suggestion.edit.replaces_line_suffix else cursor.character
            edit_range = types.Range(types.Position(cursor.line, cursor.character), types.Position(cursor.line, end))
            text = suggestion.edit.text
        return types.InlineCompletionList(items=[types.InlineCompletionItem(
            insert_text=text, range=edit_range, command=accept_command(suggestion.id, language))])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls: CodeAssistantServer, params: types.CompletionParams) -> types.CompletionList:
        # Popup clients: explicit requests get no debounce; a popup shows one line unless multiline is set.
        invoked = params.context is None or params.context.trigger_kind == types.CompletionTriggerKind.Invoked
        found = await ls.suggest(params.text_document.uri, params.position, invoked, "completion")
        if found is None:
            return types.CompletionList(is_incomplete=True, items=[])
        cursor, suggestion, language = found
        return types.CompletionList(is_incomplete=True, items=[completion_item(cursor, suggestion, language)])

    @server.command(ACCEPT_COMMAND)
    async def accept(ls: CodeAssistantServer, *arguments: Any) -> dict:
        info = arguments[0] if arguments and isinstance(arguments[0], dict) else {}
        language = str(info.get("language") or "plaintext")
        ls.accepted[language] += 1
        completion_id = str(info.get("id") or "")
        if completion_id and ls.settings.remote_url:
            _spawn((await ls.backend()).send_event(completion_id, "accepted", language))  # never delay the editor
        log.info(json.dumps({"event": "accepted", "id": completion_id, "language": language}))
        return {"accepted": ls.accepted[language]}

    @server.command(PARTIAL_ACCEPT_COMMAND)
    async def partial_accept(ls: CodeAssistantServer, *arguments: Any) -> dict:
        """The user took part of a suggestion (VS Code: next word / next line; Neovim: its helper)."""
        info = arguments[0] if arguments and isinstance(arguments[0], dict) else {}
        language = str(info.get("language") or "plaintext")
        kind = info.get("kind") if info.get("kind") in ("word", "line", "other") else "other"
        accepted_chars = info.get("acceptedLength")
        ls.partly_accepted[language] += 1
        completion_id = str(info.get("id") or "")
        if completion_id and ls.settings.remote_url:
            _spawn((await ls.backend()).send_event(completion_id, "partially_accepted", language))
        log.info(json.dumps({"event": "partially_accepted", "id": completion_id, "language": language, "kind": kind,
                             "chars": accepted_chars if isinstance(accepted_chars, int) else None}))
        return {"partlyAccepted": ls.partly_accepted[language]}

    @server.command(STATS_COMMAND)
    def stats(ls: CodeAssistantServer, *arguments: Any) -> dict:
        engine = {}
        if ls.engine is not None:
            engine = {"running": len(ls.engine.running), "queue": ls.engine.queue_depth(), **ls.engine.stats}
        return {"shown": dict(ls.shown), "accepted": dict(ls.accepted), "partlyAccepted": dict(ls.partly_accepted),
                "pending": len(ls.pending), "prefetching": len(ls.prefetching), "cacheHits": ls.cache.hits, "debounceMs": round(
                    ls.debounce.delay_ms(Cursor("", "", 0, 0, 0))), "engine": engine,
                "workspace": ls.editor_workspace.stats()}

    @server.feature(types.SHUTDOWN)
    def on_shutdown(ls: CodeAssistantServer, *args: Any) -> None:
        for task in list(ls.pending.values()) + [task for _, task in ls.prefetching.values()]:
            task.cancel()
        ls.editor_workspace.close()
        if ls.rules_watch is not None:
            ls.rules_watch.cancel()

    return server


def accept_command(completion_id: str, language: str) -> types.Command:
    return types.Command(title="Accept", command=ACCEPT_COMMAND, arguments=[{"id": completion_id, "language": language}])


def completion_item(cursor: Cursor, suggestion: Suggestion, language: str) -> types.CompletionItem:
    """Popup clients filter and replace by the word before the cursor, so the item starts with it."""
    word = _word_before(cursor.line_prefix)
    text = word + suggestion.edit.text
    start = cursor.character - len(word)  # word characters are ASCII: one unit each in every encoding
    end = cursor.line_end if suggestion.edit.replaces_line_suffix else cursor.character
    edit_range = types.Range(types.Position(cursor.line, start), types.Position(cursor.line, end))
    label = text.split("\n", 1)[0].strip() or text.strip()
    return types.CompletionItem(
        label=label[:80], kind=types.CompletionItemKind.Text, detail="code-assistant",
        filter_text=text.split("\n", 1)[0], insert_text=text, text_edit=types.TextEdit(edit_range, text),
        insert_text_format=types.InsertTextFormat.PlainText, sort_text="0",
        command=accept_command(suggestion.id, language))


def _word_before(line_prefix: str) -> str:
    i = len(line_prefix)
    while i > 0 and (line_prefix[i - 1].isascii() and (line_prefix[i - 1].isalnum() or line_prefix[i - 1] == "_")):
        i -= 1
    return line_prefix[i:]


async def _watch_rules(ls: CodeAssistantServer) -> None:
    """Ignore files edited outside the editor (a client without file watchers, `git checkout`):
    their new rules are applied within RULES_CHECK_SECONDS."""
    seen = await asyncio.to_thread(ls.exclusions.changes)
    while True:
        await asyncio.sleep(RULES_CHECK_SECONDS)
        changes = await asyncio.to_thread(ls.exclusions.changes)   # a stat per ignore file read
        if changes != seen:
            seen = changes
            ls.use_exclusions(ls.exclusions)


async def _watch_files(ls: CodeAssistantServer) -> None:
    """Ask the client to report file changes on disk (workspace/didChangeWatchedFiles)."""
    try:
        await ls.client_register_capability_async(types.RegistrationParams(registrations=[types.Registration(
            id="code-assistant-watch", method=types.WORKSPACE_DID_CHANGE_WATCHED_FILES,
            register_options=types.DidChangeWatchedFilesRegistrationOptions(
                watchers=[types.FileSystemWatcher(glob_pattern="**/*")]))]))
    except Exception as error:  # a client that claims the capability but refuses: saves still arrive
        log.warning("file watching not registered: %s", error)


def _is_ignore_file(uri: str) -> bool:
    path = (to_fs_path(unquote(uri)) or "").replace(os.sep, "/")
    return path.rsplit("/", 1)[-1] in IGNORE_FILES or path.endswith("/.git/info/exclude")


def _remember(ls: CodeAssistantServer, uri: str) -> str | None:
    document = ls.workspace.text_documents.get(unquote(uri))
    if document is not None:
        ls.last_text[unquote(uri)] = document.source
        return document.source
    return None


_background: set[asyncio.Task] = set()


def _spawn(coroutine) -> None:
    """Fire-and-forget (event reporting must not delay the editor); keep a reference until done."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _with_selection(source: str, selected: tuple[types.Range, str], encoding: str) -> tuple[str, types.Position]:
    """The document as it is once the suggest widget's item is inserted, and the cursor after it."""
    edit_range, text = selected
    start = split_at(source, edit_range.start.line, edit_range.start.character, encoding)
    end = split_at(source, edit_range.end.line, edit_range.end.character, encoding)
    character = start.character + utf16_length(text, encoding)
    return start.prefix + text + end.suffix, types.Position(edit_range.start.line, character)


def _log_request(method: str, outcome: str, start: float, completion_id: str = "", language: str = "",
                 chars: int = 0) -> None:
    # One line per request, never the user's code. `id` is the completion's, once there is one.
    line = {"event": "completion", "method": method, "outcome": outcome, "language": language or "unknown",
            "chars": chars, "ms": round((time.perf_counter() - start) * 1000, 1)}
    if completion_id:
        line["id"] = completion_id
    log.info(json.dumps(line))
