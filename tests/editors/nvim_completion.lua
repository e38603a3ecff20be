-- Run by test_neovim.py: `nvim --headless --clean -c "luafile THIS"`. Loads the repository's
-- editors/neovim/code_assistant.lua, opens a Python file, lets the built-in LSP client start the
-- real server, then completes twice: a textDocument/completion request through the client, and the
-- user's path (insert mode, <C-x><C-o>, the menu, <C-y> to accept), the server's counts, and
-- :CodeAssistantToggle.
-- Everything it saw goes to $CA_TEST_OUT as JSON; it always quits.

local out_path = assert(os.getenv('CA_TEST_OUT'), 'CA_TEST_OUT not set')
local result = { nvim = tostring(vim.version().major) .. '.' .. vim.version().minor .. '.' .. vim.version().patch }

local function finish(err)
  if err then result.error = tostring(err) end
  local file = assert(io.open(out_path, 'w'))
  file:write(vim.fn.json_encode(result))
  file:close()
  vim.cmd('qa!')
end

-- The whole test may take at most this long; a hang writes what was seen so far.
local watchdog = vim.loop.new_timer()
watchdog:start(tonumber(os.getenv('CA_TEST_TIMEOUT_MS') or '90000'), 0, vim.schedule_wrap(function()
  finish('timed out')
end))

local code_assistant_module

