import { createHash } from 'node:crypto';
import { KEY_PREFIX } from './leases.ts';

/**
 * The directory in Redis (cluster mode): what crosses users, shared by every node. Each method is
 * one command or one Lua script, so it is atomic as the SQLite store's transactions are: a script
 * checks everything it may refuse before it writes anything (Redis does not undo a script's writes
 * when it fails half-way).
 *
 * Keys, all under `plexichat:dir:` (ids are snowflakes, names lower-cased, token digests in hex):
 *
 *   version                   the layout of these keys: '2' since rows hold cards (absent: an
 *                             older version's, whose rows `upgradeLayout` marks pending)
 *   users                     set of every indexed user id (count, list, rebuild)
 *   user:<id>                 hash username, username_lower, email_lower, created_at: the index
 *                             row; and the card: email (as spelt), avatar_hash ('': none), badges
 *                             (a JSON array), allow_dms_from (absent in an older version's row)
 *   username:<name>           the id holding that username: uniqueness, lookup
 *   email:<address>           the id holding that email: uniqueness, lookup
 *   pending                   set of ids whose row a change wrote ahead of its user file
 *   epoch:<id>                the credential epoch (absent: 0)
 *   session:<sid>             hash user_id, token, created_at, last_used_at, device_name, user_agent
 *                             (absent: null)
 *   session-token:<digest>    the session id of a token
 *   user-sessions:<id>        set of the user's session ids
 *   sessions-by-use           sorted set: session id by last_used_at (the idle sweep)
 *   sessions-by-creation      sorted set: session id by created_at (the lifetime sweep)
 *   rel:<id>                  hash other id -> "<type> <changed id>": the user's own rows
 *   rel-about:<id>            set of the users having a row about this one (a block is one-sided)
 *   dm-pair:<low>:<high>      the channel id of a pair (low < high as strings): one per pair
 *   dm:<channel>              hash user_low, user_high, created_at, last_message_id (absent: null)
 *   user-dms:<id>             hash other id -> channel id: the user's DM channels
 *   mail:<digest>             hash user_id, purpose, email_lower, created_at, expires_at
 *   user-mail:<id>            set of the user's token digests
 *   mail-by-expiry            sorted set: token digest by expires_at (swept on insert)
 *
 * The per-user sets are what lets deleting a user (`deleteUser`, `replaceUsers`) find everything of
 * theirs, as ON DELETE CASCADE does in SQLite; writes that would name a user without an index row
 * (a relationship, a DM channel, a mail token, a name claim, a credential change) are refused as the
 * foreign keys refuse them there.
 * Expiry is not left to Redis: every check compares with the `now` it is given.
 *
 * Scripts reach keys they compute, not only those they are given: the directory needs one Redis (a
 * primary, with replicas if wanted), not a Redis Cluster, like the leases.
 */
export const DIR = `${KEY_PREFIX}dir:`;

