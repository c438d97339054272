//! The connection to the shared store, and the only code that speaks to
//! it: two atomic Lua scripts (a per-minute bucket and expiring in-flight
//! leases) behind calls that never take longer than `state.redis.timeout`.
//!
//! Built on the `redis` crate's `ConnectionManager`, which multiplexes one
//! connection for every call and reconnects on its own; the scripts run by
//! `EVALSHA` and are loaded again after a restart of Redis (`Script` does
//! it on `NOSCRIPT`). The store is either up or down as far as calls know:
//! a failed or slow call marks it down (logged once, counted in
//! `llmgate_state_store_errors_total`, `llmgate_state_store_up` 0), calls
//! then decide without it at once instead of each waiting out the timeout,
//! and a probe pings it with back-off (50ms doubling to 1s) until it
//! answers, when it is marked up again (logged once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{OnStoreError, RedisConfig};
use crate::telemetry::metrics;

/// First wait between probes of a store that went down.
const PROBE_FIRST: Duration = Duration::from_millis(50);
/// Longest wait between probes.
const PROBE_MAX: Duration = Duration::from_secs(1);
/// How long Redis keeps a bucket nobody touched: a full bucket and an
/// absent one mean the same, so idle keys cost nothing for long.
const BUCKET_TTL_MS: u64 = 120_000;
/// How long a replica's in-flight leases outlive its last heartbeat: a
/// replica that dies holds its calls' slots this long at most.
pub(crate) const REPLICA_TTL: Duration = Duration::from_secs(10);
/// How long a connection attempt may take. Connecting happens in the
/// background (calls meanwhile see the store as down), so this may be
/// longer than a call's timeout: a TLS handshake to a Redis in another
/// zone takes longer than 5ms.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A token bucket of `ARGV[1]` a minute refilling continuously (GCRA's
/// semantics, kept as the level and the time it was read). Takes up to
/// `ARGV[2]` units when at least `ARGV[3]` are there; with `ARGV[3]` = 0
/// it is a settlement: `ARGV[2]` is charged unconditionally (a debt may
/// leave the bucket below zero, so later calls wait) or, negative, given
/// back (up to the bucket's size). Returns the units granted and, when
/// none, how many milliseconds until `ARGV[3]` would fit. Redis's own
/// clock, so replicas' clocks do not matter.
const BUCKET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local need = tonumber(ARGV[3])
local rate = cap / 60000
local v = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(v[1]) or cap
local at = tonumber(v[2]) or now
if now > at then level = math.min(cap, level + (now - at) * rate) end
local grant = 0
local wait = 0
if need <= 0 then
  level = math.min(cap, level - want)
  grant = want
elseif level >= need then
  grant = math.min(want, math.floor(level))
  level = level - grant
else
  wait = math.ceil((need - level) / rate)
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {grant, wait}
";

/// Takes one in-flight slot of `ARGV[2]` for replica `ARGV[1]`, if the
/// replicas' calls in flight leave room. A replica's count counts only
/// while its heartbeat key (`ARGV[3]` .. replica) exists: a dead replica's
/// calls are dropped once its heartbeat expires. Returns 1 if taken.
const IN_FLIGHT_TAKE: &str = r"
local all = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #all, 2 do
  local replica = all[i]
  if replica ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. replica) == 0 then
    redis.call('HDEL', KEYS[1], replica)
  else
    total = total + tonumber(all[i + 1])
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Sets replica `ARGV[1]`'s in-flight count to `ARGV[2]` (its own truth,
/// re-asserted on every heartbeat so a release Redis missed is repaired).
const IN_FLIGHT_SET: &str = r"
if tonumber(ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
";

/// The shared store, as the limits see it.
pub(crate) struct Store {
    /// One multiplexed connection, reconnected by the manager.
    conn: ConnectionManager,
    /// Prefix of every key.
    prefix: String,
    /// Bound on every call.
    timeout: Duration,
    /// What calls meet while it is down.
    on_error: OnStoreError,
    /// Whether calls should use it; false from a failure until a probe
    /// succeeds.
    up: AtomicBool,
    /// This process, in in-flight leases: random, so restarts and replicas
    /// never share one.
    replica: String,
    /// The scripts.
    bucket: Script,
    in_flight_take: Script,
    in_flight_set: Script,
}

/// Why a store call failed, for the error counter's `reason` label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoreError {
    /// It did not answer within the timeout.
    Timeout,
    /// It answered with an error, or the connection failed.
    Failed,
    /// It is marked down; the call was not tried.
    Down,
}