local function setup_and_request()
  package.path = os.getenv('CA_LUA_DIR') .. '/?.lua;' .. package.path
  local code_assistant = require('code_assistant')
  code_assistant_module = code_assistant
  -- The team-server configuration (only built, not started: the HTTP side has its own tests).
  local remote = code_assistant.client_config({ remote_url = 'http://team.example:8000', api_key_env = 'CA_TEST_KEY' })
  result.remote = { cmd = remote.cmd, init_options = remote.init_options, settings = remote.settings }
  local attached = false
  code_assistant.setup({
    cmd = vim.fn.json_decode(os.getenv('CA_SERVER_CMD')),
    settings = { debounceMs = 0, maxTokens = 16 },
    on_attach = function() attached = true end,
  })
  vim.cmd('edit ' .. vim.fn.fnameescape(os.getenv('CA_TEST_FILE')))
  if vim.bo.filetype ~= 'python' then vim.bo.filetype = 'python' end
  if not vim.wait(60000, function() return attached end, 20) then error('the server never attached') end
  result.omnifunc = vim.bo.omnifunc
  result.local_settings = code_assistant.config.init_options
  result.started_with = code_assistant.started_with
  result.ui = vim.b.code_assistant_ui

  -- After `json.` on the line that says `        json.` (1-based row; byte column).
  local row = vim.fn.search('^        json\\.$', 'n')
  assert(row > 0, 'test file lacks the json. line')
  vim.api.nvim_win_set_cursor(0, { row, 0 })
  local params = vim.lsp.util.make_position_params(0, 'utf-16')
  -- At the end of the line, where insert mode's cursor will be (normal mode cannot go there).
  params.position = { line = row - 1, character = #'        json.' }
  params.context = { triggerKind = 1 }
  local responses = vim.lsp.buf_request_sync(0, 'textDocument/completion', params, 60000) or {}
  result.request = {}
  local items = 0
  for _, response in pairs(responses) do
    table.insert(result.request, { error = response.error or response.err, result = response.result })
    if response.result and response.result.items then items = items + #response.result.items end
  end
  return row, items
end

local ok, row, items = pcall(setup_and_request)
if not ok then
  finish(row)
  return
end
if items == 0 then
  finish() -- the menu would stay empty too: report the request's answer now
  return
end

-- The user's path, with the menu settings docs/editors.md suggests (the menu shows even for one
-- item, and nothing is inserted before <C-y>). The omnifunc fills the menu asynchronously once the
-- server answers, so a timer polls for it.
vim.o.completeopt = 'menuone,noinsert'
vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes('A<C-x><C-o>', true, false, true), 'n', false)
-- The partial-accept keys (<M-Right>: the next word, <M-C-Right>: the next line), pressed in insert
-- mode at the end of the line. Before each press the driver asks what the server suggests there, so
-- that the test knows it (the mapping asks again and gets the same from the server's cache).
local function partial_accepts()
  local keys = { '<M-Right>', '<M-C-Right>' }
  result.presses = {}
  local function suggestion_here()
    local cursor = vim.api.nvim_win_get_cursor(0)
    local params = vim.lsp.util.make_position_params(0, 'utf-16')
    params.position = { line = cursor[1] - 1, character = vim.str_utfindex(vim.api.nvim_get_current_line()) }
    params.context = { triggerKind = 1 }
    for _, response in pairs(vim.lsp.buf_request_sync(0, 'textDocument/inlineCompletion', params, 30000) or {}) do
      local items = response.result and response.result.items or {}
      if items[1] then return items[1].insertText end
    end
  end
  local function lines() return table.concat(vim.api.nvim_buf_get_lines(0, row - 1, vim.fn.line('.'), true), '\n') end
  local timer = vim.loop.new_timer()
  local waited, pressed = 0, nil
  local function press()
    pressed = { key = keys[#result.presses + 1], suggestion = suggestion_here(), before = lines() }
    if not pressed.suggestion then return false end
    vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(pressed.key, true, false, true), 'm', false)
    return true
  end
  local function done()
    timer:stop()
    vim.cmd('stopinsert')
    for _, response in pairs(vim.lsp.buf_request_sync(0, 'workspace/executeCommand',
        { command = 'codeAssistant.stats', arguments = {} }, 10000) or {}) do
      result.stats_after_partial = response.result
    end
    result.stats_line_after_partial = code_assistant_module.format_stats(result.stats_after_partial or {})
    finish()
  end
  vim.api.nvim_feedkeys('A', 'n', false)
  local started = false
  timer:start(50, 50, vim.schedule_wrap(function()
    local ok, err = pcall(function()
      if not started then -- insert mode has begun
        started = true
        if not press() then done() end
        return
      end
      waited = waited + 50
      local now = lines()
      if now == pressed.before and waited < 10000 then return end
      pressed.after, waited = now, 0
      table.insert(result.presses, pressed)
      if #result.presses == #keys or not press() then done() end
    end)
    if not ok then
      timer:stop()
      finish(err)
    end
  end))
end

local poll = vim.loop.new_timer()
local accepting = false
local function step()
  if accepting then
    if vim.fn.mode() ~= 'i' or vim.fn.complete_info({ 'mode' }).mode == '' then
      poll:stop()
      result.line_after_accept = vim.api.nvim_buf_get_lines(0, row - 1, row, true)[1]
      vim.cmd('stopinsert')
      -- What the server counted: shown, and accepted where the client runs the item's command.
      local stats = vim.lsp.buf_request_sync(0, 'workspace/executeCommand',
        { command = 'codeAssistant.stats', arguments = {} }, 10000) or {}
      for _, response in pairs(stats) do result.stats = response.result end
      result.stats_line = code_assistant_module.format_stats(result.stats or {})
      vim.cmd('CodeAssistantStats')
      -- :CodeAssistantToggle turns completions off in the running server, and on again; asked at
      -- the same place as the first request (the accepted text undone), where there was an item.
      vim.cmd('normal! u')
      result.line_after_undo = vim.api.nvim_buf_get_lines(0, row - 1, row, true)[1]
      local function ask()
        local params = vim.lsp.util.make_position_params(0, 'utf-16')
        params.position = { line = row - 1, character = #result.line_after_undo }
        params.context = { triggerKind = 1 }
        local answers = {}
        for _, response in pairs(vim.lsp.buf_request_sync(0, 'textDocument/completion', params, 30000) or {}) do
          table.insert(answers, response.result)
        end
        return answers
      end
      vim.cmd('CodeAssistantToggle')
      result.after_toggle_off = ask()
      result.enabled_after_toggle = code_assistant_module.config.settings.codeAssistant.enable
      vim.cmd('CodeAssistantToggle')
      result.after_toggle_on = ask()
      partial_accepts()
    end
    return
  end
  local info = vim.fn.complete_info({ 'items', 'mode', 'selected' })
  if info.items and #info.items > 0 then
    result.menu = info.items
    result.menu_selected = info.selected
    result.line_in_menu = vim.api.nvim_get_current_line()
    accepting = true
    -- 'completeopt' decides whether the first item is already selected; select it if not.
    local keys = info.selected >= 0 and '<C-y>' or '<C-n><C-y>'
    vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), 'n', false)
  end
end
poll:start(50, 50, vim.schedule_wrap(function()
  local step_ok, err = pcall(step)
  if not step_ok then
    poll:stop()
    finish(err)
  end
end))