/** Functions every script may use (Lua, prepended to each). */
const LIB = `
local P = '${DIR}'

local function indexed(uid)
  return redis.call('EXISTS', P .. 'user:' .. uid) == 1
end

local function name_free(kind, lower, uid)
  local holder = redis.call('GET', P .. kind .. ':' .. lower)
  return (not holder) or holder == uid
end

local function release_names(uid)
  local row = redis.call('HMGET', P .. 'user:' .. uid, 'username_lower', 'email_lower')
  if row[1] and redis.call('GET', P .. 'username:' .. row[1]) == uid then redis.call('DEL', P .. 'username:' .. row[1]) end
  if row[2] and redis.call('GET', P .. 'email:' .. row[2]) == uid then redis.call('DEL', P .. 'email:' .. row[2]) end
end

-- The nine values of an entry (redis-directory.ts, entryArgs) from ARGV[i]: id, username, username_lower,
-- email_lower, created_at, then the card: email, avatar_hash ('': none), badges, allow_dms_from.
local function write_row(i)
  local uid, username_lower, email_lower = ARGV[i], ARGV[i + 2], ARGV[i + 3]
  redis.call('HSET', P .. 'user:' .. uid, 'username', ARGV[i + 1], 'username_lower', username_lower, 'email_lower', email_lower,
    'created_at', ARGV[i + 4], 'email', ARGV[i + 5], 'avatar_hash', ARGV[i + 6], 'badges', ARGV[i + 7], 'allow_dms_from', ARGV[i + 8])
  redis.call('SET', P .. 'username:' .. username_lower, uid)
  redis.call('SET', P .. 'email:' .. email_lower, uid)
  redis.call('SADD', P .. 'users', uid)
end

local function session_free(sid, token)
  return redis.call('EXISTS', P .. 'session:' .. sid, P .. 'session-token:' .. token) == 0
end

-- sid, token, uid, now, has_agent ('1'/'0'), agent, device
local function start_session(sid, token, uid, now, has_agent, agent, device)
  local s = P .. 'session:' .. sid
  redis.call('HSET', s, 'user_id', uid, 'token', token, 'created_at', now, 'last_used_at', now, 'device_name', device)
  if has_agent == '1' then redis.call('HSET', s, 'user_agent', agent) end
  redis.call('SET', P .. 'session-token:' .. token, sid)
  redis.call('SADD', P .. 'user-sessions:' .. uid, sid)
  redis.call('ZADD', P .. 'sessions-by-use', now, sid)
  redis.call('ZADD', P .. 'sessions-by-creation', now, sid)
end

local function touch_session(sid, now)
  local s = P .. 'session:' .. sid
  if redis.call('EXISTS', s) == 0 then return end
  redis.call('HSET', s, 'last_used_at', now)
  redis.call('ZADD', P .. 'sessions-by-use', now, sid)
end

local function end_session(sid)
  local s = P .. 'session:' .. sid
  local row = redis.call('HMGET', s, 'user_id', 'token')
  if not row[1] then return false end
  redis.call('DEL', s, P .. 'session-token:' .. row[2])
  redis.call('SREM', P .. 'user-sessions:' .. row[1], sid)
  redis.call('ZREM', P .. 'sessions-by-use', sid)
  redis.call('ZREM', P .. 'sessions-by-creation', sid)
  return true
end

-- Every session of the user but keep (nil: all); returns their ids.
local function end_sessions_of(uid, keep)
  local ended = {}
  for _, sid in ipairs(redis.call('SMEMBERS', P .. 'user-sessions:' .. uid)) do
    if sid ~= keep then
      end_session(sid)
      ended[#ended + 1] = sid
    end
  end
  return ended
end


local function drop_mail_token(digest)
  local m = P .. 'mail:' .. digest
  local uid = redis.call('HGET', m, 'user_id')
  if not uid then return false end
  redis.call('DEL', m)
  redis.call('SREM', P .. 'user-mail:' .. uid, digest)
  redis.call('ZREM', P .. 'mail-by-expiry', digest)
  return true
end

-- Everything of the user; returns the ids of the sessions ended.
local function delete_user(uid)
  local ended = end_sessions_of(uid, nil)
  release_names(uid)
  redis.call('DEL', P .. 'user:' .. uid, P .. 'epoch:' .. uid, P .. 'user-sessions:' .. uid)
  redis.call('SREM', P .. 'users', uid)
  redis.call('SREM', P .. 'pending', uid)
  local mine = P .. 'rel:' .. uid
  for _, other in ipairs(redis.call('HKEYS', mine)) do redis.call('SREM', P .. 'rel-about:' .. other, uid) end
  local about = P .. 'rel-about:' .. uid
  for _, other in ipairs(redis.call('SMEMBERS', about)) do redis.call('HDEL', P .. 'rel:' .. other, uid) end
  redis.call('DEL', mine, about)
  local dms = P .. 'user-dms:' .. uid
  local channels = redis.call('HGETALL', dms)
  for i = 1, #channels, 2 do
    redis.call('HDEL', P .. 'user-dms:' .. channels[i], uid)
    local channel = P .. 'dm:' .. channels[i + 1]
    local ends = redis.call('HMGET', channel, 'user_low', 'user_high')
    if ends[1] then redis.call('DEL', P .. 'dm-pair:' .. ends[1] .. ':' .. ends[2]) end
    redis.call('DEL', channel)
  end
  redis.call('DEL', dms)
  local mail = P .. 'user-mail:' .. uid
  for _, digest in ipairs(redis.call('SMEMBERS', mail)) do drop_mail_token(digest) end
  redis.call('DEL', mail)
  return ended
end
`;

