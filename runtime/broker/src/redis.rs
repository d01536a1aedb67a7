//! The Redis broker: a stream + consumer group per queue (at-least-once,
//! acks late), a sorted set per queue for delayed messages, a stream per
//! queue for dead letters, plain keys with expiry for results and pub/sub
//! to wake whoever waits on one.
//!
//! Keys (prefix `celeriac:` by default; `{q}` is a hash tag so a Redis
//! Cluster keeps each queue's keys in one slot):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `queue:{q}` | stream, group `workers` | ready and held messages (`m` field) |
//! | `delayed:{q}` | zset | messages by due time (Unix ms) |
//! | `dlq:{q}` | stream | dead letters: `m`, `reason`, `at` |
//! | `queues` | set | queue names |
//! | `result:<id>` | string, EX | result record JSON; also a pub/sub channel |
//! | `component:<digest>` | hash | `bytes`, `uploaded_at`, `sig` (the first signature, for older workers) |
//! | `component-sigs:<digest>` | hash | `<key_id>:<module>` -> signature JSON |
//! | `module:<name>` | string | current [`ModuleInfo`] JSON |
//! | `module-history:<name>` | list | digests the name pointed at, newest first |
//! | `modules` | set | module names |
//! | `worker:<id>` | string, EX | heartbeat JSON |
//! | `workers` | set | worker ids |
//! | `group:<id>` | hash, EX | a workflow group: `n`, `done`, `r:<index>` results, `failed`, `join` message and its `stream` |
//! | `workflow:<root>` | string, EX | a workflow's description (its nodes and ids) |
//! | `unique:<key>` | string, PX | the task id holding a unique-submission key |
//! | `revoked` | zset, also a pub/sub channel | revoked task and workflow ids by expiry (Unix ms) |
//! | `beat:lease`, `beat:epoch` | string PX, counter | the beat leader's `holder:token`; the last token given |
//! | `beat:last:<entry>` | string | the last run of a periodic entry fired (Unix ms) |
//! | `rate:<task>` | string, PX | when the next call of a rate-limited task may start (Unix ms) |
//! | `rate-slot:<id>` | string, PX | a reserved start time of a task that had to wait |
//!
//! Celery's keys, unprefixed, as Celery names them (see `celery_ingest`):
//! kombu's lists `<queue>` and `<queue>\x06\x16<3|6|9>` (a queue's
//! priorities), and the result backend's `celery-task-meta-<id>` (string,
//! EX; also a pub/sub channel).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, RedisError, RedisResult, Script, Value};
use tokio::sync::Mutex;

use super::results_pubsub::ResultChannels;
use super::{
    BeatFire, Broker, BrokerError, BrokerResult, Claim, Completed, Completion, DeadLetter,
    Delivery, Disposition, Effects, FetchLimits, GroupState, Ingested, ModuleInfo, OVERSIZE_PREFIX,
    Outgoing, Pending, QueueStats, ResultWrite, Revocation, RevokeWatch, WorkerInfo, redact,
    signature_slot,
};
use celeriac_protocol::Digest;
use celeriac_protocol::message::{levels, split_level};
use celeriac_protocol::{now_ms, record::state_of};

const GROUP: &str = "workers";
/// A fetch whose messages total at most this many bytes gets them back
/// from the fetch script itself; a larger one reads them in a second step.
const INLINE_BYTES: usize = 256 << 10;
/// Messages per queue one blocking read may bring (see `fetch`).
const BLOCKING_COUNT: usize = 2;
/// Events stored in one stream entry at most (a task's life fits): the
/// stream is capped by entries, so this bounds its memory (about 1 KiB an
/// entry, 100 MiB at the default 100,000 kept).
const EVENTS_PER_ENTRY: usize = 8;

/// Dead letters kept per queue (approximate trim, as Redis' `MAXLEN ~`).
const DLQ_CAP: u64 = 100_000;
/// Delayed messages moved per script call, bounding the time Redis is busy.
const PROMOTE_BATCH: u64 = 1_000;
/// How long a producer trusts the module → digest it last read. Resolving
/// on every submit was one of its two round trips (bench/compare,
/// latency); a digest at most this old pins the same code as a submit made
/// that much earlier. This process's own uploads are seen at once.
const MODULE_TTL: Duration = Duration::from_secs(1);

/// Moves due messages from `delayed:{q}` to `queue:{q}` atomically, so two
/// workers never move the same message twice.
const PROMOTE_LUA: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'm', m)
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return #due
"#;

/// Takes ready messages of one queue's priority levels for a consumer
/// within a count and a byte budget, without anyone reading an oversized
/// one. KEYS are (stream, dead-letter stream) per level; ARGV[11..] the
/// levels. Levels are served by rank: `level × aging + age of its oldest
/// waiting message` (ARGV[10] is the aging in ms), so a higher level goes
/// first unless a lower one's oldest message has waited `aging` per level
/// of difference longer: no level starves.
///
/// Per stream it looks at the entries after the group's last-delivered id
/// (XRANGE), decides how many fit, delivers exactly those (XCLAIM + SETID,
/// as XREADGROUP would), and moves oversized ones straight to the
/// dead-letter queue, cut to a prefix, with the reason. Returns per
/// stream served: its key index, the last-delivered id before this call,
/// how many delivered messages the caller is to read itself with a plain
/// XREADGROUP from that id (when the batch is over ARGV[9] bytes: passing
/// large payloads back through Lua cost more than the rest of the fetch),
/// how many were oversized, how many come inline; then id, prefix, size of
/// each oversized one; then id, payload of each inline one.
const FETCH_LUA: &str = r#"
local max, budget, limit, keep = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now, aging = tonumber(ARGV[7]), tonumber(ARGV[10])
local function size(n)
  if n < 1024 then return n .. ' B' end
  local units = {'KiB', 'MiB', 'GiB'}
  local v, u = n / 1024, 1
  while v >= 1024 and u < #units do v = v / 1024; u = u + 1 end
  return string.format('%.1f %s', v, units[u])
end
local function last_delivered(stream)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return nil end
  for _, g in ipairs(groups) do
    local name, id = nil, nil
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] end
      if g[i] == 'last-delivered-id' then id = g[i + 1] end
    end
    if name == ARGV[1] then return id end
  end
  return nil