/// What the bucket answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Units granted.
    pub granted: u32,
    /// When none: how long until the units needed would fit.
    pub wait: Duration,
}

// === impl Store ===

impl Store {
    /// A store for `config`; connects in the background, so a Redis that is
    /// away at start-up delays nothing (calls meet `on_error` once it is
    /// found away, until it answers). Needs a Tokio runtime.
    pub(crate) fn connect(config: &RedisConfig) -> redis::RedisResult<Arc<Store>> {
        let client = redis::Client::open(config.connection_info()?)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(config.timeout.max(Duration::from_millis(100))))
            .set_number_of_retries(2)
            .set_min_delay(PROBE_FIRST)
            .set_max_delay(PROBE_MAX);
        let conn = ConnectionManager::new_lazy_with_config(client, manager)?;
        let store = Arc::new(Store {
            conn,
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            on_error: config.on_error,
            up: AtomicBool::new(true),
            replica: format!("{:016x}", rand::random::<u64>()),
            bucket: Script::new(BUCKET),
            in_flight_take: Script::new(IN_FLIGHT_TAKE),
            in_flight_set: Script::new(IN_FLIGHT_SET),
        });
        metrics::state_store_up(true);
        // Said at start-up, not at the first limited call: an operator
        // starting a replica wants to know now that Redis is not there.
        let first = Arc::downgrade(&store);
        tokio::spawn(async move {
            let Some(store) = first.upgrade() else { return };
            let mut conn = store.conn.clone();
            let cmd = redis::cmd("PING");
            let ping =
                tokio::time::timeout(CONNECT_TIMEOUT, cmd.query_async::<String>(&mut conn)).await;
            match ping {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => store.went_down(StoreError::Failed),
                Err(_) => store.went_down(StoreError::Timeout),
            }
        });
        Ok(store)
    }

    /// What calls meet while the store is down.
    pub(crate) fn on_error(&self) -> OnStoreError {
        self.on_error
    }

    /// Whether calls should use the store now.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The key of `name` under the prefix.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Takes up to `want` units (at least `need`) from the bucket `key` of
    /// `limit` a minute; `need` 0 charges (or, negative, returns) `want`
    /// whatever the level.
    pub(crate) async fn take(
        self: &Arc<Self>,
        key: &str,
        limit: u32,
        want: i64,
        need: u32,
    ) -> Result<Grant, StoreError> {
        let mut invocation = self.bucket.key(key);
        invocation.arg(limit).arg(want).arg(need).arg(BUCKET_TTL_MS);
        let mut conn = self.conn.clone();
        let (granted, wait): (i64, i64) = self
            .call(async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(Grant {
            granted: u32::try_from(granted.max(0)).unwrap_or(u32::MAX),
            wait: Duration::from_millis(u64::try_from(wait.max(0)).unwrap_or(0)),
        })
    }

    /// Takes one in-flight slot of `max` under `key` for this replica.
    pub(crate) async fn take_in_flight(
        self: &Arc<Self>,
        key: &str,
        max: u32,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.in_flight_take.key(key);
        invocation
            .arg(&self.replica)
            .arg(max)
            .arg(self.key("replica:"))
            .arg(ttl_ms(REPLICA_TTL * 3));
        let mut conn = self.conn.clone();
        let taken: i64 = self
            .call(async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(taken == 1)
    }

    /// Sets this replica's in-flight count under `key` to `count`.
    pub(crate) async fn set_in_flight(
        self: &Arc<Self>,
        key: &str,
        count: u32,
    ) -> Result<(), StoreError> {
        let mut invocation = self.in_flight_set.key(key);
        invocation
            .arg(&self.replica)
            .arg(count)
            .arg(ttl_ms(REPLICA_TTL * 3));
        let mut conn = self.conn.clone();
        let _: i64 = self
            .call(async move { invocation.invoke_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Gives back one in-flight slot this replica took under `key`.
    pub(crate) async fn release_in_flight(self: &Arc<Self>, key: &str) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("HINCRBY");
        cmd.arg(key).arg(&self.replica).arg(-1);
        let mut conn = self.conn.clone();
        let _: i64 = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Renews this replica's heartbeat, which keeps its in-flight counts
    /// counted.
    pub(crate) async fn heartbeat(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&format!("replica:{}", self.replica)))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms(REPLICA_TTL));
        let mut conn = self.conn.clone();
        let _: () = self
            .call(async move { cmd.query_async(&mut conn).await })
            .await?;
        Ok(())
    }

    /// Runs one store call within the timeout, or not at all while the
    /// store is down; a failure marks it down.
    async fn call<T>(
        self: &Arc<Self>,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        if !self.is_up() {
            return Err(StoreError::Down);
        }
        let err = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => {
                tracing::debug!(%err, "shared store call failed");
                StoreError::Failed
            }
            Err(_) => StoreError::Timeout,
        };
        self.went_down(err);
        Err(err)
    }

    /// Marks the store down after `err`: logged and probed once per
    /// outage, counted every time.
    fn went_down(self: &Arc<Self>, err: StoreError) {
        metrics::state_store_error(err.reason());
        if self.up.swap(false, Ordering::Relaxed) {
            metrics::state_store_up(false);
            let meanwhile = match self.on_error {
                OnStoreError::Allow => "calls are served under each replica's own limits",
                OnStoreError::Deny => "calls under shared limits are refused (on_error: deny)",
            };
            tracing::warn!(
                reason = err.reason(),
                "the shared limit store (Redis) is not answering; {meanwhile} until it does"
            );
            tokio::spawn(probe(Arc::downgrade(self)));
        }
    }
}