/** A script's body (after LIB); errors it raises on purpose start with this (misuse: not retryable). */
const REFUSED = 'ERR directory:';

/** ARGV: an entry's nine values (write_row), with_session ('1'/'0'), then INSERT_SESSION_IF_EPOCH's seven. */
const INDEX_USER = `
local uid = ARGV[1]
if indexed(uid) then return redis.error_reply('${REFUSED} user ' .. uid .. ' is indexed already') end
-- Both taken: the email is named, as SQLite's unique indexes do (a 409 must not depend on the store).
if redis.call('EXISTS', P .. 'email:' .. ARGV[4]) == 1 then return 'email' end
if redis.call('EXISTS', P .. 'username:' .. ARGV[3]) == 1 then return 'username' end
local with_session = ARGV[10] == '1'
if with_session and not session_free(ARGV[11], ARGV[12]) then return redis.error_reply('${REFUSED} that session exists already') end
redis.call('DEL', P .. 'epoch:' .. uid)
write_row(1)
if with_session then start_session(ARGV[11], ARGV[12], uid, ARGV[14], ARGV[15], ARGV[16], ARGV[17]) end
return 'ok'
`;

/** ARGV: id, has_username, username, username_lower, has_email, email_lower, email. Both taken: the username is named, as in SQLite. */
const CLAIM_NAMES = `
local uid = ARGV[1]
if not indexed(uid) then return redis.error_reply('${REFUSED} user ' .. uid .. ' is not indexed') end
if ARGV[2] == '1' and not name_free('username', ARGV[4], uid) then return 'username' end
if ARGV[5] == '1' and not name_free('email', ARGV[6], uid) then return 'email' end
local u = P .. 'user:' .. uid
if ARGV[2] == '1' then
  local old = redis.call('HGET', u, 'username_lower')
  if old ~= ARGV[4] then redis.call('DEL', P .. 'username:' .. old) end
  redis.call('HSET', u, 'username', ARGV[3], 'username_lower', ARGV[4])
  redis.call('SET', P .. 'username:' .. ARGV[4], uid)
end
if ARGV[5] == '1' then
  local old = redis.call('HGET', u, 'email_lower')
  if old ~= ARGV[6] then redis.call('DEL', P .. 'email:' .. old) end
  redis.call('HSET', u, 'email_lower', ARGV[6], 'email', ARGV[7])
  redis.call('SET', P .. 'email:' .. ARGV[6], uid)
end
redis.call('SADD', P .. 'pending', uid)
return 'ok'
`;

/** ARGV: id. Returns 1, or 0 (marking nothing) when the user is not indexed. */
const MARK_PENDING = `
if not indexed(ARGV[1]) then return 0 end
redis.call('SADD', P .. 'pending', ARGV[1])
return 1
`;

/** ARGV: an entry's nine values (write_row). */
const SETTLE_USER = `
local uid = ARGV[1]
if not name_free('email', ARGV[4], uid) then return 'email' end
if not name_free('username', ARGV[3], uid) then return 'username' end
release_names(uid)
write_row(1)
redis.call('SREM', P .. 'pending', uid)
return 'ok'
`;

/** ARGV: the rows, nine values each as SETTLE_USER's. Returns the ids whose row went. */
const REPLACE_USERS = `
local keep, usernames, emails = {}, {}, {}
for i = 1, #ARGV, 9 do
  if keep[ARGV[i]] or usernames[ARGV[i + 2]] or emails[ARGV[i + 3]] then
    return redis.error_reply('${REFUSED} the new index repeats an id, a username or an email')
  end
  keep[ARGV[i]] = true
  usernames[ARGV[i + 2]] = true
  emails[ARGV[i + 3]] = true
end
local removed = {}
for _, uid in ipairs(redis.call('SMEMBERS', P .. 'users')) do
  if keep[uid] then release_names(uid) else removed[#removed + 1] = uid end
end
for _, uid in ipairs(removed) do delete_user(uid) end
for i = 1, #ARGV, 9 do write_row(i) end
redis.call('DEL', P .. 'pending')
return removed
`;

const DELETE_USER = `return delete_user(ARGV[1])`;