end
-- Which levels have waiting messages, and how old their oldest is.
local ready = {}
for k = 1, #KEYS, 2 do
  if redis.call('XLEN', KEYS[k]) > 0 then
    local last = last_delivered(KEYS[k])
    if not last then return redis.error_reply('NOGROUP no group on ' .. KEYS[k]) end
    local head = redis.call('XRANGE', KEYS[k], '(' .. last, '+', 'COUNT', 1)
    if #head > 0 then
      local born = tonumber(string.match(head[1][1], '^(%d+)'))
      local level = tonumber(ARGV[10 + (k + 1) / 2])
      ready[#ready + 1] = {k = k, last = last, born = born, rank = level * aging + (now - born)}
    end
  end
end
table.sort(ready, function(a, b)
  if a.rank ~= b.rank then return a.rank > b.rank end
  return a.born < b.born
end)
local out = {0}
local left, bytes_left = max, budget
for _, r in ipairs(ready) do
  if left <= 0 or (bytes_left <= 0 and left < max) then break end
  local stream, dlq = KEYS[r.k], KEYS[r.k + 1]
  local entries = redis.call('XRANGE', stream, '(' .. r.last, '+', 'COUNT', left)
  local bytes, n, big, payloads = 0, 0, {}, {}
  for _, e in ipairs(entries) do
    local m = ''
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'm' then m = f[i + 1] end
    end
    local cost = #m
    if cost > limit then cost = keep end
    if (n > 0 or left < max) and bytes + cost > bytes_left then break end
    bytes = bytes + cost
    n = n + 1
    payloads[n] = m
    if #m > limit then big[#big + 1] = {e[1], string.sub(m, 1, keep), #m} end
  end
  if n > 0 then
    left = left - n
    bytes_left = bytes_left - bytes
    local claim = {'XCLAIM', stream, ARGV[1], ARGV[2], 0}
    for i = 1, n do claim[#claim + 1] = entries[i][1] end
    for _, o in ipairs({'RETRYCOUNT', 1, 'FORCE', 'JUSTID'}) do claim[#claim + 1] = o end
    redis.call(unpack(claim))
    redis.call('XGROUP', 'SETID', stream, ARGV[1], entries[n][1])
    local inline = bytes <= tonumber(ARGV[9])
    local pending, inlined = 0, 0
    if inline then inlined = n - #big else pending = n - #big end
    out[1] = out[1] + 1
    for _, v in ipairs({r.k, r.last, pending, #big, inlined}) do out[#out + 1] = v end
    for _, b in ipairs(big) do
      local reason = 'message too large: ' .. size(b[3]) .. ', limit ' .. size(limit)
      redis.call('XADD', dlq, 'MAXLEN', '~', ARGV[8], '*', 'm', b[2], 'reason', reason, 'at', ARGV[7])
      redis.call('XACK', stream, ARGV[1], b[1])
      redis.call('XDEL', stream, b[1])
      out[#out + 1] = b[1]
      out[#out + 1] = b[2]
      out[#out + 1] = b[3]
    end
    if inline then
      for i = 1, n do
        if #payloads[i] <= limit then
          out[#out + 1] = entries[i][1]
          out[#out + 1] = payloads[i]
        end
      end
    end
  end
end
return out
"#;

/// Renews a consumer's leases on the messages it still holds, and only
/// those: renewing with a bare XCLAIM would take a message back from a
/// worker that legitimately took it over. Returns the ids it lost.
const RENEW_LUA: &str = r#"
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"#;

/// Applies one completion's [`Effects`] (decoded from the JSON built by
/// [`lua_effects`]): records, groups (created once), launched messages, a
/// report to a group (each index counted once; the report that completes
/// the group, or its first failure, sends the join), a unique lock
/// released if still held by the task. Prepended to the scripts that use it.
const EFFECTS_LUA: &str = r#"
local function apply_effects(e)
  for _, r in ipairs(e.records) do
    redis.call('SET', r[1], r[2], 'EX', r[3])
    redis.call('PUBLISH', r[1], r[2])
  end
  for _, g in ipairs(e.groups) do
    if redis.call('HSETNX', g[1], 'n', g[2]) == 1 then
      redis.call('HSET', g[1], 'done', 0, 'stream', g[3], 'join', g[4])
      redis.call('EXPIRE', g[1], g[5])
    end
  end
  for _, m in ipairs(e.launch) do
    if m[3] == '' then
      redis.call('XADD', m[1], '*', 'm', m[2])
    else
      redis.call('ZADD', m[1], m[3], m[2])
    end
  end
  if #e.queues > 0 then
    redis.call('SADD', e.queues_key, unpack(e.queues))
  end
  local r = e.report
  if #r > 0 and redis.call('EXISTS', r[1]) == 1 then
    local fire = false
    if r[4] == '1' then
      if redis.call('HSETNX', r[1], r[2], r[3]) == 1 then
        local done = redis.call('HINCRBY', r[1], 'done', 1)
        fire = done == tonumber(redis.call('HGET', r[1], 'n'))
          and redis.call('HEXISTS', r[1], 'failed') == 0
      end
    else
      fire = redis.call('HSETNX', r[1], 'failed', r[3]) == 1
    end
    if fire then
      redis.call('XADD', redis.call('HGET', r[1], 'stream'), '*', 'm', redis.call('HGET', r[1], 'join'))
    end
  end
  local u = e.release
  if #u > 0 and redis.call('GET', u[1]) == u[2] then
    redis.call('DEL', u[1])
  end
  for _, p in ipairs(e.pushes) do
    redis.call('LPUSH', p[1], p[2])
  end
  if e.events ~= '' then
    redis.call('XADD', e.events_key, 'MAXLEN', '~', e.events_kept, '*', 'e', e.events)
  end
end
"#;

/// Moves Celery messages from kombu's lists onto Celeriac streams (see
/// [`Broker::celery_ingest`]). ARGV: backlog, scan window, the module key
/// prefix, Celery names mapped (JSON array), `[list, stream]` pairs in the
/// order kombu serves them (JSON), the consumer group. Per list it looks
/// at the oldest messages (the tail: kombu pushes left, pops right) in
/// chunks; one of ours at the tail is popped, one behind a message left
/// for Celery is removed by value from the tail side (each message is
/// unique by its delivery tag), so what is left keeps its order. Returns
/// moved, left, full.
const INGEST_LUA: &str = r#"
local target, window, modules = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local named = {}
for _, n in ipairs(cjson.decode(ARGV[4])) do named[n] = true end
local routes, group = cjson.decode(ARGV[5]), ARGV[6]
local known = {}
local function ours(name)
  if named[name] then return true end
  local v = known[name]
  if v == nil then
    local module = string.match(name, '^(.+)%.[^.]+$')
    v = module ~= nil and redis.call('EXISTS', modules .. module) == 1
    known[name] = v
  end
  return v
end
-- Messages already waiting unread on the Celeriac side.
local waiting, seen = 0, {}
for _, r in ipairs(routes) do
  local s = r[2]
  if not seen[s] then
    seen[s] = true
    local n = redis.call('XLEN', s)
    if n > 0 then
      local ok, p = pcall(redis.call, 'XPENDING', s, group)
      if ok then n = n - p[1] end
      waiting = waiting + n
    end
  end
end
local room = target - waiting
if room <= 0 then return {0, 0, 1} end
local moved, left = 0, 0
for _, r in ipairs(routes) do
  local list, stream = r[1], r[2]
  local skip = 0
  while moved < room and skip < window do
    local want = math.min(room - moved, window - skip)
    local chunk = redis.call('LRANGE', list, -(skip + want), -(skip + 1))
    for i = #chunk, 1, -1 do
      local raw = chunk[i]
      local ok, env = pcall(cjson.decode, raw)
      local name = ok and type(env) == 'table' and type(env.headers) == 'table' and env.headers.task
      if type(name) == 'string' and ours(name) then
        if skip == 0 then
          redis.call('RPOP', list)
        else
          redis.call('LREM', list, -1, raw)
        end
        redis.call('XADD', stream, '*', 'm', raw)
        moved = moved + 1
        if moved >= room then break end
      else
        skip = skip + 1
        left = left + 1
      end
    end
    if #chunk < want then break end
  end
end
return {moved, left, 0}
"#;

/// Effects outside a completion (a producer launching a workflow).
const APPLY_LUA: &str = r#"
apply_effects(cjson.decode(ARGV[1]))
return 1
"#;

/// Completions, each on its own: store the result, dispose of the message
/// (retry / dead letter / requeue), ack and delete it; but only while this
/// consumer holds it. Each checks its target key's type before writing, so
/// a refusal leaves it undone; an error in one (caught) does not stop the
/// others. Keys: stream, result, target per completion. Arguments: group,
/// consumer, now, dead-letter cap, then id, mode, result JSON, ttl,
/// payload, due, reason, effects JSON (or '') per completion; effects are
/// applied only with the ack. Returns per completion 1 done,
/// 0 taken over by another consumer, 2 held by nobody (result written), or
/// the error.
const COMPLETE_LUA: &str = r#"
local group, consumer, now, cap = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local events_key, events_kept = ARGV[5], ARGV[6]
-- What this consumer holds, one XPENDING per stream rather than per message.
local mine = {}
local function holds(stream, id)
  if not mine[stream] then
    local set = {}
    local ok, rows = pcall(redis.call, 'XPENDING', stream, group, '-', '+', 1000000, consumer)
    if ok then
      for _, r in ipairs(rows) do set[r[1]] = true end
    end
    mine[stream] = set
  end
  return mine[stream][id]
end
local function one(stream, rkey, target, id, mode, json, ttl, payload, due, reason, effects, events)
  local held = holds(stream, id)
  if not held then
    local ok, p = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
    if ok and #p == 1 then return 0 end
  end
  if held and mode ~= 'ack' then
    local want = 'stream'
    if mode == 'retry' then want = 'zset' end
    local t = redis.call('TYPE', target)['ok']
    if t ~= 'none' and t ~= want then
      error({err = 'WRONGTYPE ' .. target .. ' holds a ' .. t .. ', not a ' .. want})
    end
  end
  if json ~= '' then
    redis.call('SET', rkey, json, 'EX', ttl)
    redis.call('PUBLISH', rkey, json)
  end
  if not held then return 2 end
  if mode == 'retry' then
    redis.call('ZADD', target, due, payload)
  elseif mode == 'dead' then
    redis.call('XADD', target, 'MAXLEN', '~', cap, '*', 'm', payload, 'reason', reason, 'at', now)
  elseif mode == 'requeue' then
    redis.call('XADD', target, '*', 'm', payload)
  end
  if effects ~= '' then
    apply_effects(cjson.decode(effects))
  end
  if events ~= '' then
    redis.call('XADD', events_key, 'MAXLEN', '~', events_kept, '*', 'e', events)
  end
  redis.call('XACK', stream, group, id)
  redis.call('XDEL', stream, id)
  mine[stream][id] = nil
  return 1
end
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local k, a = i * 3, 6 + i * 9
  local ok, r = pcall(one, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], ARGV[a + 1], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8], ARGV[a + 9])
  if ok then
    out[#out + 1] = r
  else
    if type(r) == 'table' then r = r.err end
    out[#out + 1] = redis.error_reply(tostring(r))
  end
end
return out
"#;

/// Rate limits as a virtual schedule (GCRA with no burst): KEYS[1] holds
/// the time the next call of the task may start; a call reserves it and
/// moves it `every` later. A call that must wait keeps its reservation
/// under KEYS[2] (by task id) so that, when it comes back, it goes without
/// reserving again. Redis' clock, so workers' clocks need not agree.
/// Returns the milliseconds to wait.
const RATE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local every = tonumber(ARGV[1])
local held = redis.call('GET', KEYS[2])
if held then
  local at = tonumber(held)
  if at <= now + 2 then
    redis.call('DEL', KEYS[2])
    return 0
  end
  return at - now
end
local next = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(next, now)
redis.call('SET', KEYS[1], start + every, 'PX', start + every - now + 1000)
if start <= now then return 0 end
redis.call('SET', KEYS[2], start, 'PX', start - now + 600000)
return start - now
"#;

/// The beat lease: KEYS[1] holds `holder:n`, n from the counter KEYS[2]
/// (the fencing token). Renews it for its holder, grants it when free,
/// else answers nil.
const LEASE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  if string.match(cur, '^(.*):%d+$') == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return cur
  end
  return false
end
local token = ARGV[1] .. ':' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return token
"#;

/// Fires one periodic run: only under the current lease token, and only
/// if the entry's last run (KEYS[2]) is older; records it and enqueues
/// the message (to the stream KEYS[3], or the delayed set when ARGV[5] is
/// a due time). Returns 1 fired, 0 already fired, -1 fenced.
const FIRE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local last = tonumber(redis.call('GET', KEYS[2]) or '-1')
if last >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then
  if ARGV[5] == '' then
    redis.call('XADD', KEYS[3], '*', 'm', ARGV[3])
  else
    redis.call('ZADD', KEYS[3], ARGV[5], ARGV[3])
  end
  redis.call('SADD', KEYS[4], ARGV[4])
end
return 1
"#;

/// Removes consumers that hold nothing and were idle at least ARGV[2] ms,
/// or the one named ARGV[3] if it holds nothing. Deleting a consumer that
/// holds messages would drop them from the pending list, so never that.
const PRUNE_LUA: &str = r#"
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local removed = 0
for _, c in ipairs(consumers) do
  local name, pending, idle = nil, nil, nil
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1] end
    if c[i] == 'pending' then pending = c[i + 1] end
    if c[i] == 'idle' then idle = c[i + 1] end
  end
  if pending == 0 and (name == ARGV[3] or idle >= tonumber(ARGV[2])) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    removed = removed + 1
  end
end
return removed
"#;

pub struct RedisBroker {
    client: Client,
    /// Multiplexed connection for everything that does not block.
    conn: ConnectionManager,
    /// A second connection for blocking reads, which would otherwise stall
    /// every command queued behind them.
    blocking: Mutex<ConnectionManager>,
    /// Opened on the first wait for a result, replaced if it drops.
    results: Mutex<Option<Arc<ResultChannels>>>,
    /// One connection per kombu list a Celery wait blocks on (see
    /// `celery_wait`), opened on first use.
    celery_waiters: Mutex<Vec<ConnectionManager>>,
    conn_config: ConnectionManagerConfig,
    ingest: Script,
    /// Recently resolved modules (see [`MODULE_TTL`]).
    modules: std::sync::Mutex<HashMap<String, (Instant, ModuleInfo)>>,
    prefix: String,
    url: String,
    promote: Script,
    fetch: Script,
    renew: Script,
    complete: Script,
    apply: Script,
    rate: Script,
    lease: Script,
    fire: Script,
    prune: Script,
    /// The last fetch suggested more messages are waiting.
    backlog: AtomicBool,
    /// How much waiting is worth one priority level (see [`FETCH_LUA`]).
    aging: Duration,
    /// Record events, keeping about this many (`None`: off).
    events_kept: Option<usize>,
    /// A connection of its own for blocking event reads, opened on first use.
    events_reader: Mutex<Option<ConnectionManager>>,
}

impl RedisBroker {
    /// Connect to `url` (`redis://`, `rediss://`, with user and password in
    /// the URL when needed). Fails fast when Redis does not answer; once
    /// connected, dropped connections are re-established with backoff.
    pub async fn connect(url: &str, prefix: &str) -> BrokerResult<Self> {
        // rustls needs a process-wide crypto provider for rediss://. A second
        // install attempt fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url_err = |e: RedisError| BrokerError::Url {
            url: redact(url),
            reason: e.to_string(),
        };
        // A Redis behind a private CA: trust that CA (PEM file) instead of
        // the system roots.
        let client = match std::env::var_os("CELERIAC_REDIS_CA") {
            Some(ca) if url.starts_with("rediss://") => {
                let pem = std::fs::read(&ca).map_err(|e| BrokerError::Url {
                    url: redact(url),
                    reason: format!(
                        "CELERIAC_REDIS_CA {}: {e}",
                        std::path::Path::new(&ca).display()
                    ),
                })?;
                Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(url_err)?
            }
            _ => Client::open(url).map_err(url_err)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            // Back within a second of Redis: a live worker must renew its
            // leases before other workers judge them abandoned.
            .set_number_of_retries(8)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        let blocking = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        Ok(Self {
            client,
            conn,
            blocking: Mutex::new(blocking),
            results: Mutex::new(None),
            celery_waiters: Mutex::new(Vec::new()),
            conn_config: config,
            ingest: Script::new(INGEST_LUA),
            modules: Default::default(),
            prefix: prefix.to_string(),
            url: redact(url),
            promote: Script::new(PROMOTE_LUA),
            fetch: Script::new(FETCH_LUA),
            renew: Script::new(RENEW_LUA),
            complete: Script::new(&format!("{EFFECTS_LUA}{COMPLETE_LUA}")),
            apply: Script::new(&format!("{EFFECTS_LUA}{APPLY_LUA}")),
            rate: Script::new(RATE_LUA),
            lease: Script::new(LEASE_LUA),
            fire: Script::new(FIRE_LUA),
            prune: Script::new(PRUNE_LUA),
            backlog: AtomicBool::new(true),
            aging: crate::BrokerOptions::default().priority_aging,
            events_kept: Some(crate::DEFAULT_EVENTS_KEPT),
            events_reader: Mutex::new(None),
        })
    }

    /// Append `events` to the event stream in `pipe`, a few hundred to an
    /// entry (one append per entry, not per event).
    fn add_events(&self, pipe: &mut redis::Pipeline, events: &[String], kept: usize) {
        for chunk in events.chunks(EVENTS_PER_ENTRY) {
            pipe.cmd("XADD")
                .arg(self.key("events"))
                .arg("MAXLEN")
                .arg("~")
                .arg(kept)
                .arg("*")
                .arg("e")
                .arg(celeriac_protocol::event::batch(chunk))
                .ignore();
        }
    }

    /// See [`crate::BrokerOptions::events`].
    pub fn with_events(mut self, on: bool, kept: usize) -> Self {
        self.events_kept = on.then_some(kept.max(1));
        self
    }

    /// See [`crate::BrokerOptions::priority_aging`].
    pub fn with_priority_aging(mut self, aging: Duration) -> Self {
        self.aging = aging.max(Duration::from_millis(1));
        self
    }

    /// Run the same script once per item in one pipeline (EVALSHA), with
    /// per-item results; loads the script and tries again if Redis lost it
    /// (a restart).
    async fn eval_many(
        &self,
        script: &Script,
        calls: &[redis::Cmd],
    ) -> BrokerResult<Vec<Result<Value, BrokerError>>> {
        eval_on(&mut self.conn(), script, calls).await
    }

    fn group_key(&self, id: &str) -> String {
        format!("{}group:{id}", self.prefix)
    }

    /// [`Effects`] as [`EFFECTS_LUA`] reads them: keys resolved, numbers
    /// as strings (Lua's numbers are doubles).
    fn lua_effects(&self, e: &Effects, with_events: bool) -> String {
        let now = now_ms();
        let mut queues: Vec<&str> = Vec::new();
        let launch: Vec<[String; 3]> = e
            .launch
            .iter()
            .map(|l| {
                let m = &l.message;
                let base = split_level(&m.queue).0;
                if !queues.contains(&base) {
                    queues.push(base);
                }
                match m.due_ms.filter(|d| *d > now) {
                    Some(due) => [self.delayed(&m.queue), m.payload.clone(), due.to_string()],
                    None => [self.stream(&m.queue), m.payload.clone(), String::new()],
                }
            })
            .collect();
        let records = e
            .records
            .iter()
            .map(|r| (self.result_key(&r.task_id), r))
            .chain(
                e.celery_records
                    .iter()
                    .map(|r| (celery_result_key(&e.celery_prefix, &r.task_id), r)),
            );
        let json = serde_json::json!({
            "records": records.map(|(key, r)| {
                (key, &r.json, r.ttl.as_secs().max(1).to_string())
            }).collect::<Vec<_>>(),
            "groups": e.groups.iter().map(|g| {
                (self.group_key(&g.id), g.size.to_string(), self.stream(&g.queue), &g.join, g.ttl.max(1).to_string())
            }).collect::<Vec<_>>(),
            "launch": launch,
            "queues": queues,
            "queues_key": self.key("queues"),
            "report": e.report.as_ref().map(|r| {
                let (field, value, ok) = match &r.outcome {
                    Ok(v) => (format!("r:{}", r.index), v, "1"),
                    Err(f) => ("failed".to_string(), f, "0"),
                };
                vec![self.group_key(&r.group), field, value.clone(), ok.to_string()]
            }).unwrap_or_default(),
            "release": e.release.as_ref().map(|(k, id)| vec![self.unique_key(k), id.clone()]).unwrap_or_default(),
            "pushes": e.celery_sends.iter().map(|m| {
                (kombu_list(&e.celery_prefix, &m.queue, m.priority), &m.envelope)
            }).collect::<Vec<_>>(),
            // One entry for all of them (see `celeriac_protocol::event::batch`).
            "events": if with_events && self.events_kept.is_some() && !e.events.is_empty() {
                celeriac_protocol::event::batch(&e.events)
            } else {
                String::new()
            },
            "events_key": self.key("events"),
            "events_kept": self.events_kept.unwrap_or(1).to_string(),
        });
        json.to_string()
    }

    fn unique_key(&self, key: &str) -> String {
        format!("{}unique:{key}", self.prefix)
    }

    fn workflow_key(&self, root: &str) -> String {
        format!("{}workflow:{root}", self.prefix)
    }

    /// A module's key-value key. Module names hold no `:`, so no key of
    /// one module can name another's.
    fn kv_key(&self, module: &str, key: &str) -> String {
        format!("{}kv:{module}:{key}", self.prefix)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A level's stream: `queue:{q}` for priority 0, `queue:{q}:p` above.
    fn stream(&self, queue: &str) -> String {
        match split_level(queue) {
            (q, 0) => format!("{}queue:{{{q}}}", self.prefix),
            (q, p) => format!("{}queue:{{{q}}}:{p}", self.prefix),
        }
    }

    fn delayed(&self, queue: &str) -> String {
        match split_level(queue) {
            (q, 0) => format!("{}delayed:{{{q}}}", self.prefix),
            (q, p) => format!("{}delayed:{{{q}}}:{p}", self.prefix),
        }
    }

    /// One dead-letter stream per queue, whatever the level.
    fn dlq(&self, queue: &str) -> String {
        format!("{}dlq:{{{}}}", self.prefix, split_level(queue).0)
    }

    fn result_key(&self, id: &str) -> String {
        format!("{}result:{id}", self.prefix)
    }

    async fn result_channels(&self) -> BrokerResult<Arc<ResultChannels>> {
        let mut current = self.results.lock().await;
        match current.as_ref() {
            Some(c) if c.is_alive() => Ok(c.clone()),
            _ => {
                let c = ResultChannels::connect(&self.client).await?;
                *current = Some(c.clone());
                Ok(c)
            }
        }
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, ModuleInfo)>> {
        // A plain cache: nothing a panic could leave half-updated.
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn create_group(&self, queue: &str) -> BrokerResult<()> {
        // From id 0, not `$`: messages submitted before any worker existed
        // must still be delivered.
        let r: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream(queue))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Acks in one MULTI: result, announcement, ack, delete. Per-command
    /// errors are mapped back to their completion.
    async fn complete_fresh<'a>(
        &self,
        batch: impl Iterator<Item = &'a Completion>,
    ) -> BrokerResult<Vec<Result<Completed, BrokerError>>> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("MULTI");
        let mut spans = Vec::new();
        let mut events: Vec<&[String]> = Vec::new();
        for c in batch {
            let stream = self.stream(&c.queue);
            let mut n = 2;
            if let Some(r) = &c.result {
                let key = self.result_key(&r.task_id);
                pipe.set_ex(&key, &r.json, r.ttl.as_secs().max(1));
                pipe.publish(&key, &r.json);
                n += 2;
            }
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(&c.delivery_id);
            pipe.cmd("XDEL").arg(&stream).arg(&c.delivery_id);
            spans.push(n);
            events.push(&c.effects.events);
        }
        // Each task's events as an entry, after the acks they report
        // (their replies come after every span, and are not looked at).
        if let Some(kept) = self.events_kept {
            for e in events {
                self.add_events(&mut pipe, e, kept);
            }
        }
        pipe.cmd("EXEC");
        let mut replies: Vec<RedisResult<Value>> = pipe.query_async(&mut self.conn()).await?;
        let exec = replies.pop().unwrap_or(Ok(Value::Nil));
        let items = match exec {
            Ok(Value::Array(items)) => items,
            // Aborted: a command was refused while queueing (e.g. OOM);
            // that is the cause, for the whole round trip.
            other => {
                return Err(replies
                    .into_iter()
                    .find_map(Result::err)
                    .or_else(|| other.err())
                    .map(BrokerError::from)
                    .unwrap_or_else(|| BrokerError::Corrupt("EXEC answered nothing".into())));
            }
        };
        let mut items = items.into_iter();
        Ok(spans
            .into_iter()
            .map(|n| {
                let mut result = Ok(Completed::Done);
                for v in items.by_ref().take(n) {
                    if let Value::ServerError(e) = v
                        && result.is_ok()
                    {
                        result = Err(BrokerError::Redis(e.into()));
                    }
                }
                result
            })
            .collect())
    }

    /// Completions through [`COMPLETE_LUA`], which checks each is still
    /// held by `consumer`. One script call for the batch: a call per
    /// completion cost a sixth of the worker's throughput (bench/queue).
    async fn complete_checked(
        &self,
        consumer: &str,
        batch: Vec<&Completion>,
    ) -> BrokerResult<Vec<Result<Completed, BrokerError>>> {
        let parts: Vec<CompletionArgs> = batch.iter().map(|c| self.completion(c)).collect();
        let keys: Vec<&str> = parts
            .iter()
            .flat_map(|p| p.keys.iter().map(String::as_str))
            .collect();
        let mut cmd = evalsha(&self.complete, &keys);
        cmd.arg(GROUP)
            .arg(consumer)
            .arg(now_ms())
            .arg(DLQ_CAP)
            .arg(self.key("events"))
            .arg(self.events_kept.unwrap_or(1));
        for p in &parts {
            cmd.arg(p.id)
                .arg(p.mode)
                .arg(p.json)
                .arg(p.ttl)
                .arg(p.payload)
                .arg(p.due)
                .arg(p.reason)
                .arg(&p.effects)
                .arg(&p.events);
        }
        let reply = self
            .eval_many(&self.complete, &[cmd])
            .await?
            .pop()
            .unwrap_or(Ok(Value::Nil))?;
        let Value::Array(items) = reply else {
            return Err(BrokerError::Corrupt(format!(
                "completion script answered {reply:?}"
            )));
        };
        if items.len() != batch.len() {
            return Err(BrokerError::Corrupt(format!(
                "completion script answered {} of {} completions",
                items.len(),
                batch.len()
            )));
        }
        Ok(items
            .into_iter()
            .map(|v| match v {
                Value::Int(1) => Ok(Completed::Done),
                Value::Int(2) => Ok(Completed::Gone),
                Value::ServerError(e) => Err(BrokerError::Redis(e.into())),
                _ => Ok(Completed::TakenOver),
            })
            .collect())
    }

    /// Ready messages within `limits`, through [`FETCH_LUA`] (one call per
    /// queue covering its priority levels, pipelined), then the payloads
    /// of large batches in one plain read per level; all on the fetch
    /// connection. `queues` are levels (see `message::levels`).
    async fn fetch_ready(
        &self,
        queues: &[String],
        consumer: &str,
        limits: FetchLimits,
    ) -> BrokerResult<Vec<Delivery>> {
        let now = now_ms();
        // Levels of one queue side by side, as `levels` lists them.
        let mut groups: Vec<Vec<&String>> = Vec::new();
        for q in queues {
            match groups.last_mut() {
                Some(g) if split_level(g[0]).0 == split_level(q).0 => g.push(q),
                _ => groups.push(vec![q]),
            }
        }
        let calls: Vec<redis::Cmd> = groups
            .iter()
            .map(|levels| {
                let keys: Vec<String> = levels
                    .iter()
                    .flat_map(|q| [self.stream(q), self.dlq(q)])
                    .collect();
                let mut c = evalsha(&self.fetch, &keys);
                c.arg(GROUP)
                    .arg(consumer)
                    .arg(limits.max.max(1))
                    .arg(limits.max_bytes)
                    .arg(limits.max_message_bytes)
                    .arg(OVERSIZE_PREFIX)
                    .arg(now)
                    .arg(DLQ_CAP)
                    .arg(INLINE_BYTES)
                    .arg(celeriac_protocol::clock::millis(self.aging).max(1));
                for q in levels {
                    c.arg(split_level(q).1);
                }
                c
            })
            .collect();
        let mut conn = self.blocking.lock().await;
        let mut out = Vec::new();
        let mut reads = Vec::new();
        let mut missing_group = false;
        for (levels, reply) in groups
            .iter()
            .zip(eval_on(&mut conn, &self.fetch, &calls).await?)
        {
            let items = match reply {
                Ok(Value::Array(items)) => items,
                Ok(_) => continue,
                Err(BrokerError::Redis(e)) if e.code() == Some("NOGROUP") => {
                    missing_group = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut it = items.into_iter();
            let served = it.next().as_ref().and_then(as_u64).unwrap_or(0);
            for _ in 0..served {
                let (Some(k), Some(last), Some(pending), Some(oversized), Some(inline)) = (
                    it.next().as_ref().and_then(as_u64),
                    it.next().as_ref().and_then(as_string),
                    it.next().as_ref().and_then(as_u64),
                    it.next().as_ref().and_then(as_u64),
                    it.next().as_ref().and_then(as_u64),
                ) else {
                    break;
                };
                // Key index 1, 3, 5… → level 0, 1, 2… of this call.
                let Some(q) = levels.get((k as usize).saturating_sub(1) / 2) else {
                    break;
                };
                // Oversized: already dead-lettered by the script; the
                // worker still records the failure.
                for _ in 0..oversized {
                    if let (Some(id), Some(prefix), Some(size)) = (
                        it.next().as_ref().and_then(as_string),
                        it.next().and_then(into_string),
                        it.next().as_ref().and_then(as_u64),
                    ) {
                        let mut d = Delivery::new(q, id, prefix, 1);
                        d.size = usize::try_from(size).unwrap_or(usize::MAX).max(d.size + 1);
                        out.push(d);
                    }
                }
                for _ in 0..inline {
                    if let (Some(id), Some(payload)) = (
                        it.next().as_ref().and_then(as_string),
                        it.next().and_then(into_string),
                    ) {
                        out.push(Delivery::new(q, id, payload, 1));
                    }
                }
                if pending > 0 {
                    reads.push((*q, last, pending));
                }
            }
        }
        if !reads.is_empty() {
            // This consumer's pending entries after `last` are exactly the
            // ones the script just delivered.
            let mut pipe = redis::pipe();
            for (q, last, n) in &reads {
                pipe.cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(*n)
                    .arg("STREAMS")
                    .arg(self.stream(q))
                    .arg(last);
            }
            let replies: Vec<Value> = pipe.query_async(&mut *conn).await?;
            for ((q, _, _), reply) in reads.iter().zip(replies) {
                for (_, entries) in stream_entries(reply) {
                    for (id, payload) in entries {
                        out.push(Delivery::new(q, id, payload.unwrap_or_default(), 1));
                    }
                }
            }
        }
        drop(conn);
        if missing_group {
            // The group vanished: Redis restarted without persistence, or
            // the stream was deleted. Recreate it and read on.
            self.declare(queues).await?;
        }
        Ok(out)
    }

    /// The keys and arguments of one completion (see [`COMPLETE_LUA`]).
    fn completion<'a>(&self, c: &'a Completion) -> CompletionArgs<'a> {
        let stream = self.stream(&c.queue);
        let (mode, target, payload, due, reason): (&str, String, &str, u64, &str) =
            match &c.disposition {
                Disposition::Ack => ("ack", stream.clone(), "", 0, ""),
                Disposition::Retry { payload, due_ms } => {
                    ("retry", self.delayed(&c.queue), payload, *due_ms, "")
                }
                Disposition::DeadLetter { reason, payload } => (
                    "dead",
                    self.dlq(&c.queue),
                    payload.as_deref().unwrap_or(&c.payload),
                    0,
                    reason,
                ),
                Disposition::Requeue => ("requeue", stream.clone(), &c.payload, 0, ""),
            };
        let (result_key, json, ttl) = match &c.result {
            Some(r) => (
                self.result_key(&r.task_id),
                r.json.as_str(),
                r.ttl.as_secs().max(1),
            ),
            None => (self.key("result:-"), "", 1),
        };
        CompletionArgs {
            // Events go apart: most completions carry nothing else, and
            // need no effects decoded.
            effects: if c.effects.only_events() {
                String::new()
            } else {
                self.lua_effects(&c.effects, false)
            },
            events: match self.events_kept {
                Some(_) if !c.effects.events.is_empty() => {
                    celeriac_protocol::event::batch(&c.effects.events)
                }
                _ => String::new(),
            },
            keys: [stream, result_key, target],
            id: &c.delivery_id,
            mode,
            json,
            ttl,
            payload,
            due,
            reason,
        }
    }
}

/// [`RedisBroker::eval_many`] on a given connection.
async fn eval_on(
    conn: &mut ConnectionManager,
    script: &Script,
    calls: &[redis::Cmd],
) -> BrokerResult<Vec<Result<Value, BrokerError>>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for c in calls {
        pipe.add_command(c.clone());
    }
    let mut out: Vec<RedisResult<Value>> = pipe.query_async(&mut *conn).await?;
    let lost: Vec<usize> = (0..out.len())
        .filter(|&i| matches!(&out[i], Err(e) if e.code() == Some("NOSCRIPT")))
        .collect();
    if !lost.is_empty() {
        script.load_async(&mut *conn).await?;
        let mut again = redis::pipe();
        again.ignore_errors();
        for &i in &lost {
            again.add_command(calls[i].clone());
        }
        let retried: Vec<RedisResult<Value>> = again.query_async(&mut *conn).await?;
        for (i, r) in lost.into_iter().zip(retried) {
            out[i] = r;
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.map_err(BrokerError::from))
        .collect())
}

/// What [`COMPLETE_LUA`] takes for one completion.
struct CompletionArgs<'a> {
    /// Stream, result key, disposal target.
    keys: [String; 3],
    id: &'a str,
    mode: &'static str,
    json: &'a str,
    ttl: u64,
    payload: &'a str,
    due: u64,
    reason: &'a str,
    effects: String,
    /// The completion's events as one entry (empty: none).
    events: String,
}

/// EVALSHA of `script` over `keys`; the caller adds the arguments.
fn evalsha<K: redis::ToRedisArgs>(script: &Script, keys: &[K]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

#[async_trait]
impl Broker for RedisBroker {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn put_component(
        &self,
        digest: &Digest,
        bytes: &[u8],
        key_id: &str,
        module: &str,
        signature: &str,
    ) -> BrokerResult<bool> {
        let key = self.key(&format!("component:{digest}"));
        // One MULTI: the bytes never appear without a signature.
        let (new,): (bool,) = redis::pipe()
            .atomic()
            .hset_nx(&key, "bytes", bytes)
            .hset_nx(&key, "uploaded_at", now_ms())
            .ignore()
            // Workers of earlier releases read only this field.
            .hset_nx(&key, "sig", signature)
            .ignore()
            .hset(
                self.key(&format!("component-sigs:{digest}")),
                signature_slot(key_id, module),
                signature,
            )
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(new)
    }

    async fn get_component_signatures(&self, digest: &Digest) -> BrokerResult<Option<Vec<String>>> {
        // A separate key, so that checking signatures never touches (or
        // transfers) the bytes.
        let sigs: Vec<String> = self
            .conn()
            .hvals(self.key(&format!("component-sigs:{digest}")))
            .await?;
        if !sigs.is_empty() {
            return Ok(Some(sigs));
        }
        // Stored by an earlier release: one signature, beside the bytes.
        let legacy: Option<String> = self
            .conn()
            .hget(self.key(&format!("component:{digest}")), "sig")
            .await?;
        Ok(legacy.map(|s| vec![s]))
    }

    async fn get_component_bytes(&self, digest: &Digest) -> BrokerResult<Option<Vec<u8>>> {
        Ok(self
            .conn()
            .hget(self.key(&format!("component:{digest}")), "bytes")
            .await?)
    }

    async fn set_module(&self, info: &ModuleInfo) -> BrokerResult<()> {
        let json = serde_json::to_string(info).map_err(|e| BrokerError::Corrupt(e.to_string()))?;
        let history = self.key(&format!("module-history:{}", info.module));
        let _: () = redis::pipe()
            .atomic()
            .set(self.key(&format!("module:{}", info.module)), json)
            .ignore()
            .sadd(self.key("modules"), &info.module)
            .ignore()
            .lpush(&history, info.digest.to_string())
            .ignore()
            .ltrim(&history, 0, 99)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        self.lock_modules()
            .insert(info.module.clone(), (Instant::now(), info.clone()));
        Ok(())
    }

    async fn get_module(&self, module: &str) -> BrokerResult<Option<ModuleInfo>> {
        if let Some((at, info)) = self.lock_modules().get(module)
            && at.elapsed() < MODULE_TTL
        {
            return Ok(Some(info.clone()));
        }
        let json: Option<String> = self
            .conn()
            .get(self.key(&format!("module:{module}")))
            .await?;
        let info: Option<ModuleInfo> = json
            .map(|j| {
                serde_json::from_str(&j)
                    .map_err(|e| BrokerError::Corrupt(format!("module {module}: {e}")))
            })
            .transpose()?;
        let mut cache = self.lock_modules();
        match &info {
            Some(i) => cache.insert(module.to_string(), (Instant::now(), i.clone())),
            None => cache.remove(module),
        };
        Ok(info)
    }

    async fn list_modules(&self) -> BrokerResult<Vec<ModuleInfo>> {
        let mut names: Vec<String> = self.conn().smembers(self.key("modules")).await?;
        names.sort();
        let mut out = Vec::new();
        for name in names {
            if let Some(info) = self.get_module(&name).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn enqueue(&self, messages: &[Outgoing]) -> BrokerResult<()> {
        self.enqueue_noting(messages, &[]).await
    }

    async fn enqueue_noting(&self, messages: &[Outgoing], events: &[String]) -> BrokerResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        if let Some(kept) = self.events_kept {
            // Events first, on the same connection: Redis runs a pipeline
            // in order, so no reader sees a task received before it was sent.
            self.add_events(&mut pipe, events, kept);
        }
        let mut queues: Vec<&str> = Vec::new();
        for m in messages {
            match m.due_ms.filter(|due| *due > now) {
                // Delayed work waits in Redis, not in a worker's memory.
                Some(due) => {
                    pipe.zadd(self.delayed(&m.queue), &m.payload, due).ignore();
                }
                None => {
                    pipe.cmd("XADD")
                        .arg(self.stream(&m.queue))
                        .arg("*")
                        .arg("m")
                        .arg(&m.payload)
                        .ignore();
                }
            }
            let base = split_level(&m.queue).0;
            if !queues.contains(&base) {
                queues.push(base);
            }
        }
        pipe.sadd(self.key("queues"), queues).ignore();
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn declare(&self, queues: &[String]) -> BrokerResult<()> {
        for q in queues {
            self.create_group(q).await?;
        }
        let mut bases: Vec<&str> = queues.iter().map(|q| split_level(q).0).collect();
        bases.dedup();
        let _: () = self.conn().sadd(self.key("queues"), bases).await?;
        Ok(())
    }

    async fn fetch(
        &self,
        queues: &[String],
        consumer: &str,
        limits: FetchLimits,
        block: Duration,
    ) -> BrokerResult<Vec<Delivery>> {
        // A backlog is read through the script, within the budget; a
        // trickle straight by the blocking read, which saves a round trip
        // per message (bench/compare, latency).
        if self.backlog.load(Ordering::Relaxed) || block.is_zero() {
            let out = self.fetch_ready(queues, consumer, limits).await?;
            // Fewer than asked for: the queue is drained for now.
            self.backlog
                .store(out.len() >= limits.max.max(1), Ordering::Relaxed);
            if !out.is_empty() || block.is_zero() {
                return Ok(out);
            }
        }
        // Nothing ready: wait for the next message. At most two per queue
        // come this way, of a size not known in advance; two means more are
        // probably waiting, read through the script next time.
        let count = BLOCKING_COUNT.min(limits.max.max(1));
        let keys: Vec<String> = queues.iter().map(|q| self.stream(q)).collect();
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&keys);
        for _ in &keys {
            cmd.arg(">");
        }
        let reply: Result<Value, RedisError> = {
            let mut conn = self.blocking.lock().await;
            cmd.query_async(&mut *conn).await
        };
        let reply = match reply {
            Ok(v) => v,
            Err(e) if e.code() == Some("NOGROUP") => {
                self.declare(queues).await?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        let mut busy = false;
        for (key, entries) in stream_entries(reply) {
            let queue = queues
                .iter()
                .zip(&keys)
                .find(|(_, k)| **k == key)
                .map(|(q, _)| q.as_str())
                .unwrap_or_default();
            busy |= entries.len() >= count;
            for (id, payload) in entries {
                out.push(Delivery::bounded(
                    queue,
                    id,
                    payload.unwrap_or_default(),
                    1,
                    limits.max_message_bytes,
                ));
            }
        }
        self.backlog.store(busy, Ordering::Relaxed);
        Ok(out)
    }

    async fn promote_due(&self, queues: &[String], now: u64) -> BrokerResult<usize> {
        // One round trip for every level of every queue.
        let calls: Vec<redis::Cmd> = queues
            .iter()
            .map(|q| {
                let mut c = evalsha(&self.promote, &[self.delayed(q), self.stream(q)]);
                c.arg(now).arg(PROMOTE_BATCH);
                c
            })
            .collect();
        let mut moved = 0;
        for r in self.eval_many(&self.promote, &calls).await? {
            moved += as_u64(&r?).unwrap_or(0) as usize;
        }
        Ok(moved)
    }

    async fn renew(
        &self,
        consumer: &str,
        held: &[(String, String)],
    ) -> BrokerResult<Vec<(String, String)>> {
        let mut by_queue: HashMap<&str, Vec<&str>> = HashMap::new();
        for (q, id) in held {
            by_queue.entry(q).or_default().push(id);
        }
        let queues: Vec<&str> = by_queue.keys().copied().collect();
        let calls: Vec<redis::Cmd> = queues
            .iter()
            .map(|q| {
                let mut c = evalsha(&self.renew, &[self.stream(q)]);
                c.arg(GROUP).arg(consumer).arg(&by_queue[q]);
                c
            })
            .collect();
        let mut lost = Vec::new();
        for (q, reply) in queues
            .iter()
            .zip(self.eval_many(&self.renew, &calls).await?)
        {
            if let Value::Array(ids) = reply? {
                lost.extend(
                    ids.iter()
                        .filter_map(as_string)
                        .map(|id| (q.to_string(), id)),
                );
            }
        }
        Ok(lost)
    }

    async fn pending(
        &self,
        queue: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> BrokerResult<Vec<Pending>> {
        let reply: Result<Value, RedisError> = redis::cmd("XPENDING")
            .arg(self.stream(queue))
            .arg(GROUP)
            .arg("IDLE")
            .arg(min_idle.as_millis() as u64)
            .arg("-")
            .arg("+")
            .arg(max.max(1))
            .query_async(&mut self.conn())
            .await;
        let rows = match reply {
            Ok(Value::Array(rows)) => rows,
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // [id, consumer, idle ms, times delivered]
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let Value::Array(f) = row else { return None };
                Some(Pending {
                    id: f.first().and_then(as_string)?,
                    consumer: f.get(1).and_then(as_string)?,
                    idle_ms: f.get(2).and_then(as_u64)?,
                    deliveries: f.get(3).and_then(as_u64)?,
                })
            })
            .filter(|p| p.consumer != consumer)
            .collect())
    }

    async fn claim(
        &self,
        queue: &str,
        consumer: &str,
        claims: &[Claim],
        max_message_bytes: usize,
    ) -> BrokerResult<Vec<Delivery>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let stream = self.stream(queue);
        // One XCLAIM per message, each with its own min-idle: the claim
        // succeeds only if nobody renewed the lease since it was judged
        // abandoned.
        let mut pipe = redis::pipe();
        for c in claims {
            pipe.cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(consumer)
                .arg(c.min_idle_ms)
                .arg(&c.id);
        }
        let replies: Vec<Value> = pipe.query_async(&mut self.conn()).await?;
        let mut out = Vec::new();
        let mut ghosts = Vec::new();
        for (claim, reply) in claims.iter().zip(replies) {
            for (id, payload) in entries_of(reply) {
                match payload {
                    // Claimed, so delivered once more than when it was seen.
                    Some(payload) => out.push(Delivery::bounded(
                        queue,
                        id,
                        payload,
                        claim.deliveries + 1,
                        max_message_bytes,
                    )),
                    None => ghosts.push(id),
                }
            }
        }
        if !ghosts.is_empty() {
            // Entries deleted while pending: nothing to run, just clear them.
            let _: () = redis::cmd("XACK")
                .arg(&stream)
                .arg(GROUP)
                .arg(ghosts)
                .query_async(&mut self.conn())
                .await?;
        }
        Ok(out)
    }

    async fn complete(
        &self,
        consumer: &str,
        batch: &[Completion],
    ) -> BrokerResult<Vec<Result<Completed, BrokerError>>> {
        // Acks whose lease the worker confirmed recently need no ownership
        // check: a plain MULTI, as cheap as it gets. The rest go through the
        // script, which checks.
        let (fresh, checked): (Vec<usize>, Vec<usize>) = (0..batch.len()).partition(|&i| {
            batch[i].lease_fresh
                && matches!(batch[i].disposition, Disposition::Ack)
                && batch[i].effects.only_events()
        });
        let mut out: Vec<Option<Result<Completed, BrokerError>>> =
            (0..batch.len()).map(|_| None).collect();
        if !fresh.is_empty() {
            let done = self
                .complete_fresh(fresh.iter().map(|&i| &batch[i]))
                .await?;
            for (i, r) in fresh.into_iter().zip(done) {
                out[i] = Some(r);
            }
        }
        if !checked.is_empty() {
            let done = self
                .complete_checked(consumer, checked.iter().map(|&i| &batch[i]).collect())
                .await?;
            for (i, r) in checked.into_iter().zip(done) {
                out[i] = Some(r);
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or(Ok(Completed::Done)))
            .collect())
    }

    async fn prune_consumers(
        &self,
        queue: &str,
        min_idle: Duration,
        consumer: Option<&str>,
    ) -> BrokerResult<u64> {
        let n: u64 = self
            .prune
            .key(self.stream(queue))
            .arg(GROUP)
            .arg(min_idle.as_millis() as u64)
            .arg(consumer.unwrap_or(""))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(n)
    }

    async fn ping(&self) -> BrokerResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn set_result(&self, write: &ResultWrite) -> BrokerResult<()> {
        let key = self.result_key(&write.task_id);
        let _: () = redis::pipe()
            .set_ex(&key, &write.json, write.ttl.as_secs().max(1))
            .ignore()
            .publish(&key, &write.json)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn get_result(&self, task_id: &str) -> BrokerResult<Option<String>> {
        Ok(self.conn().get(self.result_key(task_id)).await?)
    }

    async fn apply(&self, effects: &Effects) -> BrokerResult<()> {
        if effects.is_empty() {
            return Ok(());
        }
        let mut cmd = evalsha(&self.apply, &[] as &[&str]);
        cmd.arg(self.lua_effects(effects, true));
        self.eval_many(&self.apply, &[cmd])
            .await?
            .pop()
            .unwrap_or(Ok(Value::Nil))?;
        Ok(())
    }

    async fn group(&self, id: &str) -> BrokerResult<Option<GroupState>> {
        let fields: HashMap<String, String> = self.conn().hgetall(self.group_key(id)).await?;
        let Some(size) = fields.get("n").and_then(|n| n.parse::<u32>().ok()) else {
            return Ok(None);
        };
        let mut results = vec![None; size as usize];
        for (k, v) in &fields {
            if let Some(i) = k.strip_prefix("r:").and_then(|i| i.parse::<usize>().ok())
                && i < results.len()
            {
                results[i] = Some(v.clone());
            }
        }
        Ok(Some(GroupState {
            size,
            results,
            failed: fields.get("failed").cloned(),
        }))
    }

    async fn put_workflow(&self, root_id: &str, json: &str, ttl: Duration) -> BrokerResult<()> {
        let _: () = self
            .conn()
            .set_ex(self.workflow_key(root_id), json, ttl.as_secs().max(1))
            .await?;
        Ok(())
    }

    async fn get_workflow(&self, root_id: &str) -> BrokerResult<Option<String>> {
        Ok(self.conn().get(self.workflow_key(root_id)).await?)
    }

    async fn claim_unique(
        &self,
        key: &str,
        task_id: &str,
        ttl: Duration,
    ) -> BrokerResult<Option<String>> {
        let key = self.unique_key(key);
        let (set, holder): (Option<String>, Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(task_id)
            .arg("NX")
            .arg("PX")
            .arg(celeriac_protocol::clock::millis(ttl).max(1))
            .get(&key)
            .query_async(&mut self.conn())
            .await?;
        Ok(match set {
            Some(_) => None,
            None => Some(holder.unwrap_or_default()),
        })
    }

    async fn beat_lease(&self, holder: &str, ttl: Duration) -> BrokerResult<Option<String>> {
        Ok(self
            .lease
            .key(self.key("beat:lease"))
            .key(self.key("beat:epoch"))
            .arg(holder)
            .arg(celeriac_protocol::clock::millis(ttl).max(1))
            .invoke_async(&mut self.conn())
            .await?)
    }

    async fn beat_last(&self, entry: &str) -> BrokerResult<Option<u64>> {
        Ok(self
            .conn()
            .get(self.key(&format!("beat:last:{entry}")))
            .await?)
    }

    async fn beat_start(&self, entry: &str, now: u64) -> BrokerResult<u64> {
        let key = self.key(&format!("beat:last:{entry}"));
        let (last,): (u64,) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(now)
            .arg("NX")
            .ignore()
            .get(&key)
            .query_async(&mut self.conn())
            .await?;
        Ok(last)
    }

    async fn beat_fire(
        &self,
        token: &str,
        entry: &str,
        slot: u64,
        message: Option<&Outgoing>,
    ) -> BrokerResult<BeatFire> {
        let now = now_ms();
        let (target, payload, queue, due) = match message {
            Some(m) => match m.due_ms.filter(|d| *d > now) {
                Some(due) => (
                    self.delayed(&m.queue),
                    m.payload.as_str(),
                    split_level(&m.queue).0,
                    due.to_string(),
                ),
                None => (
                    self.stream(&m.queue),
                    m.payload.as_str(),
                    split_level(&m.queue).0,
                    String::new(),
                ),
            },
            None => (self.key("beat:none"), "", "", String::new()),
        };
        let r: i64 = self
            .fire
            .key(self.key("beat:lease"))
            .key(self.key(&format!("beat:last:{entry}")))
            .key(target)
            .key(self.key("queues"))
            .arg(token)
            .arg(slot)
            .arg(payload)
            .arg(queue)
            .arg(due)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match r {
            1 => BeatFire::Fired,
            0 => BeatFire::AlreadyFired,
            _ => BeatFire::Fenced,
        })
    }

    async fn rate_acquire(
        &self,
        task: &str,
        task_id: &str,
        every: Duration,
    ) -> BrokerResult<Duration> {
        let wait: u64 = self
            .rate
            .key(self.key(&format!("rate:{task}")))
            .key(self.key(&format!("rate-slot:{task_id}")))
            .arg(celeriac_protocol::clock::millis(every).max(1))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(Duration::from_millis(wait))
    }

    async fn revoke(&self, ids: &[String], ttl: Duration, terminate: bool) -> BrokerResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let until = now.saturating_add(celeriac_protocol::clock::millis(ttl));
        let key = self.key("revoked");
        let note = serde_json::to_string(&Revocation {
            ids: ids.to_vec(),
            terminate,
        })
        .map_err(|e| BrokerError::Corrupt(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for id in ids {
            pipe.zadd(&key, id, until).ignore();
        }
        let _: () = pipe
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .publish(&key, note)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn revoked(&self) -> BrokerResult<Vec<String>> {
        Ok(redis::cmd("ZRANGEBYSCORE")
            .arg(self.key("revoked"))
            .arg(now_ms())
            .arg("+inf")
            .query_async(&mut self.conn())
            .await?)
    }

    async fn watch_revokes(&self) -> BrokerResult<RevokeWatch> {
        let mut sub = self
            .result_channels()
            .await?
            .subscribe(&self.key("revoked"))
            .await?;
        let rx = std::mem::replace(&mut sub.rx, tokio::sync::mpsc::unbounded_channel().1);
        Ok(RevokeWatch::new(rx, Box::new(sub)))
    }

    async fn kv_get(&self, module: &str, key: &str) -> BrokerResult<Option<Vec<u8>>> {
        Ok(self.conn().get(self.kv_key(module, key)).await?)
    }

    async fn kv_set(
        &self,
        module: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> BrokerResult<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.kv_key(module, key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX")
                .arg(celeriac_protocol::clock::millis(ttl).max(1));
        }
        if only_if_absent {
            cmd.arg("NX");
        }
        // SET answers OK, or nil when NX found the key taken.
        let reply: Option<String> = cmd.query_async(&mut self.conn()).await?;
        Ok(reply.is_some())
    }

    async fn kv_delete(&self, module: &str, key: &str) -> BrokerResult<bool> {
        let removed: u64 = self.conn().del(self.kv_key(module, key)).await?;
        Ok(removed > 0)
    }

    async fn kv_increment(&self, module: &str, key: &str, delta: i64) -> BrokerResult<Option<i64>> {
        match self
            .conn()
            .incr::<_, _, i64>(self.kv_key(module, key), delta)
            .await
        {
            Ok(n) => Ok(Some(n)),
            // "value is not an integer or out of range" / "increment or
            // decrement would overflow"
            Err(e) if e.code() == Some("ERR") => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn wait_result(&self, task_id: &str, timeout: Duration) -> BrokerResult<Option<String>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let key = self.result_key(task_id);
        let mut latest = None;
        let mut reconnect = crate::retry::Reconnect::new();
        // Subscribe first, then read: a result written in between is seen
        // by one or the other. Redis going away (a restart) is waited out
        // until the deadline, resubscribing when it is back.
        while tokio::time::Instant::now() < deadline {
            let attempt = async {
                let mut sub = self
                    .result_channels()
                    .await?
                    .subscribe(&key)
                    .await
                    .map_err(BrokerError::from)?;
                let current: Option<String> = self.conn().get(&key).await?;
                if let Some(json) = current {
                    if state_of(&json).is_some_and(|s| s.is_final()) {
                        return Ok::<_, BrokerError>(Some(json));
                    }
                    latest = Some(json);
                }
                // Connected: a later failure starts its backoff afresh.
                reconnect.succeeded();
                while let Some(json) = sub.rx.recv().await {
                    let done = state_of(&json).is_some_and(|s| s.is_final());
                    latest = Some(json);
                    if done {
                        return Ok(latest.clone());
                    }
                }
                // Connection lost: subscribe again on a new one.
                Ok(None)
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(Some(done))) => return Ok(Some(done)),
                Ok(Ok(None)) => {}
                Ok(Err(e)) if e.is_transient() => {
                    let wait = reconnect.failed();
                    tracing::debug!(error = %e, retry_in = ?wait, "waiting for a result: broker unreachable");
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(wait).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        match self.get_result(task_id).await {
            Ok(r) => Ok(r.or(latest)),
            Err(e) if latest.is_some() && e.is_transient() => Ok(latest),
            Err(e) => Err(e),
        }
    }

    async fn dlq_list(&self, queue: &str, limit: usize) -> BrokerResult<Vec<DeadLetter>> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.dlq(queue))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut self.conn())
            .await?;
        let mut out = Vec::new();
        for (id, fields) in entries_with_fields(reply) {
            let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
            out.push(DeadLetter {
                id,
                queue: queue.to_string(),
                reason: get("reason").unwrap_or_default(),
                payload: get("m").unwrap_or_default(),
                at: get("at").and_then(|a| a.parse().ok()).unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn dlq_requeue(&self, queue: &str, id: &str) -> BrokerResult<bool> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.dlq(queue))
            .arg(id)
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        let Some((_, fields)) = entries_with_fields(reply).into_iter().next() else {
            return Ok(false);
        };
        let payload = fields
            .into_iter()
            .find(|(f, _)| f == "m")
            .map(|(_, v)| v)
            .unwrap_or_default();
        let mut pipe = redis::pipe();
        // The old FAILURE record would answer anyone waiting on the rerun.
        if let Some(task_id) = celeriac_protocol::message::salvage_id(&payload) {
            pipe.del(self.result_key(&task_id)).ignore();
        }
        let _: () = pipe
            .atomic()
            .cmd("XADD")
            .arg(self.stream(&super::requeue_level(queue, &payload)))
            .arg("*")
            .arg("m")
            .arg(super::reset_retries(&payload))
            .ignore()
            .cmd("XDEL")
            .arg(self.dlq(queue))
            .arg(id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(true)
    }

    async fn dlq_purge(&self, queue: &str) -> BrokerResult<u64> {
        let key = self.dlq(queue);
        let (n, _): (u64, ()) = redis::pipe()
            .atomic()
            .xlen(&key)
            .del(&key)
            .query_async(&mut self.conn())
            .await?;
        Ok(n)
    }

    async fn queues(&self) -> BrokerResult<Vec<String>> {
        let mut q: Vec<String> = self.conn().smembers(self.key("queues")).await?;
        q.sort();
        Ok(q)
    }

    async fn queue_stats(&self, queue: &str) -> BrokerResult<QueueStats> {
        // Every priority level of the queue, summed.
        let levels = levels(split_level(queue).0);
        let mut pipe = redis::pipe();
        for l in &levels {
            pipe.xlen(self.stream(l)).zcard(self.delayed(l));
        }
        pipe.xlen(self.dlq(queue));
        let counts: Vec<u64> = pipe.query_async(&mut self.conn()).await?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for l in &levels {
            pipe.cmd("XPENDING").arg(self.stream(l)).arg(GROUP);
        }
        let pending: Vec<RedisResult<Value>> = pipe.query_async(&mut self.conn()).await?;
        let in_flight: u64 = pending
            .iter()
            .map(|p| match p {
                Ok(Value::Array(v)) => v.first().and_then(as_u64).unwrap_or(0),
                _ => 0,
            })
            .sum();
        let len: u64 = counts.iter().step_by(2).take(levels.len()).sum();
        let delayed: u64 = counts.iter().skip(1).step_by(2).take(levels.len()).sum();
        Ok(QueueStats {
            queue: split_level(queue).0.to_string(),
            ready: len.saturating_sub(in_flight),
            delayed,
            in_flight,
            dead: counts.last().copied().unwrap_or(0),
        })
    }

    fn events_enabled(&self) -> bool {
        self.events_kept.is_some()
    }

    async fn emit(&self, events: &[String]) -> BrokerResult<()> {
        let Some(kept) = self.events_kept else {
            return Ok(());
        };
        if events.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        self.add_events(&mut pipe, events, kept);
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    async fn read_events(
        &self,
        after: Option<&str>,
        max: usize,
        block: Duration,
    ) -> BrokerResult<Vec<(String, String)>> {
        let mut guard = self.events_reader.lock().await;
        if guard.is_none() {
            let c = self
                .client
                .get_connection_manager_with_config(self.conn_config.clone())
                .await?;
            *guard = Some(c);
        }
        let Some(conn) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(max.max(1));
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        let reply: Value = cmd
            .arg("STREAMS")
            .arg(self.key("events"))
            .arg(after.unwrap_or("$"))
            .query_async(conn)
            .await?;
        Ok(stream_entries_with_fields(reply)
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .filter_map(|(id, fields)| {
                let json = fields.into_iter().find(|(k, _)| k == "e")?.1;
                Some((id, json))
            })
            .collect())
    }

    async fn recent_events(&self, max: usize) -> BrokerResult<Vec<(String, String)>> {
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(self.key("events"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(max.max(1))
            .query_async(&mut self.conn())
            .await?;
        let mut out: Vec<(String, String)> = entries_with_fields(reply)
            .into_iter()
            .filter_map(|(id, fields)| {
                let json = fields.into_iter().find(|(k, _)| k == "e")?.1;
                Some((id, json))
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> BrokerResult<()> {
        let json =
            serde_json::to_string(worker).map_err(|e| BrokerError::Corrupt(e.to_string()))?;
        let _: () = redis::pipe()
            .set_ex(
                self.key(&format!("worker:{}", worker.id)),
                json,
                ttl.as_secs().max(1),
            )
            .ignore()
            .sadd(self.key("workers"), &worker.id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn forget_worker(&self, worker_id: &str) -> BrokerResult<()> {
        let _: () = redis::pipe()
            .del(self.key(&format!("worker:{worker_id}")))
            .ignore()
            .srem(self.key("workers"), worker_id)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn celery_ingest(
        &self,
        key_prefix: &str,
        queues: &[String],
        names: &[String],
        backlog: usize,
    ) -> BrokerResult<Ingested> {
        // kombu serves a queue's priorities 0, 3, 6, 9 in that order; they
        // land on the Celeriac levels 9, 6, 3, 0 (higher first there).
        let routes: Vec<(String, String)> = queues
            .iter()
            .flat_map(|q| {
                KOMBU_STEPS.iter().map(move |step| {
                    let level = celeriac_protocol::message::level_queue(q, 9 - step);
                    (kombu_list(key_prefix, q, *step), self.stream(&level))
                })
            })
            .collect();
        let cmd = evalsha(&self.ingest, &[] as &[&str])
            .arg(backlog)
            .arg(INGEST_WINDOW)
            .arg(self.key("module:"))
            .arg(serde_json::to_string(names).unwrap_or_else(|_| "[]".into()))
            .arg(serde_json::to_string(&routes).unwrap_or_else(|_| "[]".into()))
            .arg(GROUP)
            .to_owned();
        let reply = self
            .eval_many(&self.ingest, &[cmd])
            .await?
            .pop()
            .unwrap_or_else(|| Err(BrokerError::Corrupt("no reply from ingest".into())))?;
        let n: Vec<u64> = match &reply {
            Value::Array(items) => items.iter().map(|v| as_u64(v).unwrap_or(0)).collect(),
            _ => Vec::new(),
        };
        let at = |i: usize| n.get(i).copied().unwrap_or(0);
        Ok(Ingested {
            moved: at(0) as usize,
            left: at(1) as usize,
            full: at(2) == 1,
        })
    }

    async fn celery_wait(
        &self,
        key_prefix: &str,
        queues: &[String],
        timeout: Duration,
    ) -> BrokerResult<()> {
        let keys: Vec<String> = queues
            .iter()
            .flat_map(|q| {
                KOMBU_STEPS
                    .iter()
                    .map(move |s| kombu_list(key_prefix, q, *s))
            })
            .collect();
        let conns = {
            let mut pool = self.celery_waiters.lock().await;
            while pool.len() < keys.len() {
                let c = self
                    .client
                    .get_connection_manager_with_config(self.conn_config.clone())
                    .await?;
                pool.push(c);
            }
            pool[..keys.len()].to_vec()
        };
        // Blocking on each list (a blocking command holds its connection):
        // BLMOVE from a list's tail to its tail moves nothing, so no message
        // is ever taken, or reordered, by waiting.
        let secs = timeout.as_secs_f64().max(0.01);
        let waits: Vec<_> = keys
            .into_iter()
            .zip(conns)
            .map(|(key, mut conn)| {
                Box::pin(async move {
                    redis::cmd("BLMOVE")
                        .arg(&key)
                        .arg(&key)
                        .arg("RIGHT")
                        .arg("RIGHT")
                        .arg(secs)
                        .query_async::<Option<Vec<u8>>>(&mut conn)
                        .await
                })
            })
            .collect();
        let mut waits = waits;
        while !waits.is_empty() {
            let (first, _, rest) = futures_util::future::select_all(waits).await;
            match first {
                Ok(None) => waits = rest,
                Ok(Some(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn workers(&self) -> BrokerResult<Vec<WorkerInfo>> {
        let ids: Vec<String> = self.conn().smembers(self.key("workers")).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key(&format!("worker:{id}")))
            .collect();
        let beats: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, beat) in ids.iter().zip(beats) {
            match beat.and_then(|b| serde_json::from_str::<WorkerInfo>(&b).ok()) {
                Some(w) => out.push(w),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            // Heartbeats expired: those workers are gone.
            let _: () = self.conn().srem(self.key("workers"), gone).await?;
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// kombu's priority steps: a queue has one list per step.
const KOMBU_STEPS: [u8; 4] = [0, 3, 6, 9];
/// Messages of a kombu list one ingest looks at past those it leaves.
const INGEST_WINDOW: usize = 256;

/// kombu's list for `queue` at `priority` (rounded down to its step, as
/// kombu's Redis transport does), under kombu's `global_keyprefix`.
fn kombu_list(prefix: &str, queue: &str, priority: u8) -> String {
    let step = KOMBU_STEPS
        .iter()
        .rev()
        .find(|s| **s <= priority)
        .copied()
        .unwrap_or(0);
    match step {
        0 => format!("{prefix}{queue}"),
        s => format!("{prefix}{queue}\x06\x16{s}"),
    }
}

/// Where Celery's Redis result backend keeps a task's record: under its
/// `global_keyprefix`, to which Celery adds `_` unless it ends in one of
/// `:_-.`.
fn celery_result_key(prefix: &str, id: &str) -> String {
    let sep = match prefix.chars().last() {
        Some(c) if !":_-.".contains(c) => "_",
        _ => "",
    };
    format!("{prefix}{sep}celery-task-meta-{id}")
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        // Lossy: a payload that is not UTF-8 must still reach the worker
        // (and be dead-lettered as malformed), not vanish.
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// As [`as_string`], taking the bytes rather than copying them: message
/// payloads are up to megabytes, and the lossy path's byte-by-byte scan
/// was the worker's top symbol with 64 KiB payloads (bench/compare).
fn into_string(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(
            String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        ),
        other => as_string(&other),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other).and_then(|s| s.parse().ok()),
    }
}

/// Stream entries as (id, field/value pairs); `None` fields for entries
/// that were deleted.
fn entries_with_fields(v: Value) -> Vec<(String, Vec<(String, String)>)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let mut parts = parts.into_iter();
        let Some(id) = parts.next().as_ref().and_then(as_string) else {
            continue;
        };
        let mut fields = Vec::new();
        if let Some(Value::Array(kv)) = parts.next() {
            let mut kv = kv.into_iter();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                if let (Some(k), Some(v)) = (as_string(&k), into_string(v)) {
                    fields.push((k, v));
                }
            }
        }
        out.push((id, fields));
    }
    out
}

/// A stream entry's id and its `m` payload, if the entry still exists.
type Entry = (String, Option<String>);

/// Stream entries as (id, the `m` payload if the entry still exists).
fn entries_of(v: Value) -> Vec<Entry> {
    entries_with_fields(v)
        .into_iter()
        .map(|(id, fields)| {
            let payload = fields.into_iter().find(|(k, _)| k == "m").map(|(_, v)| v);
            (id, payload)
        })
        .collect()
}

/// XREADGROUP reply: per stream key, its entries. RESP2 gives an array of
/// [key, entries]; RESP3 a map.
fn stream_entries(v: Value) -> Vec<(String, Vec<Entry>)> {
    stream_entries_with_fields(v)
        .into_iter()
        .map(|(key, entries)| {
            let entries = entries
                .into_iter()
                .map(|(id, fields)| {
                    let payload = fields.into_iter().find(|(k, _)| k == "m").map(|(_, v)| v);
                    (id, payload)
                })
                .collect();
            (key, entries)
        })
        .collect()
}

/// XREAD / XREADGROUP reply with every field of each entry.
type StreamFields = Vec<(String, Vec<(String, Vec<(String, String)>)>)>;

fn stream_entries_with_fields(v: Value) -> StreamFields {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop()?;
                    let key = kv.pop()?;
                    Some((key, entries))
                }
                _ => None,
            })
            .collect(),
        Value::Map(kv) => kv,
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(k, entries)| Some((as_string(&k)?, entries_with_fields(entries))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{celery_result_key, kombu_list};

    #[test]
    fn celerys_keys_are_named_as_celery_names_them() {
        assert_eq!(kombu_list("", "celery", 0), "celery");
        assert_eq!(kombu_list("", "celery", 2), "celery");
        assert_eq!(kombu_list("", "celery", 4), "celery\x06\x163");
        assert_eq!(kombu_list("", "celery", 8), "celery\x06\x166");
        assert_eq!(kombu_list("app:", "celery", 9), "app:celery\x06\x169");
        assert_eq!(celery_result_key("", "t"), "celery-task-meta-t");
        assert_eq!(celery_result_key("app:", "t"), "app:celery-task-meta-t");
        assert_eq!(celery_result_key("app", "t"), "app_celery-task-meta-t");
    }
}
