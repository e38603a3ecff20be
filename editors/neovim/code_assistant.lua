-- code-assistant completions in Neovim through its built-in LSP client.
--
-- Copy or symlink this file into your config's lua/ folder (or put editors/neovim/?.lua on
-- package.path) and call:
--
--   require('code_assistant').setup({
--     cmd = { 'code-assistant', 'lsp' },          -- or { '/path/.venv/bin/code-assistant', 'lsp', '--model', DIR }
--     settings = { maxTokens = 48, multiline = false },
--     -- remote_url = 'https://code-assistant.example.com',  -- a team server; key from $CODE_ASSISTANT_API_KEY
--   })
--
-- Neovim 0.12+: ghost text through vim.lsp.inline_completion (<Tab> accepts).
-- Neovim 0.11:  vim.lsp.config/vim.lsp.enable and vim.lsp.completion (the completion menu).
-- Neovim 0.7-0.10: the same server through vim.lsp.start_client; <C-x><C-o> completes.
-- Full guide: docs/editors.md.

local M = {}

M.name = 'code_assistant'

-- The server's settings (names and defaults are the language server's contract). remoteUrl and
-- apiKey are set only with remote_url: a null would override a `--remote URL` written into cmd.
M.default_settings = {
  enable = true,
  maxTokens = 48,
  temperature = 0.0,
  multiline = false,
  -- debounceMs: unset, the server adapts it to the typing speed and its latency (100-1000 ms).
  -- exclude = { 'vendor/**' }: globs that never get completions (.env, key files and git-ignored
  -- files never do).
}

M.defaults = {
  cmd = { 'code-assistant', 'lsp' },
  filetypes = { 'python' },
  root_markers = { '.git', 'pyproject.toml', 'setup.cfg', 'setup.py' },
  settings = {},
  -- A team server: `code-assistant lsp --remote URL`; the key comes from the environment so that
  -- it stays out of config files that end up in dotfile repositories.
  remote_url = nil,
  api_key_env = 'CODE_ASSISTANT_API_KEY',
  -- Insert-mode key that accepts ghost text on 0.12+ (falls through to the key when nothing is shown).
  accept_key = '<Tab>',
  on_attach = nil,
}

local function has(version)
  return vim.fn.has('nvim-' .. version) == 1
end

local function merge(base, extra)
  local out = {}
  for k, v in pairs(base) do out[k] = v end
  for k, v in pairs(extra or {}) do out[k] = v end
  return out
end

--- The command line, the settings and the hooks for one client, from setup()'s options.
function M.client_config(opts)
  opts = merge(M.defaults, opts)
  local cmd = vim.deepcopy(opts.cmd)
  local settings = merge(M.default_settings, opts.settings)
  if opts.remote_url then
    table.insert(cmd, '--remote')
    table.insert(cmd, opts.remote_url)
    settings.remoteUrl = opts.remote_url
    local key = os.getenv(opts.api_key_env)
    if key and key ~= '' then settings.apiKey = key end
  end
  return {
    name = M.name,
    cmd = cmd,
    filetypes = opts.filetypes,
    root_markers = opts.root_markers,
    init_options = settings,
    settings = { codeAssistant = settings },
    on_attach = function(client, bufnr)
      M.on_attach(client, bufnr, opts)
      if opts.on_attach then opts.on_attach(client, bufnr) end
    end,
  }
end

--- Turns on the best completion UI the running Neovim has for this buffer.
function M.on_attach(client, bufnr, opts)
  local inline = vim.lsp.inline_completion
  if inline and type(inline.enable) == 'function'
      and client.server_capabilities.inlineCompletionProvider then
    inline.enable(true, { bufnr = bufnr })
    vim.b[bufnr].code_assistant_ui = 'inline'
    if opts.accept_key then
      vim.keymap.set('i', opts.accept_key, function()
        if not inline.get() then return opts.accept_key end
      end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = 'Accept code-assistant completion' })
    end
  elseif vim.lsp.completion and type(vim.lsp.completion.enable) == 'function' then
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true })
    vim.b[bufnr].code_assistant_ui = 'completion'
  else
    vim.api.nvim_buf_set_option(bufnr, 'omnifunc', 'v:lua.vim.lsp.omnifunc')
    vim.b[bufnr].code_assistant_ui = 'omnifunc'
  end
end