/** ARGV: 'username' or 'email', the lower-cased name. Returns {id, username} or nil. */
const FIND_BY_NAME = `
local uid = redis.call('GET', P .. ARGV[1] .. ':' .. ARGV[2])
if not uid then return false end
return {uid, redis.call('HGET', P .. 'user:' .. uid, 'username')}
`;

/** Returns {id, username, email_lower, created_at, email, avatar_hash, badges, allow_dms_from} per row (a field absent: nil). */
const LIST_USERS = `
local out = {}
for _, uid in ipairs(redis.call('SMEMBERS', P .. 'users')) do
  local row = redis.call('HMGET', P .. 'user:' .. uid, 'username', 'email_lower', 'created_at', 'email', 'avatar_hash', 'badges', 'allow_dms_from')
  out[#out + 1] = {uid, row[1], row[2], row[3], row[4], row[5], row[6], row[7]}
end
return out
`;

/**
 * Once per directory: rows an older version wrote hold no card, and the user files they would be
 * derived from cannot be read in a script, so they are marked pending (as after a change that
 * stopped half-way), for the start to derive them before it serves. Returns how many it marked.
 */
const UPGRADE_LAYOUT = `
if redis.call('GET', P .. 'version') == '2' then return 0 end
local marked = 0
for _, uid in ipairs(redis.call('SMEMBERS', P .. 'users')) do
  if redis.call('HEXISTS', P .. 'user:' .. uid, 'badges') == 0 then
    redis.call('SADD', P .. 'pending', uid)
    marked = marked + 1
  end
end
redis.call('SET', P .. 'version', '2')
return marked
`;

/** ARGV: start_session's seven, then the epoch. */
const INSERT_SESSION_IF_EPOCH = `
local uid = ARGV[3]
if not indexed(uid) then return 0 end
if tonumber(redis.call('GET', P .. 'epoch:' .. uid) or '0') ~= tonumber(ARGV[8]) then return 0 end
if not session_free(ARGV[1], ARGV[2]) then return redis.error_reply('${REFUSED} that session exists already') end
start_session(ARGV[1], ARGV[2], uid, ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
`;

/** ARGV: token digest. Returns {id, user_id, created_at, last_used_at} or nil. */
const FIND_SESSION = `
local sid = redis.call('GET', P .. 'session-token:' .. ARGV[1])
if not sid then return false end
local row = redis.call('HMGET', P .. 'session:' .. sid, 'user_id', 'created_at', 'last_used_at')
if not row[1] then return false end
return {sid, row[1], row[2], row[3]}
`;

/** ARGV: user id. Returns {id, device_name, user_agent, created_at, last_used_at} per session. */
const LIST_SESSIONS = `
local out = {}
for _, sid in ipairs(redis.call('SMEMBERS', P .. 'user-sessions:' .. ARGV[1])) do
  local row = redis.call('HMGET', P .. 'session:' .. sid, 'device_name', 'user_agent', 'created_at', 'last_used_at')
  if row[3] then out[#out + 1] = {sid, row[1], row[2], row[3], row[4]} end
end
return out
`;

const TOUCH_SESSION = `touch_session(ARGV[1], ARGV[2]) return 0`;

const DELETE_SESSION = `if end_session(ARGV[1]) then return 1 end return 0`;

/** ARGV: user id, session id. */
const DELETE_USER_SESSION = `
if redis.call('HGET', P .. 'session:' .. ARGV[2], 'user_id') ~= ARGV[1] then return 0 end
end_session(ARGV[2])
return 1
`;

/** ARGV: user id, advance the epoch ('1'/'0'), keep one ('1'/'0'), the one kept. */
const END_SESSIONS = `
if ARGV[2] == '1' then
  -- An epoch belongs to an account (SQLite's foreign key refuses one of nobody).
  if not indexed(ARGV[1]) then return redis.error_reply('${REFUSED} user ' .. ARGV[1] .. ' is not indexed') end
  redis.call('INCR', P .. 'epoch:' .. ARGV[1])
end
local keep = nil
if ARGV[3] == '1' then keep = ARGV[4] end
return end_sessions_of(ARGV[1], keep)
`;