/// Pings a store that went down, backing off, until it answers (it is
/// then marked up) or is dropped.
async fn probe(store: Weak<Store>) {
    let mut pause = PROBE_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        let Some(store) = store.upgrade() else { return };
        let mut conn = store.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = tokio::time::timeout(CONNECT_TIMEOUT, cmd.query_async::<String>(&mut conn));
        if matches!(ping.await, Ok(Ok(_))) {
            store.up.store(true, Ordering::Relaxed);
            metrics::state_store_up(true);
            tracing::info!("the shared limit store (Redis) answers again; limits are shared again");
            return;
        }
        pause = (pause * 2).min(PROBE_MAX);
    }
}

fn ttl_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === impl StoreError ===

impl StoreError {
    /// The `reason` label.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Failed => "error",
            StoreError::Down => "down",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, on_error: OnStoreError) -> RedisConfig {
        RedisConfig {
            url: url.to_string(),
            key_prefix: "t:".to_string(),
            timeout: Duration::from_millis(200),
            on_error,
            password: None,
            password_source: None,
        }
    }

    /// A port nothing listens on: bound, then closed.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    #[tokio::test]
    async fn a_store_that_cannot_be_reached_fails_within_the_timeout_and_is_then_not_tried() {
        let url = format!("redis://127.0.0.1:{}/0", closed_port());
        let store = Store::connect(&config(&url, OnStoreError::Deny)).expect("lazy: no I/O yet");
        assert_eq!(store.on_error(), OnStoreError::Deny);
        let start = tokio::time::Instant::now();
        // Failed, or already found down by the ping at start-up.
        let first = store.take("t:bucket", 60, 1, 1).await;
        assert!(first.is_err(), "{first:?}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "bounded by the timeout"
        );
        assert!(!store.is_up());
        // While down, calls are not even tried.
        let second = store.take_in_flight("t:in_flight", 1).await;
        assert!(matches!(second, Err(StoreError::Down)), "{second:?}");
    }

    #[tokio::test]
    async fn a_tls_store_builds_without_connecting() {
        let url = format!("rediss://127.0.0.1:{}/0", closed_port());
        let store = Store::connect(&config(&url, OnStoreError::Allow)).expect("lazy: no I/O yet");
        assert!(store.take("t:bucket", 60, 1, 1).await.is_err());
        assert_eq!(store.key("x"), "t:x");
    }
}
