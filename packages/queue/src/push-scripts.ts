import { Script } from './script';

/*
 * Layout of one push in Redis (all under the queue prefix P):
 *   P:push:<id>          hash: id, status, source, target, tags, request, createdAt,
 *                        createdMs, startedAt, finishedAt, manifest, manifests,
 *                        signatures, error, layout, progressMs (last progress, Redis clock,
 *                        ms: the retry budget counts from it), lastCause (JSON {code, message}
 *                        of the last transient failure) — JSON values except the plain strings —
 *                        and one field per layer attribute: layer:<img>:<n>:<attr>
 *                        (state, digest, size, bytesSent, mountedFrom, total, bytesRead), so two workers
 *                        updating two layers (or two attributes) never overwrite each other.
 *   P:push:<id>:events   stream of progress events, field "e" = JSON; the entry id is the SSE id.
 *   P:pushes:<status>    sorted sets (score = createdMs) for listing; P:pushes:all too.
 * Every write refreshes the TTL of the hash and the stream.
 */

export const LAYER_ATTRS = [
  'state',
  'digest',
  'size',
  'bytesSent',
  'mountedFrom',
  'total',
  'bytesRead',
] as const;
export const EVENT_MAXLEN = 10_000;

export const CREATE = new Script(
  'ferryPushCreate',
  `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'progressMs', tostring(t[1] * 1000 + math.floor(t[2] / 1000)))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ${EVENT_MAXLEN}, '*', 'e', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
`,
);

// KEYS: hash, events, index:queued..cancelled (5)
// ARGV: ttl, allowedFrom (comma list), to, event JSON ('' = none), pushId, field/value pairs...
export const TRANSITION = new Script(
  'ferryPushTransition',
  `
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {-1, '', ''} end
if not string.find(',' .. ARGV[2] .. ',', ',' .. cur .. ',', 1, true) then return {0, cur, ''} end
local to = ARGV[3]
if cur == to then return {1, cur, ''} end
redis.call('HSET', KEYS[1], 'status', to)
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local names = {'queued', 'running', 'succeeded', 'failed', 'cancelled'}
if cur ~= to then
  local score = redis.call('HGET', KEYS[1], 'createdMs') or '0'
  for i, n in ipairs(names) do
    if n == cur then redis.call('ZREM', KEYS[2 + i], ARGV[5]) end
    if n == to then redis.call('ZADD', KEYS[2 + i], score, ARGV[5]) end
  end
end
local eid = ''
if ARGV[4] ~= '' then
  eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ${EVENT_MAXLEN}, '*', 'e', ARGV[4])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return {1, cur, eid}
`,
);

// KEYS: hash, events. ARGV: ttl, emit ('1'/'0'), at, then per layer: field prefix, imageIndex,
// index, n, and n attr/value pairs (an attr written '+name' adds the integer value to the
// attribute: bytesSent across attempts). Returns each layer's event id ('' without events).
export const LAYER_UPDATE = new Script(
  'ferryPushLayersUpdate',
  `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local names = {${LAYER_ATTRS.map((a) => `'${a}'`).join(', ')}}
local out = {}
local i = 4
while i <= #ARGV do
  local p = ARGV[i]
  local n = tonumber(ARGV[i + 3])
  -- 'cancelled' is final: a worker's late progress report never turns it back into 'uploading'.
  local sticky = redis.call('HGET', KEYS[1], p .. 'state') == '"cancelled"'
  for j = i + 4, i + 2 + 2 * n, 2 do
    if sticky and ARGV[j] == 'state' then
      -- keep the cancelled state
    elseif string.sub(ARGV[j], 1, 1) == '+' then
      redis.call('HINCRBY', KEYS[1], p .. string.sub(ARGV[j], 2), ARGV[j + 1])
    else
      redis.call('HSET', KEYS[1], p .. ARGV[j], ARGV[j + 1])
    end
  end
  local eid = ''
  if ARGV[2] == '1' then
    local json = '{"type":"layer","imageIndex":' .. ARGV[i + 1] .. ',"index":' .. ARGV[i + 2]
    for _, a in ipairs(names) do
      local v = redis.call('HGET', KEYS[1], p .. a)
      if not v then
        if a == 'state' then v = '"pending"' elseif a == 'bytesSent' then v = '0' end
      end
      if v then json = json .. ',"' .. a .. '":' .. v end
    end
    json = json .. ',"at":"' .. ARGV[3] .. '"}'
    eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ${EVENT_MAXLEN}, '*', 'e', json)
  end
  out[#out + 1] = eid
  i = i + 4 + 2 * n
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return out
`,
);

// KEYS: hash, events. ARGV: ttl, event JSON
export const APPEND = new Script(
  'ferryPushAppend',
  `
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local eid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ${EVENT_MAXLEN}, '*', 'e', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return eid
`,
);

/** Now on Redis' clock, in ms (every worker measures the budget on the same clock). */
const NOW_MS = `local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)`;

// KEYS: hash. Records progress (bytes accepted, a job finished): the retry budget starts again.
// Returns 1, or 0 for an unknown push.
export const PROGRESS = new Script(
  'ferryPushProgress',
  `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
${NOW_MS}
redis.call('HSET', KEYS[1], 'progressMs', tostring(now))
return 1
`,
);

// KEYS: hash. ARGV: cause JSON ('' = only read). Records the last transient cause (if given) and
// returns {exists (0/1), ms since the last progress, last cause JSON or ''}. A push created before
// progressMs existed counts from its startedAt/createdMs.
export const BUDGET = new Script(
  'ferryPushBudget',
  `
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, ''} end
${NOW_MS}
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'lastCause', ARGV[1]) end
local since = tonumber(redis.call('HGET', KEYS[1], 'progressMs') or '')
  or tonumber(redis.call('HGET', KEYS[1], 'createdMs') or '') or now
return {1, math.max(0, now - since), redis.call('HGET', KEYS[1], 'lastCause') or ''}
`,
);