/** ARGV: now, idle_before, created_before, then the sessions in use. */
const SWEEP_SESSIONS = `
for i = 4, #ARGV do touch_session(ARGV[i], ARGV[1]) end
local doomed, seen = {}, {}
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'sessions-by-use', '-inf', ARGV[2])) do
  seen[sid] = true
  doomed[#doomed + 1] = sid
end
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'sessions-by-creation', '-inf', ARGV[3])) do
  if not seen[sid] then doomed[#doomed + 1] = sid end
end
for _, sid in ipairs(doomed) do end_session(sid) end
return doomed
`;

/** ARGV: user id, other id. Returns both raw rows ("<type> <changed id>" or nil). */
const READ_PAIR = `
return {redis.call('HGET', P .. 'rel:' .. ARGV[1], ARGV[2]) or false, redis.call('HGET', P .. 'rel:' .. ARGV[2], ARGV[1]) or false}
`;

/** ARGV: user id, other id, expected mine, expected theirs, next mine, next theirs ('' : no row), changed id. */
const REPLACE_PAIR = `
local uid, other = ARGV[1], ARGV[2]
local function type_of(row)
  if not row then return '' end
  return string.match(row, '^(%S+)')
end
local mine = type_of(redis.call('HGET', P .. 'rel:' .. uid, other))
local theirs = type_of(redis.call('HGET', P .. 'rel:' .. other, uid))
if mine ~= ARGV[3] or theirs ~= ARGV[4] then return 0 end
local writes = (ARGV[5] ~= '' and ARGV[5] ~= mine) or (ARGV[6] ~= '' and ARGV[6] ~= theirs)
if writes and (uid == other or not indexed(uid) or not indexed(other)) then
  return redis.error_reply('${REFUSED} a relationship needs two distinct indexed users')
end
local function put(owner, about, current, next)
  if next == '' then
    redis.call('HDEL', P .. 'rel:' .. owner, about)
    redis.call('SREM', P .. 'rel-about:' .. about, owner)
  elseif next ~= current then
    redis.call('HSET', P .. 'rel:' .. owner, about, next .. ' ' .. ARGV[7])
    redis.call('SADD', P .. 'rel-about:' .. about, owner)
  end
end
put(uid, other, mine, ARGV[5])
put(other, uid, theirs, ARGV[6])
return 1
`;

/** ARGV: low id, high id, new channel id, created_at. Returns the pair's channel id. */
const OPEN_DM = `
local low, high = ARGV[1], ARGV[2]
local pair = P .. 'dm-pair:' .. low .. ':' .. high
local existing = redis.call('GET', pair)
if existing then return existing end
if low == high or not indexed(low) or not indexed(high) then
  return redis.error_reply('${REFUSED} a DM channel needs two distinct indexed users')
end
local channel = P .. 'dm:' .. ARGV[3]
if redis.call('EXISTS', channel) == 1 then return redis.error_reply('${REFUSED} that channel id is taken') end
redis.call('SET', pair, ARGV[3])
redis.call('HSET', channel, 'user_low', low, 'user_high', high, 'created_at', ARGV[4])
redis.call('HSET', P .. 'user-dms:' .. low, high, ARGV[3])
redis.call('HSET', P .. 'user-dms:' .. high, low, ARGV[3])
return ARGV[3]
`;

/** ARGV: user id. Returns {channel id, other id, last_message_id or nil} per channel. */
const LIST_DMS = `
local out = {}
local channels = redis.call('HGETALL', P .. 'user-dms:' .. ARGV[1])
for i = 1, #channels, 2 do
  out[#out + 1] = {channels[i + 1], channels[i], redis.call('HGET', P .. 'dm:' .. channels[i + 1], 'last_message_id') or false}
end
return out
`;

/** ARGV: digest, user id, purpose, email_lower, created_at, expires_at, now. */
const INSERT_MAIL_TOKEN = `
local digest, uid = ARGV[1], ARGV[2]
if not indexed(uid) then return redis.error_reply('${REFUSED} user ' .. uid .. ' is not indexed') end
-- A token of that digest that expired by now is swept just below, so only a live one is in the way
-- (as in SQLite, whose sweep comes before its insert; the differential fuzz found the stores differing).
local existing = redis.call('HGET', P .. 'mail:' .. digest, 'expires_at')
if existing and tonumber(existing) > tonumber(ARGV[7]) then return redis.error_reply('${REFUSED} that token exists already') end
for _, expired in ipairs(redis.call('ZRANGEBYSCORE', P .. 'mail-by-expiry', '-inf', ARGV[7])) do drop_mail_token(expired) end
redis.call('HSET', P .. 'mail:' .. digest, 'user_id', uid, 'purpose', ARGV[3], 'email_lower', ARGV[4], 'created_at', ARGV[5], 'expires_at', ARGV[6])
redis.call('SADD', P .. 'user-mail:' .. uid, digest)
redis.call('ZADD', P .. 'mail-by-expiry', ARGV[6], digest)
return 0
`;