local function find_root(bufnr, markers)
  local name = vim.api.nvim_buf_get_name(bufnr)
  local dir = name ~= '' and vim.fn.fnamemodify(name, ':p:h') or vim.fn.getcwd()
  for _, marker in ipairs(markers) do
    local found = vim.fn.finddir(marker, dir .. ';')
    if found ~= '' then return vim.fn.fnamemodify(found, ':p:h:h') end -- ':p' of a folder ends in '/'
    found = vim.fn.findfile(marker, dir .. ';')
    if found ~= '' then return vim.fn.fnamemodify(found, ':p:h') end
  end
  return dir
end

-- 0.7 to 0.10: one client shared by every buffer of the chosen file types.
local function start_on_filetype(config)
  local client_id
  local group = vim.api.nvim_create_augroup('code_assistant', { clear = true })
  vim.api.nvim_create_autocmd('FileType', {
    group = group,
    pattern = config.filetypes,
    callback = function(args)
      local bufnr = args.buf
      if client_id == nil or vim.lsp.get_client_by_id(client_id) == nil then
        client_id = vim.lsp.start_client(merge(config, { root_dir = find_root(bufnr, config.root_markers) }))
      end
      if client_id then vim.lsp.buf_attach_client(bufnr, client_id) end
    end,
  })
end

--- Registers the server; it starts when a buffer of one of the file types opens.
function M.setup(opts)
  local config = M.client_config(opts)
  M.config = config
  if vim.lsp.config and vim.lsp.enable and has('0.11') then
    vim.lsp.config(M.name, config)
    vim.lsp.enable(M.name)
    M.started_with = 'vim.lsp.enable'
  else
    start_on_filetype(config)
    M.started_with = 'vim.lsp.start_client'
  end
  vim.api.nvim_create_user_command('CodeAssistantToggle', function() M.toggle() end,
    { desc = 'Turn code-assistant completions on or off' })
  vim.api.nvim_create_user_command('CodeAssistantStats', function() M.show_stats() end,
    { desc = 'Shown and accepted code-assistant suggestions per language' })
end

--- "python: 12 shown, 4 accepted (33%)" from the server's codeAssistant.stats answer.
function M.format_stats(stats)
  local rows = {}
  for language, shown in pairs(stats.shown or {}) do
    local accepted = (stats.accepted or {})[language] or 0
    local rate = shown > 0 and string.format(' (%d%%)', math.floor(100 * accepted / shown + 0.5)) or ''
    table.insert(rows, { shown = shown, text = string.format('%s: %d shown, %d accepted%s', language, shown, accepted, rate) })
  end
  if #rows == 0 then return 'no suggestions shown yet' end
  table.sort(rows, function(a, b) return a.shown > b.shown or (a.shown == b.shown and a.text < b.text) end)
  local texts = {}
  for _, row in ipairs(rows) do table.insert(texts, row.text) end
  return table.concat(texts, '; ')
end

local function clients()
  if vim.lsp.get_clients then return vim.lsp.get_clients({ name = M.name }) end
  local found = {}
  for _, client in pairs(vim.lsp.get_active_clients()) do
    if client.name == M.name then table.insert(found, client) end
  end
  return found
end

function M.show_stats()
  for _, client in ipairs(clients()) do
    local params = { command = 'codeAssistant.stats', arguments = {} }
    local function show(err, result)
      if err then
        vim.notify('code-assistant stats: ' .. tostring(err.message or err), vim.log.levels.WARN)
      else
        vim.notify('code-assistant: ' .. M.format_stats(result or {}))
      end
    end
    if has('0.11') then client:request('workspace/executeCommand', params, show)
    else client.request('workspace/executeCommand', params, show) end
  end
end

--- Turns completions off or on in the running server (workspace/didChangeConfiguration).
function M.toggle()
  local settings = M.config.settings.codeAssistant
  settings.enable = not settings.enable
  local params = { settings = { codeAssistant = settings } }
  for _, client in ipairs(clients()) do
    -- Also what the client answers when the server asks (workspace/configuration).
    client.config.settings = params.settings
    if has('0.11') then client:notify('workspace/didChangeConfiguration', params)
    else client.notify('workspace/didChangeConfiguration', params) end
  end
  vim.notify('code-assistant completions ' .. (settings.enable and 'on' or 'off'))
end

return M