/** ARGV: digest, purpose, now. */
const TAKE_MAIL_TOKEN = `
local row = redis.call('HMGET', P .. 'mail:' .. ARGV[1], 'purpose', 'expires_at')
if row[1] ~= ARGV[2] or tonumber(row[2]) <= tonumber(ARGV[3]) then return 0 end
drop_mail_token(ARGV[1])
return 1
`;

/** ARGV: digest, user id, now. Returns the ended sessions, or nil when the token is not live. */
const SPEND_RESET_TOKEN = `
local uid = ARGV[2]
local row = redis.call('HMGET', P .. 'mail:' .. ARGV[1], 'user_id', 'purpose', 'expires_at')
if row[1] ~= uid or row[2] ~= 'reset_password' or tonumber(row[3]) <= tonumber(ARGV[3]) then return false end
for _, digest in ipairs(redis.call('SMEMBERS', P .. 'user-mail:' .. uid)) do
  if redis.call('HGET', P .. 'mail:' .. digest, 'purpose') == 'reset_password' then drop_mail_token(digest) end
end
-- A live token is of an indexed account (deleting one deletes its tokens).
redis.call('INCR', P .. 'epoch:' .. uid)
return end_sessions_of(uid, nil)
`;

const DELETE_MAIL_TOKEN = `drop_mail_token(ARGV[1]) return 0`;

/** ARGV: user id, purpose ('': every purpose). */
const DELETE_MAIL_TOKENS_OF = `
for _, digest in ipairs(redis.call('SMEMBERS', P .. 'user-mail:' .. ARGV[1])) do
  if ARGV[2] == '' or redis.call('HGET', P .. 'mail:' .. digest, 'purpose') == ARGV[2] then drop_mail_token(digest) end
end
return 0
`;

/** A script sent by its digest (EVALSHA), its source only when Redis does not have it yet. */
export class Script {
  readonly source: string;
  readonly sha: string;

  constructor(body: string) {
    this.source = LIB + body;
    this.sha = createHash('sha1').update(this.source).digest('hex');
  }
}

export const SCRIPTS = {
  indexUser: new Script(INDEX_USER),
  claimNames: new Script(CLAIM_NAMES),
  markPending: new Script(MARK_PENDING),
  settleUser: new Script(SETTLE_USER),
  replaceUsers: new Script(REPLACE_USERS),
  deleteUser: new Script(DELETE_USER),
  findByName: new Script(FIND_BY_NAME),
  listUsers: new Script(LIST_USERS),
  upgradeLayout: new Script(UPGRADE_LAYOUT),
  insertSessionIfEpoch: new Script(INSERT_SESSION_IF_EPOCH),
  findSession: new Script(FIND_SESSION),
  listSessions: new Script(LIST_SESSIONS),
  touchSession: new Script(TOUCH_SESSION),
  deleteSession: new Script(DELETE_SESSION),
  deleteUserSession: new Script(DELETE_USER_SESSION),
  endSessions: new Script(END_SESSIONS),
  sweepSessions: new Script(SWEEP_SESSIONS),
  readPair: new Script(READ_PAIR),
  replacePair: new Script(REPLACE_PAIR),
  openDm: new Script(OPEN_DM),
  listDms: new Script(LIST_DMS),
  insertMailToken: new Script(INSERT_MAIL_TOKEN),
  takeMailToken: new Script(TAKE_MAIL_TOKEN),
  spendResetToken: new Script(SPEND_RESET_TOKEN),
  deleteMailToken: new Script(DELETE_MAIL_TOKEN),
  deleteMailTokensOf: new Script(DELETE_MAIL_TOKENS_OF),
};
